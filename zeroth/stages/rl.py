"""The RL loop: sample a group of completions per prompt, score them with rule-based rewards,
turn scores into group-relative advantages, take clipped policy-gradient steps, record it all.

    for step in steps:                                       (`train`, below)
        batch  = engine.generate(P prompts x G) -> Rollouts  # gen    (rl.engine; zeroth.rollout)
        batch.rewards = combine(reward fns, weights)          # reward (each component kept)
        (dapo) set aside groups of equal rewards, sample more prompts, up to max_sample_rounds
        adv    = ADVANTAGES[rl.advantage](rewards, G, scale)  # adv
        before = old and reference log-probs                  # ref    (zeroth.algorithms.update)
        for _ in range(mu): for minibatch: policy_loss(...)   # update
        engine.sync(policy)                                   # sync   (sample the new policy)
        ledger rows, metrics, progress; checkpoint            # record
        every rl.eval_every steps: held-out pass@1, greedy    # heldout (in the step's metrics)

On several ranks (torchrun) each samples and scores its share of the groups; a group never
spans ranks, and group g samples from its own seed whichever rank draws it, so the completions
are world 1's. Each round is gathered, so every rank holds the whole batch and computes alike
what must be global: the groups kept, the advantages (REINFORCE++'s batch std), the reward
statistics and the ledger rows (written by rank 0). The update splits every minibatch between
the ranks and sums their gradients (zeroth.algorithms.update): the step world 1 takes.

Each line's wall time is in the step's metrics as time_<name> (gen and reward summed over
dynamic-sampling rounds; on several ranks also time_gather, the rounds' exchange).

`rl.algorithm` (zeroth.algorithms.ALGORITHMS) fills every rl field left null. Departures from the
GRPO paper: the clip range is decoupled (eps_low / eps_high); the loss aggregation is a choice
(seq = GRPO, token = DAPO, constant = Dr. GRPO); with beta = 0 no reference model exists at all.

DAPO's departures from GRPO, each also usable alone: clip-higher (eps_high 0.28), token-level
loss, no KL, the soft overlong penalty (the `overlong` reward, weight 1 unless the recipe
weights it) and dynamic sampling: a group whose rewards are all equal has zero advantage and
teaches nothing, so it is set aside and fresh prompts are sampled until `prompts_per_step`
informative groups are found. Where DAPO samples until the batch is full, a step here stops
after `max_sample_rounds` rounds and trains on what it found (no optimiser step if nothing). Every
sampled completion is in the ledger; one not trained on has advantage 0 and `extra.dropped`
("flat", or "surplus" for an informative group beyond the P kept). DAPO filters on accuracy
(0 < solved < G); here a group is flat when its total rewards are all equal, so a group that
differs only in format or length terms still counts as informative (its advantages are not 0).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from random import Random

import torch

from zeroth.algorithms import ADVANTAGES, ALGORITHMS
from zeroth.algorithms.update import logprobs_before, update
from zeroth.config import resolve_rl
from zeroth.errors import UserError
from zeroth.models.hf import load_model, prompt_ids, trainable
from zeroth.models.precision import precision_of, set_precision
from zeroth.pipeline import dist
from zeroth.pipeline.checkpoint import load_checkpoint, save_folder
from zeroth.pipeline.faults import NonFinite, stop_point
from zeroth.record.thoughts import reflect_rate
from zeroth.rewards import combine, overlong
from zeroth.rollout import ENGINES, Engine, hash_seed, make_engine
from zeroth.rollout.batch import Rollouts
from zeroth.rollout.decoder import SEED_BITS, stop_ids
from zeroth.stages.eval import decode, difficulty_of, evaluate
from zeroth.tasks.curriculum import Curriculum, describe

CHANGES_MODEL = True  # the held-out set is evaluated after this stage


def step_weights(rl, task) -> dict[str, float]:
    """The reward weights of a step: the recipe's (else the task's), plus the overlong penalty
    with weight 1 when the algorithm uses it and the recipe does not weight it itself."""
    weights = dict(task.weights if rl.reward_weights is None else rl.reward_weights)
    if ALGORITHMS.get(rl.algorithm, {}).get("overlong") and "overlong" not in weights:
        weights["overlong"] = 1.0
    return weights


@dataclass
class RLContext:
    """What every part of an RL step reads: the policy and its optimiser, the frozen reference
    (None when beta = 0), the tokenizer, task, the rl settings (resolved: the algorithm's
    presets and the step's reward weights filled in), the run seed, the ledger phase (stage id)
    and the engine that samples. `engine=None` samples with the built-in torch engine;
    `curriculum` moves the task's levels after each step (task.curriculum), None when off."""

    policy: torch.nn.Module
    optimizer: torch.optim.Optimizer
    ref: torch.nn.Module | None
    tokenizer: object
    task: object
    rl: object
    seed: int = 0
    phase: str = "rl"
    engine: Engine | None = None
    heldout: float | None = None  # pass@1 of the latest held-out evaluation during the stage
    curriculum: Curriculum | None = None
    max_nonfinite_steps: int = 3  # run.max_nonfinite_steps: skipped steps in a row, then stop

    def __post_init__(self):
        rl = resolve_rl(self.rl)
        self.rl = replace(rl, reward_weights=step_weights(rl, self.task))
        self.engine = self.engine or ENGINES["torch"](self.policy, None)
        self.stops = stop_ids(self.policy, self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id


@contextmanager
def timed(times: dict, name: str) -> Iterator[None]:
    """Add the wall time of the block to times["time_<name>"]."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        key = f"time_{name}"
        times[key] = times.get(key, 0.0) + time.perf_counter() - t0


def group_seed(ctx: RLContext, step: int, round_: int, group: int) -> int:
    """The seed of group `group` of a step's sampling round: its sample j samples from this
    seed + j. It depends on (run seed, stage, step, round, group index) alone, so a group samples
    the same completions whichever process, batch or engine call it falls in."""
    suffix = f"-r{round_}" if round_ else ""
    return hash_seed(f"{ctx.phase}-{ctx.seed}-{step}{suffix}-g{group}") >> (63 - SEED_BITS)


def sample(ctx: RLContext, step: int, round_: int = 0,
           groups: range | None = None) -> Rollouts:
    """G completions for each of P prompts drawn for `step` (not yet scored), or for the
    groups `groups` of them only; round r > 0 of dynamic sampling draws other prompts."""
    rl, suffix = ctx.rl, f"-r{round_}" if round_ else ""
    rows = ctx.task.train_rows(Random(f"{ctx.seed}-{ctx.phase}-{step}{suffix}"),
                               rl.prompts_per_step)
    groups = range(len(rows)) if groups is None else groups
    rows = [rows[g] for g in groups for _ in range(rl.group_size)]  # groups are consecutive
    seeds = [group_seed(ctx, step, round_, g) + j for g in groups for j in range(rl.group_size)]
    prompts = prompt_ids(ctx.tokenizer, [r["prompt"] for r in rows])
    completions, logprobs = ctx.engine.generate(
        prompts, max_new_tokens=rl.max_new_tokens, generator=None, seeds=seeds,
        temperature=rl.temperature, eos_id=ctx.stops, pad_id=ctx.pad_id,
        batch_size=len(prompts), logprobs=True)
    n = len(completions)
    return Rollouts(rows=rows, prompts=prompts, completions=completions,
                    texts=decode(ctx.tokenizer, completions, ctx.stops),
                    rewards=torch.zeros(n), parts=[{} for _ in range(n)], rounds=[round_] * n,
                    engine_logprobs=logprobs)


def score(ctx: RLContext, batch: Rollouts) -> None:
    """Each completion's weighted total reward and its components, into the batch; a reward
    function that runs past rl.reward_timeout_s scores its completions None (a verifier
    failure, no advantage), as one that raises does."""
    rl, n = ctx.rl, len(batch)
    totals, batch.parts = combine(batch.texts, batch.rows, {"overlong": overlong,
                                                            **ctx.task.rewards},
                                  rl.reward_weights, completion_ids=batch.completions,
                                  max_new_tokens=[rl.max_new_tokens] * n,
                                  overlong_cache=[rl.overlong_cache] * n,
                                  timeout_s=rl.reward_timeout_s or None)
    batch.rewards = torch.tensor(totals, dtype=torch.float32)


def gather(ctx: RLContext, step: int, times: dict) -> tuple[Rollouts, list[int], dict]:
    """The step's rollouts and the groups to train on: (every sampled completion, kept group
    indices, metrics). Without dynamic sampling that is one round, every group kept. With it,
    flat groups are skipped and rounds of fresh prompts add informative groups until P are
    kept or max_sample_rounds rounds have run; the first P found are kept."""
    rl = ctx.rl
    rounds, keep, info = [], [], {}
    limit = rl.max_sample_rounds if rl.dynamic_sampling else 1
    while len(rounds) < limit and len(keep) < rl.prompts_per_step:
        with timed(times, "gen"):  # this rank's share of the groups (all of them alone)
            batch = sample(ctx, step, len(rounds), groups=dist.share(rl.prompts_per_step))
        with timed(times, "reward"):
            score(ctx, batch)
        if dist.world() > 1:
            with timed(times, "gather"):  # every rank sees the whole round
                batch = Rollouts.concat(dist.gather(batch))
        flat = batch.flat_groups(rl.group_size)
        if not rounds:
            info["groups_flat"] = sum(flat) / len(flat)  # share of groups with no signal
        offset = len(rounds) * rl.prompts_per_step
        keep += [offset + g for g, f in enumerate(flat) if not (f and rl.dynamic_sampling)]
        keep = keep[:rl.prompts_per_step]
        rounds.append(batch)
    if rl.dynamic_sampling:
        info.update(groups_kept=len(keep), sample_rounds=len(rounds))
    return Rollouts.concat(rounds), keep, info


def advantages(ctx: RLContext, batch: Rollouts) -> torch.Tensor:
    """(N,) advantages of a batch of whole groups; a completion whose verifier failed gets 0."""
    rl = ctx.rl
    adv = ADVANTAGES[rl.advantage](batch.rewards, rl.group_size, rl.scale_rewards, 1e-4)
    return adv.masked_fill(batch.failed(), 0.0)  # a verifier failure is no 0 score


def train(ctx: RLContext, *, start: int, ledger, show: Callable = lambda step, **_: None,
          save: Callable = lambda step: None, stop: int | None = None,
          heldout: Callable[[], dict] | None = None,
          note: Callable[[str], None] = lambda text: None,
          safe_point: Callable[[int, bool], None] = lambda step, saved: None) -> dict:
    """The RL loop from step `start` to rl.steps (or `stop`): every rollout and step metric to
    the ledger under ctx.phase, progress to `show(step, **numbers)`, `save(step)` at each
    checkpoint, and every rl.eval_every steps `heldout()`'s numbers (the held-out evaluation)
    in that step's metrics; each curriculum change is a line to `note` and the ledger's meta
    `curriculum`. After each step `safe_point(step, saved)` (zeroth.pipeline.faults.stop_point:
    where a SIGTERM stops the run). A step whose update met a non-finite value skips it
    (`skipped_steps` in its metrics); ctx.max_nonfinite_steps of them in a row stop the loop.
    Returns the last step's metrics."""
    rl, size, metrics = ctx.rl, ctx.rl.group_size, {}
    bad = NonFinite(ctx.max_nonfinite_steps, ctx.phase)
    for step in range(start, rl.steps if stop is None else stop):
        times: dict[str, float] = {}
        sampled, keep, info = gather(ctx, step, times)  # sample and score, maybe in rounds
        kept = [g * size + j for g in keep for j in range(size)]  # completions trained on
        adv, stats = torch.zeros(len(sampled)), {}  # (N,) 0 for every one not trained on
        if kept:  # else every group was flat: nothing to learn, no optimiser step
            stats = learn(ctx, sampled.select(kept), adv, kept, times)
        with timed(times, "sync"):
            ctx.engine.sync(ctx.policy)
        with timed(times, "record"):
            ledger.log_rollouts(ctx.phase, step + 1, ledger_rows(ctx, sampled, adv, set(keep)))
        metrics = {**reward_stats(ctx, sampled), **info, **stats, **times}
        per_task, moves = task_metrics(ctx, sampled, step + 1)
        metrics.update(per_task)
        if heldout is not None and rl.eval_every and (step + 1) % rl.eval_every == 0:
            with timed(metrics, "heldout"):
                metrics.update(heldout())
            ctx.heldout = metrics["heldout_pass1"]
        ledger.log_metrics(ctx.phase, step + 1, metrics)
        if moves:
            ledger.set_meta("curriculum", ctx.curriculum.changes)
            for move in moves:
                note(describe(move))
        show(step + 1, **shown(ctx, metrics))
        what = "advantage" if stats.get("nonfinite_advantages") else "loss or gradient"
        if stats.get("skipped_steps"):
            note(f"{ctx.phase} step {step + 1}: a non-finite {what}, "
                 f"{stats['skipped_steps']:g} optimiser step(s) skipped")
        bad.observe(bool(stats.get("skipped_steps")), step + 1, f"a non-finite {what}")
        saved = (step + 1) % rl.checkpoint_every == 0 or step + 1 == rl.steps
        if saved:
            save(step + 1)
        safe_point(step + 1, saved)
    return metrics


def learn(ctx: RLContext, batch: Rollouts, adv: torch.Tensor, kept: list[int],
          times: dict) -> dict:
    """The update on the kept completions: their advantages into `adv`, then the reference and
    old log-probs and the optimiser steps; the update's stats. Advantages that are not finite
    (rewards too large to normalise) skip the update (`skipped_steps`, `nonfinite_advantages`)."""
    with timed(times, "adv"):
        adv[kept] = advantages(ctx, batch)
    if not bool(torch.isfinite(adv[kept]).all()):
        adv[kept] = 0.0
        return {"skipped_steps": 1, "nonfinite_advantages": 1}
    with timed(times, "ref"):
        before = logprobs_before(ctx, batch)
    with timed(times, "update"):
        return update(ctx, batch, adv[kept], before)


def rl_step(ctx: RLContext, step: int) -> tuple[dict, list[dict]]:
    """One step of the loop (`train`), for tests and benchmarks: (metrics, ledger rows)."""
    memory = _Memory()
    train(ctx, start=step, stop=step + 1, ledger=memory)
    return memory.metrics, memory.rows


class _Memory:
    """A ledger that keeps the last step's rows and metrics."""

    def log_rollouts(self, phase, step, rows):
        self.rows = rows

    def log_metrics(self, phase, step, metrics):
        self.metrics = metrics

    def set_meta(self, key, value):
        self.meta = {**getattr(self, "meta", {}), key: value}


def shown(ctx: RLContext, metrics: dict) -> dict:
    """The numbers of a step on the progress bar: reward, accuracy, length and KL."""
    acc = next((f"reward_{n}" for n in (ctx.task.accuracy, "correct")
                if n in ctx.rl.reward_weights), None)
    out = {"reward": metrics["reward"], "acc": metrics.get(acc, 0.0), "len": metrics["mean_len"]}
    if "kl" in metrics:
        out["kl"] = metrics["kl"]
    if ctx.heldout is not None:
        out["held-out"] = ctx.heldout  # pass@1 of the latest evaluation during the stage
    return out


def ledger_rows(ctx: RLContext, sampled: Rollouts, adv: torch.Tensor, keep: set[int]
                ) -> list[dict]:
    """One ledger row per sampled completion; with dynamic sampling `extra` holds its round and
    why it was dropped (flat group, or an informative one beyond the P kept)."""
    rl, rows, size = ctx.rl, [], ctx.rl.group_size
    flat = sampled.flat_groups(size)
    for i, (row, text, comp, part, r, a, rnd) in enumerate(zip(
            sampled.rows, sampled.texts, sampled.completions, sampled.parts, sampled.rewards,
            adv, sampled.rounds)):
        extra = None
        if rl.dynamic_sampling:
            extra = {"round": rnd}
            if i // size not in keep:
                extra["dropped"] = "flat" if flat[i // size] else "surplus"
        rows.append({"prompt_idx": i // size, "sample_idx": i % size, "prompt": row["prompt"],
                     "completion": text, "n_tokens": len(comp), "rewards": part,
                     "reward": float(r), "advantage": float(a), "answer": row["answer"],
                     "extra": extra, "task": row.get("task") or ctx.task.name,
                     "difficulty": difficulty_of(row)})
    return rows


def task_metrics(ctx: RLContext, batch: Rollouts, step: int) -> tuple[dict, list[dict]]:
    """A mix's training accuracy per family over the step's sampled completions
    (`accuracy/<family>`) and, under a curriculum, the level each family drew at this step
    (`level/<family>`); then the curriculum's changes for the next step. ({}, []) for a task
    without levels."""
    if ctx.task.levels is None:
        return {}, []
    outcomes: dict[str, list[bool]] = {}
    if ctx.task.accuracy in ctx.rl.reward_weights:  # else no verdicts were computed
        for row, part in zip(batch.rows, batch.parts, strict=True):
            outcomes.setdefault(row.get("task") or ctx.task.name, []).append(
                part.get(ctx.task.accuracy) == 1.0)
    out = {}
    for name in ctx.task.info.get("mix") or ():  # a family with no row this step: no value
        if outcomes.get(name):
            out[f"accuracy/{name}"] = sum(outcomes[name]) / len(outcomes[name])
    if ctx.curriculum is None:
        return out, []
    out.update({f"level/{name}": level for name, level in ctx.task.levels.items()})
    return out, ctx.curriculum.observe(ctx.phase, step, outcomes)


def reward_stats(ctx: RLContext, batch: Rollouts) -> dict:
    """Mean of the total and of each reward component and response length, over every sampled
    completion."""
    n = len(batch)
    out = {"reward": float(batch.rewards.mean()),
           "mean_len": sum(len(c) for c in batch.completions) / n,
           "think_rate": sum("<think>" in t for t in batch.texts) / n,
           "reflect_rate": reflect_rate(batch.texts)}
    for name in ctx.rl.reward_weights:
        values = [p[name] for p in batch.parts if p.get(name) is not None]
        out[f"reward_{name}"] = sum(values) / len(values) if values else float("nan")
    return out


def start(r) -> None:
    """Once, as the stage starts fresh: with beta > 0, the policy now is the frozen reference."""
    if r.cfg.rl.beta > 0:
        dist.on_main(save_folder, dist.plain(r.model), r.tokenizer, r.dir / "reference")


def reference(r):
    """The frozen reference policy of this stage (saved by `start`), or None when beta = 0:
    then no reference model is loaded at all."""
    if r.cfg.rl.beta == 0:
        return None
    if not (r.dir / "reference" / "config.json").is_file():
        raise UserError(f"{r.dir / 'reference'} is missing — the run's reference policy "
                        "is gone; start a new run")
    ref, _ = load_model(r.dir / "reference", dtype=r.model_cfg.dtype)
    ref = ref.to(r.device).eval().requires_grad_(False)
    return set_precision(ref, precision_of(r.model))  # it computes as the policy does


def heldout_eval(r, ctx: RLContext) -> Callable[[], dict]:
    """The evaluation during the stage: the first rl.eval_problems held-out problems, sampled
    as the final evaluation samples them (eval.k at eval.temperature, and greedy, from the same
    seeds each time, so the curve moves with the policy, not the draw)."""
    rows = r.task.eval_rows(r.cfg.task.eval_problems, r.cfg.run.seed)[:ctx.rl.eval_problems]

    def heldout() -> dict:
        metrics, _ = evaluate(ctx.engine, r.tokenizer, r.task, rows, r.cfg.eval, r.cfg.run.seed)
        return {"heldout_pass1": metrics["pass1"], "heldout_greedy": metrics["greedy"],
                "heldout_mean_len": metrics["mean_len"],
                **{f"heldout_pass1/{name}": m["pass1"]
                   for name, m in (metrics.get("by_task") or {}).items()}}

    return heldout


def run(r) -> dict:
    """The rl stage: GRPO-family RL from the current policy, resumable at any checkpoint."""
    rl = r.cfg.rl
    optimizer = torch.optim.AdamW(trainable(r.model), lr=rl.lr, betas=(0.9, 0.99),
                                  weight_decay=0.0)
    begin = r.state["step"]
    if r.resume_ckpt is not None:
        load_checkpoint(r.resume_ckpt, optimizer=optimizer, model=r.model)
    r.ledger.truncate_after(r.stage_id, begin)
    r.model.eval()  # no dropout: sampling, old and new log-probs must see the same network
    ctx = RLContext(r.model, optimizer, reference(r), r.tokenizer, r.task, rl,
                    seed=r.cfg.run.seed, phase=r.stage_id, engine=make_engine(r.cfg, r.model),
                    curriculum=Curriculum.of(r.task, r.cfg.task.curriculum,
                                             r.state.get("curriculum")),
                    max_nonfinite_steps=r.cfg.run.max_nonfinite_steps)
    if ctx.curriculum is not None:  # the changes up to the checkpoint resumed from, no later
        r.ledger.set_meta("curriculum", ctx.curriculum.changes)
    with r.display.stage(r.stage_id, total=rl.steps, done=begin) as show:
        train(ctx, start=begin, ledger=r.ledger, show=show,
              save=lambda step: save_step(r, ctx, optimizer, step), heldout=heldout_eval(r, ctx),
              note=r.display.print,
              safe_point=lambda step, saved: stop_point(
                  r, step, saved, lambda: save_step(r, ctx, optimizer, step)))
    settings = ("algorithm", "advantage", "scale_rewards", "loss_agg", "eps_low", "eps_high",
                "beta", "dynamic_sampling", "lr")
    levels = {"levels": dict(r.task.levels)} if ctx.curriculum is not None else {}
    return {"steps": rl.steps, **{k: getattr(rl, k) for k in settings},
            "reward_weights": step_weights(rl, r.task), **levels}


def save_step(r, ctx: RLContext, optimizer, step: int) -> None:
    """A checkpoint of the stage, with the curriculum's levels, windows and changes."""
    if ctx.curriculum is not None:
        r.state["curriculum"] = ctx.curriculum.state()
    r.save(step, optimizer)
