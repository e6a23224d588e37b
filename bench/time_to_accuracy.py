"""Time to accuracy: zeroth and TRL's GRPOTrainer, the same start model and settings, wall time
to the same held-out accuracy on the embedded default task (3-digit addition).

    python bench/time_to_accuracy.py                           # pre-trains the start model first
    python bench/time_to_accuracy.py --start runs/<name>/final # or a run dir / checkpoint model/
    python bench/time_to_accuracy.py --pretrain-steps 50 --max-steps 2 --eval-problems 10 \\
        --threads 1                                            # a smoke run
    python bench/time_to_accuracy.py rl.lr=3e-4                # overrides, applied to both

What is measured. Both systems start from the same local Hugging Face folder: a model that
zeroth pre-trained on the task's imperfect demonstrations (`zeroth pretrain`, cached under
--work), or --start. Each runs in its own process on --threads threads and does RL with the
default recipe's `rl` section (`zeroth.config.load_config()` + overrides, resolved with
`resolve_rl`): zeroth through `zeroth.stages.rl.rl_step` (what `zeroth run` calls each step), TRL
1.16 through `GRPOTrainer.train()`. Before step 1 and every --eval-every RL steps (and at the
last one) the training clock is paused and the policy is scored by the SAME zeroth evaluation
(`zeroth.stages.eval.evaluate` on `task.eval_rows(--eval-problems, seed)`, the recipe's eval
settings with k = --eval-k): pass@1 is the mean accuracy of k samples at temperature 1. A system
stops when pass@1 >= --target or after --max-steps RL steps. "Train wall s" is the time spent in
training only: zeroth, the `rl_step` calls; TRL, from `on_train_begin` to each `on_step_end`
(its per-step logging included), both less evaluation time; model loading and trainer
construction are not counted, nor zeroth's ledger writes and checkpoints (`zeroth run` does
them, TRL here saves nothing).

One RL step = P prompts x G samples generated once, then optimiser steps over minibatches of
`rl.minibatch_size` completions, mu passes (the default: 256 completions, 2 minibatches of 128,
mu 1, so 2 AdamW steps with the old log-probs computed once before the first). TRL gets the same
shape: per_device_train_batch_size = minibatch, steps_per_generation = P*G / minibatch,
num_iterations = mu, gradient_accumulation_steps 1; its `global_step` counts optimiser steps,
reported here divided by steps_per_generation * mu. Made identical, and checked where a check is
possible (the JSON's "checks"): the prompts of each step (zeroth's draw for step s, in order, as
TRL's dataset with shuffle off), their token ids under the chat template, the stop tokens (TRL's
eos list is set to zeroth's `stop_ids`), the completion text the rewards see (decoded from the
token ids exactly as zeroth does, special tokens kept, stop token dropped), the reward functions
and weights (the task's own: correct 1.0, format 0.1, summed), group-std advantage scaling
(unbiased std + 1e-4), the per-sequence loss, clip range 0.2 / 0.28, k3 KL with beta 0.001 to a
frozen copy of the start model, AdamW (betas 0.9 / 0.99, eps 1e-8, no weight decay, lr 1e-4,
constant, no warm-up; TRL `optim="adamw_torch"`), grad-norm clip 1.0, temperature 1, no
top-k / top-p, max 64 new tokens, no gradient checkpointing (TRL's default turns it on), the
seed, and the evaluation itself (the step-0 scores of the two must be equal: "same_start_eval").

Precision: zeroth computes in its `model.precision` (auto: bf16-mixed on a CPU with fast bf16
from 128 wide, so the default model here; "zeroth_precision" in the JSON); TRL runs twice, in
fp32 (`trl`) and with `GRPOConfig(bf16=True)` (`trl-bf16`). "ratio" is TRL's best time over
zeroth's, "ratio_trl" and "ratio_trl-bf16" each setting's.

What differs, and cannot be made identical: the random streams (zeroth samples from its own
`torch.Generator` per step, TRL from the global RNG through `model.generate`), so the two runs
see different samples and their curves differ by chance as well as by speed; TRL shuffles the
256 completions before splitting them into minibatches, zeroth splits them in order; TRL's model
is in train mode during updates and zeroth's in eval mode (the same here: the model has no
dropout); TRL computes log-probs through its fused LM head, zeroth through zeroth.models.lean
(each group's prompt run once, the LM head on completion positions only).
With a single seed and eval set, a crossing point is one sample of a noisy curve: compare several
seeds (--seed) before reading much into small ratios.

TRL is not a zeroth dependency: `pip install trl` (1.16 measured).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from random import Random

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout

TRL_EXTRAS = ("trainer_state", "log_extra", "log_metric", "environments")


# ---------------------------------------------------------------------------------------------
# The start model, the settings, the shared evaluation.
# ---------------------------------------------------------------------------------------------


def start_model(args) -> Path:
    """--start (a model folder, or a run dir's final/), else a model pre-trained by `zeroth
    pretrain` on the default task, made once under --work."""
    if args.start:
        folder = Path(args.start)
        if not (folder / "config.json").is_file() and (folder / "final" / "config.json").is_file():
            folder = folder / "final"
        if not (folder / "config.json").is_file():
            sys.exit(f"--start {args.start}: not a model folder (no config.json)")
        return folder.resolve()
    steps = "default" if args.pretrain_steps is None else str(args.pretrain_steps)
    name = f"pretrain-{steps}-seed{args.seed}"
    final = Path(args.work).resolve() / name / "final"
    if (final / "config.json").is_file():
        return final
    cmd = [sys.executable, "-c", "from zeroth.cli import main; raise SystemExit(main())",
           "pretrain", "--force", f"run.name={name}", f"run.out_dir={Path(args.work).resolve()}",
           f"run.seed={args.seed}", f"run.threads={args.threads}", "task.eval_problems=20"]
    if args.pretrain_steps is not None:
        cmd.append(f"pretrain.steps={args.pretrain_steps}")
    print(f"pre-training the start model: {' '.join(cmd[3:])}", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return final


def setup(args):
    """(cfg, resolved rl, task) of the default recipe with the command line's overrides."""
    from zeroth.config import load_config, resolve_rl
    from zeroth.tasks import load_task

    cfg = load_config(None, [*args.overrides, f"run.seed={args.seed}"])
    cfg = replace(cfg, eval=replace(cfg.eval, k=args.eval_k))
    return cfg, resolve_rl(cfg.rl), load_task(cfg)


def step_rows(task, seed: int, step: int, n: int) -> list[dict]:
    """The prompts zeroth draws for RL step `step` (zeroth.stages.rl.sample_rollouts, round 0)."""
    return task.train_rows(Random(f"{seed}-rl-{step}"), n)


def trl_settings(rl, model_cfg) -> dict:
    """GRPOConfig fields that equal zeroth's resolved rl settings; exits on a setting TRL's
    GRPOTrainer has no match for."""
    n = rl.prompts_per_step * rl.group_size
    mb = min(rl.minibatch_size, n)
    if rl.dynamic_sampling or rl.advantage not in ("grpo", "dr_grpo") or n % mb:
        sys.exit("TRL has no match for this rl setting (dynamic sampling, advantage "
                 f"{rl.advantage}, or {n} completions not a multiple of minibatch {mb})")
    scale = "group" if rl.advantage == "grpo" and rl.scale_rewards else "none"
    loss = {"seq": "grpo", "token": "bnpo", "constant": "dr_grpo"}[rl.loss_agg]
    return {"per_device_train_batch_size": mb, "steps_per_generation": n // mb,
            "num_generations": rl.group_size, "num_iterations": rl.mu,
            "gradient_accumulation_steps": 1, "max_completion_length": rl.max_new_tokens,
            "temperature": rl.temperature, "top_k": 0, "top_p": 1.0, "learning_rate": rl.lr,
            "beta": rl.beta, "epsilon": rl.eps_low, "epsilon_high": rl.eps_high,
            "loss_type": loss, "scale_rewards": scale, "max_grad_norm": rl.max_grad_norm,
            "optim": "adamw_torch", "adam_beta1": 0.9, "adam_beta2": 0.99, "adam_epsilon": 1e-8,
            "weight_decay": 0.0, "lr_scheduler_type": "constant", "warmup_steps": 0,
            "gradient_checkpointing": model_cfg.gradient_checkpointing}  # TRL's default: on


class Clock:
    """Training wall time with evaluations paused out; `curve` holds one point per evaluation."""

    def __init__(self, model, tokenizer, task, cfg, args, name: str):
        self.model, self.tokenizer, self.task, self.cfg = model, tokenizer, task, cfg
        self.args = args
        self.name, self.rows = name, task.eval_rows(args.eval_problems, args.seed)
        self.curve, self.paused, self.t0 = [], 0.0, None

    def start(self) -> None:
        self.t0 = time.perf_counter()

    def train_s(self) -> float:
        return time.perf_counter() - self.t0 - self.paused

    def due(self, step: int) -> bool:
        return step % self.args.eval_every == 0 or step >= self.args.max_steps

    def evaluate(self, step: int) -> bool:
        """Score the policy at RL step `step` off the clock; True once the target is reached."""
        import torch

        from zeroth.rollout import make_engine
        from zeroth.stages.eval import evaluate

        t = time.perf_counter()
        train_s = 0.0 if self.t0 is None else self.train_s()
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            metrics, _ = evaluate(make_engine(self.cfg, self.model), self.tokenizer, self.task,
                                  self.rows, self.cfg.eval, self.args.seed)
        self.model.train(was_training)
        point = {"step": step, "train_s": round(train_s, 2), "pass1": round(metrics["pass1"], 4),
                 "greedy": round(metrics["greedy"], 4), "mean_len": round(metrics["mean_len"], 1)}
        self.curve.append(point)
        print(f"PROGRESS {self.name:6s} step {step:3d}  train {train_s:8.1f} s  "
              f"pass@1 {point['pass1']:.3f}  greedy {point['greedy']:.3f}  "
              f"(eval {time.perf_counter() - t:.1f} s)", flush=True)
        if self.t0 is not None:
            self.paused += time.perf_counter() - t
        return metrics["pass1"] >= self.args.target


# ---------------------------------------------------------------------------------------------
# One system in its own process: prints one RESULT line of JSON.
# ---------------------------------------------------------------------------------------------


def run_zeroth(args, folder: Path) -> dict:
    import torch

    from zeroth.models.hf import load_model, trainable
    from zeroth.models.precision import precision_of, set_precision
    from zeroth.pipeline.run import init_model
    from zeroth.stages.rl import RLContext, rl_step

    cfg, rl, task = setup(args)
    cfg = replace(cfg, model=replace(cfg.model, path=str(folder)))
    torch.manual_seed(args.seed)
    model, tokenizer = init_model(cfg, task)
    ref = None
    if rl.beta > 0:  # as zeroth.pipeline.run.rl_stage: the start model, frozen
        ref, _ = load_model(folder, dtype=cfg.model.dtype)
        ref.eval().requires_grad_(False)
        set_precision(ref, precision_of(model))  # it computes as the policy does
    optimizer = torch.optim.AdamW(trainable(model), lr=rl.lr, betas=(0.9, 0.99), weight_decay=0.0)
    model.eval()  # as rl_stage: no dropout during sampling and updates
    clock = Clock(model, tokenizer, task, cfg, args, "zeroth")
    train_acc = []
    done = clock.evaluate(0)
    clock.start()
    step = 0
    ctx = RLContext(model, optimizer, ref, tokenizer, task, cfg.rl, seed=args.seed)
    while not done and step < args.max_steps:
        metrics, _ = rl_step(ctx, step)
        step += 1
        train_acc.append(round(metrics.get(f"reward_{task.accuracy}", float("nan")), 4))
        if clock.due(step):
            done = clock.evaluate(step)
    return {"curve": clock.curve, "train_acc": train_acc, "steps": step,
            "precision": precision_of(model)}


def trl_reward(name: str, fn, tokenizer, stops, rl, log: dict):
    """zeroth's reward `fn` as a TRL reward function: the text is decoded from the completion
    ids as zeroth decodes it, the dataset columns and zeroth's extra keywords are passed."""
    from zeroth.stages.eval import decode

    def reward(prompts, completions, completion_ids, **kw):
        texts = decode(tokenizer, completion_ids, stops)
        columns = {k: v for k, v in kw.items() if k not in TRL_EXTRAS}
        columns["prompt"] = [p[-1]["content"] for p in prompts]
        n = len(texts)
        scores = fn(texts, completion_ids=completion_ids, max_new_tokens=[rl.max_new_tokens] * n,
                    overlong_cache=[rl.overlong_cache] * n, **columns)
        if name == log["accuracy"]:
            log["prompts"].append(columns["prompt"])
            log["train_acc"].append(sum(s or 0.0 for s in scores) / n)
        return [None if s is None else float(s) for s in scores]

    reward.__name__ = name
    return reward


def trl_checks(trainer, tokenizer, model_stops, texts: list[str]) -> dict:
    """Are TRL's prompt token ids (its batched chat-template call) and stop tokens zeroth's?"""
    from zeroth.models.hf import prompt_ids

    ids = tokenizer.apply_chat_template([[{"role": "user", "content": t}] for t in texts],
                                        add_generation_prompt=True, tokenize=True,
                                        return_dict=True)["input_ids"]
    return {"same_prompt_ids": [list(x) for x in ids] == prompt_ids(tokenizer, texts),
            "same_stops": set(trainer.eos_token_ids) == model_stops,
            "stops": sorted(model_stops)}


def trl_trainer(args, folder: Path, clock_of):
    """(trainer, clock, log, rows, per_step): GRPOTrainer on the start model with zeroth's
    settings, prompts, stop tokens and rewards; the Clock evaluates from its callback."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from zeroth.models.precision import set_precision
    from zeroth.rewards import overlong
    from zeroth.rollout.decoder import stop_ids
    from zeroth.stages.rl import step_weights

    cfg, rl, task = setup(args)
    settings = trl_settings(rl, cfg.model)
    per_step = settings["steps_per_generation"] * settings["num_iterations"]
    rows = [r for s in range(args.max_steps)
            for r in step_rows(task, args.seed, s, rl.prompts_per_step)]
    data = Dataset.from_list([{**r, "prompt": [{"role": "user", "content": r["prompt"]}]}
                              for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="float32")
    # the shared evaluation computes as zeroth's (zeroth's autocast reads this mark; TRL's
    # training does not: its precision is GRPOConfig's bf16)
    set_precision(model, cfg.model.precision)
    stops = stop_ids(model, tokenizer)  # zeroth's stop tokens, before TRL reads the model's
    model.generation_config.eos_token_id = sorted(stops)
    weights = step_weights(rl, task)
    fns = {"overlong": overlong, **task.rewards}
    log = {"accuracy": task.accuracy, "prompts": [], "train_acc": [], "stops": stops}
    rewards = [trl_reward(n, fns[n], tokenizer, stops, rl, log) for n in weights]
    clock = clock_of(model, tokenizer, task, cfg)

    class Evaluate(TrainerCallback):
        def on_train_begin(self, _args, state, control, **kw):
            clock.start()

        def on_step_end(self, _args, state, control, **kw):
            step, rest = divmod(state.global_step, per_step)
            if rest == 0 and clock.due(step) and clock.evaluate(step):
                control.should_training_stop = True

    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(), **settings, reward_weights=[weights[n] for n in weights],
        max_steps=args.max_steps * per_step, use_cpu=True, bf16=args.child == "trl-bf16", fp16=False,
        report_to="none", save_strategy="no", logging_steps=per_step, shuffle_dataset=False,
        seed=args.seed, dataloader_num_workers=0, disable_tqdm=True)
    trainer = GRPOTrainer(model=model, reward_funcs=rewards, args=config, train_dataset=data,
                          processing_class=tokenizer, callbacks=[Evaluate()])
    return trainer, clock, log, (task, rl, rows, settings, per_step)


def run_trl(args, folder: Path) -> dict:
    def clock_of(model, tokenizer, task, cfg):
        return Clock(model, tokenizer, task, cfg, args, args.child)

    trainer, clock, log, (task, rl, rows, settings, per_step) = trl_trainer(args, folder,
                                                                           clock_of)
    checks = trl_checks(trainer, trainer.processing_class, log["stops"],
                        [r["prompt"] for r in rows[:8]])
    if not clock.evaluate(0):  # the model as built, before TRL's training loop touches it
        trainer.train()
    # TRL's generation batch s holds the prompts zeroth draws for step s
    checks["same_step_prompts"] = bool(log["prompts"]) and all(
        sorted(seen) == sorted(r["prompt"] for r in step_rows(task, args.seed, s,
                                                              rl.prompts_per_step)
                               for _ in range(rl.group_size))
        for s, seen in enumerate(log["prompts"]))
    return {"curve": clock.curve, "train_acc": [round(a, 4) for a in log["train_acc"]],
            "steps": trainer.state.global_step // per_step, "checks": checks,
            "trl_settings": settings}


def child(args) -> None:
    import torch

    import zeroth  # noqa: F401  (first: it hides a mismatched torchvision before transformers loads)
    torch.set_num_threads(args.threads)
    result = (run_zeroth if args.child == "zeroth" else run_trl)(args, Path(args.folder))
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# The parent: start model, one subprocess per system, the tables and the JSON line.
# ---------------------------------------------------------------------------------------------


def run_child(system: str, folder: Path, args) -> dict:
    """Run one system in its own process, passing its PROGRESS lines through."""
    argv, skip = [], False
    for a in sys.argv[1:]:  # the parent's arguments less --systems (and its value)
        if not skip and not a.startswith("--systems"):
            argv.append(a)
        skip = a == "--systems"
    cmd = [sys.executable, __file__, "--child", system, "--folder", str(folder), *argv]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        result = None
        for line in proc.stdout:
            if line.startswith("PROGRESS "):
                print(line[len("PROGRESS "):], end="", flush=True)
            elif line.startswith("RESULT "):
                result = json.loads(line[len("RESULT "):])
        proc.wait()
        if result is None:
            err.seek(0)
            sys.exit(f"{system} failed (exit {proc.returncode}):\n{err.read()[-4000:]}")
    return result


def reached(curve: list[dict], target: float) -> dict | None:
    """The first evaluation at or above the target."""
    return next((p for p in curve if p["pass1"] >= target), None)


def table(system: str, curve: list[dict]) -> None:
    print(f"\n{system}\n{'step':>5} {'train wall s':>13} {'pass@1':>7} {'greedy':>7}")
    for p in curve:
        print(f"{p['step']:5d} {p['train_s']:13.1f} {p['pass1']:7.3f} {p['greedy']:7.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="recipe overrides (rl.lr=...), for both systems")
    p.add_argument("--start", help="start model folder (or run dir); default: pre-train one")
    p.add_argument("--pretrain-steps", type=int, help="pre-training steps (default: the recipe's)")
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "zeroth-tta"))
    p.add_argument("--target", type=float, default=0.9, help="held-out pass@1 to reach")
    p.add_argument("--max-steps", type=int, default=60)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--eval-problems", type=int, default=100)
    p.add_argument("--eval-k", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--systems", default="zeroth,trl,trl-bf16",
                   help="zeroth (its model.precision), trl (fp32), trl-bf16 (GRPOConfig bf16)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    folder = start_model(args)
    print(f"start model: {folder}", flush=True)
    results = {s: run_child(s, folder, args) for s in args.systems.split(",")}
    out = {"target": args.target, "start": str(folder), "seed": args.seed,
           "threads": args.threads, "max_steps": args.max_steps, "eval_every": args.eval_every,
           "eval_problems": args.eval_problems, "eval_k": args.eval_k}
    for system, r in results.items():
        table(system, r["curve"])
        hit = reached(r["curve"], args.target)
        out[f"{system}_s"] = hit and hit["train_s"]
        out[f"{system}_steps"] = hit and hit["step"]
        out[f"{system}_ran_steps"] = r["steps"]
    z = out.get("zeroth_s")
    for trl in ("trl", "trl-bf16"):  # zeroth against each TRL setting, and against its best
        t = out.get(f"{trl}_s")
        out[f"ratio_{trl}"] = round(t / z, 2) if z and t else None
    best = min((out[f"{t}_s"] for t in ("trl", "trl-bf16") if out.get(f"{t}_s")), default=None)
    out["ratio"] = round(best / z, 2) if z and best else None
    if "zeroth" in results:
        out["zeroth_precision"] = results["zeroth"]["precision"]
    for trl in [t for t in ("trl", "trl-bf16") if t in results]:
        out[f"{trl}_checks"] = checks = results[trl]["checks"]
        if "zeroth" in results:  # the shared evaluation of the shared start model
            a, b = results["zeroth"]["curve"][0], results[trl]["curve"][0]
            checks["same_start_eval"] = all(a[k] == b[k] for k in ("pass1", "greedy",
                                                                   "mean_len"))
        out["trl_settings"] = results[trl]["trl_settings"]
    out["curves"] = {s: r["curve"] for s, r in results.items()}
    out["train_acc"] = {s: r["train_acc"] for s, r in results.items()}
    print()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
