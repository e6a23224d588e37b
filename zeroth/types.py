"""The plain data passed between pipeline stages: a task, and the rows it produces.

A *row* is a dict of dataset columns: at least `prompt` (the user message) and `answer`
(the reference the verifier checks against); tasks may add more columns, and every column is
passed to reward functions as a keyword argument, as in TRL.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from random import Random

Row = dict
RewardFn = Callable[..., list]  # fn(completions: list[str], **columns) -> list[float | None]


@dataclass
class Task:
    """A family of problems with an exact verifier.

    train_rows(rng, n): n rows drawn from the training split (never a held-out row).
    eval_rows(n, seed): n rows of the held-out split, the same for the same seed.
    demonstration(row, rng): a completion text for pre-training, or None when the task has none;
        returns (text, is_correct) so the corpus accuracy is known exactly.
    rewards: name -> reward function; the run config weights them.
    accuracy: the name (in `rewards`) of the verifier whose 1.0 means "solved"; evaluation,
        pass@k and the progress line report it.
    weights: the reward weights used when the recipe names none (`task: gsm8k` alone works).
    levels: family -> the value of its difficulty knob that train_rows draws at now (a mix, or
        a family under task.curriculum: zeroth.tasks.mix); the curriculum changes it in place.
        None for every other task.
    """

    name: str
    train_rows: Callable[[Random, int], list[Row]]
    eval_rows: Callable[[int, int], list[Row]]
    rewards: dict[str, RewardFn]
    demonstration: Callable[[Row, Random], tuple[str, bool]] | None = None
    info: dict = field(default_factory=dict)
    accuracy: str = "correct"
    weights: dict[str, float] = field(default_factory=lambda: {"correct": 1.0, "format": 0.1})
    levels: dict[str, int] | None = None


def bind_reward(task: Task, name: str, **settings) -> None:
    """Give the reward `name` fixed keyword settings, under every name it goes by (a task's
    verifier is also its "correct")."""
    fn = task.rewards[name]
    bound = partial(fn, **settings)
    for other, reward in list(task.rewards.items()):
        if reward is fn:
            task.rewards[other] = bound
