"""Generation engines: everything that samples completions goes through one (`make_engine`).

RL, evaluation, rejection sampling, distillation's teacher and chat all sample through the small
interface `Engine` (below): `generate(prompts, ...)` returns completion token ids, `stream(prompt,
...)` yields one completion's tokens as they are sampled (chat), and `sync(model)` is called after
every optimiser step so the engine samples from the current policy. An engine is one module with
a class of these methods and one entry in `ENGINES`, chosen with `rl.engine`; nothing that samples
changes.

The built-in engine, "torch" (zeroth.rollout.torch_engine), generates in this process from the
policy model itself (so `sync` costs nothing) with zeroth.rollout.decoder, the one token-sampling
loop. This module imports no torch: config checks read `ENGINES` by name.
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
                 batch_size: int = 256, greedy: bool = False) -> list[list[int]]:
        """Completion ids per prompt, as zeroth.rollout.decoder.generate."""

    def stream(self, prompt_ids: list[int], *, max_new_tokens: int, temperature: float,
               top_p: float, generator: torch.Generator | None,
               eos_id: int | set[int]) -> Iterator[int]:
        """One completion's token ids as they are sampled, a stop token last (temperature <= 0:
        greedy), as zeroth.rollout.decoder.stream; closing the iterator stops it."""

    def sync(self, model) -> None:
        """The policy changed (an optimiser step): sample from `model` from now on."""


ENGINES = Registry("generation engine", {  # rl.engine -> class(model)
    "torch": "zeroth.rollout.torch_engine:TorchEngine",
})


def make_engine(cfg, model) -> Engine:
    """The engine the config names (`rl.engine`), sampling from `model`."""
    return ENGINES[cfg.rl.engine](model)
