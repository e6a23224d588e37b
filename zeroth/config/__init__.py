"""Typed run configuration: dataclasses with defaults, YAML recipes, `a.b=value` overrides.

Every field below can be set in a recipe file or on the command line. Validation is strict:
an unknown key, a wrong type or an out-of-range value raises `UserError` with one line naming it.
"""

from __future__ import annotations

import copy
import difflib
import os
from dataclasses import asdict, dataclass, field, fields, replace
from importlib.resources import files
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from zeroth.errors import UserError


@dataclass
class RunConfig:
    name: str | None = None  # run directory name under out_dir; None -> "<recipe>-<timestamp>"
    seed: int = 0
    out_dir: str = "runs"
    threads: int = 2  # torch.set_num_threads
    device: str = "cpu"  # cpu | cuda | auto (cuda when available)
    pipeline: list[Any] = field(default_factory=lambda: ["pretrain", "rl"])  # stages, in order
    memory_check: bool = True  # refuse to start when the memory estimate exceeds what is free
    # checkpoints kept: 0 -> every one; N -> the newest N, and always LATEST's and each stage's
    # last (zeroth.pipeline.checkpoint)
    keep_checkpoints: int = 0


@dataclass
class TaskConfig:
    name: str = "addition"  # a key of zeroth.tasks.TASKS
    digits: int = 3  # addition: digits per operand
    heldout_fraction: float = 0.05  # share of the problem space kept out of training
    path: str | None = None  # file tasks (jsonl, gsm8k, math, mbpp, ...): local data file
    eval_path: str | None = None  # file tasks: a held-out file; None -> a stable hash split
    eval_problems: int = 200  # held-out problems evaluated before and after RL
    options: dict[str, Any] = field(default_factory=dict)  # family knobs: task.options.numbers=4


@dataclass
class ModelConfig:
    path: str | None = None  # local Hugging Face folder; None -> build a tiny model from scratch
    arch: str = "qwen2"  # architecture of the from-scratch model: qwen2 | llama
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    vocab_size: int = 320  # locally trained byte-level BPE: 256 byte symbols + merges
    max_len: int = 128
    dtype: str = "float32"  # float32 | bfloat16 (weights and training)
    template: str = "auto"  # auto (own chat template, else R1's) | own | r1
    lora_r: int = 0  # LoRA rank (peft); 0 -> full fine-tuning
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: str = "all-linear"  # peft target_modules: all-linear or comma-separated names
    gradient_checkpointing: bool = False


@dataclass
class DemoConfig:
    n: int = 20000  # synthetic demonstrations in the pre-training corpus
    reason_fraction: float = 0.3  # share that reason step by step (always right)
    error: str = "drop_carry"  # systematic error of direct answers: drop_carry | none


@dataclass
class PretrainConfig:
    steps: int = 1500
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.0
    checkpoint_every: int = 500


@dataclass
class SFTConfig:
    """Supervised fine-tuning on chat data; the loss is on the answer (assistant) tokens only."""

    data: str = "reasoned"  # reasoned | demos (the task's demonstrations) | rejection | FILE
    n: int = 2000  # demonstrations drawn when data is reasoned or demos
    max_len: int = 2048  # examples longer than this (or the model's context) are dropped, counted
    steps: int = 200
    batch_size: int = 16
    lr: float = 1e-4
    warmup: int = 10
    weight_decay: float = 0.0
    checkpoint_every: int = 100


@dataclass
class RLConfig:
    steps: int = 60
    prompts_per_step: int = 32
    group_size: int = 8  # G completions per prompt
    temperature: float = 1.0
    max_new_tokens: int = 64
    lr: float = 1e-4
    mu: int = 1  # optimisation passes over each batch of rollouts
    minibatch_size: int = 128
    algorithm: str = "grpo"  # grpo | dr_grpo | dapo | rloo | reinforce_pp: sets the null fields
    eps_low: float | None = None  # lower clip range; null -> the algorithm's
    eps_high: float | None = None  # upper clip range (DAPO clip-higher); null -> the algorithm's
    beta: float | None = None  # KL coefficient; 0 -> no reference model; null -> the algorithm's
    advantage: str | None = None  # a key of zeroth.algorithms.ADVANTAGES; null -> the algorithm's
    scale_rewards: bool | None = None  # divide advantages by the group std; null -> algorithm's
    loss_agg: str | None = None  # seq (GRPO) | token (DAPO) | constant (Dr. GRPO); null -> alg.
    dynamic_sampling: bool | None = None  # DAPO: drop all-equal groups, sample more; null -> alg.
    max_sample_rounds: int = 3  # dynamic sampling: generation rounds at most per step
    overlong_cache: int = 16  # the overlong reward's soft zone: the last N tokens before the cap
    max_grad_norm: float = 1.0
    checkpoint_every: int = 10
    reward_weights: dict[str, float] | None = None  # name -> weight; None -> the task's own
    engine: str = "torch"  # generation engine, a key of zeroth.rollout.ENGINES


@dataclass
class RejectionConfig:
    """Sample N per training prompt, keep verified-correct answers, deduplicate, write SFT data."""

    prompts: int = 256  # training prompts sampled
    samples: int = 8  # completions per prompt
    temperature: float = 1.0
    max_new_tokens: int = 64
    keep_per_prompt: int = 4  # distinct verified completions kept per prompt at most
    require_format: bool = True  # keep only well-formed completions (the R1 layout)
    batch_size: int = 512


@dataclass
class DistillConfig:
    """A teacher writes verified reasoning traces; a student learns them (and the teacher's
    token distributions when both share a tokenizer)."""

    teacher: str | None = None  # a model folder or run directory; null -> the pipeline's model
    prompts: int = 512  # training prompts the teacher answers
    samples: int = 4  # teacher completions per prompt
    temperature: float = 1.0
    max_new_tokens: int = 64
    keep_per_prompt: int = 2  # distinct verified traces kept per prompt at most
    logits: str = "auto"  # auto (when tokenizers match) | on | off: logit distillation
    alpha: float = 0.5  # logit KL weight; (1 - alpha) on next-token cross-entropy of traces
    student_pretrain_steps: int = 0  # a from-scratch student first learns the demonstrations
    steps: int = 300
    batch_size: int = 16
    lr: float = 1e-3
    warmup: int = 10
    checkpoint_every: int = 100


@dataclass
class SandboxConfig:
    """Limits for programs run by the code rewards (code_tests)."""

    timeout_s: float = 10.0  # wall time per program run (CPU time is limited to the same)
    memory_mb: int = 512  # address-space limit of the program
    mode: str = "fraction"  # fraction of tests passed | all (1.0 only when every test passes)


@dataclass
class EvalConfig:
    k: int = 8  # samples per problem for pass@1 (mean accuracy) and pass@k
    temperature: float = 1.0
    max_new_tokens: int = 64
    batch_size: int = 512


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    demos: DemoConfig = field(default_factory=DemoConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    rejection: RejectionConfig = field(default_factory=RejectionConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    student: ModelConfig = field(default_factory=lambda: ModelConfig(hidden_size=64))
    eval: EvalConfig = field(default_factory=EvalConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)


# ---------------------------------------------------------------------------------------------
# Loading, overrides, type checks, value checks, dumping.
#
# Type rules (from the annotations): int takes an int, never a bool or a float (2.0 is refused);
# float takes an int or a float, or a string that parses as one (YAML reads "1e-4" as a string);
# bool takes only true/false; str takes a string; `X | None` also takes null; dict[str, float]
# takes a mapping of string keys to numbers. In an override, a str field keeps the raw text when
# YAML would read it as a number or bool (`run.name=2024` names the run "2024").
# ---------------------------------------------------------------------------------------------

_NONE_TYPE = type(None)
GENERIC_WEIGHTS = {"correct": 1.0, "format": 0.1}  # every task's verifier is also "correct"


def _sections() -> dict[str, type]:
    """Section name -> dataclass type, in declared order."""
    hints = get_type_hints(Config)
    return {f.name: hints[f.name] for f in fields(Config)}


def _field_types(section: str) -> dict[str, Any]:
    """Field name -> resolved annotation for one section, in declared order."""
    cls = _sections()[section]
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def _unknown_key(key: str, valid: list[str], prefix: str = "") -> UserError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], valid, n=1)
    if close:
        return UserError(f"unknown config key {key!r} — did you mean {prefix + close[0]!r}?")
    where = f"of {prefix[:-1]!r}" if prefix else "(sections)"
    return UserError(f"unknown config key {key!r} — valid keys {where}: {', '.join(valid)}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(tp: Any) -> str:
    args = [a for a in get_args(tp) if a is not _NONE_TYPE]
    if get_origin(tp) is dict:
        return "a mapping of str to float" if get_args(tp)[1] is float else "a mapping"
    if get_origin(tp) is list:
        return "a list"
    if _NONE_TYPE in get_args(tp):
        return f"{_type_name(args[0])} or null"
    return getattr(tp, "__name__", str(tp))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check `value` against annotation `tp`; return it converted (int -> float etc.)."""
    bad = UserError(
        f"config key {key!r} expects {_type_name(tp)}, got {type(value).__name__} {_show(value)}"
    )
    args = get_args(tp)
    if _NONE_TYPE in args:
        if value is None:
            return None
        (inner,) = [a for a in args if a is not _NONE_TYPE]
        return _coerce_plain(key, value, inner, bad)
    return _coerce_plain(key, value, tp, bad)


def _coerce_plain(key: str, value: Any, tp: Any, bad: UserError) -> Any:
    if get_origin(tp) is list:
        if not isinstance(value, list):
            raise bad
        return list(value)
    if get_origin(tp) is dict:
        if not isinstance(value, dict):
            raise bad
        out = {}
        for name, item in value.items():
            if not isinstance(name, str):
                raise bad
            inner = get_args(tp)[1]
            out[name] = item if inner is Any else _coerce(f"{key}.{name}", item, inner)
        return out
    if tp is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad from None
        if _is_number(value):
            return float(value)
        raise bad
    if tp is int and _is_number(value) and isinstance(value, int):
        return value
    if tp in (bool, str) and isinstance(value, tp):
        return value
    raise bad


def _check_section(name: Any, body: Any) -> dict:
    """Validate a section name and that its body is a mapping; return the body (None -> {})."""
    sections = list(_sections())
    if name not in sections:
        raise _unknown_key(str(name), sections)
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise UserError(
            f"config section {name!r} must be a mapping of field: value, got "
            f"{type(body).__name__} {_show(body)} — write e.g. '{name}:' then indented fields"
        )
    return body


def config_from_dict(d: dict) -> Config:
    """Build a Config from a nested dict, strictly: unknown keys and wrong types raise UserError.

    Missing sections and fields keep their defaults. Value ranges are checked by `validate`.
    """
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise UserError(
            f"a config must be a mapping of section -> field -> value, got {type(d).__name__}"
        )
    built = {}
    for name, body in d.items():
        body = _check_section(name, body)
        types = _field_types(name)
        values = {}
        for key, value in body.items():
            if key not in types:
                raise _unknown_key(f"{name}.{key}", list(types), prefix=f"{name}.")
            values[key] = _coerce(f"{name}.{key}", value, types[key])
        built[name] = _sections()[name](**values)
    return Config(**built)


def config_to_dict(cfg: Config) -> dict:
    """A plain nested dict (section -> field -> value) of `cfg`."""
    return asdict(cfg)


def dump_config(cfg: Config, path: str | Path) -> None:
    """Write `cfg` as YAML (sections and fields in declared order), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# ---------------------------------------------------------------------------------------------
# Value checks. Each rule: (dotted key, predicate(value, cfg) -> ok, message template).
# The template may use {key} and {v} (the repr of the value). The first failing rule raises.
# ---------------------------------------------------------------------------------------------


def _ge(n: float) -> tuple:
    return (lambda v, c: v >= n), f"config key '{{key}}' must be >= {n}, got {{v}}"


def _gt(n: float) -> tuple:
    return (lambda v, c: v > n), f"config key '{{key}}' must be > {n}, got {{v}}"


def _between(lo: float, hi: float, open_lo: bool = False, open_hi: bool = False) -> tuple:
    def ok(v: float, c: Config) -> bool:
        return (lo < v if open_lo else lo <= v) and (v < hi if open_hi else v <= hi)

    span = f"{'(' if open_lo else '['}{lo}, {hi}{')' if open_hi else ']'}"
    return ok, f"config key '{{key}}' must be in {span}, got {{v}}"


def _one_of(*options: str) -> tuple:
    msg = f"config key '{{key}}' must be one of {', '.join(options)}, got {{v}}"
    return (lambda v, c: v in options), msg


DEFAULT_ENGINE = "torch"  # zeroth.rollout.ENGINES has it; checking another name imports torch


def _engines() -> list[str]:
    from zeroth.rollout import ENGINES

    return list(ENGINES)


FILE_TASKS = ("jsonl", "gsm8k", "math", "mbpp", "datasets")  # tasks that need task.path


def _task_names() -> list[str]:
    from zeroth.tasks import TASKS  # late: the task registry imports the rewards

    return sorted(TASKS)


def _known_tasks(name: Any) -> str:
    close = difflib.get_close_matches(str(name), _task_names(), n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"{hint}known tasks: {', '.join(_task_names())}"


def _model_dir(v: str | None) -> Path | None:
    return None if v is None else Path(v).expanduser()


def _has_model(v: str, key: str) -> bool:
    """Whether folder `v` is, or leads to, a model with a config.json: a model folder, a
    checkpoint, or a run directory (its final/, else its latest checkpoint's model)."""
    from zeroth.models.locate import locate_model

    folder = _model_dir(v)
    return folder.is_dir() and (locate_model(folder, key)[0] / "config.json").is_file()


def hub_id(v: str | None) -> bool:
    """A hub id (org/name) with no such local folder, where the hub may be used
    (HF_HUB_OFFLINE=0); zeroth's CLI is offline unless told otherwise."""
    import re

    return (v is not None and not _model_dir(v).exists()
            and os.environ.get("HF_HUB_OFFLINE") != "1"
            and re.fullmatch(r"[\w.-]+/[\w.-]+", v) is not None)


_RULES: list[tuple] = [
    ("run.seed", *_ge(0)),
    ("run.threads", *_ge(1)),
    ("run.keep_checkpoints", *_ge(0)),
    ("run.device", *_one_of("cpu", "cuda", "auto")),
    (
        "task.name",
        lambda v, c: v in _task_names(),
        "config key '{key}' must name a task, got {v} — {known}",
    ),
    ("task.digits", *_between(1, 9)),
    ("task.heldout_fraction", *_between(0, 1, open_lo=True, open_hi=True)),
    (
        "task.path",
        lambda v, c: c.task.name not in FILE_TASKS or bool(v),
        "config key '{key}' is required for a task read from a file — set task.path=FILE",
    ),
    ("task.eval_problems", *_ge(1)),
    (
        "run.name",
        lambda v, c: v is None or (v not in (".", "..") and "/" not in v and "\\" not in v),
        "config key '{key}' must be a plain folder name (no '/'), got {v}",
    ),
    (
        "model.path",
        lambda v, c: v is None or _model_dir(v).is_dir() or hub_id(v),
        ("model.path {v} does not exist — give a local Hugging Face model folder (a hub id "
         "is used only with HF_HUB_OFFLINE=0)"),
    ),
    (
        "model.path",
        lambda v, c: v is None or _has_model(v, "model.path") or hub_id(v),
        ("model.path {v} has no config.json — give a local Hugging Face model folder or a run "
         "directory"),
    ),
    ("model.arch", *_one_of("qwen2", "llama")),
    ("model.hidden_size", *_ge(1)),
    ("model.num_layers", *_ge(1)),
    ("model.num_heads", *_ge(1)),
    (
        "model.num_heads",
        lambda v, c: c.model.hidden_size % v == 0,
        "config key '{key}' must divide model.hidden_size, got {v}",
    ),
    (
        "model.num_heads",
        lambda v, c: (c.model.hidden_size // v) % 2 == 0,
        "config key '{key}' must leave an even head size (model.hidden_size / heads), got {v}",
    ),
    ("model.intermediate_size", *_ge(1)),
    ("model.vocab_size", *_ge(256)),
    ("model.max_len", *_ge(8)),
    ("model.dtype", *_one_of("float32", "bfloat16")),
    ("model.template", *_one_of("auto", "own", "r1")),
    ("model.lora_r", *_ge(0)),
    ("model.lora_alpha", *_gt(0)),
    ("model.lora_dropout", *_between(0, 1, open_hi=True)),
    ("student.arch", *_one_of("qwen2", "llama")),
    ("student.hidden_size", *_ge(1)),
    ("student.num_layers", *_ge(1)),
    (
        "student.num_heads",
        lambda v, c: v >= 1 and c.student.hidden_size % v == 0
        and (c.student.hidden_size // v) % 2 == 0,
        "config key '{key}' must divide student.hidden_size into an even head size, got {v}",
    ),
    ("student.lora_r", *_ge(0)),
    ("student.dtype", *_one_of("float32", "bfloat16")),
    (
        "student.path",
        lambda v, c: v is None or _has_model(v, "student.path"),
        ("student.path {v} has no config.json — give a local Hugging Face model folder or a run "
         "directory"),
    ),
    ("sft.n", *_ge(1)),
    ("sft.max_len", *_ge(8)),
    ("sft.steps", *_ge(0)),
    ("sft.batch_size", *_ge(1)),
    ("sft.lr", *_gt(0)),
    ("sft.warmup", *_ge(0)),
    ("sft.weight_decay", *_ge(0)),
    ("sft.checkpoint_every", *_ge(1)),
    (
        "sft.data",
        lambda v, c: v in ("reasoned", "demos", "rejection") or Path(v).expanduser().is_file(),
        "config key '{key}' must be reasoned, demos, rejection or an existing JSONL file, got {v}",
    ),
    ("rejection.prompts", *_ge(1)),
    ("rejection.samples", *_ge(1)),
    ("rejection.temperature", *_gt(0)),
    ("rejection.max_new_tokens", *_ge(1)),
    ("rejection.keep_per_prompt", *_ge(1)),
    ("rejection.batch_size", *_ge(1)),
    (
        "distill.teacher",
        lambda v, c: v is None or _model_dir(v).is_dir(),
        "distill.teacher {v} does not exist — give a model folder or a finished run directory",
    ),
    ("distill.prompts", *_ge(1)),
    ("distill.samples", *_ge(1)),
    ("distill.temperature", *_gt(0)),
    ("distill.max_new_tokens", *_ge(1)),
    ("distill.keep_per_prompt", *_ge(1)),
    ("distill.logits", *_one_of("auto", "on", "off")),
    ("distill.alpha", *_between(0, 1)),
    ("distill.student_pretrain_steps", *_ge(0)),
    ("distill.steps", *_ge(0)),
    ("distill.batch_size", *_ge(1)),
    ("distill.lr", *_gt(0)),
    ("distill.warmup", *_ge(0)),
    ("distill.checkpoint_every", *_ge(1)),
    ("demos.n", *_ge(1)),
    ("demos.reason_fraction", *_between(0, 1)),
    ("demos.error", *_one_of("drop_carry", "none")),
    ("pretrain.steps", *_ge(0)),
    ("pretrain.batch_size", *_ge(1)),
    ("pretrain.lr", *_gt(0)),
    ("pretrain.warmup", *_ge(0)),
    ("pretrain.weight_decay", *_ge(0)),
    ("pretrain.checkpoint_every", *_ge(1)),
    ("rl.steps", *_ge(0)),
    ("rl.prompts_per_step", *_ge(1)),
    ("rl.group_size", *_ge(2)),
    ("rl.temperature", *_gt(0)),
    ("rl.max_new_tokens", *_ge(1)),
    ("rl.lr", *_gt(0)),
    ("rl.mu", *_ge(1)),
    ("rl.minibatch_size", *_ge(1)),
    ("rl.eps_low", *_ge(0)),
    ("rl.eps_high", *_ge(0)),
    ("rl.beta", *_ge(0)),
    ("rl.algorithm", *_one_of("grpo", "dr_grpo", "dapo", "rloo", "reinforce_pp")),
    ("rl.engine", lambda v, c: v == DEFAULT_ENGINE or v in _engines(),
     "config key '{key}' must name a generation engine (zeroth.rollout.ENGINES), got {v}"),
    ("rl.advantage", *_one_of("grpo", "dr_grpo", "rloo", "reinforce_pp")),
    ("rl.max_sample_rounds", *_ge(1)),
    ("rl.overlong_cache", *_ge(1)),
    ("rl.loss_agg", *_one_of("seq", "token", "constant")),
    ("rl.max_grad_norm", *_gt(0)),
    ("rl.checkpoint_every", *_ge(1)),
    ("eval.k", *_ge(1)),
    ("eval.temperature", *_gt(0)),
    ("eval.max_new_tokens", *_ge(1)),
    ("eval.batch_size", *_ge(1)),
    ("sandbox.timeout_s", *_gt(0)),
    ("sandbox.memory_mb", *_ge(32)),
    ("sandbox.mode", *_one_of("fraction", "all")),
]


def validate(cfg: Config) -> Config:
    """Check value ranges and choices; raise UserError for the first bad key. Returns `cfg`."""
    _check_rules(cfg, "")
    for index, (_, kind, overrides) in enumerate(pipeline(cfg)):
        if overrides:
            _check_rules(stage_config(cfg, index, resolve=False),
                         f"pipeline stage {index + 1} ({kind}): ")
    return cfg


def _check_rules(cfg: Config, where: str) -> None:
    """Raise for the first rule `cfg` breaks. The rl fields an algorithm fills stay null here
    (they are skipped): its presets are valid, and reading them would import torch."""
    for key, ok, template in _RULES:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value is None and key in _NULLABLE:
            continue
        if not ok(value, cfg):
            known = _known_tasks(value) if "{known}" in template else ""
            raise UserError(where + template.format(key=key, v=_show(value), known=known))


_NULLABLE = {f"rl.{k}" for k in ("eps_low", "eps_high", "beta", "advantage", "scale_rewards",
                                  "loss_agg", "dynamic_sampling")}  # null until an algorithm
STAGE_KINDS = ("pretrain", "sft", "rl", "rejection", "distill")  # each has a section


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
                            f"value}}}}, got {_show(entry)} — e.g. pipeline: [pretrain, rl]")
        if kind not in STAGE_KINDS:
            close = difflib.get_close_matches(str(kind), STAGE_KINDS, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise UserError(f"pipeline stage {i + 1}: unknown stage {kind!r} — {hint}stages: "
                            f"{', '.join(STAGE_KINDS)}")
        if not isinstance(overrides, dict):
            raise UserError(f"pipeline stage {i + 1} ({kind}) must map to field: value "
                            f"overrides of the '{kind}' section, got {_show(overrides)}")
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
    types = _field_types(kind)
    values = {}
    for key, value in overrides.items():
        if key not in types:
            raise _unknown_key(f"pipeline stage {index + 1} ({kind}).{key}", list(types),
                               prefix=f"{kind}.")
        values[key] = _coerce(f"{kind}.{key}", value, types[key])
    section = replace(getattr(cfg, kind), **values)
    if kind == "rl" and resolve:
        section = resolve_rl(section)
    return replace(cfg, **{kind: section})


def resolve_rl(rl: RLConfig) -> RLConfig:
    """`rl` with every null field set by its algorithm (zeroth.algorithms.ALGORITHMS)."""
    from zeroth.algorithms import ALGORITHMS

    preset = ALGORITHMS.get(rl.algorithm)
    if preset is None:
        return rl  # refused by the rules with the list of names
    filled = {k: v for k, v in preset.items() if hasattr(rl, k) and getattr(rl, k) is None}
    return replace(rl, **filled)


# ---------------------------------------------------------------------------------------------
# Recipes and overrides.
# ---------------------------------------------------------------------------------------------


def embedded_recipes() -> list[str]:
    """Names of the recipes shipped in zeroth/recipes (without .yaml), sorted."""
    folder = files("zeroth") / "recipes"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def recipe_summary(name: str) -> str:
    """The one-line description of embedded recipe `name`: its first comment line."""
    text = (files("zeroth") / "recipes" / f"{name}.yaml").read_text(encoding="utf-8")
    first = next((line for line in text.splitlines() if line.startswith("#")), "")
    return first.lstrip("#").strip()


def _read_recipe(recipe: str | Path | None) -> tuple[str, str, Path | None]:
    """(where, YAML text, the recipe file's folder or None when embedded) for a recipe: None,
    an embedded name, or a file path."""
    name = "default" if recipe is None else str(recipe)
    bare = isinstance(recipe, str) and "/" not in name and os.sep not in name
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


def _parse_override(item: str) -> tuple[list[str], Any]:
    """Split 'a.b=value' into (['a', 'b'], parsed value)."""
    key, sep, raw = str(item).partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(
            f"malformed override {str(item)!r} — expected section.field=value, e.g. rl.lr=1e-4"
        )
    value = _parse_yaml(raw, f"override value for {key!r}")
    parts = key.split(".")
    if len(parts) == 2 and parts[0] in _sections() and parts[1] in _field_types(parts[0]):
        tp = _field_types(parts[0])[parts[1]]
        takes_str = get_origin(tp) not in (dict, list) and str in (tp, *get_args(tp))
        if takes_str and isinstance(value, (bool, int, float)):
            value = raw.strip()  # keep `run.name=2024` as the text the user typed
    return parts, value


def _apply_override(raw: dict, item: str) -> None:
    """Set one 'section.field=value' (or 'section.dictfield.key=value') into nested `raw`."""
    parts, value = _parse_override(item)
    if parts[0] == "rewards":  # shorthand: rewards={...} / rewards.NAME=w
        parts = ["rl", "reward_weights", *parts[1:]]
    if parts == ["pipeline"]:  # shorthand: pipeline=[sft,rl]
        parts = ["run", "pipeline"]
    key = ".".join(parts)
    if len(parts) < 2:
        raise UserError(f"override key {key!r} must be section.field, e.g. rl.lr=1e-4")
    section, name, rest = parts[0], parts[1], parts[2:]
    _check_section(section, None)  # raises for an unknown section name
    body = raw.setdefault(section, {})
    types = _field_types(section)
    if name not in types:
        raise _unknown_key(f"{section}.{name}", list(types), prefix=f"{section}.")
    if not rest:
        body[name] = value
        return
    mapping = _mapping_type(types[name])
    if mapping is None or len(rest) != 1:
        raise UserError(
            f"config key {key!r} is too deep — '{section}.{name}' is {_type_name(types[name])};"
            f" write {section}.{name}=value"
        )
    current = body.get(name)
    if current is None:  # start from the dataclass default (the generic weights for None)
        current = getattr(getattr(Config(), section), name)
        current = dict(GENERIC_WEIGHTS if current is None else current)
    current = _coerce(f"{section}.{name}", current, mapping)
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
        run = dict(_check_section("run", data.get("run")))
        if "pipeline" in run:
            raise UserError(f"{where} sets both 'pipeline' and 'run.pipeline' — keep one")
        run["pipeline"] = data.pop("pipeline")
        data["run"] = run
    if "rewards" in data:
        rewards = data.pop("rewards")
        rl = dict(_check_section("rl", data.get("rl")))
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
    raw = {name: dict(_check_section(name, body)) for name, body in data.items()}
    if folder is not None:
        _rewards_beside(raw, folder)
    for item in overrides:
        _apply_override(raw, item)
    return validate(config_from_dict(raw))


# ---------------------------------------------------------------------------------------------
# What `zeroth run --resume` may change in a run's saved config.
# ---------------------------------------------------------------------------------------------

RESUMABLE = ("rl.steps", "run.threads", "run.keep_checkpoints")


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
    (raised, for the rl stage that ends the pipeline), run.threads and run.keep_checkpoints.
    Any other key is refused: a resumed run must stay the run it was."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        parts, value = _parse_override(item)
        key = ".".join(parts)
        if key not in RESUMABLE:
            raise UserError(f"--resume cannot change {key!r}: a run continues with the config "
                            f"saved in its directory — it can change only {', '.join(RESUMABLE)}"
                            " (rl.steps: raised, for the rl stage that ends the pipeline)")
        section, name = parts
        value = _coerce(key, value, _field_types(section)[name])
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
