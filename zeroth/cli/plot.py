"""`zeroth plot`: PNG curves of runs, for papers and READMEs.

    zeroth plot runs/a [runs/b ...] [--out DIR] [--metrics reward,kl] [--smooth W] [--phase rl]

One figure per metric group, written to DIR (default: <first run>/plots/): reward.png (total and
each reward_* component), accuracy.png (the task's accuracy reward during RL, and the held-out
evaluations — pass@1, greedy, maj@k — at the RL step they were taken, with every RL checkpoint
that `zeroth eval --checkpoint` scored), length.png, kl.png,
entropy.png, reflection.png, lr.png, loss.png (pre-training, SFT, distillation), tasks.png (a mix
of task families: each family's training accuracy and held-out pass@1 during RL, the curriculum's
level changes as dotted vertical lines, and a panel of the levels) and summary.png (a 2x2
overview). Several runs are overlaid, one colour each. RL curves share one step axis (a
second RL stage continues where the first ended); other stages use their own steps. A group no
run has is skipped. The ledgers are read read-only, so a running run can be plotted.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from zeroth.cli.metrics import (
    eval_stage,
    is_eval,
    number,
    phase_kind,
    read_metrics,
    rl_offsets,
    run_config,
    run_dir,
    unique_names,
)
from zeroth.errors import UserError

GROUPS = ("reward", "accuracy", "length", "kl", "entropy", "reflection", "lr", "loss", "tasks",
          "summary")
ACCURACY_REWARDS = ("correct", "math_accuracy", "code_tests")  # preferred, in this order
EVAL_MARKS = (("pass@1", "o"), ("greedy", "s"), ("maj", "^"))  # maj: the maj@k key logged
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
          "#17becf", "#7f7f7f", "#bcbd22")
STYLES = ("-", "--", ":", "-.")
LABELS = {"reward": "total reward", "accuracy": "train accuracy", "mean_len": "mean length",
          "reflect_rate": "reflection rate", "think_rate": "<think> rate"}
SIZE, DPI = (6.4, 4.0), 200  # inches, dots per inch: 1280x800 pixels
SUMMARY_SIZE, SUMMARY_DPI = (11.0, 7.5), 150


@dataclass
class Run:
    """The plottable content of one run: training rows and evaluations (label, x, metrics)."""

    name: str
    path: Path
    train: list[dict] = field(default_factory=list)
    evals: list[tuple[str | None, float, dict]] = field(default_factory=list)
    has_rl: bool = False


def accuracy_key(rows: list[dict]) -> str | None:
    """The reward component that is the task's accuracy (reward_correct for the procedural
    tasks, reward_math_accuracy, reward_code_tests...), or None."""
    keys = {k for r in rows for k in r if k.startswith("reward_")}
    for name in ACCURACY_REWARDS:
        if f"reward_{name}" in keys:
            return f"reward_{name}"
    return next((k for k in sorted(keys) if "accuracy" in k or "correct" in k), None)


def load_run(path: Path, name: str, phases: set[str] | None) -> Run:
    rows = read_metrics(path)
    if not rows:
        raise UserError(f"{path} has no metrics yet — wait for its first logged step")
    if phases is not None:
        rows = [r for r in rows if r["phase"] in phases]
    at = rl_offsets(rows)
    acc = accuracy_key([r for r in rows if phase_kind(r["phase"]) == "rl"])
    run = Run(name, path, has_rl=any(phase_kind(r["phase"]) == "rl" for r in rows))
    for row in rows:
        phase = row["phase"]
        if is_eval(phase):
            x = at[phase] if run.has_rl else len(run.evals)
            label = "start" if phase == "eval_start" else f"after {eval_stage(phase)}"
            run.evals.append((label, x, row))
        elif phase_kind(phase) == "rl":
            run.train.append({**row, "step": at[phase] + row["step"], "rl": True,
                              **({"accuracy": row.get(acc)} if acc else {})})
        else:
            run.train.append({**row, "rl": False})
    if run.has_rl and phases is None:
        run.evals = sorted(run.evals + checkpoint_evals(path, at), key=lambda e: e[1])
    return run


def checkpoint_evals(path: Path, at: dict[str, int]) -> list[tuple[str | None, float, dict]]:
    """The held-out results `zeroth eval --checkpoint` saved for the run's RL checkpoints with
    the run's own task and evaluation settings (k, seed, problems, temperature, ...), at their
    RL step (unlabelled: they are many)."""
    import json

    from zeroth.view.queries import saved_eval_files

    cfg = run_config(path)
    section = {name: cfg.get(name) if isinstance(cfg.get(name), dict) else {}
               for name in ("task", "eval", "run")}
    ev = section["eval"]
    wanted = {"task": section["task"].get("name"), "k": ev.get("k"),
              "seed": section["run"].get("seed"), "problems": section["task"].get("eval_problems"),
              "eval": {key: ev.get(key) for key in ("temperature", "max_new_tokens", "batch_size")}}
    points = []
    for file in saved_eval_files(path):
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        ckpt = data.get("checkpoint") if isinstance(data, dict) else None
        if not isinstance(ckpt, dict) or not isinstance(data.get("metrics"), dict) or \
                any(data.get(key) != value for key, value in wanted.items()):
            continue
        stage, step = ckpt.get("stage"), ckpt.get("step")
        if isinstance(step, int) and stage in at and phase_kind(stage) == "rl":
            points.append((None, at[stage] + step, data["metrics"]))
    return points


def curves(run: Run, metric: str, which: str = "all",
           only: str | None = None) -> list[tuple[str, list, list]]:
    """(phase label, xs, ys) of `metric`: RL stages as one curve ("rl") on the RL step axis,
    every other phase its own; `which` is "rl", "other" or "all"; `only` keeps one phase
    label. Non-numbers and NaN are left out."""
    groups: dict[str, tuple[list, list]] = {}
    for row in run.train:
        if (which == "rl" and not row["rl"]) or (which == "other" and row["rl"]):
            continue
        label = "rl" if row["rl"] else row["phase"]
        value = number(row.get(metric))
        if value is None or not math.isfinite(value) or only not in (None, label):
            continue
        xs, ys = groups.setdefault(label, ([], []))
        xs.append(row["step"])
        ys.append(value)
    return [(label, xs, ys) for label, (xs, ys) in groups.items()]


def smoothed(ys: list[float], window: int) -> list[float]:
    """Trailing moving average over `window` points (fewer at the start)."""
    out, total = [], 0.0
    for i, y in enumerate(ys):
        total += y
        if i >= window:
            total -= ys[i - window]
        out.append(total / min(i + 1, window))
    return out


def _pretty(metric: str) -> str:
    return LABELS.get(metric, metric)


def _line(ax, xs, ys, color, style, label, smooth: int) -> None:
    marker = "o" if len(xs) <= 30 else None
    if smooth > 1 and len(ys) > 2:
        ax.plot(xs, ys, color=color, linestyle=style, alpha=0.25, linewidth=1)
        ax.plot(xs, smoothed(ys, smooth), color=color, linestyle=style, linewidth=1.8,
                label=label)
    else:
        ax.plot(xs, ys, color=color, linestyle=style, linewidth=1.6, marker=marker,
                markersize=3, label=label)


def draw_lines(ax, runs: list[Run], metrics: list[str], which: str, smooth: int,
               only: str | None = None, legend_one: bool = False) -> int:
    """Draw `metrics` of every run; colours tell runs apart when there are several (line
    styles then tell metrics apart), else metrics. A lone line of one run has no legend entry
    unless `legend_one`. Returns the number of lines drawn."""
    items, keys = [], []
    for ri, run in enumerate(runs):
        for metric in metrics:
            for label, xs, ys in curves(run, metric, which, only):
                key = (metric, label)
                if key not in keys:
                    keys.append(key)
                items.append((ri, run, key, xs, ys))
    many = len(runs) > 1
    several_metrics = len({m for m, _ in keys}) > 1
    several_phases = len({p for _, p in keys}) > 1
    for ri, run, (metric, phase), xs, ys in items:
        ki = keys.index((metric, phase))
        parts = [run.name] if many else []
        parts += [_pretty(metric)] if several_metrics or not many or legend_one else []
        parts += [phase] if several_phases else []
        label = " · ".join(parts) if many or len(keys) > 1 or legend_one else "_lone"
        _line(ax, xs, ys, COLORS[(ri if many else ki) % len(COLORS)],
              STYLES[ki % len(STYLES)] if many else "-", label, smooth)
    return len(items)


def _eval_key(metrics: dict, name: str) -> str | None:
    if name == "maj":
        return next((k for k in metrics if k.startswith("maj@")), None)
    if name == "pass@1" and "pass@1" not in metrics:
        return "pass1" if "pass1" in metrics else None
    return name if name in metrics else None


def _eval_points(run: Run, name: str) -> list[tuple[float, float, str]]:
    """(x, value, key) of one evaluation metric over the run's evaluations."""
    points = []
    for _, x, metrics in run.evals:
        key = _eval_key(metrics, name)
        value = number(metrics.get(key)) if key else None
        if value is not None and math.isfinite(value):
            points.append((x, value, key))
    return points


def draw_evals(ax, runs: list[Run], first_color: int) -> int:
    """Held-out evaluation results as markers at the step they were taken; with one run, each
    evaluation is labelled (start, after rl...)."""
    drawn, many = 0, len(runs) > 1
    for ri, run in enumerate(runs):
        for mi, (name, marker) in enumerate(EVAL_MARKS):
            points = _eval_points(run, name)
            if not points:
                continue
            label = f"{points[-1][2]} (held-out)"
            ax.plot([p[0] for p in points], [p[1] for p in points], linestyle=":",
                    marker=marker, markersize=6, linewidth=1,
                    color=COLORS[(ri if many else first_color + mi) % len(COLORS)],
                    label=f"{run.name} · {label}" if many else label)
            drawn += 1
        if not many:
            _label_evals(ax, run)
    return drawn


def _label_evals(ax, run: Run) -> None:
    for label, x, metrics in run.evals:
        if label is None:
            continue
        values = [number(metrics.get(_eval_key(metrics, n) or "")) for n, _ in EVAL_MARKS]
        values = [v for v in values if v is not None and math.isfinite(v)]
        if values:
            ax.annotate(label, (x, max(values)), textcoords="offset points", xytext=(0, 9),
                        ha="center", fontsize=7, color="dimgray")


def draw_heldout(ax, runs: list[Run], first_color: int) -> int:
    """The held-out pass@1 measured during RL (rl.eval_every) as a line on the RL step axis,
    never smoothed: each point is an evaluation, not a noisy training batch."""
    drawn, many = 0, len(runs) > 1
    for ri, run in enumerate(runs):
        for _, xs, ys in curves(run, "heldout_pass1", "rl"):
            label = "held-out pass@1 (during RL)"
            ax.plot(xs, ys, linestyle="--", marker="s", markersize=4, linewidth=1.4,
                    color=COLORS[(ri if many else first_color) % len(COLORS)],
                    label=f"{run.name} · {label}" if many else label)
            drawn += 1
    return drawn


def draw_accuracy(ax, runs: list[Run], smooth: int) -> int:
    n = draw_lines(ax, runs, ["accuracy"], "rl", smooth, legend_one=True)
    n += draw_heldout(ax, runs, first_color=len(EVAL_MARKS) + 1)
    n += draw_evals(ax, runs, first_color=1)
    low, high = ax.get_ylim()
    ax.set_ylim(min(low, -0.03), max(high, 1.08))  # the whole 0..1 range, or more if needed
    ax.set_xlabel("RL step" if any(r.has_rl for r in runs) else "evaluation")
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy")
    return n


SIMPLE = {  # group: (metrics, which phases, y label, title)
    "length": (["mean_len"], "rl", "tokens", "Mean response length"),
    "kl": (["kl"], "rl", "KL to reference", "KL divergence"),
    "entropy": (["entropy"], "rl", "nats / token", "Policy entropy"),
    "reflection": (["reflect_rate", "think_rate"], "rl", "share of completions",
                   "Reflection and reasoning"),
    "lr": (["lr"], "all", "learning rate", "Learning rate"),
    "loss": (["loss"], "other", "loss", "Training loss"),
}


def reward_metrics(runs: list[Run]) -> list[str]:
    comps = []
    for run in runs:
        for row in run.train:
            comps += [k for k in row if k.startswith("reward_") and row["rl"] and k not in comps]
    return ["reward", *comps]


def group_spec(group: str, runs: list[Run]) -> tuple[list[str], str, str, str]:
    """(metrics, which phases, y label, title) of a group or of one logged metric."""
    if group == "reward":
        return reward_metrics(runs), "rl", "reward", "Reward"
    return SIMPLE.get(group, ([group], "all", group, group))


def panels(group: str, runs: list[Run]) -> list[str | None]:
    """The phases that get a panel each (their steps differ): RL-axis groups have one."""
    metrics, which, _, _ = group_spec(group, runs)
    if group == "accuracy" or which == "rl":
        return [None]
    labels: list[str | None] = []
    for run in runs:
        for metric in metrics:
            labels += [lb for lb, _, _ in curves(run, metric, which) if lb not in labels]
    return labels or [None]


def draw_group(ax, group: str, runs: list[Run], smooth: int, only: str | None = None) -> int:
    """Draw one metric group (or one logged metric) on `ax`, of phase `only` when given (RL
    stages are "rl"); returns the number of lines."""
    if group == "accuracy":
        return draw_accuracy(ax, runs, smooth)
    metrics, which, ylabel, title = group_spec(group, runs)
    n = draw_lines(ax, runs, metrics, which, smooth, only)
    ax.set_xlabel("RL step" if "rl" in (which, only) else "step")
    ax.set_ylabel(ylabel)
    ax.set_title(title if only is None else f"{title} · {only}")
    return n


def _style(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.grid(True, alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=7, frameon=False)


def figure(group: str, runs: list[Run], smooth: int):
    """The figure of one group (a panel per phase with its own steps), or None when no run
    has its metrics."""
    import matplotlib.pyplot as plt

    if group == "summary":
        return summary_figure(runs, smooth)
    if group == "tasks":
        return tasks_figure(runs, smooth)
    labels = panels(group, runs)
    width = SIZE[0] if len(labels) == 1 else min(4.6 * len(labels), 14.0)
    fig, axes = plt.subplots(1, len(labels), figsize=(width, SIZE[1]), dpi=DPI, squeeze=False)
    drawn = 0
    for ax, only in zip(axes.flat, labels, strict=True):
        drawn += draw_group(ax, group, runs, smooth, only)
        _style(ax)
    if not drawn:
        plt.close(fig)
        return None
    fig.tight_layout()
    return fig


def summary_figure(runs: list[Run], smooth: int):
    """2x2: accuracy, total reward, length, and KL (or reflection when no run has KL)."""
    import matplotlib.pyplot as plt

    last = "kl" if any(curves(r, "kl", "rl") for r in runs) else "reflection"
    fig, axes = plt.subplots(2, 2, figsize=SUMMARY_SIZE, dpi=SUMMARY_DPI)
    drawn = 0
    for ax, group in zip(axes.flat, ("accuracy", "total", "length", last), strict=True):
        n = _total_reward(ax, runs, smooth) if group == "total" else draw_group(
            ax, group, runs, smooth)
        if not n:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes,
                    color="gray")
        drawn += n
        _style(ax)
    if not drawn:
        plt.close(fig)
        return None
    fig.suptitle(", ".join(r.name for r in runs))
    fig.tight_layout()
    return fig


def families(runs: list[Run], prefix: str) -> list[str]:
    """The families of a mix with a metric `<prefix>/<family>` in the runs, in first-seen order."""
    names: list[str] = []
    for run in runs:
        for row in run.train:
            names += [k[len(prefix) + 1:] for k in row
                      if k.startswith(f"{prefix}/") and k[len(prefix) + 1:] not in names]
    return names


def level_changes(run: Run, family: str) -> list[tuple[float, float, float]]:
    """(x, from, to) where the family's curriculum level changed: between the last RL step at
    the old level and the first at the new (x halfway)."""
    out = []
    for _, xs, ys in curves(run, f"level/{family}", "rl"):
        out += [((xs[i - 1] + xs[i]) / 2, ys[i - 1], ys[i])
                for i in range(1, len(ys)) if ys[i] != ys[i - 1]]
    return out


def draw_tasks(ax, runs: list[Run], names: list[str], smooth: int) -> int:
    """Each family's training accuracy (solid) and held-out pass@1 during RL (dashed, squares),
    a colour per family (a line style per run), and its level changes as dotted lines."""
    drawn = 0
    for ri, run in enumerate(runs):
        tag = f"{run.name} · " if len(runs) > 1 else ""
        for fi, name in enumerate(names):
            color = COLORS[fi % len(COLORS)]
            for _, xs, ys in curves(run, f"accuracy/{name}", "rl"):
                _line(ax, xs, ys, color, STYLES[ri % len(STYLES)], f"{tag}{name} (train)", smooth)
                drawn += 1
            for _, xs, ys in curves(run, f"heldout_pass1/{name}", "rl"):
                ax.plot(xs, ys, color=color, linestyle="--", marker="s", markersize=4,
                        linewidth=1.2, label=f"{tag}{name} (held-out pass@1)")
                drawn += 1
            for x, old, new in level_changes(run, name):
                ax.axvline(x, color=color, linestyle=":", linewidth=1, alpha=0.8)
                ax.annotate(f"{old:g}→{new:g}", (x, 1.0), textcoords="offset points",
                            xytext=(0, 4 + 7 * fi), fontsize=6, color=color, ha="center",
                            annotation_clip=False)
    ax.set_ylim(-0.03, 1.08)
    ax.set_xlabel("RL step")
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy per task (dotted: level changes)")
    return drawn


def draw_levels(ax, runs: list[Run], names: list[str]) -> int:
    """Each family's curriculum level (its difficulty knob) per RL step, as steps."""
    drawn = 0
    for ri, run in enumerate(runs):
        for fi, name in enumerate(names):
            for _, xs, ys in curves(run, f"level/{name}", "rl"):
                ax.step(xs, ys, where="mid", color=COLORS[fi % len(COLORS)],
                        linestyle=STYLES[ri % len(STYLES)], linewidth=1.6,
                        label=f"{run.name} · {name}" if len(runs) > 1 else name)
                drawn += 1
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("RL step")
    ax.set_ylabel("level (the family's difficulty knob)")
    ax.set_title("Curriculum levels")
    return drawn


def tasks_figure(runs: list[Run], smooth: int):
    """A mix's per-family accuracy, and its curriculum levels when it has one; None when no
    run logged either."""
    import matplotlib.pyplot as plt

    mixed = families(runs, "accuracy") or families(runs, "heldout_pass1")
    levelled = families(runs, "level")
    if not mixed and not levelled:
        return None
    panels_ = [p for p, names in (("accuracy", mixed), ("levels", levelled)) if names]
    fig, axes = plt.subplots(1, len(panels_), dpi=DPI, squeeze=False,
                             figsize=(SIZE[0] * (1 if len(panels_) == 1 else 1.8), SIZE[1]))
    for ax, panel in zip(axes.flat, panels_, strict=True):
        if panel == "accuracy":
            draw_tasks(ax, runs, mixed or levelled, smooth)
        else:
            draw_levels(ax, runs, levelled)
        _style(ax)
    fig.tight_layout()
    return fig


def _total_reward(ax, runs: list[Run], smooth: int) -> int:
    n = draw_lines(ax, runs, ["reward"], "rl", smooth)
    ax.set_xlabel("RL step")
    ax.set_ylabel("reward")
    ax.set_title("Total reward")
    return n


def save(fig, path: Path) -> None:
    """Write the PNG atomically: a temporary file in the same folder, then a rename."""
    import matplotlib.pyplot as plt

    if path.exists() and not path.is_file():
        plt.close(fig)
        raise UserError(f"{path} exists and is not a regular file — choose another --out")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fig.savefig(tmp, format="png", dpi="figure")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(fig)


def logged_metrics(runs: list[Run]) -> list[str]:
    """Every numeric metric of the runs' training rows, for --metrics."""
    names: list[str] = []
    for run in runs:
        for row in run.train:
            names += [k for k, v in row.items() if k not in ("phase", "step", "rl", "accuracy")
                      and number(v) is not None and k not in names]
    return sorted(names)


def wanted(spec: str | None, runs: list[Run]) -> list[str]:
    """The groups (or logged metrics) to plot: --metrics a,b,c, checked, or every group."""
    if not spec:
        return list(GROUPS)
    names = [n.strip() for n in spec.split(",") if n.strip()]
    extra = logged_metrics(runs)
    for name in names:
        if name not in GROUPS and name not in extra:
            raise UserError(f"unknown --metrics name '{name}' — choose from "
                            f"{', '.join(GROUPS)} or a logged metric: {', '.join(extra)}")
    return names


def _phases(spec: str | None, dirs: list[Path]) -> set[str] | None:
    if not spec:
        return None
    chosen = {p.strip() for p in spec.split(",") if p.strip()}
    known = {r["phase"] for d in dirs for r in read_metrics(d)}
    missing = sorted(chosen - known)
    if missing:
        raise UserError(f"no phase '{missing[0]}' in these runs — phases: "
                        f"{', '.join(sorted(known))}")
    return chosen


def _out_dir(out: str | None, first: Path) -> Path:
    path = Path(out) if out else first / "plots"
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} is a file — give a folder for the PNGs")
    return path


def add_parser(subparsers):
    p = subparsers.add_parser(
        "plot", help="write PNG curves of runs (reward, accuracy, length, KL...)",
        description="Write PNG figures of runs' metrics: one per metric group plus a 2x2 "
        "summary.png. Several runs are overlaid.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (runs/<name>)")
    p.add_argument("--out", metavar="DIR", help="where to write (default: <first run>/plots/)")
    p.add_argument("--metrics", metavar="A,B,C",
                   help=f"only these groups ({', '.join(GROUPS)}) or logged metrics")
    p.add_argument("--smooth", type=int, default=0, metavar="W",
                   help="moving average over W steps, the raw curve drawn faint "
                   "(default 0: off)")
    p.add_argument("--phase", metavar="P", help="only these ledger phases (e.g. rl or sft1,rl; "
                   "evaluations are kept only when named, e.g. eval_rl)")
    return p


def run(ns) -> int:
    if ns.smooth < 0:
        raise UserError(f"--smooth takes a window of 0 (off) or more steps, got {ns.smooth}")
    dirs = [run_dir(s) for s in [*ns.runs, *getattr(ns, "args", [])]]
    phases = _phases(ns.phase, dirs)
    runs = [load_run(d, n, phases) for d, n in zip(dirs, unique_names(dirs), strict=True)]
    groups = wanted(ns.metrics, runs)
    out = _out_dir(ns.out, dirs[0])
    import matplotlib

    matplotlib.use("Agg")
    written, skipped = [], []
    for group in groups:
        fig = figure(group, runs, ns.smooth)
        if fig is None:
            skipped.append(group)
            continue
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', group)}.png"
        save(fig, path)
        written.append(path)
    if not written:
        raise UserError(f"nothing to plot: the runs have none of {', '.join(groups)}")
    print(f"wrote {len(written)} plot{'s' * (len(written) > 1)} to {out}:")
    for path in written:
        print(f"  {path}")
    if skipped and ns.metrics:
        print(f"skipped (not logged): {', '.join(skipped)}")
    return 0
