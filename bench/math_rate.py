"""Measure math_accuracy's throughput (checks/s) on a realistic mixed workload.

    python bench/math_rate.py [--n 2000] [--workers N] [--group 8]

Prompts come in groups of `group` completions that share one reference (as in GRPO). Workload
kinds: GSM8K-style integers (mostly decided without sympy), fractions and decimals, and LaTeX
expressions (radicals, intervals, polynomials, sets), each with right and wrong answers in
assorted surface forms. Prints a table and one JSON line. Pool start-up is timed apart; "to
workers" is the share of checks that need sympy (the rest are decided in the calling process).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time

from zeroth.rewards.math import (
    _clean,
    _quick,
    configure_math_pool,
    extract_gold,
    extract_math_answer,
    math_accuracy,
    math_pool,
)

# (reference, [right answers], [wrong answers]) — a completion picks one of them.
FRACTIONS = [
    ("\\frac{3}{4}", ["0.75", "3/4", "\\frac{3}{4}", "\\dfrac{6}{8}"],
     ["0.7", "4/3", "\\frac{3}{5}"]),
    ("\\frac{1}{3}", ["1/3", "\\frac{2}{6}", "0.333333"], ["0.333", "1/4", "3"]),
    ("2.5", ["\\frac{5}{2}", "2.50", "5/2"], ["2.05", "\\frac{2}{5}", "25"]),
    ("-\\frac{7}{2}", ["-3.5", "-\\frac{7}{2}", "\\frac{-7}{2}"], ["3.5", "-\\frac{2}{7}"]),
]
LATEX = [
    ("\\frac{\\sqrt{2}}{2}", ["\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt2}{2}", "\\sqrt{2}/2"],
     ["\\sqrt{2}", "\\frac{1}{2}"]),
    ("2\\sqrt{3}", ["\\sqrt{12}", "2 \\sqrt{3}"], ["3\\sqrt{2}", "\\sqrt{6}"]),
    ("(-\\infty, 3]", ["(-\\infty,3]", "\\left(-\\infty, 3\\right]"],
     ["(-\\infty, 3)", "[3, \\infty)"]),
    ("x^2 + 2x + 1", ["(x+1)^2", "x^2+2x+1", "1 + 2x + x^2"], ["(x-1)^2", "x^2+1"]),
    ("\\{1, 2\\}", ["\\{2, 1\\}", "1, 2"], ["\\{1, 3\\}", "1"]),
    ("3\\pi", ["3 \\pi", "\\pi \\cdot 3"], ["\\pi", "9.42"]),
    ("50\\%", ["50\\%", "0.5", "\\frac{1}{2}"], ["5\\%", "0.05"]),
]


def _wrap(answer: str, rng: random.Random) -> str:
    thinking = "<think>Let me work it out step by step: 12 + 30 = 42, then check.</think>"
    style = rng.randrange(4)
    if style == 0:
        return f"{thinking}<answer>{answer}</answer>"
    if style == 1:
        return f"{thinking} So the final answer is $\\boxed{{{answer}}}$."
    if style == 2:
        return f"{thinking}<answer>The answer is ${answer}$.</answer>"
    return f"{thinking}<answer>\\boxed{{{answer}}}</answer>"


def _gsm8k(rng: random.Random, group: int) -> tuple[list[str], list[str]]:
    gold = rng.randrange(1, 5000)
    forms = [str(gold), f"{gold:,}", f"{gold}.0", f"\\${gold}", f"{gold} dollars",
             str(gold + rng.choice([-1, 1, 10])), str(gold * 2)]
    completions = []
    for _ in range(group):
        answer = rng.choice(forms)
        completions.append(f"<think>work</think>{answer}\n#### {answer}" if rng.random() < 0.3
                           else _wrap(answer, rng))
    return completions, [f"Step by step...\n#### {gold}"] * group


def _table(rng: random.Random, group: int, rows) -> tuple[list[str], list[str]]:
    gold, right, wrong = rng.choice(rows)
    answers = [rng.choice(right if rng.random() < 0.5 else wrong) for _ in range(group)]
    return [_wrap(a, rng) for a in answers], [gold] * group


KINDS = {
    "gsm8k": lambda rng, group: _gsm8k(rng, group),
    "fractions": lambda rng, group: _table(rng, group, FRACTIONS),
    "latex": lambda rng, group: _table(rng, group, LATEX),
}


def workload(kind: str, n: int, group: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng, completions, answers = random.Random(seed), [], []
    while len(completions) < n:
        batch = KINDS[kind](rng, group) if kind != "mixed" else \
            KINDS[rng.choice(list(KINDS))](rng, group)
        completions += batch[0]
        answers += batch[1]
    return completions[:n], answers[:n]


def _share_to_workers(completions: list[str], answers: list[str]) -> float:
    """Share of checks that need sympy in a worker (the rest are decided in the caller)."""
    needed = 0
    for completion, reference in zip(completions, answers, strict=True):
        pred = extract_math_answer(completion)
        pred = _clean(pred) if pred is not None else None
        needed += bool(pred) and _quick(extract_gold(reference), pred) is None
    return needed / len(completions)


def measure(kind: str, n: int, group: int, batch: int = 256) -> dict:
    completions, answers = workload(kind, n, group)
    share = _share_to_workers(completions, answers)
    start, correct = time.perf_counter(), 0.0
    for i in range(0, n, batch):  # one reward call per RL batch
        correct += sum(math_accuracy(completions[i:i + batch], answers[i:i + batch]))
    seconds = time.perf_counter() - start
    return {"kind": kind, "checks": n, "seconds": round(seconds, 3),
            "checks_per_s": round(n / seconds, 1), "accuracy": round(correct / n, 3),
            "to_workers": round(share, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="checks per workload kind")
    parser.add_argument("--workers", type=int, default=None, help="default: os.cpu_count()")
    parser.add_argument("--group", type=int, default=8, help="completions per reference")
    args = parser.parse_args()
    configure_math_pool(workers=args.workers)
    start = time.perf_counter()
    math_accuracy(["<answer>\\frac{1}{2}</answer>"], ["0.5"])  # starts the pool
    startup = time.perf_counter() - start
    rows = [measure(kind, args.n, args.group) for kind in ("gsm8k", "fractions", "latex", "mixed")]
    print(f"pool start-up: {startup:.2f} s, {math_pool().workers} workers, "
          f"{os.cpu_count()} CPUs, group size {args.group}")
    print(f"{'workload':<10} {'checks':>7} {'seconds':>8} {'checks/s':>9} {'accuracy':>9} "
          f"{'to workers':>10}")
    for row in rows:
        print(f"{row['kind']:<10} {row['checks']:>7} {row['seconds']:>8.2f} "
              f"{row['checks_per_s']:>9.1f} {row['accuracy']:>9.3f} {row['to_workers']:>10.0%}")
    print(json.dumps({"bench": "math_rate", "workers": math_pool().workers,
                      "cpus": os.cpu_count(), "startup_s": round(startup, 2), "rows": rows}))


if __name__ == "__main__":
    main()
