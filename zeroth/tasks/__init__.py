"""Task families behind one `load_task(cfg)`: each gives rows, a held-out split and verifiers."""

from __future__ import annotations

from zeroth.tasks import addition, jsonl
from zeroth.types import Task

TASKS = {"addition": addition.load, "jsonl": jsonl.load}


def load_task(cfg) -> Task:
    """Build the task named by `cfg.task.name` from the run config."""
    return TASKS[cfg.task.name](cfg.task, cfg.demos)
