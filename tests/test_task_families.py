"""Procedural task families: exact verifiers (right, wrong, hostile), stable held-out splits,
determinism, difficulty knobs, demonstrations with known accuracy, option checks, registry."""

from random import Random

import pytest

from zeroth.cli import main
from zeroth.config import load_config
from zeroth.errors import UserError
from zeroth.tasks import TASKS, load_task, task_names
from zeroth.tasks.procedural import is_heldout

FAMILIES = ["arithmetic", "countdown", "sorting", "linear", "multiplication"]


def _task(name, *overrides):
    return load_task(load_config(None, [f"task.name={name}", *overrides]))


def _score(task, row, answer_text):
    """The task's own verifier on one completion for `row`."""
    return task.rewards["correct"]([answer_text], **{k: [v] for k, v in row.items()})[0]


def test_registry_lists_every_task():
    assert set(task_names()) == set(TASKS)
    assert {"addition", "jsonl", "gsm8k", "math", "datasets", "humaneval", "mbpp",
            "reasoning_gym", *FAMILIES} <= set(TASKS)


def test_unknown_task_name_is_a_user_error():
    from zeroth.tasks import _loader

    with pytest.raises(UserError, match="did you mean 'countdown'.*known tasks"):
        _loader("countdwn")


@pytest.mark.parametrize("name", FAMILIES)
def test_reference_answer_scores_and_wrong_ones_do_not(name):
    task = _task(name)
    for row in task.train_rows(Random(0), 30):
        assert _score(task, row, f"<think>x</think><answer>{row['answer']}</answer>") == 1.0
        assert _score(task, row, "<answer>12345678901</answer>") == 0.0
        assert _score(task, row, f"the answer is {row['answer']}") == 0.0  # no answer block
        assert isinstance(row["difficulty"], int) and row["prompt"] and row["answer"]


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("hostile", [
    "", "   ", "None", "1" * 5000, "((((((((((((((((((((((((((((((((((((((((1", "(" * 300 + ")" * 300,
    "__import__('os').system('echo hi')", "1e309", "nan", "0x10", "٣", "[1, 2", "1,,2",
    "\x00", "</answer><answer>", "9" * 60,
])
def test_hostile_answers_score_zero_never_none(name, hostile):
    task = _task(name)
    row = task.train_rows(Random(1), 1)[0]
    assert _score(task, row, f"<answer>{hostile}</answer>") == 0.0


def _countdown_row(numbers, target):
    return {"prompt": "p", "answer": "", "numbers": numbers, "target": target}


@pytest.mark.parametrize("answer, expected", [
    ("3*7+12", 1.0), ("12+7*3", 1.0), (" (7*3) + 12 ", 1.0), ("3 * 7 + 12", 1.0),
    ("3*7+12+0", 0.0),  # a number not given
    ("3*7+7", 0.0),  # reusing a number, leaving one out
    ("3*7*12", 0.0),  # wrong value
    ("3**7+12", 0.0), ("3*7//1+12", 0.0), ("-3*7+12", 0.0), ("3*7+12.0", 0.0),
    ("3*7+12=33", 0.0), ("__import__('os')", 0.0), ("abs(3)*7+12", 0.0),
    ("99999999999999999999**99999999", 0.0), ("9" * 300, 0.0), ("3*7+012", 0.0),
    ("0x3*7+12", 0.0), ("3_0*7+12", 0.0), ("3,7,12", 0.0), ("[3*7+12]", 0.0),
])
def test_countdown_verifier_exact_and_safe(answer, expected):
    task = _task("countdown")
    assert _score(task, _countdown_row([3, 7, 12], 33), f"<answer>{answer}</answer>") == expected


def test_countdown_fractions_and_division_by_zero():
    task = _task("countdown")
    row = _countdown_row([2, 3, 3, 6], 4)
    assert _score(task, row, "<answer>(3+3)*2/(6/2)</answer>") == 0.0  # uses 2 twice
    assert _score(task, _countdown_row([1, 3, 4, 6], 24), "<answer>6/(1-3/4)</answer>") == 1.0
    assert _score(task, _countdown_row([3, 3, 6], 2), "<answer>6/(3-3)</answer>") == 0.0
    assert _score(task, _countdown_row([3, 3, 6], 2), "<answer>6/3/(3-3)</answer>") == 0.0


def test_countdown_problems_are_solvable_with_each_number_once():
    task = _task("countdown", "task.options.numbers=4", "task.options.max_target=50")
    for row in task.train_rows(Random(2), 100):
        assert len(row["numbers"]) == 4 and 1 <= row["target"] <= 50
        assert _score(task, row, f"<answer>{row['answer']}</answer>") == 1.0


def test_other_verifiers_on_examples():
    sorting, linear = _task("sorting"), _task("linear")
    row = {"prompt": "p", "answer": "3, 7, 42", "numbers": [42, 7, 3]}
    for text in ("3, 7, 42", "3,7,42", "[3, 7, 42]"):
        assert _score(sorting, row, f"<answer>{text}</answer>") == 1.0
    for text in ("42, 7, 3", "3, 42, 7", "3, 7", "3, 7, 42, 42", "3 7 42"):
        assert _score(sorting, row, f"<answer>{text}</answer>") == 0.0
    row = {"prompt": "p", "answer": "-7", "a": -3, "b": 5, "c": 26}
    assert _score(linear, row, "<answer>-7</answer>") == 1.0
    assert _score(linear, row, "<answer>7</answer>") == 0.0
    assert _score(_task("arithmetic"), {"prompt": "p", "answer": "1200"},
                  "<answer>1,200</answer>") == 1.0


@pytest.mark.parametrize("name", FAMILIES)
def test_heldout_split_is_disjoint_and_stable(name):
    task = _task(name, "task.heldout_fraction=0.2")
    train = task.train_rows(Random(0), 1000)
    held = task.eval_rows(50, 0)
    assert not any(is_heldout(r, 0.2) for r in train)
    assert all(is_heldout(r, 0.2) for r in held)
    assert {r["prompt"] for r in train}.isdisjoint({r["prompt"] for r in held})
    assert len({r["prompt"] for r in held}) == 50
    assert task.eval_rows(50, 0) == held  # the same for the same seed
    assert task.train_rows(Random(0), 1000) == train  # deterministic for a seed
    assert task.eval_rows(50, 1) != held


@pytest.mark.parametrize("name, knob, column", [
    ("arithmetic", "task.options.terms=6", "difficulty"),
    ("countdown", "task.options.numbers=5", "difficulty"),
    ("sorting", "task.options.length=9", "difficulty"),
    ("multiplication", "task.options.digits=6", "difficulty"),
])
def test_difficulty_knobs_change_the_problems(name, knob, column):
    easy = _task(name).train_rows(Random(0), 50)
    hard = _task(name, knob).train_rows(Random(0), 50)
    assert sum(r[column] for r in hard) > sum(r[column] for r in easy)
    assert {r["prompt"] for r in easy}.isdisjoint({r["prompt"] for r in hard})


def test_range_knobs_bound_the_numbers():
    rows = _task("linear", "task.options.max_x=3", "task.options.max_coef=2").train_rows(
        Random(0), 200)
    assert {int(r["answer"]) for r in rows} <= set(range(-3, 4))
    assert {abs(r["a"]) for r in rows} == {1, 2}
    rows = _task("sorting", "task.options.max_value=9").train_rows(Random(0), 50)
    assert max(max(r["numbers"]) for r in rows) <= 9
    rows = _task("arithmetic", "task.options.depth=0").train_rows(Random(0), 50)
    assert not any("(" in r["prompt"] for r in rows)


@pytest.mark.parametrize("name", FAMILIES)
def test_demonstrations_have_exactly_known_accuracy(name):
    task = _task(name, "demos.reason_fraction=0.3")
    rng, well_formed = Random(3), task.rewards["format"]
    verdicts = []
    for row in task.train_rows(rng, 200):
        text, ok = task.demonstration(row, rng)
        assert ok == (_score(task, row, text) == 1.0)
        assert text.startswith(("<think>", "<answer>")) and text.endswith("</answer>")
        assert well_formed([text])[0] == 1.0
        verdicts.append(ok)
    assert 0 < sum(verdicts) < len(verdicts)  # the slip makes some direct answers wrong


@pytest.mark.parametrize("name", FAMILIES)
def test_reasoned_and_error_free_demonstrations_are_right(name):
    for reason in (1.0, 0.0):
        task = _task(name, f"demos.reason_fraction={reason}", "demos.error=none")
        rng = Random(4)
        for row in task.train_rows(rng, 100):
            text, ok = task.demonstration(row, rng)
            assert ok and _score(task, row, text) == 1.0
            assert text.startswith("<think>") == (reason == 1.0)


def test_worked_solutions_read_well():
    from zeroth.tasks import arithmetic, countdown, linear, multiplication, sorting

    assert arithmetic.reasoned({"expression": "(3+4)*5"}) == "3+4=7 7*5=35"
    assert arithmetic.FAMILY.slip({"expression": "(3+4)*5"}) == "23"
    row = {"numbers": [12, 7, 3], "target": 33, "answer": "7*3+12"}  # try, check, backtrack
    assert countdown.reasoned(row) == "12+7=19 19+3=22 no 12*3=36 36-7=29 no 7*3=21 21+12=33 yes"
    assert countdown.FAMILY.slip(row) == "12+7+3"  # the first try, unchecked
    assert countdown.tries([10, 4, 3], 70, "10*(3+4)") == [  # each pair's closest first step
        "10*4+3", "10*3+4", "4*3+10", "(10+4)*3", "(10+3)*4", "(4+3)*10"]  # then its second
    found = countdown.tries([19, 1, 8], 99, "REF")  # no try lands: 6 tries, then the reference
    assert len(found) == countdown.MAX_TRIES + 1 and found[-1] == "REF"
    assert sorting.reasoned({"numbers": [42, 7, 19]}) == "42 7,42"
    assert sorting.FAMILY.slip({"numbers": [42, 7, 19]}) == "19,42,7"
    assert linear.reasoned({"a": -3, "b": 5, "c": 26}) == "-3x=26-5=21 x=21/(-3)=-7"
    assert linear.reasoned({"a": -3, "b": 15, "c": 36}) == (  # tens first, then units
        "-3x=36-15=36-10-5=26-5=21 x=21/(-3)=-7")
    assert linear.FAMILY.slip({"a": -3, "b": 5, "c": 26}) == "-31/3"  # b's sign not flipped
    assert linear.FAMILY.slip({"a": 2, "b": -4, "c": 6}) == "1"
    assert linear.reasoned({"a": 5, "b": -16, "c": -51}) == "5x=-51+16=-51+10+6=-41+6=-35 x=-35/5=-7"
    assert multiplication.reasoned({"a": 347, "m": 6}) == "7*6+0=42 4*6+4=28 3*6+2=20"
    assert multiplication.dropped_carry(347, 6) == 1842


@pytest.mark.parametrize("override, needle", [
    ("task.options.number=4", "did you mean 'task.options.numbers'"),
    ("task.options.numbers=9", "task.options.numbers must be an integer in [2, 6]"),
    ("task.options.numbers=true", "task.options.numbers"),
    ("task.options.numbers=2.5", "task.options.numbers"),
    ("task.options.max_target=abc", "task.options.max_target"),
])
def test_bad_options_are_one_line_user_errors(override, needle):
    with pytest.raises(UserError) as err:
        _task("countdown", override)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_options_on_a_task_without_any_are_refused():
    with pytest.raises(UserError, match="takes no options"):
        _task("addition", "task.options.numbers=4")


def test_task_weights_apply_when_the_recipe_names_none():
    cfg = load_config(None, ["task.name=countdown"])
    cfg.rl.reward_weights = None
    task = load_task(cfg)
    assert task.weights == {"correct": 1.0, "format": 0.1} and task.accuracy == "correct"


def test_countdown_runs_end_to_end_from_scratch(tmp_path):
    args = ["run", "tiny", "task.name=countdown", f"run.out_dir={tmp_path}", "run.name=cd",
            "rl.steps=2", "pretrain.steps=10"]
    assert main(args) == 0
    assert (tmp_path / "cd" / "summary.json").is_file()
