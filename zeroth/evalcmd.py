"""`zeroth eval`: score any model folder, or a run's model, on any task's held-out problems.

    zeroth eval TARGET [RECIPE] [section.field=value ...] [--k N] [--out FILE] [--force] [--quiet]

TARGET is a Hugging Face model folder (config.json) or a run directory: its final/ model when
the pipeline wrote one, else its latest checkpoint's model. The task and the eval settings come
from RECIPE and the overrides; for a run directory given neither a recipe nor a task.* override,
from the run's own config.yaml (so `zeroth eval runs/x` repeats the run's final evaluation).
Prints a table (and one per difficulty level when the task has levels) and writes JSON.

The numbers are a function of the model, the task's held-out rows, run.seed and the whole eval
section — eval.batch_size included: the samples come from one random stream consumed batch
after batch, so another batch size draws other samples (run.device too: a GPU computes the
same network with other rounding).
"""

from __future__ import annotations

import argparse
import re
import time
from dataclasses import replace
from pathlib import Path

from zeroth.errors import UserError

NOT_A_TARGET = ("give a model folder (with config.json) or a run directory (runs/<name>) of an "
                "earlier `zeroth run`")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `eval` command to the `zeroth` subparsers."""
    ev = subparsers.add_parser("eval", help="evaluate a model folder or a run's model on a task")
    ev.add_argument("target", metavar="TARGET",
                    help="a model folder (config.json) or a run directory (runs/<name>)")
    ev.add_argument("args", nargs="*", metavar="RECIPE|KEY=VALUE",
                    help="a recipe name or YAML file, then section.field=value overrides")
    ev.add_argument("--k", type=int, metavar="N", help="samples per problem (eval.k)")
    ev.add_argument("--out", metavar="FILE", help="JSON results (default: <run>/eval-<task>.json, "
                    "or ./eval-<model folder>-<task>.json)")
    ev.add_argument("--force", action="store_true", help="replace an existing --out file")
    ev.add_argument("--quiet", action="store_true", help="no progress lines")
    return ev


def _is_model(folder: Path) -> bool:
    """A Hugging Face model folder, or a LoRA adapter folder (adapter_config.json)."""
    return (folder / "config.json").is_file() or (folder / "adapter_config.json").is_file()


def resolve_target(target: str | Path) -> tuple[Path, Path | None]:
    """(model folder, run directory or None) for TARGET."""
    path = Path(target).expanduser()
    if not path.is_dir():
        raise UserError(f"eval target '{target}' does not exist — {NOT_A_TARGET}")
    if _is_model(path):
        return path, None
    if not any((path / name).exists() for name in ("config.yaml", "final", "checkpoints")):
        raise UserError(f"eval target '{target}' is neither a model folder (no config.json) nor "
                        f"a run directory (no config.yaml) — {NOT_A_TARGET}")
    from zeroth.checkpoint import latest_checkpoint, model_dir

    if _is_model(path / "final"):
        return path / "final", path
    ckpt = latest_checkpoint(path)
    if ckpt is None:
        raise UserError(f"run directory '{target}' has no final model and no checkpoint yet — "
                        "evaluate it once its first checkpoint is written")
    return model_dir(ckpt), path


def eval_config(args: list[str], k: int | None, run_dir: Path | None):
    """The config giving task and eval settings: RECIPE and overrides, or the run's own."""
    from zeroth.config import load_config
    from zeroth.run import load_run_config

    args = list(args)
    recipe = args.pop(0) if args and "=" not in args[0] else None
    overrides = args + ([f"eval.k={k}"] if k is not None else [])
    saved = run_dir / "config.yaml" if run_dir is not None else None
    use_run = saved is not None and saved.is_file() and recipe is None
    if use_run and not any(o.split("=", 1)[0].startswith("task.") for o in overrides):
        load_run_config(run_dir)  # a damaged config.yaml says so in its own words
        return load_config(saved, overrides)
    return load_config(recipe, overrides)


def output_path(out: str | None, folder: Path, run_dir: Path | None, task: str,
                force: bool) -> Path:
    """Where the JSON goes; an existing file is kept unless `force`."""
    safe = re.sub(r"[^\w.-]+", "-", task).strip("-") or "task"
    if out:
        path = Path(out).expanduser()
    elif run_dir is not None:
        path = run_dir / f"eval-{safe}.json"
    else:
        path = Path(f"eval-{folder.resolve().name}-{safe}.json")
    if path.is_dir():
        raise UserError(f"--out '{path}' is a directory — give a file name")
    if path.exists() and not force:
        raise UserError(f"'{path}' already exists — add --force to replace it or give --out FILE")
    return path


def load_for_eval(folder: Path, cfg):
    """(model, tokenizer) in eval mode on run.device, in the dtype it was saved in, with the
    chat template model.template asks for."""
    from zeroth import models

    model, tokenizer = models.load_model(folder, dtype="auto", template=cfg.model.template)
    return model.to(models.pick_device(cfg.run.device)).eval(), tokenizer


def cmd_eval(ns) -> int:
    import torch

    from zeroth.evaluate import evaluate
    from zeroth.progress import Display
    from zeroth.report import difficulty_table, eval_table
    from zeroth.run import write_json
    from zeroth.tasks import load_task

    t0 = time.time()
    folder, run_dir = resolve_target(ns.target)
    cfg = eval_config(ns.args, ns.k, run_dir)
    # evaluation scores the task's own verifier and format: the RL reward weights play no part
    task = load_task(replace(cfg, rl=replace(cfg.rl, reward_weights=None)))
    out = output_path(ns.out, folder, run_dir, task.name, ns.force)
    try:
        rows = task.eval_rows(cfg.task.eval_problems, cfg.run.seed)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    torch.set_num_threads(cfg.run.threads)
    model, tokenizer = load_for_eval(folder, cfg)
    display = Display(quiet=ns.quiet)
    display.print(f"evaluating {folder} on {task.name}: {len(rows)} problems x {cfg.eval.k} "
                  "samples + greedy", highlight=False)
    with display, display.stage("eval", total=1) as update:
        metrics, _ = evaluate(model, tokenizer, task, rows, cfg.eval, cfg.run.seed)
        update(1, pass1=metrics["pass1"], greedy=metrics["greedy"])
    levels = metrics.pop("by_difficulty", None)
    result = {
        "model": str(folder.resolve()), "run": str(run_dir) if run_dir else None,
        "task": task.name, "k": cfg.eval.k, "seed": cfg.run.seed, "problems": len(rows),
        "eval": {"temperature": cfg.eval.temperature, "max_new_tokens": cfg.eval.max_new_tokens,
                 "batch_size": cfg.eval.batch_size},
        "metrics": metrics, "by_difficulty": levels,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "wall_s": round(time.time() - t0, 2),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    title = f"{task.name} · {folder} · {len(rows)} held-out problems · {result['wall_s']:.0f}s"
    display.print(eval_table(metrics, title, cfg.eval.temperature))
    if levels:
        display.print(difficulty_table(levels, cfg.eval.k))
    display.print(f"results: {out}", highlight=False)
    return 0
