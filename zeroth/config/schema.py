"""The run configuration as typed dataclasses with their defaults: one section per concern.

Every field can be set in a recipe file or on the command line (`section.field=value`); see
zeroth.config.load for recipes and overrides and zeroth.config.check for the value rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
    # updates skipped for a non-finite loss, gradient or advantage, in a row, before the run
    # stops (0: never; zeroth.pipeline.faults)
    max_nonfinite_steps: int = 3


@dataclass
class TaskConfig:
    name: str = "addition"  # a key of zeroth.tasks.TASKS
    digits: int = 3  # addition: digits per operand
    heldout_fraction: float = 0.05  # share of the problem space kept out of training
    path: str | None = None  # file tasks (jsonl, gsm8k, math, mbpp, ...): local data file
    eval_path: str | None = None  # file tasks: a held-out file; None -> a stable hash split
    eval_problems: int = 200  # held-out problems evaluated before and after RL
    options: dict[str, Any] = field(default_factory=dict)  # family knobs: task.options.numbers=4
    # with name=mix: family -> weight, or -> {weight, options} (zeroth.tasks.mix)
    mix: dict[str, Any] = field(default_factory=dict)
    # {up, down, window}: a family's difficulty follows its training accuracy; {} -> off
    # (zeroth.tasks.curriculum)
    curriculum: dict[str, Any] = field(default_factory=dict)


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
    # compute: fp32 | bf16-mixed (float32 weights, bf16 autocast) | auto (bf16-mixed where the
    # hardware has fast bf16 and the model is wide enough to gain; zeroth.models.precision)
    precision: str = "auto"
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
    steps: int = 900
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.0
    checkpoint_every: int = 500
    length_buckets: int = 1  # N: each batch split by length into N parts, each padded only to
    # its own longest row: the same loss, fewer padded tokens


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
    length_buckets: int = 1  # as pretrain.length_buckets


@dataclass
class RLConfig:
    steps: int = 40
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
    # held-out evaluation during RL: every N steps (0: only after the stage), on the first
    # eval_problems of the held-out set, with the eval section's k, temperature and length
    eval_every: int = 10
    eval_problems: int = 50
    reward_weights: dict[str, float] | None = None  # name -> weight; None -> the task's own
    engine: str = "torch"  # generation engine: torch | vllm | vllm-server | auto (zeroth.rollout)
    # importance-sampling correction of the gap between the engine's and the trainer's log-probs
    # (TRL's names): none | token_truncate | token_mask | sequence_truncate | sequence_mask
    engine_correction: str = "sequence_mask"
    engine_correction_cap: float = 3.0  # the ratio's upper bound (truncated to it, or masked)
    # seconds one reward function may take over a step's completions (0: no limit); past it
    # they are recorded as verifier failures (None), never 0.0 (zeroth.rewards.combine); the
    # math and code verifiers bound each check themselves and are not timed as a whole
    reward_timeout_s: float = 600.0


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
class VLLMConfig:
    """vLLM as the generation engine (rl.engine=vllm: in this process; vllm-server: its own)."""

    kv_cache_gib: float | None = None  # KV-cache size; null -> 1 GiB on CPU, gpu_memory on GPU
    gpu_memory: float = 0.3  # share of the GPU's memory vLLM may take (colocated: keep room)
    eager: bool | None = None  # no CUDA graphs / torch.compile; null -> eager on CPU only
    url: str | None = None  # vllm-server: a running `vllm serve` to use; null -> zeroth starts one
    port: int = 0  # the server zeroth starts listens here (0: a free port)
    devices: str | None = None  # CUDA_VISIBLE_DEVICES of the server zeroth starts (e.g. "1")
    transfer: str = "auto"  # vllm-server weight sync: auto (nccl on GPU, disk on CPU) | nccl | disk
    start_timeout: float = 600.0  # seconds to wait for the server to come up


@dataclass
class TrainConfig:
    """How the training of every stage is spread over the ranks of a torchrun job."""

    # ddp: every rank holds the whole model, gradients summed with one all-reduce per step;
    # fsdp: parameters, gradients and optimiser state sharded (FSDP2)
    parallel: str = "ddp"


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
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
