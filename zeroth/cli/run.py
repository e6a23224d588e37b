"""`zeroth run`: a recipe end to end, or resumed; and `zeroth pretrain|sft|rl|rejection|distill`,
one stage alone (the same run with a one-stage pipeline).

Everything that can be checked is checked before a run directory is written: the config and
the task's data before torch is imported, then the model folder and the memory estimate.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from zeroth.errors import UserError

STAGE_HELP = {
    "pretrain": "next-token prediction on the task's demonstrations",
    "sft": "supervised fine-tuning on chat data (sft.data), loss on the answer only",
    "rl": "reinforcement learning with the GRPO family (rl.algorithm)",
    "rejection": "sample, keep verified-correct answers, write an SFT dataset",
    "distill": "a teacher's verified traces (and logits) teach a student",
}


def recipes_help() -> str:
    """The embedded recipes, one line each (the first comment line of each file)."""
    from zeroth.config import embedded_recipes, recipe_summary

    names = embedded_recipes()
    width = max(len(n) for n in names) + 2
    lines = [f"  {name:<{width}}{recipe_summary(name)}" for name in names]
    return "embedded recipes (zeroth run NAME, or a YAML file of your own):\n" + "\n".join(lines)


def add_parser(subparsers) -> None:
    run = subparsers.add_parser("run", help="run a recipe end to end (default: the embedded "
                                "default)", epilog=recipes_help(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("args", nargs="*", metavar="RECIPE|KEY=VALUE",
                     help="a recipe name or YAML file, then section.field=value overrides")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run; it takes "
                     "only rl.steps=N (more steps for a last rl stage, a finished run too), "
                     "run.threads=N, run.keep_checkpoints=N and run.max_nonfinite_steps=N")
    run.add_argument("--force", action="store_true", help="replace an existing run directory")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    add_nproc(run)
    for kind, text in STAGE_HELP.items():
        one = subparsers.add_parser(kind, help=f"run only the {kind} stage: {text}")
        one.add_argument("args", nargs="*", metavar="RECIPE|KEY=VALUE",
                         help=f"a recipe, then overrides (the {kind} section: {kind}.field=value)")
        one.add_argument("--force", action="store_true", help="replace an existing run directory")
        one.add_argument("--quiet", action="store_true", help="no progress bars")
        add_nproc(one)


def add_nproc(parser) -> None:
    parser.add_argument("--nproc", type=int, metavar="N", help="N processes on this machine, "
                        "data-parallel (torchrun --standalone --nproc-per-node N); across "
                        "machines call torchrun yourself: torchrun ... -m zeroth run ...")


def run(ns) -> int:
    """`zeroth run` (and each one-stage command): check everything, make or reopen the run
    directory (kept in ns.run_dir for the Ctrl-C message), run it, print the results. Under
    torchrun every rank comes here: rank 0 makes the directory, all run, rank 0 reports."""
    overrides = list(ns.args)
    recipe = overrides.pop(0) if overrides and "=" not in overrides[0] else None
    if ns.command != "run":  # one stage alone: the same run, with a one-stage pipeline
        overrides.append(f"run.pipeline=[{ns.command}]")
        ns.resume = None
    if getattr(ns, "nproc", None) is not None:
        return launch(ns, recipe, overrides)
    estimate = None
    if ns.resume:
        cfg = _resume_config(ns, recipe, overrides)
    else:
        from zeroth.config import load_config
        from zeroth.tasks import load_task

        cfg = load_config(recipe, overrides)  # no torch yet: a mistake is answered at once
        task = load_task(cfg)  # task options, data files, reward names: no torch either
        from zeroth.pipeline.run import preflight

        estimate = preflight(cfg, task)  # model folder, memory: before anything is written
    from zeroth.pipeline import dist
    from zeroth.pipeline.run import same_config

    dist.init(cfg.run.device)
    same_config(cfg)
    if ns.resume:
        run_dir = Path(ns.resume)
        cfg = dist.on_main(_resumed, ns.resume, overrides)  # rank 0 writes config.yaml
    else:
        run_dir, cfg = dist.on_main(_created, cfg, _stem(ns, recipe),
                                    ns.force)  # rank 0's config (paths resolved) for every rank
    ns.run_dir = run_dir
    from zeroth.pipeline.run import execute
    from zeroth.record.progress import Display
    from zeroth.record.report import print_results

    display = Display(quiet=ns.quiet) if dist.is_main() else Display.silent()
    display.print(f"run directory: {run_dir}", highlight=False)
    if dist.world() > 1:
        display.print(f"{dist.world()} ranks, data-parallel ({cfg.train.parallel})",
                      highlight=False)
    if estimate:
        display.print(estimate, highlight=False)
    from zeroth.pipeline.faults import stop_on_sigterm

    # SIGTERM: a checkpoint at the next safe point, then exit 0 (zeroth.pipeline.faults)
    with display, dist.peer_lost(run_dir), stop_on_sigterm():
        summary = execute(run_dir, cfg, display)
    if dist.is_main():
        print_results(display.console, summary, run_dir)
    dist.finish()
    return 0


def launch(ns, recipe: str | None, overrides: list[str]) -> int:
    """`zeroth run --nproc N`: check the config here (one answer, at once), then torchrun N
    ranks of `zeroth run` on this machine. The run's name is fixed here, so every rank and the
    Ctrl-C message agree on it. A rank that dies stops the others at once (torchrun's agent);
    its rank and exit code are the one line said about it."""
    if ns.nproc < 1:
        raise UserError(f"--nproc must be >= 1, got {ns.nproc}")
    argv = ["run"] + ([recipe] if recipe else [])  # a one-stage command: its pipeline override
    if ns.resume:
        argv += ["--resume", str(ns.resume)]
        _resume_config(ns, recipe, overrides)
        ns.run_dir = Path(ns.resume)
    else:
        from zeroth.config import check_world, load_config
        from zeroth.tasks import load_task

        cfg = load_config(recipe, overrides)
        load_task(cfg)
        check_world(cfg, ns.nproc)
        if not cfg.run.name:
            from zeroth.pipeline.run import default_name

            cfg.run.name = default_name(_stem(ns, recipe))
            overrides = [*overrides, f"run.name={cfg.run.name}"]
        ns.run_dir = Path(cfg.run.out_dir) / cfg.run.name
    argv += overrides + [flag for flag, on in (("--force", ns.force), ("--quiet", ns.quiet))
                         if on]
    from zeroth.pipeline.launch import torchrun

    return torchrun(ns.nproc, ["-m", "zeroth", *argv], ns.run_dir)


def _resume_config(ns, recipe: str | None, overrides: list[str]):
    """The config `--resume` continues with, checked (nothing written yet: `_resumed`)."""
    if ns.force:
        raise UserError("--resume continues a run and --force replaces one: give only one")
    if recipe:
        raise UserError(f"--resume takes no recipe ('{recipe}'): a run continues with the "
                        "config saved in its directory")
    from zeroth.config import check_world, load_run_config, resume_overrides

    cfg = resume_overrides(load_run_config(ns.resume), overrides)  # answered before torch
    if getattr(ns, "nproc", None) is not None:
        check_world(cfg, ns.nproc)
    return cfg


def _stem(ns, recipe: str | None) -> str:
    """What a run's default name starts with: the one-stage command, else the recipe's name."""
    return ns.command if ns.command != "run" else Path(recipe).stem if recipe else "default"


def _created(cfg, recipe_name: str, force: bool):
    """(run directory, cfg as create_run_dir completes it: its name, absolute paths)."""
    from zeroth.pipeline.run import create_run_dir

    return create_run_dir(cfg, recipe_name, force), cfg


def _resumed(run_dir, overrides: list[str]):
    """resume_config: `--resume`'s changes written to the run's config.yaml (by rank 0)."""
    from zeroth.pipeline.run import resume_config

    return resume_config(run_dir, overrides)
