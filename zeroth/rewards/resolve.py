"""Find a reward function by name: a built-in, `module:function`, or `path/to/file.py:function`.

A relative file named in a recipe is looked for beside the recipe first (`beside`, called by
zeroth.config.load_config), then in the current directory; a run directory's config.yaml holds
it as an absolute path (`absolute_reference`), so a run resumes from any folder.

Users bring their own rewards in TRL's convention, `fn(completions, **columns)`, and name them
in a recipe's `rl.reward_weights` next to the built-ins.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from zeroth.errors import UserError


def _from_file(path: str, attr: str, what: str = "reward"):
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"{what} '{path}:{attr}': file '{path}' does not exist")
    spec = importlib.util.spec_from_file_location(f"zeroth_user_{what}s_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 — any error in the user's file is reported in one line
        raise UserError(f"{what} file '{path}' failed to import: {type(exc).__name__}: {exc}"
                        ) from None
    return module


def _split(name: str) -> tuple[str, str]:
    where, attr = name.rsplit(":", 1)
    return where, attr


def absolute_reference(name: str) -> str:
    """`file.py:function` with the file made absolute (so a run resumes from any folder);
    other names unchanged."""
    if ":" not in name:
        return name
    where, attr = _split(name)
    return f"{Path(where).expanduser().resolve()}:{attr}" if where.endswith(".py") else name


def beside(name: str, folder: str | Path) -> str:
    """`file.py:function` with a relative file that lies in `folder` (a recipe's) made absolute;
    every other name unchanged (a relative file is then looked for in the current directory)."""
    if ":" not in name:
        return name
    where, attr = _split(name)
    file = Path(folder) / where
    if not where.endswith(".py") or Path(where).expanduser().is_absolute() or not file.is_file():
        return name
    return f"{file.resolve()}:{attr}"


def rename_rewards(weights, pipeline, rename):
    """`weights` (a reward name -> weight mapping, or anything else, returned as it is) with
    every name passed through `rename`; the `rl.reward_weights` of the rl entries of `pipeline`
    (a run.pipeline list) are renamed in place too, since a stage may name reward files."""
    def renamed(mapping):
        if not isinstance(mapping, dict):
            return mapping
        return {rename(k) if isinstance(k, str) else k: w for k, w in mapping.items()}

    for entry in pipeline if isinstance(pipeline, list) else []:
        body = entry.get("rl") if isinstance(entry, dict) else None
        if isinstance(body, dict) and "reward_weights" in body:
            body["reward_weights"] = renamed(body["reward_weights"])
    return renamed(weights)


def resolve_reward(name: str, builtins: dict):
    """The reward function called `name`; UserError naming it when there is none."""
    if name in builtins:
        return builtins[name]
    if ":" not in name:
        raise UserError(f"unknown reward '{name}' — use one of {', '.join(sorted(builtins))}, "
                        "'module:function' or 'path/to/file.py:function'")
    return find_function(name, "reward")


def find_function(name: str, what: str):
    """The function `module:function` or `path/to/file.py:function` names (a user's reward or
    task loader); a UserError naming the `what` when there is none."""
    where, attr = _split(name)
    if where.endswith(".py"):
        module = _from_file(where, attr, what)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise UserError(f"{what} '{name}': cannot import module '{where}' ({exc}) — put it "
                            f"on PYTHONPATH, or name its file: path/to/{where.split('.')[-1]}.py:"
                            f"{attr}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UserError(f"{what} '{name}': '{where}' has no function '{attr}'")
    return fn
