"""Config loading, overrides, strict validation and dump/load round trips (fast, offline)."""

from __future__ import annotations

from dataclasses import replace
from importlib.resources import files

import pytest
import yaml

from zeroth.config import (
    Config,
    config_from_dict,
    config_to_dict,
    dump_config,
    load_config,
    resolve_rl,
)
from zeroth.errors import UserError


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
