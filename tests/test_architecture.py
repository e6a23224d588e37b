"""The house as docs/architecture.md describes it: folders that follow the data, no import
circle, short functions, registries that a config check reads without torch, and the map's
examples of adding a task, a reward and an advantage estimator working as written."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "zeroth"
DOC = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the zeroth modules it imports anywhere in its body (lazy imports included)."""
    mods = _modules()

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {m: set() for m in mods}
    for mod, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                target = owner(name) if name.startswith("zeroth") else None
                if target and target != mod:
                    graph[mod].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: strongly connected groups of more than one module."""
    index, low, stack, found, counter = {}, {}, [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while not group or group[-1] != v:
                group.append(stack.pop())
            if len(group) > 1:
                found.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_anywhere():
    graph = import_graph()
    assert len(graph) > 60 and graph["zeroth.stages.rl"]  # the graph is real
    assert cycles(graph) == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_folder_list_is_the_documented_one():
    packages = sorted(p.name for p in PACKAGE.iterdir()
                      if p.is_dir() and (p / "__init__.py").is_file())
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 6, top  # zeroth/ itself holds only a handful of modules
    listed = re.search(r"```\nzeroth/\n(.*?)```", DOC, re.DOTALL).group(1)
    names = re.findall(r"^  (\w+)(?:/|\.py)", listed, re.MULTILINE)
    assert sorted(n for n in names if (PACKAGE / n).is_dir()) == packages
    assert {f"{n}.py" for n in names if not (PACKAGE / n).is_dir()} <= set(top)


def test_no_function_is_longer_than_sixty_lines():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            is_function = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            if is_function and node.end_lineno - node.lineno + 1 > 60:
                long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert long == []


def test_every_stage_has_the_one_entry_point_and_a_config_section():
    from zeroth.config import Config
    from zeroth.stages import STAGES

    assert list(STAGES) == ["pretrain", "sft", "rl", "rejection", "distill"]
    for kind, module in STAGES.items():
        assert callable(module.run) and isinstance(module.CHANGES_MODEL, bool), kind
        assert hasattr(Config(), kind), kind
    from zeroth.stages import eval as evaluation

    assert callable(evaluation.run)


def test_registries_list_names_without_importing_what_they_name():
    code = ("import sys, json; from zeroth.algorithms import ADVANTAGES, LOSS_AGGREGATIONS; "
            "from zeroth.rollout import ENGINES; from zeroth.stages import STAGES; "
            "names = [list(r) for r in (ADVANTAGES, LOSS_AGGREGATIONS, ENGINES, STAGES)]; "
            "ok = 'torch' in ENGINES and 'grpo' in ADVANTAGES; "
            "print(json.dumps([names, ok, 'torch' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().endswith("true, false]")


def _example(heading: str) -> list[str]:
    """The python code blocks under `heading` in docs/architecture.md."""
    section = DOC.split(f"### {heading}\n", 1)[1].split("\n### ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


def test_the_documented_task_example_trains(monkeypatch, tmp_path):
    from zeroth.config import load_config
    from zeroth.tasks import TASKS, load_task

    namespace: dict = {}
    exec(_example("A task")[0], namespace)  # noqa: S102 — the documentation's own code
    monkeypatch.setitem(TASKS, "parity", namespace["load"])
    cfg = load_config("tiny", ["task.name=parity", f"run.out_dir={tmp_path}"])
    task = load_task(cfg)
    rows = task.eval_rows(8, 0)
    assert len(rows) == 8 and {r["answer"] for r in rows} <= {"0", "1"}
    text, correct = task.demonstration(rows[0], __import__("random").Random(0))
    assert "<answer>" in text and isinstance(correct, bool)
    right = [f"<answer>{r['answer']}</answer>" for r in rows]
    assert task.rewards["correct"](right, **{k: [r.get(k) for r in rows] for k in rows[0]}) \
        == [1.0] * 8


def test_the_documented_reward_and_advantage_examples_work(monkeypatch):
    from zeroth.algorithms import ADVANTAGES, advantages
    from zeroth.config import load_config
    from zeroth.errors import UserError

    reward: dict = {}
    exec(_example("A reward")[0], reward)  # noqa: S102
    assert reward["brevity"](["short", "x" * 300]) == [1.0, 0.0]
    namespace = dict(vars(advantages))
    exec(_example("An algorithm")[0], namespace)  # noqa: S102
    with pytest.raises(UserError, match="advantage estimator"):
        load_config(None, ["rl.advantage=max_baseline"])
    monkeypatch.setitem(ADVANTAGES, "max_baseline", namespace["max_baseline_advantages"])
    cfg = load_config(None, ["rl.advantage=max_baseline"])
    adv = ADVANTAGES[cfg.rl.advantage](torch.tensor([1.0, 0.0, 0.0, 0.0]), 2, False, 1e-4)
    assert adv.tolist() == [0.0, -1.0, 0.0, 0.0]
