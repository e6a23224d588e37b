"""Pre-training by next-token prediction on the demonstration corpus.

The corpus is the imitation data with its known ceiling. Every batch is a pure function of
(seed, step), so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from functools import partial
from random import Random

from zeroth.errors import UserError
from zeroth.models.hf import end_of_turn
from zeroth.stages.supervised import Hyper, batches, token_loss, train

CHANGES_MODEL = True  # the held-out set is evaluated after this stage


def demonstrations(task, n: int, seed: int) -> list[tuple[str, str, bool]]:
    """(prompt, completion, is_correct) for n demonstrations: the same for the same seed."""
    if task.demonstration is None:
        raise ValueError(f"task '{task.name}' has no demonstrations to pre-train on")
    rng = Random(f"{seed}-demos")
    return [(row["prompt"], *task.demonstration(row, rng)) for row in task.train_rows(rng, n)]


def build_corpus(task, tokenizer, n: int, seed: int) -> tuple[list[tuple], dict]:
    """(ids, labels) of n chat-formatted demonstrations — every token a label — and the corpus
    statistics: (examples, {"demo_accuracy", "demo_reasoned", "demo_n"})."""
    demos = demonstrations(task, n, seed)
    seqs = [tokenizer(render(tokenizer, p, c), add_special_tokens=False)["input_ids"]
            for p, c, _ in demos]
    stats = {"demo_accuracy": sum(ok for _, _, ok in demos) / n,
             "demo_reasoned": sum("<think>" in c for _, c, _ in demos) / n, "demo_n": n}
    return [(ids, ids) for ids in seqs], stats


def render(tokenizer, prompt: str, completion: str) -> str:
    """The full training text: chat-formatted prompt, the completion, end-of-sequence."""
    head = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                         add_generation_prompt=True, tokenize=False)
    return head + completion + end_of_turn(tokenizer)


def run(r) -> dict:
    """The pretrain stage: next-token prediction on the task's demonstrations."""
    cfg, p = r.cfg, r.cfg.pretrain
    if r.task.demonstration is None:
        if p.steps > 0:
            raise UserError(f"task '{r.task.name}' has no demonstrations — set pretrain.steps=0")
        return {"steps": 0}
    examples, stats = build_corpus(r.task, r.tokenizer, cfg.demos.n, cfg.run.seed)
    batch = batches(examples, p.batch_size, f"{cfg.run.seed}-pretrain", r.tokenizer.pad_token_id)
    loss = train(r, r.model, batch, partial(token_loss, r.model), Hyper.of(p),
                 phase=r.stage_id, checkpoint=True)
    return {**stats, "steps": p.steps, "final_loss": loss}
