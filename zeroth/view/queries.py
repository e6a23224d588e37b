"""Every SQL query of `zeroth view`: read-only, paged, parameterised, index-friendly.

Each function takes an open read-only connection (`connect`) to one run's ledger and returns
plain JSON-able data. User input only ever reaches SQL as `?` parameters; the few names put
into SQL text (column expressions, ORDER BY clauses) come from fixed tables in this module.
`saved_evals` reads the other evaluations of a run: the JSON files `zeroth eval` writes.
"""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

from zeroth.pipeline.ledger import EVAL_PREFIX, connect_readonly, merge_metrics, phase_kind
from zeroth.record.thoughts import reflection_count, split_reasoning

# ORDER BY clauses of /api/rollouts, each following an index on (phase, <column>) so a page
# reads its rows in order instead of sorting the whole phase. Across phases (no phase filter)
# the step orders go phase by phase.
ORDERS = {
    "step": "step, prompt_idx, sample_idx, id",
    "-step": "step DESC, prompt_idx, sample_idx, id",
    "reward": "reward, id",
    "-reward": "reward DESC, id DESC",
    "len": "n_tokens, id",
    "-len": "n_tokens DESC, id DESC",
}
SNIPPET_CHARS = 300  # of reasoning and answer in a /api/rollouts row; /api/group has it all


def connect(ledger: Path) -> sqlite3.Connection:
    """A read-only connection to a ledger; safe while its run writes (WAL). It has `pylower`,
    Python's lower-casing, which (unlike SQLite's lower and LIKE) folds non-ASCII letters."""
    conn = connect_readonly(ledger, timeout=10.0)
    conn.create_function("pylower", 1, _lower, deterministic=True)
    return conn


def _lower(text):
    return text.lower() if isinstance(text, str) else text


def columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def _has_index(conn: sqlite3.Connection, name: str) -> bool:
    sql = "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?"
    return conn.execute(sql, (name,)).fetchone() is not None


def finite(value):
    """`value` with NaN and infinities (at any depth) turned into None, for strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def _loads(text):
    return None if text is None else json.loads(text)


# -- runs and metrics --------------------------------------------------------------------------


def _distinct_phases(conn: sqlite3.Connection, table: str) -> list[str]:
    """The distinct phases of a big table by a loose scan of its phase index (a seek each)."""
    sql = (f"WITH RECURSIVE p(phase) AS (SELECT MIN(phase) FROM {table} UNION ALL "
           f"SELECT (SELECT MIN(phase) FROM {table} WHERE phase > p.phase) FROM p "
           "WHERE p.phase IS NOT NULL) SELECT phase FROM p WHERE phase IS NOT NULL")
    return [row[0] for row in conn.execute(sql)]


def phase_order(conn: sqlite3.Connection) -> list[str]:
    """Every phase with metrics, rollouts or eval samples: those with metrics in the order they
    were first logged, then any others (a first step still being written) by name."""
    sql = "SELECT phase FROM metrics GROUP BY phase ORDER BY MIN(id)"
    order = [row[0] for row in conn.execute(sql)]
    for table in ("rollouts", "evals"):
        order += [p for p in _distinct_phases(conn, table) if p not in order]
    return order


def phase_summary(conn: sqlite3.Connection) -> list[dict]:
    """`[{"phase", "steps": last step, "rollouts": count}]` of the training phases."""
    last = dict(conn.execute("SELECT phase, MAX(step) FROM metrics GROUP BY phase"))
    out = []
    for phase in phase_order(conn):
        if phase.startswith(EVAL_PREFIX):
            continue
        sql = "SELECT COUNT(*), MAX(step) FROM rollouts WHERE phase = ?"
        count, step = conn.execute(sql, (phase,)).fetchone()
        out.append({"phase": phase, "steps": max(last.get(phase) or 0, step or 0),
                    "rollouts": count})
    return out


def merged_metrics(conn: sqlite3.Connection) -> dict[str, dict[int, dict]]:
    """{phase: {step: merged metrics}}, phases in logging order, steps ascending."""
    rows = conn.execute("SELECT id, phase, step, data FROM metrics").fetchall()
    out: dict[str, dict[int, dict]] = {}
    for m in merge_metrics([(i, phase, step, json.loads(d)) for i, phase, step, d in rows]):
        out.setdefault(m.pop("phase"), {})[m.pop("step")] = m
    return out


def _numeric(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def metrics(conn: sqlite3.Connection) -> list[dict]:
    """The training phases' step series: every key numeric at some step, None where missing."""
    out = []
    for phase, by_step in merged_metrics(conn).items():
        if phase.startswith(EVAL_PREFIX):
            continue
        steps = list(by_step)
        keys = sorted({k for d in by_step.values() for k, v in d.items() if _numeric(v)})
        series = {k: [_value(by_step[s].get(k)) for s in steps] for k in keys}
        out.append({"phase": phase, "kind": phase_kind(phase), "steps": steps, "series": series})
    return out


def curriculum(conn: sqlite3.Connection) -> list[dict]:
    """The curriculum's level changes ({stage, step, family, knob, from, to, accuracy,
    window}: zeroth.tasks.curriculum), [] for a run without one."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'curriculum'").fetchone()
    changes = _loads(row[0]) if row else None
    return [finite(c) for c in changes if isinstance(c, dict)] if isinstance(changes, list) else []


def events(conn: sqlite3.Connection) -> list[dict]:
    """What happened to the run ({time, kind, text}: a stop at a safe point, a damaged
    checkpoint passed over, a salvaged ledger, too many non-finite steps; zeroth.pipeline.faults),
    oldest first; [] when nothing did."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'events'").fetchone()
    found = _loads(row[0]) if row else None
    return [e for e in found if isinstance(e, dict)] if isinstance(found, list) else []


def _value(value):
    return value if _numeric(value) else None


def eval_label(phase: str) -> str:
    """`eval_start` -> "start", `eval_rl` -> "after rl", `eval_distill_before` -> "before distill"."""
    name = phase[len(EVAL_PREFIX):]
    if name == "start":
        return "start"
    if name.endswith("_before"):
        return "before " + name[: -len("_before")]
    return "after " + name


def _meta(conn: sqlite3.Connection, key: str):
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return _loads(row[0]) if row else None


def evals(conn: sqlite3.Connection) -> list[dict]:
    by_phase = merged_metrics(conn)
    out = []
    for phase in phase_order(conn):
        if not phase.startswith(EVAL_PREFIX):
            continue
        logged = by_phase.get(phase, {})
        numbers = logged.get(0) or (next(iter(logged.values())) if logged else {})
        tables = {key: _meta(conn, f"{phase}_{key}") for key in ("by_difficulty", "by_task")}
        count = conn.execute("SELECT COUNT(*) FROM evals WHERE phase = ?", (phase,)).fetchone()[0]
        out.append({"phase": phase, "label": eval_label(phase), "source": "run",
                    "metrics": numbers, **tables, "samples": count})
    return out


# -- evaluations saved by `zeroth eval` ---------------------------------------------------------

SAVED_SOURCE = "zeroth eval"
SAVED_MAX_BYTES = 5_000_000  # a results file is a few KB: anything this big is not one


def saved_eval_files(run_dir: Path) -> list[Path]:
    """runs/<name>/evals/*.json (zeroth eval's home for them) and the older eval-*.json."""
    return sorted((run_dir / "evals").glob("*.json")) + sorted(run_dir.glob("eval-*.json"))


def saved_evals_updated(run_dir: Path) -> float:
    """The newest change among the saved evaluations (0 when there are none)."""
    paths = [run_dir / "evals", *saved_eval_files(run_dir)]
    times = []
    for path in paths:
        try:
            times.append(path.stat().st_mtime)
        except OSError:
            continue
    return max(times, default=0.0)


def saved_evals(run_dir: Path) -> list[dict]:
    """The run's `zeroth eval` results in training order (stage, step; final models last;
    unreadable files last, each with an "error")."""
    return sorted((saved_eval(run_dir, f) for f in saved_eval_files(run_dir)), key=_saved_order)


def saved_eval(run_dir: Path, path: Path) -> dict:
    """One results file as an /api/evals entry; `error` says why one cannot be shown."""
    name = path.relative_to(run_dir).as_posix()
    entry = {"phase": None, "label": name, "source": SAVED_SOURCE, "file": name, "task": None,
             "checkpoint": None, "metrics": {}, "by_difficulty": None, "by_task": None,
             "samples": None}
    try:
        if path.stat().st_size > SAVED_MAX_BYTES:
            return {**entry, "error": f"{name} is too big to be a zeroth eval result"}
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        return {**entry, "error": f"cannot read {name}: {reason}"}
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        return {**entry, "error": f"{name} is not a zeroth eval result (no metrics)"}
    ckpt = _saved_checkpoint(run_dir, data)
    levels, families = data.get("by_difficulty"), data.get("by_task")
    k, problems = data.get("k"), data.get("problems")
    return {**entry, "label": saved_label(ckpt), "task": data.get("task"), "checkpoint": ckpt,
            "metrics": {key: v for key, v in data["metrics"].items() if _numeric(v) or v is None},
            "by_difficulty": levels if isinstance(levels, dict) and levels else None,
            "by_task": families if isinstance(families, dict) and families else None,
            "samples": problems * (k + 1) if _count(k) and _count(problems) else None,
            "k": k if _count(k) else None, "timestamp": data.get("timestamp")}


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _saved_checkpoint(run_dir: Path, data: dict) -> dict | None:
    """{"tag", "stage", "stage_index", "step"} of the model a results file scored: as recorded,
    or (files written before `zeroth eval` recorded it) read off the model's path."""
    ckpt = data.get("checkpoint")
    if isinstance(ckpt, dict) and isinstance(ckpt.get("tag"), str):
        return {key: ckpt.get(key) for key in ("tag", "stage", "stage_index", "step")}
    model = Path(str(data.get("model") or ""))
    if model.name == "final":
        return {"tag": "final", "stage": None, "stage_index": None, "step": None}
    if model.name != "model" or model.parent.parent.name != "checkpoints":
        return None
    from zeroth.cli.eval import checkpoint_info

    return checkpoint_info(run_dir / "checkpoints" / model.parent.name)


def saved_label(ckpt: dict | None) -> str:
    """"checkpoint rl-000030 (rl step 30)", "final model", or "model" when unknown."""
    if ckpt is None:
        return "model"
    if ckpt["tag"] == "final":
        return "final model"
    where = f"{ckpt['stage']} step {ckpt['step']}" if ckpt["stage"] and ckpt["step"] is not None \
        else None
    return f"checkpoint {ckpt['tag']}" + (f" ({where})" if where else "")


def _saved_order(entry: dict) -> tuple:
    """Checkpoints by (stage index, step), then final models, then unknown ones, then errors."""
    ckpt, big = entry["checkpoint"] or {}, float("inf")
    index, step = ckpt.get("stage_index"), ckpt.get("step")
    rank = 3 if "error" in entry else 0 if step is not None else 1 if ckpt.get("tag") else 2
    return (rank, index if _numeric(index) else big, step if _numeric(step) else big,
            str(ckpt.get("tag")), str(entry["task"]), entry["file"])


# -- filtered, paged rows -----------------------------------------------------------------------


def _like(text: str) -> str:
    """A LIKE pattern matching `text` anywhere (its % and _ escaped with backslash)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class Where:
    """A WHERE clause built from `?` conditions and their parameters."""

    def __init__(self):
        self.parts: list[str] = []
        self.params: list = []

    def add(self, condition: str, *params) -> None:
        self.parts.append(condition)
        self.params.extend(params)

    def text(self, q: str | None) -> None:
        """Case-insensitive substring search over prompt and completion. SQLite's LIKE folds
        ASCII letters only, so a query with other letters (É, Ж) compares Python-lowercased
        text (`pylower`, slower: a Python call per row); an ASCII query keeps the fast LIKE."""
        if not q:
            return
        if q.isascii():
            self.add("(prompt LIKE ? ESCAPE '\\' OR completion LIKE ? ESCAPE '\\')",
                     _like(q), _like(q))
        else:
            pattern = _like(q.lower())
            self.add("(pylower(prompt) LIKE ? ESCAPE '\\' OR "
                     "pylower(completion) LIKE ? ESCAPE '\\')", pattern, pattern)

    def sql(self) -> str:
        return " WHERE " + " AND ".join(self.parts) if self.parts else ""


def _text_columns(conn: sqlite3.Connection) -> str:
    """task and difficulty, or NULLs on a ledger written before those columns existed."""
    have = columns(conn, "rollouts")
    return ", ".join(c if c in have else f"NULL AS {c}" for c in ("task", "difficulty"))


ROLLOUT_SELECT = ("id, phase, step, prompt_idx, sample_idx, prompt, completion, n_tokens, "
                  "rewards, reward, advantage, answer, extra")


def rollout_where(conn: sqlite3.Connection, f: dict) -> Where:
    """The WHERE of /api/rollouts from parsed filters (absent ones are None)."""
    w = Where()
    have = columns(conn, "rollouts")
    simple = {"phase": "phase = ?", "step": "step = ?", "step_min": "step >= ?",
              "step_max": "step <= ?", "reward_min": "reward >= ?", "reward_max": "reward <= ?",
              "len_min": "n_tokens >= ?", "len_max": "n_tokens <= ?"}
    for key, condition in simple.items():
        if f.get(key) is not None:
            w.add(condition, f[key])
    for key in ("task", "difficulty"):
        if f.get(key) is not None:
            w.add(f"{key} = ?" if key in have else "0", *([f[key]] if key in have else []))
    w.text(f.get("q"))
    return w


def rollouts_sql(conn: sqlite3.Connection, f: dict, page_from: str = "rollouts",
                 count_from: str = "rollouts") -> tuple[str, str, list]:
    """(page query, count query, parameters) of /api/rollouts; the page takes 2 more: limit,
    offset. `page_from` / `count_from` may carry an index hint (see `rollout_queries`)."""
    w = rollout_where(conn, f)
    page = (f"SELECT {ROLLOUT_SELECT}, {_text_columns(conn)} FROM {page_from}{w.sql()} "
            f"ORDER BY {_order(f)} LIMIT ? OFFSET ?")
    return page, f"SELECT COUNT(*) FROM {count_from}{w.sql()}", w.params


def _order(f: dict) -> str:
    order = f.get("order") or "step"
    across = f.get("phase") is None and order in ("step", "-step")
    return ("phase, " if across else "") + ORDERS[order]


# Without statistics SQLite can't tell a filter that keeps 1% of a phase from one that keeps
# 90%; these hints pick between reading the phase in page order and stopping after a page
# (many matches), following the filter's index (few matches), and a plain table scan (filters
# no index serves: a scan reads rows far faster than one index lookup each).
RANGE_FILTERS = ("step", "step_min", "step_max", "reward_min", "reward_max", "len_min", "len_max")
ORDER_INDEX = {"step": "rollouts_phase_group", "reward": "rollouts_phase_reward",
               "len": "rollouts_phase_len"}


def _phase_share(conn: sqlite3.Connection, f: dict) -> tuple[int, bool]:
    """(rows of the filtered phase, whether that phase is most of the table)."""
    everything = conn.execute("SELECT MAX(id) FROM rollouts").fetchone()[0] or 0
    if f.get("phase") is None:
        return everything, True
    sql = "SELECT COUNT(*) FROM rollouts WHERE phase = ?"
    rows = conn.execute(sql, (f["phase"],)).fetchone()[0]
    return rows, rows * 3 > everything


def _count_from(f: dict, big_phase: bool) -> str:
    ranged = any(f.get(k) is not None for k in RANGE_FILTERS)
    return "rollouts NOT INDEXED" if big_phase and not ranged else "rollouts"


def _page_from(conn, f: dict, total: int, phase_rows: int, need: int, count_from: str) -> str:
    index = ORDER_INDEX[(f.get("order") or "step").lstrip("-")]
    if f.get("phase") is not None and total * total > need * phase_rows and _has_index(conn, index):
        return f"rollouts INDEXED BY {index}"  # matches are common: a page is found early
    return count_from


def rollout_queries(conn: sqlite3.Connection, f: dict, offset: int, limit: int):
    """(page sql, count sql, parameters, total) as /api/rollouts runs them, index hints and all;
    the page sql takes two more parameters: limit, offset."""
    page_from = count_from = "rollouts"
    filtered = bool(rollout_where(conn, {**f, "phase": None}).parts)  # beyond the phase
    if filtered:
        phase_rows, big_phase = _phase_share(conn, f)
        count_from = _count_from(f, big_phase)
    _, count, params = rollouts_sql(conn, f, count_from=count_from)
    total = conn.execute(count, params).fetchone()[0]
    if filtered:
        page_from = _page_from(conn, f, total, phase_rows, offset + limit, count_from)
    page, _, _ = rollouts_sql(conn, f, page_from=page_from)
    return page, count, params, total


def rollouts(conn: sqlite3.Connection, f: dict, offset: int, limit: int) -> dict:
    """A page of rollouts, each with the first SNIPPET_CHARS of its reasoning and answer
    (`reasoning_snippet`, `answer_snippet`) and the completion's length (`n_chars`)."""
    page, _, params, total = rollout_queries(conn, f, offset, limit)
    rows = conn.execute(page, [*params, limit, offset]) if offset < total else []
    return {"total": total, "offset": offset, "limit": limit,
            "rows": [rollout_row(r, full=False) for r in rows]}


def rollout_row(r: tuple, full: bool = True) -> dict:
    """A rollout as JSON: with the whole completion, its reasoning and answer when `full`,
    else with snippets of them. Reward components that are NaN/inf come as "nan"/"inf"/"-inf"
    (null means not scored)."""
    (id_, phase, step, prompt_idx, sample_idx, prompt, completion, n_tokens, rewards, reward,
     advantage, answer, extra, task, difficulty) = r
    completion = completion or ""
    reasoning, answer_text = split_reasoning(completion)
    row = {"id": id_, "phase": phase, "step": step, "prompt_idx": prompt_idx,
           "sample_idx": sample_idx, "prompt": prompt, "gold": answer, "n_tokens": n_tokens,
           "n_chars": len(completion), "rewards": _components(_loads(rewards)),
           "reward": reward, "advantage": advantage, "task": task, "difficulty": difficulty,
           "extra": _loads(extra), "reflections": reflection_count(completion)}
    if full:
        row.update(completion=completion, reasoning=reasoning, answer_text=answer_text)
    else:
        row.update(reasoning_snippet=reasoning[:SNIPPET_CHARS],
                   answer_snippet=answer_text[:SNIPPET_CHARS])
    return row


def _components(rewards) -> dict:
    """Reward components with NaN and infinities as strings, kept apart from null (not scored)."""
    if not isinstance(rewards, dict):
        return {}
    return {k: (str(v).lower() if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in rewards.items()}


def group(conn: sqlite3.Connection, phase: str, step: int, prompt_idx: int) -> dict | None:
    """The samples of one prompt at one step, by sample_idx; None when there are none."""
    sql = (f"SELECT {ROLLOUT_SELECT}, {_text_columns(conn)} FROM rollouts "
           "WHERE phase = ? AND step = ? AND prompt_idx = ? ORDER BY sample_idx, id")
    samples = [rollout_row(r) for r in conn.execute(sql, (phase, step, prompt_idx))]
    if not samples:
        return None
    first = samples[0]
    return {"phase": phase, "step": step, "prompt_idx": prompt_idx, "prompt": first["prompt"],
            "gold": first["gold"], "task": first["task"], "difficulty": first["difficulty"],
            "samples": samples}


def _extreme(conn: sqlite3.Connection, fn: str, column: str, phase: str):
    """MIN or MAX of a column within a phase: one index seek when the column is indexed."""
    sql = f"SELECT {fn}({column}) FROM rollouts WHERE phase = ?"
    return conn.execute(sql, (phase,)).fetchone()[0]


def _tasks(conn: sqlite3.Connection, phase: str) -> set[str]:
    if "task" not in columns(conn, "rollouts"):
        return set()
    if _has_index(conn, "rollouts_phase_task"):  # a loose index scan: one seek per task
        sql = ("WITH RECURSIVE t(task) AS (SELECT MIN(task) FROM rollouts WHERE phase = ?1 "
               "UNION ALL SELECT (SELECT MIN(task) FROM rollouts WHERE phase = ?1 AND "
               "task > t.task) FROM t WHERE t.task IS NOT NULL) SELECT task FROM t")
    else:  # one pass over the phase: a plain scan when the phase is most of the table
        hint = " NOT INDEXED" if _phase_share(conn, {"phase": phase})[1] else ""
        sql = f"SELECT DISTINCT task FROM rollouts{hint} WHERE phase = ?1"
    return {row[0] for row in conn.execute(sql, (phase,)) if row[0] is not None}


def _span(values: list) -> list:
    values = [v for v in values if v is not None]
    return [min(values), max(values)] if values else [None, None]


def steps(conn: sqlite3.Connection, phases: list[str]) -> dict:
    """Ranges for the filter widgets over `phases`: steps, tasks, reward and length."""
    spans: dict[str, list] = {"step": [], "reward": [], "n_tokens": []}
    tasks: set[str] = set()
    for phase in phases:
        for column, values in spans.items():
            values += [_extreme(conn, "MIN", column, phase), _extreme(conn, "MAX", column, phase)]
        tasks |= _tasks(conn, phase)
    return {"steps": _span(spans["step"]), "tasks": sorted(tasks),
            "reward": _span(spans["reward"]), "len": _span(spans["n_tokens"])}


def training_phases(conn: sqlite3.Connection) -> list[str]:
    return [p for p in phase_order(conn) if not p.startswith(EVAL_PREFIX)]


# -- evaluation samples -------------------------------------------------------------------------


def eval_samples(conn: sqlite3.Connection, f: dict, offset: int, limit: int) -> dict:
    w = Where()
    for key, condition in (("phase", "phase = ?"), ("problem", "problem_idx = ?"),
                           ("correct", "correct = ?")):
        if f.get(key) is not None:
            w.add(condition, f[key])
    w.text(f.get("q"))
    total = conn.execute(f"SELECT COUNT(*) FROM evals{w.sql()}", w.params).fetchone()[0]
    sql = (f"SELECT problem_idx, sample_idx, prompt, completion, n_tokens, correct, answer "
           f"FROM evals{w.sql()} ORDER BY phase, problem_idx, sample_idx, id LIMIT ? OFFSET ?")
    rows = [_eval_row(r) for r in conn.execute(sql, [*w.params, limit, offset])]
    return {"total": total, "offset": offset, "limit": limit, "rows": rows}


def _eval_row(r: tuple) -> dict:
    problem_idx, sample_idx, prompt, completion, n_tokens, correct, answer = r
    reasoning, answer_text = split_reasoning(completion)
    return {"problem_idx": problem_idx, "sample_idx": sample_idx, "prompt": prompt,
            "completion": completion, "reasoning": reasoning, "answer_text": answer_text,
            "gold": answer, "correct": bool(correct), "n_tokens": n_tokens,
            "reflections": reflection_count(completion)}
