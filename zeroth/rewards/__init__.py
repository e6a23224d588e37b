"""Rule-based rewards. Each follows TRL's contract: `fn(completions, **columns) -> list[float | None]`.

None means "not applicable / the verifier could not decide" and is recorded as such, never as 0.0.
`combine` weights the components into one scalar per completion and keeps each component apart.
"""

from __future__ import annotations

import ctypes
import threading
from functools import partial
from math import isfinite

from zeroth.rewards.exact import exact_answer
from zeroth.rewards.shaping import (
    extract_answer,
    language_consistency,
    overlong,
    tag_count,
    think_format,
)


def math_accuracy(completions: list[str], **columns) -> list[float | None]:
    """Math answer equivalence (math-verify, bounded time): see `zeroth.rewards.math`."""
    from zeroth.rewards.math import math_accuracy as check  # sympy loads on first use only

    return check(completions, **columns)


def code_tests(completions: list[str], **columns) -> list[float | None]:
    """The completion's program run against its tests in a sandbox: see `zeroth.rewards.code`."""
    from zeroth.rewards.code import code_tests as run

    return run(completions, **columns)


# Verifiers that bound every check themselves (worker processes with deadlines, the sandbox's
# per-program limits): `combine`'s timeout_s does not apply to them, since a large batch of
# slow programs can rightly take longer than any one limit for the whole call.
math_accuracy.bounded = True
code_tests.bounded = True


def _bounded(fn) -> bool:
    """Whether `fn` (or the function a functools.partial wraps) bounds its checks itself."""
    while isinstance(fn, partial):
        fn = fn.func
    return getattr(fn, "bounded", False)


REWARDS = {  # the built-ins, by the name a recipe uses
    "correct": exact_answer,  # each task re-binds "correct" to its own verifier
    "math_accuracy": math_accuracy,
    "code_tests": code_tests,
    "format": think_format,
    "tags": tag_count,
    "overlong": overlong,
    "language_consistency": language_consistency,
    "language": language_consistency,  # short alias
}

__all__ = [
    "REWARDS", "code_tests", "combine", "exact_answer", "extract_answer", "language_consistency",
    "math_accuracy", "overlong", "tag_count", "think_format",
]


def _number(score) -> tuple[float | None, str | None]:
    """A reward value as (float, None). None stays None. NaN and +-inf become None with a short
    reason, kept under `<name>_error`: one would poison the total and then every advantage of
    its group. Anything that is not a number raises (a verifier bug, recorded for the call)."""
    if score is None:
        return None, None
    value = float(score)  # raises for a non-number, recorded like any verifier failure
    if not isfinite(value):
        return None, f"non-finite score {value}"
    return value, None


class _TimedOut(Exception):
    """A reward function overran `combine`'s timeout_s (its message is the recorded error)."""


class _Stop(BaseException):
    """Raised asynchronously into the thread of a reward function that overran its limit; a
    BaseException so that the function's own `except Exception` cannot swallow it."""


def _raise_in(thread_id: int, exc: type[BaseException] | None) -> None:
    """Make `exc` raise in thread `thread_id` at its next bytecode (None: cancel a pending one)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                               None if exc is None else ctypes.py_object(exc))


def _call_within(fn, completions: list, columns: dict, timeout_s: float):
    """`fn(completions, **columns)` in the caller's own thread, as without a limit (a reward
    may use signals, which work in the main thread only: math-verify's timeouts do), watched by
    a timer thread that, after `timeout_s` seconds, raises `_Stop` into the caller: a
    pure-Python loop ends at its next bytecode, from any thread; a call stuck inside C code
    ends only when that code returns. Raises _TimedOut, or what `fn` raised."""
    caller, lock, state = threading.get_ident(), threading.Lock(), {"done": False, "fired": False}

    def fire():
        with lock:
            if not state["done"]:
                state["fired"] = True
                _raise_in(caller, _Stop)

    timer = threading.Timer(timeout_s, fire)
    timer.daemon = True
    timer.start()
    try:
        try:
            return fn(completions, **columns)
        finally:
            with lock:
                state["done"] = True
            timer.cancel()
            if state["fired"]:
                _raise_in(caller, None)  # not delivered yet: it must not fire later
                raise _Stop
    except _Stop:
        raise _TimedOut(f"timed out after {timeout_s:g} s") from None


def combine(
    completions: list[str], rows: list[dict], fns: dict, weights: dict[str, float],
    timeout_s: float | None = None, **extra: list,
) -> tuple[list[float], list[dict[str, float | None]]]:
    """Score every completion with every weighted reward function.

    `extra` holds per-completion lists passed to every function as keywords (as TRL passes
    completion_ids). Returns (total per completion, components per completion). A component
    that is None (not applicable, or the verifier raised) adds nothing to the total; a reward
    function that raises is recorded as None for that whole call with the error kept under
    `<name>_error`, and the RL step gives such completions no advantage. A NaN or infinite
    score is None for its completion, with the reason under `<name>_error`. With `timeout_s`,
    a call that takes longer is stopped and is None for the whole call ("timed out after N
    s"); see `_call_within` for how. Without
    it (the default), and for the verifiers that bound each check themselves (math_accuracy,
    code_tests: `_bounded`), the functions run in the caller's thread.
    """
    keys = dict.fromkeys(key for row in rows for key in row)  # union, in first-seen order
    columns = {key: [row.get(key) for row in rows] for key in keys}
    columns.update(extra)  # e.g. completion_ids, max_new_tokens (one entry per completion)
    parts: list[dict[str, float | None]] = [{} for _ in completions]
    for name in weights:
        try:
            if timeout_s is None or _bounded(fns[name]):
                raw = fns[name](completions, **columns)
            else:
                raw = _call_within(fns[name], completions, columns, timeout_s)
            scored = [_number(x) for x in raw]
            if len(scored) != len(completions):
                raise ValueError(f"returned {len(scored)} scores for {len(completions)}")
        except _TimedOut as exc:
            scored = [(None, str(exc))] * len(completions)
        except Exception as exc:  # noqa: BLE001 — a verifier failure is recorded, not a 0.0
            scored = [(None, f"{type(exc).__name__}: {exc}")] * len(completions)
        for part, (score, error) in zip(parts, scored):
            part[name] = score
            if error:
                part[f"{name}_error"] = error
    totals = [
        sum(weights[n] * p[n] for n in weights if p.get(n) is not None) for p in parts
    ]
    return totals, parts
