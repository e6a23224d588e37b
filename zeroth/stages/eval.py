"""Evaluation on held-out problems: pass@1 as R1 reports it, pass@k, maj@k and greedy accuracy.

pass@1 is the mean accuracy of k samples per problem at the sampling temperature (R1, sec. 3.1);
pass@k uses the unbiased estimator 1 - C(n - c, k) / C(n, k) of Chen et al. (2021) from the
n = eval.k samples, reported for k = 1, 2, 4, ... and n; maj@n is the accuracy of the most frequent
extracted answer. Greedy decoding is scored apart. When the rows carry a difficulty (`difficulty`,
or `level` as in MATH) the same numbers are also given per level under "by_difficulty", and for
a mix of task families (zeroth.tasks.mix) per family under "by_task".
Sampling uses its own generator seeded from the run seed, so the evaluations before and after
training see the same random stream and a resumed run repeats them exactly.
"""

from __future__ import annotations

import re
from collections import Counter
from math import comb

import torch

from zeroth.models.hf import prompt_ids
from zeroth.pipeline import dist
from zeroth.rewards import combine, extract_answer
from zeroth.rollout import hash_seed, make_engine
from zeroth.rollout.decoder import seeds_for, stop_ids


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k draws (without replacement) from n samples with c
    correct ones is correct."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def majority_correct(answers: list[str | None], correct: list[bool]) -> bool:
    """Is the most frequent non-empty answer a correct one? Ties go to the first seen."""
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return False
    best = votes.most_common(1)[0][0]
    return any(ok for a, ok in zip(answers, correct) if a == best)


def decode(tokenizer, completions: list[list[int]], stops: set[int] | None = None) -> list[str]:
    """Completion text as sampled: special tokens inside it stay visible to the verifiers (a
    role token smuggled into an answer must not vanish); only the closing stop token is dropped."""
    stops = stops or {tokenizer.eos_token_id}
    return [tokenizer.decode(c[:-1] if c and c[-1] in stops else c, skip_special_tokens=False)
            for c in completions]


def _score(tokenizer, task, rows, completions, stops):
    """Evaluation scores the task's own verifier (`task.accuracy`, 1.0 = solved) and the R1
    format, whatever rewards RL optimises."""
    texts = decode(tokenizer, completions, stops)
    _, parts = combine(texts, rows, task.rewards, {task.accuracy: 1.0, "format": 1.0})
    solved = [p.get(task.accuracy) == 1.0 for p in parts]
    return texts, solved, [p.get("format") for p in parts]


def k_values(n: int) -> list[int]:
    """The k of pass@k reported for n samples per problem: the powers of two below n, then n."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def accuracy(solved: list[list[bool]], answers: list[list[str | None]],
             greedy: list[bool]) -> dict:
    """pass1, pass@k for every k of `k_values(n)`, maj@n and greedy accuracy over problems.

    solved[i], answers[i]: the n samples of problem i (n the same for all); greedy[i]: its
    greedy completion. pass1 is the mean over all samples, the others the mean over problems.
    """
    problems, n = len(solved), len(solved[0])
    out = {"pass1": sum(sum(oks) for oks in solved) / (problems * n)}
    for k in k_values(n):
        out[f"pass@{k}"] = sum(pass_at_k(n, sum(oks), k) for oks in solved) / problems
    out[f"maj@{n}"] = sum(majority_correct(a, oks) for a, oks in zip(answers, solved)) / problems
    out["greedy"] = sum(greedy) / problems
    return out


def difficulty_of(row: dict) -> str | None:
    """A row's difficulty as text: its `difficulty` column, else `level` (MATH), else None."""
    for column in ("difficulty", "level"):
        if row.get(column) is not None:
            return str(row[column])
    return None


def natural_key(text: str) -> list[tuple]:
    """Sort key that orders "2" before "10" and "Level 2" before "Level 10"."""
    return [(0, int(part)) if part.isdigit() else (1, part.lower())
            for part in re.split(r"(\d+)", text)]


def breakdown(labels: list, order: list, solved: list[list[bool]],
              answers: list[list[str | None]], greedy: list[bool]) -> dict[str, dict]:
    """{label: {"problems", pass1, pass@k..., maj@n, greedy}} over the problems of each label,
    in `order` (a label no problem has is left out)."""
    out = {}
    for label in order:
        idx = [i for i, lb in enumerate(labels) if lb == label]
        if idx:
            out[label] = {"problems": len(idx),
                          **accuracy([solved[i] for i in idx], [answers[i] for i in idx],
                                     [greedy[i] for i in idx])}
    return out


def by_difficulty(rows: list[dict], solved: list[list[bool]], answers: list[list[str | None]],
                  greedy: list[bool]) -> dict[str, dict] | None:
    """{level: {"problems", pass1, pass@k..., maj@n, greedy}} in natural order of the levels,
    or None when no row has a difficulty (rows without one are grouped as "unknown"). Rows of
    several families (a mix) are levelled within their family: "sorting · 4"."""
    levels = [difficulty_of(r) for r in rows]
    if all(level is None for level in levels):
        return None
    levels = ["unknown" if level is None else level for level in levels]
    if len({r.get("task") for r in rows}) > 1:
        levels = [f"{r.get('task')} · {level}" for r, level in zip(rows, levels, strict=True)]
    return breakdown(levels, sorted(set(levels), key=natural_key), solved, answers, greedy)


def by_task(task, rows: list[dict], solved: list[list[bool]], answers: list[list[str | None]],
            greedy: list[bool]) -> dict[str, dict] | None:
    """A mix's numbers per family (the rows' `task`), in the mix's order; None for any other
    task."""
    families = list((getattr(task, "info", None) or {}).get("mix") or ())
    if not families:
        return None
    return breakdown([r.get("task") for r in rows], families, solved, answers, greedy)


def evaluate(engine, tokenizer, task, rows: list[dict], eval_cfg,
             seed: int) -> tuple[dict, list[dict]]:
    """(metrics, ledger rows) for `rows`: k samples each at eval temperature, plus greedy,
    sampled by `engine` (`make_engine(cfg, model)`).

    Sample j of problem i samples from the (i * k + j)-th seed drawn from a generator seeded by
    `seed`, so the numbers are a function of the model, rows, seed and eval config, whatever
    the batch size or the number of ranks: on several, each samples and scores its share of the
    problems and the results are joined on every rank.
    """
    k, mine = eval_cfg.k, dist.share(len(rows))
    local = rows[mine.start:mine.stop]
    prompts = prompt_ids(tokenizer, [r["prompt"] for r in local])
    stops = stop_ids(engine.model, tokenizer)
    common = {"max_new_tokens": eval_cfg.max_new_tokens, "eos_id": stops,
              "pad_id": tokenizer.pad_token_id, "batch_size": eval_cfg.batch_size}
    gen = torch.Generator().manual_seed(hash_seed(f"eval-{seed}"))
    seeds = seeds_for(len(rows) * k, gen)[mine.start * k:mine.stop * k]
    sampled = engine.generate([p for p in prompts for _ in range(k)], generator=None,
                              seeds=seeds, temperature=eval_cfg.temperature, **common)
    greedy = engine.generate(prompts, temperature=1.0, generator=None, greedy=True, **common)
    s_text, s_ok, s_fmt = _score(tokenizer, task, [r for r in local for _ in range(k)],
                                 sampled, stops)
    g_text, g_ok, _ = _score(tokenizer, task, local, greedy, stops)
    sampled, greedy, s_text, s_ok, s_fmt, g_text, g_ok = dist.joined(
        sampled, greedy, s_text, s_ok, s_fmt, g_text, g_ok)
    many = [r for r in rows for _ in range(k)]

    n = len(rows)
    solved = [s_ok[i * k:(i + 1) * k] for i in range(n)]  # (problems, k)
    answers = [[extract_answer(t) for t in s_text[i * k:(i + 1) * k]] for i in range(n)]
    metrics = {
        **accuracy(solved, answers, g_ok),
        "mean_len": sum(len(c) for c in sampled) / len(sampled),
        "greedy_len": sum(len(c) for c in greedy) / n,
        "format": sum(f or 0.0 for f in s_fmt) / len(s_fmt),
        "think_rate": sum("<think>" in t for t in s_text) / len(s_text),
        "problems": n,
        "k": k,
    }
    levels = by_difficulty(rows, solved, answers, g_ok)
    if levels is not None:
        metrics["by_difficulty"] = levels
    families = by_task(task, rows, solved, answers, g_ok)
    if families is not None:
        metrics["by_task"] = families
    ledger_rows = [
        {"problem_idx": i // k, "sample_idx": i % k, "prompt": many[i]["prompt"],
         "completion": s_text[i], "n_tokens": len(sampled[i]), "correct": s_ok[i],
         "answer": many[i]["answer"]}
        for i in range(len(many))
    ] + [
        {"problem_idx": i, "sample_idx": -1, "prompt": rows[i]["prompt"], "completion": g_text[i],
         "n_tokens": len(greedy[i]), "correct": g_ok[i], "answer": rows[i]["answer"]}
        for i in range(n)
    ]
    return metrics, ledger_rows


BREAKDOWNS = ("by_difficulty", "by_task")  # an evaluation's tables beside its numbers


def headline(metrics: dict | None) -> dict | None:
    """The numbers of an evaluation worth a line in the summary's stage list."""
    if metrics is None:
        return None
    return {k: v for k, v in metrics.items() if k not in BREAKDOWNS}


def run(r, phase: str | None = None) -> dict:
    """The eval stage: the current model on the held-out rows, every sample to the ledger under
    `phase` (default eval_<stage id>); run by the pipeline at the start and after every stage
    that changes the model."""
    phase = phase or f"eval_{r.stage_id}"
    r.ledger.clear_phase(phase)
    rows = r.task.eval_rows(r.cfg.task.eval_problems, r.cfg.run.seed)
    with r.display.stage(phase, total=1) as update:
        metrics, samples = evaluate(make_engine(r.cfg, r.model), r.tokenizer, r.task, rows,
                                    r.cfg.eval, r.cfg.run.seed)
        update(1, pass1=metrics["pass1"], greedy=metrics["greedy"])
    r.ledger.log_eval(phase, samples)
    r.ledger.log_metrics(phase, 0, headline(metrics))  # numbers only
    for key in BREAKDOWNS:
        if metrics.get(key):
            r.ledger.set_meta(f"{phase}_{key}", metrics[key])
    return metrics
