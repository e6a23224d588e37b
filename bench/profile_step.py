"""Where one RL step's time goes: matrix products, attention, other tensor ops, and the rest.

    python bench/profile_step.py                     # the 4M model, 8 prompts x 8 samples
    python bench/profile_step.py --size 32m --threads 2 --top 15
    python bench/profile_step.py --precision bf16-mixed

The model, prompts, reward and GRPO settings are bench/throughput.py's (a random Qwen2-shaped
model built once as a local folder, addition prompts, reward = characters / 100). After
--warmup steps, one step runs under torch.profiler. Printed:

- the step's phases as zeroth's loop times them (generation, scoring, reference, update, ...);
- the step's time by kind of operator, from each operator's self CPU time: matmul (mm, addmm,
  bmm, linear's kernels), attention (scaled-dot-product attention and every operator it runs
  beneath it: with a mask on CPU that is products, a softmax, elementwise ops), other tensor ops
  (elementwise, reductions, copies, indexing, ...), and the remainder of the wall time, which
  is Python, the framework's dispatch and everything between operators;
- the step's FLOP floor in the profiled precision (bench/throughput.py's: model FLOPs over the
  2048³ matmul rate, measured here) and how many times it the products alone and the whole
  step took: when the products alone take more than a target ratio, no work on the rest of
  the step reaches it;
- the --top operators by self CPU time, with their call counts.

The last line is one JSON object (seconds per kind and phase) for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/throughput.py beside this
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from throughput import (
    matmul_rate,
    model_folder,
    prompts,
    shape_arguments,
    step_flops,
    zeroth_context,
)

MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm",
          "aten::_addmm_activation", "mkldnn::", "aten::mkldnn_", "aten::linear_backward")
ATTENTION = ("scaled_dot_product", "flash_attention", "_efficient_attention")


def kind(name: str) -> str:
    """matmul, attention or other, for an operator's profiler name."""
    if any(a in name for a in ATTENTION):
        return "attention"
    if any(name.startswith(m) for m in MATMUL):
        return "matmul"
    return "other ops"


def kind_in_tree(event) -> str:
    """An event's kind, attention when any operator above it is attention: scaled-dot-product
    attention with a mask runs as products, a softmax and elementwise ops beneath it."""
    parent = event.cpu_parent
    while parent is not None:
        if kind(parent.name) == "attention":
            return "attention"
        parent = parent.cpu_parent
    return kind(event.name)


def profile(args) -> dict:
    """Warm-up steps, then one profiled step: {wall, phases, kinds, top}."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from zeroth.models.hf import prompt_ids
    from zeroth.stages.rl import rl_step

    torch.set_num_threads(args.threads)
    folder = model_folder(args.size, Path(args.models))
    ctx = zeroth_context(args, folder, prompts(args.prompts * (args.warmup + 1)),
                         args.precision)
    for step in range(args.warmup):
        rl_step(ctx, step)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        metrics, rows = rl_step(ctx, args.warmup)
        wall = time.perf_counter() - start
    prompt_len = len(prompt_ids(ctx.tokenizer, [rows[0]["prompt"]])[0])
    flops = step_flops(folder, len(rows), prompt_len, metrics["mean_len"], args.beta)
    floor = flops / matmul_rate(args.threads, "bf16" if args.precision != "fp32" else "fp32")
    ops = [(e.key, e.self_cpu_time_total / 1e6, e.count) for e in prof.key_averages()
           if e.self_cpu_time_total > 0 and "::" in e.key]
    kinds = {"matmul": 0.0, "attention": 0.0, "other ops": 0.0}
    for event in prof.events():
        if "::" in event.name:
            kinds[kind_in_tree(event)] += event.self_cpu_time_total / 1e6
    kinds["python and dispatch"] = max(0.0, wall - sum(kinds.values()))
    phases = {k[len("time_"):]: v for k, v in metrics.items() if k.startswith("time_")}
    top = sorted(ops, key=lambda o: -o[1])[: args.top]
    return {"wall": wall, "phases": phases, "kinds": kinds, "top": top, "floor": floor}


def report(args, found: dict) -> None:
    wall = found["wall"]
    print(f"one RL step: {args.size}, {args.prompts} prompts x {args.group_size} samples, "
          f"{args.max_new_tokens} new tokens at most, {args.threads} threads: {wall:.3f} s "
          "(under the profiler, which adds a little)")
    print("\nphases (zeroth's own timers)")
    for name, seconds in found["phases"].items():
        print(f"  {name:22s} {seconds:8.3f} s")
    print("\nby kind of operator (self CPU time)")
    for name, seconds in found["kinds"].items():
        print(f"  {name:22s} {seconds:8.3f} s  {100 * seconds / wall:5.1f}%")
    floor, products = found["floor"], found["kinds"]["matmul"]
    print(f"\nthe FLOP floor of this step in {args.precision} (bench/throughput.py's): "
          f"{floor:.3f} s; the matrix products alone took {products / floor:.2f}x it, the "
          f"whole step {wall / floor:.2f}x")
    print(f"\ntop {len(found['top'])} operators")
    for name, seconds, count in found["top"]:
        print(f"  {name[:44]:44s} {seconds:8.3f} s  {count:7d} calls")
    print(json.dumps({"size": args.size, "wall_s": round(wall, 4),
                      "floor_s": round(found["floor"], 4),
                      **{f"kind_{k.replace(' ', '_')}_s": round(v, 4)
                         for k, v in found["kinds"].items()},
                      **{f"phase_{k}_s": round(v, 4) for k, v in found["phases"].items()}}))


def main() -> None:
    p = shape_arguments(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16-mixed"))
    args = p.parse_args()
    Path(args.models).mkdir(parents=True, exist_ok=True)
    report(args, profile(args))


if __name__ == "__main__":
    main()
