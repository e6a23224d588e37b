"""Refactoring changes no result: tiny runs of every stage kind, pinned.

`tests/data/pinned_runs.json` holds the fingerprints of four tiny runs made before the code was
rearranged (issue 15): the r1 pipeline (pretrain, sft, rl, rejection, sft, rl), the distill
recipe, GRPO with a reference model and DAPO's dynamic sampling. A fingerprint is the run's
summary, every step's metrics (timers left out), and a digest of every rollout and evaluation
sample (prompt, completion, tokens, rewards, advantage) and of the final weights. Anything that
changes what a run samples, scores or learns changes it. The numbers are exact on the machine
kind they were pinned on (the torch build and CPU kernels: `machine()`), so the file holds one
set of pins per kind; on a kind with none the test says so and skips. `python
tests/test_unchanged.py --write` pins the kind it runs on and keeps the others' pins: run it at
a commit before a change to add a kind. For a change meant to alter results, regenerate with
`--write --only-this-kind` (the other kinds' pins would be stale) and say why in the commit.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import sys
from pathlib import Path

import pytest

PINNED = Path(__file__).parent / "data" / "pinned_runs.json"

RUNS = {  # name -> (recipe, extra overrides); all on top of test_pipeline.SMALL
    "r1": ("r1", []),
    "distill": ("distill", []),
    "grpo_ref": (None, ["rl.beta=0.05", "rl.mu=2", "rl.minibatch_size=8"]),
    "dapo": (None, ["rl.algorithm=dapo", "rl.steps=3", "rl.max_sample_rounds=2"]),
}


def _rounded(value):
    """Floats to 10 significant digits (the summary's numbers pass through JSON)."""
    if isinstance(value, float):
        return float(f"{value:.10g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def _short(value):
    return value if value is None else f"{value:.8g}"


def _digest(rows) -> str:
    return hashlib.sha256(json.dumps(rows, default=str).encode()).hexdigest()


def fingerprint(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("wall_s", "run"):
        summary.pop(key)
    db = sqlite3.connect(run_dir / "ledger.sqlite")
    metrics = []
    for phase, step, data in db.execute("select phase, step, data from metrics order by id"):
        values = {k: v for k, v in json.loads(data).items() if not k.startswith("time_")}
        metrics.append([phase, step, _rounded(values)])
    rollouts = db.execute(
        "select phase, step, prompt_idx, sample_idx, prompt, completion, n_tokens, rewards, "
        "reward, advantage, answer, extra from rollouts order by phase, step, prompt_idx, "
        "sample_idx").fetchall()
    evals = db.execute("select phase, problem_idx, sample_idx, prompt, completion, n_tokens, "
                       "correct from evals order by phase, problem_idx, sample_idx").fetchall()
    db.close()
    rollouts = [list(r[:8]) + [_short(r[8]), _short(r[9]), *r[10:]] for r in rollouts]
    weights = (run_dir / "final" / "model.safetensors").read_bytes()
    return {"summary": _rounded(summary), "metrics": metrics, "rollouts": _digest(rollouts),
            "n_rollouts": len(rollouts), "evals": _digest(evals), "n_evals": len(evals),
            "weights": hashlib.sha256(weights).hexdigest()}


def make_run(tmp_path: Path, name: str) -> dict:
    """Run `name` of RUNS in tmp_path with the coin verifier (so rejection keeps samples)."""
    from test_pipeline import SMALL  # the tiny recipe with small sft, rejection and distill

    from zeroth.config import load_config
    from zeroth.pipeline.run import create_run_dir, execute, preflight
    from zeroth.record.progress import Display

    recipe, extra = RUNS[name]
    cfg = load_config(recipe, SMALL + [f"run.out_dir={tmp_path}", f"run.name={name}", *extra])
    preflight(cfg)
    run_dir = create_run_dir(cfg, recipe or "default")
    execute(run_dir, cfg, Display(quiet=True))
    return fingerprint(run_dir)


def machine() -> str:
    """What float results depend on besides the code: torch's build and the CPU's kernels. Two
    x86 CPUs with the same capability (AVX512) gave different fp32 losses in the 7th digit, one
    with AMX and one without, so AMX is named too."""
    import torch

    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}" + (
        ", AMX" if amx else "")


def pinned_kinds() -> dict:
    """{machine kind: {run name: fingerprint}}: the pins of every kind they were made on."""
    return json.loads(PINNED.read_text())["kinds"]


@pytest.mark.parametrize("name", sorted(RUNS))
def test_tiny_runs_give_the_pinned_results(tmp_path, coin_tasks, name):
    kinds = pinned_kinds()
    if machine() not in kinds:  # another float kernel: other numbers, not another code
        pytest.skip(f"pinned on {', '.join(kinds)}; this is {machine()}: pin this kind too "
                    "with `python tests/test_unchanged.py --write` at a commit before the change")
    pinned = kinds[machine()][name]
    got = make_run(tmp_path, name)
    assert got["summary"] == pinned["summary"]
    assert got["metrics"] == pinned["metrics"]
    assert (got["n_rollouts"], got["n_evals"]) == (pinned["n_rollouts"], pinned["n_evals"])
    assert got["rollouts"] == pinned["rollouts"]
    assert got["evals"] == pinned["evals"]
    assert got["weights"] == pinned["weights"]


if __name__ == "__main__" and "--write" in sys.argv:
    import os
    import tempfile

    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    from conftest import with_coin

    from zeroth.pipeline import run as run_module

    run_module.load_task = with_coin(run_module.load_task)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in sorted(RUNS):
            runs[name] = make_run(Path(tmp), name)
            print(name, runs[name]["summary"].get("final_pass1"))
    kinds = pinned_kinds() if "--only-this-kind" not in sys.argv else {}
    kinds[machine()] = runs  # this kind's pins replaced, the other kinds' kept
    PINNED.write_text(json.dumps({"kinds": kinds}, indent=1) + "\n")
