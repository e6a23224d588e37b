"""The pipeline a config describes: its stages in order, each stage's own view of the config
(its pipeline entry's overrides applied) and the rl settings an algorithm fills in."""

from __future__ import annotations

from dataclasses import replace

from zeroth.algorithms import ALGORITHMS
from zeroth.config.parse import coerce, field_types, show, unknown_key
from zeroth.config.schema import Config, RLConfig
from zeroth.errors import UserError
from zeroth.stages import STAGES


def pipeline(cfg: Config) -> list[tuple[str, str, dict]]:
    """(stage id, kind, section overrides) for each stage of run.pipeline, in order.

    An entry is a kind (`rl`) or a one-key mapping `{rl: {steps: 20, ...}}` whose fields override
    that kind's section for this stage only. A kind used once has its own name as id (ledger
    phase, checkpoint tags); a kind used more than once is numbered: sft1, sft2."""
    entries = []
    for i, entry in enumerate(cfg.run.pipeline):
        if isinstance(entry, str):
            kind, overrides = entry, {}
        elif isinstance(entry, dict) and len(entry) == 1:
            kind, overrides = next(iter(entry.items()))
            overrides = {} if overrides is None else overrides
        else:
            raise UserError(f"pipeline stage {i + 1} must be a stage name or {{name: {{field: "
                            f"value}}}}, got {show(entry)} — e.g. pipeline: [pretrain, rl]")
        if kind not in STAGES:  # each stage has a config section of its name
            raise UserError(f"pipeline stage {i + 1}: {STAGES.unknown(kind)}")
        if not isinstance(overrides, dict):
            raise UserError(f"pipeline stage {i + 1} ({kind}) must map to field: value "
                            f"overrides of the '{kind}' section, got {show(overrides)}")
        entries.append([kind, kind, overrides])
    if not entries:
        raise UserError("run.pipeline is empty — list at least one stage, e.g. [pretrain, rl]")
    kinds = [e[1] for e in entries]
    seen: dict[str, int] = {}
    for e in entries:
        if kinds.count(e[1]) > 1:
            seen[e[1]] = seen.get(e[1], 0) + 1
            e[0] = f"{e[1]}{seen[e[1]]}"
    return [tuple(e) for e in entries]


def stage_config(cfg: Config, index: int, resolve: bool = True) -> Config:
    """The config of pipeline stage `index`: its section with the stage's overrides applied and,
    for rl (unless `resolve` is False), the algorithm's settings filled into the fields left
    null."""
    _, kind, overrides = pipeline(cfg)[index]
    types = field_types(kind)
    values = {}
    for key, value in overrides.items():
        if key not in types:
            raise unknown_key(f"pipeline stage {index + 1} ({kind}).{key}", list(types),
                               prefix=f"{kind}.")
        values[key] = coerce(f"{kind}.{key}", value, types[key])
    section = replace(getattr(cfg, kind), **values)
    if kind == "rl" and resolve:
        section = resolve_rl(section)
    return replace(cfg, **{kind: section})


def resolve_rl(rl: RLConfig) -> RLConfig:
    """`rl` with every null field set by its algorithm (zeroth.algorithms.ALGORITHMS)."""
    preset = ALGORITHMS.get(rl.algorithm)
    if preset is None:
        return rl  # refused by the rules with the list of names
    filled = {k: v for k, v in preset.items() if hasattr(rl, k) and getattr(rl, k) is None}
    return replace(rl, **filled)
