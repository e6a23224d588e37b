"""A task from a local JSON-lines file: one `{"prompt": ..., "answer": ...}` object per line.

Extra columns are kept and passed to the reward functions. An optional `demo` column holds a
demonstration completion: when every training row has one, a model can be built from scratch
(its tokenizer trained on the prompts and demonstrations) and pre-trained on them; otherwise
give model.path. The held-out split is task.eval_path (a second file
of the same form) or else a stable hash of the prompt (see zeroth.tasks.files).
"""

from __future__ import annotations

import json
from pathlib import Path
from random import Random

from zeroth.errors import UserError
from zeroth.rewards import exact_answer
from zeroth.tasks.files import file_task, load_rows
from zeroth.types import Row, Task

REQUIRED = ("prompt", "answer")


def read_rows(path: str, key: str = "task.path", split: str = "train") -> list[Row]:
    """Parse and check every line; a malformed one raises UserError naming file and line."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"{key} '{path}' does not exist — give a local .jsonl file")
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
        for column in REQUIRED:
            value = row.get(column)
            if not isinstance(value, (str, int, float)) or str(value).strip() == "":
                raise UserError(f"{where}: missing or empty '{column}' — every row needs "
                                f"{REQUIRED}")
        answer = row["answer"]
        if isinstance(answer, float) and answer.is_integer():
            answer = int(answer)  # 3.0 in JSON is the integer answer 3
        row["prompt"], row["answer"] = str(row["prompt"]), str(answer)
        rows.append(row)
    if not rows:
        raise UserError(f"{key} '{path}' holds no rows")
    return rows


def demonstration(row: Row, rng: Random) -> tuple[str, bool]:
    text = row.get("demo")
    if not isinstance(text, str):
        raise UserError(f"row {row['prompt']!r} has no 'demo' text for pre-training")
    return text, exact_answer([text], [row["answer"]])[0] == 1.0


def missing_demos(rows: list[Row], path: str) -> str | None:
    """What to add so that the rows can be pre-trained on (None when every row has a 'demo')."""
    missing = [r for r in rows if not isinstance(r.get("demo"), str) or not r["demo"].strip()]
    if not missing:
        return None
    return (f"{len(missing)} of {len(rows)} training rows of {path} have no 'demo' (e.g. "
            f"prompt {missing[0]['prompt'][:40]!r}); add to every row a \"demo\" column, the "
            "completion to imitate (e.g. \"<think>...</think><answer>...</answer>\")")


def load(task_cfg, demo_cfg) -> Task:
    train, test = load_rows(task_cfg, lambda row, where: row, reader=read_rows)
    task = file_task("jsonl", train, test, accuracy="correct", info={"path": task_cfg.path})
    hint = missing_demos(train, task_cfg.path)
    if hint is None:
        task.demonstration = demonstration
    else:
        task.info["no_demos"] = hint
    return task
