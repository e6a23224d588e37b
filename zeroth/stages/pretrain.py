"""Pre-training by next-token prediction on the demonstration corpus.

The corpus is the imitation data with its known ceiling. Every batch is a pure function of
(seed, step), so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import math
from random import Random

import torch

from zeroth.errors import UserError
from zeroth.models.hf import end_of_turn, trainable
from zeroth.pipeline.checkpoint import load_checkpoint

CHANGES_MODEL = True  # the held-out set is evaluated after this stage


def demonstrations(task, n: int, seed: int) -> list[tuple[str, str, bool]]:
    """(prompt, completion, is_correct) for n demonstrations: the same for the same seed."""
    if task.demonstration is None:
        raise ValueError(f"task '{task.name}' has no demonstrations to pre-train on")
    rng = Random(f"{seed}-demos")
    return [(row["prompt"], *task.demonstration(row, rng)) for row in task.train_rows(rng, n)]


def build_corpus(task, tokenizer, n: int, seed: int) -> tuple[list[list[int]], dict]:
    """Token ids of n chat-formatted demonstrations, and the corpus statistics.

    Returns (sequences, stats) with stats = {"demo_accuracy", "demo_reasoned", "demo_n"}."""
    demos = demonstrations(task, n, seed)
    seqs = [tokenizer(render(tokenizer, p, c), add_special_tokens=False)["input_ids"]
            for p, c, _ in demos]
    stats = {"demo_accuracy": sum(ok for _, _, ok in demos) / n,
             "demo_reasoned": sum("<think>" in c for _, c, _ in demos) / n, "demo_n": n}
    return seqs, stats


def render(tokenizer, prompt: str, completion: str) -> str:
    """The full training text: chat-formatted prompt, the completion, end-of-sequence."""
    head = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                         add_generation_prompt=True, tokenize=False)
    return head + completion + end_of_turn(tokenizer)


def lr_at(step: int, total: int, warmup: int) -> float:
    """Linear warm-up then cosine decay to 10% — a multiplier of the base learning rate."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def batch_at(seqs: list[list[int]], step: int, size: int, seed: int, pad_id: int):
    """(input_ids, labels) for `step`: right-padded, labels -100 on padding."""
    rng = Random(f"{seed}-pretrain-{step}")
    picked = [seqs[rng.randrange(len(seqs))] for _ in range(size)]
    width = max(len(s) for s in picked)
    ids = torch.full((size, width), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((size, width), -100, dtype=torch.long)  # (B, T)
    for i, s in enumerate(picked):
        ids[i, : len(s)] = torch.tensor(s)
        labels[i, : len(s)] = torch.tensor(s)
    return ids, labels


def train_step(model, optimizer, ids, labels, lr: float, max_grad_norm: float = 1.0) -> float:
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = model(input_ids=ids, labels=labels, use_cache=False).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return loss.item()


def run(r) -> dict:
    """The pretrain stage: next-token prediction on the task's demonstrations."""
    cfg, p = r.cfg, r.cfg.pretrain
    if r.task.demonstration is None:
        if p.steps > 0:
            raise UserError(f"task '{r.task.name}' has no demonstrations — set pretrain.steps=0")
        return {"steps": 0}
    seqs, stats = build_corpus(r.task, r.tokenizer, cfg.demos.n, cfg.run.seed)
    optimizer = torch.optim.AdamW(trainable(r.model), lr=p.lr, betas=(0.9, 0.95),
                                  weight_decay=p.weight_decay)
    start = r.state["step"]
    if r.resume_ckpt is not None:
        load_checkpoint(r.resume_ckpt, optimizer=optimizer)
    r.ledger.truncate_after(r.stage_id, start)
    r.model.train()
    progress = r.state.setdefault(r.stage_id, {})  # saved with each checkpoint
    with r.display.stage(r.stage_id, total=p.steps, done=start) as update:
        for step in range(start, p.steps):
            ids, labels = batch_at(seqs, step, p.batch_size, cfg.run.seed,
                                      r.tokenizer.pad_token_id)
            lr = p.lr * lr_at(step, p.steps, p.warmup)
            loss = train_step(r.model, optimizer, ids.to(r.device), labels.to(r.device), lr)
            progress["loss"] = loss
            if (step + 1) % 10 == 0 or step + 1 == p.steps:
                r.ledger.log_metrics(r.stage_id, step + 1, {"loss": loss, "lr": lr})
            update(step + 1, loss=loss)
            if (step + 1) % p.checkpoint_every == 0 or step + 1 == p.steps:
                r.save(step + 1, optimizer)
    r.model.eval()
    return {**stats, "steps": p.steps, "final_loss": progress.get("loss")}
