"""Faults a run meets, injected into whole tiny runs in this process: SIGTERM, a non-finite
loss, a full disk, a hanging reward, a damaged checkpoint or ledger, a read-only folder. Each
run stops with one clear line or carries on, and nothing it recorded is lost: resumed, it ends
exactly as the uninterrupted run. (bench/faults.py injects the same faults, and SIGKILL, at
every point of the pipeline in child processes; tests/test_resume kills with SIGKILL.)"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from test_resume import _fingerprint as fingerprint  # what a run recorded, less wall times

from zeroth.cli import main
from zeroth.errors import UserError

ARGS = ["run", "tiny", "--quiet", "rl.beta=0.05", "pretrain.checkpoint_every=10"]


def _run(tmp_path, name, *extra, resume=False):
    """zeroth's command line in this process: (exit code, run directory)."""
    run = tmp_path / "runs" / name
    args = ["run", "--resume", str(run), "--quiet", *extra] if resume else \
        [*ARGS, f"run.out_dir={tmp_path / 'runs'}", f"run.name={name}", *extra]
    return main(args), run


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The uninterrupted run every faulted one must end as."""
    code, run = _run(tmp_path_factory.mktemp("ref"), "ref")
    assert code == 0
    return fingerprint(run)


def _on_call(monkeypatch, module, name: str, nth: int, action) -> None:
    """Make the `nth` call (from 1) of `module.name` run `action()` first."""
    original, calls = getattr(module, name), [0]

    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == nth:
            action()
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)


def _latest(run: Path) -> str:
    return (run / "checkpoints" / "LATEST").read_text().strip()


def test_sigterm_then_a_read_only_folder_then_a_damaged_checkpoint(tmp_path, monkeypatch,
                                                                    capsys, reference):
    """One run meets three faults in turn: SIGTERM (a checkpoint at the next step, exit 0), a
    resume into a read-only folder (refused in one line, nothing changed), a bit flipped in
    the checkpoint it saved (the resume falls back to the one before); it ends as the
    uninterrupted run."""
    from zeroth.stages import rl

    _on_call(monkeypatch, rl, "update", 2, lambda: os.kill(os.getpid(), signal.SIGTERM))
    code, run = _run(tmp_path, "t")
    err = capsys.readouterr().err
    assert code == 0
    assert "stopped by SIGTERM; checkpoint rl-000002 saved" in err
    assert "zeroth run --resume" in err
    assert _latest(run) == "rl-000002" and not (run / "summary.json").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back
    monkeypatch.undo()
    _refused_when_read_only(tmp_path, run, monkeypatch, capsys)
    weights = run / "checkpoints" / "rl-000002" / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit in the middle of the weights
    weights.write_bytes(bytes(data))
    capsys.readouterr()
    assert _run(tmp_path, "t", resume=True)[0] == 0
    said = capsys.readouterr()
    assert "checkpoint rl-000002 is damaged" in said.out and "resuming from rl-000000" in said.out
    assert list((run / "checkpoints").glob(".corrupt-rl-000002-*"))  # kept aside
    assert fingerprint(run) == reference


def _refused_when_read_only(tmp_path, run: Path, monkeypatch, capsys) -> None:
    """A resume of `run` on a read-only mount (or, where this process may not mount, with the
    writes refused as a read-only mount refuses them): one line, exit 2, nothing changed."""
    listing = sorted((p.name, p.stat().st_size) for p in run.rglob("*") if p.is_file())
    if shutil.which("unshare") and _can_mount_read_only(tmp_path):
        script = (f"mount --bind {run} {run} && mount -o remount,bind,ro {run} {run} && "
                  f"{sys.executable} -m zeroth run --resume {run} --quiet")
        probe = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True,
                               text=True, timeout=300, check=False)
        code, err = probe.returncode, probe.stderr.strip().splitlines()
    else:
        def refuse(self, *args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system", str(self))

        monkeypatch.setattr(Path, "write_bytes", refuse)
        code, err = _run(tmp_path, run.name, resume=True)[0], capsys.readouterr().err.splitlines()
        monkeypatch.undo()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"zeroth: error: run directory {run} cannot be written")
    assert "nothing was changed" in err[0]
    assert sorted((p.name, p.stat().st_size) for p in run.rglob("*") if p.is_file()) == listing


def test_nonfinite_loss_is_skipped_and_recorded(tmp_path, monkeypatch):
    from zeroth.algorithms import update as update_module

    original, calls = update_module.policy_loss, [0]

    def poisoned(*args, **kwargs):  # the second optimiser step of RL gets a NaN loss
        calls[0] += 1
        loss, stats = original(*args, **kwargs)
        return (loss * float("nan"), stats) if calls[0] == 2 else (loss, stats)

    monkeypatch.setattr(update_module, "policy_loss", poisoned)
    code, run = _run(tmp_path, "n")
    assert code == 0
    db = sqlite3.connect(run / "ledger.sqlite")
    rows = {s: json.loads(d) for s, d in db.execute(
        "select step, data from metrics where phase = 'rl' and data like '%loss%'")}
    db.close()
    assert rows[2]["skipped_steps"] == 1 and all("skipped_steps" not in rows[s] for s in (1, 3))
    from safetensors.torch import load_file

    weights = load_file(run / "final" / "model.safetensors")
    assert all(bool(t.isfinite().all()) for t in weights.values())


def test_nonfinite_steps_in_a_row_stop_the_run(tmp_path, monkeypatch, capsys, reference):
    from zeroth.models import lean

    original = lean.sequence_loss
    monkeypatch.setattr(lean, "sequence_loss",
                        lambda *a, **k: original(*a, **k) * float("nan"))
    code, run = _run(tmp_path, "d", "run.max_nonfinite_steps=2")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert "pretrain step 2: a non-finite loss for 2 steps in a row" in err[-1]
    assert _latest(run) == "pretrain-000000"  # nothing later was saved, nothing was lost
    monkeypatch.undo()
    assert _run(tmp_path, "d", resume=True)[0] == 0
    assert fingerprint(run) == reference


def _full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_at_a_checkpoint_stops_in_one_line(tmp_path, monkeypatch, capsys, reference):
    from zeroth.pipeline import checkpoint

    _on_call(monkeypatch, checkpoint, "fsync_tree", 5, lambda: _full())  # rl-000000
    code, run = _run(tmp_path, "f")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert err[0].startswith("zeroth: error: out of disk space saving checkpoint rl-000000 in "
                             f"{run / 'checkpoints'}: ")
    assert "free there now, it needs about" in err[0]
    assert f"continue with zeroth run --resume {run}" in err[0]
    assert "pretrain-000020 (LATEST), is intact" in err[0]
    assert _latest(run) == "pretrain-000020"
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    monkeypatch.undo()
    assert _run(tmp_path, "f", resume=True)[0] == 0
    assert fingerprint(run) == reference


def test_disk_full_in_the_ledger_keeps_it_whole(tmp_path, monkeypatch, capsys, reference):
    from zeroth.pipeline.ledger import Ledger

    def refuse():
        raise sqlite3.OperationalError("database or disk is full")

    _on_call(monkeypatch, Ledger, "log_rollouts", 3, refuse)  # RL step 3's rollouts
    code, run = _run(tmp_path, "l")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[0].startswith("zeroth: error: out of disk space writing "
                                           f"{run / 'ledger.sqlite'}: ")
    db = sqlite3.connect(run / "ledger.sqlite")
    assert db.execute("pragma integrity_check").fetchone() == ("ok",)
    assert db.execute("select max(step) from rollouts where phase = 'rl'").fetchone() == (2,)
    db.close()
    monkeypatch.undo()
    assert _run(tmp_path, "l", resume=True)[0] == 0
    assert fingerprint(run) == reference


def test_a_hanging_reward_times_out_as_a_verifier_failure(tmp_path, monkeypatch):
    from zeroth.stages import rl

    original, calls = rl.combine, [0]

    def with_a_hang(completions, rows, fns, weights, **kwargs):
        calls[0] += 1
        if calls[0] == 2:  # the second step's verifier never returns
            fns = {**fns, "correct": lambda completions, **_: [_forever()]}
        return original(completions, rows, fns, weights, **kwargs)

    monkeypatch.setattr(rl, "combine", with_a_hang)
    code, run = _run(tmp_path, "h", "rl.reward_timeout_s=1")
    assert code == 0
    db = sqlite3.connect(run / "ledger.sqlite")
    parts = [json.loads(r) for (r,) in db.execute(
        "select rewards from rollouts where phase = 'rl' and step = 2")]
    db.close()
    assert parts and all(p["correct"] is None for p in parts)
    assert all("timed out" in p["correct_error"] for p in parts)


def _forever():
    while True:
        pass


def _rows(ledger: Path) -> dict:
    db = sqlite3.connect(ledger)
    rows = {(table, row[0]): row for table in ("metrics", "rollouts", "evals")
            for row in db.execute(f"select * from {table}")}
    db.close()
    return rows


def test_a_truncated_ledger_is_salvaged_on_resume(tmp_path, monkeypatch, capsys):
    from zeroth.pipeline.ledger import Ledger
    from zeroth.stages import rl

    _on_call(monkeypatch, rl, "update", 3, lambda: os.kill(os.getpid(), signal.SIGTERM))
    assert _run(tmp_path, "s", "task.eval_problems=64")[0] == 0  # a ledger of a few hundred
    monkeypatch.undo()
    ledger = tmp_path / "runs" / "s" / "ledger.sqlite"
    db = sqlite3.connect(ledger)
    db.execute("pragma wal_checkpoint(truncate)")
    db.close()
    before = _rows(ledger)
    os.truncate(ledger, ledger.stat().st_size * 3 // 4)  # the last pages lost, as in a crash
    with pytest.raises(UserError, match="is damaged"):  # a viewer is told in one line
        Ledger(ledger, readonly=True).rollouts()
    capsys.readouterr()
    assert _run(tmp_path, "s", resume=True)[0] == 0
    said = capsys.readouterr()
    assert "warning: the ledger was damaged" in said.out + said.err
    assert list(ledger.parent.glob("ledger.sqlite.damaged-*"))  # kept aside, never deleted
    after = _rows(ledger)
    kept = [key for key, row in before.items() if after.get(key) == row]
    assert len(kept) > len(before) // 4  # what the cut left readable is still there
    events = Ledger(ledger, readonly=True).get_meta("events")
    assert [e["kind"] for e in events] == ["stopped", "ledger damaged"]


def _can_mount_read_only(tmp_path) -> bool:
    folder = tmp_path / "mount-probe"
    folder.mkdir()
    script = (f"mount --bind {folder} {folder} && mount -o remount,bind,ro {folder} {folder} "
              f"&& ! touch {folder}/x")
    probe = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True,
                           check=False)
    return probe.returncode == 0
