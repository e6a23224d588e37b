"""Procedural task: Countdown (as in TinyZero) — reach the target with each given number once.

    Make 33 from 3, 7, 12 with + - * /, each number once.      e.g. 3*7+12

Knobs (task.options): `numbers` given (2..6, default 3), `max_number` (numbers drawn from
1..max_number, default 20), `max_target` (targets in 1..max_target, default 100).
Difficulty column: the number of operations a solution needs (numbers - 1).

Every problem is solvable: the generator combines the drawn numbers at random (exact divisions,
non-negative differences) until the value lands in 1..max_target, and keeps that expression as
the reference `answer` (any other valid expression is just as right). The worked solution
writes one operation per step: `<think>3*7=21 21+12=33</think><answer>3*7+12</answer>`.
The systematic slip of direct answers: the parentheses the solution needs are left out
(`(3+7)*12` written `3+7*12`), right only when none were needed.

Verifier: the answer is parsed with `ast` (never evaluated by Python); only decimal integers,
+ - * / and parentheses are allowed; the multiset of numbers used must equal the given one,
and the exact value (fractions.Fraction, so 7/2 is 3.5) must equal the target. Division by zero,
names, calls, `**`, unary minus, an unknown or reused number: 0.0.
"""

from __future__ import annotations

import ast
import re
from fractions import Fraction
from random import Random

from zeroth.tasks.options import Option, integer
from zeroth.tasks.procedural import Family, load_family
from zeroth.types import Row, Task

_ALLOWED_TEXT = re.compile(r"[0-9+\-*/() \t]{1,200}")
_DIGITS = re.compile(r"[0-9]{1,6}")
_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}
_ATOM = 3


def _join(left: tuple, op: str, right: tuple) -> tuple[int, str, int]:
    """Combine (value, text, precedence) pairs with `op`, adding only the parentheses needed."""
    (a, ta, pa), (b, tb, pb) = left, right
    value = a // b if op == "/" else int(_apply(op, a, b))
    if pa < _PREC[op]:
        ta = f"({ta})"
    if pb < _PREC[op] or (pb == _PREC[op] and op in "-/"):
        tb = f"({tb})"
    return value, f"{ta}{op}{tb}", _PREC[op]


def _combine(rng: Random, numbers: list[int]) -> tuple[int, str, int]:
    """A random expression using each number once: exact divisions, non-negative differences."""
    pool = [(n, str(n), _ATOM) for n in numbers]
    while len(pool) > 1:
        left = pool.pop(rng.randrange(len(pool)))
        right = pool.pop(rng.randrange(len(pool)))
        compound = min(left[2], right[2]) == 1  # a sum or difference: prefer * or / on it
        op = rng.choice("*/" if compound and rng.random() < 0.7 else "+-*/")
        if op == "-" and left[0] < right[0]:
            left, right = right, left
        if op == "/" and (right[0] == 0 or left[0] % right[0]):
            op = "+"
        pool.append(_join(left, op, right))
    return pool[0]


def draw(rng: Random, knobs: dict) -> Row:
    for _ in range(10_000):
        numbers = [rng.randint(1, knobs["max_number"]) for _ in range(knobs["numbers"])]
        target, solution, _ = _combine(rng, numbers)
        if 1 <= target <= knobs["max_target"]:
            shown = ", ".join(map(str, numbers))
            return {"prompt": f"Make {target} from {shown} with + - * /, each number once.",
                    "answer": solution, "numbers": numbers, "target": target,
                    "difficulty": len(numbers) - 1}
    raise ValueError("countdown: no target in range — raise task.options.max_target")


def _walk(node: ast.AST, used: list[int], source: str) -> None:
    """Check every node is an allowed one, collecting the numbers; ValueError otherwise."""
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        _walk(node.left, used, source)
        _walk(node.right, used, source)
    elif isinstance(node, ast.Constant) and type(node.value) is int:
        if not _DIGITS.fullmatch(ast.get_source_segment(source, node) or ""):
            raise ValueError("numbers must be plain decimal integers")
        used.append(node.value)
    else:
        raise ValueError(f"not allowed in an answer: {type(node).__name__}")


def _apply(op: str, a: Fraction, b: Fraction) -> Fraction:
    return a + b if op == "+" else a - b if op == "-" else a * b if op == "*" else a / b


def value(node: ast.AST, steps: list[str] | None = None) -> Fraction:
    """Exact value of a checked expression tree (ZeroDivisionError for a division by zero);
    each operation is appended to `steps` as 'a op b=c', innermost first."""
    if isinstance(node, ast.Constant):
        return Fraction(node.value)
    a, b = value(node.left, steps), value(node.right, steps)
    op = _OPS[type(node.op)]
    result = _apply(op, a, b)
    if steps is not None:
        steps.append(f"{a}{op}{b}={result}")
    return result


def check(text: str, row: Row) -> bool:
    """Does `text` use exactly the given numbers, each once, to make the target?"""
    if not _ALLOWED_TEXT.fullmatch(text):
        return False
    tree = ast.parse(text.strip(), mode="eval")
    used: list[int] = []
    _walk(tree.body, used, text.strip())
    if sorted(used) != sorted(row["numbers"]):
        return False
    return value(tree.body) == row["target"]


def reasoned(row: Row) -> str:
    """One step per operation of the reference solution."""
    steps: list[str] = []
    value(ast.parse(row["answer"], mode="eval").body, steps)
    return " ".join(steps)


FAMILY = Family(
    name="countdown",
    knobs={
        "numbers": Option(3, integer(2, 6), "how many numbers are given"),
        "max_number": Option(20, integer(2, 1000), "numbers are drawn from 1..max_number"),
        "max_target": Option(100, integer(1, 100_000), "targets lie in 1..max_target"),
    },
    draw=draw,
    check=check,
    reasoned=reasoned,
    slip=lambda row: row["answer"].replace("(", "").replace(")", ""),
)


def load(task_cfg, demo_cfg) -> Task:
    return load_family(FAMILY, task_cfg, demo_cfg)
