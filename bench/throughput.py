"""zeroth against TRL's GRPOTrainer, side by side, on the same local model and the same shape.

    python bench/throughput.py                         # the 4M model, 8 prompts x 8 samples
    python bench/throughput.py --size 32m --steps 4
    python bench/throughput.py --size 4m --group-size 16 --prompts 4
    python bench/throughput.py --systems zeroth,zeroth-bf16   # zeroth alone (no TRL needed)

Both systems train the same Qwen2-architecture model, built from random weights (seed 0) with
zeroth's byte-level tokenizer and saved once as a local Hugging Face folder, on prompts of the
embedded addition task, with the same reward (the completion's length in characters / 100, so
rewards differ within every group and each update does real work), the same GRPO settings
(group-normalised advantages, per-sequence loss, clip 0.2, beta, one optimiser step per batch of
prompts x samples, temperature 1, no top-k/top-p) and the same thread count. Each system runs
in each precision: fp32 (`zeroth`, `trl`) and bf16 mixed precision (`zeroth-bf16`: zeroth's
model.precision=bf16-mixed; `trl-bf16`: GRPOConfig(bf16=True), autocast on CPU) — float32
weights and optimiser state both. Each runs in its own process (so its peak resident memory is
its own) for warm-up + measured steps.

Printed for each: seconds per step (median of the measured steps), completion tokens per
second, mean completion length, peak resident memory; then the FLOP floor of each precision:
the step's model FLOPs (generation + reference pass + update, counted as 2 x matmul parameters
per token forward and 2x that backward, plus attention) over the matmul rate of a 2048^3
product measured on this machine in that precision with the same threads. Each system's time
is set against the floor of the precision it computed in; "best" is a system's faster setting.
The last line is one JSON object.

TRL is not a zeroth dependency: `pip install trl` (1.16 measured) for the side by side.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

SIZES = {  # name -> (hidden, layers); heads of 64 dims, MLP 4 x hidden, vocab 320
    "1m": (128, 4),  # the default run's width and depth
    "4m": (256, 4),
    "32m": (512, 8),
    "140m": (768, 16),
}
VOCAB = 320
PROMPT_SEED = 0


def model_folder(size: str, root: Path) -> Path:
    """The benchmark model as a local HF folder, built once (random weights, seed 0)."""
    import torch

    from zeroth.config import ModelConfig, load_config
    from zeroth.models.hf import apply_template, build_model, save_model, train_tokenizer
    from zeroth.stages.pretrain import demonstrations
    from zeroth.tasks import load_task

    folder = root / f"qwen2-{size}"
    if (folder / "config.json").exists():
        return folder
    hidden, layers = SIZES[size]
    task = load_task(load_config())
    texts = [p + " " + c for p, c, _ in demonstrations(task, 20000, 0)]
    tokenizer = apply_template(train_tokenizer(texts, VOCAB), "auto")
    cfg = ModelConfig(hidden_size=hidden, num_layers=layers, num_heads=hidden // 64,
                      intermediate_size=4 * hidden, vocab_size=VOCAB, max_len=256)
    torch.manual_seed(0)
    model = build_model(cfg, tokenizer)
    tmp = Path(tempfile.mkdtemp(dir=root))
    save_model(model, tokenizer, tmp)
    tmp.rename(folder)
    return folder


def prompts(n: int) -> list[str]:
    """n training prompts of the addition task, the same for both systems."""
    from random import Random

    from zeroth.config import load_config
    from zeroth.tasks import load_task
    task = load_task(load_config())
    return [r["prompt"] for r in task.train_rows(Random(PROMPT_SEED), n)]


def length_reward(completions, **_) -> list[float]:
    """Characters of the completion / 100 (plain text or TRL's conversational messages)."""
    out = []
    for c in completions:
        text = c[-1]["content"] if isinstance(c, list) else c
        out.append(len(text) / 100.0)
    return out


def bench_task(texts: list[str]):
    """A zeroth Task handing out `texts` in order, scored by `length_reward`."""
    from zeroth.types import Task

    cursor = {"i": 0}

    def train_rows(rng, n):
        rows = [{"prompt": t, "answer": ""} for t in texts[cursor["i"]: cursor["i"] + n]]
        cursor["i"] += n
        return rows

    return Task(name="bench", train_rows=train_rows, eval_rows=lambda n, s: [],
                rewards={"chars": length_reward}, weights={"chars": 1.0}, accuracy="chars")


# ---------------------------------------------------------------------------------------------
# One system in its own process: prints one JSON line of per-step times and token counts.
# ---------------------------------------------------------------------------------------------


def zeroth_context(args, folder: Path, texts: list[str], precision: str = "fp32"):
    """zeroth's RLContext over the benchmark model in `folder` and prompts `texts`, with the
    shape and GRPO settings of `args`, computing in `precision` (fp32 | bf16-mixed;
    bench/profile_step.py profiles the same)."""
    import torch

    from zeroth.config import RLConfig
    from zeroth.models.hf import load_model
    from zeroth.models.precision import set_precision
    from zeroth.stages.rl import RLContext

    model, tokenizer = load_model(folder)
    set_precision(model, precision)
    ref = None
    if args.beta > 0:
        ref, _ = load_model(folder)
        set_precision(ref.eval().requires_grad_(False), precision)
    rl = RLConfig(prompts_per_step=args.prompts, group_size=args.group_size,
                  max_new_tokens=args.max_new_tokens, lr=1e-6, mu=1,
                  minibatch_size=args.prompts * args.group_size, algorithm="grpo",
                  eps_high=0.2, beta=args.beta, loss_agg="seq", scale_rewards=True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=rl.lr)
    return RLContext(model, optimizer, ref, tokenizer, bench_task(texts), rl, seed=0)


def run_zeroth(args, folder: Path, bf16: bool) -> dict:
    from zeroth.stages.rl import rl_step

    texts = prompts(args.prompts * (args.warmup + args.steps))
    ctx = zeroth_context(args, folder, texts, "bf16-mixed" if bf16 else "fp32")
    tokenizer = ctx.tokenizer
    times, tokens = [], []
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        metrics, rows = rl_step(ctx, step)
        times.append(time.perf_counter() - t0)
        tokens.append(sum(r["n_tokens"] for r in rows))
    prompt_len = len(tokenizer.apply_chat_template([{"role": "user", "content": texts[0]}],
                                                   add_generation_prompt=True, tokenize=True,
                                                   return_dict=False))
    return {"times": times, "tokens": tokens, "prompt_len": prompt_len,
            "gen_s": metrics.get("time_gen"), "update_s": metrics.get("time_update")}


def run_trl(args, folder: Path, bf16: bool) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    n_steps = args.warmup + args.steps
    texts = prompts(args.prompts * n_steps)
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": t}]} for t in texts])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="float32")
    stamps, tokens = [], []

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            stamps.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            stamps.append(time.perf_counter())

    def counting_reward(completions, completion_ids=None, **kw):
        tokens.append(sum(len(c) for c in completion_ids))
        return length_reward(completions)

    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.prompts * args.group_size,
        num_generations=args.group_size, max_completion_length=args.max_new_tokens,
        beta=args.beta, learning_rate=1e-6, num_iterations=1, gradient_accumulation_steps=1,
        loss_type="grpo", scale_rewards="group", epsilon=0.2, temperature=1.0,
        max_steps=n_steps, use_cpu=True, bf16=bf16, fp16=False, report_to="none",
        save_strategy="no", logging_steps=1, shuffle_dataset=False, seed=0,
        dataloader_num_workers=0, disable_tqdm=True,
        # TRL's own defaults differ from the shape compared: it checkpoints activations
        # (recomputing the forward in the backward), fuses AdamW and decays the LR
        gradient_checkpointing=False, optim="adamw_torch", lr_scheduler_type="constant")
    trainer = GRPOTrainer(model=model, reward_funcs=[counting_reward], args=config,
                          train_dataset=data, processing_class=tokenizer, callbacks=[Clock()])
    trainer.train()
    times = [b - a for a, b in itertools.pairwise(stamps)]
    prompt_len = len(tokenizer.apply_chat_template([{"role": "user", "content": texts[0]}],
                                                   add_generation_prompt=True, tokenize=True,
                                                   return_dict=False))
    return {"times": times, "tokens": tokens, "prompt_len": prompt_len}


def child(args) -> None:
    import torch
    torch.set_num_threads(args.threads)
    folder = Path(args.folder)
    name, _, precision = args.child.partition("-")
    result = (run_zeroth if name == "zeroth" else run_trl)(args, folder, precision == "bf16")
    result["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# The floor: model FLOPs of one step over the measured matmul rate.
# ---------------------------------------------------------------------------------------------


def matmul_rate(threads: int, dtype: str = "fp32", n: int = 2048, repeats: int = 10) -> float:
    """Best matmul rate (FLOP/s) of an n x n product in `dtype` (fp32 | bf16) on `threads`
    threads."""
    import torch
    torch.set_num_threads(threads)
    kind = torch.bfloat16 if dtype == "bf16" else torch.float32
    a, b = torch.randn(n, n, dtype=kind), torch.randn(n, n, dtype=kind)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def step_flops(folder: Path, n_seqs: int, prompt_len: int, completion_len: float,
               beta: float) -> float:
    """Model FLOPs of one step: generation (every prompt and completion token once forward),
    the reference pass (forward, when beta > 0) and the update (forward + backward = 3x)."""
    cfg = json.loads((folder / "config.json").read_text())
    h, layers, inter, vocab = (cfg["hidden_size"], cfg["num_hidden_layers"],
                               cfg["intermediate_size"], cfg["vocab_size"])
    kv = h * cfg.get("num_key_value_heads", cfg["num_attention_heads"]) \
        // cfg["num_attention_heads"]
    matmul_params = layers * (2 * h * h + 2 * h * kv + 3 * h * inter) + vocab * h
    seq = prompt_len + completion_len
    per_seq_fwd = 2 * matmul_params * seq + layers * 2 * h * seq * seq  # QK^T and AV, causal
    passes = 1 + (1 if beta > 0 else 0) + 3
    return n_seqs * per_seq_fwd * passes


def shape_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The benchmark's shape options (model size, batch, lengths, beta, threads, warm-up, the
    models' folder), shared with bench/profile_step.py."""
    p.add_argument("--size", default="4m", choices=sorted(SIZES))
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--beta", type=float, default=0.04)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--models", default=os.path.join(tempfile.gettempdir(), "zeroth-bench"))
    return p


def _shape_args(args) -> list[str]:
    """The command-line settings a child needs to run the same shape."""
    return [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in (
        "size", "prompts", "group_size", "max_new_tokens", "beta", "threads", "warmup", "steps")]


def main() -> None:
    p = shape_arguments(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    p.add_argument("--steps", type=int, default=3, help="measured steps (after the warm-up)")
    p.add_argument("--systems", default=",".join(SYSTEMS),
                   help="comma-separated, of " + ", ".join(SYSTEMS))
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    unknown = [x for x in args.systems.split(",") if x not in SYSTEMS]
    if unknown:
        sys.exit(f"--systems: unknown {', '.join(unknown)} — use {', '.join(SYSTEMS)}")
    root = Path(args.models)
    root.mkdir(parents=True, exist_ok=True)
    folder = model_folder(args.size, root)
    results = {system: run_system(args, folder, system) for system in args.systems.split(",")}
    rates = {dt: matmul_rate(args.threads, dt) for dt in ("fp32", "bf16")}
    ref = results.get("zeroth") or next(iter(results.values()))
    flops = step_flops(folder, args.prompts * args.group_size, ref["prompt_len"],
                       ref["mean_len"], args.beta)
    floors = {dt: flops / rate for dt, rate in rates.items()}
    for dt, floor in floors.items():
        print(f"floor {dt:4s} {floor:7.2f} s/step  ({flops / 1e9:.0f} GFLOP at "
              f"{rates[dt] / 1e9:.0f} GFLOP/s)")
    print(json.dumps(summary(args, results, floors, rates)))


SYSTEMS = ("zeroth", "zeroth-bf16", "trl", "trl-bf16")  # fp32, and bf16 autocast (mixed)


def run_system(args, folder: Path, system: str) -> dict:
    """One system's run in its own process: its median step time, tokens per second, mean
    completion length and peak resident memory."""
    cmd = [sys.executable, __file__, "--child", system, "--folder", str(folder),
           *_shape_args(args)]
    out = subprocess.run(cmd, check=False, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"{system} failed:\n{out.stderr[-3000:]}")
    r = json.loads(line[len("RESULT "):])
    measured = r["times"][args.warmup:]
    toks = r["tokens"][args.warmup:]
    result = {"step_s": statistics.median(measured), "tok_s": sum(toks) / sum(measured),
              "mean_len": sum(toks) / len(toks) / (args.prompts * args.group_size),
              "peak_mib": r["peak_mib"], "prompt_len": r["prompt_len"],
              "times": [round(t, 3) for t in r["times"]]}
    print(f"{system:11s} {result['step_s']:7.2f} s/step  {result['tok_s']:8.1f} tok/s  "
          f"len {result['mean_len']:5.1f}  peak {r['peak_mib']:7.0f} MiB  "
          f"steps {result['times']}", flush=True)
    return result


def summary(args, results: dict, floors: dict, rates: dict) -> dict:
    """The run as one JSON object: the shape, each system's figures, its step time over the
    floor of the precision it computed in, and the ratios the speed table shows."""
    out = {"size": args.size, "prompts": args.prompts, "group_size": args.group_size,
           "max_new_tokens": args.max_new_tokens, "beta": args.beta, "threads": args.threads,
           **{f"floor_{dt}_s": round(f, 3) for dt, f in floors.items()},
           **{f"matmul_{dt}_gflops": round(r / 1e9, 1) for dt, r in rates.items()}}
    for system, r in results.items():
        key = system.replace("-", "_")
        floor = floors["bf16" if system.endswith("-bf16") else "fp32"]
        out[f"{key}_step_s"] = round(r["step_s"], 3)
        out[f"{key}_tok_s"] = round(r["tok_s"], 1)
        out[f"{key}_mean_len"] = round(r["mean_len"], 1)
        out[f"{key}_peak_mib"] = round(r["peak_mib"])
        out[f"{key}_over_floor"] = round(r["step_s"] / floor, 2)
    for name in ("zeroth", "trl"):  # each system's best setting: its faster precision
        mine = [s for s in results if s.split("-")[0] == name]
        if mine:
            best = min(mine, key=lambda s: results[s]["step_s"])
            out[f"{name}_best"] = best
    if "zeroth_best" in out and "trl_best" in out:
        best = results[out["zeroth_best"]]["step_s"]
        out["vs_trl_best"] = round(results[out["trl_best"]]["step_s"] / best, 2)
        if "trl" in results:
            out["vs_trl_fp32"] = round(results["trl"]["step_s"] / best, 2)
    return out


if __name__ == "__main__":
    main()
