"""The pipeline: stages chained by run.pipeline, each from the previous one's model; the shipped
recipes end to end on a tiny model; a run interrupted at a stage boundary or inside a stage
resumes to the same result."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from importlib.resources import files

import pytest
import yaml

from zeroth.config import load_config, load_run_config, pipeline, stage_config
from zeroth.errors import UserError
from zeroth.pipeline.run import create_run_dir, execute, init_model, preflight
from zeroth.record.progress import Display


def tiny_overrides() -> list[str]:
    """The tiny recipe as command-line overrides, so any recipe can be shrunk to it."""
    data = yaml.safe_load((files("zeroth") / "recipes" / "tiny.yaml").read_text())
    out = []
    for section, body in data.items():
        for key, value in body.items():
            out.append(f"{section}.{key}={json.dumps(value)}")
    return out


SMALL = tiny_overrides() + [
    "model.max_len=256", "sft.n=64", "sft.steps=4", "sft.batch_size=8", "sft.checkpoint_every=2", "sft.warmup=1",
    "rejection.prompts=8", "rejection.samples=2", "rejection.max_new_tokens=40",
    "distill.prompts=8", "distill.samples=2", "distill.max_new_tokens=40", "distill.steps=4",
    "distill.batch_size=8", "distill.student_pretrain_steps=4", "distill.checkpoint_every=2",
    "distill.warmup=1", "student.hidden_size=16", "student.num_layers=1", "student.num_heads=2",
    "student.intermediate_size=32", "rl.steps=2", "rl.checkpoint_every=1",
]


def _run(tmp_path, recipe, extra=(), name="r"):
    cfg = load_config(recipe, SMALL + [f"run.out_dir={tmp_path}", f"run.name={name}", *extra])
    preflight(cfg)
    run_dir = create_run_dir(cfg, recipe)
    return run_dir, execute(run_dir, cfg, Display(quiet=True))


def test_stage_ids_number_repeated_kinds():
    cfg = load_config("r1")
    assert [sid for sid, _, _ in pipeline(cfg)] == ["pretrain", "sft1", "rl1", "rejection",
                                                  "sft2", "rl2"]
    assert stage_config(cfg, 1).sft.data == "reasoned"
    assert stage_config(cfg, 4).sft.data == "rejection"
    assert stage_config(cfg, 4).sft.steps == cfg.sft.steps  # shared settings from the section


@pytest.mark.parametrize(("value", "needle"), [
    ("[pretrain, rlhf]", "unknown stage 'rlhf'"),
    ("[]", "run.pipeline is empty"),
    ("[{sft: 5}]", "must map to field: value"),
    ("[{sft: {stepz: 5}}]", "did you mean 'sft.steps'"),
    ("[{rl: {steps: many}}]", "'rl.steps' expects int"),
    ("[{rl: {steps: -1}}]", "pipeline stage 1 (rl)"),
    ("[[rl]]", "must be a stage name"),
])
def test_bad_pipelines_are_refused_with_one_line(value, needle):
    with pytest.raises(UserError, match=None) as err:
        load_config(None, [f"pipeline={value}"])
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_sft_on_rejection_data_needs_a_rejection_stage_first(tmp_path):
    cfg = load_config(None, SMALL + ["pipeline=[pretrain, {sft: {data: rejection}}]"])
    with pytest.raises(UserError, match="no rejection stage comes before it"):
        preflight(cfg)


def _fingerprint(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("wall_s", "run"):
        summary.pop(key)
    db = sqlite3.connect(run_dir / "ledger.sqlite")
    evals = db.execute("select phase, problem_idx, sample_idx, completion from evals "
                       "order by phase, problem_idx, sample_idx").fetchall()
    rollouts = db.execute("select phase, step, prompt_idx, sample_idx, completion from rollouts "
                          "order by phase, step, prompt_idx, sample_idx").fetchall()
    db.close()
    weights = (run_dir / "final" / "model.safetensors").read_bytes()
    return summary, evals, rollouts, weights


def test_r1_recipe_runs_every_stage_and_reports_each(tmp_path, coin_tasks):
    run_dir, summary = _run(tmp_path, "r1")
    assert summary["pipeline"] == ["pretrain", "sft1", "rl1", "rejection", "sft2", "rl2"]
    stages = {s["stage"]: s for s in summary["stages"]}
    for sid in ("pretrain", "sft1", "rl1", "sft2", "rl2"):  # evaluated after each
        assert 0.0 <= stages[sid]["eval"]["pass1"] <= 1.0
    assert stages["rejection"]["eval"] is None  # sampling changes no weights
    assert stages["rejection"]["result"]["samples"] == 8 * 2
    kept = stages["rejection"]["result"]["kept"]
    lines = (run_dir / "data" / "rejection.jsonl").read_text().splitlines()
    assert kept == len(lines) > 0
    assert stages["sft2"]["result"]["examples"] == kept  # SFT learned the verified samples
    assert summary["steps"] == 4  # two rl stages of 2 steps
    assert summary["final_pass1"] == stages["rl2"]["eval"]["pass1"]
    assert summary["base_pass1"] == stages["pretrain"]["eval"]["pass1"]
    db = sqlite3.connect(run_dir / "ledger.sqlite")
    phases = {p for (p,) in db.execute("select distinct phase from rollouts")}
    db.close()
    assert {"rl1", "rl2", "rejection"} <= phases
    # every stage checkpoints, and every checkpoint stays (the step-0 one as a stage starts)
    assert _checkpoints(run_dir) == [
        "pretrain-000000", "pretrain-000010", "pretrain-000020", "rejection-000000",
        "rl1-000000", "rl1-000001", "rl1-000002", "rl2-000000", "rl2-000001", "rl2-000002",
        "sft1-000000", "sft1-000002", "sft1-000004", "sft2-000000", "sft2-000002", "sft2-000004"]


def test_r1_zero_and_distill_recipes_end_to_end(tmp_path, coin_tasks):
    _, summary = _run(tmp_path, "r1-zero", name="zero")
    assert summary["pipeline"] == ["pretrain", "rl"]
    _, summary = _run(tmp_path, "distill", name="distill")
    stage = next(s for s in summary["stages"] if s["stage"] == "distill")
    before = stage["result"]["student_before"]
    assert 0.0 <= before["pass1"] <= 1.0 and stage["eval"] is not None
    assert stage["result"]["student_params"] < summary["params"]


class Crash(Exception):
    pass


RESUME = ["pipeline=[pretrain, sft, rl]", "rl.beta=0.05"]  # a reference model to restore too


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    ref_dir, _ = _run(tmp_path_factory.mktemp("ref"), None, RESUME, name="ref")
    return _fingerprint(ref_dir)


# a crash inside a stage (after its second checkpoint) and at a stage boundary (the rl stage's
# first checkpoint, written right after its reference policy)
@pytest.mark.parametrize("tag", ["sft-000002", "rl-000000"])
def test_interrupted_pipeline_resumes_to_the_same_result(tmp_path, monkeypatch, tag,
                                                         uninterrupted):
    from zeroth.pipeline import run as run_module

    original = run_module.save_checkpoint

    def crash_after(run_dir, saved_tag, **kw):
        path = original(run_dir, saved_tag, **kw)
        if saved_tag == tag:
            raise Crash(saved_tag)
        return path

    monkeypatch.setattr(run_module, "save_checkpoint", crash_after)
    with pytest.raises(Crash):
        _run(tmp_path, None, RESUME, name="cut")
    monkeypatch.setattr(run_module, "save_checkpoint", original)
    cut = tmp_path / "cut"
    execute(cut, run_module.load_run_config(cut), Display(quiet=True))
    assert _fingerprint(cut) == uninterrupted


def test_a_hub_id_is_a_model_path_only_where_the_hub_may_be_used(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="HF_HUB_OFFLINE=0"):
        load_config(None, ["model.path=SomeOrg/some-model"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    cfg = load_config(None, ["model.path=SomeOrg/some-model"])
    assert cfg.model.path == "SomeOrg/some-model"  # kept as an id, never made a local path


def test_memory_estimate_counts_a_distill_stage():
    from zeroth.pipeline.memory import estimate

    assert estimate(load_config(None))["distill"] == 0
    small = estimate(load_config("distill"))
    big = estimate(load_config("distill", ["student.hidden_size=512", "student.num_layers=8",
                                           "student.intermediate_size=2048"]))
    assert 0 < small["distill"] < big["distill"]
    assert big["total"] == big["distill"] > small["total"]  # the big student is the peak


def _checkpoints(run_dir) -> list[str]:
    return sorted(p for p in os.listdir(run_dir / "checkpoints") if p != "LATEST")


def test_a_finished_run_keeps_every_checkpoint(finished_tiny_run):
    """By default (run.keep_checkpoints=0) every checkpoint stays, so `zeroth eval --checkpoint
    all` and `zeroth chat --checkpoint TAG` can name any of them."""
    assert _checkpoints(finished_tiny_run) == [
        "pretrain-000000", "pretrain-000010", "pretrain-000020", "rl-000000", "rl-000001",
        "rl-000002", "rl-000003", "rl-000004"]
    assert (finished_tiny_run / "checkpoints" / "LATEST").read_text().strip() == "rl-000004"


@pytest.mark.parametrize("keep, kept", [
    (1, ["pretrain-000020", "rl-000002"]),  # LATEST and each stage's last always stay
    (3, ["pretrain-000020", "rl-000000", "rl-000001", "rl-000002"]),
])
def test_keep_checkpoints(tmp_path, keep, kept):
    run_dir, _ = _run(tmp_path, None, [f"run.keep_checkpoints={keep}", "eval.k=1",
                                       "eval.max_new_tokens=8"])
    assert _checkpoints(run_dir) == kept


def test_model_path_may_name_a_run_directory(tmp_path, finished_tiny_run):
    """A run directory as model.path means its final/ model, else its latest checkpoint's:
    for the config check, the memory estimate, loading, and the saved config.yaml."""
    run_dir, summary = _run(tmp_path, None, [f"model.path={finished_tiny_run}", "pipeline=[rl]",
                                             "eval.k=1", "eval.max_new_tokens=8"])
    assert load_run_config(run_dir).model.path == str(finished_tiny_run / "final")
    assert summary["pipeline"] == ["rl"] and "start" in [s["stage"] for s in summary["stages"]]

    unfinished = shutil.copytree(finished_tiny_run, tmp_path / "unfinished")
    shutil.rmtree(unfinished / "final")
    cfg = load_config(None, SMALL + [f"model.path={unfinished}", "pipeline=[rl]"])
    assert "memory" in preflight(cfg)
    latest = unfinished / "checkpoints" / "rl-000004" / "model"
    assert cfg.model.path == str(latest)
    model, _ = init_model(cfg, None)
    saved = (latest / "model.safetensors").read_bytes()
    model.save_pretrained(tmp_path / "again")
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == saved
