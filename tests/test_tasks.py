import json
from random import Random

import pytest

from zeroth.config import load_config
from zeroth.errors import UserError
from zeroth.rewards import REWARDS
from zeroth.tasks import load_task
from zeroth.tasks.addition import columns, dropped_carry, is_heldout, reasoned


def test_reasoned_demonstration_is_correct_and_readable():
    assert reasoned(347, 589) == "<think>7+9+0=16 4+8+1=13 3+5+1=09</think><answer>936</answer>"
    assert columns(95, 7) == [(5, 7, 0, 12), (9, 0, 1, 10)]


def test_dropped_carry_is_the_systematic_slip():
    assert dropped_carry(347, 589) == 826  # 7+9->6, 4+8->2, 3+5->8
    assert dropped_carry(123, 456) == 579  # no carry: right
    assert dropped_carry(500, 500) == 0


def test_heldout_never_in_training_rows():
    cfg = load_config(None, ["task.heldout_fraction=0.2"])
    task = load_task(cfg)
    train = task.train_rows(Random(0), 2000)
    held = task.eval_rows(50, 0)
    assert not any(is_heldout(r["a"], r["b"], 0.2) for r in train)
    assert all(is_heldout(r["a"], r["b"], 0.2) for r in held)
    assert {r["prompt"] for r in train}.isdisjoint({r["prompt"] for r in held})
    assert task.eval_rows(50, 0) == held  # stable for a seed
    assert len({r["prompt"] for r in held}) == 50


def test_demonstration_accuracy_is_known():
    task = load_task(load_config(None, ["demos.reason_fraction=0.0"]))
    rng = Random(1)
    for row in task.train_rows(rng, 200):
        text, ok = task.demonstration(row, rng)
        assert not text.startswith("<think>")
        verdict = REWARDS["correct"]([text], answer=[row["answer"]])[0]
        assert ok == (verdict == 1.0)


def _jsonl_task(tmp_path, lines):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return load_task(load_config(None, ["task.name=jsonl", f"task.path={path}",
                                        "task.heldout_fraction=0.3"]))


def test_jsonl_task_splits_and_keeps_columns(tmp_path):
    lines = [json.dumps({"prompt": f"q{i}", "answer": i, "level": i % 3}) for i in range(60)]
    task = _jsonl_task(tmp_path, lines)
    held = {r["prompt"] for r in task.eval_rows(100, 0)}
    train = {r["prompt"] for r in task.train_rows(Random(0), 500)}
    assert held and train and held.isdisjoint(train)
    assert "level" in task.train_rows(Random(0), 1)[0]


@pytest.mark.parametrize("bad, needle", [
    ('{"prompt": "q"', "not valid JSON"),
    ('{"prompt": "q"}', "'answer'"),
    ('["q", 1]', "JSON object"),
    ('{"prompt": "", "answer": 1}', "'prompt'"),
])
def test_jsonl_malformed_row_names_line(tmp_path, bad, needle):
    lines = [json.dumps({"prompt": "a", "answer": 1}), bad]
    with pytest.raises(UserError) as err:
        _jsonl_task(tmp_path, lines)
    assert needle in str(err.value) and ":2:" in str(err.value)
    assert "\n" not in str(err.value)


def test_user_rewards_by_file_and_module(tmp_path):
    file = tmp_path / "my_rewards.py"
    file.write_text("def brevity(completions, **_):\n"
                    "    return [1.0 / (1 + len(c)) for c in completions]\n")
    weights = f"rl.reward_weights={{correct: 1.0, '{file}:brevity': 0.5, " \
              "'zeroth.rewards.shaping:tag_count': 0.1}"
    task = load_task(load_config(None, [weights]))
    brevity = task.rewards[f"{file}:brevity"]
    assert brevity(["", "abc"]) == [1.0, 0.25]
    assert task.rewards["zeroth.rewards.shaping:tag_count"](["<answer>"]) == [0.25]


@pytest.mark.parametrize("name, needle", [
    ("nope", "unknown reward 'nope'"),
    ("no/such/file.py:f", "does not exist"),
    ("zeroth.rewards.shaping:missing", "no function 'missing'"),
    ("no_such_module_xyz:f", "cannot import module"),
])
def test_unresolvable_reward_names_are_user_errors(name, needle):
    with pytest.raises(UserError) as err:
        load_task(load_config(None, [f"rl.reward_weights={{'{name}': 1.0}}"]))
    assert needle in str(err.value) and "rl.reward_weights" in str(err.value)


EXAMPLE_TASK = str(__import__("pathlib").Path(__file__).parent.parent / "examples" / "parity.py")


def test_a_users_own_task_file_is_a_task(tmp_path):
    """task.name=path/to/file.py:load: the example family, with its options, splits and
    demonstrations (reasoned ones always right, the last-bit shortcut right about half the
    time), and the file made absolute in the run's saved config."""
    cfg = load_config(None, [f"task.name={EXAMPLE_TASK}:load", "task.options.max_bits=10",
                             f"run.out_dir={tmp_path}", "run.name=p"])
    task = load_task(cfg)
    assert task.name == "parity"
    rows = task.eval_rows(50, 0)
    assert all(len(r["bits"]) <= 10 and r["answer"] == str(sum(r["bits"]) % 2) for r in rows)
    train = {r["prompt"] for r in task.train_rows(Random(0), 500)}
    assert not train & {r["prompt"] for r in rows}
    rng = Random(0)
    demos = [task.demonstration(r, rng) for r in task.train_rows(Random(1), 400)]
    reasoned = [ok for text, ok in demos if "<think>" in text]
    assert reasoned and all(reasoned)
    assert 0.55 < sum(ok for _, ok in demos) / len(demos) < 0.75  # the ceiling, about 65%
    from zeroth.pipeline.run import create_run_dir

    cfg.task.name = "examples/parity.py:load"  # relative, as a user types it from the checkout
    run = create_run_dir(cfg, "parity")
    saved = (run / "config.yaml").read_text()
    assert f"name: {EXAMPLE_TASK}:load" in saved


@pytest.mark.parametrize("name, needle", [
    ("nowhere/task.py:load", "file .nowhere/task.py. does not exist"),
    ("zeroth_no_such_module:load", "cannot import module"),
])
def test_a_task_that_cannot_be_found_is_one_line(name, needle):
    with pytest.raises(UserError, match=needle):
        load_task(load_config(None, [f"task.name={name}"]))
