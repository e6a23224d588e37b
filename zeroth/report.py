"""Results as tables: before/after RL on the held-out split, against the demonstrations."""

from __future__ import annotations

from pathlib import Path

from zeroth.progress import results_table


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
    title = (f"{summary['task']} · held-out {summary['eval_problems']} problems · "
             f"{summary['steps']} RL steps · {summary['wall_s']:.0f}s")
    console.print(results_table(results_rows(summary), title))
    console.print(f"summary: {Path(run_dir) / 'summary.json'}", highlight=False)
