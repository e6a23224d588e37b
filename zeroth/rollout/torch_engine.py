"""The built-in engine: generation in this process, from the policy model's own weights, with
the one decoder loop (zeroth.rollout.decoder)."""

from __future__ import annotations

from collections.abc import Iterator

from zeroth.pipeline import dist
from zeroth.rollout.decoder import generate, stream


class TorchEngine:
    """Generation in this process, from the policy model's own weights."""

    def __init__(self, model, cfg=None):
        self.model = model

    def generate(self, prompts: list[list[int]], *, logprobs: bool = False, **kwargs):
        with dist.full_params(self.model):  # FSDP: the whole weights, for every decoding step
            completions = generate(self.model, prompts, **kwargs)
        return (completions, None) if logprobs else completions  # samples the trainer's model

    def stream(self, prompt_ids: list[int], **kwargs) -> Iterator[int]:
        if dist.sharded(self.model):
            raise RuntimeError("stream() samples one chat reply: not from a sharded model")
        return stream(self.model, prompt_ids, **kwargs)

    def sync(self, model) -> None:
        self.model = model  # the same tensors: nothing to copy

    def close(self) -> None:
        pass
