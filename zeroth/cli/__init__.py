"""`zeroth` command line: thin argument parsing that dispatches to the pipeline.

    zeroth --version
    zeroth run [RECIPE] [section.field=value ...] [--force] [--quiet] [--nproc N]
    zeroth run --resume runs/<name> [rl.steps=N] [run.threads=N] [run.keep_checkpoints=N]
    zeroth pretrain|sft|rl|rejection|distill [RECIPE] [section.field=value ...]   (one stage)
    zeroth eval MODEL|runs/<name> [RECIPE] [section.field=value ...] [--k N] [--out FILE] [--force]
    zeroth export runs/<name>|CHECKPOINT|MODEL OUT [--force]
    zeroth view [runs/<name> ...] [--port N]       (a local web app over the ledgers)
    zeroth chat runs/<name>|MODEL                  (talk to a checkpoint in the terminal)
    zeroth plot runs/<name> [--out DIR]            (PNG curves)
    zeroth metrics runs/<name> --tensorboard DIR | --wandb PROJECT | --csv FILE

Mistakes a user can fix print one line (`zeroth: error: ...`) and exit with code 2. A config
mistake is found before torch or transformers is imported, so it is answered at once.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys

from zeroth.errors import UserError
from zeroth.pipeline.checkpoint import DiskFull
from zeroth.pipeline.faults import Stopped


def _quiet_libraries() -> None:
    """Offline hub, no tokenizer threads, transformers' warnings and progress bars off: set in
    the environment, which the libraries read when they are imported, so none is imported
    here (only set directly when one already is, as when `main` is called in-process)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        from transformers.utils import logging

        logging.set_verbosity_error()
        logging.disable_progress_bar()


def version() -> str:
    """zeroth's version: the installed package's metadata, else `zeroth.__version__`."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("zeroth")
    except PackageNotFoundError:
        from zeroth import __version__

        return __version__


def command_modules() -> dict:
    """Each command's module (zeroth/cli/<name>.py): `add_parser(subparsers)` and `run(ns) ->
    int`; heavy libraries are imported only inside `run`. `run` also serves the one-stage
    commands (pretrain, sft, rl, rejection, distill)."""
    from zeroth.cli import chat, export, metrics, plot, run, view
    from zeroth.cli import eval as evaluate

    modules = {"run": run, "eval": evaluate, "export": export, "view": view, "chat": chat,
               "plot": plot, "metrics": metrics}
    return {**modules, **dict.fromkeys(run.STAGE_HELP, run)}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="zeroth", description="RL on verifiable rewards.")
    ap.add_argument("--version", action="version", version=f"zeroth {version()}")
    sub = ap.add_subparsers(dest="command", required=True)
    for module in dict.fromkeys(command_modules().values()):  # each once, in order
        module.add_parser(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    ns, extra = ap.parse_known_args(argv)  # lets options and KEY=VALUE overrides interleave
    unknown = [e for e in extra if e.startswith("-")]
    if unknown:
        ap.error(f"unrecognized option {unknown[0]}")
    ns.args = list(getattr(ns, "args", [])) + extra
    _quiet_libraries()
    try:
        return command_modules()[ns.command].run(ns)
    except (Stopped, DiskFull, OSError, sqlite3.Error) as exc:  # a stop asked for, a full disk
        return _stopped(exc, getattr(ns, "run_dir", None))
    except UserError as exc:
        if os.environ.get("RANK", "0") == "0":  # under torchrun rank 0 speaks for every rank
            print(f"zeroth: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        run_dir = getattr(ns, "run_dir", None)  # set by cmd_run once the run directory exists
        if run_dir:
            from zeroth.pipeline.runstate import resume_command

            hint = f" — continue with {resume_command(run_dir)}"
        else:
            hint = ""
        if "RANK" not in os.environ:  # under torchrun the launcher says it
            print(f"zeroth: interrupted{hint}", file=sys.stderr)
        return 130


def _stopped(exc: BaseException, run_dir) -> int:
    """A run stopped at a safe point by SIGTERM (exit 0, with the command that resumes it), or
    a write the disk refused (a full disk, a read-only folder: one line with that command,
    exit 1); any other exception is raised again."""
    from zeroth.pipeline import faults

    main = os.environ.get("RANK", "0") == "0"
    if isinstance(exc, Stopped):
        if main:
            from zeroth.pipeline.runstate import resume_command

            print(f"zeroth: stopped by {exc.signal_name}; checkpoint {exc.tag} saved — "
                  f"continue with {resume_command(run_dir)}", file=sys.stderr)
        return 0
    if isinstance(exc, DiskFull):  # a checkpoint or model folder's save: its own message
        if main:
            from zeroth.pipeline.runstate import resume_command

            text = exc.continuing_with(resume_command(run_dir)) if run_dir else str(exc)
            print(f"zeroth: error: {text}", file=sys.stderr)
        return 1
    kind = faults.write_failure(exc)
    if kind is None:
        raise exc
    if main:
        print(f"zeroth: error: {faults.write_failure_message(exc, run_dir, kind)}",
              file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
