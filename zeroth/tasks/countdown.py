"""Procedural task: Countdown (as in TinyZero) — reach the target with each given number once.

    Make 33 from 3, 7, 12 with + - * /, each number once.      e.g. 3*7+12

Knobs (task.options): `numbers` given (2..6, default 3), `max_number` (numbers drawn from
1..max_number, default 20), `max_target` (targets in 1..max_target, default 100).
Difficulty column: the number of operations a solution needs (numbers - 1).

Every problem is solvable: the generator combines the drawn numbers at random (exact divisions,
non-negative differences) until the value lands in 1..max_target, and keeps that expression as
the reference solution (any other valid expression is just as right).

The worked solution is a search: try, check, backtrack. Each try combines the numbers left to
right, picking at each step the operation that lands closest to the target, and is checked:
`no` and the next try starts from another pair of numbers, `yes` and it is the answer. When no
greedy try lands (about 1 problem in 4 with the default knobs) the last try is the reference:

    <think>12+7=19 19+3=22 no 12+3=15 15+7=22 no 7*3=21 21+12=33 yes</think><answer>7*3+12</answer>

The row's `answer` is that found expression. The systematic slip of direct answers: the first
try, unchecked (numbers in the order given, each step the closest), right about 44% of the time.

Verifier: the answer is parsed with `ast` (never evaluated by Python); only decimal integers,
+ - * / and parentheses are allowed; the multiset of numbers used must equal the given one,
and the exact value (fractions.Fraction, so 7/2 is 3.5) must equal the target. Division by zero,
names, calls, `**`, unary minus, an unknown or reused number: 0.0.
"""

from __future__ import annotations

import ast
import re
from fractions import Fraction
from itertools import combinations
from random import Random

from zeroth.tasks.options import Option, integer
from zeroth.tasks.procedural import Family, load_family
from zeroth.types import Row, Task

_ALLOWED_TEXT = re.compile(r"[0-9+\-*/() \t]{1,200}")
_DIGITS = re.compile(r"[0-9]{1,6}")
_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}
_ATOM = 3
MAX_TRIES = 6  # failed tries a worked search shows at most before its answer


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


def _joins(left: tuple, right: tuple) -> list[tuple[int, str, int]]:
    """Every way to combine two values: + and *, - and / either way round (non-negative
    differences, exact divisions only)."""
    out = []
    for op in "+-*/":
        for a, b in ((left, right), (right, left)) if op in "-/" else ((left, right),):
            if (op == "-" and a[0] < b[0]) or (op == "/" and (b[0] == 0 or a[0] % b[0])):
                continue
            out.append(_join(a, op, b))
    return out


def _near(options: list[tuple], target: int) -> list[tuple]:
    return sorted(options, key=lambda joined: abs(joined[0] - target))  # stable: ties keep order


def _closest(numbers: list[int], target: int, first: int = 0) -> tuple[int, str, int] | None:
    """Left to right, each step the operation whose result lands closest to the target; the
    first step takes the `first`-th closest instead (None when there are not that many)."""
    atoms = [(n, str(n), _ATOM) for n in numbers]
    firsts = _near(_joins(atoms[0], atoms[1]), target)
    if first >= len(firsts):
        return None
    now = firsts[first]
    for atom in atoms[2:]:
        now = _near(_joins(now, atom), target)[0]
    return now


def tries(numbers: list[int], target: int, reference: str) -> list[str]:
    """The worked search, until a try makes the target: for each first pair of numbers (in
    order), the closest first step, then the rest closest; then each pair's second-closest
    first step; then its third; MAX_TRIES at most. The reference solution ends the list when
    none lands."""
    pairs = list(combinations(range(len(numbers)), 2))
    texts: list[str] = []
    for first in range(3):
        for i, j in pairs:
            order = [numbers[i], numbers[j]] + [n for k, n in enumerate(numbers) if k not in (i, j)]
            found = _closest(order, target, first)
            if found is None:
                continue
            texts.append(found[1])
            if found[0] == target:
                return texts
            if len(texts) == MAX_TRIES:
                return texts + [reference]
    return texts + [reference]


def draw(rng: Random, knobs: dict) -> Row:
    for _ in range(10_000):
        numbers = [rng.randint(1, knobs["max_number"]) for _ in range(knobs["numbers"])]
        target, solution, _ = _combine(rng, numbers)
        if 1 <= target <= knobs["max_target"]:
            shown = ", ".join(map(str, numbers))
            return {"prompt": f"Make {target} from {shown} with + - * /, each number once.",
                    "answer": tries(numbers, target, solution)[-1], "numbers": numbers,
                    "target": target,
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


def _worked(text: str) -> str:
    steps: list[str] = []
    value(ast.parse(text, mode="eval").body, steps)
    return " ".join(steps)


def reasoned(row: Row) -> str:
    """The search, one step per operation, each try checked: `no` or `yes`."""
    found = tries(row["numbers"], row["target"], row["answer"])
    return " ".join(f"{_worked(t)} {'yes' if t == found[-1] else 'no'}" for t in found)


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
    slip=lambda row: _closest(row["numbers"], row["target"])[1],
)


def load(task_cfg, demo_cfg) -> Task:
    return load_family(FAMILY, task_cfg, demo_cfg)
