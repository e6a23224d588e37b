"""Pre-training by next-token prediction on the demonstration corpus.

The corpus is the imitation data with its known ceiling. Every batch is a pure function of
(seed, step), so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import math
from random import Random

import torch

from zeroth.models.hf import end_of_turn


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
