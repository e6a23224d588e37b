"""zeroth.pipeline.runstate: running / finished / stopped from the run's lock, and where a run stopped.

A real child process holds the lock the way `zeroth run` does (run.py lock_run_dir: the file
opened for writing, flock LOCK_EX | LOCK_NB) and is killed with SIGKILL, as a user's kill -9
or the out-of-memory killer would.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zeroth.pipeline import runstate
from zeroth.pipeline.ledger import Ledger
from zeroth.pipeline.runstate import describe, position, run_state

HOLD_LOCK = """
import fcntl, sys
handle = open(sys.argv[1], "w")  # as zeroth/pipeline/run.py lock_run_dir
fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("locked", flush=True)
sys.stdin.read()  # until the test closes stdin, or kills us
"""


class LockHolder:
    """A child process holding `run_dir/.lock` like a live `zeroth run`."""

    def __init__(self, run_dir: Path):
        self.proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir / ".lock")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "locked"

    def kill(self) -> None:
        """SIGKILL, then reap it: once wait() returns, the kernel has dropped its lock."""
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait() == -signal.SIGKILL

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        self.proc.stdin.close()
        self.proc.stdout.close()


@pytest.fixture
def holder():
    made: list[LockHolder] = []
    yield lambda run_dir: made.append(LockHolder(run_dir)) or made[-1]
    for h in made:
        h.close()


def make_run(run_dir: Path, steps: int = 34, ckpt: int | None = 30, stage: str = "rl") -> Path:
    """A run folder as `zeroth run` leaves it: config, ledger (pretrain 10, 20, the start
    evaluation, then `stage` steps 1..steps), and checkpoints/LATEST naming `stage`-`ckpt`."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("run: {name: x}\n")
    ledger = Ledger(run_dir / "ledger.sqlite")
    for step in (10, 20):
        ledger.log_metrics("pretrain", step, {"loss": 1.0 / step})
    ledger.log_metrics("eval_pretrain", 0, {"pass@1": 0.1})
    for step in range(1, steps + 1):
        ledger.log_metrics(stage, step, {"reward": step / 100})
    ledger.close()
    if ckpt is not None:
        save_checkpoint(run_dir, f"{stage}-{ckpt:06d}", {"index": 1, "step": ckpt})
    return run_dir


def save_checkpoint(run_dir: Path, tag: str, state: dict) -> None:
    folder = run_dir / "checkpoints" / tag
    folder.mkdir(parents=True)
    (folder / "state.json").write_text(json.dumps(state))
    (run_dir / "checkpoints" / "LATEST").write_text(tag)


def files(run_dir: Path) -> dict[str, tuple[int, int] | None]:
    """Every file below the run folder with its inode and modification time; only the names of
    SQLite's shared-memory and log files (any reader of a WAL database maps and may touch the
    first)."""
    return {str(p.relative_to(run_dir)): None if p.name.endswith(("-shm", "-wal"))
            else (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_a_killed_run_goes_from_running_to_stopped_where_it_stopped(tmp_path, holder,
                                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = make_run(tmp_path / "runs" / "a")
    child = holder(run)
    state = run_state(run)
    assert state["status"] == "running" and state["text"] == "running: rl step 34"
    assert state["resume"] is None
    child.kill()
    before = files(run)
    state = run_state(run)
    assert state == {"status": "stopped", "stage": "rl", "step": 34, "checkpoint": "rl-000030",
                     "after": None, "text": "stopped at rl step 34 (resume from rl-000030)",
                     "resume": "zeroth run --resume runs/a"}
    assert files(run) == before  # looked at, nothing created or touched (.lock included)


def test_the_probe_sees_a_lock_that_proc_locks_does_not_list(tmp_path, holder, monkeypatch):
    """A run in another PID namespace (a container) is missing from our /proc/locks; a system
    without /proc has none: the shared-lock probe still finds the holder, and lets go."""
    run = make_run(tmp_path / "a")
    child = holder(run)
    for listed in (False, None):
        monkeypatch.setattr(runstate, "_listed_in_proc_locks", lambda st, v=listed: v)
        assert runstate.lock_held(run) is True
        assert run_state(run)["status"] == "running"
    child.kill()
    assert runstate.lock_held(run) is False and run_state(run)["status"] == "stopped"
    with open(run / ".lock", "w") as handle:  # the probe let go: a resume can lock at once
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="reads Linux /proc/locks")
def test_proc_locks_lists_the_live_lock(tmp_path, holder, monkeypatch):
    run = make_run(tmp_path / "a")
    holder(run)
    monkeypatch.setattr(runstate, "_probe", lambda path: None)  # /proc/locks alone
    assert runstate.lock_held(run) is True


def test_lock_file_of_a_proc_locks_line(tmp_path, monkeypatch):
    (tmp_path / ".lock").touch()
    st = (tmp_path / ".lock").stat()
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}"
    other = f"{os.major(st.st_dev) + 1:02x}:{os.minor(st.st_dev):02x}"

    def listed(text):
        import io

        monkeypatch.setattr(runstate, "open", lambda *a, **k: io.StringIO(text), raising=False)
        return runstate._listed_in_proc_locks(st)

    assert listed(f"1: FLOCK  ADVISORY  WRITE 42 {dev}:{st.st_ino} 0 EOF\n")
    assert not listed(f"1: -> FLOCK  ADVISORY  WRITE 43 {dev}:{st.st_ino} 0 EOF\n")  # a waiter
    assert not listed(f"1: FLOCK  ADVISORY  READ 44 {dev}:{st.st_ino} 0 EOF\n")  # a probe
    assert not listed(f"1: FLOCK  ADVISORY  WRITE 42 {other}:{st.st_ino} 0 EOF\n")
    assert not listed(f"1: FLOCK  ADVISORY  WRITE 42 {dev}:{st.st_ino + 1} 0 EOF\n")
    line = ["1:", "POSIX", "ADVISORY", "READ", "7", "fe:01:99", "0", "EOF"]
    assert runstate._lock_file(line) == (254, 1, 99)


def test_a_readers_shared_lock_leaves_a_finished_run_finished(tmp_path):
    import fcntl

    run = make_run(tmp_path / "a")
    (run / ".lock").touch()
    (run / "summary.json").write_text("{}")
    with open(run / ".lock") as reader:  # another viewer's probe, caught in the act
        fcntl.flock(reader, fcntl.LOCK_SH | fcntl.LOCK_NB)
        assert run_state(run)["status"] == "finished"


def test_finished_and_a_finished_run_resumed_to_extend_it(tmp_path, holder):
    run = make_run(tmp_path / "a")
    (run / ".lock").touch()
    (run / "summary.json").write_text("{}")
    assert run_state(run)["status"] == "finished" and run_state(run)["text"] == "finished"
    child = holder(run)  # `zeroth run --resume` with more steps: summary.json is still there
    assert run_state(run)["status"] == "running"
    child.kill()
    assert run_state(run)["status"] == "finished"


def test_without_a_lock_file_the_ledgers_last_write_decides(tmp_path):
    run = make_run(tmp_path / "old", ckpt=None)
    assert run_state(run)["status"] == "running"  # just written
    for name in ("ledger.sqlite", "ledger.sqlite-wal"):
        if (run / name).exists():
            os.utime(run / name, (time.time() - 3600,) * 2)
    state = run_state(run)
    assert state["status"] == "stopped" and state["step"] == 34
    assert state["text"] == "stopped at rl step 34 (no checkpoint yet: a resume starts over)"
    assert not (run / ".lock").exists()  # never created by looking
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "config.yaml").write_text("run: {name: fresh}\n")
    assert run_state(fresh)["status"] == "starting"  # `zeroth run` is setting it up
    (fresh / "ledger.sqlite").touch()  # the ledger created, nothing in it yet (a real race)
    assert run_state(fresh)["status"] == "starting"
    os.utime(fresh / "config.yaml", (time.time() - 3600,) * 2)
    assert run_state(fresh)["status"] == "stopped"  # set up an hour ago and abandoned


def test_stopped_before_anything_was_logged(tmp_path):
    run = tmp_path / "a"
    run.mkdir()
    (run / ".lock").touch()
    state = run_state(run)
    assert (state["status"], state["stage"], state["step"]) == ("stopped", None, None)
    assert state["text"] == "stopped before its first step (no checkpoint yet: a resume starts " \
                            "over)"


def test_checkpoint_files_that_cannot_be_read(tmp_path):
    run = tmp_path / "a"
    (run / "checkpoints" / "sft-000040").mkdir(parents=True)
    (run / "checkpoints" / "LATEST").write_text("sft-000040\n")  # no state.json: from the tag
    assert runstate.latest_checkpoint(run) == {"tag": "sft-000040", "stage": "sft", "step": 40}
    (run / "checkpoints" / "sft-000040" / "state.json").write_text('{"step": 41}')
    assert runstate.latest_checkpoint(run)["step"] == 41  # state.json has the last word
    for bad in ("", "../x", ".tmp-sft", "\xff"):
        (run / "checkpoints" / "LATEST").write_text(bad, encoding="latin-1")
        assert runstate.latest_checkpoint(run) is None, bad


def phases(*rows: tuple[str, int]) -> dict:
    """position()'s ledger summary from metrics rows (phase, step) in the order logged."""
    out: dict = {}
    for i, (phase, step) in enumerate(rows, start=1):
        first, _, top = out.get(phase, (i, i, step))
        out[phase] = (first, i, max(top, step))
    return out


def ckpt(tag: str) -> dict:
    stage, _, step = tag.rpartition("-")
    return {"tag": tag, "stage": stage, "step": int(step)}


PRETRAIN = [("pretrain", 10), ("pretrain", 20), ("eval_pretrain", 0)]


@pytest.mark.parametrize("checkpoint, rows, where, text", [
    # the ledger is ahead of the checkpoint: steps logged since the last save
    ("rl-000030", [*PRETRAIN, *[("rl", s) for s in range(1, 35)]], ("rl", 34, None),
     "stopped at rl step 34 (resume from rl-000030)"),
    # a stage just begun: its checkpoint of step 0, nothing logged yet
    ("rl-000000", PRETRAIN, ("rl", 0, None), "stopped at rl step 0 (resume from rl-000000)"),
    # pretraining logs every 10 steps: the checkpoint is ahead
    ("pretrain-000015", [("pretrain", 10)], ("pretrain", 15, None),
     "stopped at pretrain step 15 (resume from pretrain-000015)"),
    # the stage ended and was evaluated; the next had not saved yet
    ("rl-000040", [*PRETRAIN, ("rl", 40), ("eval_rl", 0)], ("rl", 40, "eval_rl"),
     "stopped at rl step 40 and its evaluation (resume from rl-000040)"),
    # the next stage logged beyond a checkpoint of the one before
    ("sft-000050", [("sft", 50), ("eval_sft", 0), ("rl", 1), ("rl", 2)], ("rl", 2, None),
     "stopped at rl step 2 (resume from sft-000050)"),
    (None, [("eval_start", 0)], (None, None, "eval_start"),
     "stopped after eval_start (no checkpoint yet: a resume starts over)"),
    (None, [("eval_start", 0), ("rl", 1)], ("rl", 1, None),
     "stopped at rl step 1 (no checkpoint yet: a resume starts over)"),
    (None, [], (None, None, None),
     "stopped before its first step (no checkpoint yet: a resume starts over)"),
])
def test_where_a_run_stopped(checkpoint, rows, where, text):
    c = ckpt(checkpoint) if checkpoint else None
    at = position(c, phases(*rows))
    assert (at["stage"], at["step"], at["after"]) == where
    state = {"status": "stopped", "checkpoint": checkpoint, **at}
    assert describe(state) == text


def test_a_run_without_a_checkpoint_is_placed_by_its_ledger(tmp_path, holder):
    run = make_run(tmp_path / "a", steps=3, ckpt=None, stage="sft")
    holder(run).kill()
    state = run_state(run)
    assert (state["stage"], state["step"], state["checkpoint"]) == ("sft", 3, None)


def test_resume_command_names_the_folder_as_the_user_would_type_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert runstate.resume_command(tmp_path / "runs" / "a") == "zeroth run --resume runs/a"
    assert runstate.resume_command("runs/my run") == "zeroth run --resume 'runs/my run'"
    elsewhere = tmp_path.parent / "other"
    assert runstate.resume_command(elsewhere) == f"zeroth run --resume {elsewhere}"
