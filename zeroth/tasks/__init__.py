"""Task families behind one `load_task(cfg)`: each gives rows, a held-out split and verifiers."""

from __future__ import annotations

from zeroth.errors import UserError
from zeroth.rewards.resolve import resolve_reward
from zeroth.tasks import addition, jsonl
from zeroth.types import Task

TASKS = {"addition": addition.load, "jsonl": jsonl.load}


def load_task(cfg) -> Task:
    """Build the task named by `cfg.task.name`, with every reward the weights name resolved."""
    task = TASKS[cfg.task.name](cfg.task, cfg.demos)
    for name in cfg.rl.reward_weights:  # built-ins, module:function or file.py:function
        if name not in task.rewards:
            try:
                task.rewards[name] = resolve_reward(name, task.rewards)
            except UserError as exc:
                raise UserError(f"rl.reward_weights: {exc}") from None
    return task
