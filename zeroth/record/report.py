"""Results as tables: before/after RL on the held-out split, against the demonstrations (per
family for a mix, with the curriculum's levels); one model's evaluation (`zeroth eval`) with its
per-difficulty and per-family breakdowns."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from zeroth.record.progress import results_table


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def results_rows(s: dict) -> list[tuple[str, str, str]]:
    k = s["k"]
    rows = [
        (f"pass@1 (mean of {k} samples, T>0)", _pct(s["base_pass1"]), _pct(s["final_pass1"])),
        ("greedy accuracy", _pct(s["base_greedy"]), _pct(s["final_greedy"])),
        (f"pass@{k}", _pct(s[f"base_pass@{k}"]), _pct(s[f"final_pass@{k}"])),
        (f"maj@{k}", _pct(s[f"base_maj@{k}"]), _pct(s[f"final_maj@{k}"])),
        ("well-formed", _pct(s["base_format"]), _pct(s["final_format"])),
        ("reasons in <think>", _pct(s["base_think_rate"]), _pct(s["final_think_rate"])),
        ("mean response tokens", f"{s['base_mean_len']:.1f}", f"{s['final_mean_len']:.1f}"),
    ]
    if s.get("demo_accuracy") is not None:
        rows.append(("demonstrations' accuracy", _pct(s["demo_accuracy"]), ""))
    return rows


def print_results(console, summary: dict, run_dir: Path) -> None:
    """The start-vs-end table; for a pipeline of more than pretrain + rl, one row per stage."""
    pipeline = summary.get("pipeline", ["pretrain", "rl"])
    title = (f"{summary['task']} · held-out {summary['eval_problems']} problems · "
             f"{' → '.join(pipeline)} · {summary['wall_s']:.0f}s")
    heads = ("before RL", "after RL") if pipeline == ["pretrain", "rl"] else ("start", "end")
    console.print(results_table(results_rows(summary), title, heads))
    if pipeline != ["pretrain", "rl"] and summary.get("stages"):
        console.print(stages_table(summary["stages"], summary["k"]))
    if summary.get("final_by_task"):
        console.print(task_table(summary.get("base_by_task") or {}, summary["final_by_task"],
                                 summary["k"], heads))
    if summary.get("curriculum"):
        console.print(curriculum_line(summary["curriculum"]), highlight=False)
    console.print(f"summary: {Path(run_dir) / 'summary.json'}", highlight=False)


def stages_table(stages: list[dict], k: int) -> Table:
    """Each stage's held-out result after it ran, and what it did."""
    table = Table(title="held-out results after each stage")
    for head in ("stage", "pass@1", f"pass@{k}", "greedy", "tokens", "what it did"):
        table.add_column(head, justify="left" if head in ("stage", "what it did") else "right")
    for stage in stages:
        ev = stage.get("eval") or {}
        table.add_row(stage["stage"], _pct(ev.get("pass1")) if ev else "—",
                      _pct(ev.get(f"pass@{k}")) if ev else "—",
                      _pct(ev.get("greedy")) if ev else "—",
                      f"{ev['mean_len']:.1f}" if ev else "—", _did(stage))
    return table


def _did(stage: dict) -> str:
    """A few words on a stage's own result."""
    res, kind = stage.get("result") or {}, stage.get("kind")
    if kind == "eval":
        return "the starting model"
    if kind == "rejection":
        return (f"kept {res.get('kept', 0)} verified of {res.get('samples', 0)} samples "
                f"({_pct(res.get('verified_rate'))} verified)")
    if kind == "sft":
        return f"{res.get('steps', 0)} steps on {res.get('examples', 0)} examples"
    if kind == "distill":
        before = (res.get("student_before") or {}).get("pass1")
        return (f"student ({res.get('student_params', 0):,} params) from pass@1 "
                f"{_pct(before)}; {res.get('traces', 0)} teacher traces")
    if kind == "rl":
        return f"{res.get('steps', 0)} steps of {res.get('algorithm', 'rl')}"
    return f"{res.get('steps', 0)} steps"


def _pass_keys(metrics: dict) -> list[str]:
    """The pass@k keys beyond pass@1, in increasing k."""
    ks = sorted(int(key[5:]) for key in metrics if key.startswith("pass@") and key[5:].isdigit())
    return [f"pass@{k}" for k in ks if k > 1]


def eval_table(metrics: dict, title: str, temperature: float | None = None) -> Table:
    """One model's held-out numbers: pass@1 (mean of k samples), pass@k..., maj@k, greedy, ..."""
    k = metrics["k"]
    temp = f"T={temperature:g}" if temperature is not None else "T>0"
    rows = [(f"pass@1 (mean of {k} samples, {temp})", _pct(metrics["pass1"]))]
    rows += [(f"{key} (unbiased)", _pct(metrics[key])) for key in _pass_keys(metrics)]
    rows += [
        (f"maj@{k}", _pct(metrics[f"maj@{k}"])),
        ("greedy accuracy", _pct(metrics["greedy"])),
        ("well-formed", _pct(metrics["format"])),
        ("reasons in <think>", _pct(metrics["think_rate"])),
        ("mean response tokens", f"{metrics['mean_len']:.1f}"),
        ("mean greedy tokens", f"{metrics['greedy_len']:.1f}"),
    ]
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for row in rows:
        table.add_row(*row)
    return table


def checkpoints_table(results: list[dict], title: str) -> Table:
    """One row per scored checkpoint (zeroth eval --checkpoint all), in training order."""
    k = results[0]["metrics"]["k"]
    table = Table(title=title)
    for head in ("checkpoint", "stage", "step", "pass@1", f"maj@{k}", "greedy", "tokens"):
        table.add_column(head, justify="left" if head in ("checkpoint", "stage") else "right")
    for result in results:
        info, m = result.get("checkpoint") or {}, result["metrics"]
        table.add_row(info.get("tag", "final"), str(info.get("stage") or "—"),
                      "—" if info.get("step") is None else str(info["step"]), _pct(m["pass1"]),
                      _pct(m.get(f"maj@{k}")), _pct(m["greedy"]), f"{m['mean_len']:.1f}")
    return table


def difficulty_table(levels: dict[str, dict], k: int, title: str = "by difficulty",
                     head: str = "difficulty") -> Table:
    """One row per difficulty level (or per family: by_task): problems, pass@1, pass@k...,
    maj@k, greedy."""
    first = next(iter(levels.values()))
    keys = ["pass1", *_pass_keys(first), f"maj@{k}", "greedy"]
    table = Table(title=title)
    table.add_column(head)
    table.add_column("problems", justify="right")
    for key in keys:
        table.add_column("pass@1" if key == "pass1" else key, justify="right")
    for level, m in levels.items():
        table.add_row(level, str(m["problems"]), *(_pct(m[key]) for key in keys))
    return table


def task_table(base: dict[str, dict], final: dict[str, dict], k: int,
               heads: tuple[str, str]) -> Table:
    """A mix's held-out results per family: pass@1 and greedy at the start and the end, and
    pass@k and maj@k at the end."""
    table = Table(title=f"held-out results per task ({heads[0]} → {heads[1]})")
    for head in ("task", "problems", "pass@1", "greedy", f"pass@{k}", f"maj@{k}"):
        table.add_column(head, justify="left" if head == "task" else "right")
    for name, m in final.items():
        b = base.get(name) or {}
        table.add_row(name, str(m["problems"]), f"{_pct(b.get('pass1'))} → {_pct(m['pass1'])}",
                      f"{_pct(b.get('greedy'))} → {_pct(m['greedy'])}",
                      _pct(m.get(f"pass@{k}")), _pct(m.get(f"maj@{k}")))
    return table


def curriculum_line(curriculum: dict) -> str:
    """How many times the curriculum moved and the levels it reached."""
    changes = curriculum.get("changes") or []
    levels = ", ".join(f"{name} {level}" for name, level in curriculum["levels"].items())
    return (f"curriculum: {len(changes)} level change{'s' * (len(changes) != 1)}; "
            f"levels at the end: {levels}")
