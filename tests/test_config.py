"""Config loading, overrides, strict validation and dump/load round trips (fast, offline)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import replace
from importlib.resources import files

import pytest
import yaml

from zeroth.algorithms import ALGORITHMS
from zeroth.config import (
    Config,
    check_rules,
    config_from_dict,
    config_to_dict,
    dump_config,
    embedded_recipes,
    load_config,
    recipe_summary,
    resolve_rl,
    resume_overrides,
)
from zeroth.errors import UserError
from zeroth.tasks import load_task


def _error(recipe=None, overrides=()) -> str:
    """Load and return the UserError message, checking it is a single line."""
    with pytest.raises(UserError) as info:
        load_config(recipe, list(overrides))
    message = str(info.value)
    assert "\n" not in message
    return message


def _write(tmp_path, data, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


# The default recipe keeps the clip-higher range it was measured with; every other field is the
# dataclass default (rl fields left null take the algorithm's settings).
DEFAULT_RECIPE = replace(Config(), rl=replace(Config().rl, eps_high=0.28))


def test_defaults_load_without_recipe():
    assert load_config() == DEFAULT_RECIPE
    assert load_config("default") == DEFAULT_RECIPE
    assert resolve_rl(load_config().rl).eps_high == 0.28
    assert resolve_rl(Config().rl).eps_high == 0.2  # grpo's own clip range


def test_embedded_default_yaml_equals_dataclass_defaults():
    text = (files("zeroth") / "recipes" / "default.yaml").read_text()
    data = yaml.safe_load(text)
    assert config_from_dict(data) == DEFAULT_RECIPE
    # every section and field is spelled out in the recipe
    assert {s: set(f) for s, f in data.items()} == {
        s: set(f) for s, f in config_to_dict(Config()).items()
    }


def test_tiny_recipe():
    cfg = load_config("tiny")
    assert (cfg.model.hidden_size, cfg.model.num_heads, cfg.model.vocab_size) == (32, 2, 288)
    assert (cfg.rl.steps, cfg.rl.group_size, cfg.eval.k) == (4, 4, 2)
    assert cfg.run.seed == Config().run.seed  # fields not listed keep their defaults


def test_yaml_file_and_overrides(tmp_path):
    path = _write(tmp_path, {"rl": {"lr": 1e-4, "steps": 5}, "run": {"seed": 3}})
    cfg = load_config(path, ["rl.steps=7", "rl.scale_rewards=false", "run.name=2024"])
    assert cfg.rl.lr == pytest.approx(1e-4)
    assert cfg.rl.steps == 7
    assert cfg.rl.scale_rewards is False
    assert cfg.run.seed == 3
    assert cfg.run.name == "2024"
    assert cfg.task == Config().task
    assert load_config(str(path)).rl.steps == 5


def test_empty_file_gives_defaults(tmp_path):
    assert load_config(_write(tmp_path, "")) == Config()
    assert load_config(_write(tmp_path, "rl:\n")) == Config()


def test_float_from_exponent_string(tmp_path):
    cfg = load_config(None, ["rl.lr=1e-4", "pretrain.weight_decay=0"])
    assert cfg.rl.lr == pytest.approx(1e-4) and isinstance(cfg.rl.lr, float)
    assert isinstance(cfg.pretrain.weight_decay, float)
    assert load_config(_write(tmp_path, "rl:\n  lr: 3e-5\n")).rl.lr == pytest.approx(3e-5)


def test_dict_overrides_whole_and_per_key():
    cfg = load_config(None, ["rl.reward_weights={correct: 1, format: 0}"])
    assert cfg.rl.reward_weights == {"correct": 1.0, "format": 0.0}
    cfg = load_config(None, ["rl.reward_weights.format=0.5"])
    assert cfg.rl.reward_weights == {"correct": 1.0, "format": 0.5}
    cfg = load_config(None, ["rl.reward_weights={correct: 2}", "rl.reward_weights.length=0.1"])
    assert cfg.rl.reward_weights == {"correct": 2.0, "length": 0.1}


def test_null_for_optional_fields():
    assert load_config(None, ["run.name=null"]).run.name is None


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (["rl.lrr=1"], ["'rl.lrr'", "did you mean 'rl.lr'"]),
        (["rl.zzzzzz=1"], ["'rl.zzzzzz'", "group_size"]),
        (["rll.lr=1"], ["'rll'", "did you mean 'rl'"]),
        (["rl.lr"], ["section.field=value"]),
        (["rl.steps=abc"], ["config key 'rl.steps' expects int, got str 'abc'"]),
        (["rl.steps=true"], ["'rl.steps'", "expects int"]),
        (["rl.steps=2.5"], ["'rl.steps'", "expects int"]),
        (["rl.lr=fast"], ["'rl.lr'", "expects float"]),
        (["rl.scale_rewards=1"], ["'rl.scale_rewards'", "expects bool"]),
        (["model.arch=[1, 2]"], ["'model.arch'", "expects str"]),
        (["rl.steps=null"], ["'rl.steps'", "expects int"]),
        (["rl.reward_weights=5"], ["'rl.reward_weights'", "mapping", "got int 5"]),
        (["rl.reward_weights.format=x"], ["'rl.reward_weights.format'", "expects float"]),
        (["rl.lr.x=1"], ["'rl.lr.x'"]),
        (["rl.steps=-1"], ["'rl.steps'", ">= 0"]),
        (["rl.group_size=1"], ["'rl.group_size'", ">= 2"]),
        (["rl.prompts_per_step=0"], ["'rl.prompts_per_step'"]),
        (["eval.k=0"], ["'eval.k'"]),
        (["rl.mu=0"], ["'rl.mu'"]),
        (["task.digits=10"], ["'task.digits'"]),
        (["model.vocab_size=32"], ["'model.vocab_size'"]),
        (["model.num_heads=3"], ["'model.num_heads'", "divide"]),
        (["task.heldout_fraction=1"], ["'task.heldout_fraction'"]),
        (["demos.reason_fraction=1.5"], ["'demos.reason_fraction'"]),
        (["rl.temperature=0"], ["'rl.temperature'"]),
        (["rl.lr=0"], ["'rl.lr'"]),
        (["rl.eps_low=-0.1"], ["'rl.eps_low'"]),
        (["rl.beta=-1"], ["'rl.beta'"]),
        (["rl.loss_agg=mean"], ["'rl.loss_agg'", "seq, token, constant"]),
        (["rl.advantage=ppo"], ["'rl.advantage'", "rloo"]),
        (["model.arch=gpt2"], ["'model.arch'", "llama"]),
        (["demos.error=random"], ["'demos.error'"]),
        (["task.name=sudoku"], ["'task.name'"]),
        (["task.name=jsonl"], ["'task.path'", "required"]),
        (["task.name=gsm8k"], ["'task.path'", "required"]),
        (["sandbox.mode=some"], ["'sandbox.mode'", "fraction, all"]),
        (["sandbox.timeout_s=0"], ["'sandbox.timeout_s'"]),
        (["sandbox.memory_mb=1"], ["'sandbox.memory_mb'"]),
        (["task.options=5"], ["'task.options'", "mapping"]),
    ],
)
def test_bad_overrides_name_the_key(overrides, needles):
    message = _error(None, overrides)
    for needle in needles:
        assert needle in message


def test_bad_yaml_files(tmp_path):
    assert "'rl'" in _error(_write(tmp_path, "rl: 5\n"))
    assert "'rl.lrr'" in _error(_write(tmp_path, {"rl": {"lrr": 1}}))
    assert "'eval.k'" in _error(_write(tmp_path, {"eval": {"k": "many"}}))
    assert "mapping" in _error(_write(tmp_path, "- 1\n- 2\n"))
    assert "not valid YAML" in _error(_write(tmp_path, "rl: [1,\n"))


def test_missing_recipe_lists_embedded(tmp_path):
    missing = tmp_path / "nope.yaml"
    message = _error(missing)
    assert str(missing) in message and "default" in message and "tiny" in message
    assert "'nosuchrecipe'" in _error("nosuchrecipe")


def test_model_path_checks(tmp_path):
    assert "model.path" in _error(None, [f"model.path={tmp_path / 'missing'}"])
    assert "does not exist" in _error(None, [f"model.path={tmp_path / 'missing'}"])
    assert "config.json" in _error(None, [f"model.path={tmp_path}"])
    (tmp_path / "config.json").write_text("{}")
    assert load_config(None, [f"model.path={tmp_path}"]).model.path == str(tmp_path)


def test_dump_load_round_trip(tmp_path):
    cfg = load_config("tiny", ["rl.lr=1e-5", "rl.reward_weights.format=0.25", "run.name=x"])
    path = tmp_path / "sub" / "config.yaml"
    dump_config(cfg, path)
    assert load_config(path) == cfg
    assert config_from_dict(yaml.safe_load(path.read_text())) == cfg
    assert list(yaml.safe_load(path.read_text())) == list(config_to_dict(cfg))
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]


def test_config_from_dict_is_strict():
    assert config_from_dict({}) == Config()
    with pytest.raises(UserError, match="'model.hiden_size'"):
        config_from_dict({"model": {"hiden_size": 3}})
    with pytest.raises(UserError, match="'rl.reward_weights.correct'"):
        config_from_dict({"rl": {"reward_weights": {"correct": True}}})


def test_unknown_task_lists_the_known_ones():
    message = _error(None, ["task.name=sudoku"])
    assert "addition" in message and "countdown" in message


def test_recipe_shorthands_task_name_and_rewards(tmp_path):
    path = _write(tmp_path, "task: countdown\nrewards: {correct: 1.0, format: 0.2, overlong: 1}\n")
    cfg = load_config(path)
    assert cfg.task.name == "countdown"
    assert cfg.rl.reward_weights == {"correct": 1.0, "format": 0.2, "overlong": 1.0}
    both = _write(tmp_path, {"rewards": {"correct": 1}, "rl": {"reward_weights": {"x": 1}}})
    assert "both 'rewards' and 'rl.reward_weights'" in _error(both)
    assert "'rl.reward_weights.format'" in _error(_write(tmp_path, {"rewards": {"format": "x"}}))
    over = load_config(None, ["rewards={math_accuracy: 1, format: 0.2}", "rewards.overlong=1"])
    assert over.rl.reward_weights == {"math_accuracy": 1.0, "format": 0.2, "overlong": 1.0}


def test_task_options_take_any_yaml_values_and_dotted_overrides():
    cfg = load_config(None, ["task.options={numbers: 4, ops: [+, '-']}", "task.options.seed=3"])
    assert cfg.task.options == {"numbers": 4, "ops": ["+", "-"], "seed": 3}


def test_reward_weights_default_to_the_task_and_partial_overrides_extend_generic_ones():
    assert load_config().rl.reward_weights is None  # the task's own weights
    cfg = load_config(None, ["rl.reward_weights.overlong=1"])
    assert cfg.rl.reward_weights == {"correct": 1.0, "format": 0.1, "overlong": 1.0}


# -- a config mistake is answered before torch is imported ---------------------------------------

_NO_TORCH = textwrap.dedent("""
    import json, sys
    from zeroth.cli import main
    out = []
    for args in json.loads(sys.argv[1]):
        code = main(["run", *args])
        out.append([code, "torch" in sys.modules, "transformers" in sys.modules])
    print(json.dumps(out))
""")

MISTAKES = [  # (arguments of `zeroth run`, what the one-line error names)
    (["rl.lrr=1"], "did you mean 'rl.lr'?"),
    (["rl.steps=abc"], "'rl.steps' expects int"),
    (["task.name=addtion"], "did you mean 'addition'?"),
    (["no_such_recipe"], "'no_such_recipe' not found"),
    (["rl.steps=-1"], "'rl.steps' must be >= 0"),
    (["rl.algorithm=ppo"], "'rl.algorithm' must be one of"),
    (["pipeline=[pretrain, {rl: {beta: -1}}]"], "pipeline stage 2 (rl): config key 'rl.beta'"),
    (["tiny", "run.keep_checkpoints=-2"], "'run.keep_checkpoints' must be >= 0"),
    (["model.path=/no/such/model"], "model.path"),
    (["task.name=countdown", "task.options.numbrs=3"], "did you mean 'task.options.numbers'?"),
    (["rewards.nosuch=1"], "unknown reward 'nosuch'"),
    (["task.name=gsm8k", "task.path=/no/such.jsonl"], "does not exist"),
]


def test_config_mistakes_are_reported_before_torch_is_imported(tmp_path):
    args = [a + [f"run.out_dir={tmp_path}"] for a, _ in MISTAKES]
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH, json.dumps(args)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == len(MISTAKES)  # one line each
    for (code, torch_loaded, transformers_loaded), line, (_, needle) in zip(results, errors,
                                                                          MISTAKES):
        assert code == 2 and line.startswith("zeroth: error:") and needle in line, line
        assert not torch_loaded and not transformers_loaded, line
    assert not any(tmp_path.iterdir())  # nothing written


def test_every_algorithm_preset_passes_the_rules():
    """The rl fields an algorithm fills are checked as filled: each preset must pass the rules
    itself, and does fill them."""
    for name in ALGORITHMS:
        cfg = load_config(None, [f"rl.algorithm={name}"])
        resolved = replace(cfg, rl=resolve_rl(cfg.rl))
        assert resolved.rl.loss_agg is not None and resolved.rl.advantage is not None
        assert check_rules(resolved, "") is None  # raises UserError on a broken rule


def test_every_embedded_recipe_has_a_one_line_summary():
    for name in embedded_recipes():
        summary = recipe_summary(name)
        assert 20 < len(summary) <= 100 and summary.endswith("."), (name, summary)


def test_every_embedded_recipe_can_draw_its_held_out_and_training_problems():
    from random import Random

    from zeroth.tasks import load_task

    for name in embedded_recipes():
        cfg = load_config(name)
        task = load_task(cfg)
        assert len(task.eval_rows(cfg.task.eval_problems, cfg.run.seed)) == cfg.task.eval_problems
        assert len(task.train_rows(Random(0), 4)) == 4, name


# -- model.path may name a run directory -----------------------------------------------------------


def test_model_path_may_be_a_run_directory(tmp_path, finished_tiny_run):
    assert load_config("tiny", [f"model.path={finished_tiny_run}"]).model.path == str(
        finished_tiny_run)
    empty = tmp_path / "runs" / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    message = _error("tiny", [f"model.path={empty}"])
    assert "model.path" in message and "no final model and no checkpoint yet" in message
    message = _error("tiny", [f"student.path={empty}"])
    assert "student.path" in message


# -- reward files beside the recipe ------------------------------------------------------------------


def test_reward_files_are_found_beside_the_recipe_then_in_the_current_folder(tmp_path,
                                                                               monkeypatch):
    folder = tmp_path / "x" / "recipes"
    folder.mkdir(parents=True)
    (folder / "my_rewards.py").write_text("def fn(completions, **_):\n    return [1.0]\n")
    recipe = _write(folder, {"rewards": {"my_rewards.py:fn": 1, "here.py:g": 0.5, "correct": 1},
                             "pipeline": ["pretrain", {"rl": {"reward_weights": {
                                 "my_rewards.py:fn": 2}}}]}, "r.yaml")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(recipe, ["rewards.tags=0.1"])
    beside = f"{folder / 'my_rewards.py'}:fn"
    # beside the recipe: absolute; elsewhere: left to the current folder (create_run_dir)
    assert cfg.rl.reward_weights == {beside: 1.0, "here.py:g": 0.5, "correct": 1.0,
                                     "tags": 0.1}
    assert cfg.run.pipeline[1] == {"rl": {"reward_weights": {beside: 2}}}
    assert load_config(recipe).rl.reward_weights == load_config(str(recipe)).rl.reward_weights
    (tmp_path / "here.py").write_text("def g(completions, **_):\n    return [0.5]\n")
    task = load_task(cfg)  # run from tmp_path: my_rewards.py beside the recipe, here.py here
    assert task.rewards[beside](["x"]) == [1.0] and task.rewards["here.py:g"](["x"]) == [0.5]


def test_rewards_named_module_colon_function(tmp_path, monkeypatch):
    (tmp_path / "my_reward_module.py").write_text(
        "def short(completions, **_):\n    return [1.0 / len(c) for c in completions]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = load_config(None, ["rewards={correct: 1, 'my_reward_module:short': 0.5}"])
    task = load_task(cfg)
    assert task.rewards["my_reward_module:short"](["ab", "abcd"]) == [0.5, 0.25]
    with pytest.raises(UserError) as exc:
        load_task(load_config(None, ["rewards={'no_such_module_x:f': 1}"]))
    assert "cannot import module 'no_such_module_x'" in str(exc.value)
    assert "path/to/no_such_module_x.py:f" in str(exc.value)


# -- what --resume may change --------------------------------------------------------------------


def test_resume_may_raise_the_last_rl_stages_steps():
    cfg = load_config("tiny")
    longer = resume_overrides(cfg, ["rl.steps=9", "run.threads=1", "run.keep_checkpoints=3"])
    assert (longer.rl.steps, longer.run.threads, longer.run.keep_checkpoints) == (9, 1, 3)
    assert cfg.rl.steps == 4  # the saved config is left as it was
    assert resume_overrides(cfg, []) == cfg
    two = load_config("r1")  # two rl stages: only the last one gets more steps
    longer = resume_overrides(two, ["rl.steps=40"])
    assert longer.rl.steps == 30 and longer.run.pipeline[-1] == {"rl": {"steps": 40}}
    staged = load_config(None, ["pipeline=[pretrain, {rl: {steps: 5, lr: 0.01}}]"])
    longer = resume_overrides(staged, ["rl.steps=7"])
    assert longer.run.pipeline[-1] == {"rl": {"steps": 7, "lr": 0.01}}


@pytest.mark.parametrize("pipeline, overrides, needle", [
    ("[pretrain, rl]", ["rl.lr=1"], "--resume cannot change 'rl.lr'"),
    ("[pretrain, rl]", ["pipeline=[rl]"], "--resume cannot change 'pipeline'"),
    ("[pretrain, rl]", ["rl.steps=10"], "below the 40 steps"),
    ("[pretrain, rl]", ["rl.steps=many"], "'rl.steps' expects int"),
    ("[pretrain, rl]", ["run.threads=0"], "'run.threads' must be >= 1"),
    ("[rl, rejection]", ["rl.steps=90"], "ends with 'rejection'"),
])
def test_resume_refuses_other_changes_with_one_line(pipeline, overrides, needle):
    cfg = load_config(None, [f"pipeline={pipeline}"])
    with pytest.raises(UserError) as info:
        resume_overrides(cfg, overrides)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_resume_mistakes_are_reported_before_torch_is_imported(tmp_path):
    """`--resume` with a change it does not allow, or a lower rl.steps: one line, no torch, the
    saved config untouched."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    dump_config(load_config("tiny"), run_dir / "config.yaml")
    saved = (run_dir / "config.yaml").read_text()
    args = [["--resume", str(run_dir), "rl.lr=1"], ["--resume", str(run_dir), "rl.steps=1"],
            ["--resume", str(run_dir), "rl.stepz=9"]]
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH, json.dumps(args)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 3 and "cannot change 'rl.lr'" in errors[0]
    assert "can only raise it" in errors[1] and "cannot change 'rl.stepz'" in errors[2]
    assert json.loads(proc.stdout) == [[2, False, False]] * 3
    assert (run_dir / "config.yaml").read_text() == saved
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml"]
