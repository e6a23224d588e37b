"""The RL loop: sample a group of completions per prompt, score them with rule-based rewards,
turn scores into group-relative advantages, take clipped policy-gradient steps, record it all.

    for step in steps:
        rows        = task.train_rows(...)                   # P prompts, never held-out ones
        completions = generate(policy, prompts x G)          # gen
        rewards     = combine(reward fns, weights)           # reward  (each component kept)
        advantages  = ADVANTAGES[name](rewards, G, scale)    # adv
        for _ in range(mu): for minibatch: policy_loss(...)  # update
        ledger.log_rollouts / log_metrics; checkpoint         # ledger

Departures from the GRPO paper: the clip range is decoupled (eps_low / eps_high, DAPO); the
loss aggregation is a choice (seq = GRPO, token = DAPO, constant = Dr. GRPO); with beta = 0 no
reference model exists at all. With a single optimiser step per batch (mu = 1, one minibatch)
the old log-probs are the current ones detached (ratio = 1, pure on-policy policy gradient);
otherwise they are computed once before the first update, as in PPO.
"""

from __future__ import annotations

import time
from random import Random

import torch

from zeroth.algos import ADVANTAGES, kl_k3, policy_loss, token_logprobs
from zeroth.config import resolve_rl
from zeroth.evaluate import decode
from zeroth.models import prompt_ids
from zeroth.rewards import combine
from zeroth.rollout import generate, hash_seed, stop_ids


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
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]  # (B, T-1, V)
    return token_logprobs(logits, ids[:, 1:], temperature)


def sample_rollouts(model, tokenizer, task, rl, seed: int, step: int) -> dict:
    """Generate, decode and score G completions for each of P prompts drawn for `step`."""
    rows = task.train_rows(Random(f"{seed}-rl-{step}"), rl.prompts_per_step)
    rows = [r for r in rows for _ in range(rl.group_size)]  # (P*G,) groups are consecutive
    prompts = prompt_ids(tokenizer, [r["prompt"] for r in rows])
    stops = stop_ids(model, tokenizer)
    gen = torch.Generator().manual_seed(hash_seed(f"rl-{seed}-{step}"))
    completions = generate(model, prompts, max_new_tokens=rl.max_new_tokens, generator=gen,
                           temperature=rl.temperature, eos_id=stops,
                           pad_id=tokenizer.pad_token_id, batch_size=len(prompts))
    texts = decode(tokenizer, completions, stops)
    totals, parts = combine(texts, rows, task.rewards, rl.reward_weights,
                            completion_ids=completions,
                            max_new_tokens=[rl.max_new_tokens] * len(completions))
    return {"rows": rows, "prompts": prompts, "completions": completions, "texts": texts,
            "rewards": torch.tensor(totals, dtype=torch.float32), "parts": parts}


def update(model, optimizer, ref_model, batch: dict, advantages, rl, pad_id: int) -> dict:
    """mu passes of clipped policy-gradient steps over minibatches; returns mean stats."""
    ids, attn, mask = pack(batch["prompts"], batch["completions"], pad_id)
    n = ids.shape[0]
    chunks = [slice(i, i + rl.minibatch_size) for i in range(0, n, rl.minibatch_size)]
    on_policy = rl.mu == 1 and len(chunks) == 1
    totals: dict[str, float] = {}
    kl_ref = None
    with torch.no_grad():
        old = None if on_policy and ref_model is None else torch.cat(
            [logprobs(model, ids[c], attn[c], rl.temperature) for c in chunks])  # (B, T-1)
        ref = None if ref_model is None else torch.cat(
            [logprobs(ref_model, ids[c], attn[c], rl.temperature) for c in chunks])
        if ref is not None:  # KL(policy || ref) on the tokens just sampled from the policy
            kl_ref = float((kl_k3(old, ref) * mask).sum() / mask.sum().clamp(min=1))
    for _ in range(rl.mu):
        for c in chunks:
            logp = logprobs(model, ids[c], attn[c], rl.temperature)  # (b, T-1)
            loss, stats = policy_loss(
                logp, logp.detach() if on_policy else old[c], advantages[c], mask[c],
                eps_low=rl.eps_low, eps_high=rl.eps_high, loss_agg=rl.loss_agg,
                ref_logp=None if ref is None else ref[c], beta=rl.beta,
                agg_constant=float(rl.max_new_tokens))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(),
                                                                      rl.max_grad_norm))
            optimizer.step()
            stats["loss"] = loss.item()
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + value / (rl.mu * len(chunks))
    totals.pop("kl", None)  # measured after updates, on older samples: biased
    if kl_ref is not None:
        totals["kl"] = kl_ref
    return totals


def rl_step(model, optimizer, ref_model, tokenizer, task, rl, seed: int, step: int):
    """One GRPO step. Returns (metrics, ledger rows)."""
    rl = resolve_rl(rl)  # the algorithm's settings for every field left null
    timers, t0 = {}, time.perf_counter()
    batch = sample_rollouts(model, tokenizer, task, rl, seed, step)
    timers["time_gen"], t0 = time.perf_counter() - t0, time.perf_counter()
    adv = ADVANTAGES[rl.advantage](batch["rewards"], rl.group_size, rl.scale_rewards, 1e-4)
    failed = torch.tensor([any(k.endswith("_error") for k in p) for p in batch["parts"]])
    adv = adv.masked_fill(failed, 0.0)  # a verifier failure teaches nothing, it is no 0 score
    stats = update(model, optimizer, ref_model, batch, adv, rl, tokenizer.pad_token_id)
    timers["time_update"] = time.perf_counter() - t0
    metrics = {**_reward_stats(batch, rl), **stats, **timers}
    ledger_rows = [
        {"prompt_idx": i // rl.group_size, "sample_idx": i % rl.group_size,
         "prompt": row["prompt"], "completion": text, "n_tokens": len(comp),
         "rewards": part, "reward": float(r), "advantage": float(a), "answer": row["answer"]}
        for i, (row, text, comp, part, r, a) in enumerate(zip(
            batch["rows"], batch["texts"], batch["completions"], batch["parts"],
            batch["rewards"], adv))
    ]
    return metrics, ledger_rows


def _reward_stats(batch: dict, rl) -> dict:
    """Mean of the total and of each reward component; response length; solved/zero groups."""
    n = len(batch["texts"])
    out = {"reward": float(batch["rewards"].mean()),
           "mean_len": sum(len(c) for c in batch["completions"]) / n,
           "think_rate": sum("<think>" in t for t in batch["texts"]) / n}
    for name in rl.reward_weights:
        values = [p[name] for p in batch["parts"] if p.get(name) is not None]
        out[f"reward_{name}"] = sum(values) / len(values) if values else float("nan")
    groups = batch["rewards"].view(-1, rl.group_size)
    out["groups_flat"] = float((groups.std(dim=1) == 0).float().mean())  # no learning signal
    return out


def train(model, optimizer, ref_model, tokenizer, task, cfg, *, start: int, ledger, update,
          save) -> None:
    """The RL loop from step `start` to cfg.rl.steps: log every rollout and step, checkpoint."""
    rl = cfg.rl
    shown_acc = next((f"reward_{n}" for n in (task.accuracy, "correct")
                      if n in rl.reward_weights), None)
    for step in range(start, rl.steps):
        metrics, rows = rl_step(model, optimizer, ref_model, tokenizer, task, rl,
                                cfg.run.seed, step)
        ledger.log_rollouts("rl", step + 1, rows)
        ledger.log_metrics("rl", step + 1, metrics)
        shown = {"reward": metrics["reward"], "acc": metrics.get(shown_acc, 0.0),
                 "len": metrics["mean_len"]}
        if "kl" in metrics:
            shown["kl"] = metrics["kl"]
        update(step + 1, **shown)
        if (step + 1) % rl.checkpoint_every == 0 or step + 1 == rl.steps:
            save(step + 1)
