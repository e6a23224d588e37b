"""Checking `task.options`, the free mapping of family-specific knobs a recipe passes to a task.

Each loader declares its options as name -> Option (a default and a check that returns the clean
value or raises). `read_options` refuses unknown names (with a "did you mean") and bad values,
each with one line naming `task.options.X` and what it accepts.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from zeroth.errors import UserError


@dataclass(frozen=True)
class Option:
    """One knob: its default and a check(key, value) -> clean value that raises UserError."""

    default: Any
    check: Callable[[str, Any], Any]
    help: str = ""


def bad_value(key: str, value: Any, wanted: str) -> UserError:
    return UserError(f"task.options.{key} must be {wanted}, got {value!r}")


def integer(low: int, high: int) -> Callable[[str, Any], int]:
    """An int in [low, high] (never a bool or a float)."""

    def check(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise bad_value(key, value, f"an integer in [{low}, {high}]")
        return value

    return check


def choice(*allowed: str) -> Callable[[str, Any], str]:
    def check(key: str, value: Any) -> str:
        if value not in allowed:
            raise bad_value(key, value, f"one of {', '.join(allowed)}")
        return value

    return check


def text(optional: bool = True) -> Callable[[str, Any], str | None]:
    """A non-empty string (or None when optional)."""

    def check(key: str, value: Any) -> str | None:
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value.strip():
            raise bad_value(key, value, "a non-empty string")
        return value

    return check


def flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise bad_value(key, value, "true or false")
    return value


def mapping(key: str, value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise bad_value(key, value, "a mapping of names to values")
    return dict(value)


def read_options(task: str, given: dict | None, spec: dict[str, Option]) -> dict[str, Any]:
    """The options of `task`: the defaults of `spec` updated with the checked `given` ones."""
    given = dict(given or {})
    for name in given:
        if name not in spec:
            raise unknown_option(task, name, list(spec))
    return {name: opt.check(name, given[name]) if name in given else opt.default
            for name, opt in spec.items()}


def unknown_option(task: str, name: str, valid: list[str]) -> UserError:
    if not valid:
        return UserError(f"task.options.{name}: task '{task}' takes no options — remove it")
    close = difflib.get_close_matches(str(name), valid, n=1)
    hint = f"did you mean 'task.options.{close[0]}'? " if close else ""
    return UserError(f"unknown option 'task.options.{name}' for task '{task}' — {hint}"
                     f"valid: {', '.join(valid)}")
