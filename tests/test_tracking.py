"""`zeroth metrics`: TensorBoard, W&B (a fake module) and CSV exports equal the ledger."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import stat
import struct
import sys
import threading
import time
import types
from pathlib import Path

import pytest
import yaml

from zeroth.cli import main
from zeroth.cli import metrics as tracking
from zeroth.pipeline.ledger import Ledger


def ledger_rows(run: Path) -> list[dict]:
    ledger = Ledger(run / "ledger.sqlite", readonly=True)
    try:
        return ledger.metrics()
    finally:
        ledger.close()


def exported_rows(run: Path) -> list[dict]:
    """The ledger's rows as every export gives them: an evaluation's `pass1` (the same number
    as its `pass@1`) and its settings `k` and `problems` left out."""
    rows = []
    for row in ledger_rows(run):
        if row["phase"].startswith("eval_"):
            assert row["pass1"] == pytest.approx(row["pass@1"]) and "k" in row
            row = {k: v for k, v in row.items() if k not in ("pass1", "k", "problems")}
        rows.append(row)
    return rows


def read_events(folder: Path) -> list:
    """Every Event in the folder's event files: TFRecord framing (length, its CRC, the data,
    its CRC) around tensorboardX's Event protobuf."""
    from tensorboardX.proto.event_pb2 import Event

    events = []
    for file in sorted(folder.glob("events.out.tfevents.*")):
        data, i = file.read_bytes(), 0
        while i < len(data):
            (length,) = struct.unpack("<Q", data[i:i + 8])
            event = Event()
            event.ParseFromString(data[i + 12:i + 12 + length])
            events.append(event)
            i += 12 + length + 4
    return events


def scalars(folder: Path) -> dict[tuple[str, int], float]:
    out = {}
    for event in read_events(folder):
        for value in event.summary.value:
            if value.WhichOneof("value") == "simple_value":
                out[(value.tag, event.step)] = value.simple_value
    return out


def tb_tag(tag: str) -> str:
    return re.sub(r"[^-/\w.]", "_", tag)  # the characters TensorBoard allows in tags


def test_tensorboard_scalars_equal_the_ledger(finished_tiny_run, tmp_path, capsys):
    out = tmp_path / "tb"
    assert main(["metrics", str(finished_tiny_run), "--tensorboard", str(out)]) == 0
    assert f"-> {out / 't'}" in capsys.readouterr().out
    got = scalars(out / "t")
    expected = {}
    for row in exported_rows(finished_tiny_run):
        phase, step = row["phase"], row["step"]
        if phase.startswith("eval_"):  # at the RL step they were taken: 0, and 4 after rl
            tag, step = f"eval/{phase[5:]}", {"eval_pretrain": 0, "eval_rl": 4}[phase]
        else:
            tag = phase
        for key, value in row.items():
            if key not in ("phase", "step") and value is not None:
                expected[(tb_tag(f"{tag}/{key}"), step)] = value
    assert set(got) == set(expected)
    assert ("rl/reward", 3) in got and ("eval/rl/pass_1", 4) in got
    assert not [tag for tag, _ in got if tag.endswith(("/pass1", "/k", "/problems"))]
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-12), key
    texts = [v.tag for e in read_events(out / "t") for v in e.summary.value
             if v.tag.startswith("rl/rollouts")]
    assert len(texts) == 4  # a few rollouts as text at each RL step


def test_tensorboard_rerun_replaces_only_its_own_folder(finished_tiny_run, tmp_path, capsys):
    out = tmp_path / "tb"
    (out / "mine").mkdir(parents=True)
    (out / "mine" / "notes.txt").write_text("keep me")
    for _ in range(2):
        assert main(["metrics", str(finished_tiny_run), "--tensorboard", str(out),
                     "--samples", "0"]) == 0
    assert len(list((out / "t").glob("events.out.tfevents.*"))) == 1  # a fresh event set
    assert (out / "mine" / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in out.iterdir()) == ["mine", "t"]
    (out / "u").mkdir()
    (out / "u" / "data.bin").write_text("user file")
    before = sorted(p.name for p in (out / "t").iterdir())
    capsys.readouterr()
    link = tmp_path / "u"
    link.symlink_to(finished_tiny_run, target_is_directory=True)  # a run whose name is "u"
    assert main(["metrics", str(finished_tiny_run), str(link), "--tensorboard", str(out)]) == 2
    err = capsys.readouterr().err
    assert "is not an earlier `zeroth metrics` export" in err and len(err.splitlines()) == 1
    assert (out / "u" / "data.bin").read_text() == "user file"
    assert sorted(p.name for p in (out / "t").iterdir()) == before  # nothing touched


def test_two_runs_with_one_name_get_separate_folders(finished_tiny_run, tmp_path):
    twin = tmp_path / "other" / "t"
    twin.parent.mkdir()
    twin.symlink_to(finished_tiny_run, target_is_directory=True)
    out = tmp_path / "tb"
    assert main(["metrics", str(finished_tiny_run), str(twin), "--tensorboard", str(out),
                 "--samples", "0"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["t", "t-2"]
    assert scalars(out / "t") == scalars(out / "t-2")


def test_missing_tensorboardx_and_wandb_say_what_to_install(finished_tiny_run, tmp_path,
                                                             monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import raises ImportError
    assert main(["metrics", str(finished_tiny_run), "--tensorboard", str(tmp_path / "tb")]) == 2
    err = capsys.readouterr().err
    assert "pip install tensorboardX" in err and "zeroth[tensorboard]" in err
    assert not (tmp_path / "tb").exists()
    monkeypatch.setitem(sys.modules, "wandb", None)
    assert main(["metrics", str(finished_tiny_run), "--wandb", "proj"]) == 2
    assert "install wandb (pip install wandb) to export to Weights & Biases" in \
        capsys.readouterr().err


def fake_wandb(calls: list) -> types.ModuleType:
    """A stand-in `wandb` module recording init, log and finish."""
    module = types.ModuleType("wandb")

    class Run:
        def __init__(self, **kwargs):
            calls.append(("init", kwargs))

        def log(self, data, step=None):
            calls.append(("log", dict(data), step))

        def finish(self):
            calls.append(("finish",))

    class Table:
        def __init__(self, columns, data):
            self.columns, self.data = columns, data

    module.init = lambda **kwargs: Run(**kwargs)
    module.Table = Table
    return module


def test_wandb_logs_every_step_on_one_axis(finished_tiny_run, monkeypatch):
    calls: list = []
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb(calls))
    assert main(["metrics", str(finished_tiny_run), "--wandb", "proj", "--entity", "me"]) == 0
    (_, init), *logs, (finish,) = calls
    config = yaml.safe_load((finished_tiny_run / "config.yaml").read_text())
    assert init["project"] == "proj" and init["entity"] == "me" and init["name"] == "t"
    assert init["config"] == config and init["resume"] == "allow"
    assert finish == "finish"
    stepped = [(data, step) for _, data, step in logs if step is not None]
    steps = [step for _, step in stepped]
    assert steps == sorted(steps) and len(steps) == len(set(steps))
    logged = {}
    for data, step in stepped:
        logged.update({(k, step): v for k, v in data.items()})
    # pretrain logs steps 10 and 20, so rl step s is global step 20 + s; evals at the
    # step reached when they were taken.
    for row in exported_rows(finished_tiny_run):
        phase = row["phase"]
        offset = 0 if phase == "pretrain" else 20
        prefix = f"eval/{phase[5:]}" if phase.startswith("eval_") else phase
        at = offset + row["step"] if phase != "eval_rl" else 24
        for key, value in row.items():
            if key not in ("phase", "step"):
                assert logged[(f"{prefix}/{key}", at)] == value
    assert logged[("rl/step", 23)] == 3
    assert ("eval/rl/pass@1", 24) in logged and ("eval/rl/pass1", 24) not in logged
    assert ("eval/rl/k", 24) not in logged and ("eval/rl/problems", 24) not in logged
    table = next(data["rollouts"] for _, data, step in logs if step is None)
    assert table.columns[:2] == ["phase", "step"] and len(table.data) == 8  # 2 per RL step
    calls.clear()
    assert main(["metrics", str(finished_tiny_run), "--wandb", "proj", "--name", "mine"]) == 0
    assert calls[0][1]["id"] == init["id"] and calls[0][1]["name"] == "mine"  # same W&B run


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def same_value(cell: str, value) -> bool:
    if value is None:
        return cell == ""
    if isinstance(value, float) and math.isnan(value):
        return cell == "nan"
    return float(cell) == value


def test_csv_equals_the_ledger(finished_tiny_run, tmp_path):
    out = tmp_path / "m.csv"
    assert main(["metrics", str(finished_tiny_run), "--csv", str(out)]) == 0
    rows, ledger = read_csv(out), exported_rows(finished_tiny_run)
    assert [(r["run"], r["phase"], int(r["step"])) for r in rows] == \
        [("t", r["phase"], r["step"]) for r in ledger]
    keys = {k for r in ledger for k in r} - {"phase", "step"}
    assert set(rows[0]) == keys | {"run", "phase", "step"}
    assert "pass@1" in keys and not keys & {"pass1", "k", "problems"}
    for cells, row in zip(rows, ledger, strict=True):
        for key in keys:
            assert same_value(cells[key], row.get(key)), (row["phase"], row["step"], key)


def test_follow_exports_every_step_until_the_run_finishes(tmp_path, capsys):
    run = tmp_path / "live"
    run.mkdir()
    (run / "config.yaml").write_text("run: {name: live}\n")  # started, no ledger yet

    def training():
        time.sleep(0.2)
        ledger = Ledger(run / "ledger.sqlite")
        ledger.log_metrics("eval_start", 0, {"pass@1": 0.0})
        deadline = time.monotonic() + 20
        while not out.exists() and time.monotonic() < deadline:  # the first export is done
            time.sleep(0.01)
        for step in range(1, 13):
            ledger.log_metrics("rl", step, {"reward": step / 10, "kl": float("nan")})
            time.sleep(0.03)
        ledger.log_metrics("eval_rl", 0, {"pass@1": 0.5})
        ledger.close()
        (run / "summary.json").write_text(json.dumps({"run": "live"}))

    out = tmp_path / "live.csv"
    writer = threading.Thread(target=training)
    writer.start()
    code = main(["metrics", str(run), "--csv", str(out), "--follow", "--interval", "0.05"])
    writer.join()
    assert code == 0
    rows = read_csv(out)
    assert [(r["phase"], r["step"]) for r in rows] == \
        [("eval_start", "0"), *[("rl", str(s)) for s in range(1, 13)], ("eval_rl", "0")]
    assert [float(r["reward"]) for r in rows[1:13]] == [s / 10 for s in range(1, 13)]
    assert rows[1]["kl"] == "nan" and rows[0]["kl"] == ""
    printed = capsys.readouterr().out
    assert "following" in printed and "14 rows" in printed
    assert printed.count("+") >= 2  # exported as the steps came, not all at the end


def test_follow_returns_when_the_run_it_follows_stops(tmp_path, monkeypatch, capsys):
    """A run killed mid-way (its lock free, no summary.json) ends the following: a last
    export, where it stopped and how to resume it, exit code 0."""
    from test_runstate import LockHolder, make_run

    monkeypatch.chdir(tmp_path)
    run = make_run(tmp_path / "runs" / "r", steps=2, ckpt=2)
    child = LockHolder(run)  # a live `zeroth run` holding the run's lock
    ledger = Ledger(run / "ledger.sqlite")

    def step_3():
        ledger.log_metrics("rl", 3, {"reward": 0.3})

    def step_4_then_killed():
        ledger.log_metrics("rl", 4, {"reward": 0.4})
        ledger.close()
        child.kill()  # kill -9: no summary.json, the kernel frees the lock

    actions = script_waits(monkeypatch, [step_3, step_4_then_killed])
    try:
        code = main(["metrics", "runs/r", "--csv", "m.csv", "--follow"])
    finally:
        child.close()
    assert code == 0 and actions == []  # returned at the first look after the kill
    rows = [(r["phase"], r["step"]) for r in read_csv(tmp_path / "m.csv")]
    assert rows[-4:] == [("rl", "1"), ("rl", "2"), ("rl", "3"), ("rl", "4")]
    ended = ("stopped at rl step 4 (resume from rl-000002) — resume with "
             "`zeroth run --resume runs/r`")
    printed = capsys.readouterr().out
    assert f"run r {ended}" in printed and f"runs/r: 7 rows -> m.csv · {ended}" in printed
    assert main(["metrics", "runs/r", "--csv", "again.csv"]) == 0  # a plain export says so too
    assert f"runs/r: 7 rows -> again.csv · {ended}" in capsys.readouterr().out


def test_ctrl_c_stops_following_and_closes_the_export(tmp_path, monkeypatch, capsys):
    ledger = Ledger(tmp_path / "r" / "ledger.sqlite")
    ledger.log_metrics("rl", 1, {"reward": 0.5})
    ledger.close()
    calls: list = []
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb(calls))

    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(tracking.time, "sleep", interrupt)
    assert main(["metrics", str(tmp_path / "r"), "--wandb", "p", "--follow"]) == 0
    assert [c[0] for c in calls] == ["init", "log", "finish"]
    assert calls[1][1] == {"rl/reward": 0.5, "rl/step": 1} and calls[1][2] == 1
    assert "stopped following" in capsys.readouterr().out
    calls.clear()
    monkeypatch.setattr(tracking, "export_once", interrupt)  # Ctrl-C during a plain export
    assert main(["metrics", str(tmp_path / "r"), "--wandb", "p"]) == 130
    printed = capsys.readouterr().out
    assert "interrupted: the export may be incomplete" in printed
    assert "stopped following" not in printed
    assert [c[0] for c in calls] == ["init", "finish"]


def test_poll_returns_each_logged_row_once(tmp_path):
    ledger = Ledger(tmp_path / "r" / "ledger.sqlite")
    ledger.log_metrics("sft", 1, {"loss": 1.0})
    source = tracking.Source(tmp_path / "r", "r")
    assert [r["step"] for r in source.poll()] == [1]
    assert source.poll() == []
    ledger.log_metrics("sft", 2, {"loss": 0.5})
    ledger.log_metrics("rl", 1, {"reward": 0.1})
    ledger.log_metrics("rl", 1, {"kl": 0.2})  # two calls for one step: one row, merged
    assert source.poll() == [{"phase": "sft", "step": 2, "loss": 0.5},
                             {"phase": "rl", "step": 1, "reward": 0.1, "kl": 0.2}]
    ledger.log_metrics("sft", 1, {"lr": 1e-3})  # a later call for a step exported already
    assert source.poll() == [{"phase": "sft", "step": 1, "lr": 1e-3}]
    assert source.rows == [{"phase": "sft", "step": 1, "loss": 1.0, "lr": 1e-3},
                           {"phase": "sft", "step": 2, "loss": 0.5},
                           {"phase": "rl", "step": 1, "reward": 0.1, "kl": 0.2}]
    assert source.rows == ledger.metrics()
    ledger.close()


def script_waits(monkeypatch, actions: list) -> list:
    """Make --follow's waits between two looks at the ledger run `actions`, one per wait (the
    run writing meanwhile); returns the list, emptied as they run."""
    def sleep(seconds):
        actions.pop(0)()

    monkeypatch.setattr(tracking.time, "sleep", sleep)
    return actions


def log_rollout(ledger: Ledger, step: int, text: str) -> None:
    ledger.log_rollouts("rl", step, [{"prompt_idx": 0, "sample_idx": 0, "prompt": "p",
                                      "completion": text, "n_tokens": 1}])


@pytest.mark.parametrize("target", ["csv", "tensorboard"])
def test_follow_exports_steps_logged_again(target, tmp_path, monkeypatch, capsys):
    run = tmp_path / "r"
    ledger = Ledger(run / "ledger.sqlite")
    for step in range(1, 5):
        log_rollout(ledger, step, f"old {step}")
        ledger.log_metrics("rl", step, {"reward": step / 10})

    def resume():  # the run died after step 4 and resumes from its checkpoint of step 2
        ledger.truncate_after("rl", 2)
        for step in (3, 4):
            log_rollout(ledger, step, f"new {step}")
            ledger.log_metrics("rl", step, {"reward": float(step)})

    def more():  # a second log call for a step exported already, an evaluation, the end
        ledger.log_metrics("rl", 2, {"kl": 0.5})
        ledger.log_metrics("eval_rl", 0, {"pass1": 0.25, "pass@1": 0.25, "maj@4": 0.5,
                                          "greedy": 0.75, "problems": 8, "k": 4})
        (run / "summary.json").write_text("{}")

    actions = script_waits(monkeypatch, [resume, more])
    out = tmp_path / ("m.csv" if target == "csv" else "tb")
    assert main(["metrics", str(run), f"--{target}", str(out), "--follow"]) == 0
    ledger.close()
    assert actions == []
    assert f"{run}: 8 rows" in capsys.readouterr().out  # 4, then 3 and 4 again, then 2 more
    if target == "csv":
        rows = read_csv(out)
        assert set(rows[0]) == {"run", "phase", "step", "reward", "kl", "pass@1", "maj@4",
                                "greedy"}
        assert [(r["phase"], r["step"], r["reward"], r["kl"]) for r in rows] == [
            ("rl", "1", "0.1", ""), ("rl", "2", "0.2", "0.5"), ("rl", "3", "3.0", ""),
            ("rl", "4", "4.0", ""), ("eval_rl", "0", "", "")]
        assert (rows[-1]["pass@1"], rows[-1]["greedy"]) == ("0.25", "0.75")
        return
    events = read_events(out / "r")
    rewards = [(e.step, v.simple_value) for e in events for v in e.summary.value
               if v.tag == "rl/reward"]
    assert [step for step, _ in rewards] == [1, 2, 3, 4, 3, 4]  # 3 and 4 logged again
    got = scalars(out / "r")  # the last value logged at each step: what TensorBoard shows
    assert got[("rl/reward", 3)] == 3.0 and got[("rl/reward", 4)] == 4.0
    assert got[("rl/kl", 2)] == 0.5
    assert {tag for tag, _ in got if tag.startswith("eval/")} == \
        {"eval/rl/pass_1", "eval/rl/maj_4", "eval/rl/greedy"}
    assert got[("eval/rl/pass_1", 4)] == 0.25
    texts = [(e.step, "new" in v.tensor.string_val[0].decode()) for e in events
             for v in e.summary.value if v.tag.startswith("rl/rollouts")]
    assert texts == [(1, False), (2, False), (3, False), (4, False), (3, True), (4, True)]


def test_bad_inputs_are_one_line_errors(finished_tiny_run, tmp_path, capsys):
    Ledger(tmp_path / "empty" / "ledger.sqlite").close()
    os.mkfifo(tmp_path / "pipe")
    cases = [
        (["metrics", str(finished_tiny_run), "--csv", str(tmp_path / "pipe")],
         "not a regular file"),
        (["metrics", str(tmp_path / "empty"), "--csv", str(tmp_path / "a.csv")], "no metrics yet"),
        (["metrics", str(tmp_path / "nope"), "--csv", str(tmp_path / "a.csv")], "does not exist"),
        (["metrics", str(finished_tiny_run), "--csv", str(tmp_path / "a.csv"), "--name", "x"],
         "use them with --wandb"),
        (["metrics", str(finished_tiny_run), "--csv", str(tmp_path)], "is a folder"),
        (["metrics", str(finished_tiny_run), "--csv", str(tmp_path / "a.csv"), "--interval", "0"],
         "--interval"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("zeroth: error:") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "a.csv").exists()
    assert stat.S_ISFIFO((tmp_path / "pipe").stat().st_mode)  # left as it was
