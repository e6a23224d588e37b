"""Evaluation on held-out problems: pass@1 as R1 reports it, pass@k, maj@k and greedy accuracy.

pass@1 is the mean accuracy of k samples per problem at the sampling temperature (R1, sec. 3.1);
pass@k uses the unbiased estimator 1 - C(n - c, k) / C(n, k) of Chen et al. (2021) with n = k
samples; maj@k is the accuracy of the most frequent extracted answer. Greedy decoding is scored
apart. Sampling uses its own generator seeded from the run seed, so the evaluations before and
after training see the same random stream and a resumed run repeats them exactly.
"""

from __future__ import annotations

from collections import Counter
from math import comb

import torch

from zeroth.models import prompt_ids
from zeroth.rewards import combine, extract_answer
from zeroth.rollout import generate, hash_seed, stop_ids


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


def evaluate(model, tokenizer, task, rows: list[dict], eval_cfg,
             seed: int) -> tuple[dict, list[dict]]:
    """(metrics, ledger rows) for `rows`: k samples each at eval temperature, plus greedy."""
    k = eval_cfg.k
    prompts = prompt_ids(tokenizer, [r["prompt"] for r in rows])
    stops = stop_ids(model, tokenizer)
    common = {"max_new_tokens": eval_cfg.max_new_tokens, "eos_id": stops,
              "pad_id": tokenizer.pad_token_id, "batch_size": eval_cfg.batch_size}
    gen = torch.Generator().manual_seed(hash_seed(f"eval-{seed}"))
    sampled = generate(model, [p for p in prompts for _ in range(k)], generator=gen,
                       temperature=eval_cfg.temperature, **common)
    greedy = generate(model, prompts, greedy=True, **common)
    many = [r for r in rows for _ in range(k)]
    s_text, s_ok, s_fmt = _score(tokenizer, task, many, sampled, stops)
    g_text, g_ok, _ = _score(tokenizer, task, rows, greedy, stops)

    per_problem = [s_ok[i * k:(i + 1) * k] for i in range(len(rows))]
    answers = [extract_answer(t) for t in s_text]
    n = len(rows)
    metrics = {
        "pass1": sum(s_ok) / len(s_ok),
        f"pass@{k}": sum(pass_at_k(k, sum(oks), k) for oks in per_problem) / n,
        f"maj@{k}": sum(majority_correct(answers[i * k:(i + 1) * k], per_problem[i])
                        for i in range(n)) / n,
        "greedy": sum(g_ok) / n,
        "mean_len": sum(len(c) for c in sampled) / len(sampled),
        "greedy_len": sum(len(c) for c in greedy) / n,
        "format": sum(f or 0.0 for f in s_fmt) / len(s_fmt),
        "think_rate": sum("<think>" in t for t in s_text) / len(s_text),
        "problems": n,
        "k": k,
    }
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
