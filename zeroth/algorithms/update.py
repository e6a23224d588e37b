"""The policy update of the GRPO family: log-probs of sampled completions, then mu passes of
clipped policy-gradient steps over minibatches (zeroth.algorithms.losses.policy_loss).

    before = logprobs_before(ctx, batch)   # old log-probs (not on-policy) and the reference's
    stats  = update(ctx, batch, adv, before)

`ctx` is the RL stage's context (zeroth.stages.rl.RLContext: policy, optimizer, ref, rl,
pad_id); `batch` a zeroth.rollout.batch.Rollouts of whole groups. With a single optimiser step
per batch (mu = 1, one minibatch) the old log-probs are the current ones detached (ratio = 1,
pure on-policy policy gradient) and are not computed apart; otherwise they are computed once
before the first update, as in PPO — except minibatch 0's, which its first pass gives (no step
has been taken before it): one forward fewer per step. Log-probs go through the lean path (each
group's prompt run once; zeroth.models.lean) when the model allows it, else transformers'.

When the engine returned its own log-probs of the sampled tokens (vLLM), the first pass
compares them with the trainer's old ones (logprob_gap, logprob_gap_max) and weights the loss by
the importance-sampling correction `rl.engine_correction` (zeroth.algorithms.losses).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zeroth.algorithms.losses import engine_weights, kl_k3, policy_loss, token_logprobs
from zeroth.models import lean
from zeroth.models.precision import autocast
from zeroth.pipeline import dist
from zeroth.pipeline.faults import clip_or_skip


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
    out = model(input_ids=ids, attention_mask=attn, use_cache=False)
    logits = out.logits[:, :-1]  # (B, T-1, V)
    return token_logprobs(logits, ids[:, 1:], temperature)


def completion_logprobs(model, prompts, completions, pad_id: int, temperature: float,
                        fast: bool):
    """(logp, mask) of the completion tokens of one minibatch: the lean path when `fast`, else
    transformers' forward over the packed sequences."""
    with autocast(model):  # bf16-mixed: bf16 products, float32 log-probs
        if fast:
            return lean.completion_logprobs(model, prompts, completions, pad_id, temperature)
        device = next(model.parameters()).device
        ids, attn, mask = (t.to(device) for t in pack(prompts, completions, pad_id))
        return logprobs(model, ids, attn, temperature), mask


@dataclass
class Before:
    """What is computed once before the update, without grad: the minibatches and, per
    minibatch, the old log-probs and masks (None on-policy; minibatch 0's filled in by its
    first pass) and the reference's log-probs (None without one)."""

    chunks: list[slice]  # per minibatch: this rank's rows of the batch
    parts: list[tuple]  # per minibatch: (prompts, completions, engine log-probs or None)
    totals: list[tuple | None]  # per minibatch: (sequences, tokens) of all ranks; None alone
    ghosts: set[int]  # minibatches whose rows here are FSDP's stand-ins (see _minibatches)
    fast: bool
    old: list | None
    ref: list | None


def _minibatches(ctx, batch) -> tuple[list[slice], list[tuple], list[tuple | None], set[int]]:
    """(slices, parts, totals, ghosts) per minibatch of `rl.minibatch_size` completions: this
    rank's rows of it (all of them alone; a contiguous share of each minibatch on several
    ranks), their (prompts, completions, engine log-probs or None), and, on several ranks, the
    whole minibatch's (sequences, completion tokens) that normalise the loss (None alone).
    Ghosts: the minibatches where this rank has no row but, FSDP's forward being collective,
    runs one stand-in row whose loss counts 0."""
    size, engine = ctx.rl.minibatch_size, batch.engine_logprobs
    chunks, totals, ghosts = [], [], set()
    for start in range(0, len(batch), size):
        whole = range(start, min(start + size, len(batch)))
        mine = dist.share(len(whole))
        if not mine and dist.sharded(ctx.policy):  # FSDP: every rank runs every forward
            mine = range(1)
            ghosts.add(len(chunks))
        chunks.append(slice(start + mine.start, start + mine.stop))
        totals.append(None if dist.world() == 1 else
                      (len(whole), sum(len(batch.completions[i]) for i in whole)))
    return chunks, [(batch.prompts[c], batch.completions[c], engine and engine[c])
                    for c in chunks], totals, ghosts


def on_mask(rows: list[list[float]], mask: torch.Tensor) -> torch.Tensor:
    """Per-completion values (one per completion token) laid out like `mask` (B, T): row by
    row over its ones, as every log-prob path lays out completion tokens."""
    out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    flat = [x for row in rows for x in row]
    if len(flat) != int(mask.sum()):
        raise ValueError(f"{len(flat)} engine log-probs for {int(mask.sum())} completion tokens")
    out[mask.bool()] = torch.tensor(flat, dtype=torch.float32, device=mask.device)
    return out


def _merge_gap(totals: dict, gap: dict, minibatches: int) -> None:
    """Add one minibatch's engine-gap stats: *_max and *_min over all, the others averaged."""
    for key, value in gap.items():
        if key.endswith("_max"):
            totals[key] = max(totals.get(key, value), value)
        elif key.endswith("_min"):
            totals[key] = min(totals.get(key, value), value)
        else:
            totals[key] = totals.get(key, 0.0) + value / minibatches


@torch.no_grad()
def logprobs_before(ctx, batch) -> Before:
    """Old log-probs (not needed on-policy: ratio 1) and the reference's, per minibatch."""
    rl, pad = ctx.rl, ctx.pad_id
    chunks, parts, totals, ghosts = _minibatches(ctx, batch)
    fast = lean.supports(ctx.policy, grad=True) and (
        ctx.ref is None or lean.supports(ctx.ref))
    on_policy = rl.mu == 1 and len(chunks) == 1

    def run(model, part):  # no rows of this minibatch on this rank: nothing to compute
        return completion_logprobs(model, *part[:2], pad, rl.temperature, fast) \
            if part[0] else (None, None)

    # minibatch 0's old log-probs are its first pass's own (no step has been taken before it):
    # that pass fills them in (`_minibatch`), so they cost no forward here
    old = None if on_policy else [None] + [run(ctx.policy, part) for part in parts[1:]]
    ref = None if ctx.ref is None else [run(ctx.ref, part)[0] for part in parts]
    return Before(chunks, parts, totals, ghosts, fast, old, ref)


def _policy_kl(before: Before) -> float | None:
    """The mean k3 KL(policy || ref) over the sampled tokens of every minibatch, from the old
    log-probs (all of them known once minibatch 0 has had its first pass); None without a
    reference or on-policy."""
    if before.ref is None or before.old is None:
        return None
    pairs = [(old[0], old[1], r) for i, (old, r) in enumerate(zip(before.old, before.ref))
             if old is not None and old[1] is not None and i not in before.ghosts]
    kl_sum, n = dist.all_sum([sum(float((kl_k3(o, r) * m).sum()) for o, m, r in pairs),
                              sum(float(m.sum()) for _, m, _ in pairs)])
    return kl_sum / max(1.0, n)


def _minibatch(ctx, before: Before, i: int, advantages, weights: list, first: bool):
    """Minibatch i's loss on this rank, backward done: (its value, stats, engine-gap stats,
    (sum of -log p, tokens) on the first pass). On several ranks the stats are weighted by this
    rank's share of the minibatch's tokens, so summing them over ranks gives the whole's."""
    rl, part = ctx.rl, before.parts[i]
    if not part[0]:  # no row of this minibatch here
        return 0.0, {}, {}, (0.0, 0.0)
    logp, mask = completion_logprobs(ctx.policy, *part[:2], ctx.pad_id, rl.temperature,
                                     before.fast)
    if before.old is not None and before.old[i] is None:  # minibatch 0, first pass: see
        before.old[i] = (logp.detach(), mask)  # logprobs_before
    old = logp.detach() if before.old is None else before.old[i][0]
    ghost = i in before.ghosts  # FSDP's stand-in row: it takes no share of the loss
    gap, surprisal = {}, (0.0, 0.0)
    if first and not ghost:
        surprisal = (-float((logp.detach() * mask).sum()), float(mask.sum()))
        if part[2] is not None:  # the trainer's old log-probs against the engine's
            weights[i], gap = engine_weights(old, on_mask(part[2], mask), mask,
                                             rl.engine_correction, rl.engine_correction_cap)
    loss, stats = policy_loss(
        logp, old, advantages[before.chunks[i]], mask,
        eps_low=rl.eps_low, eps_high=rl.eps_high, loss_agg=rl.loss_agg,
        ref_logp=None if before.ref is None else before.ref[i], beta=rl.beta,
        agg_constant=float(rl.max_new_tokens), is_weights=weights[i], total=before.totals[i])
    if ghost:
        (loss * 0.0).backward()
        return 0.0, {}, {}, surprisal
    loss.backward()
    if before.totals[i] is not None:  # token means, weighted by this rank's share
        share = float(mask.sum()) / max(1.0, before.totals[i][1])
        stats = {k: v * share for k, v in stats.items()}
        gap = {k: v if k.endswith(("_max", "_min")) else v * share for k, v in gap.items()}
    return loss.item(), stats, gap, surprisal


def update(ctx, batch, advantages: torch.Tensor, before: Before | None = None) -> dict:
    """mu passes of clipped policy-gradient steps over minibatches; returns mean stats. On
    several ranks each takes its share of every minibatch, the loss normalised by the whole
    minibatch, and the gradients are summed before the step: world 1's step."""
    rl, model, optimizer = ctx.rl, ctx.policy, ctx.optimizer
    before = before or logprobs_before(ctx, batch)
    advantages = advantages.to(next(model.parameters()).device)
    on_policy, passes = before.old is None, rl.mu * len(before.chunks)
    params = [p for p in model.parameters() if p.requires_grad]
    totals: dict[str, float] = {}
    neg_logp, n_tokens = 0.0, 0.0  # first pass: mean -log p of the sampled tokens = entropy
    weights: list = [None] * len(before.chunks)  # engine-gap correction per minibatch
    skipped = 0  # optimiser steps skipped for a non-finite loss or gradient
    for epoch in range(rl.mu):
        for i in range(len(before.chunks)):
            optimizer.zero_grad(set_to_none=True)
            loss, stats, gap, (surprise, tokens) = _minibatch(ctx, before, i, advantages,
                                                              weights, epoch == 0)
            neg_logp, n_tokens = neg_logp + surprise, n_tokens + tokens
            dist.sync_grads(params)  # world 1: nothing; else the sum over ranks
            stats["grad_norm"], ok = clip_or_skip(params, rl.max_grad_norm,
                                                  loss if dist.world() == 1 else None)
            if ok:
                optimizer.step()
            else:  # a non-finite loss or gradient: this optimiser step is skipped
                skipped += 1
            stats["loss"] = loss  # this rank's share of the loss (all of it alone)
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + value / passes
            _merge_gap(totals, gap, len(before.chunks))
    if dist.world() > 1:
        totals = _reduce(totals)
        neg_logp, n_tokens = dist.all_sum([neg_logp, n_tokens])
    # The policy's per-token entropy, estimated without bias by the sampled tokens' mean
    # surprisal (they were drawn from this policy at this temperature); costs no extra pass.
    totals["entropy"] = neg_logp / max(1.0, n_tokens)
    totals["lr"] = float(optimizer.param_groups[0]["lr"])
    if skipped:
        totals["skipped_steps"] = skipped
    if not on_policy or before.ref is None:  # after updates, on older samples: biased
        totals.pop("kl", None)
        kl = _policy_kl(before)
        if kl is not None:
            totals["kl"] = kl
    return totals


def _reduce(totals: dict) -> dict:
    """Every rank's stats as one: *_max / *_min over ranks, grad_norm and skipped_steps as they
    are (every rank clipped, or skipped, the same summed gradient), the rest summed (each rank's already weighted by its share)."""
    every = dist.gather(totals)
    out = {}
    for key in dict.fromkeys(k for t in every for k in t):
        values = [t[key] for t in every if key in t]
        if key in ("grad_norm", "skipped_steps"):  # the same on every rank
            out[key] = totals[key]
        elif key.endswith("_max"):
            out[key] = max(values)
        elif key.endswith("_min"):
            out[key] = min(values)
        else:
            out[key] = sum(values)
    return out
