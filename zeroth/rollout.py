"""The generation engine: sample completions for batches of prompts.

One small interface, `generate(model, prompts, ...) -> list[list[int]]`, so a faster engine
(vLLM, SGLang) can stand in on a GPU. This implementation is plain PyTorch over a Hugging Face
causal LM with a KV cache: prompts are left-padded, each step samples one token per row from
softmax(logits / temperature) with an explicit `torch.Generator` (so a run is a function of its
seed and resumes exactly), and a row stops at its end-of-sequence token.
"""

from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache


def _cache_kwarg(model) -> str:
    """transformers 5 names the KV-cache argument `cache`; earlier versions `past_key_values`."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)  # (B, P)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)  # (B, P)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p):] = 1
    return ids, mask


@torch.no_grad()
def _generate_batch(model, prompts, *, max_new_tokens, temperature, generator, eos_id, pad_id,
                    greedy):
    ids, mask = _left_pad(prompts, pad_id)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, P)
    cache = {_cache_kwarg(model): DynamicCache()}
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                logits_to_keep=1, **cache)
    batch = ids.shape[0]
    done = torch.zeros(batch, dtype=torch.bool)
    tokens = []
    next_pos = positions[:, -1:] + 1  # (B, 1)
    for _ in range(max_new_tokens):
        logits = out.logits[:, -1, :].float()  # (B, V)
        if greedy:
            token = logits.argmax(-1)
        else:
            probs = torch.softmax(logits / temperature, dim=-1)
            token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)
        token = torch.where(done, torch.full_like(token, pad_id), token)
        tokens.append(token)
        done |= token == eos_id
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype)], dim=-1)
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=next_pos,
                    use_cache=True, **cache)
        next_pos = next_pos + 1
    rows = torch.stack(tokens, dim=1).tolist() if tokens else [[] for _ in range(batch)]
    return [_trim(row, eos_id, pad_id) for row in rows]


def _trim(row: list[int], eos_id: int, pad_id: int) -> list[int]:
    """Keep tokens up to and including the first end-of-sequence token."""
    if eos_id in row:
        return row[: row.index(eos_id) + 1]
    return [t for t in row if t != pad_id] if pad_id != eos_id else row


def generate(model, prompts: list[list[int]], *, max_new_tokens: int, temperature: float = 1.0,
             generator: torch.Generator | None = None, eos_id: int, pad_id: int,
             batch_size: int = 256, greedy: bool = False) -> list[list[int]]:
    """Completion token ids for each prompt (ending with eos_id when the model stopped)."""
    was_training = model.training
    model.eval()
    completions: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        completions += _generate_batch(
            model, prompts[start:start + batch_size], max_new_tokens=max_new_tokens,
            temperature=temperature, generator=generator, eos_id=eos_id, pad_id=pad_id,
            greedy=greedy)
    model.train(was_training)
    return completions
