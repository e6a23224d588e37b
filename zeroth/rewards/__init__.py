"""Rule-based rewards. Each follows TRL's contract: `fn(completions, **columns) -> list[float | None]`.

None means "not applicable / the verifier could not decide" and is recorded as such, never as 0.0.
`combine` weights the components into one scalar per completion and keeps each component apart.
"""

from __future__ import annotations

from math import isnan

from zeroth.rewards.exact import exact_answer
from zeroth.rewards.shaping import (
    extract_answer,
    language_consistency,
    overlong,
    tag_count,
    think_format,
)


def math_accuracy(completions: list[str], **columns) -> list[float | None]:
    """Math answer equivalence (math-verify, bounded time): see `zeroth.rewards.math`."""
    from zeroth.rewards.math import math_accuracy as check  # sympy loads on first use only

    return check(completions, **columns)


def code_tests(completions: list[str], **columns) -> list[float | None]:
    """The completion's program run against its tests in a sandbox: see `zeroth.rewards.code`."""
    from zeroth.rewards.code import code_tests as run

    return run(completions, **columns)


REWARDS = {  # the built-ins, by the name a recipe uses
    "correct": exact_answer,  # each task re-binds "correct" to its own verifier
    "math_accuracy": math_accuracy,
    "code_tests": code_tests,
    "format": think_format,
    "tags": tag_count,
    "overlong": overlong,
    "language_consistency": language_consistency,
    "language": language_consistency,  # short alias
}

__all__ = [
    "REWARDS", "code_tests", "combine", "exact_answer", "extract_answer", "language_consistency",
    "math_accuracy", "overlong", "tag_count", "think_format",
]


def _number(score) -> float | None:
    """A reward value as float; None (or NaN) stays None; anything else is a verifier bug."""
    if score is None:
        return None
    value = float(score)  # raises for a non-number, recorded like any verifier failure
    return None if isnan(value) else value


def combine(
    completions: list[str], rows: list[dict], fns: dict, weights: dict[str, float],
    **extra: list,
) -> tuple[list[float], list[dict[str, float | None]]]:
    """Score every completion with every weighted reward function.

    `extra` holds per-completion lists passed to every function as keywords (as TRL passes
    completion_ids). Returns (total per completion, components per completion). A component
    that is None (not applicable, or the verifier raised) adds nothing to the total; a reward
    function that raises is recorded as None for that whole call with the error kept under
    `<name>_error`, and the RL step gives such completions no advantage.
    """
    keys = dict.fromkeys(key for row in rows for key in row)  # union, in first-seen order
    columns = {key: [row.get(key) for row in rows] for key in keys}
    columns.update(extra)  # e.g. completion_ids, max_new_tokens (one entry per completion)
    parts: list[dict[str, float | None]] = [{} for _ in completions]
    for name in weights:
        try:
            scores = [_number(x) for x in fns[name](completions, **columns)]
            if len(scores) != len(completions):
                raise ValueError(f"returned {len(scores)} scores for {len(completions)}")
            error = None
        except Exception as exc:  # noqa: BLE001 — a verifier failure is recorded, not a 0.0
            scores, error = [None] * len(completions), f"{type(exc).__name__}: {exc}"
        for part, score in zip(parts, scores):
            part[name] = score
            if error:
                part[f"{name}_error"] = error
    totals = [
        sum(weights[n] * p[n] for n in weights if p.get(n) is not None) for p in parts
    ]
    return totals, parts
