"""Run at the start of every Python process zeroth starts while it hides mismatched torch
companions (see zeroth/__init__.py): vLLM's helper processes and `vllm serve` import
transformers too. Importing zeroth applies the same rule there; another sitecustomize further
on the path still runs."""

import importlib.util
import os
import sys

import zeroth  # noqa: F401  (hides the companions in this process)

_here = os.path.dirname(os.path.abspath(__file__))
for _entry in sys.path:
    if _entry and os.path.abspath(_entry) != _here:
        _spec = importlib.machinery.PathFinder.find_spec("sitecustomize", [_entry])
        if _spec is not None and _spec.loader is not None:
            _spec.loader.exec_module(importlib.util.module_from_spec(_spec))
            break
