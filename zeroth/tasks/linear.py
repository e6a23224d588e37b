"""Procedural task: solve a linear equation a*x+b=c for an integer x.

    Solve for x: -3x+5=26      answer -7

Knobs (task.options): `max_coef` (a drawn from ±1..max_coef, default 9), `max_x` (x drawn
from -max_x..max_x, default 10), `max_const` (b drawn from -max_const..max_const, default 20).
Difficulty column: 1 + (b moved across) + (a negative).

The worked solution moves b across, then divides by a; the subtraction is worked as mental
arithmetic, the tens of b first, then its units (one step when |b| < 10):
`<think>-3x=36-15=36-10-5=26-5=21 x=21/(-3)=-7</think><answer>-7</answer>`.
The systematic slip of direct answers is the classic one: b is moved across without its sign
flipped, x = (c+b)/a (written as a fraction when it does not divide), right only when b = 0.
Verifier: integer equality.
"""

from __future__ import annotations

from fractions import Fraction
from random import Random

from zeroth.tasks.options import Option, integer
from zeroth.tasks.procedural import Family, integer_check, load_family
from zeroth.types import Row, Task


def _term(a: int) -> str:
    return {1: "x", -1: "-x"}.get(a, f"{a}x")


def draw(rng: Random, knobs: dict) -> Row:
    a = rng.choice([s * m for m in range(1, knobs["max_coef"] + 1) for s in (1, -1)])
    x = rng.randint(-knobs["max_x"], knobs["max_x"])
    b = rng.randint(-knobs["max_const"], knobs["max_const"])
    c = a * x + b
    left = _term(a) + (f"{b:+d}" if b else "")
    return {"prompt": f"Solve for x: {left}={c}", "answer": str(x), "a": a, "b": b, "c": c,
            "difficulty": 1 + (b != 0) + (a < 0)}


def _moved(c: int, d: int) -> str:
    """c+d worked as mental arithmetic: the tens of d first, then its units
    (36-15=36-10-5=26-5=21); a d below 10 (or a whole ten) in one step."""
    tens, units = (abs(d) // 10) * 10 * (1 if d > 0 else -1), d % 10 if d > 0 else -(-d % 10)
    if not tens or not units:
        return f"{c}{d:+d}={c + d}"
    return f"{c}{d:+d}={c}{tens:+d}{units:+d}={c + tens}{units:+d}={c + d}"


def _fraction(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else str(value)


def reasoned(row: Row) -> str:
    a, b, c = row["a"], row["b"], row["c"]
    rest, steps = c - b, []
    if b:
        steps.append(f"{_term(a)}={_moved(c, -b)}")
    if a != 1:
        steps.append(f"x={rest}/{a if a > 0 else f'({a})'}={rest // a}")
    return " ".join(steps) or f"x={c}"


FAMILY = Family(
    name="linear",
    knobs={
        "max_coef": Option(9, integer(1, 1000), "a is drawn from ±1..max_coef"),
        "max_x": Option(10, integer(1, 10**6), "x is drawn from -max_x..max_x"),
        "max_const": Option(20, integer(0, 10**6), "b is drawn from -max_const..max_const"),
    },
    draw=draw,
    check=integer_check,
    reasoned=reasoned,
    slip=lambda row: _fraction(Fraction(row["c"] + row["b"], row["a"])),
)


def load(task_cfg, demo_cfg) -> Task:
    return load_family(FAMILY, task_cfg, demo_cfg)
