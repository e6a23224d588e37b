"""Several task families in one run: `task.name=mix` with `task.mix` giving each a weight.

    task:
      name: mix
      mix: {addition: 2, sorting: {weight: 1, options: {length: 4}}, multiplication: 1}

An entry is a family -> its weight (a positive number), or -> {weight: W, options: {knob: v}}
(W defaults to 1; options are that family's task.options; addition's is `digits`, else
task.digits). Only families with demonstrations mix: the procedural ones (FAMILIES) and a task
file of your own (`path/to/file.py:load`, whose Task must have demonstrations).

* Training rows: each row's family is drawn by weight from the step's random stream, then the
  rows of each family are drawn from that family (at its current level, see below) from the same
  stream, so a step's rows are a function of (seed, stage, step) as for any task. Every row
  carries a `task` column: the family's name (the ledger's rollouts record it).
* Held-out rows: task.eval_problems shared by weight (every family first gets one, the rest go
  by largest remainder), each family's share drawn from its own stable held-out split at its
  configured options, then interleaved so that any prefix (rl.eval_problems during RL) holds
  the families in about their shares. The same for the same seed, whatever the levels.
* `correct`: each row is scored by its own family's verifier (dispatch on `task`); a row with
  no known family scores None. Demonstrations dispatch likewise.
* Levels: a family with a ladder (LADDERS: the difficulty knob and the values it climbs
  through) draws its training rows at `Task.levels[family]`, its configured value at the start;
  `zeroth.tasks.curriculum` moves it. A family under task.curriculum alone (not a mix) is a mix
  of one that keeps its own name and rows (`single`).

task.name=mix and task.mix go together (either alone is refused), and task.options is refused
beside them: options go per family. A family is named by its Task's name (`parity` for
examples/parity.py:load) in rows, metrics and results: the RL step logs `accuracy/<family>`
(when the `correct` reward is weighted, 0 will do) and `heldout_pass1/<family>`; evaluations
add `by_task` (zeroth.stages.eval).
"""

from __future__ import annotations

import copy
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from random import Random

from zeroth.errors import UserError
from zeroth.rewards import REWARDS
from zeroth.rewards.resolve import find_function
from zeroth.tasks import addition, arithmetic, countdown, linear, multiplication, sorting
from zeroth.tasks.options import Option, integer, read_options
from zeroth.types import Row, Task

FAMILIES = {  # the built-in families that mix: procedural, with demonstrations
    "addition": addition.load,
    "arithmetic": arithmetic.load,
    "countdown": countdown.load,
    "linear": linear.load,
    "multiplication": multiplication.load,
    "sorting": sorting.load,
}
LADDERS = {  # family -> (its difficulty knob, the values the curriculum moves it through)
    "addition": ("digits", tuple(range(1, 10))),
    "multiplication": ("digits", tuple(range(1, 10))),
    "sorting": ("length", tuple(range(2, 13))),
    "countdown": ("numbers", (2, 3, 4, 5, 6)),
    "arithmetic": ("terms", tuple(range(2, 9))),
    "linear": ("max_coef", (1, 2, 3, 5, 9, 20, 50, 100)),
}
ENTRY_KEYS = ("weight", "options")
EXAMPLE = "e.g. task.mix={addition: 2, sorting: 1}"


@dataclass(frozen=True)
class Entry:
    """One family of task.mix as written: its key, weight and options."""

    key: str
    weight: float
    options: dict


def parse_mix(mix, known: tuple[str, ...] = ()) -> list[Entry]:
    """The entries of task.mix in their order, each checked; a one-line UserError naming
    `task.mix.<family>` for anything wrong (`known`: every task name, to tell a task that does
    not mix from an unknown one)."""
    if not isinstance(mix, dict) or not mix:
        raise UserError(f"task.mix must map family names to weights, {EXAMPLE}, got {mix!r}")
    entries = []
    for key, value in mix.items():
        _check_family(key, known)
        weight, options = (value.get("weight", 1), value.get("options") or {}) \
            if isinstance(value, dict) else (value, {})
        if isinstance(value, dict):
            _check_entry_keys(key, value)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or \
                not math.isfinite(weight) or weight <= 0:
            raise UserError(f"task.mix.{key} must be a positive weight or {{weight: W, options: "
                            f"{{knob: value}}}}, got {value!r}")
        if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
            raise UserError(f"task.mix.{key}.options must map the family's knobs to values, "
                            f"e.g. {{length: 4}}, got {options!r}")
        entries.append(Entry(key, float(weight), dict(options)))
    return entries


def _check_family(key, known: tuple[str, ...]) -> None:
    """A built-in family that mixes, or an existing task file of the user's."""
    if not isinstance(key, str):
        raise UserError(f"task.mix must map family names to weights, {EXAMPLE}, got key {key!r}")
    if key in FAMILIES:
        return
    if ":" in key:
        where = key.rsplit(":", 1)[0]
        if where.endswith(".py") and not Path(where).expanduser().is_file():
            raise UserError(f"task.mix.{key}: file '{where}' does not exist — give the path of "
                            "your task's file (path/to/file.py:load)")
        return
    if key in known:
        raise UserError(f"task.mix.{key}: only procedural families with demonstrations mix "
                        f"({', '.join(FAMILIES)}, or your own path/to/file.py:load) — train "
                        f"'{key}' on its own with task.name={key}")
    close = difflib.get_close_matches(key, list(FAMILIES), n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise UserError(f"task.mix.{key}: unknown family — {hint}families that mix: "
                    f"{', '.join(FAMILIES)}, or your own path/to/file.py:load")


def _check_entry_keys(key: str, value: dict) -> None:
    for name in value:
        if name not in ENTRY_KEYS:
            close = difflib.get_close_matches(str(name), ENTRY_KEYS, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise UserError(f"task.mix.{key}.{name}: unknown key — {hint}an entry takes "
                            "weight and options")


def check(task_cfg, known: tuple[str, ...] = ()) -> None:
    """The rules of task.name=mix and task.mix that need no family loaded (the config check;
    `known`: every task name)."""
    mix, name = getattr(task_cfg, "mix", None) or {}, task_cfg.name
    if name == "mix" and not mix:
        raise UserError(f"task.name=mix trains on several families: name them in task.mix, "
                        f"{EXAMPLE}")
    if mix and name != "mix":
        raise UserError(f"task.mix is set but task.name is '{name}' — set task.name=mix to "
                        "train on the mix, or remove task.mix")
    if mix and getattr(task_cfg, "options", None):
        raise UserError("task.options does not apply to a mix — give each family's options in "
                        "task.mix.<family>.options, e.g. task.mix.sorting={weight: 1, options: "
                        "{length: 4}}")
    if mix:
        parse_mix(mix, known)


def load_family(key: str, options: dict, task_cfg, demo_cfg, where: str) -> Task:
    """The Task of family `key` with `options` (errors name them under `where`, e.g.
    `task.mix.sorting.options.`); addition reads its `digits` option (default task.digits)."""
    cfg = copy.copy(task_cfg)
    cfg.name, cfg.options, cfg.mix, cfg.curriculum = key, dict(options), {}, {}
    try:
        if key == "addition":
            knobs = {"digits": Option(task_cfg.digits, integer(1, 9), "digits per operand")}
            cfg.digits, cfg.options = read_options("addition", options, knobs)["digits"], {}
        loader = FAMILIES.get(key) or find_function(key, "task")
        return loader(cfg, demo_cfg)
    except UserError as exc:
        raise UserError(str(exc).replace("task.options.", where)) from None


@dataclass
class Member:
    """A family of the mix: its entry, its Task at the configured options (`base`), its ladder
    (knob, values) or None, and its Tasks by level, made when first drawn."""

    entry: Entry
    base: Task
    ladder: tuple[str, tuple[int, ...]] | None
    at: dict[int, Task] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.base.name


class Mix:
    """The families of a mix and their current levels; its methods are the Task's."""

    def __init__(self, members: list[Member], task_cfg, demo_cfg, where: str):
        self.members = {m.name: m for m in members}
        self.cfg, self.demos, self.where = task_cfg, demo_cfg, where
        self.levels = {m.name: m.base.info[m.ladder[0]] for m in members if m.ladder}

    def family(self, member: Member) -> Task:
        """The member's Task at its current level."""
        level = self.levels.get(member.name)
        if level is None or level == member.base.info[member.ladder[0]]:
            return member.base
        if level not in member.at:
            options = {**member.entry.options, member.ladder[0]: level}
            member.at[level] = load_family(member.entry.key, options, self.cfg, self.demos,
                                           self.where.format(key=member.entry.key))
        return member.at[level]

    def train_rows(self, rng: Random, n: int) -> list[Row]:
        """n rows: each one's family drawn by weight, then each family's rows at its level."""
        members = list(self.members.values())
        picks = [0] * n if len(members) == 1 else rng.choices(
            range(len(members)), weights=[m.entry.weight for m in members], k=n)
        rows: list[Row] = [{}] * n
        for j, member in enumerate(members):
            where = [i for i, p in enumerate(picks) if p == j]
            if where:
                drawn = self.family(member).train_rows(rng, len(where))
                for i, row in zip(where, drawn, strict=True):
                    rows[i] = {**row, "task": member.name}
        return rows

    def eval_rows(self, n: int, seed: int) -> list[Row]:
        """n held-out rows shared by weight (see the module docstring), interleaved."""
        members = list(self.members.values())
        counts = shares(n, [m.entry.weight for m in members])
        placed = []
        for j, (member, count) in enumerate(zip(members, counts, strict=True)):
            try:
                rows = member.base.eval_rows(count, seed)
            except ValueError as exc:
                raise ValueError(f"task.mix.{member.entry.key} (its share of task.eval_problems="
                                 f"{n} is {count}): {exc}") from None
            placed += [((i + 0.5) / count, j, {**row, "task": member.name})
                       for i, row in enumerate(rows)]
        return [row for _, _, row in sorted(placed, key=lambda p: p[:2])]

    def demonstration(self, row: Row, rng: Random) -> tuple[str, bool]:
        return self.members[row["task"]].base.demonstration(row, rng)

    def correct(self, completions: list[str], **columns) -> list[float | None]:
        """Each completion scored by its row's family verifier; None for a row of no family."""
        n, names = len(completions), columns.get("task") or [None] * len(completions)
        out: list[float | None] = [None] * n
        for name in dict.fromkeys(names):
            member = self.members.get(name)
            if member is None:
                continue
            idx = [i for i, t in enumerate(names) if t == name]
            part = {k: [v[i] for i in idx] if isinstance(v, list) and len(v) == n else v
                    for k, v in columns.items()}
            verify = member.base.rewards[member.base.accuracy]
            for i, score in zip(idx, verify([completions[i] for i in idx], **part), strict=True):
                out[i] = score
        return out


def shares(n: int, weights: list[float]) -> list[int]:
    """n split by weight: one each first, the rest by largest remainder (ties: the first)."""
    if n < len(weights):
        raise ValueError(f"task.eval_problems={n} is fewer than the mix's {len(weights)} "
                         f"families — give each one at least one: task.eval_problems>="
                         f"{len(weights)}")
    exact = [(n - len(weights)) * w / sum(weights) for w in weights]
    counts = [1 + math.floor(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (math.floor(exact[i]) - exact[i], i))
    for i in order[:n - sum(counts)]:
        counts[i] += 1
    return counts


def _members(entries: list[Entry], task_cfg, demo_cfg, where: str) -> list[Member]:
    members, seen = [], {}
    for entry in entries:
        base = load_family(entry.key, entry.options, task_cfg, demo_cfg,
                           where.format(key=entry.key))
        if base.demonstration is None:
            raise UserError(f"task.mix.{entry.key}: task '{base.name}' has no demonstrations — "
                            "only families with demonstrations mix")
        if base.name in seen:
            raise UserError(f"task.mix: '{seen[base.name]}' and '{entry.key}' are both task "
                            f"'{base.name}' — keep one")
        seen[base.name] = entry.key
        ladder = LADDERS.get(entry.key)
        if ladder is not None:  # the configured value is a rung even when off the table
            ladder = (ladder[0], tuple(sorted({*ladder[1], base.info[ladder[0]]})))
        members.append(Member(entry, base, ladder))
    return members


def _task(mix: Mix, name: str, info: dict) -> Task:
    rewards = dict(REWARDS)
    rewards["correct"] = mix.correct
    ladders = {m.name: {"knob": m.ladder[0], "values": list(m.ladder[1])}
               for m in mix.members.values() if m.ladder}
    return Task(name=name, train_rows=mix.train_rows, eval_rows=mix.eval_rows, rewards=rewards,
                demonstration=mix.demonstration, info={**info, "ladders": ladders},
                accuracy="correct", weights={"correct": 1.0, "format": 0.1}, levels=mix.levels)


def load(task_cfg, demo_cfg) -> Task:
    """The mix of task.mix (task.name=mix)."""
    check(task_cfg)
    where = "task.mix.{key}.options."
    members = _members(parse_mix(task_cfg.mix), task_cfg, demo_cfg, where)
    mix = Mix(members, task_cfg, demo_cfg, where)
    info = {"mix": {m.name: m.entry.weight for m in members},
            "families": {m.name: m.base.info for m in members},
            "heldout_fraction": task_cfg.heldout_fraction}
    return _task(mix, "mix", info)


def single(task_cfg, demo_cfg) -> Task:
    """One family (task.name, with task.options) under task.curriculum: a mix of one that keeps
    the family's name; until its level changes it draws exactly the family's own rows."""
    entry = Entry(task_cfg.name, 1.0, dict(task_cfg.options or {}))
    members = _members([entry], task_cfg, demo_cfg, "task.options.")
    mix = Mix(members, task_cfg, demo_cfg, "task.options.")
    return _task(mix, task_cfg.name, dict(members[0].base.info))
