"""Recipes and overrides: an embedded or user recipe (YAML), `a.b=value` overrides and
shorthands, made into a checked Config; a run's saved config, and what `--resume` may change."""

from __future__ import annotations

import copy
import os
from importlib.resources import files
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml

from zeroth.config.check import validate
from zeroth.config.parse import (
    GENERIC_WEIGHTS,
    check_section,
    coerce,
    config_from_dict,
    field_types,
    sections,
    type_name,
    unknown_key,
)
from zeroth.config.schema import Config
from zeroth.config.stages import pipeline, stage_config
from zeroth.errors import UserError

# ---------------------------------------------------------------------------------------------
# Recipes and overrides.
# ---------------------------------------------------------------------------------------------


def embedded_recipes() -> list[str]:
    """Names of the recipes shipped in zeroth/recipes (without .yaml), sorted."""
    folder = files("zeroth") / "recipes"
    names = [p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml")]
    names += [f"learn/{p.name[:-5]}" for p in (folder / "learn").iterdir()
              if p.name.endswith(".yaml")]
    return sorted(names)


def recipe_summary(name: str) -> str:
    """The one-line description of embedded recipe `name`: its first comment line."""
    text = (files("zeroth") / "recipes" / f"{name}.yaml").read_text(encoding="utf-8")
    first = next((line for line in text.splitlines() if line.startswith("#")), "")
    return first.lstrip("#").strip()


def _read_recipe(recipe: str | Path | None) -> tuple[str, str, Path | None]:
    """(where, YAML text, the recipe file's folder or None when embedded) for a recipe: None,
    an embedded name, or a file path."""
    name = "default" if recipe is None else str(recipe)
    bare = isinstance(recipe, str) and ("/" not in name and os.sep not in name
                                        or not Path(name).expanduser().is_file())
    if recipe is None or (bare and name in embedded_recipes()):
        res = files("zeroth") / "recipes" / f"{name}.yaml"
        return f"embedded recipe {name!r}", res.read_text(encoding="utf-8"), None
    path = Path(name).expanduser()
    if not path.is_file():
        raise UserError(
            f"recipe file {str(path)!r} not found — give a YAML file path or one of the "
            f"embedded recipes: {', '.join(embedded_recipes())}"
        )
    return f"recipe {str(path)!r}", path.read_text(encoding="utf-8"), path.resolve().parent


def _parse_yaml(text: str, where: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise UserError(f"{where} is not valid YAML{line}: {problem}") from None


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split 'a.b=value' into (['a', 'b'], parsed value)."""
    key, sep, raw = str(item).partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(
            f"malformed override {str(item)!r} — expected section.field=value, e.g. rl.lr=1e-4"
        )
    value = _parse_yaml(raw, f"override value for {key!r}")
    parts = key.split(".")
    if len(parts) == 2 and parts[0] in sections() and parts[1] in field_types(parts[0]):
        tp = field_types(parts[0])[parts[1]]
        takes_str = get_origin(tp) not in (dict, list) and str in (tp, *get_args(tp))
        if takes_str and isinstance(value, (bool, int, float)):
            value = raw.strip()  # keep `run.name=2024` as the text the user typed
    return parts, value


def _apply_override(raw: dict, item: str) -> None:
    """Set one 'section.field=value' (or 'section.dictfield.key=value') into nested `raw`."""
    parts, value = parse_override(item)
    if parts[0] == "rewards":  # shorthand: rewards={...} / rewards.NAME=w
        parts = ["rl", "reward_weights", *parts[1:]]
    if parts == ["pipeline"]:  # shorthand: pipeline=[sft,rl]
        parts = ["run", "pipeline"]
    key = ".".join(parts)
    if len(parts) < 2:
        raise UserError(f"override key {key!r} must be section.field, e.g. rl.lr=1e-4")
    section, name, rest = parts[0], parts[1], parts[2:]
    check_section(section, None)  # raises for an unknown section name
    body = raw.setdefault(section, {})
    types = field_types(section)
    if name not in types:
        raise unknown_key(f"{section}.{name}", list(types), prefix=f"{section}.")
    if not rest:
        body[name] = value
        return
    mapping = _mapping_type(types[name])
    if mapping is None or len(rest) != 1:
        raise UserError(
            f"config key {key!r} is too deep — '{section}.{name}' is {type_name(types[name])};"
            f" write {section}.{name}=value"
        )
    current = body.get(name)
    if current is None:  # start from the dataclass default (the generic weights for None)
        current = getattr(getattr(Config(), section), name)
        current = dict(GENERIC_WEIGHTS if current is None else current)
    current = coerce(f"{section}.{name}", current, mapping)
    current[rest[0]] = value
    body[name] = current


def _mapping_type(tp: Any) -> Any:
    """The dict annotation inside `tp` (`dict[...]` or `dict[...] | None`), else None."""
    if get_origin(tp) is dict:
        return tp
    inner = [a for a in get_args(tp) if get_origin(a) is dict]
    return inner[0] if inner else None


def _shorthands(data: dict, where: str) -> dict:
    """Recipe shorthands: `task: gsm8k` names the task; a top-level `rewards:` mapping is
    rl.reward_weights."""
    data = dict(data)
    if isinstance(data.get("task"), str):
        data["task"] = {"name": data["task"]}
    if "pipeline" in data:
        run = dict(check_section("run", data.get("run")))
        if "pipeline" in run:
            raise UserError(f"{where} sets both 'pipeline' and 'run.pipeline' — keep one")
        run["pipeline"] = data.pop("pipeline")
        data["run"] = run
    if "rewards" in data:
        rewards = data.pop("rewards")
        rl = dict(check_section("rl", data.get("rl")))
        if "reward_weights" in rl:
            raise UserError(f"{where} sets both 'rewards' and 'rl.reward_weights' — keep one")
        rl["reward_weights"] = rewards
        data["rl"] = rl
    return data


def _rewards_beside(raw: dict, folder: Path) -> None:
    """Make the reward files a recipe names (`file.py:function`, in rl.reward_weights and in
    its rl pipeline entries) absolute when they lie beside the recipe: a recipe's relative
    reward file is looked for in the recipe's folder first, then in the current directory."""
    from zeroth.rewards.resolve import beside, rename_rewards

    rl = raw.get("rl", {})
    weights = rename_rewards(rl.get("reward_weights"), raw.get("run", {}).get("pipeline"),
                             lambda name: beside(name, folder))
    if "reward_weights" in rl:
        rl["reward_weights"] = weights
    task = raw.get("task", {})
    if isinstance(task.get("name"), str):  # a task file of the user's, beside the recipe
        task["name"] = beside(task["name"], folder)


def load_config(recipe: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Load a recipe (None -> embedded default, a name like "tiny", or a YAML path), apply
    `section.field=value` overrides, check types and values. Raises UserError on any mistake."""
    where, text, folder = _read_recipe(recipe)
    data = _parse_yaml(text, where)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(
            f"{where} must be a mapping of section -> field -> value, got {type(data).__name__}"
        )
    data = _shorthands(data, where)
    raw = {name: dict(check_section(name, body)) for name, body in data.items()}
    if folder is not None:
        _rewards_beside(raw, folder)
    for item in overrides:
        _apply_override(raw, item)
    return validate(config_from_dict(raw))


# ---------------------------------------------------------------------------------------------
# What `zeroth run --resume` may change in a run's saved config.
# ---------------------------------------------------------------------------------------------

RESUMABLE = ("rl.steps", "run.threads", "run.keep_checkpoints", "run.max_nonfinite_steps",
             # where vLLM runs and with how much memory (not what it samples)
             "vllm.url", "vllm.port", "vllm.devices", "vllm.kv_cache_gib", "vllm.gpu_memory",
             "vllm.start_timeout")


def load_run_config(path: str | Path) -> Config:
    """The resolved config saved in a run directory."""
    file = Path(path) / "config.yaml"
    if not file.is_file():
        raise UserError(f"'{path}' is not a zeroth run directory (no config.yaml) — give "
                        "runs/<name> of an earlier `zeroth run`")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        data = None
    if not isinstance(data, dict) or not data:
        raise UserError(f"{file} is damaged (not a YAML mapping) — restore it or start a new run")
    return validate(config_from_dict(data))


def resume_overrides(cfg: Config, overrides: list[str]) -> Config:
    """A copy of `cfg` (a run's saved config) with the overrides `--resume` allows: rl.steps
    (raised, for the rl stage that ends the pipeline), run.threads, run.keep_checkpoints and
    run.max_nonfinite_steps.
    Any other key is refused: a resumed run must stay the run it was."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        parts, value = parse_override(item)
        key = ".".join(parts)
        if key not in RESUMABLE:
            raise UserError(f"--resume cannot change {key!r}: a run continues with the config "
                            f"saved in its directory — it can change only {', '.join(RESUMABLE)}"
                            " (rl.steps: raised, for the rl stage that ends the pipeline)")
        section, name = parts
        value = coerce(key, value, field_types(section)[name])
        if key == "rl.steps":
            _raise_last_rl_steps(cfg, value)
        else:
            setattr(getattr(cfg, section), name, value)
    return validate(cfg)


def _raise_last_rl_steps(cfg: Config, steps: Any) -> None:
    """Set the step count of the rl stage that ends the pipeline to `steps` (never lower): in
    the rl section when it is the only rl stage, else in its own pipeline entry."""
    stages = pipeline(cfg)
    index = len(stages) - 1
    if stages[index][1] != "rl":
        raise UserError(f"--resume can raise rl.steps only when the pipeline ends with an rl "
                        f"stage; this one ends with '{stages[index][0]}'")
    current = stage_config(cfg, index, resolve=False).rl.steps
    if isinstance(steps, int) and steps < current:
        raise UserError(f"rl.steps={steps} is below the {current} steps of this run's last rl "
                        "stage — --resume can only raise it")
    entry = cfg.run.pipeline[index]
    if isinstance(entry, dict):
        cfg.run.pipeline[index] = {"rl": {**(entry["rl"] or {}), "steps": steps}}
    elif [kind for _, kind, _ in stages].count("rl") == 1:
        cfg.rl.steps = steps
    else:
        cfg.run.pipeline[index] = {"rl": {"steps": steps}}
