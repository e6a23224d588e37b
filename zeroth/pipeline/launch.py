"""`zeroth run --nproc N`: torchrun on this machine, in this process (torch.distributed.run).

torchrun's agent starts the N ranks, watches them every 0.1 s and, when one exits with an
error or a signal, stops the others and reports it; here that report becomes one line naming
the rank and how it ended. A user error (exit code 2) is printed by rank 0, which meets the same
one as every rank; another rank's is only named here.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time


def _how(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _stopped_since(run_dir, began: float) -> bool:
    """Whether the run's ledger records a stop at a safe point (zeroth.pipeline.faults) since
    `began`: the ranks, sent SIGTERM by torchrun's agent, wrote a checkpoint and ended."""
    from pathlib import Path

    from zeroth.pipeline.ledger import Ledger

    path = Path(run_dir) / "ledger.sqlite"
    if not path.is_file():
        return False
    try:
        events = Ledger(path, readonly=True).get_meta("events", [])
    except Exception:  # noqa: BLE001 — no answer is "not known to have stopped"
        return False
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(began))
    return any(e.get("kind") == "stopped" and e.get("time", "") >= stamp for e in events)


def torchrun(nproc: int, args: list[str], run_dir) -> int:
    """Run `python <args>` as `nproc` ranks (torchrun --standalone); the exit code of the job:
    0, or the first failed rank's (a signal: 1; Ctrl-C: 130, with the command that resumes
    `run_dir`). SIGTERM reaches every rank through the agent: each stops at its next step with a
    checkpoint (zeroth.pipeline.faults), and the job ends with 0 once the ledger records it."""
    os.environ.setdefault("LOGLEVEL", "ERROR")  # torchrun's agent: its news is said below
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    for name, logger in logging.Logger.manager.loggerDict.items():
        if name.startswith("torch.distributed") and isinstance(logger, logging.Logger):
            logger.setLevel(logging.CRITICAL)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # each rank sets its own thread count
    ns = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}",
                                       "--no-python", sys.executable, *args])
    os.environ["ZEROTH_NPROC"] = str(nproc)  # the ranks' resume command names it
    began = time.time()
    try:
        run(ns)
    except SignalException as exc:
        if exc.sigval == signal.SIGINT:
            print(f"zeroth: interrupted — continue with zeroth run --nproc {nproc} --resume "
                  f"{run_dir}", file=sys.stderr)
            return 130
        if exc.sigval == signal.SIGTERM and _stopped_since(run_dir, began):
            return 0  # the ranks saved a checkpoint and rank 0 said how to resume
        print(f"zeroth: stopped by {exc.sigval.name}", file=sys.stderr)
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        failures = sorted(exc.failures.items(), key=lambda kv: kv[1].timestamp)
        rank, failure = failures[0]  # the first observed: the cause, the others were stopped
        code = failure.exitcode
        if code != 2 or rank != 0:
            print(f"zeroth: error: rank {rank} of {nproc} failed ({_how(code)}); the job was "
                  "stopped", file=sys.stderr)
        return code if code > 0 else 1
    return 0
