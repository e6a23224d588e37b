"""Exact answer correctness for tasks whose answers are integers or short strings."""

from __future__ import annotations

import re

from zeroth.rewards.shaping import extract_answer

_INTEGER = re.compile(r"[+-]?(\d+|\d{1,3}(,\d{3})+)", re.ASCII)  # no look-alike digits


def normalize(text: str) -> str:
    """Canonical form: an integer (optionally with well-placed thousands separators) becomes its
    decimal value; other strings compare case-insensitively with inner whitespace collapsed."""
    text = " ".join(text.split())
    if _INTEGER.fullmatch(text):
        return str(int(text.replace(",", "")))
    return text.lower()


def exact_answer(completions: list[str], answer: list, **_: object) -> list[float]:
    """1.0 when the extracted answer equals the reference after normalisation, else 0.0.

    The answer is the `<answer>` block after the reasoning (`extract_answer`); a completion
    without one, or with several that disagree, scores 0.0: a wrong answer, not a failure.
    """
    scores = []
    for completion, ref in zip(completions, answer):
        got = extract_answer(completion)
        scores.append(1.0 if got is not None and normalize(got) == normalize(str(ref)) else 0.0)
    return scores
