"""Fault injection: a tiny pipeline (pre-training, then RL with a reference model) run under
every fault a long run meets, each injected at a point of the pipeline; what zeroth did, and
whether anything it had recorded was lost.

    python bench/faults.py                      # every injection, two at a time, then a table
    python bench/faults.py --only sigterm-update disk-full-checkpoint --jobs 1
    python bench/faults.py --list

How. An uninterrupted run of the same config is the reference. Each injection runs the
command line in a child process (`zeroth run tiny ...`) with one function of zeroth wrapped so
that its n-th call first does the fault: SIGKILL or SIGTERM to itself, an OSError (ENOSPC, a
full disk; EACCES, a folder made read-only), a NaN loss, a reward of NaN or inf, a reward that
never returns, the math verifier's worker processes killed mid-batch. One is not a run: a
batch of programs scored by `code_tests` while the sandbox's fork server is SIGKILLed. Some faults are done to
the run's files between two runs instead: a flipped bit in the newest checkpoint, the ledger's
last quarter cut off, the run folder mounted read-only (`unshare -m`, where allowed), runs/ on
a 1 MB tmpfs. Two more run as a torchrun job of two ranks (`--nproc 2`, compared with an
uninterrupted job of two): SIGTERM to the job, as a scheduler sends it, and SIGKILL to rank 1. Then,
where the fault stopped the run, `zeroth run --resume` continues it without the fault.

Lost records: the ledger rows (rollouts, evaluation samples, metrics less their wall times) the
run had written when the fault came that are missing, or changed, after the run was resumed
to its end, less those a resume redoes by design: the rows after the checkpoint it resumes
from, cut from the ledger and recorded again from the same seeds (`superseded`); what the
fault did is kept in the ledger's meta `events` either way. A ledger cut short loses the rows on the pages cut off: that is the fault's doing,
counted apart ("destroyed": the rows neither zeroth's salvage nor sqlite's own recovery,
`sqlite3 DB .recover`, gets back); zeroth's part is to keep every row that can still be read,
so a row sqlite recovers and zeroth does not is lost. "Same
as uninterrupted": the resumed run's whole ledger and summary equal the reference's (a skipped
non-finite step changes what follows, by design, so there it is not expected).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout

ARGS = ["run", "tiny", "--quiet", "rl.beta=0.05", "pretrain.checkpoint_every=10",
        "run.threads=1", "rl.reward_timeout_s=5",
        # the math verifier (worker processes) scores every completion too, unweighted
        'rl.reward_weights={"correct": 1.0, "format": 0.1, "tags": 0.1, "math_accuracy": 0.0}']

TMPFS_SIZE = "1m"  # the tiny run's checkpoints and ledger outgrow it during RL

# where SIGKILL and SIGTERM are sent: the n-th call of a function of each part of the pipeline
POINTS = (("pretrain", "zeroth.stages.supervised:_forward_backward#12"),
          ("rollout", "zeroth.stages.rl:sample#2"),
          ("reward", "zeroth.stages.rl:combine#3"),
          ("update", "zeroth.stages.rl:update#3"),
          ("checkpoint-write", "zeroth.pipeline.checkpoint:fsync_tree#6"),
          ("ledger-write", "zeroth.pipeline.ledger:Ledger._write#12"),
          ("evaluation", "zeroth.stages.eval:evaluate#2"))

# name: (fault, where, injection "action@module:attr#n" or None, after the first run, resume)
SCENARIOS = {
    **{f"{sig.lower()}-{where}": (sig, where, f"{sig.lower()}@{target}", None, True)
       for sig in ("SIGKILL", "SIGTERM") for where, target in POINTS},
    "disk-full-checkpoint": ("disk full", "checkpoint write",
                             "enospc@zeroth.pipeline.checkpoint:fsync_tree#6", None, True),
    "disk-full-ledger": ("disk full", "ledger write",
                         "sqlfull@zeroth.pipeline.ledger:Ledger._write#12", None, True),
    "disk-full-tmpfs": ("disk full (a 1 MB tmpfs)", "checkpoint write", None, "tmpfs", True),
    "nan-loss-once": ("NaN loss, once", "update", "nanloss@zeroth.algorithms.update:policy_loss#2", None,
                      False),
    "nan-loss-in-a-row": ("NaN loss, every step", "pretrain",
                          "nanalways@zeroth.models.lean:sequence_loss#1", None, True),
    "inf-reward": ("reward NaN and inf", "reward", "badreward@zeroth.stages.rl:combine#2",
                   None, False),
    "hanging-reward": ("a verifier that never returns", "reward",
                       "hang@zeroth.stages.rl:combine#2", None, False),
    "reward-worker-killed": ("reward workers SIGKILLed mid-batch", "reward",
                             "killworkers@zeroth.rewards.pool:CheckPool.map#3", None, False),
    "corrupt-checkpoint": ("a bit flipped in the newest checkpoint", "resume",
                           "sigterm@zeroth.stages.rl:update#4", "flip", True),
    "truncated-ledger": ("the ledger's last quarter cut off", "resume",
                         "sigterm@zeroth.stages.rl:update#3", "truncate", True),
    "read-only-folder": ("the run folder mounted read-only", "resume",
                         "sigterm@zeroth.stages.rl:update#2", "readonly", True),
    "read-only-mid-run": ("a write refused (EACCES)", "checkpoint write",
                          "eacces@zeroth.pipeline.checkpoint:fsync_tree#6", None, True),
    "fork-server-killed": ("the sandbox's fork server SIGKILLed mid-batch", "code reward",
                           None, "fork-server", False),
    "sigterm-two-ranks": ("SIGTERM to `zeroth run --nproc 2`", "RL, 2 ranks", None, "term-job",
                          True),
    "rank-killed": ("one of 2 ranks SIGKILLed", "RL, 2 ranks", None, "kill-rank", True),
}


TWO_RANKS = {"sigterm-two-ranks", "rank-killed"}  # torchrun jobs of two ranks

# The runs that are not expected to end as the uninterrupted one: a skipped update or a reward
# recorded as a verifier failure changes what follows; a cut ledger loses what was cut off.
DIFFERS = {"nan-loss-once", "inf-reward", "hanging-reward", "truncated-ledger"}


# ---------------------------------------------------------------------------------------------
# In the child: wrap one function so that its n-th call does the fault first.
# ---------------------------------------------------------------------------------------------


def _fault(action: str, pool=None):
    """What the wrapped call does before (or instead of) itself; a result transform or None."""
    if action in ("sigkill", "sigterm"):
        os.kill(os.getpid(), signal.SIGKILL if action == "sigkill" else signal.SIGTERM)
    elif action == "enospc":
        raise OSError(errno.ENOSPC, "No space left on device")
    elif action == "eacces":
        raise OSError(errno.EACCES, "Permission denied")
    elif action == "sqlfull":
        raise sqlite3.OperationalError("database or disk is full")
    elif action == "killworkers":
        threading.Thread(target=_kill_busy_workers, args=(pool,), daemon=True).start()


def _kill_busy_workers(pool) -> None:
    time.sleep(0.002)  # the batch is handed out: kill every worker of the pool once
    for slot in list(pool._slots):
        if slot.worker is not None and slot.worker.proc.poll() is None:
            os.kill(slot.worker.proc.pid, signal.SIGKILL)


def _forever(completions, **_):
    while True:
        pass


def _bad_scores(completions, **_):
    return [float("nan") if i % 2 else float("inf") for i in range(len(completions))]


def _wrap(action: str, original, nth: int):
    calls = [0]

    def wrapped(*args, **kwargs):
        calls[0] += 1
        hit = calls[0] == nth or (action == "nanalways" and calls[0] >= nth)
        if hit and action in ("hang", "badreward"):  # the reward functions of this call
            fns = dict(args[2])
            fns["correct"] = _forever if action == "hang" else _bad_scores
            args = (*args[:2], fns, *args[3:])
        elif hit:
            _fault(action, args[0] if action == "killworkers" else None)
        out = original(*args, **kwargs)
        if hit and action == "nanalways":  # a loss
            return out * float("nan")
        if hit and action == "nanloss":  # the policy loss and its stats
            return out[0] * float("nan"), *out[1:]
        return out

    return wrapped


def child(spec: str, argv: list[str]) -> int:
    """Install the injection `action@module:attr#n`, then run zeroth's command line."""
    import importlib

    action, rest = spec.split("@")
    target, nth = rest.split("#")
    module_name, attr = target.split(":")
    owner = importlib.import_module(module_name)
    *path, name = attr.split(".")
    for part in path:
        owner = getattr(owner, part)
    setattr(owner, name, _wrap(action, getattr(owner, name), int(nth)))
    from zeroth.cli import main

    return main(argv)


# ---------------------------------------------------------------------------------------------
# The ledger's records, read tolerantly.
# ---------------------------------------------------------------------------------------------


def records(ledger: Path) -> set[tuple]:
    """Every row of a ledger as a hashable tuple (metrics less their wall times); the rows that
    can be read when it is damaged."""
    if not ledger.is_file():
        return set()
    queries = {"rollouts": "select phase, step, prompt_idx, sample_idx, completion, rewards, "
                           "advantage from rollouts",
               "evals": "select phase, problem_idx, sample_idx, completion, correct from evals",
               "metrics": "select phase, step, data from metrics"}
    out = set()
    db = sqlite3.connect(f"{ledger.resolve().as_uri()}?mode=ro", uri=True)
    for table, sql in queries.items():
        try:
            for row in db.execute(sql):
                if table == "metrics":
                    data = {k: v for k, v in json.loads(row[2]).items()
                            if not k.startswith("time_")}
                    row = (*row[:2], json.dumps(data, sort_keys=True))
                out.add((table, *row))
        except sqlite3.DatabaseError:
            continue
    db.close()
    return out


def summary_of(run: Path) -> dict | None:
    file = run / "summary.json"
    if not file.is_file():
        return None
    summary = json.loads(file.read_text())
    for key in ("wall_s", "run"):
        summary.pop(key, None)
    return summary


# ---------------------------------------------------------------------------------------------
# One scenario: the faulted run, what is done to its files, the resume; the verdict.
# ---------------------------------------------------------------------------------------------


def _zeroth(args: list[str], cwd: Path, spec: str | None = None, wrap: list[str] | None = None,
            timeout: float = 300, output: bool = False) -> tuple:
    """(exit code, last line of stderr[, stdout and stderr]) of one zeroth command line in a
    child process."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", spec, "--", *args] \
        if spec else [sys.executable, "-m", "zeroth", *args]
    if wrap:  # a shell in a mount namespace: its set-up, then the command, then its tail
        script = f"{wrap[0]} && {shlex.join(cmd)}; code=$?; {wrap[1]}; exit $code"
        cmd = ["unshare", "-m", "sh", "-c", script]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env, check=False)
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    return (proc.returncode, last, proc.stdout + proc.stderr) if output else \
        (proc.returncode, last)


def _flip(run: Path) -> str:
    tag = (run / "checkpoints" / "LATEST").read_text().strip()
    weights = run / "checkpoints" / tag / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    return f"flipped a bit of {tag}"


def _truncate(run: Path) -> str:
    ledger = run / "ledger.sqlite"
    db = sqlite3.connect(ledger)
    db.execute("pragma wal_checkpoint(truncate)")
    db.close()
    os.truncate(ledger, ledger.stat().st_size * 3 // 4)
    return "cut the ledger's last quarter off"


def recoverable(ledger: Path) -> set[tuple]:
    """The rows sqlite's own recovery (`sqlite3 DB .recover`, the command-line shell) gets back
    from a damaged ledger: what the fault left readable, judged without zeroth."""
    if not shutil.which("sqlite3"):
        return set()
    out = ledger.with_name("recovered-by-sqlite.sqlite")
    out.unlink(missing_ok=True)
    dump = subprocess.run(["sqlite3", str(ledger), ".recover"], capture_output=True, text=True,
                          check=False).stdout
    subprocess.run(["sqlite3", str(out)], input=dump, capture_output=True, text=True,
                   check=False)
    return records(out)


def observed(run: Path) -> str:
    """What the ledger says happened: skipped updates, rewards recorded as verifier failures,
    and the events kept (stops, fallbacks, salvages)."""
    ledger = run / "ledger.sqlite"
    if not ledger.is_file():
        return ""
    db = sqlite3.connect(f"{ledger.resolve().as_uri()}?mode=ro", uri=True)
    said = []
    try:
        skipped = [(p, s) for p, s, d in db.execute("select phase, step, data from metrics")
                   if json.loads(d).get("skipped_steps")]
        errors: dict[str, int] = {}
        for (rewards,) in db.execute("select rewards from rollouts"):
            for key, value in json.loads(rewards).items():
                if key.endswith("_error"):
                    kind = value.split(" after")[0].split(" score")[0]
                    errors[kind] = errors.get(kind, 0) + 1
        events = db.execute("select value from meta where key = 'events'").fetchone()
    except sqlite3.DatabaseError:
        return ""
    finally:
        db.close()
    if skipped:
        said.append("updates skipped at " + ", ".join(f"{p} step {s}" for p, s in skipped))
    said += [f"{n} completions recorded as verifier failures ({kind})"
             for kind, n in errors.items()]
    if events:
        said.append("events: " + ", ".join(e["kind"] for e in json.loads(events[0])))
    return "; ".join(said)


def _read_only_wrap(run: Path) -> list[str]:
    """The run folder bind-mounted read-only over itself, in the child's namespace only."""
    return [f"mount --bind {run} {run} && mount -o remount,bind,ro {run} {run}", "true"]


def _tmpfs_wrap(folder: Path, copy: Path) -> list[str]:
    """`folder` a small tmpfs in the child's namespace; what the run left there is copied out
    to `copy` after it (freeing space, as a user would, is resuming the copy elsewhere)."""
    return [f"mount -t tmpfs -o size={TMPFS_SIZE} none {folder}",
            f"cp -a {folder}/. {copy}/"]


def _ranks(parent: int) -> dict[int, int]:
    """{rank: pid} of the processes below `parent` that torchrun started (their RANK)."""
    found, todo = {}, [parent]
    while todo:
        pid = todo.pop()
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        rank = next((e[5:] for e in env if e.startswith(b"RANK=")), None)
        if rank is not None and pid != parent:
            found[int(rank)] = pid
        todo += [int(c) for c in children]
    return found


def _job_fault(args: list[str], cwd: Path, run: Path, after: str) -> tuple[int, str]:
    """`zeroth run --nproc 2` until its first RL checkpoint, then SIGTERM to the job (as a
    scheduler sends it) or SIGKILL to rank 1; (exit code, last line of stderr)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "zeroth", *args, "--nproc", "2"], cwd=cwd,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    latest = run / "checkpoints" / "LATEST"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (
            latest.is_file() and latest.read_text().startswith("rl-")):
        time.sleep(0.01)
    if after == "term-job":
        proc.send_signal(signal.SIGTERM)
    else:
        os.kill(_ranks(proc.pid)[1], signal.SIGKILL)
    err = proc.communicate(timeout=300)[1]
    lines = [line for line in err.strip().splitlines() if line.strip()]
    return proc.returncode, lines[-1] if lines else ""


PROGRAM = "import time\n\ndef f(x):\n    time.sleep(0.5)\n    return x + {}\n"
CHECK = "def check(candidate):\n    assert candidate(1) == 2\n"


def code_batch() -> dict:
    """In a child: 8 programs (4 right, 4 wrong, each 0.5 s) scored by code_tests while the
    sandbox's fork server is SIGKILLed once its harnesses run; {scores, killed}."""
    from zeroth.rewards import sandbox
    from zeroth.rewards.code import code_tests

    code_tests([PROGRAM.format(1)], test=[CHECK], entry_point=["f"])  # the server is up
    server = sandbox._FORK_SERVER._proc

    def kill_when_running():
        deadline = time.monotonic() + 30
        while not _children(server.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        os.kill(server.pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_when_running)
    killer.start()
    programs = [PROGRAM.format(1 if i % 2 == 0 else 0) for i in range(8)]
    scores = code_tests(programs, test=[CHECK] * 8, entry_point=["f"] * 8)
    killer.join()
    return {"scores": scores, "killed": server.poll() is not None}


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()] \
        if Path(f"/proc/{pid}").exists() else []


def _code_scenario(name: str, t0: float) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--code-batch"],
                          capture_output=True, text=True, timeout=300, env=env, check=False)
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    want = [1.0 if i % 2 == 0 else 0.0 for i in range(8)]
    right = sum(g == w for g, w in zip(got["scores"], want))
    wrongly_zero = sum(g == 0.0 and w == 1.0 for g, w in zip(got["scores"], want))
    fault, where = SCENARIOS[name][:2]
    said = [(f"server killed: {'yes' if got['killed'] else 'no'}; {right} of 8 scored right, "
            f"{wrongly_zero} right programs scored 0.0, "
            f"{sum(g is None for g in got['scores'])} recorded as verifier failures")]
    return {"name": name, "fault": fault, "where": where, "said": said, "recorded": 8,
            "destroyed": 0, "lost": wrongly_zero, "same_as_uninterrupted": right == 8,
            "seconds": round(time.perf_counter() - t0, 1)}


def scenario(name: str, work: Path, reference: dict) -> dict:
    """Run one injection and its resume; the row of the table."""
    fault, where, spec, after, resume = SCENARIOS[name]
    if after == "fork-server":
        return _code_scenario(name, time.perf_counter())
    cwd = work / name
    shutil.rmtree(cwd, ignore_errors=True)
    cwd.mkdir(parents=True)
    run = cwd / "runs" / "f"
    args = [*ARGS, "run.name=f"]
    t0 = time.perf_counter()
    wrap = None
    if after == "tmpfs":  # runs/ on a small tmpfs; the run continues from runs-copy/
        (cwd / "disk").mkdir()
        (cwd / "runs").mkdir()
        args = [*args, f"run.out_dir={cwd / 'disk'}"]
        wrap = _tmpfs_wrap(cwd / "disk", cwd / "runs")
    two = name in TWO_RANKS
    code, line = _job_fault(args, cwd, run, after) if two else _zeroth(args, cwd, spec, wrap)
    said = [f"exit {code}" + (f": {line}" if line else "")]
    recorded = records(run / "ledger.sqlite")
    recovered = None
    if after in ("flip", "truncate"):
        said.append((_flip if after == "flip" else _truncate)(run))
    if after == "truncate":  # judged without zeroth: what sqlite's own recovery gets back
        recovered = recoverable(run / "ledger.sqlite") & recorded
    if after == "readonly":
        code, line = _zeroth(["run", "--resume", str(run), "--quiet"], cwd,
                             wrap=_read_only_wrap(run))
        said.append(f"resume on a read-only mount: exit {code}: {line}")
    redone = set()
    if resume:
        ranks = ["--nproc", "2"] if two else []
        code, line, out = _zeroth(["run", *ranks, "--resume", str(run), "--quiet"], cwd,
                                  output=True)
        said.append(f"resumed: exit {code}" + (f": {line}" if code else ""))
        redone = superseded(recorded, out)
    final = records(run / "ledger.sqlite")
    same = final == reference["records"] and summary_of(run) == reference["summary"]
    if observed(run):
        said.append(observed(run))
    destroyed = set()
    if recovered is not None:  # destroyed: the rows neither zeroth nor sqlite got back
        destroyed = recorded - redone - recovered - final
        said.append(f"kept {len((recorded - redone) & final)} of the {len(recorded - redone)} "
                    f"rows before its checkpoint (sqlite's own .recover: {len(recovered)})")
    return _row(name, fault, where, said, recorded, recorded - redone - destroyed, final, same,
                t0, len(destroyed))


PHASES = ("pretrain", "eval_pretrain", "rl", "eval_rl")  # the tiny pipeline's, in order


def superseded(recorded: set[tuple], resume_output: str) -> set[tuple]:
    """The recorded rows a resume redoes by design: those after the checkpoint it resumed from
    (`resuming <run> from <stage>-<step>` in its output), which it cuts from the ledger and
    records again from the same seeds (identical, unless the fault itself changed them, as
    skipped non-finite steps did)."""
    import re

    found = re.search(r"from (\w+)-(\d+)", resume_output)
    if not found:
        return set()
    stage, step = found[1], int(found[2])
    later = set(PHASES[PHASES.index(stage) + 1:])  # its own evaluation and every later stage
    return {row for row in recorded
            if row[1] in later or (row[1] == stage and row[0] != "evals" and row[2] > step)}


def _row(name, fault, where, said, recorded, kept, final, same, t0, destroyed) -> dict:
    """A row of the table: `recorded`, the rows at the fault; `kept`, those that must survive
    it (less the ones a resume redoes and the ones the fault itself destroyed)."""
    return {"name": name, "fault": fault, "where": where, "said": said,
            "recorded": len(recorded), "destroyed": destroyed, "lost": len(kept - final),
            "same_as_uninterrupted": same, "seconds": round(time.perf_counter() - t0, 1)}


def reference_run(work: Path, ranks: int = 1) -> dict:
    """The uninterrupted run's records and summary (on `ranks` processes: a job of 2 sums its
    gradients in another order than one process, so its floats are its own)."""
    cwd = work / f"reference-{ranks}"
    shutil.rmtree(cwd, ignore_errors=True)
    cwd.mkdir(parents=True)
    code, line = _zeroth([*ARGS, "run.name=ref", *(["--nproc", str(ranks)] if ranks > 1 else [])],
                         cwd)
    if code:
        raise SystemExit(f"the reference run failed (exit {code}): {line}")
    run = cwd / "runs" / "ref"
    return {"records": records(run / "ledger.sqlite"), "summary": summary_of(run)}


def main() -> None:
    if "--code-batch" in sys.argv:
        print(json.dumps(code_batch()))
        return
    if "--child" in sys.argv:
        at = sys.argv.index("--child")
        sys.exit(child(sys.argv[at + 1], sys.argv[sys.argv.index("--") + 1:]))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="*", choices=sorted(SCENARIOS), metavar="NAME")
    p.add_argument("--jobs", type=int, default=2, help="scenarios at a time (one thread each)")
    p.add_argument("--work", default="/tmp/zeroth-faults")
    p.add_argument("--list", action="store_true")
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args()
    if args.list:
        print("\n".join(f"{k:24s} {v[0]} at {v[1]}" for k, v in SCENARIOS.items()))
        return
    work = Path(args.work)
    t0 = time.perf_counter()
    names = args.only or list(SCENARIOS)
    references = {1: reference_run(work)}
    if any(n in TWO_RANKS for n in names):
        references[2] = reference_run(work, 2)
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(
            lambda n: scenario(n, work, references[2 if n in TWO_RANKS else 1]), names))
    report(rows, time.perf_counter() - t0)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


def report(rows: list[dict], seconds: float) -> None:
    print("| fault | where | what zeroth did | records at the fault | lost | same as "
          "uninterrupted | s |")
    print("|---|---|---|---:|---:|---|---:|")
    for r in rows:
        same = "yes" if r["same_as_uninterrupted"] else \
            "no, by design" if r["name"] in DIFFERS else "NO"
        lost = f"{r['lost']}" + (f" (+{r['destroyed']} destroyed by the fault)"
                                 if r["destroyed"] else "")
        print(f"| {r['fault']} | {r['where']} | {'; '.join(r['said'])} | {r['recorded']} | "
              f"{lost} | {same} | {r['seconds']} |")
    total = sum(r["lost"] for r in rows)
    print(f"\n{len(rows)} injections in {seconds:.0f} s; records lost: {total}")


if __name__ == "__main__":
    main()
