"""Name -> implementation registries that can be listed without importing what they name.

Tasks, rewards, engines, advantage estimators, loss aggregations and stages are each chosen by
name in a recipe. Config checks need the names at once (before torch loads, so a typo is
answered in well under a second); the run needs the implementation. A `Registry` maps each
name to "module:attribute" (or to a whole "module") and imports it on first use, so adding one
is one module and one entry in the package that owns the registry.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterator, MutableMapping
from typing import Any


class Registry(MutableMapping):
    """A mapping name -> object, loaded from "module:attribute" on first access. Setting an
    entry registers one (a "module:attribute" text, or the object itself): a plugin or a test
    adds an engine, a stage or an estimator without editing zeroth."""

    def __init__(self, kind: str, entries: dict[str, str]):
        self.kind, self._entries, self._loaded = kind, dict(entries), {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._entries:
            raise KeyError(self.unknown(name))
        if name not in self._loaded:
            module, _, attr = self._entries[name].partition(":")
            loaded = importlib.import_module(module)
            self._loaded[name] = getattr(loaded, attr) if attr else loaded
        return self._loaded[name]

    def __setitem__(self, name: str, target: Any) -> None:
        self._loaded.pop(name, None)
        self._entries[name] = target if isinstance(target, str) else None
        if not isinstance(target, str):
            self._loaded[name] = target

    def __delitem__(self, name: str) -> None:
        del self._entries[name]
        self._loaded.pop(name, None)

    def __contains__(self, name: object) -> bool:  # a name check imports nothing
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def unknown(self, name: Any) -> str:
        """'unknown <kind> X — did you mean Y? one of: ...' for a name not registered."""
        close = difflib.get_close_matches(str(name), list(self._entries), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return f"unknown {self.kind} {name!r} — {hint}one of: {', '.join(self._entries)}"
