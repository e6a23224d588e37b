"""`zeroth` command line: thin argument parsing that dispatches to the pipeline.

    zeroth --version
    zeroth run [RECIPE] [section.field=value ...] [--force] [--quiet]
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
import sys
from pathlib import Path

from zeroth.errors import UserError


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


def recipes_help() -> str:
    """The embedded recipes, one line each (the first comment line of each file)."""
    from zeroth.config import embedded_recipes, recipe_summary

    names = embedded_recipes()
    width = max(len(n) for n in names) + 2
    lines = [f"  {name:<{width}}{recipe_summary(name)}" for name in names]
    return "embedded recipes (zeroth run NAME, or a YAML file of your own):\n" + "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="zeroth", description="RL on verifiable rewards.")
    ap.add_argument("--version", action="version", version=f"zeroth {version()}")
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a recipe end to end (default: the embedded default)",
                         epilog=recipes_help(),
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("args", nargs="*", metavar="RECIPE|KEY=VALUE",
                     help="a recipe name or YAML file, then section.field=value overrides")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run; it takes "
                     "only rl.steps=N (more steps for a last rl stage, a finished run too), "
                     "run.threads=N and run.keep_checkpoints=N")
    run.add_argument("--force", action="store_true", help="replace an existing run directory")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    from zeroth.cli.eval import add_parser as add_eval_parser

    add_eval_parser(sub)
    for kind, text in STAGE_HELP.items():
        one = sub.add_parser(kind, help=f"run only the {kind} stage: {text}")
        one.add_argument("args", nargs="*", metavar="RECIPE|KEY=VALUE",
                         help=f"a recipe, then overrides (the {kind} section: {kind}.field=value)")
        one.add_argument("--force", action="store_true", help="replace an existing run directory")
        one.add_argument("--quiet", action="store_true", help="no progress bars")
    export = sub.add_parser("export", help="write a run's (or checkpoint's) model as a plain "
                            "Hugging Face folder, LoRA merged")
    export.add_argument("source", help="runs/<name>, a checkpoint directory or a model folder")
    export.add_argument("out", help="the folder to write")
    export.add_argument("--force", action="store_true", help="replace an existing folder")
    for module in _command_modules().values():
        module.add_parser(sub)
    return ap


def _command_modules() -> dict:
    """The commands that live in their own module: each has `add_parser(subparsers)` and
    `run(ns) -> int`, and imports its heavy libraries only inside `run`."""
    from zeroth import view
    from zeroth.cli import chat, plot
    from zeroth.cli import metrics as tracking

    return {"view": view, "chat": chat, "plot": plot, "metrics": tracking}


def cmd_export(ns) -> int:
    from zeroth.pipeline.export import export_model

    print(f"exported to {export_model(ns.source, ns.out, ns.force)} (loads with "
          "AutoModelForCausalLM.from_pretrained)")
    return 0


STAGE_HELP = {
    "pretrain": "next-token prediction on the task's demonstrations",
    "sft": "supervised fine-tuning on chat data (sft.data), loss on the answer only",
    "rl": "reinforcement learning with the GRPO family (rl.algorithm)",
    "rejection": "sample, keep verified-correct answers, write an SFT dataset",
    "distill": "a teacher's verified traces (and logits) teach a student",
}


def cmd_run(ns) -> int:
    """`zeroth run` (and each one-stage command): check everything, make or reopen the run
    directory (kept in ns.run_dir for the Ctrl-C message), run it, print the results."""
    overrides = list(ns.args)
    recipe = overrides.pop(0) if overrides and "=" not in overrides[0] else None
    if ns.command != "run":  # one stage alone: the same run, with a one-stage pipeline
        overrides.append(f"run.pipeline=[{ns.command}]")
        ns.resume = None
    estimate = None
    if ns.resume:
        run_dir, cfg = Path(ns.resume), _resume_config(ns, recipe, overrides)
    else:
        from zeroth.config import load_config
        from zeroth.tasks import load_task

        cfg = load_config(recipe, overrides)  # no torch yet: a mistake is answered at once
        task = load_task(cfg)  # task options, data files, reward names: no torch either
        from zeroth.pipeline.run import create_run_dir, preflight

        estimate = preflight(cfg, task)  # model folder, memory: before anything is written
        name = Path(recipe).stem if recipe else "default"
        run_dir = create_run_dir(cfg, ns.command if ns.command != "run" else name, ns.force)
    ns.run_dir = run_dir
    from zeroth.pipeline.run import execute
    from zeroth.record.progress import Display
    from zeroth.record.report import print_results

    display = Display(quiet=ns.quiet)
    display.print(f"run directory: {run_dir}", highlight=False)
    if estimate:
        display.print(estimate, highlight=False)
    with display:
        summary = execute(run_dir, cfg, display)
    print_results(display.console, summary, run_dir)
    return 0


def _resume_config(ns, recipe: str | None, overrides: list[str]):
    """The config `--resume` continues with (zeroth.pipeline.run.resume_config)."""
    if ns.force:
        raise UserError("--resume continues a run and --force replaces one: give only one")
    if recipe:
        raise UserError(f"--resume takes no recipe ('{recipe}'): a run continues with the "
                        "config saved in its directory")
    from zeroth.config import load_run_config, resume_overrides

    resume_overrides(load_run_config(ns.resume), overrides)  # mistakes answered before torch
    from zeroth.pipeline.run import resume_config

    return resume_config(ns.resume, overrides)


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    ns, extra = ap.parse_known_args(argv)  # lets options and KEY=VALUE overrides interleave
    unknown = [e for e in extra if e.startswith("-")]
    if unknown:
        ap.error(f"unrecognized option {unknown[0]}")
    ns.args = list(getattr(ns, "args", [])) + extra
    _quiet_libraries()
    try:
        from zeroth.cli.eval import cmd_eval

        commands = {"run": cmd_run, "eval": cmd_eval, "export": cmd_export,
                    **dict.fromkeys(STAGE_HELP, cmd_run),
                    **{name: module.run for name, module in _command_modules().items()}}
        return commands[ns.command](ns)
    except UserError as exc:
        print(f"zeroth: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        run_dir = getattr(ns, "run_dir", None)  # set by cmd_run once the run directory exists
        if run_dir:
            from zeroth.pipeline.runstate import resume_command

            hint = f" — continue with {resume_command(run_dir)}"
        else:
            hint = ""
        print(f"zeroth: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
