"""Typed run configuration: dataclasses with defaults, YAML recipes, `a.b=value` overrides.

    schema.py   the dataclasses: one section per concern, every field with its default
    parse.py    plain data <-> Config, type-checked against the annotations; YAML dumping
    stages.py   run.pipeline read as stages, each stage's view of the config, algorithm presets
    check.py    value rules; names are checked against the registries (no torch is imported)
    load.py     recipes, overrides and shorthands; a run's saved config; --resume's changes

Validation is strict: an unknown key, a wrong type or an out-of-range value raises `UserError`
with one line naming it.
"""

from zeroth.config.check import check_rules, check_world, hub_id, validate
from zeroth.config.load import (
    RESUMABLE,
    embedded_recipes,
    load_config,
    load_run_config,
    recipe_summary,
    resume_overrides,
)
from zeroth.config.parse import GENERIC_WEIGHTS, config_from_dict, config_to_dict, dump_config
from zeroth.config.schema import (
    Config,
    DemoConfig,
    DistillConfig,
    EvalConfig,
    ModelConfig,
    PretrainConfig,
    RejectionConfig,
    RLConfig,
    RunConfig,
    SandboxConfig,
    SFTConfig,
    TaskConfig,
    TrainConfig,
    VLLMConfig,
)
from zeroth.config.stages import pipeline, resolve_rl, stage_config

__all__ = [
    "GENERIC_WEIGHTS", "RESUMABLE", "Config", "DemoConfig", "DistillConfig",
    "EvalConfig", "ModelConfig", "PretrainConfig", "RLConfig", "RejectionConfig", "RunConfig",
    "SFTConfig", "SandboxConfig", "TaskConfig", "TrainConfig", "VLLMConfig", "check_rules",
    "check_world", "config_from_dict",
    "config_to_dict", "dump_config", "embedded_recipes", "hub_id", "load_config",
    "load_run_config", "pipeline", "recipe_summary", "resolve_rl", "resume_overrides",
    "stage_config", "validate",
]
