"""The run ledger: one SQLite file, `runs/<name>/ledger.sqlite`, the one source of truth of a run.

It records training metrics, every sampled rollout with its reward components, evaluation
samples, and a small key-value table of run metadata (config, status). Everything that reports
on a run (CLI summaries, dashboards, exports) reads it back from here.

Durability: the database uses WAL journaling with `synchronous=FULL`, and every public method is
one transaction, committed before it returns; no transaction is held open between calls. A
process killed at any moment (even with SIGKILL) therefore leaves a readable database holding
exactly the calls that returned, never part of one.

Values are stored as JSON text where they are dicts (metrics, reward components, `extra`), so a
read gives back the same dict: `None` stays `None`, NaN and infinities survive. Numbers that
are tensors or numpy scalars are converted with `.item()` / `.tolist()` on the way in.

Damage: opening an existing ledger for writing checks it first (zeroth.pipeline.ledger_repair:
`damage`). A damaged ledger raises `DamagedLedger`, a one-line UserError naming the file, what
sqlite found, and the fix: resume the run, which opens it with `repair=True`; that salvages
every row still readable into a fresh ledger, the damaged file kept aside, and `salvaged` says
what was kept. A readonly ledger is not checked on open (the viewers open it often): the first
read that meets damage raises the same `DamagedLedger` instead of sqlite's error, and so do
reads and writes of a ledger that is damaged while it is open.

Use one `Ledger` per process; it may be shared between the threads of that process.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from zeroth.pipeline.ledger_repair import (  # connect_readonly: the viewers' connection
    DamagedLedger,
    connect_readonly,
    damage,
    damage_message,
    is_damage_error,
    salvage,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS metrics (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    phase TEXT NOT NULL,
    step INTEGER NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS metrics_phase_step ON metrics (phase, step);
CREATE TABLE IF NOT EXISTS rollouts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    phase TEXT NOT NULL,
    step INTEGER NOT NULL,
    prompt_idx INTEGER NOT NULL,
    sample_idx INTEGER NOT NULL,
    prompt TEXT NOT NULL,
    completion TEXT NOT NULL,
    n_tokens INTEGER NOT NULL,
    rewards TEXT NOT NULL,
    reward REAL,
    advantage REAL,
    answer TEXT,
    extra TEXT,
    task TEXT,
    difficulty TEXT
);
CREATE INDEX IF NOT EXISTS rollouts_phase_group ON rollouts (phase, step, prompt_idx, sample_idx);
CREATE INDEX IF NOT EXISTS rollouts_phase_reward ON rollouts (phase, reward);
CREATE INDEX IF NOT EXISTS rollouts_phase_len ON rollouts (phase, n_tokens);
CREATE TABLE IF NOT EXISTS evals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    phase TEXT NOT NULL,
    problem_idx INTEGER NOT NULL,
    sample_idx INTEGER NOT NULL,
    prompt TEXT NOT NULL,
    completion TEXT NOT NULL,
    n_tokens INTEGER NOT NULL,
    correct INTEGER NOT NULL,
    answer TEXT
);
CREATE INDEX IF NOT EXISTS evals_phase ON evals (phase);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

_ROLLOUT_COLUMNS = (
    "phase, step, prompt_idx, sample_idx, prompt, completion, n_tokens, "
    "rewards, reward, advantage, answer, extra, task, difficulty"
)
# Columns added after the first release: ledgers written before get them on open.
_ADDED_COLUMNS = {"rollouts": ("task TEXT", "difficulty TEXT")}
_EVAL_COLUMNS = "phase, problem_idx, sample_idx, prompt, completion, n_tokens, correct, answer"


def merge_metrics(rows: list[tuple[int, str, int, dict]]) -> list[dict]:
    """`[{"phase", "step", **metrics}]` from metrics rows (id, phase, step, data): phases in the
    order they were first logged, steps ascending, calls for one step merged (a later id wins)."""
    first: dict[str, int] = {}
    for i, phase, _, _ in rows:
        first[phase] = min(first.get(phase, i), i)
    merged: dict[tuple[str, int], dict] = {}
    for _, phase, step, data in sorted(rows, key=lambda r: (first[r[1]], r[2], r[0])):
        merged.setdefault((phase, step), {"phase": phase, "step": step}).update(data)
    return list(merged.values())


EVAL_PREFIX = "eval_"  # a held-out evaluation's phase is eval_<stage id>: eval_start, eval_rl


def phase_kind(phase: str) -> str:
    """The stage kind of a phase: `rl2` -> `rl`, `sft1` -> `sft`, `eval_rl` -> `eval`."""
    return "eval" if phase.startswith(EVAL_PREFIX) else re.sub(r"\d+$", "", phase)


def _plain(value: Any) -> Any:
    """json.dumps fallback: tensors and numpy values become Python numbers or lists."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"ledger: cannot store a value of type {type(value).__name__} as JSON")


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_plain)


def _number(value: Any) -> float | None:
    """A float for a REAL column (None stays None); accepts tensors and numpy scalars."""
    if value is None:
        return None
    return float(value.item() if hasattr(value, "item") else value)


def create_schema(conn: sqlite3.Connection) -> None:
    """Create the tables and indexes missing from `conn`'s database; a ledger written before
    some columns existed gains them."""
    conn.executescript(_SCHEMA)
    for table, columns in _ADDED_COLUMNS.items():
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        for column in columns:
            if column.split()[0] not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
    # after the columns exist (a ledger from before them gains them just above)
    conn.execute("CREATE INDEX IF NOT EXISTS rollouts_phase_task ON rollouts (phase, task, step)")


class Ledger:
    """A connection to one run's ledger database. Every method commits before returning."""

    def __init__(self, path: str | Path, readonly: bool = False, repair: bool = False):
        """Open (creating it when needed) the ledger at `path`. `readonly=True` opens an existing
        ledger for reading only, as the viewers do, even while its run is writing; it raises
        FileNotFoundError when there is none.

        Opening an existing ledger for writing checks it first (see "Damage" in the module
        docstring): a damaged one raises `DamagedLedger`, or with `repair=True` is moved aside
        and replaced by a fresh ledger holding every row still readable; `salvaged` then says
        what happened (None when nothing was wrong)."""
        if readonly and repair:
            raise ValueError("a ledger opened readonly cannot be repaired")
        self.path = Path(path)
        self.readonly = readonly
        self.salvaged: dict | None = None
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._closed = False
        if readonly:
            if not self.path.is_file():
                raise FileNotFoundError(f"no ledger at {self.path}")
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            problem = damage(self.path) if self.path.exists() else None
            if problem is not None and not repair:
                raise DamagedLedger(damage_message(self.path, problem))
            if problem is not None:
                self.salvaged = salvage(self.path, problem, create_schema)
            with self._reporting_damage():
                create_schema(self._connect())

    # -- connection -------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        """The connection of this process; a forked child opens its own instead of sharing."""
        if self._closed:
            raise sqlite3.ProgrammingError(f"ledger {self.path} is closed")
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        if self.readonly:
            self._conn, self._pid = connect_readonly(self.path), os.getpid()
            return self._conn
        conn = sqlite3.connect(
            str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        self._conn, self._pid = conn, os.getpid()
        return conn

    @contextmanager
    def _reporting_damage(self):
        """Turn sqlite's errors for a damaged file into `DamagedLedger`, which says how to fix it."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            if not is_damage_error(exc):
                raise
            raise DamagedLedger(damage_message(self.path, f"sqlite: {exc}")) from exc

    def _write(self, statements: list[tuple[str, Any]]) -> None:
        """Run `(sql, params)` pairs in one transaction; a list of param tuples: executemany."""
        with self._lock, self._reporting_damage():
            conn = self._connect()
            conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, params in statements:
                    if isinstance(params, list):
                        conn.executemany(sql, params)
                    else:
                        conn.execute(sql, params)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock, self._reporting_damage():
            return self._connect().execute(sql, params).fetchall()

    def close(self) -> None:
        """Close the connection (idempotent). The ledger can't be used afterwards."""
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn, self._closed = None, True

    # -- writing ----------------------------------------------------------------------------

    def log_metrics(self, phase: str, step: int, metrics: dict) -> None:
        """Record one step's scalar metrics. Several calls for the same step merge on read."""
        sql = "INSERT INTO metrics (phase, step, data) VALUES (?, ?, ?)"
        self._write([(sql, (phase, int(step), _dumps(dict(metrics))))])

    def log_rollouts(self, phase: str, step: int, rows: list[dict]) -> None:
        """Record the sampled completions of one step (see the module docstring for the fields)."""
        params = [
            (
                phase,
                int(step),
                int(r["prompt_idx"]),
                int(r["sample_idx"]),
                r["prompt"],
                r["completion"],
                int(r["n_tokens"]),
                _dumps(r.get("rewards") or {}),
                _number(r.get("reward")),
                _number(r.get("advantage")),
                r.get("answer"),
                None if r.get("extra") is None else _dumps(r["extra"]),
                r.get("task"),
                None if r.get("difficulty") is None else str(r["difficulty"]),
            )
            for r in rows
        ]
        sql = f"INSERT INTO rollouts ({_ROLLOUT_COLUMNS}) VALUES ({', '.join('?' * 14)})"
        self._write([(sql, params)])

    def log_eval(self, phase: str, rows: list[dict]) -> None:
        """Record evaluation samples; `sample_idx` is -1 for the greedy completion."""
        params = [
            (
                phase,
                int(r["problem_idx"]),
                int(r["sample_idx"]),
                r["prompt"],
                r["completion"],
                int(r["n_tokens"]),
                int(bool(r["correct"])),
                r.get("answer"),
            )
            for r in rows
        ]
        sql = f"INSERT INTO evals ({_EVAL_COLUMNS}) VALUES ({', '.join('?' * 8)})"
        self._write([(sql, params)])

    def truncate_after(self, phase: str, step: int) -> None:
        """Delete `phase`'s metrics and rollouts with a step above `step` (resume from `step`)."""
        self._write(
            [
                ("DELETE FROM metrics WHERE phase = ? AND step > ?", (phase, int(step))),
                ("DELETE FROM rollouts WHERE phase = ? AND step > ?", (phase, int(step))),
            ]
        )

    def clear_phase(self, phase: str) -> None:
        """Delete every metric, rollout and eval row of `phase`."""
        self._write([(f"DELETE FROM {table} WHERE phase = ?", (phase,)) for table in _PHASE_TABLES])

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON-able value under `key`, replacing any previous one."""
        sql = "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)"
        self._write([(sql, (key, _dumps(value)))])

    # -- reading ----------------------------------------------------------------------------

    def get_meta(self, key: str, default: Any = None) -> Any:
        """The value stored under `key`, or `default` when there is none."""
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else default

    def metrics(self, phase: str | None = None) -> list[dict]:
        """`[{"phase", "step", **metrics}]`, one dict per (phase, step).

        Phases come in the order they were first logged, steps ascending within a phase; calls
        logged for the same step are merged (a later value of a key wins).
        """
        where, params = _where(phase=phase)
        rows = self._read(f"SELECT id, phase, step, data FROM metrics{where}", params)
        return merge_metrics([(i, ph, step, json.loads(data)) for i, ph, step, data in rows])

    def rollouts(self, phase: str | None = None, step: int | None = None) -> list[dict]:
        """Logged rollouts (optionally of one phase and/or step) in logging order, decoded."""
        where, params = _where(phase=phase, step=step)
        rows = self._read(f"SELECT {_ROLLOUT_COLUMNS} FROM rollouts{where} ORDER BY id", params)
        names = [c.strip() for c in _ROLLOUT_COLUMNS.split(",")]
        out = []
        for row in rows:
            item = dict(zip(names, row, strict=True))
            item["rewards"] = json.loads(item["rewards"])
            item["extra"] = None if item["extra"] is None else json.loads(item["extra"])
            out.append(item)
        return out

    def evals(self, phase: str) -> list[dict]:
        """The evaluation samples of `phase` in logging order; `correct` is a bool."""
        sql = f"SELECT {_EVAL_COLUMNS} FROM evals WHERE phase = ? ORDER BY id"
        names = [c.strip() for c in _EVAL_COLUMNS.split(",")]
        out = []
        for row in self._read(sql, (phase,)):
            item = dict(zip(names, row, strict=True))
            item["correct"] = bool(item["correct"])
            out.append(item)
        return out


_PHASE_TABLES = ("metrics", "rollouts", "evals")


def _where(**filters: Any) -> tuple[str, tuple]:
    """` WHERE a = ? AND b = ?` for the filters that are not None, with their parameters."""
    used = {k: v for k, v in filters.items() if v is not None}
    if not used:
        return "", ()
    return " WHERE " + " AND ".join(f"{k} = ?" for k in used), tuple(used.values())


class Unwritten:
    """The ledger of a rank that does not write (every rank but 0 of a torchrun job): each
    write does nothing. Rank 0 writes what every rank computed alike (the gathered rollouts)."""

    def __getattr__(self, name: str):
        if name.startswith(("log_", "set_", "clear_", "truncate_")) or name == "close":
            return lambda *args, **kwargs: None
        raise AttributeError(f"only rank 0 reads the ledger ({name})")
