"""The difficulty curriculum (`task.curriculum`): each family's level follows its training accuracy.

    task:
      curriculum: {up: 0.7, down: 0.1, window: 256}     # {} (the default): off

After every RL step, each family with a difficulty ladder (zeroth.tasks.mix.LADDERS: addition
and multiplication digits, sorting length, countdown numbers, arithmetic terms, linear max_coef)
adds the step's sampled completions of its rows (solved or not, by its verifier, every
completion of every group) to a rolling window of its last `window` completions. Once the window
is full, an accuracy >= `up` moves the family one rung up its ladder, one < `down` one rung down
(reasoning-gym's curricula use 0.7 and 0.1); the window then starts over at the new level. The
next step draws its rows at the new level; the held-out set stays at the configured options, so
its curve is comparable across changes.

Every change is kept as {stage, step, family, knob, from, to, accuracy, window} (`step` is the
RL step whose rollouts decided it; rows are drawn at the new level from the next step on): in
the run state (saved in every checkpoint, with the levels and the windows, so a resumed run draws
exactly the rows an uninterrupted one would), in the ledger's meta `curriculum` and in
summary.json. The step metrics hold `level/<family>`, the level each step drew at.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from zeroth.errors import UserError

DEFAULTS = {"up": 0.7, "down": 0.1, "window": 256}


def settings(given) -> dict | None:
    """task.curriculum checked, with the defaults filled in; None when it is off ({})."""
    if not given:
        return None
    if not isinstance(given, dict):
        raise UserError(f"task.curriculum must be a mapping such as {{up: 0.7, down: 0.1, "
                        f"window: 256}}, got {given!r}")
    for key in given:
        if key not in DEFAULTS:
            close = difflib.get_close_matches(str(key), list(DEFAULTS), n=1)
            hint = f"did you mean 'task.curriculum.{close[0]}'? " if close else ""
            raise UserError(f"unknown key 'task.curriculum.{key}' — {hint}valid: up, down, window")
    out = {**DEFAULTS, **given}
    for key in ("up", "down"):
        value = out[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or \
                not 0 <= value <= 1:
            raise UserError(f"task.curriculum.{key} must be a training accuracy in [0, 1], "
                            f"got {value!r}")
    if out["down"] > out["up"]:
        raise UserError(f"task.curriculum.down={out['down']} is above up={out['up']} — a "
                        "family would rise and fall at once; keep down <= up")
    window = out["window"]
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise UserError(f"task.curriculum.window must be a number of completions >= 1, got "
                        f"{window!r}")
    return out


@dataclass
class Curriculum:
    """The levels of a task (`Task.levels`, changed in place), each family's window of recent
    outcomes (1 solved, 0 not) at its level, and every change so far."""

    up: float
    down: float
    window: int
    ladders: dict[str, dict]  # family -> {"knob", "values"} (Task.info["ladders"])
    levels: dict[str, int]
    recent: dict[str, list[int]] = field(default_factory=dict)
    changes: list[dict] = field(default_factory=list)

    @classmethod
    def of(cls, task, given, state: dict | None = None) -> Curriculum | None:
        """The curriculum of `task` under task.curriculum `given` (None when off), continuing
        from a checkpoint's `state` when given."""
        chosen = settings(given)
        if chosen is None or task.levels is None:
            return None
        out = cls(chosen["up"], chosen["down"], chosen["window"],
                  task.info.get("ladders", {}), task.levels)
        if state:
            out.levels.update(state["levels"])
            out.recent = {k: list(v) for k, v in state["recent"].items()}
            out.changes = [dict(c) for c in state["changes"]]
        return out

    def observe(self, phase: str, step: int, outcomes: dict[str, list[bool]]) -> list[dict]:
        """Add a step's outcomes per family; move each family whose full window says so.
        Returns this step's changes."""
        moved = []
        for family in self.ladders:  # in the task's order
            oks = outcomes.get(family)
            if not oks:
                continue
            window = self.recent.setdefault(family, [])
            window.extend(int(ok) for ok in oks)
            del window[:-self.window]
            if len(window) < self.window:
                continue
            accuracy = sum(window) / len(window)
            move = 1 if accuracy >= self.up else -1 if accuracy < self.down else 0
            values = self.ladders[family]["values"]
            rung = values.index(self.levels[family]) + move
            if move and 0 <= rung < len(values):
                moved.append({"stage": phase, "step": step, "family": family,
                              "knob": self.ladders[family]["knob"],
                              "from": self.levels[family], "to": values[rung],
                              "accuracy": accuracy, "window": len(window)})
                self.levels[family] = values[rung]
                window.clear()
        self.changes += moved
        return moved

    def state(self) -> dict:
        """What a checkpoint keeps (JSON)."""
        return {"levels": dict(self.levels), "recent": {k: list(v) for k, v in
                                                         self.recent.items()},
                "changes": [dict(c) for c in self.changes]}


def describe(change: dict) -> str:
    """One line for the terminal."""
    return (f"curriculum · {change['stage']} step {change['step']}: {change['family']} "
            f"{change['knob']} {change['from']} → {change['to']} (train accuracy "
            f"{100 * change['accuracy']:.1f}% over {change['window']} completions)")


def restore_levels(task, state: dict) -> None:
    """Put a checkpoint's levels back into `task` (a run resumed after its curriculum moved)."""
    saved = state.get("curriculum")
    if saved and task.levels is not None:
        task.levels.update(saved["levels"])


def summary(state: dict) -> dict | None:
    """The summary's record of the curriculum: the levels reached and every change."""
    saved = state.get("curriculum")
    if not saved:
        return None
    return {"levels": dict(saved["levels"]), "changes": saved["changes"]}

