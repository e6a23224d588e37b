"""Value checks of a config: ranges, choices, and names read from the registries (tasks,
engines, algorithms, advantage estimators, loss aggregations), with no torch imported."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

from zeroth.algorithms import ADVANTAGES, ALGORITHMS, LOSS_AGGREGATIONS
from zeroth.config.parse import show
from zeroth.config.schema import Config
from zeroth.config.stages import pipeline, resolve_rl, stage_config
from zeroth.errors import UserError
from zeroth.models import ARCHS
from zeroth.rollout import ENGINES

# ---------------------------------------------------------------------------------------------
# Value checks. Each rule: (dotted key, predicate(value, cfg) -> ok, message template).
# The template may use {key} and {v} (the repr of the value), or be a function (key, value) ->
# message for one that reads a registry when it fails. The first failing rule raises.
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


def _named(registry, kind: str) -> tuple:
    """A rule: the value is a name in `registry` (read at check time, so a registered plugin
    counts)."""
    return ((lambda v, c: v in registry),
            lambda key, v: (f"config key '{key}' must be one of {', '.join(registry)} "
                            f"(the {kind}s), got {show(v)}"))


FILE_TASKS = ("jsonl", "gsm8k", "math", "mbpp", "datasets")  # tasks that need task.path


def _task_names() -> list[str]:
    from zeroth.tasks import TASKS  # late: the task registry imports the rewards

    return sorted(TASKS)


def _known_tasks(name: Any) -> str:
    close = difflib.get_close_matches(str(name), _task_names(), n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"{hint}known tasks: {', '.join(_task_names())}, or your own: path/to/file.py:load"


def _own_task(v: Any) -> bool:
    """A user's task loader, `module:function` or `path/to/file.py:function` (an existing file;
    what it holds is checked when the task loads)."""
    if not isinstance(v, str) or ":" not in v:
        return False
    where = v.rsplit(":", 1)[0]
    return not where.endswith(".py") or Path(where).expanduser().is_file()


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
    ("run.max_nonfinite_steps", *_ge(0)),
    ("rl.reward_timeout_s", *_ge(0)),
    ("run.device", *_one_of("cpu", "cuda", "auto")),
    (
        "task.name",
        lambda v, c: v in _task_names() or _own_task(v),
        lambda key, v: f"task.name {v}: file '{v.rsplit(':', 1)[0]}' does not exist — give the "
        "path of your task's file (path/to/file.py:load)" if isinstance(v, str) and ":" in v
        else f"config key '{key}' must name a task, got {show(v)} — {_known_tasks(v)}",
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
    ("model.arch", *_named(ARCHS, "model architecture")),
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
    ("model.precision", *_one_of("auto", "fp32", "bf16-mixed")),
    (
        "model.precision",
        lambda v, c: v != "bf16-mixed" or c.model.dtype == "float32",
        ("config key '{key}' is bf16-mixed, which keeps float32 master weights, but "
         "model.dtype is bfloat16 — set model.dtype=float32 (or model.precision=auto)"),
    ),
    ("model.template", *_one_of("auto", "own", "r1")),
    ("model.lora_r", *_ge(0)),
    ("model.lora_alpha", *_gt(0)),
    ("model.lora_dropout", *_between(0, 1, open_hi=True)),
    ("student.arch", *_named(ARCHS, "model architecture")),
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
    ("student.precision", *_one_of("auto", "fp32", "bf16-mixed")),
    (
        "student.precision",
        lambda v, c: v != "bf16-mixed" or c.student.dtype == "float32",
        ("config key '{key}' is bf16-mixed, which keeps float32 master weights, but "
         "student.dtype is bfloat16 — set student.dtype=float32 (or student.precision=auto)"),
    ),
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
    ("sft.length_buckets", *_ge(1)),
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
    ("pretrain.length_buckets", *_ge(1)),
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
    ("rl.algorithm", *_named(ALGORITHMS, "algorithm")),
    ("rl.engine", *_named(ENGINES, "generation engine")),
    ("rl.advantage", *_named(ADVANTAGES, "advantage estimator")),
    ("rl.max_sample_rounds", *_ge(1)),
    ("rl.overlong_cache", *_ge(1)),
    ("rl.loss_agg", *_named(LOSS_AGGREGATIONS, "loss aggregation")),
    ("rl.max_grad_norm", *_gt(0)),
    ("rl.engine_correction", *_one_of("none", "token_truncate", "token_mask",
                                      "sequence_truncate", "sequence_mask")),
    ("rl.engine_correction_cap", *_gt(1)),
    ("rl.checkpoint_every", *_ge(1)),
    ("rl.eval_every", *_ge(0)),
    ("rl.eval_problems", *_ge(1)),
    ("eval.k", *_ge(1)),
    ("eval.temperature", *_gt(0)),
    ("eval.max_new_tokens", *_ge(1)),
    ("eval.batch_size", *_ge(1)),
    ("sandbox.timeout_s", *_gt(0)),
    ("sandbox.memory_mb", *_ge(32)),
    ("sandbox.mode", *_one_of("fraction", "all")),
    ("vllm.kv_cache_gib", *_gt(0)),
    ("vllm.gpu_memory", *_between(0, 1, open_lo=True)),
    ("vllm.port", *_between(0, 65535)),
    ("vllm.transfer", *_one_of("auto", "nccl", "disk")),
    ("vllm.start_timeout", *_gt(0)),
    ("train.parallel", *_one_of("ddp", "fsdp")),
]


def validate(cfg: Config) -> Config:
    """Check value ranges and choices; raise UserError for the first bad key. Returns `cfg`."""
    check_rules(cfg, "")
    check_mix(cfg)
    for index, (_, kind, overrides) in enumerate(pipeline(cfg)):
        if overrides:
            check_rules(stage_config(cfg, index, resolve=False),
                         f"pipeline stage {index + 1} ({kind}): ")
    return cfg


def check_rules(cfg: Config, where: str) -> None:
    """Raise for the first rule `cfg` breaks. The rl fields left null are checked as the
    algorithm fills them (an unknown algorithm leaves them null: its own rule says so)."""
    rl = resolve_rl(cfg.rl)
    for key, ok, template in _RULES:
        section, name = key.split(".")
        value = getattr(rl if section == "rl" else getattr(cfg, section), name)
        if value is None and key in _NULLABLE:
            continue
        if not ok(value, cfg):
            message = template(key, value) if callable(template) else template.format(
                key=key, v=show(value))  # a callable: a message read at check time
            raise UserError(where + message)


def check_mix(cfg: Config) -> None:
    """task.mix and task.name=mix go together, each family named and weighted right; and
    task.curriculum is well formed, on a task with a difficulty ladder."""
    from zeroth.tasks import curriculum, mix  # late: the task registry imports the rewards

    mix.check(cfg.task, tuple(_task_names()))
    if curriculum.settings(cfg.task.curriculum) and cfg.task.name != "mix" and \
            cfg.task.name not in mix.LADDERS:
        raise UserError(f"task.curriculum: task '{cfg.task.name}' has no difficulty ladder — "
                        f"a curriculum moves a mix (task.name=mix) or one of "
                        f"{', '.join(mix.LADDERS)}; remove task.curriculum")


_NULLABLE = {f"rl.{k}" for k in ("eps_low", "eps_high", "beta", "advantage", "scale_rewards",
                                  "loss_agg", "dynamic_sampling")} | {
    "vllm.kv_cache_gib"}  # null: the algorithm's (rl), the device's (vllm)


def check_world(cfg: Config, world: int) -> None:
    """Raise for a config that `world` ranks cannot share: RL groups must split evenly (a group
    never spans ranks) and every batch needs a row for each rank."""
    if world <= 1:
        return
    lora = cfg.model.lora_r > 0 or cfg.student.lora_r > 0
    if cfg.train.parallel == "fsdp" and lora and any(
            stage_config(cfg, i, resolve=False).rl.engine == "vllm"
            for i, (_, kind, _) in enumerate(pipeline(cfg)) if kind == "rl"):
        raise UserError("rl.engine=vllm does not take a LoRA model's weights from FSDP's shards "
                        "yet — use train.parallel=ddp with LoRA and vLLM")
    for index, (sid, kind, _) in enumerate(pipeline(cfg)):
        c = stage_config(cfg, index, resolve=False)
        where = f"stage {sid}: " if len(pipeline(cfg)) > 1 else ""
        if kind == "rl" and c.rl.prompts_per_step % world:
            raise UserError(f"{where}rl.prompts_per_step={c.rl.prompts_per_step} does not split "
                            f"into {world} ranks — make it a multiple of {world}")
        if kind == "rl" and c.rl.engine == "vllm-server":
            raise UserError(f"{where}rl.engine=vllm-server does not run on several ranks yet — "
                            "use rl.engine=vllm (one engine a rank) or torch with --nproc")
        if kind in ("pretrain", "sft", "distill") and getattr(c, kind).batch_size < world:
            size = getattr(c, kind).batch_size
            raise UserError(f"{where}{kind}.batch_size={size} is smaller than the {world} "
                            f"ranks — give each rank a row at least: {kind}.batch_size>={world}")
