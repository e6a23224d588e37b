"""The one supervised loop: pretrain, SFT and distillation differ in data and loss, not in it.

    for step in range(start, hp.steps):
        ids, labels = batch(step)                  # (B, T) each: a pure function of the step
        loss, stats = loss_fn(ids, labels)         # the caller's objective
        AdamW (betas 0.9, 0.95) at hp.lr * lr_at(step): warm-up, then cosine to 10%
        gradients clipped to norm 1.0 over the trainable parameters
        loss, lr and stats to the ledger every 10 steps and at the end
        a checkpoint every hp.checkpoint_every steps and at the end (a stage's own loop)

Batches are drawn by a seeded Random of (tag, step), so a resumed loop sees exactly the batches
an uninterrupted one would; each caller keeps its own tag. On several ranks every rank draws
the same batch and trains on its share of the rows, its loss divided by the whole batch's
labelled tokens; the gradients are summed over the ranks before the step (zeroth.pipeline.dist),
so the step is world 1's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from random import Random

import torch

from zeroth.models import lean
from zeroth.models.hf import trainable
from zeroth.models.precision import autocast
from zeroth.pipeline import dist
from zeroth.pipeline.checkpoint import load_checkpoint
from zeroth.pipeline.faults import NonFinite, clip_or_skip, stop_point

LOG_EVERY = 10  # steps between ledger rows (and the last step)
MAX_GRAD_NORM = 1.0


@dataclass(frozen=True)
class Hyper:
    """The loop's hyper-parameters, as a config section (pretrain, sft, distill) gives them."""

    lr: float
    warmup: int
    steps: int
    weight_decay: float = 0.0
    checkpoint_every: int = 0
    buckets: int = 1  # each batch split by length into this many parts (length_buckets)

    @classmethod
    def of(cls, section, **changes) -> Hyper:
        """From a config section (distill has no weight_decay or length_buckets: 0 and 1), with
        `changes` applied."""
        hp = cls(lr=section.lr, warmup=section.warmup, steps=section.steps,
                 weight_decay=getattr(section, "weight_decay", 0.0),
                 checkpoint_every=section.checkpoint_every,
                 buckets=getattr(section, "length_buckets", 1))
        return replace(hp, **changes)


def lr_at(step: int, total: int, warmup: int) -> float:
    """Linear warm-up then cosine decay to 10% — a multiplier of the base learning rate."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def right_pad(pairs: list[tuple[list[int], list[int]]], pad_id: int):
    """(input_ids, labels), each (B, T) with T the longest: ids padded with pad_id, labels -100."""
    width = max(len(ids) for ids, _ in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(pairs), width), -100, dtype=torch.long)  # (B, T)
    for i, (seq, lab) in enumerate(pairs):
        ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, : len(lab)] = torch.tensor(lab)
    return ids, labels


def batch_at(examples, step: int, size: int, tag: str, pad_id: int):
    """(input_ids, labels), each (B, T), of `size` (ids, labels) examples drawn with replacement
    by Random(f"{tag}-{step}")."""
    rng = Random(f"{tag}-{step}")
    return right_pad([examples[rng.randrange(len(examples))] for _ in range(size)], pad_id)


def batches(examples, size: int, tag: str, pad_id: int):
    """The loop's batch function: step -> batch_at(examples, step, ...)."""
    return lambda step: batch_at(examples, step, size, tag, pad_id)


def token_loss(model, ids, labels, items: int | None = None):
    """(loss, stats): mean next-token cross-entropy over the labelled tokens, no extra stats;
    with `items`, the sum over these rows divided by `items` (the whole batch's labelled
    tokens, when these rows are one rank's share of it). A model the lean path supports takes
    it (zeroth.models.lean.sequence_loss: the rows' tokens packed, no FLOP on padding);
    otherwise transformers' forward computes it."""
    if lean.supports(model, grad=True):
        return lean.sequence_loss(model, ids, labels, items), {}
    extra = {} if items is None else {"num_items_in_batch": items}
    return model(input_ids=ids, labels=labels, use_cache=False, **extra).loss, {}


def my_rows(ids, labels):
    """(ids, labels, items): this rank's rows of a batch and the number of labelled target
    tokens in the whole batch, which normalises every rank's loss; alone: the batch, None."""
    if dist.world() == 1:
        return ids, labels, None
    rows = dist.share(len(ids))
    return ids[rows.start:rows.stop], labels[rows.start:rows.stop], labelled_targets(labels)


def labelled_targets(labels) -> int:
    """The number of labelled next-token targets in (B, T) labels."""
    return int((labels[:, 1:] != -100).sum())


def by_length(ids, labels, parts: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The rows sorted by length and cut into `parts` groups of (nearly) equal size, each group
    trimmed to its own longest row. A row's length ends at its last labelled token: what follows
    is padding or unlabelled, and under causal attention it changes no earlier position, so the
    groups' summed token losses are the batch's."""
    if parts <= 1:
        return [(ids, labels)]
    labelled = labels != -100  # (B, T)
    positions = torch.arange(1, labels.shape[1] + 1)  # (T,)
    lengths = (labelled * positions).amax(dim=1)  # (B,): one past the last labelled token
    order = torch.argsort(lengths, stable=True)
    groups = []
    for rows in torch.tensor_split(order, min(parts, len(order))):
        width = max(int(lengths[rows].max()), 1)
        groups.append((ids[rows, :width], labels[rows, :width]))
    return groups


def train(r, model, batch, loss_fn, hp: Hyper, *, phase: str, checkpoint: bool) -> float | None:
    """AdamW over `model`'s trainable parameters for steps up to hp.steps; returns the last loss.

    batch(step) -> (ids, labels); loss_fn(ids, labels) -> (loss tensor, stats dict). Rows go to
    the ledger under `phase`. checkpoint: the stage's own loop (phase is r.stage_id, model is
    r.model) — it resumes from r.state["step"] and r.resume_ckpt's optimizer, keeps its last loss
    in r.state[phase]["loss"] and saves checkpoints; otherwise a part of a stage, begun afresh
    at step 0 every time and never saved."""
    params = trainable(model)
    optimizer = torch.optim.AdamW(params, lr=hp.lr, betas=(0.9, 0.95),
                                  weight_decay=hp.weight_decay)
    start, progress = _begin(r, phase, optimizer, checkpoint)
    loss = progress.get("loss")
    bad = NonFinite(r.cfg.run.max_nonfinite_steps, phase)
    model.train()
    with r.display.stage(phase, total=hp.steps, done=start) as update:
        for step in range(start, hp.steps):
            ids, labels = batch(step)
            lr = hp.lr * lr_at(step, hp.steps, hp.warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr
            ids, labels, items = my_rows(ids, labels)
            optimizer.zero_grad(set_to_none=True)
            value, stats = _forward_backward(r, model, loss_fn, ids, labels, items, hp.buckets)
            dist.sync_grads(params)  # several ranks: the whole batch's gradient
            _, ok = clip_or_skip(params, MAX_GRAD_NORM, value if items is None else None)
            if ok:
                optimizer.step()
            if items is not None:  # each rank's loss and stats are its part of the whole's
                value, *values = dist.all_sum([value, *stats.values()])
                stats = dict(zip(stats, values))
            last = step + 1 == hp.steps
            if ok:
                loss = progress["loss"] = value
            else:  # skipped: recorded at its own step, the update left undone
                r.display.print(f"{phase} step {step + 1}: non-finite loss ({value}), step "
                                "skipped")
                stats = {**stats, "skipped_steps": 1}
            if (step + 1) % LOG_EVERY == 0 or last or not ok:
                r.ledger.log_metrics(phase, step + 1, {"loss": value, "lr": lr, **stats})
            update(step + 1, loss=value)
            bad.observe(not ok, step + 1)
            saved = checkpoint and ((step + 1) % hp.checkpoint_every == 0 or last)
            if saved:
                r.save(step + 1, optimizer)
            if checkpoint:
                stop_point(r, step + 1, saved, lambda s=step + 1: r.save(s, optimizer))
    model.eval()
    return loss


def _forward_backward(r, model, loss_fn, ids, labels, items: int | None, buckets: int):
    """(loss, stats) of the rows, their gradients accumulated over the length groups
    (`by_length`: one group unless buckets > 1). Several groups each give a sum over their
    labelled tokens divided by the batch's count (`items`), so that they add up to its mean.
    The forward runs in `model`'s precision (zeroth.models.precision), the backward follows."""
    groups = by_length(ids, labels, buckets)
    if len(groups) > 1 and items is None:
        items = labelled_targets(labels)
    loss, totals = 0.0, {}
    for part_ids, part_labels in groups:
        with autocast(model):
            value, stats = loss_fn(part_ids.to(r.device), part_labels.to(r.device),
                                   **({} if items is None else {"items": items}))
        value.backward()
        loss += value.item()
        for key, v in stats.items():
            totals[key] = totals.get(key, 0.0) + v
    return loss, totals


def _begin(r, phase: str, optimizer, checkpoint: bool) -> tuple[int, dict]:
    """(first step, the progress dict saved with every checkpoint); the ledger cut to match."""
    if not checkpoint:
        r.ledger.clear_phase(phase)
        return 0, {}
    start = r.state["step"]
    if r.resume_ckpt is not None:  # a checkpoint of this loop, past step 0
        load_checkpoint(r.resume_ckpt, optimizer=optimizer, model=r.model)
    r.ledger.truncate_after(phase, start)
    return start, r.state.setdefault(phase, {})
