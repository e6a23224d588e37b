"""Tests of a damaged ledger: detected on open, one clear error, and salvaged with `repair=True`.

The damage is real, done to the file the way a crash or a disk fault does it: cut short, pages
overwritten with garbage, the header zeroed, a garbage write-ahead log, a damaged frame in a log
left by a crash. Every row a salvage keeps must be the very row the ledger held under that id.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import sqlite3
from pathlib import Path

import pytest

from zeroth.errors import UserError
from zeroth.pipeline import ledger_repair as _repair
from zeroth.pipeline.ledger import DamagedLedger, Ledger, damage

TABLES = ("metrics", "rollouts", "evals", "meta")
PAGE = 4096  # sqlite's default page size, the ledgers'


class Original:
    """A closed, undamaged ledger and the rows it holds: `{table: {id: row}}`."""

    def __init__(self, path: Path):
        self.path, self.rows = path, _rows(path)


def _rows(path: Path) -> dict[str, dict[int, tuple]]:
    """Every row of every table, `(rowid, *columns but id)`, read straight from the file."""
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    out = {}
    for table in TABLES:
        names = [r[1] for r in conn.execute(f"PRAGMA table_info({table})") if r[1] != "id"]
        rows = conn.execute(f"SELECT rowid, {', '.join(names)} FROM {table}")
        out[table] = {row[0]: row for row in rows}
    conn.close()
    return out


def _typed(row: tuple) -> tuple:
    """A row compared with its types: 1 and 1.0 differ, as they do in the file."""
    return tuple((type(v).__name__, v) for v in row)


def _fill(led: Ledger, steps: range, tag: str = "") -> None:
    """Log a few thousand rows like a run does: metrics and rollouts every step, some evals."""
    for step in steps:
        led.log_rollouts("rl", step, [
            {"prompt_idx": i, "sample_idx": step % 3, "prompt": f"What is {step}+{i}? {tag}",
             "completion": f"<answer>{step + i}</answer> ✓ " * (300 if i == 0 else 12),  # overflow
             "n_tokens": 40 + i, "rewards": {"correct": 1.0, "format": 0.5, "len": None},
             "reward": 1.0 if i % 2 else 0.25, "advantage": None if i == 3 else i / 7,
             "answer": str(step + i), "extra": {"parsed": i} if i % 4 else None,
             "task": "countdown", "difficulty": 3 if i % 5 else None}
            for i in range(15)
        ])  # fmt: skip
        led.log_metrics("rl", step, {"reward": step / 100, "loss": 2.0, "nan": float("nan")})
        if step % 50 == 0:
            led.log_eval(f"eval_{step}", [
                {"problem_idx": p, "sample_idx": -1, "prompt": f"p{p}", "completion": f"c{p}{tag}",
                 "n_tokens": 3, "correct": p % 2 == 0, "answer": None if p % 3 else "4"}
                for p in range(50)
            ])  # fmt: skip
            led.set_meta("status", {"step": step, "tag": tag})


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Original:
    path = tmp_path_factory.mktemp("original") / "ledger.sqlite"
    led = Ledger(path)
    led.set_meta("config", {"run": {"name": "r"}, "lr": 1e-4})
    _fill(led, range(200))
    led.close()
    return Original(path)


@pytest.fixture
def copy(original, tmp_path) -> Path:
    """A copy of the original ledger in a run directory of its own."""
    path = tmp_path / "run" / "ledger.sqlite"
    path.parent.mkdir()
    shutil.copyfile(original.path, path)
    return path


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def _garbage_pages(path: Path) -> None:
    middle = path.stat().st_size // PAGE // 2
    with open(path, "r+b") as f:
        for k in (0, 9, 23):
            f.seek((middle + k) * PAGE)
            f.write(random.Random(k).randbytes(PAGE))


def _zero_header(path: Path) -> None:
    with open(path, "r+b") as f:
        f.write(bytes(100))


def _garbage_log(path: Path) -> None:
    Path(f"{path}-wal").write_bytes(random.Random(7).randbytes(3 * PAGE + 100))


# kind: (damage, words of sqlite's in the message, least share of the rows kept per table)
DAMAGE = {
    "truncated": (_truncate, "malformed", {"metrics": 0.2, "rollouts": 0.2}),
    "garbage pages": (_garbage_pages, "", {"metrics": 0.9, "rollouts": 0.9, "evals": 0.9}),
    "zeroed header": (_zero_header, "not a database", dict.fromkeys(TABLES, 1.0)),
    "garbage log": (_garbage_log, "write-ahead log", dict.fromkeys(TABLES, 1.0)),
}


def _files(path: Path) -> dict[str, bytes]:
    """The bytes of the database and of its log where it has one."""
    return {suffix: Path(f"{path}{suffix}").read_bytes() for suffix in ("", "-wal")
            if Path(f"{path}{suffix}").is_file() and Path(f"{path}{suffix}").stat().st_size}


def _check_salvage(led: Ledger, damaged: dict[str, bytes], original: dict,
                   counted: bool = True) -> dict:
    """Assert what every salvage must be; the rows it kept. `counted`: the damaged file still
    tells the highest id a table used, which new rows then go past."""
    path, report = led.path, led.salvaged
    aside = Path(report["moved_to"])
    assert aside.parent == path.parent
    assert re.fullmatch(r"ledger\.sqlite\.damaged-\d{8}-\d{6}", aside.name)
    assert _files(aside) == damaged  # kept aside as it was, its log with it
    assert not Path(f"{path}-wal").is_file() or Path(f"{path}-wal").stat().st_size == 0
    rows = _rows(path)
    for table, kept in rows.items():
        for rowid, row in kept.items():  # each row kept is the row the ledger held
            assert _typed(row) == _typed(original[table][rowid]), (table, rowid)
    assert report["kept"] == {table: len(rows[table]) for table in TABLES}
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()
    top = max(original["metrics"] if counted else rows["metrics"])
    led.log_metrics("rl", 1000, {"after": 1.0})  # writes work, ids go on past the lost rows'
    assert led.metrics("rl")[-1] == {"phase": "rl", "step": 1000, "after": 1.0}
    assert max(_rows(path)["metrics"]) == top + 1
    led.close()
    Ledger(path).close()  # opens cleanly now
    return rows


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damage_is_refused_then_salvaged(kind, original, copy):
    spoil, words, least = DAMAGE[kind]
    spoil(copy)
    damaged = _files(copy)
    assert damage(copy) is not None
    with pytest.raises(DamagedLedger) as caught:
        Ledger(copy)
    message = str(caught.value)
    assert isinstance(caught.value, UserError) and "\n" not in message
    assert f"ledger {copy} is damaged (" in message and words in message
    assert f"zeroth run --resume {copy.parent}" in message
    assert _files(copy) == damaged  # refusing changed nothing
    assert sorted(p.name for p in copy.parent.iterdir() if ".damaged-" in p.name) == []
    led = Ledger(copy, repair=True)
    assert led.salvaged["error"] in message
    rows = _check_salvage(led, damaged, original.rows)
    for table in TABLES:
        assert len(rows[table]) >= least.get(table, 0) * len(original.rows[table]), table
    if kind == "truncated":  # the rows of the pages cut off are gone, those before them kept
        assert 0 < len(rows["rollouts"]) < len(original.rows["rollouts"])


def test_undamaged_ledger_opened_to_repair_is_left_alone(original, copy):
    before = sorted(p.name for p in copy.parent.iterdir())
    assert damage(copy) is None
    led = Ledger(copy, repair=True)
    assert led.salvaged is None
    assert [_typed(r) for t in TABLES for r in _rows(copy)[t].values()] == [
        _typed(r) for t in TABLES for r in original.rows[t].values()]
    led.close()
    assert sorted(p.name for p in copy.parent.iterdir()) == before


def test_readonly_ledger_is_not_checked_and_reports_damage_when_read(copy):
    _zero_header(copy)
    damaged = _files(copy)
    led = Ledger(copy, readonly=True)  # no check on open: the viewers open ledgers often
    assert led.salvaged is None
    with pytest.raises(DamagedLedger, match="not a database.*zeroth run --resume"):
        led.metrics()
    led.close()
    with pytest.raises(ValueError):
        Ledger(copy, readonly=True, repair=True)
    assert _files(copy) == damaged and not any(".damaged-" in p.name for p in copy.parent.iterdir())


def test_salvage_killed_midway_leaves_the_damaged_file(copy, monkeypatch):
    _truncate(copy)
    damaged = _files(copy)
    Path(f"{copy}.salvage").write_bytes(b"left by a salvage killed before")
    Path(f"{copy}.salvage-src").write_bytes(b"left by a salvage killed before")

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(_repair, "_move_aside", killed)  # the copy built, not yet in place
    with pytest.raises(KeyboardInterrupt):
        Ledger(copy, repair=True)
    assert _files(copy) == damaged
    monkeypatch.undo()
    monkeypatch.setattr(_repair, "_copy_table", killed)  # while the copy is built
    with pytest.raises(KeyboardInterrupt):
        Ledger(copy, repair=True)
    assert _files(copy) == damaged
    monkeypatch.undo()
    led = Ledger(copy, repair=True)
    assert led.salvaged["kept"]["rollouts"] > 0
    led.close()
    names = sorted(p.name for p in copy.parent.iterdir())
    assert [n for n in names if ".salvage" in n] == []
    assert len([n for n in names if re.fullmatch(r".*damaged-[\d-]+", n)]) == 1


# -- a log left by a crash ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def crash(tmp_path_factory) -> tuple[Path, dict]:
    """(a ledger as a crash leaves it: part of its rows in the database, the newest in its
    write-ahead log; the rows of the run that wrote it, which went on to close it cleanly)."""
    folder = tmp_path_factory.mktemp("crash")
    live, image = folder / "live.sqlite", folder / "image.sqlite"
    led = Ledger(live)
    conn = led._connect()
    conn.execute("PRAGMA wal_autocheckpoint=0")
    _fill(led, range(40))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    _fill(led, range(40, 80))
    shutil.copyfile(live, image)
    shutil.copyfile(f"{live}-wal", f"{image}-wal")
    led.close()
    return image, _rows(live)


def _crashed(crash, tmp_path) -> Path:
    path = tmp_path / "ledger.sqlite"
    shutil.copyfile(crash[0], path)
    shutil.copyfile(f"{crash[0]}-wal", f"{path}-wal")
    return path


def test_log_left_by_a_crash_is_not_damage(crash, tmp_path):
    path = _crashed(crash, tmp_path)
    wal = Path(f"{path}-wal")
    os.truncate(wal, wal.stat().st_size - 1000)  # the last frame torn, as a crash may leave it
    assert damage(path) is None
    led = Ledger(path)
    assert led.salvaged is None
    assert 0 < len(led.rollouts()) <= len(crash[1]["rollouts"])
    led.close()


def test_damaged_frame_in_a_crash_log_is_refused_then_salvaged(crash, tmp_path):
    path = _crashed(crash, tmp_path)
    wal = Path(f"{path}-wal")
    frames = (wal.stat().st_size - 32) // (24 + PAGE)
    with open(wal, "r+b") as f:  # a frame in the middle: the commits after it would be lost
        f.seek(32 + frames // 2 * (24 + PAGE) + 24)
        f.write(random.Random(3).randbytes(PAGE))
    damaged = _files(path)
    with pytest.raises(DamagedLedger, match="write-ahead log ledger.sqlite-wal has a damaged frame"):
        Ledger(path)
    led = Ledger(path, repair=True)  # the ids of the commits lost are nowhere to be read
    rows = _check_salvage(led, damaged, crash[1], counted=False)
    assert 0 < len(rows["rollouts"]) < len(crash[1]["rollouts"])


# -- the page scan ------------------------------------------------------------------------------


def _scanned(path: Path) -> dict[str, dict[int, tuple]]:
    found: dict[str, dict[int, tuple]] = {table: {} for table in TABLES}
    for table, row in _repair._scan_rows(path):
        found[table][row[0]] = row
    return found


def test_page_scan_finds_every_row_as_sqlite_reads_it(original):
    found = _scanned(original.path)
    for table in TABLES:
        assert sorted(map(_typed, found[table].values())) == sorted(
            map(_typed, original.rows[table].values())), table


def test_rows_deleted_before_the_damage_stay_deleted(tmp_path):
    path = tmp_path / "ledger.sqlite"
    led = Ledger(path)
    led._connect().execute("PRAGMA secure_delete=OFF")  # deleted rows stay in free pages
    _fill(led, range(120))
    led.truncate_after("rl", 40)  # a resume redoes steps 41.. with other rollouts
    _fill(led, range(41, 70), tag="redone")
    led.close()
    live = _rows(path)
    found = _scanned(path)  # the free-page list read whole: only live rows
    assert {t: sorted(map(_typed, found[t].values())) for t in TABLES} == {
        t: sorted(map(_typed, live[t].values())) for t in TABLES}
    head = path.read_bytes()[:100]
    trunk = int.from_bytes(head[32:36], "big")  # the first page of the free-page list
    assert trunk > 0
    os.truncate(path, (trunk - 1) * PAGE)  # cut before it: the list is lost
    stale = [row for table, row in _repair._scan_rows(path) if row[0] not in live[table]]
    assert stale  # the file still holds deleted rows, which the scan can't tell from the list
    damaged = _files(path)
    led = Ledger(path, repair=True)
    assert led.salvaged["scanned"]["rollouts"] > 0  # rows found by the page scan were kept,
    rows = _check_salvage(led, damaged, live)  # but none that was deleted
    assert rows["rollouts"]


class _DamagedTree:
    """A connection to a table of rowids 1..100 whose tree is damaged: reading rowids 40..45
    fails, and a page read from below 10 points back, giving rowid 7 again after 10."""

    def execute(self, select, params):
        lo, hi = params
        return _Cursor(self._rows(lo, hi))

    @staticmethod
    def _rows(lo, hi):
        for rowid in range(lo, min(hi, 100) + 1):
            if 40 <= rowid <= 45:
                raise sqlite3.DatabaseError("database disk image is malformed")
            yield rowid, f"row {rowid}"
            if rowid == 10:
                yield 7, "a stray cell"


class _Cursor:
    def __init__(self, rows):
        self.rows = rows

    def fetchone(self):
        return next(self.rows, None)


def test_range_read_keeps_rows_around_damage_and_drops_strays():
    rows, whole = _repair._read_range(_DamagedTree(), "SELECT", 1, 256)
    assert not whole
    assert rows == [(i, f"row {i}") for i in [*range(1, 40), *range(46, 101)]]
    assert _repair._read_range(_DamagedTree(), "SELECT", 50, 60) == (
        [(i, f"row {i}") for i in range(50, 61)], True)
