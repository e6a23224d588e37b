"""What the tasks read from local data share: reading records, the held-out split, the Task.

Records come from JSON lines (.jsonl, .jsonl.gz, .ndjson), a JSON array (.json), Parquet
(.parquet, read with pyarrow) or CSV (.csv); a folder is a dataset saved with the `datasets`
library (`save_to_disk`). Nothing is ever downloaded.

Held-out split: with task.eval_path, that file is the held-out set and any training row with
the same prompt is dropped from training; without it, a stable hash of the prompt (of the task
id for code tasks) puts task.heldout_fraction of the rows in the held-out set, the same on every
machine. task.options.instruction is appended to the prompts after the split, so changing it
never moves a problem across.
"""

from __future__ import annotations

import csv
import gzip
import importlib
import json
from collections.abc import Callable
from pathlib import Path
from random import Random

from zeroth.errors import UserError
from zeroth.seeding import stable_fraction
from zeroth.types import Row, Task

JSON_LINES = (".jsonl", ".jsonl.gz", ".ndjson")
SUFFIXES = (*JSON_LINES, ".json", ".parquet", ".csv")


def _json_lines(file: Path) -> list[dict]:
    opener = gzip.open if file.name.endswith(".gz") else open
    records = []
    with opener(file, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise UserError(f"{file}:{number}: not valid JSON ({exc.msg}) — one object per "
                                "line") from None
    return records


def _json_array(file: Path) -> list[dict]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{file}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise UserError(f"{file}: expected a JSON array of objects (or JSON lines in .jsonl)")
    return data


def require(module: str, what: str):
    """Import an optional dependency, or say in one line how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{what} needs the '{module.split('.')[0]}' package — "
                        "pip install 'zeroth[tasks]'") from None


def _parquet(file: Path) -> list[dict]:
    parquet = require("pyarrow.parquet", "reading Parquet files")
    try:
        return parquet.read_table(file).to_pylist()
    except Exception as exc:  # noqa: BLE001 — pyarrow raises several types for a bad file
        raise UserError(f"{file}: not a readable Parquet file ({type(exc).__name__})") from None


def _csv(file: Path) -> list[dict]:
    with open(file, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def saved_records(folder: Path, split: str, key: str) -> list[dict]:
    """The records of split `split` of a dataset folder written by `save_to_disk`."""
    datasets = require("datasets", "reading a saved dataset folder")
    if not ((folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()):
        raise UserError(f"{key} '{folder}' is not a folder written by datasets' save_to_disk "
                        "(no dataset_dict.json or state.json)")
    try:
        data = datasets.load_from_disk(str(folder))
    except Exception as exc:  # noqa: BLE001 — datasets raises many types for a damaged folder
        raise UserError(f"{key} '{folder}' could not be loaded ({type(exc).__name__})") from None
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise UserError(f"{key} '{folder}' has no split '{split}' — set task.options.split "
                            f"/ eval_split to one of {', '.join(data)}")
        data = data[split]
    return data.to_list()


def read_records(path: str, key: str = "task.path", split: str = "train") -> list[dict]:
    """The records (dicts) of a local file or saved `datasets` folder; UserError if unusable."""
    file = Path(path).expanduser()
    if file.is_dir():
        records = saved_records(file, split, key)
    elif not file.is_file():
        raise UserError(f"{key} '{path}' does not exist — give a local file ({', '.join(SUFFIXES)}"
                        ") or a folder saved with datasets' save_to_disk")
    elif file.name.endswith(JSON_LINES):
        records = _json_lines(file)
    elif file.suffix == ".json":
        records = _json_array(file)
    elif file.suffix == ".parquet":
        records = _parquet(file)
    elif file.suffix == ".csv":
        records = _csv(file)
    else:
        raise UserError(f"{key} '{path}': unknown file type — use one of {', '.join(SUFFIXES)}")
    for number, record in enumerate(records, 1):
        if not isinstance(record, dict):
            raise UserError(f"{file}:{number}: expected an object with named fields")
    if not records:
        raise UserError(f"{key} '{path}' holds no rows")
    return records


def pick(record: dict, names: tuple[str, ...], where: str, required: bool = True):
    """The first of `names` present and non-empty in `record` (as read); UserError if none."""
    for name in names:
        value = record.get(name)
        if value is not None and str(value).strip() != "":
            return value
    if required:
        raise UserError(f"{where}: missing or empty {' / '.join(repr(n) for n in names)} — set "
                        "task.options.prompt_field / answer_field to the column names you use")
    return None


def _prompt(row: Row) -> str:
    return row["prompt"]


def load_rows(task_cfg, normalise: Callable[[dict, str], Row], split: str = "train",
              eval_split: str | None = None, reader: Callable[..., list[dict]] = read_records,
              key: Callable[[Row], str] = _prompt) -> tuple[list[Row], list[Row]]:
    """(training rows, held-out rows) from task.path (and task.eval_path or `eval_split` of a
    saved dataset folder); `reader(path, key, split)` gives a source's records."""
    rows = [normalise(r, f"{task_cfg.path}:{i}")
            for i, r in enumerate(reader(task_cfg.path, "task.path", split), 1)]
    held = None
    eval_path = getattr(task_cfg, "eval_path", None)
    if eval_path or eval_split:
        where = eval_path or task_cfg.path
        name = "task.eval_path" if eval_path else "task.path"
        records = reader(where, name, eval_split or "train")
        held = [normalise(r, f"{where}:{i}") for i, r in enumerate(records, 1)]
    return split_rows(rows, task_cfg.heldout_fraction, held, task_cfg.path, key)


def split_rows(rows: list[Row], fraction: float, held: list[Row] | None, where: str,
               key: Callable[[Row], str] = _prompt) -> tuple[list[Row], list[Row]]:
    """The stable split (see the module docstring) by a stable hash of key(row), the prompt
    unless said otherwise; no training row shares a key or a prompt with a held-out one."""
    if held is None:
        held = [r for r in rows if stable_fraction(key(r)) < fraction]
    keys, prompts = {key(r) for r in held}, {r["prompt"] for r in held}
    train = [r for r in rows if key(r) not in keys and r["prompt"] not in prompts]
    if not train or not held:
        raise UserError(f"task.path '{where}': {len(rows)} rows leave an empty split — add rows, "
                        "change task.heldout_fraction or give task.eval_path")
    return train, held


def rewards_for(accuracy: str) -> dict:
    """Every built-in reward, with the task's verifier (a built-in name) also as "correct"."""
    from zeroth.rewards import REWARDS

    rewards = dict(REWARDS)
    rewards["correct"] = rewards[accuracy]
    return rewards


def file_task(name: str, train: list[Row], held: list[Row], *, accuracy: str,
              demonstration=None, info: dict | None = None) -> Task:
    """A Task over fixed rows: training rows drawn with replacement; held-out rows shuffled by
    the seed (all of them when fewer than asked)."""

    def train_rows(rng: Random, n: int) -> list[Row]:
        return [dict(rng.choice(train)) for _ in range(n)]

    def eval_rows(n: int, seed: int) -> list[Row]:
        order = list(range(len(held)))
        Random(f"heldout-{seed}").shuffle(order)
        return [dict(held[i]) for i in order[:n]]

    return Task(
        name=name, train_rows=train_rows, eval_rows=eval_rows, rewards=rewards_for(accuracy),
        demonstration=demonstration,
        info={"rows": len(train) + (0 if held is train else len(held)), "heldout": len(held),
              **(info or {})},
        accuracy=accuracy, weights={accuracy: 1.0, "format": 0.1},
    )


def demonstrations(train: list[Row], verify, reference: Callable[[Row], str | None]):
    """The task's demonstration function, or None when some training row has none.

    A row's `demo` column is used as given and verified with `verify` (once per row and text);
    otherwise `reference(row)` is a reference solution, right by construction."""
    if not all(isinstance(r.get("demo"), str) or reference(r) is not None for r in train):
        return None
    verdicts: dict[tuple[str, str], bool] = {}

    def demonstration(row: Row, rng: Random) -> tuple[str, bool]:
        text = row.get("demo")
        if not isinstance(text, str):
            return reference(row), True
        seen = (row["prompt"], text)
        if seen not in verdicts:
            verdicts[seen] = verify([text], **{k: [v] for k, v in row.items()})[0] == 1.0
        return text, verdicts[seen]

    return demonstration


def add_instruction(instruction: str | None, *groups: list[Row]) -> None:
    """Append task.options.instruction to every prompt (once per row), after the split, so the
    instruction never moves a problem between training and held-out."""
    if not instruction:
        return
    for row in {id(r): r for group in groups for r in group}.values():
        row["prompt"] = f"{row['prompt']}\n\n{instruction}"
