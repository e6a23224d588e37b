"""Procedural task: add two n-digit integers. Exact verifier: integer equality.

Demonstrations imitate people with a known ceiling. A share `reason_fraction` of them work column
by column, least significant first, writing each column as `a+b+carry=two-digit sum`, and are
always right:

    <think>7+9+0=16 4+8+1=13 3+5+1=09</think><answer>936</answer>

The rest answer at once and make the systematic slip people make when adding in their head:
they drop every carry (`error: drop_carry`), so they are right only on items with no carry:

    <answer>826</answer>

The held-out split is a fixed hash of the problem, never drawn for demonstrations or RL.
"""

from __future__ import annotations

from functools import partial
from random import Random

from zeroth.rewards import REWARDS
from zeroth.seeding import stable_fraction
from zeroth.types import Row, Task


def is_heldout(a: int, b: int, fraction: float) -> bool:
    """A stable pseudo-random split of the problem space, the same on every machine."""
    return stable_fraction(f"{a}+{b}") < fraction


def make_row(a: int, b: int) -> Row:
    return {"prompt": f"What is {a}+{b}?", "answer": str(a + b), "a": a, "b": b}


def _draw(rng: Random, digits: int) -> tuple[int, int]:
    low, high = 10 ** (digits - 1), 10**digits - 1
    return rng.randint(low, high), rng.randint(low, high)


def train_rows(rng: Random, n: int, *, digits: int, heldout: float) -> list[Row]:
    rows = []
    for _ in range(1000 * n + 10_000):
        if len(rows) == n:
            return rows
        a, b = _draw(rng, digits)
        if not is_heldout(a, b, heldout):
            rows.append(make_row(a, b))
    if len(rows) == n:
        return rows
    raise ValueError("the training split is (nearly) empty; lower task.heldout_fraction")


def eval_rows(n: int, seed: int, *, digits: int, heldout: float) -> list[Row]:
    rng, seen, rows = Random(f"heldout-{seed}"), set(), []
    limit = 100 * n + 10_000
    for _ in range(limit):
        a, b = _draw(rng, digits)
        if is_heldout(a, b, heldout) and (a, b) not in seen:
            seen.add((a, b))
            rows.append(make_row(a, b))
            if len(rows) == n:
                return rows
    raise ValueError(f"the held-out split has fewer than task.eval_problems={n} problems "
                     "— lower task.eval_problems, raise task.heldout_fraction or task.digits")


def columns(a: int, b: int) -> list[tuple[int, int, int, int]]:
    """(digit_a, digit_b, carry_in, column_sum) for each column, least significant first."""
    out, carry = [], 0
    while a or b:
        da, db = a % 10, b % 10
        total = da + db + carry
        out.append((da, db, carry, total))
        carry, a, b = total // 10, a // 10, b // 10
    return out


def reasoned(a: int, b: int) -> str:
    steps = " ".join(f"{da}+{db}+{c}={s:02d}" for da, db, c, s in columns(a, b))
    return f"<think>{steps}</think><answer>{a + b}</answer>"


def dropped_carry(a: int, b: int) -> int:
    """The sum with every carry forgotten: each column keeps only (a_i + b_i) mod 10."""
    digits = [(da + db) % 10 for da, db, _, _ in columns(a, b)]
    return int("".join(str(d) for d in reversed(digits)))


def demonstration(row: Row, rng: Random, *, reason_fraction: float, error: str) -> tuple[str, bool]:
    a, b = row["a"], row["b"]
    if rng.random() < reason_fraction:
        return reasoned(a, b), True
    guess = dropped_carry(a, b) if error == "drop_carry" else a + b
    return f"<answer>{guess}</answer>", guess == a + b


def load(task_cfg, demo_cfg) -> Task:
    d, h = task_cfg.digits, task_cfg.heldout_fraction
    return Task(
        name="addition",
        train_rows=partial(train_rows, digits=d, heldout=h),
        eval_rows=partial(eval_rows, digits=d, heldout=h),
        rewards=dict(REWARDS),
        demonstration=partial(
            demonstration, reason_fraction=demo_cfg.reason_fraction, error=demo_cfg.error
        ),
        info={"digits": d, "heldout_fraction": h},
    )
