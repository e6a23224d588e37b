"""The built-in engine: generation in this process, from the policy model's own weights."""

from __future__ import annotations

from zeroth.rollout.decoder import generate


class TorchEngine:
    """Generation in this process, from the policy model's own weights."""

    def __init__(self, model):
        self.model = model

    def generate(self, prompts, **kwargs) -> list[list[int]]:
        return generate(self.model, prompts, **kwargs)

    def sync(self, model) -> None:
        self.model = model  # the same tensors: nothing to copy
