"""Procedural task: multiply an n-digit number by a one-digit number.

    What is 347*6?      answer 2082

Knobs (task.options): `digits` of the first factor (1..9, default 3), `max_multiplier` (the
second factor is drawn from 2..max_multiplier, default 9). Difficulty column: the number of
columns that carry.

The worked solution goes column by column, least significant first, as `digit*m+carry=value`:
`<think>7*6+0=42 4*6+4=28 3*6+2=20</think><answer>2082</answer>`.
The systematic slip of direct answers (the same as addition's): every carry is dropped — each
column keeps only its last digit, the leading column is written whole — right only when no
column carries.
Verifier: integer equality.
"""

from __future__ import annotations

from random import Random

from zeroth.tasks.options import Option, integer
from zeroth.tasks.procedural import Family, integer_check, load_family
from zeroth.types import Row, Task


def columns(a: int, m: int) -> list[tuple[int, int, int]]:
    """(digit, carry_in, column value) for each digit of a, least significant first."""
    out, carry = [], 0
    for digit in reversed(str(a)):
        total = int(digit) * m + carry
        out.append((int(digit), carry, total))
        carry = total // 10
    return out


def dropped_carry(a: int, m: int) -> int:
    digits = [str(int(d) * m % 10) for d in reversed(str(a))]
    digits[-1] = str(int(str(a)[0]) * m)  # the leading column is written whole
    return int("".join(reversed(digits)))


def draw(rng: Random, knobs: dict) -> Row:
    d = knobs["digits"]
    a = rng.randint(10 ** (d - 1), 10**d - 1)
    m = rng.randint(2, knobs["max_multiplier"])
    carries = sum(total >= 10 for _, _, total in columns(a, m)[:-1])
    return {"prompt": f"What is {a}*{m}?", "answer": str(a * m), "a": a, "m": m,
            "difficulty": carries}


def reasoned(row: Row) -> str:
    m = row["m"]
    return " ".join(f"{d}*{m}+{c}={t}" for d, c, t in columns(row["a"], m))


FAMILY = Family(
    name="multiplication",
    knobs={
        "digits": Option(3, integer(1, 9), "digits of the first factor"),
        "max_multiplier": Option(9, integer(2, 9), "the second factor is 2..max_multiplier"),
    },
    draw=draw,
    check=integer_check,
    reasoned=reasoned,
    slip=lambda row: str(dropped_carry(row["a"], row["m"])),
)


def load(task_cfg, demo_cfg) -> Task:
    return load_family(FAMILY, task_cfg, demo_cfg)
