"""Does RL learn on every procedural family zeroth ships? One run per family, from a fresh start.

    python bench/learn.py                                  # all six families, seed 0
    python bench/learn.py --families linear,countdown      # some of them
    python bench/learn.py --out /tmp/learn -- run.threads=1 # overrides after --, for every run

Each family runs its recipe (`zeroth run learn/<family>` when zeroth ships one, else the default
recipe with `task.name=<family>` and the lengths the table was measured with, `MEASURED`) in its own process, one after another, and is timed from
command to summary. The table has the demonstrations' accuracy (the ceiling of imitation), the
held-out pass@1 and greedy accuracy after pre-training (base) and after RL (final), the minutes,
and whether the row meets issue 18's bar: final >= demos + 10 points, final >= base + 20 points,
greedy not worse than base, at most 20 minutes. One picture (learning.png) draws every family's
held-out pass@1 during RL (`rl.eval_every`, on the first rl.eval_problems) from its base, its
final value on the whole held-out set as a star, and the demos' ceiling dotted. A run already
complete in --out is read, not rerun (delete its folder to redo it).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

FAMILIES = ("addition", "multiplication", "sorting", "arithmetic", "linear", "countdown")
RECIPES = Path(__file__).resolve().parent.parent / "zeroth" / "recipes" / "learn"


# The lengths the table was measured with (issue 18), longer than today's five-minute default
# run's 900 pre-training and 40 RL steps.
MEASURED = ["pretrain.steps=1500", "pretrain.lr=0.001", "rl.steps=60"]


def command(family: str, out: Path, extra: list[str]) -> list[str]:
    recipe = f"learn/{family}" if (RECIPES / f"{family}.yaml").is_file() else "default"
    task = [] if recipe != "default" else [f"task.name={family}", *MEASURED]
    return [sys.executable, "-m", "zeroth", "run", recipe, *task, f"run.name={family}",
            f"run.out_dir={out}", *extra]


def run_family(family: str, out: Path, extra: list[str]) -> float:
    """Run one family (unless its summary exists); its wall time in seconds."""
    done = out / family / "summary.json"
    if done.is_file():
        return json.loads(done.read_text())["wall_s"]
    cmd = command(family, out, extra)
    print("$", " ".join(cmd[2:]), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def heldout_curve(run: Path) -> list[tuple[int, float]]:
    """(RL step, held-out pass@1) from the ledger's RL metrics."""
    db = sqlite3.connect(f"file:{run / 'ledger.sqlite'}?mode=ro", uri=True)
    rows = db.execute("select step, data from metrics where phase = 'rl' order by step").fetchall()
    db.close()
    return [(step, data["heldout_pass1"]) for step, data in
            ((s, json.loads(d)) for s, d in rows) if "heldout_pass1" in data]


def row_of(family: str, out: Path, wall: float) -> dict:
    s = json.loads((out / family / "summary.json").read_text())
    row = {"family": family, "demos": s["demo_accuracy"], "base": s["base_pass1"],
           "final": s["final_pass1"], "base_greedy": s["base_greedy"],
           "final_greedy": s["final_greedy"], "minutes": wall / 60}
    row["meets"] = (row["final"] >= row["demos"] + 0.10 and row["final"] >= row["base"] + 0.20
                    and row["final_greedy"] >= row["base_greedy"] and row["minutes"] <= 20)
    return row


def table(rows: list[dict]) -> str:
    lines = [("| family | demos (ceiling) | base pass@1 | final pass@1 | greedy base → final "
             "| minutes | meets the bar |"), "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['family']} | {r['demos']:.1%} | {r['base']:.1%} | **{r['final']:.1%}**"
                     f" | {r['base_greedy']:.1%} → {r['final_greedy']:.1%} | {r['minutes']:.1f} "
                     f"| {'yes' if r['meets'] else 'NO'} |")
    return "\n".join(lines)


def picture(rows: list[dict], out: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, r in enumerate(rows):
        color = f"C{i}"
        curve = [(0, r["base"]), *heldout_curve(out / r["family"])]  # 0: the whole base eval
        steps = json.loads((out / r["family"] / "summary.json").read_text())["steps"]
        ax.plot([x for x, _ in curve], [y for _, y in curve], color=color, marker="o",
                markersize=3, label=f"{r['family']}")
        ax.plot([steps], [r["final"]], color=color, marker="*", markersize=10)  # the whole set
        ax.axhline(r["demos"], color=color, linestyle=":", linewidth=1)
    ax.set_xlabel("RL step")
    ax.set_ylabel("held-out pass@1")
    ax.set_ylim(0, 1)
    ax.set_title("Held-out pass@1 during RL (star: final, all problems; dotted: the demos)")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    path = out / "learning.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--out", default="runs/learn")
    parser.add_argument("overrides", nargs="*", help="config overrides for every run")
    ns = parser.parse_args()
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for family in ns.families.split(","):
        wall = run_family(family, out, ns.overrides)
        rows.append(row_of(family, out, wall))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(table(rows))
    print("picture:", picture(rows, out))
    return 0 if all(r["meets"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
