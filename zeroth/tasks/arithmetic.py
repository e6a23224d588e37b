"""Procedural task: the value of an integer expression with + - * and parentheses.

    What is (3+4)*5?      answer 35

Knobs (task.options): `terms` operands (2..8, default 3), `max_operand` (operands drawn from
1..max_operand, default 9), `depth` (maximum nesting of parentheses, 0..3, default 1).
Difficulty column: the number of operations plus the nesting depth of the expression.

The worked solution reduces the innermost parentheses first, then * before + and -, left to
right, one operation per step: `<think>3+4=7 7*5=35</think><answer>35</answer>`.
The systematic slip of direct answers: the parentheses are ignored (`(3+4)*5` -> 23), right only
when the expression has none. Parenthesised groups are sums or differences joined to a
neighbour by *, so their parentheses matter.
Verifier: integer equality.
"""

from __future__ import annotations

import re
from random import Random

from zeroth.tasks.options import Option, integer
from zeroth.tasks.procedural import Family, integer_check, load_family
from zeroth.types import Row, Task

_TOKEN = re.compile(r"\d+|[-+*()]")
_APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def expression(rng: Random, terms: int, depth: int, max_operand: int, ops: str = "+-*") -> str:
    """A random expression over `terms` operands. When depth allows, one parenthesised group
    (inner operators + and -) joined to a neighbour by *, so that its parentheses matter."""
    items = [str(rng.randint(1, max_operand)) for _ in range(terms)]
    signs = [rng.choice(ops) for _ in items[1:]]  # signs[i] joins items[i] and items[i + 1]
    if depth > 0 and terms >= 3 and rng.random() < 0.75:
        size = rng.randint(2, terms - 1)
        at = rng.randrange(terms - size + 1)
        inner = expression(rng, size, depth - 1, max_operand, ops="+-")
        items[at:at + size] = [f"({inner})"]
        del signs[at:at + size - 1]
        sides = [i for i in (at - 1, at) if 0 <= i < len(signs)]
        signs[rng.choice(sides)] = "*"
    return items[0] + "".join(op + item for op, item in zip(signs, items[1:]))


def parse(text: str) -> list:
    """Nested lists of ints and operator strings: '(3+4)*5' -> [[3, '+', 4], '*', 5]."""
    stack: list[list] = [[]]
    for token in _TOKEN.findall(text):
        if token == "(":
            stack.append([])
        elif token == ")":
            group = stack.pop()
            stack[-1].append(group)
        else:
            stack[-1].append(int(token) if token.isdigit() else token)
    return stack[0]


def reduce(items: list, steps: list[str]) -> int:
    """Value of a parsed expression, appending each operation done as 'a*b=c' to `steps`."""
    flat = [reduce(x, steps) if isinstance(x, list) else x for x in items]
    for ops in ("*", "+-"):
        i = 1
        while i < len(flat):
            if flat[i] in ops:
                a, op, b = flat[i - 1:i + 2]
                value = _APPLY[op](a, b)
                steps.append(f"{a}{op}{b if b >= 0 else f'({b})'}={value}")
                flat[i - 1:i + 2] = [value]
            else:
                i += 2
    return flat[0]


def without_parentheses(text: str) -> int:
    """The slip: the parentheses are ignored (precedence is still respected)."""
    return reduce(parse(text.replace("(", "").replace(")", "")), [])


def _nesting(text: str) -> int:
    deepest = level = 0
    for ch in text:
        level += (ch == "(") - (ch == ")")
        deepest = max(deepest, level)
    return deepest


def draw(rng: Random, knobs: dict) -> Row:
    text = expression(rng, knobs["terms"], knobs["depth"], knobs["max_operand"])
    steps: list[str] = []
    value = reduce(parse(text), steps)
    return {"prompt": f"What is {text}?", "answer": str(value), "expression": text,
            "difficulty": len(steps) + _nesting(text)}


def reasoned(row: Row) -> str:
    steps: list[str] = []
    reduce(parse(row["expression"]), steps)
    return " ".join(steps)


FAMILY = Family(
    name="arithmetic",
    knobs={
        "terms": Option(3, integer(2, 8), "operands in the expression"),
        "max_operand": Option(9, integer(1, 999), "operands are drawn from 1..max_operand"),
        "depth": Option(1, integer(0, 3), "maximum nesting of parentheses"),
    },
    draw=draw,
    check=integer_check,
    reasoned=reasoned,
    slip=lambda row: str(without_parentheses(row["expression"])),
)


def load(task_cfg, demo_cfg) -> Task:
    return load_family(FAMILY, task_cfg, demo_cfg)
