"""The HTTP API of `zeroth view` (zeroth.view.server / queries) against real and synthetic ledgers."""

from __future__ import annotations

import http.client
import json
import math
import os
import re
import shutil
import socket
import sqlite3
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import closing
from pathlib import Path

import pytest

from zeroth import cli
from zeroth.errors import UserError
from zeroth.pipeline.ledger import Ledger
from zeroth.record.thoughts import reflection_count, split_reasoning
from zeroth.view import queries, server

BIG_ROWS = 200_000  # 200 steps x 125 prompts x 8 samples
NEEDLE = "Zebra-Needle"

# Rows made inside SQLite (fast): reward cycles over 0.0..1.0, n_tokens over 1..200, tasks
# alternate by prompt, and one completion holds NEEDLE.
_BIG_SQL = """
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ? - 1)
INSERT INTO rollouts (phase, step, prompt_idx, sample_idx, prompt, completion, n_tokens, rewards,
                      reward, advantage, answer, extra, task, difficulty)
SELECT 'rl', i / 1000 + 1, (i / 8) % 125, i % 8, 'What is ' || ((i / 8) % 125) || '?',
       '<think>hmm ' || (i % 8) || '</think><answer>' || (i % 97) || '</answer>'
           || CASE i WHEN 123457 THEN ' zebra-needle' ELSE '' END,
       (i * 37) % 200 + 1, json_object('correct', ((i * 7) % 11) / 10.0),
       ((i * 7) % 11) / 10.0, ((i * 7) % 11) / 10.0 - 0.5, '' || ((i / 8) % 125), NULL,
       CASE (i / 8) % 2 WHEN 0 THEN 'countdown' ELSE 'addition' END, '' || ((i / 8) % 3)
FROM n
"""


def _eval_rows(n: int, correct_every: int = 2) -> list[dict]:
    return [{"problem_idx": i // 3, "sample_idx": i % 3 - 1, "prompt": f"q{i // 3}",
             "completion": f"<think>wait</think><answer>{i}</answer>", "n_tokens": 5 + i,
             "correct": i % correct_every == 0, "answer": str(i)} for i in range(n)]


def make_big(run_dir: Path) -> Path:
    """A run still writing (no summary.json): many rollouts, NaN metrics, two evaluations."""
    ledger = Ledger(run_dir / "ledger.sqlite")
    for step in (1, 2, 3):
        ledger.log_metrics("rl", step, {"reward": 0.1 * step, "kl": float("nan") if step == 2
                                        else 0.01, "note": "text is not a series"})
    ledger.log_metrics("rl", 3, {"entropy": 1.5})  # merged into step 3
    ledger.set_meta("events", [{"time": "2026-12-07 10:00:00", "kind": "stopped",
                                "text": "stopped by SIGTERM at checkpoint rl-000003"}])
    for phase in ("eval_start", "eval_rl"):
        ledger.log_eval(phase, _eval_rows(12))
        ledger.log_metrics(phase, 0, {"pass@1": 0.5, "greedy": 0.25})
        ledger.set_meta(f"{phase}_by_difficulty", {"1": {"pass@1": 0.5}})
    ledger.close()
    with sqlite3.connect(run_dir / "ledger.sqlite", isolation_level=None) as conn:
        conn.execute("BEGIN")
        conn.execute(_BIG_SQL, (BIG_ROWS,))
        conn.execute("COMMIT")
    conn.close()
    return run_dir


@pytest.fixture(scope="module")
def tiny_runs(finished_tiny_run) -> Path:
    """runs/ holding the session's real finished tiny run `t` (4 RL steps x 4 prompts x 4
    samples; conftest.py). Read only: the server opens ledgers read-only."""
    return finished_tiny_run.parent


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    return make_big(tmp_path_factory.mktemp("big") / "big")


@pytest.fixture(scope="module")
def srv(tiny_runs, big):
    s = server.start_in_thread([tiny_runs, big], port=0)
    yield s
    s.shutdown()
    s.server_close()


def fetch(s, path: str, **params) -> tuple[int, dict]:
    """(status, JSON body) of GET path?params on the server."""
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    try:
        with urllib.request.urlopen(f"{s.url}{path.lstrip('/')}?{query}", timeout=30) as r:
            assert r.headers["Content-Type"] == "application/json"
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        assert e.headers["Content-Type"] == "application/json"
        return e.code, json.loads(e.read())


def get(s, path: str, **params) -> dict:
    code, body = fetch(s, path, **params)
    assert code == 200, body
    return body


def ledger_count(run_dir: Path, where: str = "1", params: tuple = ()) -> int:
    with sqlite3.connect(run_dir / "ledger.sqlite") as conn:
        return conn.execute(f"SELECT COUNT(*) FROM rollouts WHERE {where}", params).fetchone()[0]


# -- runs, metrics, evals ---------------------------------------------------------------------


def test_runs_lists_both_with_status_and_phases(srv, tiny_runs, big):
    runs = {r["id"]: r for r in get(srv, "/api/runs")["runs"]}
    assert set(runs) == {"t", "big"}
    t = runs["t"]
    assert t["status"] == "finished" and t["summary"]["run"] == "t"
    assert (t["status_text"], t["resume"]) == ("finished", None)
    assert (t["task"], t["algorithm"], t["model"]) == ("addition", "grpo", "scratch")
    assert {p["phase"]: p["rollouts"] for p in t["phases"]} == {"pretrain": 0, "rl": 64}
    assert {p["phase"]: p["steps"] for p in t["phases"]}["rl"] == 4
    written = [f.stat().st_mtime for f in (tiny_runs / "t").glob("ledger.sqlite*")
               if not f.name.endswith("-shm") and f.stat().st_size]  # the database, its log
    assert t["updated"] == pytest.approx(max(written), abs=1)
    b = runs["big"]
    assert b["status"] == "running" and b["summary"] is None and b["task"] is None
    assert b["phases"] == [{"phase": "rl", "steps": 200, "rollouts": BIG_ROWS}]  # rollouts lead
    assert t["events"] == [] and [e["kind"] for e in b["events"]] == ["stopped"]


def test_viewing_a_stopped_run_does_not_make_it_look_running(tmp_path):
    """A run folder from before runs locked theirs (no .lock): the ledger's last write decides,
    and the empty WAL each read-only request leaves behind does not count as one."""
    ledger = Ledger(tmp_path / "killed" / "ledger.sqlite")
    ledger.log_metrics("rl", 1, {"reward": 0.0})
    ledger.close()  # the last connection: the WAL is folded into the database and removed
    os.utime(tmp_path / "killed" / "ledger.sqlite", (time.time() - 3600,) * 2)
    s = server.start_in_thread([tmp_path])
    try:  # each request opens the ledger read-only, which leaves an empty WAL behind
        for _ in range(2):
            [run] = get(s, "/api/runs")["runs"]
            assert run["status"] == "stopped" and run["status_text"].startswith(
                "stopped at rl step 1 (no checkpoint yet")
            get(s, "/api/metrics", run="killed")
    finally:
        s.shutdown()
        s.server_close()


def test_a_killed_run_is_listed_as_stopped_with_where_and_how_to_resume(tmp_path, monkeypatch):
    from test_runstate import LockHolder, make_run

    monkeypatch.chdir(tmp_path)
    run = make_run(tmp_path / "runs" / "a")  # rl steps 1..34 logged, checkpoint rl-000030
    for name in ("ledger.sqlite", "ledger.sqlite-wal"):  # long quiet: the lock still says
        if (run / name).exists():
            os.utime(run / name, (time.time() - 3600,) * 2)
    child = LockHolder(run)
    s = server.start_in_thread([tmp_path / "runs"])
    try:
        [entry] = get(s, "/api/runs")["runs"]
        assert (entry["status"], entry["status_text"], entry["resume"]) == \
            ("running", "running: rl step 34", None)
        child.kill()
        [entry] = get(s, "/api/runs")["runs"]
        assert entry["status"] == "stopped"
        assert entry["status_text"] == "stopped at rl step 34 (resume from rl-000030)"
        assert entry["resume"] == "zeroth run --resume runs/a"
        assert entry["at"] == {"stage": "rl", "step": 34, "checkpoint": "rl-000030",
                               "after": None}
        (run / "summary.json").write_text(json.dumps({"run": "a"}))
        [entry] = get(s, "/api/runs")["runs"]
        assert (entry["status"], entry["status_text"], entry["resume"]) == \
            ("finished", "finished", None)
    finally:
        child.close()
        s.shutdown()
        s.server_close()


def test_duplicate_run_names_get_suffixes(tmp_path):
    for folder in ("a", "b"):
        Ledger(tmp_path / folder / "x" / "ledger.sqlite").close()
    assert list(server.find_runs([tmp_path / "a", tmp_path / "b"])) == ["x", "x-2"]


def test_metrics_series_match_the_ledger(srv, tiny_runs):
    body = get(srv, "/api/metrics", run="t")
    phases = {p["phase"]: p for p in body["phases"]}
    assert list(phases) == ["pretrain", "rl"]  # evaluations are in /api/evals
    rl = phases["rl"]
    assert rl["kind"] == "rl" and rl["steps"] == [1, 2, 3, 4]
    logged = Ledger(tiny_runs / "t" / "ledger.sqlite", readonly=True).metrics("rl")
    assert rl["series"]["reward"] == pytest.approx([m["reward"] for m in logged])
    assert len(rl["series"]["mean_len"]) == 4


def test_metrics_nan_is_null_and_missing_keys_are_null(srv):
    rl = get(srv, "/api/metrics", run="big")["phases"][0]
    assert rl["series"]["kl"] == [0.01, None, 0.01]
    assert rl["series"]["entropy"] == [None, None, 1.5]
    assert "note" not in rl["series"]


def test_evals_in_run_order_with_labels(srv, tiny_runs):
    evals = get(srv, "/api/evals", run="t")["evals"]
    assert [(e["phase"], e["label"]) for e in evals] == [("eval_pretrain", "after pretrain"),
                                                        ("eval_rl", "after rl")]
    ledger = Ledger(tiny_runs / "t" / "ledger.sqlite", readonly=True)
    for e in evals:
        assert e["samples"] == len(ledger.evals(e["phase"])) > 0
        assert {"pass@1", "greedy", "mean_len"} <= set(e["metrics"])
    big = get(srv, "/api/evals", run="big")["evals"]
    assert [e["label"] for e in big] == ["start", "after rl"]
    assert big[0]["by_difficulty"] == {"1": {"pass@1": 0.5}} and big[0]["samples"] == 12
    assert queries.eval_label("eval_distill_before") == "before distill"


@pytest.fixture(scope="module")
def scored(finished_tiny_run, tmp_path_factory) -> Path:
    """A copy of the tiny run after `zeroth eval --checkpoint all` on countdown (which has
    difficulty levels), `zeroth eval` of its final model, a results file in the old place and
    format (eval-<task>.json, no "checkpoint"), and two files that are not results."""
    run = shutil.copytree(finished_tiny_run, tmp_path_factory.mktemp("scored") / "t")
    fast = ["eval.k=2", "eval.max_new_tokens=8", "--quiet"]
    assert cli.main(["eval", str(run), "tiny", "task.name=countdown", "--checkpoint", "all",
                     *fast]) == 0
    assert cli.main(["eval", str(run), *fast]) == 0  # final/, on the run's own task
    old = json.loads((run / "evals" / "rl-000004-countdown.json").read_text())
    del old["checkpoint"]
    (run / "eval-countdown.json").write_text(json.dumps(old))
    (run / "evals" / "broken.json").write_text('{"metrics": {"pass@1": 0.')
    (run / "evals" / "list.json").write_text("[1, 2]")
    return run


def kept_checkpoints(run: Path) -> list[tuple[str, str, int, int]]:
    """(tag, stage, stage index, step) of each checkpoint in the run, in training order."""
    found = []
    for state in (run / "checkpoints").glob("[!.]*/state.json"):
        tag = state.parent.name
        data = json.loads(state.read_text())
        found.append((tag, tag.rpartition("-")[0], data["index"], int(tag.rpartition("-")[2])))
    return sorted(found, key=lambda c: (c[2], c[3]))


def test_saved_evaluations_follow_the_runs_own(scored):
    s = server.start_in_thread([scored])
    try:
        evals = get(s, "/api/evals", run="t")["evals"]
        runs = get(s, "/api/runs")["runs"]
    finally:
        s.shutdown()
        s.server_close()
    assert [(e["phase"], e["source"]) for e in evals[:2]] == [("eval_pretrain", "run"),
                                                             ("eval_rl", "run")]
    saved = evals[2:]
    assert all(e["source"] == "zeroth eval" and e["phase"] is None for e in saved)
    kept = kept_checkpoints(scored)  # every one `--checkpoint all` scored, in training order
    assert kept[-2:] == [("rl-000003", "rl", 1, 3), ("rl-000004", "rl", 1, 4)]
    expected = [(f"checkpoint {tag} ({stage} step {step})", "countdown",
                 f"evals/{tag}-countdown.json") for tag, stage, _, step in kept]
    expected.insert(-1, ("checkpoint rl-000004 (rl step 4)", "countdown", "eval-countdown.json"))
    assert [(e["label"], e["task"], e["file"]) for e in saved] == [
        *expected,  # the old file (its checkpoint read off its model path) beside the new one
        ("final model", "addition", "evals/final-addition.json"),
        ("evals/broken.json", None, "evals/broken.json"),
        ("evals/list.json", None, "evals/list.json")]
    by_file = {e["file"]: e for e in saved}
    for e in saved[:-2]:
        data = json.loads((scored / e["file"]).read_text())
        assert e["metrics"] == data["metrics"] and e["by_difficulty"] == data["by_difficulty"]
        assert e["samples"] == data["problems"] * 3 and "error" not in e
    third = by_file["evals/rl-000003-countdown.json"]
    assert third["checkpoint"] == {"tag": "rl-000003", "stage": "rl", "stage_index": 1,
                                   "step": 3}
    assert by_file["eval-countdown.json"]["checkpoint"] == \
        by_file["evals/rl-000004-countdown.json"]["checkpoint"]
    assert third["by_difficulty"] and {"pass@1", "greedy"} <= set(third["metrics"])
    assert by_file["evals/final-addition.json"]["by_difficulty"] is None  # addition: no levels
    assert by_file["evals/broken.json"]["error"].startswith("cannot read evals/broken.json: ")
    assert "not a zeroth eval result" in by_file["evals/list.json"]["error"]
    newest = max(p.stat().st_mtime for p in (scored / "evals").iterdir())
    assert runs[0]["evals_updated"] >= newest  # the page re-reads /api/evals when it changes


def test_eval_samples_filters(srv):
    body = get(srv, "/api/eval_samples", run="big", phase="eval_rl", limit=5)
    assert body["total"] == 12 and len(body["rows"]) == 5
    row = body["rows"][0]
    assert (row["problem_idx"], row["sample_idx"], row["reasoning"]) == (0, -1, "wait")
    assert row["answer_text"] == "0" and row["gold"] == "0" and row["correct"] is True
    assert get(srv, "/api/eval_samples", run="big", phase="eval_rl", correct=0)["total"] == 6
    assert get(srv, "/api/eval_samples", run="big", phase="eval_rl", problem=2)["total"] == 3
    hit = get(srv, "/api/eval_samples", run="big", phase="eval_rl", q="<answer>11<")
    assert [r["gold"] for r in hit["rows"]] == ["11"]


# -- rollouts, groups, filter ranges ----------------------------------------------------------


def test_tiny_rollouts_match_the_ledger(srv, tiny_runs):
    body = get(srv, "/api/rollouts", run="t", phase="rl", limit=500)
    assert body["total"] == 4 * 4 * 4 == len(body["rows"])
    keys = [(r["step"], r["prompt_idx"], r["sample_idx"]) for r in body["rows"]]
    assert keys == sorted(keys)
    logged = {(r["step"], r["prompt_idx"], r["sample_idx"]): r
              for r in Ledger(tiny_runs / "t" / "ledger.sqlite", readonly=True).rollouts("rl")}
    for key, row in zip(keys, body["rows"], strict=True):
        ref = logged[key]
        assert row["rewards"] == ref["rewards"] and row["gold"] == ref["answer"]
        reasoning, answer = split_reasoning(ref["completion"])
        assert (row["reasoning_snippet"], row["answer_snippet"]) == (reasoning[:300], answer[:300])
        assert row["n_chars"] == len(ref["completion"])
        assert row["reflections"] == reflection_count(ref["completion"])
        assert row["task"] == "addition"


def test_group_returns_the_samples_sorted(srv):
    g = get(srv, "/api/group", run="t", phase="rl", step=2, prompt=1)
    assert [s["sample_idx"] for s in g["samples"]] == [0, 1, 2, 3]
    assert {s["prompt"] for s in g["samples"]} == {g["prompt"]}
    assert g["gold"] and g["task"] == "addition" and g["step"] == 2
    big = get(srv, "/api/group", run="big", phase="rl", step=7, prompt=5)
    assert [s["sample_idx"] for s in big["samples"]] == list(range(8))


def test_big_page_and_total(srv):
    body = get(srv, "/api/rollouts", run="big", phase="rl", limit=500, offset=1000)
    assert body["total"] == BIG_ROWS and len(body["rows"]) == 500
    assert (body["rows"][0]["step"], body["rows"][0]["prompt_idx"]) == (2, 0)
    last = get(srv, "/api/rollouts", run="big", phase="rl", offset=BIG_ROWS - 3)
    assert len(last["rows"]) == 3 and last["limit"] == 50


@pytest.mark.parametrize("params, where, args", [
    ({"step": 5}, "step = ?", (5,)),
    ({"step_min": 10, "step_max": 12}, "step BETWEEN ? AND ?", (10, 12)),
    ({"reward_min": 0.9}, "reward >= ?", (0.9,)),
    ({"reward_min": 0.2, "reward_max": 0.4}, "reward BETWEEN ? AND ?", (0.2, 0.4)),
    ({"len_min": 190}, "n_tokens >= ?", (190,)),
    ({"len_max": 3, "step_max": 50}, "n_tokens <= ? AND step <= ?", (3, 50)),
    ({"task": "countdown"}, "task = ?", ("countdown",)),
    ({"task": "countdown", "reward_max": 0.0}, "task = ? AND reward <= ?", ("countdown", 0.0)),
])
def test_filters_count_like_sql(srv, big, params, where, args):
    body = get(srv, "/api/rollouts", run="big", phase="rl", limit=20, **params)
    assert body["total"] == ledger_count(big, where, args) < BIG_ROWS
    assert len(body["rows"]) == min(20, body["total"])
    assert all(str(r["task"]) == params.get("task", r["task"]) for r in body["rows"])


def test_search_finds_the_planted_string_case_insensitively(srv):
    body = get(srv, "/api/rollouts", run="big", q=NEEDLE)
    assert body["total"] == 1
    hit = body["rows"][0]
    group = get(srv, "/api/group", run="big", phase="rl", step=hit["step"],
                prompt=hit["prompt_idx"])
    assert "zebra-needle" in group["samples"][hit["sample_idx"]]["completion"]
    assert get(srv, "/api/rollouts", run="big", q="100%")["total"] == 0  # % is literal


def test_orders(srv):
    top = get(srv, "/api/rollouts", run="big", phase="rl", order="-reward", limit=3)["rows"]
    assert [r["reward"] for r in top] == [1.0, 1.0, 1.0]
    short = get(srv, "/api/rollouts", run="big", phase="rl", order="len", limit=2)["rows"]
    assert [r["n_tokens"] for r in short] == [1, 1]
    late = get(srv, "/api/rollouts", run="big", phase="rl", order="-step", limit=1)["rows"]
    assert late[0]["step"] == 200


def test_steps_ranges(srv):
    body = get(srv, "/api/steps", run="big", phase="rl")
    assert body["steps"] == [1, 200] and body["tasks"] == ["addition", "countdown"]
    assert body["reward"] == [0.0, 1.0] and body["len"] == [1, 200]
    assert get(srv, "/api/steps", run="t")["steps"] == [1, 4]


def _plan(conn, sql: str, params: list) -> str:
    return " | ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params))


# (filters, the index the page reads, the index the count reads); None: any index. A filter
# keeping many rows (reward 1.0: 1 in 11) pages in step order, one keeping few follows its index.
@pytest.mark.parametrize("filters, page_index, count_index", [
    ({"phase": "rl"}, "rollouts_phase_group", None),
    ({"phase": "rl", "step": 5}, None, None),
    ({"phase": "rl", "step_min": 5, "step_max": 9}, None, None),
    ({"phase": "rl", "reward_min": 0.99}, "rollouts_phase_group", "rollouts_phase_reward"),
    ({"phase": "rl", "len_min": 7, "len_max": 7}, "rollouts_phase_len", "rollouts_phase_len"),
    ({"phase": "rl", "len_min": 190, "len_max": 199}, None, "rollouts_phase_len"),
    ({"phase": "rl", "len_max": 2, "order": "-reward"}, "rollouts_phase_len", "rollouts_phase_len"),
    ({"phase": "rl", "order": "-reward"}, "rollouts_phase_reward", None),
    ({"phase": "rl", "order": "-len"}, "rollouts_phase_len", None),
])
def test_filtered_queries_use_an_index(big, filters, page_index, count_index):
    conn = queries.connect(big / "ledger.sqlite")
    page, count, params, total = queries.rollout_queries(conn, filters, 0, 50)
    page_plan, count_plan = _plan(conn, page, [*params, 50, 0]), _plan(conn, count, params)
    assert "SEARCH rollouts USING" in page_plan and "SCAN" not in page_plan
    assert "SEARCH rollouts USING" in count_plan and "SCAN" not in count_plan
    assert f"INDEX {page_index or 'rollouts_phase_'}" in page_plan
    assert f"INDEX {count_index or 'rollouts_phase_'}" in count_plan
    if total * total > 50 * BIG_ROWS:  # many matches: read in page order, not sorted at all
        assert "TEMP B-TREE" not in page_plan
    conn.close()


@pytest.mark.parametrize("params, total", [
    ({"reward_min": 0.0}, BIG_ROWS),  # keeps everything: read in page order, stop early
    ({"q": "hmm 3"}, BIG_ROWS // 8),  # no index serves it: a table scan
    ({"q": NEEDLE.lower()}, 1),
    ({"task": "addition", "order": "-len"}, BIG_ROWS // 2),
])
def test_wide_and_unindexed_filters_page_in_order(srv, params, total):
    body = get(srv, "/api/rollouts", run="big", phase="rl", offset=40, limit=30, **params)
    assert body["total"] == total and len(body["rows"]) == max(0, min(30, total - 40))
    keys = [(-r["n_tokens"], -r["id"]) if "order" in params else
            (r["step"], r["prompt_idx"], r["sample_idx"]) for r in body["rows"]]
    assert keys == sorted(keys)


def test_page_source_follows_how_many_rows_match(big):
    conn = queries.connect(big / "ledger.sqlite")
    wide = queries._page_from(conn, {"phase": "rl"}, BIG_ROWS // 2, BIG_ROWS, 50, "rollouts")
    narrow = queries._page_from(conn, {"phase": "rl"}, 100, BIG_ROWS, 50, "rollouts")
    assert (wide, narrow) == ("rollouts INDEXED BY rollouts_phase_group", "rollouts")
    assert queries._count_from({"phase": "rl", "q": "x"}, big_phase=True) == "rollouts NOT INDEXED"
    assert queries._count_from({"phase": "rl", "step": 3}, big_phase=True) == "rollouts"
    conn.close()


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path, params, code, words", [
    ("/api/rollouts", {"run": "big", "step": "five"}, 400, "'step' must be an integer"),
    ("/api/rollouts", {"run": "big", "reward_min": "nan"}, 400, "finite"),
    ("/api/rollouts", {"run": "big", "limit": "501"}, 400, "'limit' must be between"),
    ("/api/rollouts", {"run": "big", "offset": "-1"}, 400, "'offset' must be >= 0, got '-1'"),
    ("/api/rollouts", {"run": "big", "step": "9" * 23}, 400, "'step' must fit in a signed 64"),
    ("/api/rollouts", {"run": "big", "len_min": "-" + "9" * 19}, 400, "'len_min' must fit"),
    ("/api/rollouts", {"run": "big", "offset": "9" * 30}, 400, "'offset' must fit"),
    ("/api/rollouts", {"run": "big", "step": "9" * 5000}, 400, "'step' must be an integer"),
    ("/api/group", {"run": "big", "phase": "rl", "step": "1", "prompt": "9" * 20}, 400,
     "'prompt' must fit"),
    ("/api/eval_samples", {"run": "big", "problem": "9" * 20}, 400, "'problem' must fit"),
    ("/api/rollouts", {"run": "big", "order": "random"}, 400, "'order' must be one of"),
    ("/api/eval_samples", {"run": "big", "correct": "2"}, 400, "'correct'"),
    ("/api/group", {"run": "big", "phase": "rl", "step": "1"}, 400, "'prompt'"),
    ("/api/metrics", {}, 400, "missing query parameter 'run'"),
    ("/api/metrics", {"run": "nope"}, 404, "no run 'nope'"),
    ("/api/group", {"run": "big", "phase": "rl", "step": "999", "prompt": "0"}, 404, "no rollouts"),
    ("/api/nothing", {}, 404, "no such page"),
    ("/static/..%2fserver.py", {}, 404, "no such file"),
])
def test_bad_requests_get_a_json_error(srv, path, params, code, words):
    status, body = fetch(srv, path, **params)
    assert status == code and words in body["error"] and "\n" not in body["error"]
    assert len(body["error"]) < 200


def test_largest_64_bit_step_is_a_plain_miss(srv):
    assert get(srv, "/api/rollouts", run="big", step=2**63 - 1)["total"] == 0


@pytest.mark.parametrize("path, params", [
    ("/api/rollouts", {"step": "x"}),
    ("/api/rollouts", {"order": "random"}),
    ("/api/rollouts", {"limit": "0"}),
    ("/api/group", {"phase": "rl", "step": "1"}),
    ("/api/eval_samples", {"correct": "yes"}),
])
def test_bad_parameters_are_refused_before_the_ledger_opens(srv, monkeypatch, path, params):
    opened = []
    real = queries.connect
    monkeypatch.setattr(queries, "connect", lambda ledger: opened.append(ledger) or real(ledger))
    assert fetch(srv, path, run="big", **params)[0] == 400
    assert opened == []
    assert fetch(srv, "/api/rollouts", run="big", limit=1)[0] == 200 and len(opened) == 1


def test_static_page_is_served(srv):
    with urllib.request.urlopen(srv.url, timeout=30) as r:
        assert r.headers["Content-Type"].startswith("text/html")
        assert r.read() == (server.STATIC / "index.html").read_bytes()


# -- a run being written, old ledgers, the CLI --------------------------------------------------


def test_rows_written_after_start_show_up(tmp_path):
    ledger = Ledger(tmp_path / "live" / "ledger.sqlite")
    row = {"prompt_idx": 0, "sample_idx": 0, "prompt": "p", "completion": "c", "n_tokens": 1,
           "rewards": {"correct": 1.0}, "reward": 1.0}
    ledger.log_rollouts("rl", 1, [row])
    s = server.start_in_thread([tmp_path / "live"])
    try:
        assert get(s, "/api/rollouts", run="live")["total"] == 1
        ledger.log_rollouts("rl", 2, [row, {**row, "sample_idx": 1}])
        ledger.log_metrics("rl", 2, {"reward": 0.5})
        assert get(s, "/api/rollouts", run="live")["total"] == 3
        assert get(s, "/api/metrics", run="live")["phases"][0]["steps"] == [2]
        assert get(s, "/api/runs")["runs"][0]["status"] == "running"
    finally:
        s.shutdown()
        s.server_close()
        ledger.close()


def test_ledger_without_task_columns(tmp_path):
    (tmp_path / "old").mkdir()
    with sqlite3.connect(tmp_path / "old" / "ledger.sqlite") as conn:
        conn.executescript(
            "CREATE TABLE metrics (id INTEGER PRIMARY KEY, phase, step, data);"
            "CREATE TABLE evals (id INTEGER PRIMARY KEY, phase, problem_idx, sample_idx, prompt,"
            " completion, n_tokens, correct, answer);"
            "CREATE TABLE meta (key PRIMARY KEY, value);"
            "CREATE TABLE rollouts (id INTEGER PRIMARY KEY, phase, step, prompt_idx, sample_idx,"
            " prompt, completion, n_tokens, rewards, reward, advantage, answer, extra);"
            "INSERT INTO rollouts VALUES (1, 'rl', 1, 0, 0, 'p', 'c', 3, '{}', 0.5, 0.0, '1',"
            " NULL);")
    conn.close()
    s = server.start_in_thread([tmp_path / "old"])
    try:
        rows = get(s, "/api/rollouts", run="old")["rows"]
        assert rows[0]["task"] is None and rows[0]["difficulty"] is None
        assert get(s, "/api/rollouts", run="old", task="x")["total"] == 0
        assert get(s, "/api/steps", run="old", phase="rl")["tasks"] == []
        assert get(s, "/api/group", run="old", phase="rl", step=1, prompt=0)["task"] is None
    finally:
        s.shutdown()
        s.server_close()


@pytest.mark.parametrize("make, words", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: p, "holds no runs"),
])
def test_cli_bad_paths(tmp_path, capsys, make, words):
    assert cli.main(["view", str(make(tmp_path)), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("zeroth: error: ") and words in err and err.count("\n") == 1


def test_cli_serves_runs_in_cwd_until_ctrl_c(capsys, monkeypatch, tiny_runs):
    real, seen = server.ViewServer.serve_forever, []

    def interrupted(self, poll_interval=0.5):  # serve one request, then Ctrl-C
        threading.Thread(target=real, args=(self,), daemon=True).start()
        try:
            seen.append(get(self, "/api/runs"))
        finally:
            self.shutdown()
        raise KeyboardInterrupt

    monkeypatch.setattr(server.ViewServer, "serve_forever", interrupted)
    monkeypatch.chdir(tiny_runs.parent)  # no argument: runs/ in the cwd
    assert cli.main(["view", "--port", "0"]) == 0
    assert [r["id"] for r in seen[0]["runs"]] == ["t"]
    assert "http://127.0.0.1:" in capsys.readouterr().out


def test_port_in_use_is_a_user_error(tiny_runs):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(UserError, match="cannot listen on .* pick another --port"):
            server.make_server([tiny_runs], port=taken.getsockname()[1])


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_cli_port_out_of_range(tiny_runs, capsys, port):
    assert cli.main(["view", str(tiny_runs), "--port", port]) == 2
    err = capsys.readouterr().err
    assert f"--port must be between 0 and 65535 (0 = any free port), got {port}" in err
    assert err.count("\n") == 1


def test_host_not_on_this_machine_is_a_user_error_naming_it(tiny_runs):
    with pytest.raises(UserError, match="cannot listen on host '192.0.2.1'") as e:
        server.make_server([tiny_runs], host="192.0.2.1", port=0)  # TEST-NET: nobody's
    assert "--port" not in str(e.value)


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_ipv6_loopback(tiny_runs):
    s = server.start_in_thread([tiny_runs], host="::1")
    try:
        assert s.url == f"http://[::1]:{s.port}/"
        assert [r["id"] for r in get(s, "/api/runs")["runs"]] == ["t"]  # Host: [::1]:PORT
    finally:
        s.shutdown()
        s.server_close()


def test_other_hosts_warn_that_ledgers_are_readable_from_the_network(tiny_runs, capsys,
                                                                     monkeypatch):
    def interrupted(self, poll_interval=0.5):
        raise KeyboardInterrupt

    monkeypatch.setattr(server.ViewServer, "serve_forever", interrupted)
    assert cli.main(["view", str(tiny_runs), "--host", "0.0.0.0", "--port", "0"]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "warning" in err and "network" in err and "ledgers" in err
    assert cli.main(["view", str(tiny_runs), "--port", "0"]) == 0
    assert capsys.readouterr().err == ""


# -- security: Host header, response headers -----------------------------------------------------


def _raw_get(s, path: str, host: str | None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_host=True)
        if host is not None:
            conn.putheader("Host", host)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, dict(r.headers), r.read()
    finally:
        conn.close()


def test_loopback_server_refuses_foreign_host_headers(srv):
    port = srv.port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LocalHost:{port}", f"[::1]:{port}"):
        assert _raw_get(srv, "/api/runs", host)[0] == 200, host
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1", f"localhost:{port + 1}",
                 f"127.0.0.1.evil.example:{port}", None):
        code, headers, body = _raw_get(srv, "/api/runs", host)
        assert code == 403 and headers["Content-Type"] == "application/json", host
        assert "Host" in json.loads(body)["error"]
    assert _raw_get(srv, "/", "evil.example")[0] == 403  # the page too


def test_host_check_rules():
    from types import SimpleNamespace

    allowed = server.ViewServer.host_allowed
    on80 = SimpleNamespace(loopback=True, port=80)
    assert allowed(on80, "localhost") and allowed(on80, "[::1]") and allowed(on80, "127.0.0.1:80")
    assert not allowed(on80, "evil.example")
    assert allowed(SimpleNamespace(loopback=False, port=8766), "anything.example")
    assert server.is_loopback("127.0.0.2") and server.is_loopback("::1")
    assert not server.is_loopback("0.0.0.0") and not server.is_loopback("192.168.1.5")


def test_responses_carry_nosniff_and_a_content_security_policy(srv):
    for path in ("/", "/static/app.js", "/api/runs", "/api/nothing"):
        _, headers, _ = _raw_get(srv, path, f"127.0.0.1:{srv.port}")
        assert headers["X-Content-Type-Options"] == "nosniff", path
        assert "default-src 'self'" in headers["Content-Security-Policy"], path
    page = (server.STATIC / "index.html").read_text(encoding="utf-8")  # nothing CSP blocks:
    assert not re.search(r"\son[a-z]+=", page)  # no inline handlers,
    assert "<script>" not in page and "<style" not in page and "style=" not in page  # inline code


# -- unreadable ledgers, list snippets, NaN components, non-ASCII search, /proc/locks -----------


def test_unreadable_ledgers_are_listed_and_do_not_break_the_others(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "ledger.sqlite").write_bytes(b"")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "ledger.sqlite").write_text("not a database, just text\n" * 100)
    (tmp_path / "other").mkdir()
    with closing(sqlite3.connect(tmp_path / "other" / "ledger.sqlite")) as conn:
        conn.execute("CREATE TABLE unrelated (x)")  # an SQLite file, not a ledger
        conn.commit()
    Ledger(tmp_path / "good" / "ledger.sqlite").log_metrics("rl", 1, {"reward": 1.0})
    s = server.start_in_thread([tmp_path])
    try:
        runs = {r["id"]: r for r in get(s, "/api/runs")["runs"]}
        assert set(runs) == {"empty", "junk", "other", "good"}
        for name in ("empty", "junk", "other"):
            r = runs[name]
            assert r["status"] == "unreadable" and r["phases"] == [], r
            assert r["error"].startswith("cannot read ledger.sqlite: ") and "\n" not in r["error"]
        assert "not a database" in runs["junk"]["error"]
        assert "no such table" in runs["empty"]["error"]
        assert runs["good"]["status"] == "running" and "error" not in runs["good"]
        assert runs["good"]["phases"] == [{"phase": "rl", "steps": 1, "rollouts": 0}]
        code, body = fetch(s, "/api/metrics", run="junk")
        assert code == 500 and body["error"].startswith("cannot read ledger.sqlite")
    finally:
        s.shutdown()
        s.server_close()


LONG_REASONING = "step by step " * 100  # 1300 characters


@pytest.fixture(scope="module")
def odd_srv(tmp_path_factory):
    """A run with a long completion, NaN / null / inf reward components and non-ASCII text."""
    run_dir = tmp_path_factory.mktemp("odd") / "odd"
    ledger = Ledger(run_dir / "ledger.sqlite")
    base = {"n_tokens": 3, "reward": 0.0, "answer": "1"}
    ledger.log_rollouts("rl", 1, [
        {**base, "prompt_idx": 0, "sample_idx": 0, "prompt": "Wie groß ist die ÉCOLE?",
         "completion": f"<think>{LONG_REASONING}</think><answer>{'7' * 400}</answer>",
         "rewards": {"correct": float("nan"), "format": None, "len": float("-inf"), "x": 0.5}},
        {**base, "prompt_idx": 0, "sample_idx": 1, "prompt": "Wie groß ist die ÉCOLE?",
         "completion": "ЖУК", "rewards": {"correct": 1.0}},
        {**base, "prompt_idx": 1, "sample_idx": 0, "prompt": "plain", "completion": "",
         "rewards": {}},
    ])
    ledger.log_eval("eval_rl", [{"problem_idx": 0, "sample_idx": -1, "prompt": "Straße?",
                                 "completion": "Ärger", "n_tokens": 1, "correct": False,
                                 "answer": "x"}])
    ledger.close()
    s = server.start_in_thread([run_dir])
    yield s
    s.shutdown()
    s.server_close()


def test_rollout_list_rows_carry_snippets_and_the_group_the_whole_text(odd_srv):
    rows = get(odd_srv, "/api/rollouts", run="odd")["rows"]
    first = rows[0]
    assert not {"completion", "reasoning", "answer_text"} & set(first)
    assert first["reasoning_snippet"] == LONG_REASONING.strip()[:300]
    assert first["answer_snippet"] == "7" * 300
    assert first["n_chars"] == len(f"<think>{LONG_REASONING}</think><answer>{'7' * 400}</answer>")
    assert (rows[1]["reasoning_snippet"], rows[1]["answer_snippet"]) == ("", "ЖУК")
    assert (rows[2]["answer_snippet"], rows[2]["n_chars"]) == ("", 0)
    sample = get(odd_srv, "/api/group", run="odd", phase="rl", step=1, prompt=0)["samples"][0]
    assert sample["reasoning"] == LONG_REASONING.strip() and sample["answer_text"] == "7" * 400
    assert sample["completion"].startswith("<think>step by step")


def test_nan_reward_components_differ_from_not_scored(odd_srv):
    rows = get(odd_srv, "/api/rollouts", run="odd")["rows"]
    want = {"correct": "nan", "format": None, "len": "-inf", "x": 0.5}
    assert rows[0]["rewards"] == want
    group = get(odd_srv, "/api/group", run="odd", phase="rl", step=1, prompt=0)
    assert group["samples"][0]["rewards"] == want
    assert queries._components({"a": math.inf, "b": 1}) == {"a": "inf", "b": 1}


@pytest.mark.parametrize("q, total", [
    ("école", 2), ("GROSS", 0), ("GROß", 2), ("жук", 1), ("Жу", 1), ("ÉCOLE", 2), ("%", 0),
])
def test_search_folds_non_ascii_letters(odd_srv, q, total):
    assert get(odd_srv, "/api/rollouts", run="odd", q=q)["total"] == total


def test_eval_search_folds_non_ascii_letters(odd_srv):
    assert get(odd_srv, "/api/eval_samples", run="odd", q="ärg")["total"] == 1
    assert get(odd_srv, "/api/eval_samples", run="odd", q="STRASSE")["total"] == 0
    assert get(odd_srv, "/api/eval_samples", run="odd", q="STRAßE")["total"] == 1
