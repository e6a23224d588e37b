"""`zeroth eval`: score any model folder, or a run's model, on any task's held-out problems.

    zeroth eval TARGET [RECIPE] [section.field=value ...] [--k N] [--checkpoint TAG|all]
                [--out FILE] [--force] [--quiet]

TARGET is a Hugging Face model folder (config.json) or a run directory: its final/ model when
the pipeline wrote one, else its latest checkpoint's model; `--checkpoint TAG` picks a
checkpoint instead (a folder name under runs/<name>/checkpoints/, e.g. rl-000030, or `final`),
`--checkpoint all` scores every checkpoint in training order, skipping those already scored
with the same task and settings unless --force. The task and the eval settings come from
RECIPE and the overrides; for a run directory given neither a recipe nor a task.* override,
from the run's own config.yaml (so `zeroth eval runs/x` repeats the run's final evaluation).
Prints a table (and one per difficulty level when the task has levels) and writes JSON: for a
run directory to runs/<name>/evals/<final or checkpoint tag>-<task>.json (what `zeroth view`
shows beside the run's own evaluations), else to ./eval-<model folder>-<task>.json.

The numbers are a function of the model, the task's held-out rows, run.seed and the whole eval
section — eval.batch_size included: the samples come from one random stream consumed batch
after batch, so another batch size draws other samples (run.device too: a GPU computes the
same network with other rounding).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from dataclasses import replace
from pathlib import Path

from zeroth.errors import UserError
from zeroth.models.locate import FINAL, is_model, locate_model, model_dir

NOT_A_TARGET = ("give a model folder (with config.json) or a run directory (runs/<name>) of an "
                "earlier `zeroth run`")
EVALS_DIR = "evals"  # under a run directory: one JSON per (model, task)
ALL = "all"
SOURCE = "zeroth eval"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `eval` command to the `zeroth` subparsers."""
    ev = subparsers.add_parser("eval", help="evaluate a model folder or a run's model on a task")
    ev.add_argument("target", metavar="TARGET",
                    help="a model folder (config.json) or a run directory (runs/<name>)")
    ev.add_argument("args", nargs="*", metavar="RECIPE|KEY=VALUE",
                    help="a recipe name or YAML file, then section.field=value overrides")
    ev.add_argument("--k", type=int, metavar="N", help="samples per problem (eval.k)")
    ev.add_argument("--checkpoint", metavar="TAG",
                    help="a run directory's checkpoint to score (e.g. rl-000030, or final); "
                    "'all': every checkpoint in order, skipping those already scored")
    ev.add_argument("--out", metavar="FILE", help="JSON results (default: "
                    "<run>/evals/<final or checkpoint>-<task>.json, or "
                    "./eval-<model folder>-<task>.json)")
    ev.add_argument("--force", action="store_true",
                    help="replace existing results (and re-score with --checkpoint all)")
    ev.add_argument("--quiet", action="store_true", help="no progress lines")
    return ev


def resolve_target(target: str | Path) -> tuple[Path, Path | None]:
    """(model folder, run directory or None) for TARGET (see
    `zeroth.models.locate.locate_model`)."""
    path = Path(target).expanduser()
    if not path.is_dir():
        raise UserError(f"eval target '{target}' does not exist — {NOT_A_TARGET}")
    folder, run_dir = locate_model(path, "eval target")
    if not is_model(folder):
        raise UserError(f"eval target '{target}' is neither a model folder (no config.json) nor "
                        f"a run directory (no config.yaml) — {NOT_A_TARGET}")
    return folder, run_dir


# -- which model: checkpoints of a run ----------------------------------------------------------


def checkpoint_info(ckpt: Path, tag: str | None = None) -> dict:
    """{"tag", "stage", "stage_index", "step"} of a checkpoint folder: the stage from its tag
    (`rl-000030` -> rl), the pipeline stage index and step from its state.json when readable."""
    tag = tag or ckpt.name
    named = re.fullmatch(r"(.+)-(\d+)", tag)
    try:
        state = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        state = {}
    state = state if isinstance(state, dict) else {}
    step = state.get("step")
    if not isinstance(step, int):
        step = int(named[2]) if named else None
    index = state.get("index")
    return {"tag": tag, "stage": named[1] if named else None,
            "stage_index": index if isinstance(index, int) else None, "step": step}


def final_info() -> dict:
    return {"tag": FINAL, "stage": None, "stage_index": None, "step": None}


def model_info(folder: Path, run_dir: Path | None) -> dict | None:
    """Which of a run's models `folder` is (its final/ or a checkpoint's model/); None outside
    a run."""
    if run_dir is None:
        return None
    if folder == run_dir / FINAL:
        return final_info()
    ckpt = folder.parent
    tag = ckpt.name
    if tag.startswith("."):  # the whole old copy of a checkpoint being replaced: LATEST's tag
        tag = (ckpt.parent / "LATEST").read_text(encoding="utf-8").strip() or tag
    return checkpoint_info(ckpt, tag)


def _order(info: dict) -> tuple:
    big = float("inf")
    index, step = info["stage_index"], info["step"]
    return (big if index is None else index, big if step is None else step, info["tag"])


def checkpoint_tags(run_dir: Path) -> list[str]:
    """The run's complete checkpoints (model/ and state.json), in training order."""
    root = run_dir / "checkpoints"
    found = [checkpoint_info(p) for p in (sorted(root.iterdir()) if root.is_dir() else [])
             if not p.name.startswith(".") and (p / "model").is_dir()
             and (p / "state.json").is_file()]
    return [info["tag"] for info in sorted(found, key=_order)]


def pick_models(run_dir: Path, choice: str) -> list[tuple[Path, dict]]:
    """[(model folder, model_info)] for --checkpoint TAG, `final` or `all`."""
    tags = checkpoint_tags(run_dir)
    if choice == ALL and not tags:
        raise UserError(f"run directory '{run_dir}' has no checkpoint yet — score it once its "
                        "first checkpoint is written, or drop --checkpoint")
    if choice == FINAL and is_model(run_dir / FINAL):
        return [(run_dir / FINAL, final_info())]
    if choice != ALL and choice not in tags:
        offered = tags + ([FINAL] if is_model(run_dir / FINAL) else [])
        raise UserError(f"run directory '{run_dir}' has no checkpoint '{choice}' — available: "
                        f"{', '.join(offered) or 'none yet'} (or --checkpoint all)")
    chosen = tags if choice == ALL else [choice]
    root = run_dir / "checkpoints"
    return [(model_dir(root / tag), checkpoint_info(root / tag)) for tag in chosen]


# -- settings and where the results go ----------------------------------------------------------


def eval_config(args: list[str], k: int | None, run_dir: Path | None):
    """The config giving task and eval settings: RECIPE and overrides, or the run's own."""
    from zeroth.config import load_config, load_run_config

    args = list(args)
    recipe = args.pop(0) if args and "=" not in args[0] else None
    overrides = args + ([f"eval.k={k}"] if k is not None else [])
    saved = run_dir / "config.yaml" if run_dir is not None else None
    use_run = saved is not None and saved.is_file() and recipe is None
    if use_run and not any(o.split("=", 1)[0].startswith("task.") for o in overrides):
        load_run_config(run_dir)  # a damaged config.yaml says so in its own words
        return load_config(saved, overrides)
    return load_config(recipe, overrides)


def settings(cfg, task_name: str, problems: int) -> dict:
    """What, besides the model, decides the numbers (and whether old results can be kept)."""
    return {"task": task_name, "k": cfg.eval.k, "seed": cfg.run.seed, "problems": problems,
            "eval": {"temperature": cfg.eval.temperature,
                     "max_new_tokens": cfg.eval.max_new_tokens,
                     "batch_size": cfg.eval.batch_size}}


def output_path(out: str | None, folder: Path, run_dir: Path | None, task: str,
                info: dict | None = None) -> Path:
    """Where the JSON goes: --out, <run>/evals/<model tag>-<task>.json, or ./eval-..."""
    safe = re.sub(r"[^\w.-]+", "-", task).strip("-") or "task"
    if out:
        path = Path(out).expanduser()
    elif run_dir is not None:
        path = run_dir / EVALS_DIR / f"{(info or final_info())['tag']}-{safe}.json"
    else:
        path = Path(f"eval-{folder.resolve().name}-{safe}.json")
    if path.is_dir():
        raise UserError(f"--out '{path}' is a directory — give a file name")
    return path


def already_done(path: Path, wanted: dict, force: bool, skip_same: bool) -> bool:
    """Whether `path` already holds these results (skip it); UserError when it holds something
    that only --force may replace."""
    if force or not path.exists():
        return False
    if skip_same:
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if isinstance(old, dict) and all(old.get(k) == v for k, v in wanted.items()):
            return True
        raise UserError(f"'{path}' holds results of other settings (or is unreadable) — add "
                        "--force to replace it")
    raise UserError(f"'{path}' already exists — add --force to replace it or give --out FILE")


def load_for_eval(folder: Path, cfg):
    """(model, tokenizer) in eval mode on run.device, in the dtype it was saved in, computing in
    model.precision, with the chat template model.template asks for."""
    from zeroth.models import hf as models
    from zeroth.models.precision import set_precision

    model, tokenizer = models.load_model(folder, dtype="auto", template=cfg.model.template)
    model = model.to(models.pick_device(cfg.run.device)).eval()
    return set_precision(model, cfg.model.precision), tokenizer  # as the run computed


# -- the command --------------------------------------------------------------------------------


def plan(ns, cfg, task_name: str, problems: int) -> tuple[list, int, Path | None, dict]:
    """([(model folder, model info, out path)] still to score, how many were skipped, run dir,
    settings); every existing result is checked before anything is scored, so an error
    clobbers nothing."""
    folder, run_dir = resolve_target(ns.target)
    if ns.checkpoint and run_dir is None:
        raise UserError(f"--checkpoint needs a run directory (runs/<name>), but '{ns.target}' "
                        "is a model folder — drop --checkpoint")
    models = pick_models(run_dir, ns.checkpoint) if ns.checkpoint else \
        [(folder, model_info(folder, run_dir))]
    if ns.out and len(models) > 1:
        raise UserError("--out names one file, but --checkpoint all scores several models — "
                        f"drop --out (results go to {run_dir / EVALS_DIR})")
    wanted = settings(cfg, task_name, problems)
    todo = []
    for model_folder, info in models:
        out = output_path(ns.out, model_folder, run_dir, task_name, info)
        if not already_done(out, {**wanted, "checkpoint": info}, ns.force,
                            ns.checkpoint == ALL):
            todo.append((model_folder, info, out))
    return todo, len(models) - len(todo), run_dir, wanted


def score(folder: Path, cfg, task, rows, display) -> dict:
    """The metrics of one model (by_difficulty among them)."""
    from zeroth.rollout import make_engine
    from zeroth.stages.eval import evaluate

    model, tokenizer = load_for_eval(folder, cfg)
    with display.stage("eval", total=1) as update:
        metrics, _ = evaluate(make_engine(cfg, model), tokenizer, task, rows, cfg.eval,
                              cfg.run.seed)
        update(1, pass1=metrics["pass1"], greedy=metrics["greedy"])
    return metrics


def report(display, result: dict, folder: Path, out: Path, temperature: float) -> None:
    from zeroth.record.report import difficulty_table, eval_table

    metrics, levels = result["metrics"], result["by_difficulty"]
    title = (f"{result['task']} · {folder} · {result['problems']} held-out problems · "
             f"{result['wall_s']:.0f}s")
    display.print(eval_table(metrics, title, temperature))
    if result.get("by_task"):
        display.print(difficulty_table(result["by_task"], metrics["k"], "by task", "task"))
    if levels:
        display.print(difficulty_table(levels, metrics["k"]))
    display.print(f"results: {out}", highlight=False)


def cmd_eval(ns) -> int:
    import torch

    from zeroth.record.progress import Display
    from zeroth.tasks import load_task

    _, run_dir = resolve_target(ns.target)
    cfg = eval_config(ns.args, ns.k, run_dir)
    # evaluation scores the task's own verifier and format: the RL reward weights play no part
    task = load_task(replace(cfg, rl=replace(cfg.rl, reward_weights=None)))
    try:
        rows = task.eval_rows(cfg.task.eval_problems, cfg.run.seed)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    todo, skipped, run_dir, wanted = plan(ns, cfg, task.name, len(rows))
    display = Display(quiet=ns.quiet)
    if skipped:
        display.print(f"skipping {skipped} checkpoint(s) already scored with these settings "
                      f"(in {run_dir / EVALS_DIR}; --force re-scores them)", highlight=False)
    torch.set_num_threads(cfg.run.threads)
    header = {"source": SOURCE, "run": str(run_dir) if run_dir else None, **wanted}
    with display:
        for folder, info, out in todo:
            evaluate_one(folder, info, out, (cfg, task, rows), header, display)
    if ns.checkpoint == ALL:
        summarise(display, run_dir, task.name, wanted)
    return 0


def summarise(display, run_dir: Path, task_name: str, wanted: dict) -> None:
    """The table of every checkpoint scored with these settings, this time or before."""
    from zeroth.record.report import checkpoints_table

    results = []
    for folder, info in pick_models(run_dir, ALL):
        out = output_path(None, folder, run_dir, task_name, info)
        try:
            result = json.loads(out.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if all(result.get(key) == value for key, value in wanted.items()):
            results.append(result)
    if results:
        display.print(checkpoints_table(results, f"{task_name} · {run_dir} · every checkpoint"))


def evaluate_one(folder: Path, info: dict | None, out: Path, job: tuple, header: dict,
                 display) -> None:
    """Score one model, write its JSON (`header` + which model + numbers), print its tables."""
    from zeroth.pipeline.run import write_json

    cfg, task, rows = job
    t0 = time.time()
    display.print(f"evaluating {folder} on {task.name}: {len(rows)} problems x {cfg.eval.k} "
                  "samples + greedy", highlight=False)
    metrics = score(folder, cfg, task, rows, display)
    levels = metrics.pop("by_difficulty", None)
    families = metrics.pop("by_task", None)
    result = {**header, "model": str(folder.resolve()), "checkpoint": info,
              "metrics": metrics, "by_difficulty": levels,
              **({"by_task": families} if families else {}),
              "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "wall_s": round(time.time() - t0, 2)}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    report(display, result, folder, out, cfg.eval.temperature)


run = cmd_eval  # the command module's entry point (zeroth.cli.command_modules)
