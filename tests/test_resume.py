"""A run killed with SIGKILL at any moment and resumed ends exactly like an uninterrupted one."""

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

ARGS = ["run", "tiny", "--quiet", "pretrain.checkpoint_every=5", "rl.checkpoint_every=1",
        "rl.beta=0.05",  # with a reference model, so its restore is tested too
        "task.eval_problems=64", "eval.batch_size=8",  # an evaluation long enough to kill in
        "run.threads=1"]  # one thread: on a CPU with AMX, two-thread fp32 runs of the same config
# differ in the 7th digit from one process to the next (docs/measurements.md, "two kernel
# paths"), with or without a kill; what this test checks is the resume, so it takes that away


def _cli(args, cwd):
    return subprocess.Popen([sys.executable, "-m", "zeroth.cli", *args], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _fingerprint(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    summary.pop("wall_s")
    summary.pop("run")
    db = sqlite3.connect(run / "ledger.sqlite")
    rollouts = db.execute("select phase, step, prompt_idx, sample_idx, completion, rewards, "
                          "advantage from rollouts order by phase, step, prompt_idx, sample_idx"
                          ).fetchall()
    evals = db.execute("select phase, problem_idx, sample_idx, completion, correct from evals "
                       "order by phase, problem_idx, sample_idx").fetchall()
    metrics = [(p, s, {k: v for k, v in json.loads(d).items() if not k.startswith("time_")})
               for p, s, d in db.execute("select phase, step, data from metrics "
                                         "order by phase, step").fetchall()]
    db.close()
    return {"summary": summary, "rollouts": rollouts, "evals": evals, "metrics": metrics}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """The uninterrupted run every killed one must end as (read it only: copy it to change it)."""
    cwd = tmp_path_factory.mktemp("ref")
    proc = _cli(ARGS + ["run.name=ref"], cwd)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    return cwd / "runs" / "ref"


@pytest.fixture(scope="module")
def reference(finished):
    return _fingerprint(finished)


def _wait_for(run: Path, tag_prefix: str, timeout: float = 120) -> None:
    latest = run / "checkpoints" / "LATEST"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if latest.is_file() and latest.read_text().strip().startswith(tag_prefix):
            return
        time.sleep(0.005)
    raise AssertionError(f"no checkpoint {tag_prefix}* within {timeout}s")


# kill points (checkpoint seen, then a delay in seconds): between pre-training checkpoints, in
# the middle of an RL step, right at the start of RL, in the final evaluation (after the last
# checkpoint); each run is killed twice, the second time after a resume.
# An RL step of the tiny run takes about 40 ms and its final evaluation about 400 ms (on 2 cores):
# every delay ends well before the run would finish.
@pytest.mark.parametrize("kills", [
    [("pretrain-000005", 0.02), ("rl-000001", 0.02)], [("rl-000000", 0.0), ("rl-000004", 0.05)],
])
def test_kill_and_resume_matches_uninterrupted(tmp_path, reference, kills):
    run = tmp_path / "runs" / "k"
    proc = _cli(ARGS + ["run.name=k"], tmp_path)
    for tag, delay in kills:
        _wait_for(run, tag)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (run / "summary.json").exists()
        proc = _cli(["run", "--resume", str(run), "--quiet"], tmp_path)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert _fingerprint(run) == reference


def test_resume_of_a_finished_run_changes_nothing(tmp_path, finished, reference):
    run = tmp_path / "runs" / "ref"
    shutil.copytree(finished, run)
    before = (run / "summary.json").read_bytes()
    assert _cli(["run", "--resume", str(run), "--quiet"], tmp_path).wait(timeout=300) == 0
    assert (run / "summary.json").read_bytes() == before
    assert _fingerprint(run) == reference
