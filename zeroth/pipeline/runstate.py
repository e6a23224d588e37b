"""Is a run running, finished or stopped, and where did it stop: one answer for `zeroth view`
and `zeroth metrics`.

    run_state("runs/a")  # {"status": "stopped", "stage": "rl", "step": 34,
                         #  "checkpoint": "rl-000030", "after": None,
                         #  "text": "stopped at rl step 34 (resume from rl-000030)",
                         #  "resume": "zeroth run --resume runs/a"}

`zeroth run` holds an exclusive flock on runs/<name>/.lock while it works (run.py
lock_run_dir), and the kernel drops it when the process ends, however it ends: finished,
Ctrl-C, kill -9, a crash, out of memory. The lock is therefore the source of truth:

    running    a live process holds the lock (even beside a summary.json: a resumed run)
    finished   summary.json is there and nobody holds the lock
    stopped    neither: killed, interrupted or crashed
    starting   no lock file and no ledger yet: `zeroth run` is setting the folder up

Where a run got to (for running and stopped runs) is the later of the newest checkpoint
(checkpoints/LATEST names a tag such as rl-000030; its state.json holds the step) and the
ledger's newest metrics rows, which may be ahead of the checkpoint: "stopped at rl step 34
(resume from rl-000030)". A run folder without a .lock (made before runs locked their folder)
falls back to the ledger's last write: running when written in the last RUNNING_WITHIN_S
seconds, else stopped.

Whether the lock is held: /proc/locks on Linux (it lists each locked file's device and inode),
then a non-blocking shared flock on the lock file opened read-only, released at once; the
second also sees what /proc/locks leaves out (a run in another PID namespace, a network file
system, a system without /proc). Nothing here creates or changes a file in a run folder. No
torch: the view and the exports import this.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import sqlite3
import time
from contextlib import closing
from pathlib import Path

from zeroth.pipeline.ledger import EVAL_PREFIX, connect_readonly

LOCK, SUMMARY, LEDGER = ".lock", "summary.json", "ledger.sqlite"
RUNNING_WITHIN_S = 120.0  # a run folder without a lock file: "running" if written this recently
ALIVE = ("running", "starting")


# -- the lock -----------------------------------------------------------------------------------


def lock_held(run_dir: str | Path) -> bool | None:
    """True when a process holds the run's lock, False when none does, None when the run has
    no lock file or neither way of asking works."""
    path = Path(run_dir) / LOCK
    try:
        st = path.stat()
    except OSError:
        return None
    listed = _listed_in_proc_locks(st)
    if listed:
        return True
    probed = _probe(path)
    return listed if probed is None else probed


def _listed_in_proc_locks(st: os.stat_result) -> bool | None:
    """Whether /proc/locks lists a lock on the file `st` describes (None: no /proc/locks).
    It names the locked file as MAJOR:MINOR:INODE, the device numbers in hex."""
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            fields = [line.split() for line in f]
    except OSError:
        return None
    want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    # the run's lock is exclusive (WRITE); a reader's momentary probe (READ) says nothing, nor
    # does a process waiting for the lock ("->")
    return any(_lock_file(x) == want and x[1:2] != ["->"] and "WRITE" in x[1:5] for x in fields)


def _lock_file(fields: list[str]) -> tuple[int, int, int] | None:
    """(major, minor, inode) of a /proc/locks line split into fields; None if it has none."""
    for field in fields[4:7]:  # after "1: FLOCK ADVISORY WRITE" (or "-> ..." lines) and the pid
        parts = field.split(":")
        if len(parts) == 3:
            try:
                return int(parts[0], 16), int(parts[1], 16), int(parts[2])
            except ValueError:
                return None
    return None


def _probe(path: Path) -> bool | None:
    """Try a shared lock on the file, opened read-only, without waiting: refused means a
    process holds it (True); granted means nobody does (False), and it is released at once.
    None when the file cannot be opened or locked at all."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)  # releases the shared lock if it was granted
    return False


# -- where the run got to -----------------------------------------------------------------------


def last_write(run_dir: str | Path) -> float:
    """The unix time of the ledger's last write (the database file or its WAL). An empty WAL
    is left out: a read-only connection (the view's, on every request) creates one, and its
    time says nothing about the run."""
    times = []
    for path in (Path(run_dir) / LEDGER, Path(run_dir) / f"{LEDGER}-wal"):
        try:
            st = path.stat()
        except OSError:
            continue
        if st.st_size > 0:
            times.append(st.st_mtime)
    return max(times, default=0.0)


def latest_checkpoint(run_dir: str | Path) -> dict | None:
    """{"tag", "stage", "step"} of the checkpoint checkpoints/LATEST names (tags are
    `<stage>-<step>`, the step also in its state.json); None when there is none to read."""
    root = Path(run_dir) / "checkpoints"
    try:
        tag = (root / "LATEST").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not tag or tag != Path(tag).name or tag.startswith("."):
        return None
    stage, _, number = tag.rpartition("-")
    try:
        state = json.loads((root / tag / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        state = {}
    step = state.get("step") if isinstance(state, dict) else None
    if not isinstance(step, int) or isinstance(step, bool):
        step = int(number) if number.isdigit() else None
    return {"tag": tag, "stage": stage or tag, "step": step}


def ledger_phases(run_dir: str | Path) -> dict[str, tuple[int, int, int]]:
    """{phase: (its first metrics row id, its last row id, its highest step)}, read-only;
    {} when the run has no ledger (yet) or it cannot be read."""
    file = Path(run_dir) / LEDGER
    if not file.is_file():
        return {}
    sql = "SELECT phase, MIN(id), MAX(id), MAX(step) FROM metrics GROUP BY phase"
    try:
        with closing(connect_readonly(file, timeout=5.0)) as conn:
            rows = conn.execute(sql).fetchall()
    except sqlite3.Error:
        return {}
    return {phase: (lo, hi, step) for phase, lo, hi, step in rows}


def position(ckpt: dict | None, phases: dict[str, tuple[int, int, int]]) -> dict:
    """{"stage", "step", "after"}: the later of the checkpoint and the ledger's newest training
    rows (the ledger may be ahead: steps logged since the last save), and `after`, the
    evaluation phase logged after that stage's last row, if any (a stage that ended)."""
    train = {p: v for p, v in phases.items() if not p.startswith(EVAL_PREFIX)}
    newest = max(train, key=lambda p: train[p][1], default=None)
    stage, step = (ckpt["stage"], ckpt["step"]) if ckpt else (newest, None)
    if stage in train:
        step = train[stage][2] if step is None else max(step, train[stage][2])
        if newest != stage and train[newest][0] > train[stage][1]:  # began after stage's rows
            stage, step = newest, train[newest][2]
    if stage is not None and stage not in train:  # a stage just begun: nothing logged yet
        return {"stage": stage, "step": step, "after": None}
    last_row = train[stage][1] if stage else 0
    evals = {p: v for p, v in phases.items() if p.startswith(EVAL_PREFIX) and v[1] > last_row}
    after = max(evals, key=lambda p: evals[p][1], default=None)
    return {"stage": stage, "step": step, "after": after}


# -- the answer ---------------------------------------------------------------------------------


def status(run_dir: Path, held: bool | None) -> str:
    """running, finished, stopped or starting (see the module docstring)."""
    if held:
        return "running"
    if (run_dir / SUMMARY).is_file():
        return "finished"
    if held is False:
        return "stopped"
    written = last_write(run_dir)  # 0: no ledger, or one created but not written yet
    if written == 0.0:  # set up only moments ago, or abandoned then
        return "starting" if time.time() - _made(run_dir) < RUNNING_WITHIN_S else "stopped"
    return "running" if time.time() - written < RUNNING_WITHIN_S else "stopped"


def _made(run_dir: Path) -> float:
    """When the run folder was set up: its config.yaml's time (else the folder's)."""
    for path in (run_dir / "config.yaml", run_dir):
        try:
            return path.stat().st_mtime
        except OSError:
            continue
    return 0.0


def resume_command(run_dir: str | Path) -> str:
    """`zeroth run --resume <run dir>`, the folder relative to the working directory when it
    is below it."""
    path = Path(os.path.abspath(run_dir))
    try:
        shown = str(path.relative_to(Path.cwd()))
    except (ValueError, OSError):  # elsewhere, or no working directory any more
        shown = str(path)
    nproc = os.environ.get("ZEROTH_NPROC")  # a rank of `zeroth run --nproc N`
    return f"zeroth run {f'--nproc {nproc} ' if nproc else ''}--resume {shlex.quote(shown)}"


def run_state(run_dir: str | Path) -> dict:
    """{"status", "stage", "step", "checkpoint", "after", "text", "resume"}: whether the run
    is running, finished, stopped or starting, where it got to (running or stopped), the tag
    of its newest checkpoint, a line for people, and for a stopped run the command that
    continues it."""
    run_dir = Path(run_dir)
    out = {"status": status(run_dir, lock_held(run_dir)), "stage": None, "step": None,
           "checkpoint": None, "after": None, "resume": None}
    if out["status"] in ("running", "stopped"):
        ckpt = latest_checkpoint(run_dir)
        out.update(position(ckpt, ledger_phases(run_dir)), checkpoint=ckpt and ckpt["tag"])
    if out["status"] == "stopped":
        out["resume"] = resume_command(run_dir)
    out["text"] = describe(out)
    return out


def alive(state: dict) -> bool:
    """Whether the run may still write: running, or starting."""
    return state["status"] in ALIVE


def _where(state: dict) -> str | None:
    if state["stage"] is None:
        return None
    step = "" if state["step"] is None else f" step {state['step']}"
    return f"{state['stage']}{step}"


def _after(state: dict) -> str:
    after = state["after"]
    if after is None:
        return ""
    if state["stage"] is not None and after == f"{EVAL_PREFIX}{state['stage']}":
        return " and its evaluation"
    return f", after {after}"


def describe(state: dict) -> str:
    """The line people read: "running: rl step 34", "finished", "stopped at rl step 34
    (resume from rl-000030)", "stopped before its first step (no checkpoint yet: a resume
    starts over)", "starting"."""
    where, kind = _where(state), state["status"]
    if kind == "running":
        return f"running: {where}" if where else "running"
    if kind != "stopped":
        return kind
    if where:
        text = f"stopped at {where}{_after(state)}"
    elif state["after"]:
        text = f"stopped after {state['after']}"
    else:
        text = "stopped before its first step"
    if state["checkpoint"]:
        return f"{text} (resume from {state['checkpoint']})"
    return f"{text} (no checkpoint yet: a resume starts over)"
