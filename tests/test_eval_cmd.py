"""`zeroth eval` and the numbers behind it: pass@k, maj@k, the per-difficulty breakdown, the
command on a model folder and on a run directory, and its one-line errors."""

import argparse
import json
import random
import shutil
from dataclasses import replace

import pytest

from zeroth.cli.eval import add_parser, checkpoint_tags, cmd_eval, resolve_target
from zeroth.config import dump_config, load_config
from zeroth.errors import UserError
from zeroth.models.hf import load_model
from zeroth.pipeline.checkpoint import save_checkpoint
from zeroth.rollout.torch_engine import TorchEngine
from zeroth.stages.eval import (
    accuracy,
    by_difficulty,
    evaluate,
    k_values,
    majority_correct,
    pass_at_k,
)
from zeroth.tasks import load_task
from zeroth.types import Task


def _ns(*argv):
    """The parsed command line, options and KEY=VALUE overrides interleaved as cli.main allows."""
    ap = argparse.ArgumentParser(prog="zeroth")
    add_parser(ap.add_subparsers(dest="command"))
    ns, extra = ap.parse_known_args(["eval", *map(str, argv)])
    ns.args = [*ns.args, *extra]
    return ns


def _save(model, tokenizer, folder):
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture()
def model_folder(tmp_path, tiny_model):
    return _save(*tiny_model, tmp_path / "tiny-model")


def test_pass_at_k_unbiased_estimator_by_hand():
    assert pass_at_k(5, 2, 1) == pytest.approx(2 / 5)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(5, 2, 3) == pytest.approx(1 - 1 / 10)  # 1 - C(3,3)/C(5,3)
    assert pass_at_k(5, 2, 4) == 1.0  # fewer than 4 wrong samples: any 4 hold a right one
    assert pass_at_k(5, 1, 5) == 1.0  # k = n: solved at all
    assert pass_at_k(5, 0, 5) == 0.0  # k = n, c = 0
    assert pass_at_k(5, 0, 1) == 0.0
    assert pass_at_k(1, 1, 1) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def test_k_values_are_powers_of_two_then_n():
    assert k_values(1) == [1]
    assert k_values(2) == [1, 2]
    assert k_values(6) == [1, 2, 4, 6]
    assert k_values(8) == [1, 2, 4, 8]
    assert k_values(16) == [1, 2, 4, 8, 16]


def test_majority_ties_go_to_the_first_answer_seen():
    assert not majority_correct(["6", "5", "5", "6"], [False, True, True, False])
    assert majority_correct(["5", "6", "6", "5"], [True, False, False, True])
    assert majority_correct([None, None, "5"], [False, False, True])  # no answer casts no vote
    assert not majority_correct(["7", "5", "7"], [False, True, False])


def test_accuracy_by_hand():
    solved = [[True, False, False, False], [False] * 4, [True] * 4]
    answers = [["1", "2", "2", "3"], [None] * 4, ["9"] * 4]
    m = accuracy(solved, answers, [False, False, True])
    assert m["pass1"] == pytest.approx(5 / 12)
    assert m["pass@1"] == pytest.approx(5 / 12)
    assert m["pass@2"] == pytest.approx((0.5 + 0 + 1) / 3)  # 1 - C(3,2)/C(4,2) = 0.5
    assert m["pass@4"] == pytest.approx(2 / 3)
    assert m["maj@4"] == pytest.approx(1 / 3)  # "2" wins problem 0, which is wrong
    assert m["greedy"] == pytest.approx(1 / 3)
    assert list(m) == ["pass1", "pass@1", "pass@2", "pass@4", "maj@4", "greedy"]


def test_breakdown_is_natural_order_and_sums_back_to_overall():
    rng = random.Random(3)
    levels = ["10", "2", "1", "Level 3", None]
    rows = [{"difficulty": rng.choice(levels)} for _ in range(40)]
    rows[0] = {"level": 7}  # MATH's column name counts too
    solved = [[rng.random() < 0.4 for _ in range(4)] for _ in rows]
    answers = [[rng.choice("ab") for _ in range(4)] for _ in rows]
    greedy = [rng.random() < 0.5 for _ in rows]
    parts = by_difficulty(rows, solved, answers, greedy)
    assert list(parts) == ["1", "2", "7", "10", "Level 3", "unknown"]
    overall = accuracy(solved, answers, greedy)
    assert sum(p["problems"] for p in parts.values()) == len(rows)
    for key in overall:
        total = sum(p[key] * p["problems"] for p in parts.values()) / len(rows)
        assert total == pytest.approx(overall[key]), key
    assert by_difficulty([{"prompt": "x"}], [[True]], [["1"]], [True]) is None


def _even_length(completions, **_):
    return [float(len(c) % 2 == 0) for c in completions]


def test_evaluate_breakdown_on_a_model(tiny_model, tiny_task, tiny_cfg):
    """With a verifier that some samples pass, the levels add up to the overall numbers."""
    model, tokenizer = tiny_model
    rows = [dict(r, difficulty=i % 3 + 1) for i, r in enumerate(tiny_task.eval_rows(6, 0))]
    task = Task(name="even", train_rows=tiny_task.train_rows, eval_rows=tiny_task.eval_rows,
                rewards={**tiny_task.rewards, "correct": _even_length})
    ev = replace(tiny_cfg.eval, k=4, max_new_tokens=12)
    metrics, samples = evaluate(TorchEngine(model), tokenizer, task, rows, ev, seed=0)
    assert 0.0 < metrics["pass1"] < 1.0
    assert {"pass1", "pass@1", "pass@2", "pass@4", "maj@4", "greedy"} <= set(metrics)
    assert metrics["pass1"] == pytest.approx(metrics["pass@1"])
    assert metrics["pass@1"] <= metrics["pass@2"] <= metrics["pass@4"]
    parts = metrics["by_difficulty"]
    assert list(parts) == ["1", "2", "3"] and all(p["problems"] == 2 for p in parts.values())
    for key in ("pass1", "pass@2", "pass@4", "maj@4", "greedy"):
        assert sum(p[key] for p in parts.values()) / 3 == pytest.approx(metrics[key]), key
    assert len(samples) == 6 * 4 + 6
    assert sum(s["correct"] for s in samples if s["sample_idx"] >= 0) == metrics["pass1"] * 24


def test_eval_model_folder_writes_json_and_prints_a_table(model_folder, tmp_path, capsys,
                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cmd_eval(_ns(model_folder, "tiny", "task.name=countdown", "--k", 4, "--quiet")) == 0
    out = capsys.readouterr().out
    assert "pass@1 (mean of 4 samples" in out and "pass@4" in out and "maj@4" in out
    assert "by difficulty" in out  # countdown rows carry a difficulty
    data = json.loads((tmp_path / "eval-tiny-model-countdown.json").read_text())
    assert data["task"] == "countdown" and data["k"] == 4 and data["problems"] == 8
    assert data["model"] == str(model_folder.resolve()) and data["run"] is None
    assert data["metrics"]["k"] == 4 and "pass@2" in data["metrics"]
    assert "by_difficulty" not in data["metrics"] and data["by_difficulty"]
    assert data["wall_s"] >= 0 and data["timestamp"]
    assert not list(tmp_path.glob(".*tmp*"))  # the atomic write left no temporary file


def test_saved_and_reloaded_model_gives_identical_numbers(model_folder, tmp_path):
    copy = _save(*load_model(model_folder), tmp_path / "copy")
    results = []
    for folder in (model_folder, copy):
        out = tmp_path / f"{folder.name}.json"
        ns = _ns(folder, "tiny", "task.name=sorting", "eval.max_new_tokens=24", "--out", out,
                 "--quiet")
        assert cmd_eval(ns) == 0
        results.append(json.loads(out.read_text()))
    assert results[0]["metrics"] == results[1]["metrics"]
    assert results[0]["by_difficulty"] == results[1]["by_difficulty"]
    assert results[0]["metrics"]["mean_len"] > 0


def _run_dir(tmp_path, tiny_model, **overrides):
    cfg = load_config("tiny", [f"{k}={v}" for k, v in overrides.items()])
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    dump_config(cfg, run / "config.yaml")
    model, tokenizer = tiny_model
    ckpt = save_checkpoint(run, "rl-000002", model=model, tokenizer=tokenizer, state={})
    return cfg, run, ckpt


def test_run_dir_uses_final_then_latest_checkpoint_and_its_config(tmp_path, tiny_model):
    cfg, run, ckpt = _run_dir(tmp_path, tiny_model, **{"task.name": "linear", "run.seed": 7,
                                                       "eval.k": 3, "eval.max_new_tokens": 16})
    assert resolve_target(run) == (ckpt / "model", run)
    assert cmd_eval(_ns(run, "--quiet")) == 0
    # results of a run's model go to <run>/evals/<checkpoint tag, or final>-<task>.json
    data = json.loads((run / "evals" / "rl-000002-linear.json").read_text())
    assert (data["task"], data["k"], data["seed"]) == ("linear", 3, 7)  # the run's own config
    assert data["model"] == str((ckpt / "model").resolve())
    assert data["checkpoint"] == {"tag": "rl-000002", "stage": "rl", "stage_index": None,
                                  "step": 2}  # state.json was empty: the step from the tag
    model, tokenizer = tiny_model
    task = load_task(cfg)
    metrics, _ = evaluate(TorchEngine(model), tokenizer, task, task.eval_rows(8, 7), cfg.eval, 7)
    metrics.pop("by_difficulty")
    assert data["metrics"] == pytest.approx(metrics)  # what the run's own evaluation reports

    assert cmd_eval(_ns(run, "eval.k=2", "--quiet", "--force")) == 0  # run config + override
    data = json.loads((run / "evals" / "rl-000002-linear.json").read_text())
    assert (data["task"], data["k"]) == ("linear", 2)
    # a task.* override leaves the run's config for the recipe's (here the embedded default)
    assert cmd_eval(_ns(run, "task.eval_problems=2", "eval.k=1", "eval.max_new_tokens=4",
                        "--quiet")) == 0
    data = json.loads((run / "evals" / "rl-000002-addition.json").read_text())
    assert (data["task"], data["seed"], data["problems"]) == ("addition", 0, 2)
    assert not list(run.glob("eval-*.json"))  # the old place (still read by `zeroth view`)

    final = _save(*tiny_model, run / "final")
    latest = run / "checkpoints" / "rl-000002" / "model"
    assert resolve_target(run) == (latest, run)  # no summary: resumed for more steps, ahead
    (run / "summary.json").write_text("{}")
    assert resolve_target(run) == (final, run)  # finished


@pytest.mark.parametrize("make, needle", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: p, "neither a model folder"),
    (lambda p: (p / "runs" / "empty" / "checkpoints").mkdir(parents=True) or p / "runs" / "empty",
     "no final model and no checkpoint"),
])
def test_bad_target_is_one_line(tmp_path, make, needle):
    target = make(tmp_path)
    with pytest.raises(UserError) as exc:
        cmd_eval(_ns(target, "tiny", "--quiet"))
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_existing_out_is_kept_unless_force(model_folder, tmp_path):
    out = tmp_path / "results.json"
    out.write_text("keep me")
    with pytest.raises(UserError) as exc:
        cmd_eval(_ns(model_folder, "tiny", "--out", out, "--quiet"))
    assert "--force" in str(exc.value) and "\n" not in str(exc.value)
    assert out.read_text() == "keep me"
    assert cmd_eval(_ns(model_folder, "tiny", "eval.max_new_tokens=8", "--out", out,
                                "--force", "--quiet")) == 0
    assert json.loads(out.read_text())["task"] == "addition"


# -- scoring a run's checkpoints -----------------------------------------------------------------

FAST = ("eval.k=1", "eval.max_new_tokens=8")
TAGS = ["pretrain-000000", "pretrain-000010", "pretrain-000020", "rl-000000", "rl-000001",
        "rl-000002", "rl-000003", "rl-000004"]  # conftest's finished_tiny_run keeps them all


@pytest.fixture()
def tiny_run(finished_tiny_run, tmp_path):
    """A writable copy of the session's finished tiny run (checkpoints pretrain-000000 to
    pretrain-000020, rl-000000 to rl-000004, and final/); its config: task addition, 8 held-out
    problems."""
    return shutil.copytree(finished_tiny_run, tmp_path / "runs" / "t")


def _results(run):
    return {p.name: json.loads(p.read_text()) for p in sorted((run / "evals").glob("*.json"))}


def test_checkpoint_tag_scores_that_checkpoint_with_the_runs_config(tiny_run, capsys):
    assert checkpoint_tags(tiny_run) == TAGS  # every checkpoint the run kept, in training order
    assert cmd_eval(_ns(tiny_run, "--checkpoint", "rl-000003", *FAST, "--quiet")) == 0
    assert "results: " in capsys.readouterr().out
    data = _results(tiny_run)["rl-000003-addition.json"]
    folder = tiny_run / "checkpoints" / "rl-000003" / "model"
    assert data["source"] == "zeroth eval" and data["model"] == str(folder.resolve())
    assert data["checkpoint"] == {"tag": "rl-000003", "stage": "rl", "stage_index": 1, "step": 3}
    assert (data["task"], data["k"], data["problems"]) == ("addition", 1, 8)
    assert data["eval"]["max_new_tokens"] == 8
    # the very numbers of that checkpoint's model, scored by hand with the run's config
    cfg = load_config(tiny_run / "config.yaml", list(FAST))
    model, tokenizer = load_model(folder)
    task = load_task(cfg)
    metrics, _ = evaluate(TorchEngine(model.eval()), tokenizer, task,
                          task.eval_rows(8, cfg.run.seed), cfg.eval, cfg.run.seed)
    assert data["by_difficulty"] == metrics.pop("by_difficulty", None)  # addition: no levels
    assert data["metrics"] == pytest.approx(metrics)

    assert cmd_eval(_ns(tiny_run, "--checkpoint", "final", *FAST, "--quiet")) == 0
    final = _results(tiny_run)["final-addition.json"]
    assert final["checkpoint"]["tag"] == "final" and final["model"].endswith("final")


def test_unknown_checkpoint_lists_the_tags_and_writes_nothing(tiny_run, model_folder):
    with pytest.raises(UserError) as exc:
        cmd_eval(_ns(tiny_run, "--checkpoint", "rl-000009", *FAST, "--quiet"))
    msg = str(exc.value)
    assert "'rl-000009'" in msg and ", ".join(TAGS + ["final"]) in msg and "\n" not in msg
    assert not (tiny_run / "evals").exists()
    with pytest.raises(UserError) as exc:  # a model folder has no checkpoints
        cmd_eval(_ns(model_folder, "tiny", "--checkpoint", "all", "--quiet"))
    assert "needs a run directory" in str(exc.value)
    with pytest.raises(UserError) as exc:  # one --out file cannot hold several results
        cmd_eval(_ns(tiny_run, "--checkpoint", "all", "--out", "x.json", "--quiet"))
    assert "--out" in str(exc.value) and not (tiny_run / "evals").exists()


def test_checkpoint_all_scores_each_once_in_order(tiny_run, capsys):
    assert cmd_eval(_ns(tiny_run, "--checkpoint", "all", *FAST, "--quiet")) == 0
    out = capsys.readouterr().out.replace("\n", "")  # rich wraps long paths at 80 columns
    assert [out.index(f"/{tag}/") for tag in TAGS] == sorted(out.index(f"/{tag}/") for tag in TAGS)
    first = _results(tiny_run)
    assert sorted(first) == sorted(f"{tag}-addition.json" for tag in TAGS)
    assert [first[f"{tag}-addition.json"]["checkpoint"]["step"] for tag in TAGS] == [
        0, 10, 20, 0, 1, 2, 3, 4]

    table = out[out.index("every checkpoint"):]  # the closing table: a row per checkpoint
    assert [table.index(f" {tag} ") for tag in TAGS] == sorted(table.index(f" {tag} ")
                                                                for tag in TAGS)

    assert cmd_eval(_ns(tiny_run, "--checkpoint", "all", *FAST, "--quiet")) == 0  # all done
    out = capsys.readouterr().out
    assert "skipping 8 checkpoint(s)" in out.replace("\n", " ")
    assert all(f" {tag} " in out[out.index("every checkpoint"):] for tag in TAGS)
    assert _results(tiny_run) == first  # untouched (timestamps included)

    # other settings: the old results are kept unless --force replaces them
    with pytest.raises(UserError) as exc:
        cmd_eval(_ns(tiny_run, "--checkpoint", "all", "eval.k=2", "eval.max_new_tokens=8",
                     "--quiet"))
    assert "--force" in str(exc.value) and _results(tiny_run) == first
    assert cmd_eval(_ns(tiny_run, "--checkpoint", "all", "eval.k=2", "eval.max_new_tokens=8",
                        "--force", "--quiet")) == 0
    assert [d["k"] for d in _results(tiny_run).values()] == [2] * 8

    (tiny_run / "evals" / "rl-000003-addition.json").unlink()  # only the missing one is scored
    assert cmd_eval(_ns(tiny_run, "--checkpoint", "all", "eval.k=2", "eval.max_new_tokens=8",
                        "--quiet")) == 0
    assert "skipping 7 checkpoint(s)" in capsys.readouterr().out.replace("\n", " ")
    assert sorted(_results(tiny_run)) == sorted(first)
