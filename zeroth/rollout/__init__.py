"""Generation engines: everything that samples completions goes through one (`make_engine`).

RL, evaluation, rejection sampling, distillation's teacher and chat all sample through the small
interface `Engine` (below): `generate(prompts, ...)` returns completion token ids, `stream(prompt,
...)` yields one completion's tokens as they are sampled (chat), and `sync(model)` is called after
every optimiser step so the engine samples from the current policy. An engine is one module with
a class of these methods and one entry in `ENGINES`, chosen with `rl.engine`; nothing that samples
changes.

The engines (`rl.engine`):

- "torch" (zeroth.rollout.torch_engine, the default) generates in this process from the policy
  model itself (so `sync` costs nothing) with zeroth.rollout.decoder, the one sampling loop;
- "vllm" (zeroth.rollout.vllm_engine): a vllm.LLM in this process, the policy's weights pushed
  into it after every optimiser step; it returns each sampled token's log-prob;
- "vllm-server" (zeroth.rollout.vllm_server): a `vllm serve` process (started by zeroth, or one
  at `vllm.url`) fed the new weights through vLLM's weight-transfer API or from disk;
- "auto": vLLM where it is installed and faster for the model at hand (on a GPU, or on CPU from
  10M parameters up), else torch.

This module imports no torch: config checks read `ENGINES` by name.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from zeroth.registry import Registry
from zeroth.seeding import stable_hash

if TYPE_CHECKING:
    import torch


def hash_seed(tag: str) -> int:
    """A 63-bit seed from a text tag, so each random stream (eval, RL step n) is its own."""
    return stable_hash(tag) >> 1


class Engine(Protocol):
    """What every sampling stage needs from a generation engine."""

    model: object  # the policy it samples (its generation config names stop tokens)

    def generate(self, prompts: list[list[int]], *, max_new_tokens: int, temperature: float,
                 generator: torch.Generator | None, eos_id: int | set[int], pad_id: int,
                 batch_size: int = 256, greedy: bool = False, logprobs: bool = False,
                 seeds: list[int] | None = None):
        """Completion ids per prompt, as zeroth.rollout.decoder.generate: row i samples from
        seeds[i] (default: seeds drawn from `generator`), whatever else is in the batch. With
        `logprobs`, (completions, log-probs): the engine's log-prob of each sampled token at the
        sampling temperature, or None when it does not compute its own (the torch engine)."""

    def stream(self, prompt_ids: list[int], *, max_new_tokens: int, temperature: float,
               top_p: float, generator: torch.Generator | None,
               eos_id: int | set[int]) -> Iterator[int]:
        """One completion's token ids as they are sampled, a stop token last (temperature <= 0:
        greedy), as zeroth.rollout.decoder.stream; closing the iterator stops it."""

    def sync(self, model) -> None:
        """The policy changed (an optimiser step): sample from `model` from now on."""

    def close(self) -> None:
        """Done with this engine (a server zeroth started stops)."""


ENGINES = Registry("generation engine", {  # rl.engine -> class(model, cfg)
    "torch": "zeroth.rollout.torch_engine:TorchEngine",
    "vllm": "zeroth.rollout.vllm_engine:VLLMEngine",
    "vllm-server": "zeroth.rollout.vllm_server:VLLMServerEngine",
    "auto": "zeroth.rollout:auto_engine",
})


def make_engine(cfg, model) -> Engine:
    """The engine the config names (`rl.engine`), sampling from `model`."""
    return ENGINES[cfg.rl.engine](model, cfg)


# rl.engine=auto on CPU: vLLM from this many parameters up. bench/engines.py on 2 cores: the
# torch engine sampled faster at 4M parameters, vLLM at 32M and 140M (README, "vLLM").
AUTO_CPU_MIN_PARAMS = 10_000_000


def auto_choice(model) -> str:
    """What rl.engine=auto picks for `model`: "vllm" when vLLM is installed and runs the model,
    on a GPU always and on CPU from AUTO_CPU_MIN_PARAMS parameters up; else "torch"."""
    import importlib.util

    device = next(model.parameters()).device
    if importlib.util.find_spec("vllm") is None:
        return "torch"
    if device.type == "cpu" and sum(p.numel() for p in model.parameters()) < AUTO_CPU_MIN_PARAMS:
        return "torch"
    from zeroth.errors import UserError
    from zeroth.rollout.vllm_engine import check_supported

    try:
        check_supported(model, device)
    except UserError:
        return "torch"
    return "vllm"


def auto_engine(model, cfg) -> Engine:
    """rl.engine=auto: the engine `auto_choice` picks."""
    return ENGINES[auto_choice(model)](model, cfg)
