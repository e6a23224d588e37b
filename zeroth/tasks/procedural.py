"""What every procedural task family shares: knobs, a stable held-out split, rows, demonstrations
and a TRL-style verifier.

A family (arithmetic, countdown, sorting, linear, multiplication) supplies only
  draw(rng, knobs) -> row       a random problem: prompt, answer, difficulty and its own columns
  check(text, row) -> bool      is the answer text right? (exact; may raise on malformed text)
  reasoned(row) -> str          a correct worked solution (the inside of <think>)
  slip(row) -> str              the direct answer of someone making the family's systematic slip
and `load_family` turns it into a Task:

* Held-out split: a problem is held out when a stable hash of its prompt falls below
  task.heldout_fraction, the same on every machine and for every knob setting. Training rows
  never include one; evaluation rows are only such problems, distinct, drawn from a stream seeded
  by the run seed.
* Demonstrations: with probability demos.reason_fraction the worked solution
  `<think>…</think><answer>…</answer>` (always right); otherwise a direct `<answer>…</answer>`,
  with the family's slip unless demos.error is "none". Each is verified, so the corpus accuracy
  is exact.
* Reward "correct": the family's own check on the text of the last <answer> block; no block,
  an over-long answer or text the check cannot read scores 0.0 (never None).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from random import Random

from zeroth.rewards import REWARDS
from zeroth.rewards.shaping import extract_answer
from zeroth.seeding import stable_fraction
from zeroth.tasks.options import Option, read_options
from zeroth.types import Row, Task

MAX_ANSWER_CHARS = 400  # longer answer text is wrong without being parsed
MALFORMED = (ValueError, ArithmeticError, SyntaxError, RecursionError)  # -> 0.0, not a failure


@dataclass(frozen=True)
class Family:
    """A procedural task family; see the module docstring for the four functions."""

    name: str
    knobs: dict[str, Option]
    draw: Callable[[Random, dict], Row]
    check: Callable[[str, Row], bool]
    reasoned: Callable[[Row], str]
    slip: Callable[[Row], str]


def is_heldout(row: Row, fraction: float) -> bool:
    """The stable split: the same answer for the same prompt on every machine."""
    return stable_fraction(row["prompt"]) < fraction


def collect(rng: Random, n: int, draw: Callable[[Random], Row], *, heldout: bool,
             fraction: float, distinct: bool, tries: int) -> list[Row] | None:
    """Up to `tries` draws; the first n rows on the wanted side of the split (None if short)."""
    rows, seen = [], set()
    for _ in range(tries):
        if len(rows) == n:
            break
        row = draw(rng)
        if is_heldout(row, fraction) != heldout or (distinct and row["prompt"] in seen):
            continue
        seen.add(row["prompt"])
        rows.append(row)
    return rows if len(rows) == n else None


def train_rows(rng: Random, n: int, *, draw, fraction: float) -> list[Row]:
    rows = collect(rng, n, draw, heldout=False, fraction=fraction, distinct=False,
                    tries=1000 * n + 10_000)
    if rows is None:
        raise ValueError("the training split is (nearly) empty; lower task.heldout_fraction")
    return rows


def eval_rows(n: int, seed: int, *, draw, fraction: float) -> list[Row]:
    rows = collect(Random(f"heldout-{seed}"), n, draw, heldout=True, fraction=fraction,
                    distinct=True, tries=100 * n + 10_000)
    if rows is None:
        raise ValueError(f"the held-out split has fewer than task.eval_problems={n} problems — "
                         "lower task.eval_problems, raise task.heldout_fraction or make the "
                         "problems harder with task.options")
    return rows


def score(check: Callable[[str, Row], bool], completion: str, row: Row) -> float:
    """1.0 when the last <answer> block passes `check`; 0.0 for anything else."""
    got = extract_answer(completion)
    if got is None or len(got) > MAX_ANSWER_CHARS:
        return 0.0
    try:
        return 1.0 if check(got, row) else 0.0
    except MALFORMED:
        return 0.0


def verifier(check: Callable[[str, Row], bool], name: str):
    """A TRL-style reward `fn(completions, **columns)` scoring each completion with `check`."""

    def correct(completions: list[str], **columns: list) -> list[float]:
        rows = [{key: values[i] for key, values in columns.items()}
                for i in range(len(completions))]
        return [score(check, c, r) for c, r in zip(completions, rows)]

    correct.__name__ = correct.__qualname__ = f"{name}_correct"
    correct.__doc__ = f"1.0 when the answer solves the {name} problem exactly, else 0.0."
    return correct


def demonstration(row: Row, rng: Random, *, family: Family, reason_fraction: float,
                  slip: bool) -> tuple[str, bool]:
    """A worked solution (share reason_fraction) or a direct answer, with its verdict."""
    if rng.random() < reason_fraction:
        text = f"<think>{family.reasoned(row)}</think><answer>{row['answer']}</answer>"
    else:
        text = f"<answer>{family.slip(row) if slip else row['answer']}</answer>"
    return text, score(family.check, text, row) == 1.0


def load_family(family: Family, task_cfg, demo_cfg) -> Task:
    """The Task for `family` with the knobs of task.options (checked) and the demo settings."""
    knobs = read_options(family.name, getattr(task_cfg, "options", None), family.knobs)
    draw = partial(family.draw, knobs=knobs)
    fraction = task_cfg.heldout_fraction
    rewards = dict(REWARDS)
    rewards["correct"] = verifier(family.check, family.name)
    return Task(
        name=family.name,
        train_rows=partial(train_rows, draw=draw, fraction=fraction),
        eval_rows=partial(eval_rows, draw=draw, fraction=fraction),
        rewards=rewards,
        demonstration=partial(demonstration, family=family,
                              reason_fraction=demo_cfg.reason_fraction,
                              slip=demo_cfg.error != "none"),
        info={**knobs, "heldout_fraction": fraction},
        accuracy="correct",
        weights={"correct": 1.0, "format": 0.1},
    )


_INTEGER = re.compile(r"[+-]?(\d{1,40}|\d{1,3}(,\d{3}){1,13})", re.ASCII)


def read_int(text: str) -> int:
    """A plain integer answer (sign, digits, well-placed thousands commas); ValueError else."""
    clean = text.strip()
    if not _INTEGER.fullmatch(clean):
        raise ValueError(f"not an integer: {clean[:20]!r}")
    return int(clean.replace(",", ""))


def integer_check(text: str, row: Row) -> bool:
    """Integer equality with the row's answer."""
    return read_int(text) == int(row["answer"])
