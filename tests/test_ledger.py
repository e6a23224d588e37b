"""Tests of zeroth.pipeline.ledger: round trips of every method, truncation, and crash safety."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from zeroth.pipeline import ledger as _ledger
from zeroth.pipeline.ledger import Ledger

REPO = Path(__file__).resolve().parents[1]


def _rollout(prompt_idx: int, sample_idx: int, **changes) -> dict:
    row = {
        "prompt_idx": prompt_idx,
        "sample_idx": sample_idx,
        "prompt": f"What is {prompt_idx}+1?",
        "completion": f"<answer>{prompt_idx + 1}</answer> ✓",
        "n_tokens": 7 + sample_idx,
        "rewards": {"correct": 1.0, "format": 0.5, "length": None},
        "reward": 1.5,
        "advantage": 0.25,
        "answer": str(prompt_idx + 1),
        "extra": {"parsed": str(prompt_idx + 1), "tags": ["a", "b"]},
    }
    row.update(changes)
    return row


@pytest.fixture
def ledger(tmp_path):
    led = Ledger(tmp_path / "run" / "ledger.sqlite")
    yield led
    led.close()


def test_creates_file_in_wal_mode(tmp_path):
    path = tmp_path / "nested" / "ledger.sqlite"
    led = Ledger(path)
    led.set_meta("status", "running")
    assert path.is_file()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    led.close()
    led.close()  # idempotent
    with pytest.raises(sqlite3.ProgrammingError):
        led.set_meta("status", "done")


def test_metrics_round_trip_and_order(ledger):
    ledger.log_metrics("pretrain", 2, {"loss": 2.5, "lr": 1e-3})
    ledger.log_metrics("pretrain", 1, {"loss": 3.0, "lr": 1e-3})
    ledger.log_metrics("rl", 1, {"reward": 0.1, "nan": float("nan"), "inf": float("inf")})
    ledger.log_metrics("pretrain", 3, {"loss": 2.0})
    ledger.log_metrics("pretrain", 3, {"grad_norm": 0.7})  # same step: merged
    rows = ledger.metrics()
    assert [(r["phase"], r["step"]) for r in rows] == [
        ("pretrain", 1),
        ("pretrain", 2),
        ("pretrain", 3),
        ("rl", 1),
    ]
    assert rows[0] == {"phase": "pretrain", "step": 1, "loss": 3.0, "lr": 1e-3}
    assert rows[2] == {"phase": "pretrain", "step": 3, "loss": 2.0, "grad_norm": 0.7}
    assert math.isnan(rows[3]["nan"]) and rows[3]["inf"] == float("inf")
    assert [r["step"] for r in ledger.metrics("rl")] == [1]
    assert ledger.metrics("missing") == []


def test_metrics_accept_tensor_and_numpy_scalars(ledger):
    torch = pytest.importorskip("torch")
    np = pytest.importorskip("numpy")
    ledger.log_metrics("rl", 0, {"t": torch.tensor(1.5), "n": np.float32(0.5), "v": [1, 2]})
    assert ledger.metrics("rl") == [{"phase": "rl", "step": 0, "t": 1.5, "n": 0.5, "v": [1, 2]}]


def test_rollouts_round_trip(ledger):
    rows = [_rollout(0, 0), _rollout(0, 1, advantage=None, extra=None, answer=None)]
    ledger.log_rollouts("rl", 1, rows)
    ledger.log_rollouts("rl", 2, [_rollout(1, 0, rewards={"correct": None, "format": None})])
    ledger.log_rollouts("eval-ish", 1, [_rollout(5, 0)])
    got = ledger.rollouts("rl", 1)
    assert len(got) == 2
    for want, have in zip(rows, got, strict=True):
        assert have == {"phase": "rl", "step": 1, "task": None, "difficulty": None, **want}
    assert got[1]["advantage"] is None and got[1]["extra"] is None and got[1]["answer"] is None
    assert got[0]["rewards"]["length"] is None  # JSON null survives
    assert ledger.rollouts("rl", 2)[0]["rewards"] == {"correct": None, "format": None}
    assert [r["step"] for r in ledger.rollouts("rl")] == [1, 1, 2]
    assert len(ledger.rollouts()) == 4
    assert len(ledger.rollouts(step=1)) == 3
    assert ledger.rollouts("rl", 99) == []


def test_log_rollouts_empty_and_bad_row_is_atomic(ledger):
    ledger.log_rollouts("rl", 1, [])
    bad = [_rollout(0, 0), {"prompt_idx": 1}]  # second row lacks fields
    with pytest.raises(KeyError):
        ledger.log_rollouts("rl", 1, bad)
    assert ledger.rollouts() == []  # nothing of the failed call was kept


def test_evals_round_trip(ledger):
    rows = [
        {"problem_idx": 0, "sample_idx": -1, "prompt": "p0", "completion": "c0",
         "n_tokens": 3, "correct": True, "answer": "4"},
        {"problem_idx": 0, "sample_idx": 0, "prompt": "p0", "completion": "c1",
         "n_tokens": 5, "correct": 0, "answer": None},
    ]  # fmt: skip
    ledger.log_eval("eval-before", rows)
    ledger.log_eval("eval-after", rows[:1])
    got = ledger.evals("eval-before")
    assert got == [{"phase": "eval-before", **rows[0]}, {"phase": "eval-before", **rows[1]}]
    assert got[1]["correct"] is False
    assert len(ledger.evals("eval-after")) == 1
    assert ledger.evals("nothing") == []


def test_truncate_after_and_clear_phase(ledger):
    for step in range(1, 6):
        ledger.log_metrics("rl", step, {"reward": step / 10})
        ledger.log_rollouts("rl", step, [_rollout(0, 0), _rollout(0, 1)])
        ledger.log_metrics("pretrain", step, {"loss": 1.0})
    row = {"problem_idx": 0, "sample_idx": -1, "prompt": "p", "completion": "c", "n_tokens": 1}
    ledger.log_eval("rl", [{**row, "correct": True, "answer": "a"}])
    ledger.truncate_after("rl", 3)
    assert [r["step"] for r in ledger.metrics("rl")] == [1, 2, 3]
    assert sorted({r["step"] for r in ledger.rollouts("rl")}) == [1, 2, 3]
    assert len(ledger.metrics("pretrain")) == 5  # other phases untouched
    assert len(ledger.evals("rl")) == 1  # evals are not step-indexed
    ledger.log_metrics("rl", 4, {"reward": 0.9})  # the resumed run writes step 4 again
    assert ledger.metrics("rl")[-1] == {"phase": "rl", "step": 4, "reward": 0.9}
    ledger.clear_phase("rl")
    assert ledger.metrics("rl") == [] and ledger.rollouts("rl") == [] and ledger.evals("rl") == []
    assert len(ledger.metrics("pretrain")) == 5


def test_meta_round_trip(ledger, tmp_path):
    assert ledger.get_meta("config") is None
    assert ledger.get_meta("config", {"x": 1}) == {"x": 1}
    config = {"run": {"name": "r", "seed": 3}, "lr": 1e-4, "tags": [1, None]}
    ledger.set_meta("config", config)
    ledger.set_meta("status", "running")
    ledger.set_meta("status", "done")
    assert ledger.get_meta("config") == config
    assert ledger.get_meta("status") == "done"
    ledger.close()
    again = Ledger(ledger.path)  # persisted across connections
    assert again.get_meta("status") == "done"
    again.close()


_WRITER = textwrap.dedent(
    """
    import sys
    from zeroth.pipeline.ledger import Ledger
    led = Ledger(sys.argv[1])
    rows = [
        {"prompt_idx": i, "sample_idx": j, "prompt": "p" * 200, "completion": "c" * 500,
         "n_tokens": 9, "rewards": {"correct": None, "format": 1.0}, "reward": 1.0,
         "advantage": None, "answer": "4", "extra": {"k": [1, 2, 3]}}
        for i in range(4) for j in range(2)
    ]
    step = 0
    while True:
        led.log_rollouts("rl", step, rows)
        led.log_metrics("rl", step, {"a": 1.0, "b": 2.0})
        if step == 0:
            print("ready", flush=True)
        step += 1
    """
)


@pytest.mark.skipif(os.name != "posix", reason="needs SIGKILL")
def test_sigkill_mid_logging_leaves_whole_calls(tmp_path):
    path = tmp_path / "ledger.sqlite"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    led = Ledger(path)
    rollouts = led.rollouts("rl")
    metrics = led.metrics("rl")
    steps = [r["step"] for r in metrics]
    assert len(rollouts) % 8 == 0 and len(rollouts) >= 8
    n_steps = len(rollouts) // 8
    assert steps == list(range(len(steps)))
    assert len(steps) in (n_steps - 1, n_steps)  # killed between the two calls, or after both
    assert all(r["rewards"] == {"correct": None, "format": 1.0} for r in rollouts)
    assert all(m["a"] == 1.0 and m["b"] == 2.0 for m in metrics)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    led.log_metrics("rl", n_steps, {"a": 3.0})  # still writable after the crash
    assert led.metrics("rl")[-1]["a"] == 3.0
    led.close()


def test_task_and_difficulty_columns_and_old_ledgers_gain_them(tmp_path):
    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)  # a ledger written before the task/difficulty columns existed
    old.executescript(_ledger._SCHEMA.replace("    extra TEXT,\n    task TEXT,\n    difficulty TEXT\n",
                                              "    extra TEXT\n"))
    assert "task" not in {r[1] for r in old.execute("PRAGMA table_info(rollouts)")}
    old.close()
    ledger = Ledger(path)
    ledger.log_rollouts("rl", 1, [{**_rollout(0, 0), "task": "countdown", "difficulty": 3}])
    row = ledger.rollouts("rl")[0]
    assert row["task"] == "countdown" and row["difficulty"] == "3"


def test_readonly_ledger_reads_a_live_run_and_refuses_writes(tmp_path):
    path = tmp_path / "l.sqlite"
    with pytest.raises(FileNotFoundError):
        Ledger(path, readonly=True)
    writer = Ledger(path)
    writer.log_metrics("rl", 1, {"reward": 0.5})
    reader = Ledger(path, readonly=True)
    assert reader.metrics("rl") == [{"phase": "rl", "step": 1, "reward": 0.5}]
    writer.log_metrics("rl", 2, {"reward": 0.75})  # the run goes on writing
    assert [m["step"] for m in reader.metrics("rl")] == [1, 2]
    with pytest.raises(sqlite3.OperationalError):
        reader.log_metrics("rl", 3, {"reward": 1.0})
    assert [m["step"] for m in writer.metrics("rl")] == [1, 2]
