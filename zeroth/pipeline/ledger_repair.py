"""A damaged run ledger: found when it is opened, and what can still be read salvaged.

A disk fault, or a crash on a file system that doesn't keep its promises, can damage a ledger
(zeroth.pipeline.ledger) despite its transactions. `damage` says what is wrong with one, in a few
words: a write-ahead log that would lose committed transactions, or what `PRAGMA quick_check`
(one read of the whole file: about 0.05 s for 50k rollouts, 44 MB, in the page cache) finds.
`salvage` moves the damaged file aside (`<name>.damaged-<YYYYmmdd-HHMMSS>`, with its `-wal` and
`-shm`, never deleted) and puts at its place a fresh ledger holding every row still readable,
ids kept: tables are read by rowid ranges, and where a table's inner pages are lost (a file cut
short) its rows are recovered from a scan of the file's table-leaf pages.
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
import sqlite3
import struct
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

from zeroth.errors import UserError


def connect_readonly(path: str | Path, timeout: float = 30.0) -> sqlite3.Connection:
    """A read-only connection to an existing ledger file, safe while its run writes (WAL)."""
    uri = f"{Path(path).resolve().as_uri()}?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None,
                           check_same_thread=False)


class DamagedLedger(UserError):
    """A ledger file sqlite cannot read whole (a crash or disk fault damaged it)."""


def damage_message(path: Path, problem: str) -> str:
    """The one line that says a ledger is damaged, how, and how to fix it."""
    return (f"ledger {path} is damaged ({problem}); resume the run (`zeroth run --resume "
            f"{path.parent}`) to salvage what is still readable into a fresh ledger (the damaged "
            "file is kept beside it)")


def is_damage_error(exc: sqlite3.Error) -> bool:
    """Whether `exc` is sqlite saying the file is damaged (SQLITE_CORRUPT, SQLITE_NOTADB) rather
    than busy, locked or misused."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11 on
    if code is not None:
        return code & 0xFF in (11, 26)
    return "malformed" in str(exc) or "not a database" in str(exc)


def damage(path: str | Path) -> str | None:
    """What is wrong with the existing ledger file at `path`, in a few words, or None when
    nothing is: a write-ahead log that would lose committed transactions (a broken header, or a
    damaged frame with commits after it: sqlite drops them silently), or what sqlite finds
    reading the database (`PRAGMA quick_check`, which reads every page but checks no index
    against its table). It opens the file read-only: nothing is written but sqlite's `-shm`
    index (and an empty `-wal`) where there were none."""
    path = Path(path)
    problem = _wal_problem(path)
    if problem is not None:
        return problem
    try:
        with closing(connect_readonly(path)) as conn:
            rows = [row[0] for row in conn.execute("PRAGMA quick_check(3)")]
    except sqlite3.DatabaseError as exc:
        if not is_damage_error(exc):
            raise
        return f"sqlite: {exc}"
    if rows == ["ok"]:
        return None
    return "quick_check: " + "; ".join(" ".join(row.split()) for row in rows)[:300]


def _side(path: Path, suffix: str) -> Path:
    """`path` with `suffix` added to its name: the files sqlite keeps beside a database."""
    return path.with_name(path.name + suffix)


_WAL_MAGIC = (0x377F0682, 0x377F0683)  # checksums little- or big-endian
_WAL_CHECKED = 1 << 26  # bytes of a log whose frames are checked (a crash leaves ~4 MB)


def _wal_problem(path: Path) -> str | None:
    """Why the write-ahead log beside `path` would lose committed transactions, or None (no log,
    an empty one, or a sound one that may end in a frame torn by a crash). sqlite ignores a log
    whose header is broken, and the frames after one whose checksum fails, silently."""
    wal = _side(path, "-wal")
    try:
        f = open(wal, "rb")  # noqa: SIM115 - closed just below
    except FileNotFoundError:
        return None
    with f:
        head = f.read(32)
        if not head:
            return None
        if not _wal_header_ok(head):
            return f"its write-ahead log {wal.name} has a broken header"
        if _wal_frames_lost(f, head):
            return (f"its write-ahead log {wal.name} has a damaged frame with committed ones after "
                    "it, which sqlite would drop")
    return None


def _wal_header_ok(head: bytes) -> bool:
    """Whether a log's 32-byte header is sound: magic, version, page size, checksum."""
    if len(head) < 32:
        return False
    magic, version, page_size = struct.unpack(">III", head[:12])
    if magic not in _WAL_MAGIC or version != 3007000 or not _page_size_ok(page_size):
        return False
    return _wal_checksum(head[:24], 0, 0, magic) == struct.unpack(">II", head[24:])


def _wal_frames_lost(f, head: bytes) -> bool:
    """Whether the log read from `f` (past its header `head`) holds a commit frame of its own
    (its salts) after a frame that fails its checksum: a transaction that was committed and
    that sqlite would drop. Frames of an earlier use of the file (other salts) don't count."""
    magic, page_size = int.from_bytes(head[:4], "big"), int.from_bytes(head[8:12], "big")
    salts, sums = head[16:24], struct.unpack(">II", head[24:])
    broken = False  # a frame failed: the log sqlite reads ends before it
    for _ in range(_WAL_CHECKED // (24 + page_size)):
        frame = f.read(24 + page_size)
        if len(frame) < 24 + page_size:
            return False
        ours = frame[8:16] == salts
        if broken:
            if ours and int.from_bytes(frame[4:8], "big"):  # the size a commit frame records
                return True
        elif not ours:
            broken = True  # the end of this log's frames, or a damaged frame
        else:
            sums = _wal_checksum(frame[:8] + frame[24:], *sums, magic)
            broken = sums != struct.unpack(">II", frame[16:24])
    return False


def _wal_checksum(data: bytes, s0: int, s1: int, magic: int) -> tuple[int, int]:
    """sqlite's log checksum of `data` continuing from (s0, s1); the magic number says whether
    its 32-bit words are read big- or little-endian."""
    words = struct.unpack(f"{'>' if magic & 1 else '<'}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def _page_size_ok(size: int) -> bool:
    return 512 <= size <= 65536 and size & (size - 1) == 0


# -- salvage ------------------------------------------------------------------------------------

_TABLES = ("metrics", "rollouts", "evals", "meta")
_JSON_COLUMNS = {"data", "rewards", "extra", "value"}  # read back with json.loads
_CHUNK = 256  # rowids read per query; a range that fails is halved down to single rows
_GIVE_UP = 1 << 16  # rowids past the last readable row after which a table's read stops


def salvage(path: Path, problem: str, create_schema: Callable) -> dict:
    """Replace the damaged ledger at `path` by a fresh one holding every row still readable
    (its tables made by `create_schema(connection)`, the ledger's own).

    The damaged file (with its log) is copied to a scratch file, whose header is rebuilt if sqlite
    can't read it and whose log is folded in. Each table is read from there by rowid ranges,
    halving a range that fails down to single rows, so what lies before and after a bad page is
    kept; a table that can't be read whole this way (its tree's inner pages lost, as when the
    file is cut short) is completed from a scan of the file's table-leaf pages. A row keeps its
    id, and is kept only when its columns that must not be NULL aren't and its JSON ones parse.

    The copy is built under a temporary name and renamed into place, so a kill leaves either the
    damaged file or the whole salvage at `path`. The damaged file (with its `-wal` and `-shm`)
    goes to `<name>.damaged-<YYYYmmdd-HHMMSS>` beside it, never deleted. Returns `{"moved_to",
    "kept": {table: rows}, "scanned": {table: rows of those found by the page scan}, "error":
    problem}`.
    """
    tmp, scratch = _side(path, ".salvage"), _side(path, ".salvage-src")
    for stale in (tmp, *_with_logs(scratch)):  # a killed salvage's
        stale.unlink(missing_ok=True)
    try:
        _scratch_copy(path, scratch)
        kept, scanned = _build_salvage(scratch, tmp, create_schema)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        for file in _with_logs(scratch):
            file.unlink(missing_ok=True)
    _fsync(tmp)
    moved_to = _move_aside(path)
    os.replace(tmp, path)
    _fsync(path.parent)
    return {"moved_to": str(moved_to), "kept": kept, "scanned": scanned, "error": problem}


def _with_logs(path: Path) -> tuple[Path, Path, Path]:
    return path, _side(path, "-wal"), _side(path, "-shm")


def _scratch_copy(path: Path, scratch: Path) -> None:
    """Copy the damaged ledger at `path` to `scratch`, a header sqlite can read and the pages of
    its log (as far as the log is sound) written into it; `path` is left as it is."""
    shutil.copyfile(path, scratch)
    if _side(path, "-wal").is_file():
        shutil.copyfile(_side(path, "-wal"), _side(scratch, "-wal"))
    if not _header_ok(scratch):
        _repair_header(scratch)
    try:
        with closing(sqlite3.connect(scratch, isolation_level=None)) as conn:
            conn.execute("PRAGMA writable_schema=ON")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.DatabaseError:
        pass  # the log can't be applied: the pages in the file are what there is


def _build_salvage(source: Path, tmp: Path, create_schema: Callable) -> tuple[dict, dict]:
    """Create a fresh ledger at `tmp` holding the sound rows of the damaged one at `source`:
    ({table: rows kept}, {table: rows of those only the page scan found})."""
    dst = sqlite3.connect(tmp, isolation_level=None)
    try:
        dst.execute("PRAGMA journal_mode=OFF")  # nothing to roll back to: the file is discarded
        dst.execute("PRAGMA synchronous=OFF")  # until it is whole; the caller fsyncs it once
        create_schema(dst)
        dst.execute("BEGIN")
        with closing(_connect_damaged(source)) as src:
            partial = [table for table in _TABLES if not _copy_table(src, dst, table)]
        scanned = _copy_scanned(source, dst, partial) if partial else {}
        dst.execute("COMMIT")
        kept = {table: dst.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for table in _TABLES}
    finally:
        dst.close()
    return kept, {table: scanned.get(table, 0) for table in _TABLES}


def _connect_damaged(path: Path) -> sqlite3.Connection:
    """A read-only connection to a damaged ledger that reads as much as it can: with
    `writable_schema` sqlite reads a file shorter than its header says (pages past the end fail
    one by one instead of the whole file), and tolerates more of a damaged schema."""
    conn = connect_readonly(path)
    conn.execute("PRAGMA writable_schema=ON")
    return conn


def _checks(dst: sqlite3.Connection, table: str, columns: list[str]) -> list[tuple]:
    """(position in a `(rowid, *columns)` row, must not be NULL, holds JSON) for `columns`."""
    notnull = {row[1] for row in dst.execute(f"PRAGMA table_info({table})") if row[3]}
    return [(i + 1, name in notnull, name in _JSON_COLUMNS) for i, name in enumerate(columns)]


def _insert_sql(table: str, columns: list[str], conflict: str) -> str:
    marks = ", ".join("?" * (len(columns) + 1))
    return f"INSERT OR {conflict} INTO {table} (rowid, {', '.join(columns)}) VALUES ({marks})"


def _copy_table(src: sqlite3.Connection, dst: sqlite3.Connection, table: str) -> bool:
    """Copy every readable, sound row of `table` from `src` to `dst`, ids kept, reading the
    table's tree by rowid ranges. Whether the whole table could be read so."""
    try:
        have = {row[1] for row in src.execute(f"PRAGMA table_info({table})")}
    except sqlite3.DatabaseError:  # the schema itself is unreadable
        return False
    columns = [row[1] for row in dst.execute(f"PRAGMA table_info({table})")
               if row[1] in have and row[1] != "id"]
    checks = _checks(dst, table, columns)
    select = f"SELECT rowid, {', '.join(columns)} FROM {table} WHERE rowid BETWEEN ? AND ?"
    insert = _insert_sql(table, columns, "REPLACE")  # meta: the later row of a key wins
    bound = _last_rowid(src, table)
    lo, last, whole = 1, 0, bound is not None
    while lo <= (bound if bound is not None else last + _GIVE_UP):
        if lo > last + _GIVE_UP:  # a long run of unreadable rowids: the rest is for the scan
            whole = False
            break
        rows, read = _read_range(src, select, lo, lo + _CHUNK - 1)
        rows = [row for row in rows if _sound(row, checks)]
        dst.executemany(insert, rows)
        last, whole, lo = max([last] + [row[0] for row in rows]), whole and read, lo + _CHUNK
    if bound and table != "meta":  # new rows don't take the ids of rows lost (a counter read
        top = min(bound, last + _GIVE_UP)  # off a damaged page may be far off: not past that)
        seq = "UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = ?"
        if dst.execute(seq, (top, table)).rowcount == 0:
            dst.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (table, top))
    return whole


def _last_rowid(src: sqlite3.Connection, table: str) -> int | None:
    """The highest rowid `table` has held, as far as the damaged file still tells (its
    AUTOINCREMENT counter, the table's last row), or None when neither can be read."""
    found = []
    for sql, params in (("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)),
                        (f"SELECT max(rowid) FROM {table}", ())):
        try:
            row = src.execute(sql, params).fetchone()
        except sqlite3.DatabaseError:
            continue
        found.append(row[0] if row and row[0] is not None else 0)
    return max(found) if found else None


def _read_range(conn: sqlite3.Connection, select: str, lo: int, hi: int) -> tuple[list, bool]:
    """(the rows `select` gives for rowids `lo..hi`, whether all could be read). Where reading
    fails (or a damaged tree gives rowids outside the range or out of order): the rows read
    before, then the rest read again in halves, down to single rows."""
    rows: list[tuple] = []
    try:
        for row in iter(conn.execute(select, (lo, hi)).fetchone, None):
            if not lo <= row[0] <= hi or (rows and row[0] <= rows[-1][0]):
                break
            rows.append(row)
        else:
            return rows, True
    except sqlite3.ProgrammingError:
        raise
    except (sqlite3.DatabaseError, MemoryError):  # a damaged page (or a size read off one),
        pass  # or text that isn't UTF-8
    start = rows[-1][0] + 1 if rows else lo
    if start > hi or start == lo == hi:  # nothing left, or the one rowid read is unreadable
        return rows, False
    mid = (start + hi) // 2 if start < hi else hi
    first, _ = _read_range(conn, select, start, mid)
    second, _ = _read_range(conn, select, mid + 1, hi) if mid < hi else ([], False)
    return rows + first + second, False


def _sound(row: tuple, checks: list[tuple[int, bool, bool]]) -> bool:
    """Whether a salvaged row is whole: no NULL where the schema forbids it, JSON that parses."""
    for i, required, is_json in checks:
        value = row[i] if i < len(row) else None
        if value is None:
            if required:
                return False
        elif is_json:
            try:
                json.loads(value)
            except (TypeError, ValueError):
                return False
    return True


# The storage classes of each table's rows, column by column as the schema orders them (a row of
# a table with an INTEGER PRIMARY KEY holds NULL for it: the id is its rowid): n NULL, t text,
# i integer, r a REAL column (sqlite stores a whole one as an integer) or NULL, T text or NULL.
# A rollouts row written before `task` and `difficulty` existed lacks them.
_SHAPES = {"metrics": "ntit", "rollouts": "ntiiittitrrTTTT", "evals": "ntiittiiT", "meta": "tt"}
_SHORTEST = {"rollouts": 13}
_KINDS = {"n": (type(None),), "t": (str,), "i": (int,), "r": (float, int, type(None)),
          "T": (str, type(None))}


def _copy_scanned(source: Path, dst: sqlite3.Connection, tables: list[str]) -> dict[str, int]:
    """Add to `dst` the sound rows of `tables` that a scan of the table-leaf pages of the file at
    `source` finds and `dst` lacks (a row already copied is never replaced). The rows added,
    by table."""
    names, checks, ids = {}, {}, {}
    for table in tables:
        names[table] = [row[1] for row in dst.execute(f"PRAGMA table_info({table})")
                        if row[1] != "id"]
        checks[table] = _checks(dst, table, names[table])
        ids[table] = {row[0] for row in dst.execute(f"SELECT rowid FROM {table}")}
    added: dict[str, set[int]] = {table: set() for table in tables}
    for table, row in _scan_rows(source):
        if table not in ids or row[0] in ids[table] or not _sound(row, checks[table]):
            continue
        dst.execute(_insert_sql(table, names[table][:len(row) - 1], "IGNORE"), row)
        ids[table].add(row[0])
        added[table].add(row[0])
    for table, rowids in added.items():
        stale = _stale(dst, table, rowids)
        dst.executemany(f"DELETE FROM {table} WHERE rowid = ?", [(rowid,) for rowid in stale])
        rowids -= stale
    return {table: len(rowids) for table, rowids in added.items()}


# What tells a deleted row from a live one among the rows a page scan finds: live rows are unique
# by these columns, and within a phase their steps never fall as their ids grow (each stage logs
# its steps in order, after deleting the steps it redoes), so a row of a page freed by a delete
# shows itself by the rows logged after the delete.
_KEYS = {"rollouts": ("phase", "step", "prompt_idx", "sample_idx"),
         "evals": ("phase", "problem_idx", "sample_idx"), "meta": ("key",)}
_STEPPED = ("metrics", "rollouts")


def _stale(dst: sqlite3.Connection, table: str, scanned: set[int]) -> set[int]:
    """The rows among `scanned` (rowids) that the other rows of `table` show were deleted: one
    whose key a row with a higher id has, or one with a higher step than a row of its phase with
    a higher id. A page's being on the free list says so too, but its list may be lost."""
    stale: set[int] = set()
    if not scanned:
        return stale
    if table in _KEYS:
        rows = dst.execute(f"SELECT rowid, {', '.join(_KEYS[table])} FROM {table}").fetchall()
        newest: dict[tuple, int] = {}
        for rowid, *key in rows:
            newest[tuple(key)] = max(newest.get(tuple(key), rowid), rowid)
        stale.update(row[0] for row in rows if row[0] in scanned and row[0] < newest[row[1:]])
    if table in _STEPPED:
        phase, step, below, seen = None, None, 0, 0  # `below`: the highest id of a lower step
        for ph, st, rowid in sorted(dst.execute(f"SELECT phase, step, rowid FROM {table}")):
            if ph != phase:
                phase, step, below, seen = ph, st, 0, 0
            elif st != step:
                step, below = st, seen
            if rowid in scanned and rowid < below:
                stale.add(rowid)
            seen = max(seen, rowid)
    return stale


def _scan_rows(path: Path):
    """Yield `(table, (rowid, *values))` for each row in a table-leaf page of the database file
    at `path` that is not on its free list, the table told by the row's shape (see `_SHAPES`)."""
    if path.stat().st_size < 100:
        return
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        page_size = int.from_bytes(data[16:18], "big")
        page_size = 65536 if page_size == 1 else page_size
        if not _page_size_ok(page_size):
            return
        usable, n_pages = page_size - data[20], len(data) // page_size
        free = _free_pages(data, page_size, n_pages)
        for pgno in range(1, n_pages + 1):
            if pgno in free:
                continue
            for rowid, record in _leaf_cells(data, pgno, page_size, usable):
                try:
                    values = _record(record)
                except ValueError:
                    continue
                table = _shape(values)
                if table is not None:
                    yield table, (rowid, *(values if table == "meta" else values[1:]))


def _free_pages(data: bytes, page_size: int, n_pages: int) -> set[int]:
    """The pages on the free list (trunks and leaves), as far as its chain can be followed."""
    free: set[int] = set()
    trunk = int.from_bytes(data[32:36], "big")
    while 2 <= trunk <= n_pages and trunk not in free:
        free.add(trunk)
        base = (trunk - 1) * page_size
        count = int.from_bytes(data[base + 4:base + 8], "big")
        if count > page_size // 4 - 2:
            break
        leaves = data[base + 8:base + 8 + 4 * count]
        free.update(int.from_bytes(leaves[i:i + 4], "big") for i in range(0, len(leaves), 4))
        trunk = int.from_bytes(data[base:base + 4], "big")
    return free


def _leaf_cells(data: bytes, pgno: int, page_size: int, usable: int):
    """Yield `(rowid, record bytes)` for the cells of page `pgno` if it is a table leaf; cells
    that point outside the page, or whose overflow chain leaves the file, are passed over."""
    base = (pgno - 1) * page_size
    head = base + (100 if pgno == 1 else 0)
    if data[head] != 13:
        return
    n_cells = int.from_bytes(data[head + 3:head + 5], "big")
    cells_end = head + 8 + 2 * n_cells
    if cells_end > base + usable:
        return
    for ptr in range(head + 8, cells_end, 2):
        offset = base + int.from_bytes(data[ptr:ptr + 2], "big")
        if not cells_end <= offset < base + usable:
            continue
        try:
            size, at = _varint(data, offset)
            rowid, at = _varint(data, at)
            payload = _payload(data, at, size, base + usable, page_size, usable)
        except (ValueError, IndexError):
            continue
        yield rowid - (1 << 64) if rowid >= 1 << 63 else rowid, payload


def _payload(data: bytes, at: int, size: int, end: int, page_size: int, usable: int) -> bytes:
    """A cell's `size` bytes of payload starting at `at`: the part on the page (which must end
    by `end`), then the overflow pages' (sqlite's file format, "Cell Payload Overflow Pages")."""
    most = usable - 35
    least = (usable - 12) * 32 // 255 - 23
    local = size if size <= most else least + (size - least) % (usable - 4)
    local = local if local <= most else least
    if at + local > end or size > len(data):
        raise ValueError("cell leaves its page")
    out = bytearray(data[at:at + local])
    following = int.from_bytes(data[at + local:at + local + 4], "big") if local < size else 0
    while len(out) < size:
        base = (following - 1) * page_size
        if following < 2 or base + page_size > len(data):
            raise ValueError("overflow chain leaves the file")
        following = int.from_bytes(data[base:base + 4], "big")
        out += data[base + 4:base + 4 + min(usable - 4, size - len(out))]
    return bytes(out)


def _varint(data: bytes, at: int) -> tuple[int, int]:
    """(value, offset past it) of sqlite's big-endian variable-length integer at `at`."""
    value = 0
    for i in range(8):
        byte = data[at + i]
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, at + i + 1
    return (value << 8) | data[at + 8], at + 9


_INT_SIZES = {1: 1, 2: 2, 3: 3, 4: 4, 5: 6, 6: 8}


def _record(record: bytes) -> list:
    """The values of a record in sqlite's record format; ValueError if it is not a whole one."""
    header, at = _varint(record, 0)
    types = []
    while at < header:
        kind, at = _varint(record, at)
        types.append(kind)
    if at != header:
        raise ValueError("record header overruns")
    values: list = []
    for kind in types:
        if kind in _INT_SIZES:
            n = _INT_SIZES[kind]
            values.append(int.from_bytes(record[at:at + n], "big", signed=True))
        elif kind == 7:
            n = 8
            values.append(struct.unpack(">d", record[at:at + 8].rjust(8, b"\0"))[0])
        elif kind >= 12:
            n = (kind - 12) // 2
            raw = record[at:at + n]
            values.append(raw.decode("utf-8") if kind & 1 else bytes(raw))  # UTF-8: ledgers'
        elif kind in (0, 8, 9):
            n = 0
            values.append(None if kind == 0 else kind - 8)
        else:
            raise ValueError("reserved serial type")
        at += n
    if at != len(record):
        raise ValueError("record length does not match its header")
    return values


def _shape(values: list) -> str | None:
    """The ledger table a row with these values belongs to, by `_SHAPES`, or None; a REAL
    column's integer becomes the float sqlite would give back."""
    for table, shape in _SHAPES.items():
        if not _SHORTEST.get(table, len(shape)) <= len(values) <= len(shape):
            continue
        if all(isinstance(v, _KINDS[k]) and not isinstance(v, bool)
               for v, k in zip(values, shape, strict=False)):
            for i, kind in enumerate(shape[:len(values)]):
                if kind == "r" and values[i] is not None:
                    values[i] = float(values[i])
            return table
    return None


def _header_ok(path: Path) -> bool:
    """Whether the 100-byte file header of the database at `path` is one sqlite accepts (an
    empty file is: sqlite takes it for an empty database)."""
    with open(path, "rb") as f:
        head = f.read(100)
    if not head:
        return True
    if len(head) < 100 or head[:16] != b"SQLite format 3\0" or head[21:24] != b"\x40\x20\x20":
        return False
    size = struct.unpack(">H", head[16:18])[0]
    return _page_size_ok(65536 if size == 1 else size) and head[18] in (1, 2) and head[19] in (1, 2)


def _repair_header(path: Path) -> None:
    """Rebuild the broken file header of the database at `path` from what every ledger shares,
    trying page sizes (sqlite's default first) until the tables can be read."""
    n_bytes = path.stat().st_size
    best = (-1, 4096)
    for page_size in (4096, 1024, 2048, 8192, 16384, 32768, 65536, 512):
        _write_header(path, page_size, n_bytes // page_size)
        readable = _readable_tables(path)
        if readable == len(_TABLES):
            return
        best = max(best, (readable, page_size), key=lambda b: b[0])
    _write_header(path, best[1], n_bytes // best[1])


def _write_header(path: Path, page_size: int, n_pages: int) -> None:
    """Write a file header for a UTF-8 database of `n_pages` pages of `page_size` bytes, with no
    free-page list (pages that were free become unused ones) and no auto-vacuum."""
    major, minor, patch = sqlite3.sqlite_version_info
    fields = (page_size % 65536 or 1, 1, 1, 0, 64, 32, 32,  # size, versions, reserve, fractions
              1, n_pages, 0, 0, 1, 4, 0, 0, 1, 0, 0, 0,  # counter .. application id
              1, major * 1_000_000 + minor * 1000 + patch)  # version-valid-for, sqlite version
    with open(path, "r+b") as f:
        f.write(struct.pack(">16sHBBBBBB12I20x2I", b"SQLite format 3\0", *fields))


def _readable_tables(path: Path) -> int:
    """How many of the ledger's tables at `path` give their first and last row without error."""
    readable = 0
    with closing(_connect_damaged(path)) as conn:
        for table in _TABLES:
            try:
                conn.execute(f"SELECT * FROM {table} ORDER BY rowid LIMIT 1").fetchall()
                conn.execute(f"SELECT * FROM {table} ORDER BY rowid DESC LIMIT 1").fetchall()
            except sqlite3.DatabaseError:
                continue
            readable += 1
    return readable


def _move_aside(path: Path) -> Path:
    """Move the damaged ledger at `path` and its `-wal`/`-shm` files to a free
    `<name>.damaged-<YYYYmmdd-HHMMSS>[-n]` beside it. The database is linked (or copied) there
    and left in place, to be replaced atomically by its salvage; the logs are moved first, so the
    salvage never meets the damaged file's log."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside, n = _side(path, f".damaged-{stamp}"), 0
    while any(file.exists() for file in _with_logs(aside)):
        n += 1
        aside = _side(path, f".damaged-{stamp}-{n}")
    try:
        os.link(path, aside)
    except OSError:  # a file system without hard links
        shutil.copy2(path, aside)
    for suffix in ("-wal", "-shm"):
        if _side(path, suffix).exists():
            os.replace(_side(path, suffix), _side(aside, suffix))
    return aside


def _fsync(path: Path) -> None:
    """Flush `path` (a file, or a directory's entries) to disk, where the platform can."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # a directory on Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
