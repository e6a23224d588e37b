"""Task `datasets`: rows read with the Hugging Face `datasets` library, from local files only.

task.path is a .json / .jsonl / .parquet / .csv file (read with `datasets.load_dataset(builder,
data_files=...)`) or a folder written by `save_to_disk` (read with `load_from_disk`; for a
DatasetDict, task.options.split picks the training split, default "train", and
task.options.eval_split may name the held-out one, e.g. "test"). Nothing is fetched from the
Hub. The held-out split is otherwise task.eval_path or the stable prompt hash (see files.py).

task.options.format says how to read a record: `plain` (prompt / answer columns, or the ones
named by prompt_field / answer_field; every other column is kept and passed to the rewards),
`gsm8k` or `math` (as the tasks of those names). task.options.verifier picks the accuracy
reward: `exact` (the built-in exact answer; the default for plain) or `math` (math_accuracy;
the default for gsm8k and math). Demonstrations: a `demo` column, else (gsm8k / math formats)
the reference solutions.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from zeroth.errors import UserError
from zeroth.tasks.files import (
    add_instruction,
    demonstrations,
    file_task,
    load_rows,
    pick,
    require,
    saved_records,
)
from zeroth.tasks.math_data import OPTIONS as MATH_OPTIONS
from zeroth.tasks.math_data import allow_fallback, gsm8k_row, math_row, reference_solution
from zeroth.tasks.options import Option, choice, read_options, text
from zeroth.types import Row, Task

OPTIONS = {
    "format": Option("plain", choice("plain", "gsm8k", "math"), "how to read a record"),
    "verifier": Option(None, choice("exact", "math"), "accuracy reward (default by format)"),
    "split": Option("train", text(optional=False), "training split of a saved DatasetDict"),
    "eval_split": Option(None, text(), "held-out split of a saved DatasetDict"),
    **MATH_OPTIONS,
}
_BUILDERS = {".json": "json", ".jsonl": "json", ".gz": "json", ".parquet": "parquet",
             ".csv": "csv"}


def hf_records(path: str, key: str, split: str) -> list[dict]:
    """Records of a local file via `datasets.load_dataset`, or of a saved folder."""
    source = Path(path).expanduser()
    if source.is_dir():
        return saved_records(source, split, key)
    if not source.is_file():
        raise UserError(f"{key} '{path}' does not exist — give a local .json, .jsonl, .parquet "
                        "or .csv file, or a folder saved with save_to_disk")
    builder = _BUILDERS.get(source.suffix)
    if builder is None:
        raise UserError(f"{key} '{path}': unknown file type — use .json, .jsonl, .parquet or "
                        ".csv")
    datasets = require("datasets", "task 'datasets'")
    try:
        data = datasets.load_dataset(builder, data_files=str(source), split="train")
    except Exception as exc:  # noqa: BLE001 — one line for any unreadable file
        raise UserError(f"{key} '{path}' could not be read as {builder} "
                        f"({type(exc).__name__}: {str(exc)[:120]})") from None
    return data.to_list()


def plain_row(record: dict, where: str, *, opts: dict) -> Row:
    row = dict(record)
    prompt = pick(record, (opts["prompt_field"] or "prompt",), where)
    answer = pick(record, (opts["answer_field"] or "answer",), where)
    if isinstance(answer, float) and answer.is_integer():
        answer = int(answer)  # 3.0 read from a file is the integer answer 3
    row.update(prompt=str(prompt), answer=str(answer))
    return row


def load(task_cfg, demo_cfg) -> Task:
    opts = read_options("datasets", task_cfg.options, OPTIONS)
    if opts["eval_split"] and not Path(task_cfg.path).expanduser().is_dir():
        raise UserError("task.options.eval_split needs task.path to be a saved dataset folder "
                        "— for files give task.eval_path instead")
    normalise = {"plain": plain_row, "gsm8k": gsm8k_row, "math": math_row}[opts["format"]]
    verifier = opts["verifier"] or ("exact" if opts["format"] == "plain" else "math")
    if verifier == "exact" and opts["answer_fallback"] != "none":
        raise UserError("task.options.answer_fallback applies to the math verifier only — set "
                        "task.options.verifier=math or remove it")
    train, held = load_rows(task_cfg, partial(normalise, opts=opts), split=opts["split"],
                            eval_split=opts["eval_split"], reader=hf_records)
    add_instruction(opts["instruction"], train, held)
    accuracy = "correct" if verifier == "exact" else "math_accuracy"
    task = file_task("datasets", train, held, accuracy=accuracy,
                     info={"path": task_cfg.path, "format": opts["format"]})
    allow_fallback(task, opts["answer_fallback"])
    plain = opts["format"] == "plain"  # plain rows pre-train only on a `demo` column
    reference = (lambda row: None) if plain else reference_solution
    task.demonstration = demonstrations(train, task.rewards["correct"], reference)
    return task
