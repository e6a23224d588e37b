"""Several task families in one run (task.mix) and the difficulty curriculum (task.curriculum):
config refusals, rows drawn by weight, held-out shares, the dispatching verifier, the
curriculum's moves, and a tiny mixed run with a curriculum that is resumed mid-run."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from pathlib import Path
from random import Random

import pytest

from zeroth.config import load_config
from zeroth.errors import UserError
from zeroth.rewards import combine
from zeroth.seeding import stable_fraction
from zeroth.tasks import load_task
from zeroth.tasks.curriculum import Curriculum, describe
from zeroth.tasks.mix import FAMILIES, LADDERS, shares


def _cfg(*overrides: str):
    return load_config("tiny", list(overrides))


def _mix(mix: str, *more: str):
    return load_task(_cfg("task.name=mix", f"task.mix={mix}", *more))


# -- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "needle"), [
    (["task.name=mix"], "name them in task.mix"),
    (["task.mix={addition: 1}"], "task.mix is set but task.name is 'addition' — set task.name=mix"),
    (["task.name=mix", "task.mix={additon: 1}"],
     "task.mix.additon: unknown family — did you mean 'addition'?"),
    (["task.name=mix", "task.mix={gsm8k: 1}"], "task.mix.gsm8k: only procedural families"),
    (["task.name=mix", "task.mix={mix: 1}"], "task.mix.mix: only procedural families"),
    (["task.name=mix", "task.mix={sorting: 0}"], "task.mix.sorting must be a positive weight"),
    (["task.name=mix", "task.mix={sorting: -2}"], "task.mix.sorting must be a positive weight"),
    (["task.name=mix", "task.mix={sorting: true}"], "task.mix.sorting must be a positive weight"),
    (["task.name=mix", "task.mix={sorting: lots}"], "task.mix.sorting must be a positive weight"),
    (["task.name=mix", "task.mix={sorting: {wieght: 2}}"],
     "task.mix.sorting.wieght: unknown key — did you mean 'weight'?"),
    (["task.name=mix", "task.mix={sorting: {options: 4}}"], "task.mix.sorting.options must map"),
    (["task.name=mix", "task.mix={'nowhere.py:load': 1}"],
     "task.mix.nowhere.py:load: file 'nowhere.py' does not exist"),
    (["task.name=mix", "task.mix={sorting: 1}", "task.options.length=4"],
     "task.options does not apply to a mix — give each family's options in task.mix.<family>"),
    (["task.curriculum={upp: 0.5}"],
     "unknown key 'task.curriculum.upp' — did you mean 'task.curriculum.up'?"),
    (["task.curriculum.up=1.5"], "task.curriculum.up must be a training accuracy in [0, 1]"),
    (["task.curriculum={up: 0.2, down: 0.5}"], "keep down <= up"),
    (["task.curriculum.window=0"], "task.curriculum.window must be a number of completions"),
    (["task.name=humaneval", "task.curriculum.up=0.7"],
     "task.curriculum: task 'humaneval' has no difficulty ladder"),
])
def test_bad_mixes_and_curricula_are_refused_in_one_line(overrides, needle):
    with pytest.raises(UserError) as err:
        _cfg(*overrides)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_family_option_is_checked_and_named_under_task_mix():
    with pytest.raises(UserError) as err:
        _mix("{sorting: {options: {lenght: 4}}}")
    assert "task.mix.sorting.options.lenght" in str(err.value)
    assert "did you mean 'task.mix.sorting.options.length'" in str(err.value)
    with pytest.raises(UserError, match=r"task.mix.addition.options.digits must be an integer"):
        _mix("{addition: {options: {digits: 12}}}")


def test_a_curriculum_needs_the_verifier_among_the_rewards():
    from zeroth.pipeline.run import preflight

    cfg = _cfg("task.name=mix", "task.mix={sorting: 1}", "task.curriculum.up=0.7",
               "rewards={format: 1.0}")
    with pytest.raises(UserError, match=r"give it a weight in rl.reward_weights"):
        preflight(cfg)


def test_a_task_file_of_ones_own_mixes_too():
    parity = Path(__file__).resolve().parents[1] / "examples" / "parity.py"
    task = _mix(f"{{'{parity}:load': 1, addition: 1}}", "task.curriculum.up=0.7")
    assert task.info["mix"] == {"parity": 1.0, "addition": 1.0}
    assert task.levels == {"addition": 2}  # parity has no ladder: the curriculum leaves it
    rows = task.eval_rows(4, 0)
    assert [r["task"] for r in rows] == ["parity", "addition", "parity", "addition"]
    texts = [f"<answer>{r['answer']}</answer>" for r in rows]
    assert task.rewards["correct"](texts, **{k: [r.get(k) for r in rows]
                                             for k in {k for r in rows for k in r}}) == [1.0] * 4


def test_eval_problems_below_the_family_count_is_refused():
    task = _mix("{addition: 1, sorting: 1, linear: 1}", "task.eval_problems=2")
    with pytest.raises(ValueError, match=r"task.eval_problems>=3"):
        task.eval_rows(2, 0)


# -- rows --------------------------------------------------------------------------------------


def test_training_rows_follow_the_weights_and_never_a_heldout_problem():
    task = _mix("{addition: 3, sorting: {weight: 1, options: {length: 4}}}")
    rows = [row for i in range(40) for row in task.train_rows(Random(f"s{i}"), 50)]
    counts = Counter(row["task"] for row in rows)
    assert abs(counts["addition"] / len(rows) - 0.75) < 0.04  # 2000 rows: sd about 0.01
    assert all(len(row["numbers"]) == 4 for row in rows if row["task"] == "sorting")
    assert all(stable_fraction(f"{r['a']}+{r['b']}") >= 0.05 for r in rows if r["task"] ==
               "addition")  # addition's split
    assert all(stable_fraction(r["prompt"]) >= 0.05 for r in rows if r["task"] == "sorting")
    assert task.train_rows(Random("s1"), 50) == rows[50:100]  # a function of the stream


def test_eval_rows_share_the_problems_by_weight_interleaved_and_stable():
    assert shares(10, [3.0, 1.0]) == [7, 3]
    assert shares(5, [1.0, 1.0, 1.0]) == [2, 2, 1]
    assert shares(3, [100.0, 1.0, 1.0]) == [1, 1, 1]  # every family at least one
    task = _mix("{addition: 3, sorting: 1}")
    rows = task.eval_rows(10, 0)
    assert rows == task.eval_rows(10, 0) and rows != task.eval_rows(10, 1)
    assert [r["task"] for r in rows[:4]] == ["addition", "sorting", "addition", "addition"]
    by_family = {name: [r for r in rows if r["task"] == name] for name in ("addition", "sorting")}
    sorting = load_task(_cfg("task.name=sorting"))
    assert [r["prompt"] for r in by_family["sorting"]] == [r["prompt"] for r in
                                                           sorting.eval_rows(3, 0)]
    assert len(by_family["addition"]) == 7 and len({r["prompt"] for r in rows}) == 10


def test_the_verifier_and_demonstrations_dispatch_on_each_rows_family():
    task = _mix("{" + ", ".join(f"{name}: 1" for name in FAMILIES) + "}",
                "task.eval_problems=12")
    rows = task.eval_rows(12, 0)
    assert {r["task"] for r in rows} == set(FAMILIES)
    right = [f"<think>x</think><answer>{r['answer']}</answer>" for r in rows]
    wrong = ["<answer>-123456789</answer>"] * len(rows)
    for texts, want in ((right, 1.0), (wrong, 0.0)):  # all families in one batch
        _, parts = combine(texts, rows, task.rewards, {"correct": 1.0})
        assert [p["correct"] for p in parts] == [want] * len(rows)
    stray = {**rows[0], "task": "parity"}
    assert task.rewards["correct"](right[:1], **{k: [v] for k, v in stray.items()}) == [None]
    for row in rows:
        text, ok = task.demonstration(row, Random(0))
        score = task.rewards["correct"]([text], **{k: [v] for k, v in row.items()})
        assert ok == (score == [1.0])


def test_levels_change_the_rows_drawn_not_the_heldout_set():
    task = _mix("{addition: 1, sorting: 1}")
    assert task.levels == {"addition": 2, "sorting": 5}  # tiny's task.digits, sorting's default
    held = task.eval_rows(8, 0)
    task.levels.update(addition=4, sorting=7)
    rows = task.train_rows(Random(0), 40)
    assert {len(str(r["a"])) for r in rows if r["task"] == "addition"} == {4}
    assert {len(r["numbers"]) for r in rows if r["task"] == "sorting"} == {7}
    assert task.eval_rows(8, 0) == held


def test_every_ladder_is_within_its_knobs_range():
    for name, (knob, values) in LADDERS.items():
        for value in values:
            option = {"addition": "digits"}.get(name)
            over = f"task.digits={value}" if option else f"task.options.{knob}={value}"
            task = load_task(_cfg(f"task.name={name}", over, "task.curriculum.up=0.7"))
            assert task.levels == {name: value} and len(task.train_rows(Random(0), 2)) == 2


def test_a_single_family_under_a_curriculum_draws_its_own_rows():
    plain = load_task(_cfg("task.name=sorting"))
    levelled = load_task(_cfg("task.name=sorting", "task.curriculum.up=0.7"))
    assert levelled.name == "sorting" and levelled.levels == {"sorting": 5}
    assert [{k: v for k, v in r.items() if k != "task"} for r in
            levelled.train_rows(Random(3), 20)] == plain.train_rows(Random(3), 20)


# -- the curriculum ------------------------------------------------------------------------------


def test_the_curriculum_moves_on_a_full_window_and_starts_it_over():
    task = _mix("{addition: 1, sorting: 1}")
    cur = Curriculum.of(task, {"up": 0.7, "down": 0.1, "window": 4})
    assert cur.observe("rl", 1, {"addition": [True] * 3}) == []  # the window is not full
    (up,) = cur.observe("rl", 2, {"addition": [True, False], "sorting": [False] * 2})
    assert (up["family"], up["knob"], up["from"], up["to"], up["accuracy"]) == (
        "addition", "digits", 2, 3, 0.75)
    assert task.levels == {"addition": 3, "sorting": 5} and cur.recent["addition"] == []
    (down,) = cur.observe("rl", 3, {"sorting": [False, False]})  # 4 misses: < 0.1
    assert (down["from"], down["to"]) == (5, 4) and "sorting length 5 → 4" in describe(down)
    assert cur.observe("rl", 4, {"sorting": [True, False, False, False]}) == []  # 0.25: stays
    again = Curriculum.of(_mix("{addition: 1, sorting: 1}"), {"window": 4}, cur.state())
    assert again.levels == task.levels and again.state() == cur.state()
    top = _mix("{addition: {options: {digits: 9}}}")
    assert Curriculum.of(top, {"up": 0.0, "down": 0.0, "window": 1}).observe(
        "rl", 1, {"addition": [True]}) == []  # the top rung: nowhere to go


# -- a tiny mixed run with a forced curriculum, and its resume -------------------------------------

RUN = ["task.name=mix", "task.mix={sorting: {weight: 1, options: {length: 3}}, addition: 1}",
       "task.curriculum={up: 0.0, down: 0.0, window: 4}",  # every family rises after each step
       "pretrain.steps=10", "rl.steps=3", "rl.checkpoint_every=1", "task.eval_problems=4",
       "rl.eval_problems=4", "rl.max_new_tokens=24", "eval.max_new_tokens=24"]


def _run(out, name: str):
    from zeroth.pipeline.run import create_run_dir, execute, preflight
    from zeroth.record.progress import Display

    cfg = load_config("tiny", [*RUN, f"run.out_dir={out}", f"run.name={name}"])
    preflight(cfg)
    run_dir = create_run_dir(cfg, "tiny")
    return run_dir, execute(run_dir, cfg, Display(quiet=True))


def _fingerprint(run_dir) -> dict:
    db = sqlite3.connect(run_dir / "ledger.sqlite")
    rollouts = db.execute("select phase, step, prompt_idx, sample_idx, prompt, completion, "
                          "rewards, advantage, task, difficulty from rollouts order by phase, "
                          "step, prompt_idx, sample_idx").fetchall()
    metrics = [(p, s, {k: v for k, v in json.loads(d).items() if not k.startswith("time_")})
               for p, s, d in db.execute("select phase, step, data from metrics order by "
                                         "phase, step, id")]
    meta = dict(db.execute("select key, value from meta where key != 'summary'"))
    db.close()
    summary = json.loads((run_dir / "summary.json").read_text())
    summary.pop("wall_s")
    return {"rollouts": rollouts, "metrics": metrics, "meta": meta, "summary": summary}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    out = tmp_path_factory.mktemp("mix")
    run_dir, summary = _run(out, "m")
    return run_dir, summary, _fingerprint(run_dir)


def test_a_mixed_run_records_each_family_and_the_curriculum(mixed):
    _, summary, fp = mixed
    steps = {s: m for p, s, m in fp["metrics"] if p == "rl"}
    assert sorted(steps) == [1, 2, 3]
    assert all({"level/addition", "level/sorting"} <= set(m) for m in steps.values())
    assert any("accuracy/addition" in m for m in steps.values())
    assert {"heldout_pass1/addition", "heldout_pass1/sorting"} <= set(steps[2])
    changes = summary["curriculum"]["changes"]
    assert len(changes) >= 3 and all(c["to"] == c["from"] + 1 for c in changes)  # up: 0.0
    for name, start in (("addition", 2), ("sorting", 3)):
        moved = [c["step"] for c in changes if c["family"] == name]
        assert [steps[s][f"level/{name}"] for s in (1, 2, 3)] == [
            start + sum(m < s for m in moved) for s in (1, 2, 3)]
        assert summary["curriculum"]["levels"][name] == start + len(moved)
        rows = {s for p, s, *_, task, _ in fp["rollouts"] if p == "rl" and task == name}
        assert rows == {s for s in steps if f"accuracy/{name}" in steps[s]}
    for phase, step, _, _, prompt, _, _, _, task, difficulty in fp["rollouts"]:
        if phase == "rl" and task == "sorting":  # rows drawn at the step's level
            assert int(difficulty) + 1 == steps[step]["level/sorting"]
        elif phase == "rl":
            assert prompt.startswith("What is ") and len(prompt[8:].split("+")[0]) == \
                steps[step]["level/addition"]
    assert summary["task"] == "mix" and summary["mix"] == {"addition": 1.0, "sorting": 1.0}
    assert set(summary["final_by_task"]) == {"addition", "sorting"}
    assert summary["final_by_task"]["sorting"]["problems"] == 2
    assert {"pass1", "pass@2", "maj@2", "greedy"} <= set(summary["base_by_task"]["addition"])
    assert json.loads(fp["meta"]["curriculum"]) == changes
    assert set(json.loads(fp["meta"]["eval_rl_by_task"])) == {"addition", "sorting"}


def test_the_report_prints_the_families_and_the_curriculum(mixed):
    from rich.console import Console

    from zeroth.record.report import print_results

    run_dir, summary, _ = mixed
    console = Console(record=True, width=100)
    print_results(console, summary, run_dir)
    text = console.export_text()
    levels = summary["curriculum"]["levels"]
    assert "held-out results per task" in text and "sorting" in text
    assert (f"curriculum: {len(summary['curriculum']['changes'])} level changes; levels at the "
            f"end: sorting {levels['sorting']}, addition {levels['addition']}") in text


def test_resume_mid_run_repeats_the_uninterrupted_run_with_its_curriculum(mixed, tmp_path,
                                                                         monkeypatch):
    """A run killed in RL step 2 after recording it (rollouts, metrics, level changes) but
    before its checkpoint: resumed from step 1's, it ends exactly as the uninterrupted run."""
    from zeroth.pipeline import run as run_module
    from zeroth.record.progress import Display

    class Killed(Exception):
        pass

    save = run_module.Runner.save

    def dies_at_step_2(self, step, optimizer=None):
        if self.stage_id == "rl" and step == 2:
            raise Killed
        save(self, step, optimizer)

    monkeypatch.setattr(run_module.Runner, "save", dies_at_step_2)
    with pytest.raises(Killed):
        _run(tmp_path, "m")
    run_dir = tmp_path / "m"
    assert (run_dir / "checkpoints" / "LATEST").read_text().strip() == "rl-000001"
    assert 2 in _ledger_steps(run_dir)  # step 2 was recorded before the kill, its changes too
    assert any(c["step"] == 2 for c in _meta(run_dir, "curriculum"))
    monkeypatch.setattr(run_module.Runner, "save", save)
    state = json.loads((run_dir / "checkpoints" / "rl-000001" / "state.json").read_text())
    reference = mixed[2]
    step2 = next(m for p, s, m in reference["metrics"] if (p, s) == ("rl", 2))
    assert state["curriculum"]["levels"] == {name: step2[f"level/{name}"]
                                             for name in ("addition", "sorting")}
    execute_again = run_module.execute(run_dir, run_module.resume_config(run_dir, []),
                                       Display(quiet=True))
    assert execute_again["curriculum"] == mixed[1]["curriculum"]
    assert _fingerprint(run_dir) == reference


def _meta(run_dir, key: str):
    db = sqlite3.connect(run_dir / "ledger.sqlite")
    try:
        return json.loads(db.execute("select value from meta where key = ?", (key,)).fetchone()[0])
    finally:
        db.close()


def _ledger_steps(run_dir) -> set[int]:
    db = sqlite3.connect(run_dir / "ledger.sqlite")
    try:
        return {s for (s,) in db.execute("select step from metrics where phase = 'rl'")}
    finally:
        db.close()
