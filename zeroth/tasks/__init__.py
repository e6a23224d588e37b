"""Task families behind one `load_task(cfg)`: each gives rows, a held-out split and verifiers."""

from __future__ import annotations

from zeroth.errors import UserError
from zeroth.tasks import addition, jsonl
from zeroth.types import Task

TASKS = {"addition": addition.load, "jsonl": jsonl.load}


def load_task(cfg) -> Task:
    """Build the task named by `cfg.task.name`; check the reward weights name its rewards."""
    task = TASKS[cfg.task.name](cfg.task, cfg.demos)
    unknown = sorted(set(cfg.rl.reward_weights) - set(task.rewards))
    if unknown:
        raise UserError(f"rl.reward_weights names unknown reward '{unknown[0]}' — task "
                        f"'{task.name}' has: {', '.join(sorted(task.rewards))}")
    return task
