"""What a run does when something goes wrong around it: a scheduler's SIGTERM, a non-finite
loss, a full disk, a run folder it may not write.

- **SIGTERM** (`stop_on_sigterm`): the first one sets a flag; each training loop looks at it after
  every step (`stop_point`), saves a checkpoint there if the step did not just save one, and
  raises `Stopped`; the command line then says where the run stopped and how to resume it, and
  exits 0. A second SIGTERM ends the process at once (the last checkpoint still resumes it).
  On several ranks the flag is summed over them at each step, so every rank stops at the same
  one. A stage without steps (evaluation, rejection sampling) runs to its end first: the next
  safe point is the next step or stage.
- **Non-finite updates** (`NonFinite`): a loss or gradient norm that is NaN or infinite is
  caught before the optimiser step, which is skipped (weights and AdamW state untouched) and
  recorded in the step's metrics (`skipped_steps`); after `run.max_nonfinite_steps` steps in a
  row (0: never) the run stops with `Diverged`, its last checkpoint intact.
- **A full disk or a folder made read-only** (`write_failure`): an OSError with ENOSPC or EDQUOT
  (or SQLite's "database or disk is full"), or EACCES / EROFS, becomes one line naming the
  folder, the free space there and what the next checkpoint needs. Checkpoints are written into a
  temporary folder and renamed (zeroth.pipeline.checkpoint), and each ledger write is one
  transaction (zeroth.pipeline.ledger), so the last complete checkpoint and every ledger row
  written before stay intact.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import signal
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from zeroth.errors import UserError
from zeroth.models.locate import checkpoints_dir, read_latest
from zeroth.pipeline.checkpoint import causes, says_disk_full, size_text, tree_bytes

_STOP = {"signal": None}  # the name of the signal asking this process to stop, once one came


class Stopped(Exception):
    """The run stopped at a safe point because a signal asked it to; `tag` is the checkpoint
    written there."""

    def __init__(self, signal_name: str, tag: str):
        super().__init__(f"stopped by {signal_name} at checkpoint {tag}")
        self.signal_name, self.tag = signal_name, tag


class Diverged(UserError):
    """Too many non-finite steps in a row: the run stops, its last checkpoint intact."""


def _on_term(signum, frame) -> None:
    if _STOP["signal"] is not None:  # the second one: no more waiting
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _STOP["signal"] = signal.Signals(signum).name


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """While the block runs, SIGTERM asks the run to stop at its next safe point; the handler
    before it is put back after (a handler can only be set from the main thread: elsewhere
    SIGTERM keeps what it had)."""
    _STOP["signal"] = None
    try:
        before = signal.signal(signal.SIGTERM, _on_term)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)
        _STOP["signal"] = None


def stop_requested() -> str | None:
    """The signal that asked this run to stop (on several ranks: any rank's), or None."""
    from zeroth.pipeline import dist

    name = _STOP["signal"]
    if dist.world() > 1 and dist.all_sum([1.0 if name else 0.0])[0] > 0:
        return name or "SIGTERM"
    return name


def stop_point(r, step: int, saved: bool, save) -> None:
    """A safe point after `step` of the current stage: when a stop was asked for, checkpoint
    here (`save()`, unless the step just saved one) and raise `Stopped`."""
    name = stop_requested()
    if name is None:
        return
    if not saved:
        save()
    raise Stopped(name, f"{r.stage_id}-{step:06d}")


def note_event(ledger, kind: str, text: str) -> None:
    """Keep what happened to the run (a stop, a fallback to an older checkpoint, a salvaged
    ledger, too many non-finite steps) in the ledger's meta `events`, which a resume does not
    cut: [{"time", "kind", "text"}]."""
    import time

    try:
        events = ledger.get_meta("events", [])
    except AttributeError:  # a rank that does not write the ledger
        return
    ledger.set_meta("events", [*events, {"time": time.strftime("%Y-%m-%d %H:%M:%S"),
                                         "kind": kind, "text": text}])


class NonFinite:
    """Counts the steps in a row whose update was skipped for a non-finite value and stops the
    run after `limit` of them (0: never)."""

    def __init__(self, limit: int, where: str):
        self.limit, self.where, self.in_a_row = limit, where, 0

    def observe(self, bad: bool, step: int, what: str = "") -> None:
        """After `step`: `bad` when its update was skipped; raises Diverged at the limit."""
        self.in_a_row = self.in_a_row + 1 if bad else 0
        if bad and self.limit and self.in_a_row >= self.limit:
            raise Diverged(f"{self.where} step {step}: {what or 'a non-finite loss'} for "
                           f"{self.in_a_row} steps in a row (run.max_nonfinite_steps="
                           f"{self.limit}); no update was applied on those steps and the last "
                           "checkpoint is intact — lower the learning rate, or set "
                           "model.precision=fp32, and resume or start again")


def finite(*values: float) -> bool:
    """Every value is a finite number."""
    return all(math.isfinite(v) for v in values)


def clip_or_skip(params, max_norm: float, loss: float | None) -> tuple[float, bool]:
    """(gradient norm, True when the optimiser may step): the gradients clipped to `max_norm`
    when their norm and the `loss` (None: not judged, as on several ranks, where each holds a
    share of it; the summed gradients say the same on every rank) are finite; otherwise they
    are dropped (set to None), so that no step is taken from them."""
    import torch

    norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    if finite(norm, *(() if loss is None else (loss,))):
        return norm, True
    for p in params:
        p.grad = None
    return norm, False


# ---------------------------------------------------------------------------------------------
# Writes that fail: a full disk, a folder made read-only.
# ---------------------------------------------------------------------------------------------

_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)


def write_failure(exc: BaseException) -> str | None:
    """'full' or 'denied' when `exc` (or what caused it) is a write the disk refused; else
    None."""
    if says_disk_full(exc):
        return "full"
    for cause in causes(exc):
        if isinstance(cause, OSError) and cause.errno in _DENIED:
            return "denied"
        if isinstance(cause, sqlite3.OperationalError) and "readonly database" in str(cause):
            return "denied"
    return None


def checkpoint_size(run_dir: Path) -> int:
    """The size of the run's newest complete checkpoint (0 when it has none)."""
    root = checkpoints_dir(run_dir)
    tag = read_latest(root) if root.is_dir() else None
    return tree_bytes(root / tag) if tag and (root / tag).is_dir() else 0


def write_failure_message(exc: BaseException, run_dir: Path | None, kind: str) -> str:
    """One line for a write the disk refused: the folder, the free space there and what the
    next checkpoint needs ('full'), or the path it may not write ('denied'); that the last
    checkpoint and the ledger are intact, and how to continue (`run_dir`: the run's folder,
    None when it was not made yet)."""
    from zeroth.pipeline.runstate import resume_command

    path = next((Path(c.filename) for c in causes(exc)
                 if isinstance(c, OSError) and c.filename), None)
    if run_dir is None:
        return (f"cannot write {path or 'the run directory'}: "
                f"{'disk full' if kind == 'full' else 'permission denied or read-only'} — "
                "free space there, or choose another run.out_dir; nothing was started")
    run_dir = Path(run_dir)
    if path is None and any(isinstance(c, sqlite3.Error) for c in causes(exc)):
        path = run_dir / "ledger.sqlite"  # sqlite names no file
    root = checkpoints_dir(run_dir)
    latest = read_latest(root) if root.is_dir() else None
    intact = (f"the last complete checkpoint ({latest}) and the ledger are intact" if latest
              else "the ledger is intact")
    if kind == "denied":
        return (f"cannot write {path or run_dir} (permission denied or read-only) — make "
                f"{run_dir} writable again, then continue with {resume_command(run_dir)}; "
                f"{intact}")
    folder = run_dir if path is None else path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    need = checkpoint_size(run_dir)
    needed = f"; a checkpoint needs about {size_text(need)}" if need else ""
    return (f"out of disk space writing {path or folder}: {size_text(free)} free there now"
            f"{needed} — free some space and continue with {resume_command(run_dir)}; "
            f"{intact}")


def check_writable(run_dir: Path) -> None:
    """Before a run starts or resumes: its folder, checkpoints/ and ledger can be written, or a
    one-line UserError (nothing changed). A probe, not permission bits: root ignores those, a
    read-only mount does not."""
    folders = [run_dir] + [d for d in (run_dir / "checkpoints",) if d.is_dir()]
    files = [run_dir / name for name in ("ledger.sqlite", "ledger.sqlite-wal", "config.yaml")]
    try:
        for folder in folders:
            probe = folder / f".write-probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        for file in files:
            if file.exists():
                open(file, "r+b").close()  # opened for writing, nothing written
    except OSError as exc:
        if write_failure(exc) is None:
            raise
        raise UserError(f"run directory {run_dir} cannot be written ({exc.filename}: "
                        f"{exc.strerror}) — make it writable, or copy it elsewhere and resume "
                        "the copy; nothing was changed") from None
