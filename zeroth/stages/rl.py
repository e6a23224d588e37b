"""The RL loop: sample a group of completions per prompt, score them with rule-based rewards,
turn scores into group-relative advantages, take clipped policy-gradient steps, record it all.

    for step in steps:
        rows        = task.train_rows(...)                   # P prompts, never held-out ones
        completions = engine.generate(prompts x G)           # gen (rl.engine; zeroth.rollout)
        rewards     = combine(reward fns, weights)           # reward  (each component kept)
        (dapo) drop groups of all-equal rewards, sample more prompts, up to max_sample_rounds
        advantages  = ADVANTAGES[name](rewards, G, scale)    # adv
        for _ in range(mu): for minibatch: policy_loss(...)  # update
        engine.sync(policy)                                  # the engine samples the new policy
        ledger.log_rollouts / log_metrics; checkpoint         # ledger

`rl.algorithm` (zeroth.algorithms.ALGORITHMS) fills every rl field left null. Departures from the
GRPO paper: the clip range is decoupled (eps_low / eps_high); the loss aggregation is a choice
(seq = GRPO, token = DAPO, constant = Dr. GRPO); with beta = 0 no reference model exists at all.
With a single optimiser step per batch (mu = 1, one minibatch) the old log-probs are the current
ones detached (ratio = 1, pure on-policy policy gradient); otherwise they are computed once
before the first update, as in PPO.

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
from dataclasses import replace
from random import Random

import torch

from zeroth.algorithms import ADVANTAGES, ALGORITHMS
from zeroth.algorithms.losses import kl_k3, policy_loss, token_logprobs
from zeroth.config import resolve_rl
from zeroth.errors import UserError
from zeroth.models import lean as fastlm
from zeroth.models.hf import load_model, prompt_ids, trainable
from zeroth.pipeline.checkpoint import load_checkpoint, save_folder
from zeroth.record.thoughts import reflect_rate
from zeroth.rewards import combine, overlong
from zeroth.rollout import hash_seed, make_engine
from zeroth.rollout.decoder import stop_ids
from zeroth.rollout.torch_engine import TorchEngine
from zeroth.stages.eval import decode, difficulty_of

CHANGES_MODEL = True  # the held-out set is evaluated after this stage

def pack(prompts: list[list[int]], completions: list[list[int]], pad_id: int):
    """Right-padded prompt+completion: ids (B, T), attention (B, T), completion mask (B, T-1)
    aligned with the next-token targets ids[:, 1:]."""
    seqs = [p + c for p, c in zip(prompts, completions)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)  # (B, T)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)  # (B, T)
    comp = torch.zeros((len(seqs), width), dtype=torch.float32)  # (B, T)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        attn[i, : len(p) + len(c)] = 1
        comp[i, len(p): len(p) + len(c)] = 1.0
    return ids, attn, comp[:, 1:]


def logprobs(model, ids, attn, temperature: float) -> torch.Tensor:
    """(B, T-1) log-probs of ids[:, 1:] under `model` at the sampling temperature."""
    logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits[:, :-1]  # (B, T-1, V)
    return token_logprobs(logits, ids[:, 1:], temperature)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def step_weights(rl, task) -> dict[str, float]:
    """The reward weights of a step: the recipe's (else the task's), plus the overlong penalty
    with weight 1 when the algorithm uses it and the recipe does not weight it itself."""
    weights = dict(task.weights if rl.reward_weights is None else rl.reward_weights)
    if ALGORITHMS.get(rl.algorithm, {}).get("overlong") and "overlong" not in weights:
        weights["overlong"] = 1.0
    return weights


def sample_rollouts(model, tokenizer, task, rl, seed: int, step: int, phase: str = "rl",
                    round_: int = 0, engine=None) -> dict:
    """Generate (with `engine`, else in this process from `model`), decode and score G
    completions for each of P prompts drawn for `step`; round r > 0 of dynamic sampling draws
    other prompts and samples from its own stream."""
    suffix = f"-r{round_}" if round_ else ""
    rows = task.train_rows(Random(f"{seed}-{phase}-{step}{suffix}"), rl.prompts_per_step)
    rows = [r for r in rows for _ in range(rl.group_size)]  # (P*G,) groups are consecutive
    prompts = prompt_ids(tokenizer, [r["prompt"] for r in rows])
    stops = stop_ids(model, tokenizer)
    gen = torch.Generator().manual_seed(hash_seed(f"{phase}-{seed}-{step}{suffix}"))  # CPU
    engine = engine or TorchEngine(model)
    completions = engine.generate(prompts, max_new_tokens=rl.max_new_tokens, generator=gen,
                                  temperature=rl.temperature, eos_id=stops,
                                  pad_id=tokenizer.pad_token_id, batch_size=len(prompts))
    texts = decode(tokenizer, completions, stops)
    n = len(completions)
    totals, parts = combine(texts, rows, {"overlong": overlong, **task.rewards},
                            rl.reward_weights, completion_ids=completions,
                            max_new_tokens=[rl.max_new_tokens] * n,
                            overlong_cache=[rl.overlong_cache] * n)
    return {"rows": rows, "prompts": prompts, "completions": completions, "texts": texts,
            "rewards": torch.tensor(totals, dtype=torch.float32), "parts": parts,
            "round": [round_] * n}


def _flat(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """(n_groups,) bool: the group's rewards are all equal (zero advantage, no signal)."""
    groups = rewards.view(-1, group_size)  # (n_groups, G)
    return (groups == groups[:, :1]).all(dim=1)


def _select(batch: dict, idx: list[int]) -> dict:
    """The completions `idx` of a batch (lists and the rewards tensor alike)."""
    return {k: v[idx] if torch.is_tensor(v) else [v[i] for i in idx] for k, v in batch.items()}


def _concat(batches: list[dict]) -> dict:
    return {k: torch.cat([b[k] for b in batches]) if torch.is_tensor(batches[0][k])
            else [x for b in batches for x in b[k]] for k in batches[0]}


def gather(model, tokenizer, task, rl, seed: int, step: int, phase: str = "rl", engine=None):
    """The step's rollouts and the groups to train on: (sampled batch, kept group indices,
    metrics). Without dynamic sampling that is one round, every group kept. With it, flat
    groups are skipped and rounds of fresh prompts add informative groups until P are kept
    or max_sample_rounds rounds have run; the first P found are kept."""
    size, want = rl.group_size, rl.prompts_per_step
    rounds, keep, info = [], [], {}
    limit = rl.max_sample_rounds if rl.dynamic_sampling else 1
    while len(rounds) < limit and len(keep) < want:
        batch = sample_rollouts(model, tokenizer, task, rl, seed, step, phase, len(rounds),
                                engine)
        flat = _flat(batch["rewards"], size).tolist()
        if not rounds:
            info["groups_flat"] = sum(flat) / len(flat)  # share of groups with no signal
        offset = len(rounds) * want
        keep += [offset + g for g, f in enumerate(flat) if not (f and rl.dynamic_sampling)]
        keep = keep[:want]
        rounds.append(batch)
    if rl.dynamic_sampling:
        info.update(groups_kept=len(keep), sample_rounds=len(rounds))
    return _concat(rounds), keep, info


def advantages(batch: dict, rl) -> torch.Tensor:
    """(N,) advantages of a batch of whole groups; a completion whose verifier failed gets 0."""
    adv = ADVANTAGES[rl.advantage](batch["rewards"], rl.group_size, rl.scale_rewards, 1e-4)
    failed = torch.tensor([any(k.endswith("_error") for k in p) for p in batch["parts"]])
    return adv.masked_fill(failed, 0.0)  # a verifier failure teaches nothing, it is no 0 score


def _logprobs(model, prompts, completions, pad_id: int, temperature: float, fast: bool):
    """(logp, mask) of the completion tokens of one minibatch: the lean path (each group's
    prompt run once, log-probs on completion positions only; zeroth.models.lean) when the model
    allows it, else transformers' forward over the packed sequences."""
    if fast:
        return fastlm.completion_logprobs(model, prompts, completions, pad_id, temperature)
    ids, attn, mask = (t.to(_device(model)) for t in pack(prompts, completions, pad_id))
    return logprobs(model, ids, attn, temperature), mask


def update(model, optimizer, ref_model, batch: dict, advantages, rl, pad_id: int) -> dict:
    """mu passes of clipped policy-gradient steps over minibatches; returns mean stats."""
    advantages = advantages.to(_device(model))
    n = len(batch["completions"])
    chunks = [slice(i, i + rl.minibatch_size) for i in range(0, n, rl.minibatch_size)]
    fast = fastlm.supports(model, grad=True) and (ref_model is None or fastlm.supports(ref_model))
    parts = [(batch["prompts"][c], batch["completions"][c]) for c in chunks]
    on_policy = rl.mu == 1 and len(chunks) == 1
    totals: dict[str, float] = {}
    kl_ref = None
    neg_logp, n_tokens = 0.0, 0.0  # first pass: mean -log p of the sampled tokens = entropy
    with torch.no_grad():  # old log-probs (not needed on-policy: ratio 1) and the reference's
        old = None if on_policy else [
            _logprobs(model, *part, pad_id, rl.temperature, fast) for part in parts]
        ref = None if ref_model is None else [
            _logprobs(ref_model, *part, pad_id, rl.temperature, fast)[0] for part in parts]
        if ref is not None and old is not None:  # KL(policy || ref) on the tokens sampled
            kl_sum = sum(float((kl_k3(o, r) * m).sum()) for (o, m), r in zip(old, ref))
            kl_ref = kl_sum / max(1.0, sum(float(m.sum()) for _, m in old))
    for epoch in range(rl.mu):
        for i, (c, part) in enumerate(zip(chunks, parts)):
            logp, mask = _logprobs(model, *part, pad_id, rl.temperature, fast)
            if epoch == 0:
                neg_logp -= float((logp.detach() * mask).sum())
                n_tokens += float(mask.sum())
            loss, stats = policy_loss(
                logp, logp.detach() if on_policy else old[i][0], advantages[c], mask,
                eps_low=rl.eps_low, eps_high=rl.eps_high, loss_agg=rl.loss_agg,
                ref_logp=None if ref is None else ref[i], beta=rl.beta,
                agg_constant=float(rl.max_new_tokens))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(),
                                                                      rl.max_grad_norm))
            optimizer.step()
            stats["loss"] = loss.item()
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + value / (rl.mu * len(chunks))
    # The policy's per-token entropy, estimated without bias by the sampled tokens' mean
    # surprisal (they were drawn from this policy at this temperature); costs no extra pass.
    totals["entropy"] = neg_logp / max(1.0, n_tokens)
    totals["lr"] = float(optimizer.param_groups[0]["lr"])
    if not on_policy or ref is None:  # after updates, on older samples: biased; or no reference
        totals.pop("kl", None)
        if kl_ref is not None:
            totals["kl"] = kl_ref
    return totals


def rl_step(model, optimizer, ref_model, tokenizer, task, rl, seed: int, step: int,
            phase: str = "rl", engine=None):
    """One step of the algorithm `rl.algorithm` for pipeline stage `phase`.
    Returns (metrics, ledger rows)."""
    rl = resolve_rl(rl)  # the algorithm's settings for every field left null
    rl = replace(rl, reward_weights=step_weights(rl, task))
    timers, t0 = {}, time.perf_counter()
    sampled, keep, info = gather(model, tokenizer, task, rl, seed, step, phase, engine)
    timers["time_gen"], t0 = time.perf_counter() - t0, time.perf_counter()
    size = rl.group_size
    kept = [g * size + j for g in keep for j in range(size)]  # completions trained on
    adv = torch.zeros(len(sampled["texts"]))  # (N,) 0 for every completion not trained on
    stats = {}
    if kept:  # else every group was flat: nothing to learn, no optimiser step
        batch = _select(sampled, kept)
        adv[kept] = advantages(batch, rl)
        stats = update(model, optimizer, ref_model, batch, adv[kept], rl,
                       tokenizer.pad_token_id)
    timers["time_update"] = time.perf_counter() - t0
    metrics = {**_reward_stats(sampled, rl), **info, **stats, **timers}
    return metrics, _ledger_rows(sampled, adv, set(keep), rl, task.name)


def _ledger_rows(sampled: dict, adv: torch.Tensor, keep: set[int], rl, task_name: str
                 ) -> list[dict]:
    """One ledger row per sampled completion; with dynamic sampling `extra` holds its round and
    why it was dropped (flat group, or an informative one beyond the P kept)."""
    rows, size = [], rl.group_size
    flat = _flat(sampled["rewards"], size).tolist()
    for i, (row, text, comp, part, r, a, rnd) in enumerate(zip(
            sampled["rows"], sampled["texts"], sampled["completions"], sampled["parts"],
            sampled["rewards"], adv, sampled["round"])):
        extra = None
        if rl.dynamic_sampling:
            extra = {"round": rnd}
            if i // size not in keep:
                extra["dropped"] = "flat" if flat[i // size] else "surplus"
        rows.append({"prompt_idx": i // size, "sample_idx": i % size, "prompt": row["prompt"],
                     "completion": text, "n_tokens": len(comp), "rewards": part,
                     "reward": float(r), "advantage": float(a), "answer": row["answer"],
                     "extra": extra, "task": row.get("task") or task_name,
                     "difficulty": difficulty_of(row)})
    return rows


def _reward_stats(batch: dict, rl) -> dict:
    """Mean of the total and of each reward component and response length, over every sampled
    completion."""
    n = len(batch["texts"])
    out = {"reward": float(batch["rewards"].mean()),
           "mean_len": sum(len(c) for c in batch["completions"]) / n,
           "think_rate": sum("<think>" in t for t in batch["texts"]) / n,
           "reflect_rate": reflect_rate(batch["texts"])}
    for name in rl.reward_weights:
        values = [p[name] for p in batch["parts"] if p.get(name) is not None]
        out[f"reward_{name}"] = sum(values) / len(values) if values else float("nan")
    return out


def train(model, optimizer, ref_model, tokenizer, task, cfg, *, start: int, ledger, update,
          save, phase: str = "rl") -> None:
    """The RL loop of pipeline stage `phase` from step `start` to cfg.rl.steps: log every
    rollout and step under `phase`, checkpoint."""
    rl = cfg.rl
    shown_acc = next((f"reward_{n}" for n in (task.accuracy, "correct")
                      if n in (rl.reward_weights or task.weights)), None)
    engine = make_engine(cfg, model)
    for step in range(start, rl.steps):
        metrics, rows = rl_step(model, optimizer, ref_model, tokenizer, task, rl,
                                cfg.run.seed, step, phase, engine)
        engine.sync(model)
        ledger.log_rollouts(phase, step + 1, rows)
        ledger.log_metrics(phase, step + 1, metrics)
        shown = {"reward": metrics["reward"], "acc": metrics.get(shown_acc, 0.0),
                 "len": metrics["mean_len"]}
        if "kl" in metrics:
            shown["kl"] = metrics["kl"]
        update(step + 1, **shown)
        if (step + 1) % rl.checkpoint_every == 0 or step + 1 == rl.steps:
            save(step + 1)


def run(r) -> dict:
    """The rl stage: GRPO-family RL from the current policy; with beta > 0 the policy at the stage's start is
    the frozen reference (saved to reference/ when the stage starts)."""
    rl = r.cfg.rl
    optimizer = torch.optim.AdamW(trainable(r.model), lr=rl.lr, betas=(0.9, 0.99),
                                  weight_decay=0.0)
    start = r.state["step"]
    if r.resume_ckpt is not None:
        load_checkpoint(r.resume_ckpt, optimizer=optimizer)
    r.ledger.truncate_after(r.stage_id, start)
    r.model.eval()  # no dropout: sampling, old and new log-probs must see the same network
    ref = None
    if rl.beta > 0:  # beta = 0: no reference model is loaded at all
        if not (r.dir / "reference" / "config.json").is_file():
            raise UserError(f"{r.dir / 'reference'} is missing — the run's reference policy "
                            "is gone; start a new run")
        ref, _ = load_model(r.dir / "reference", dtype=r.model_cfg.dtype)
        ref.to(r.device).eval().requires_grad_(False)

    with r.display.stage(r.stage_id, total=rl.steps, done=start) as update:
        train(r.model, optimizer, ref, r.tokenizer, r.task, r.cfg, start=start,
              ledger=r.ledger, update=update, save=lambda step: r.save(step, optimizer),
              phase=r.stage_id)
    settings = ("algorithm", "advantage", "scale_rewards", "loss_agg", "eps_low", "eps_high",
                "beta", "dynamic_sampling", "lr")
    return {"steps": rl.steps, **{k: getattr(rl, k) for k in settings},
            "reward_weights": step_weights(rl, r.task)}

def start(r) -> None:
    """Once, as the stage starts fresh: with beta > 0, the policy now is the frozen reference."""
    if r.cfg.rl.beta > 0:
        save_folder(r.model, r.tokenizer, r.dir / "reference")  # the frozen reference
