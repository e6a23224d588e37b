"""Rollouts: the typed batch of one sampling round, from the engine to the ledger.

Completions are grouped: the G samples of a prompt are consecutive rows, so completion i belongs
to group i // G. Everything later stages need travels together: the task row (prompt, answer and
every column a verifier reads), prompt and completion token ids, the decoded text, the weighted
total reward (a (N,) tensor) with each component apart, the dynamic-sampling round, and the
engine's own log-prob of each sampled token when it gives them (vLLM; None for the torch engine).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor


@dataclass
class Rollouts:
    rows: list[dict]  # (N,) the task row of each completion
    prompts: list[list[int]]  # (N,) prompt token ids
    completions: list[list[int]]  # (N,) completion token ids, ending with a stop token if any
    texts: list[str]  # (N,) decoded completions, as the verifiers read them
    rewards: Tensor  # (N,) weighted total reward
    parts: list[dict]  # (N,) each reward component (None: not applicable), `<name>_error`
    rounds: list[int]  # (N,) the dynamic-sampling round that drew it (0 without)
    engine_logprobs: list[list[float]] | None = None  # (N,) per completion token, at the
    #                                                   sampling temperature; None: not given

    def __len__(self) -> int:
        return len(self.completions)

    def select(self, idx: list[int]) -> Rollouts:
        """The completions `idx`, in that order."""
        return Rollouts(**{f.name: _pick(getattr(self, f.name), idx) for f in fields(self)})

    @staticmethod
    def concat(batches: list[Rollouts]) -> Rollouts:
        """The batches one after another (groups stay whole and consecutive)."""
        return Rollouts(**{f.name: _join([getattr(b, f.name) for b in batches])
                           for f in fields(Rollouts)})

    def flat_groups(self, group_size: int) -> list[bool]:
        """Per group: are its rewards all equal (zero advantage, nothing to learn)?"""
        groups = self.rewards.view(-1, group_size)  # (n_groups, G)
        return (groups == groups[:, :1]).all(dim=1).tolist()

    def failed(self) -> Tensor:
        """(N,) bool: a verifier raised on the completion (its score is unknown, not 0)."""
        return torch.tensor([any(k.endswith("_error") for k in p) for p in self.parts])


def _pick(values, idx: list[int]):
    if values is None:
        return None
    return values[idx] if torch.is_tensor(values) else [values[i] for i in idx]


def _join(parts: list):
    if any(p is None for p in parts):
        return None
    return torch.cat(parts) if torch.is_tensor(parts[0]) else [x for p in parts for x in p]
