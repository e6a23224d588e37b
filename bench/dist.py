"""RL step time at world 1 and world 2 on one machine: what running on several ranks costs.

    python bench/dist.py                          # the 32M model, world 1 (2 threads) vs 2 (1 each)
    python bench/dist.py --size 4m --worlds 1,2 --parallel ddp,fsdp
    python bench/dist.py --threads 4 --worlds 1,2,4

Each case is a real `zeroth run --nproc W` (torchrun, gloo) of the rl stage alone on the
benchmark model of bench/throughput.py (random weights, seed 0: every completion runs to
rl.max_new_tokens, so each step does the same work), with run.threads = --threads split between
the ranks. The step time is the sum of rank 0's stage timers (time_gen, time_gather, time_reward,
time_ref, time_update, time_sync, time_record), median over the steps after the first. Printed:
a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import SIZES, model_folder


def one_case(folder: Path, out: Path, world: int, parallel: str, args) -> dict:
    """Run the rl stage at `world` ranks; its per-step timings from the ledger."""
    name = f"w{world}-{parallel}"
    cmd = [sys.executable, "-m", "zeroth", "run", "--nproc", str(world), "--quiet",
           f"model.path={folder}", "run.pipeline=[rl]", f"run.out_dir={out}", f"run.name={name}",
           f"run.threads={args.threads}", f"train.parallel={parallel}",
           f"rl.steps={args.steps + 1}", f"rl.prompts_per_step={args.prompts}",
           f"rl.group_size={args.group_size}", f"rl.max_new_tokens={args.max_new_tokens}",
           f"rl.minibatch_size={args.prompts * args.group_size}", "rl.checkpoint_every=1000",
           "task.eval_problems=2", "eval.k=1", "eval.max_new_tokens=4", "run.memory_check=false"]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    db = sqlite3.connect(out / name / "ledger.sqlite")
    rows = [json.loads(d) for (d,) in db.execute(
        "select data from metrics where phase = 'rl' order by step")]
    db.close()
    timed = rows[1:]  # the first step warms up
    parts = ("gen", "gather", "reward", "adv", "ref", "update", "sync", "record")

    def median(key):
        return statistics.median(r.get(f"time_{key}", 0.0) for r in timed)

    step = statistics.median(sum(r.get(f"time_{k}", 0.0) for k in parts) for r in timed)
    return {"world": world, "parallel": parallel, "threads_per_rank": max(1, args.threads // world),
            "step_s": round(step, 3), **{f"{k}_s": round(median(k), 3) for k in parts},
            "wall_s": round(wall, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="32m", choices=sorted(SIZES))
    p.add_argument("--worlds", default="1,2")
    p.add_argument("--parallel", default="ddp", help="ddp, fsdp or both: ddp,fsdp")
    p.add_argument("--threads", type=int, default=2, help="threads of the whole machine")
    p.add_argument("--steps", type=int, default=4, help="measured steps (after one warm-up)")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--folder", type=Path, help="where the benchmark model is kept")
    args = p.parse_args()
    root = args.folder or Path(tempfile.gettempdir()) / "zeroth-bench"
    root.mkdir(parents=True, exist_ok=True)
    folder = model_folder(args.size, root)
    results = []
    with tempfile.TemporaryDirectory() as out:
        for parallel in args.parallel.split(","):
            for world in (int(w) for w in args.worlds.split(",")):
                results.append(one_case(folder, Path(out), world, parallel, args))
    base = results[0]["step_s"]
    print(f"{args.size}, {args.prompts} prompts x {args.group_size} samples x "
          f"{args.max_new_tokens} tokens a step, {args.threads} threads in all")
    print(f"{'world':>5} {'parallel':>8} {'thr/rank':>8} {'s/step':>7} {'gen':>6} {'gather':>6} "
          f"{'update':>6} {'vs first':>8}")
    for r in results:
        print(f"{r['world']:>5} {r['parallel']:>8} {r['threads_per_rank']:>8} {r['step_s']:>7.2f} "
              f"{r['gen_s']:>6.2f} {r['gather_s']:>6.3f} {r['update_s']:>6.2f} "
              f"{r['step_s'] / base:>7.2f}x")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    print(json.dumps({"size": args.size, "results": results, "peak_rank_rss_gib": round(peak, 2)}))


if __name__ == "__main__":
    main()
