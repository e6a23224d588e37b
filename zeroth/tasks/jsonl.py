"""A task from a local JSON-lines file: one `{"prompt": ..., "answer": ...}` object per line.

Extra columns are kept and passed to the reward functions. An optional `demo` column holds a
demonstration completion for pre-training. The held-out split is a stable hash of the prompt.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from random import Random

from zeroth.errors import UserError
from zeroth.rewards import REWARDS, exact_answer
from zeroth.seeding import stable_fraction
from zeroth.types import Row, Task

REQUIRED = ("prompt", "answer")


def read_rows(path: str) -> list[Row]:
    """Parse and check every line; a malformed one raises UserError naming file and line."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"task.path '{path}' does not exist — give a local .jsonl file")
    rows = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: not valid JSON ({exc.msg}) — one object per line") from None
        if not isinstance(row, dict):
            raise UserError(f"{where}: expected a JSON object with 'prompt' and 'answer'")
        for key in REQUIRED:
            if not isinstance(row.get(key), (str, int, float)) or str(row[key]).strip() == "":
                raise UserError(f"{where}: missing or empty '{key}' — every row needs {REQUIRED}")
        answer = row["answer"]
        if isinstance(answer, float) and answer.is_integer():
            answer = int(answer)  # 3.0 in JSON is the integer answer 3
        row["prompt"], row["answer"] = str(row["prompt"]), str(answer)
        rows.append(row)
    if not rows:
        raise UserError(f"task.path '{path}' holds no rows")
    return rows


def _heldout(prompt: str, fraction: float) -> bool:
    return stable_fraction(prompt) < fraction


def demonstration(row: Row, rng: Random) -> tuple[str, bool]:
    text = row.get("demo")
    if not isinstance(text, str):
        raise UserError(f"row {row['prompt']!r} has no 'demo' text for pre-training")
    return text, exact_answer([text], [row["answer"]])[0] == 1.0


def load(task_cfg, demo_cfg) -> Task:
    rows = read_rows(task_cfg.path)
    train = [r for r in rows if not _heldout(r["prompt"], task_cfg.heldout_fraction)]
    test = [r for r in rows if _heldout(r["prompt"], task_cfg.heldout_fraction)]
    if not train or not test:
        raise UserError(f"task.path '{task_cfg.path}': {len(rows)} rows leave an empty split "
                        "— add rows or change task.heldout_fraction")

    def train_rows(rng: Random, n: int) -> list[Row]:
        return [dict(rng.choice(train)) for _ in range(n)]

    def eval_rows(n: int, seed: int) -> list[Row]:
        picked = list(test)
        Random(f"heldout-{seed}").shuffle(picked)
        return [dict(r) for r in picked[:n]]

    has_demos = all(isinstance(r.get("demo"), str) for r in train)
    return Task(
        name="jsonl",
        train_rows=train_rows,
        eval_rows=eval_rows,
        rewards=dict(REWARDS),
        demonstration=partial(demonstration) if has_demos else None,
        info={"path": task_cfg.path, "rows": len(rows), "heldout": len(test)},
    )
