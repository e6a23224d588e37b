"""Procedural task: sort a list of non-negative integers in ascending order.

    Sort ascending: 42, 7, 19, 3, 88      answer 3,7,19,42,88

Knobs (task.options): `length` of the list (2..12, default 5), `max_value` (numbers in
0..max_value, default 99; the digit count of each is drawn uniformly first, so short and long
numbers mix). Difficulty column: the number of insertions (length - 1).

The worked solution is insertion sort, writing the sorted prefix after each insertion; the last
insertion is the answer itself:
`<think>42 7,42 7,19,42 3,7,19,42</think><answer>3,7,19,42,88</answer>`.
The systematic slip of direct answers: numbers compared as text (`42` before `7`), right only
when that order agrees with the numeric one.
Verifier: the answer, split at commas (spaces and [brackets] allowed), is exactly the sorted
list.
"""

from __future__ import annotations

from random import Random

from zeroth.tasks.options import Option, integer
from zeroth.tasks.procedural import Family, load_family, read_int
from zeroth.types import Row, Task


def show(numbers: list[int]) -> str:
    return ", ".join(map(str, numbers))


def number(rng: Random, max_value: int) -> int:
    """A digit count drawn uniformly first, then a number of that many digits (<= max_value):
    short and long numbers mix, so text order and numeric order often differ."""
    digits = rng.randint(1, len(str(max_value)))
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return rng.randint(low, min(max_value, 10**digits - 1))


def draw(rng: Random, knobs: dict) -> Row:
    numbers = [number(rng, knobs["max_value"]) for _ in range(knobs["length"])]
    return {"prompt": f"Sort ascending: {show(numbers)}",
            "answer": ",".join(map(str, sorted(numbers))),
            "numbers": numbers, "difficulty": len(numbers) - 1}


def check(text: str, row: Row) -> bool:
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    got = [read_int(part) for part in text.split(",")]  # ValueError for a non-number
    return got == sorted(row["numbers"])


def reasoned(row: Row) -> str:
    """The sorted prefix before each insertion; the last insertion is the answer itself."""
    prefix, steps = [], []
    for n in row["numbers"][:-1]:
        at = next((i for i, m in enumerate(prefix) if m > n), len(prefix))
        prefix.insert(at, n)
        steps.append(",".join(map(str, prefix)))
    return " ".join(steps)


FAMILY = Family(
    name="sorting",
    knobs={
        "length": Option(5, integer(2, 12), "numbers in the list"),
        "max_value": Option(99, integer(1, 10**6), "numbers lie in 0..max_value"),
    },
    draw=draw,
    check=check,
    reasoned=reasoned,
    slip=lambda row: ",".join(sorted(map(str, row["numbers"]))),
)


def load(task_cfg, demo_cfg) -> Task:
    return load_family(FAMILY, task_cfg, demo_cfg)
