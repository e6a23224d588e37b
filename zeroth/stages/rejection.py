"""Rejection sampling: sample N completions per training prompt, keep the verified-correct (and
well-formed) ones, deduplicate, and write them as an SFT dataset (R1, sec. 2.3.3).

The file, `data/<stage id>.jsonl` in the run directory, holds one kept completion a line as
`{"messages": [user, assistant], "prompt", "completion", "answer"}`; a later `sft` stage with
`sft.data: rejection` trains on it. Sampling uses a generator seeded from (seed, stage id), so
the stage is a function of the model and config: rerun on resume, it writes the same file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from random import Random

import torch

from zeroth.models.hf import prompt_ids
from zeroth.pipeline import dist
from zeroth.rewards import combine
from zeroth.rollout import hash_seed, make_engine
from zeroth.rollout.decoder import seeds_for, stop_ids
from zeroth.stages.eval import decode

CHANGES_MODEL = False  # sampling changes no weights: no evaluation after it


def normalised(text: str) -> str:
    """The duplicate key of a completion: whitespace runs collapsed, ends stripped."""
    return " ".join(text.split())


def sample_verified(engine, tokenizer, task, rows: list[dict], *, samples: int,
                    temperature: float, max_new_tokens: int, keep_per_prompt: int,
                    require_format: bool, batch_size: int, seed_tag: str, update=None):
    """Sample `samples` completions per row with `engine` (`make_engine(cfg, model)`), keep the
    distinct verified ones.

    Kept: the task's accuracy verifier says 1.0 and, with `require_format`, the R1 format does
    too; per prompt, completions equal up to whitespace count once and at most `keep_per_prompt`
    are kept, the first sampled first. Returns (kept records, ledger rollout rows, stats).
    `update(done, total)`, when given, is told of each generated batch. Sample i samples from
    the i-th seed drawn from a generator seeded by `seed_tag`; on several ranks each samples and
    scores its share of the prompts, the results joined on every rank."""
    many = [row for row in rows for _ in range(samples)]  # (P*N,) a prompt's samples in a row
    mine = dist.share(len(rows))  # this rank's prompts (all of them alone)
    local = many[mine.start * samples:mine.stop * samples]
    prompts = prompt_ids(tokenizer, [row["prompt"] for row in local])
    stops = stop_ids(engine.model, tokenizer)
    gen = torch.Generator().manual_seed(hash_seed(seed_tag))
    seeds = seeds_for(len(many), gen)[mine.start * samples:mine.stop * samples]
    with dist.full_params(engine.model):  # FSDP: ranks may run different numbers of batches
        completions = _generate(engine, prompts, seeds, max_new_tokens=max_new_tokens,
                                temperature=temperature, eos_id=stops,
                                pad_id=tokenizer.pad_token_id, batch_size=batch_size,
                                update=update, total=len(many))
    texts = decode(tokenizer, completions, stops)
    weights = {task.accuracy: 1.0, "format": 1.0}
    totals, parts = combine(texts, local, task.rewards, weights)
    completions, texts, totals, parts = dist.joined(completions, texts, totals, parts)
    verified = [p.get(task.accuracy) == 1.0 and (not require_format or p.get("format") == 1.0)
                for p in parts]
    kept, chosen, seen = [], [False] * len(many), [set() for _ in rows]
    for i, (row, text, ok) in enumerate(zip(many, texts, verified)):
        p = i // samples
        if not ok or normalised(text) in seen[p] or len(seen[p]) >= keep_per_prompt:
            continue
        seen[p].add(normalised(text))
        chosen[i] = True
        kept.append({"messages": [{"role": "user", "content": row["prompt"]},
                                  {"role": "assistant", "content": text}],
                     "prompt": row["prompt"], "completion": text, "answer": row.get("answer"),
                     "n_tokens": len(completions[i])})
    rollouts = [
        {"prompt_idx": i // samples, "sample_idx": i % samples, "prompt": row["prompt"],
         "completion": text, "n_tokens": len(comp), "rewards": part, "reward": total,
         "answer": row.get("answer"), "extra": {"verified": ok, "kept": pick}}
        for i, (row, text, comp, part, total, ok, pick) in enumerate(
            zip(many, texts, completions, parts, totals, verified, chosen))
    ]
    stats = {
        "prompts": len(rows), "samples": len(many),
        "verified_rate": sum(verified) / max(1, len(many)), "kept": len(kept),
        "prompts_covered": sum(bool(s) for s in seen),
        "mean_len": sum(len(c) for c in completions) / max(1, len(completions)),
        "kept_len": sum(k["n_tokens"] for k in kept) / max(1, len(kept)),
    }
    return kept, rollouts, stats


def _generate(engine, prompts, seeds, *, batch_size: int, update, total: int, **sampling):
    """The completions of `prompts`, `batch_size` at a time, `update` told after each batch."""
    completions: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        completions += engine.generate(prompts[start:start + batch_size], generator=None,
                                       seeds=seeds[start:start + batch_size],
                                       batch_size=batch_size, **sampling)
        if update is not None:
            update(len(completions) * dist.world(), total)
    return completions


def write_jsonl(path: Path, records: list[dict]) -> None:
    """Write one JSON object a line, atomically (temp file, fsync, os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def run(r) -> dict:
    """Sample, verify and keep; write data/<stage id>.jsonl for a later SFT stage."""
    cfg, sid = r.cfg.rejection, r.stage_id
    rows = r.task.train_rows(Random(f"{r.cfg.run.seed}-{sid}"), cfg.prompts)
    with r.display.stage(sid, total=len(rows) * cfg.samples) as update:
        kept, rollouts, stats = sample_verified(
            make_engine(r.cfg, r.model), r.tokenizer, r.task, rows, samples=cfg.samples,
            temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
            keep_per_prompt=cfg.keep_per_prompt, require_format=cfg.require_format,
            batch_size=cfg.batch_size, seed_tag=f"{r.cfg.run.seed}-{sid}",
            update=lambda done, total: update(done))
    relative = f"data/{sid}.jsonl"
    dist.on_main(write_jsonl, Path(r.dir) / relative, kept)
    r.ledger.clear_phase(sid)
    r.ledger.log_rollouts(sid, 0, rollouts)
    r.ledger.log_metrics(sid, 0, stats)
    r.state.setdefault("data", {})["rejection"] = relative
    if not kept:
        r.display.print(f"{sid}: no sampled completion was verified correct — the file is empty")
    return stats
