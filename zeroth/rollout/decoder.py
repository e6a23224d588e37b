"""The decoder: completions for batches of prompts, sampled token by token over a KV cache.

Qwen2/Llama models decode through zeroth.models.lean (each group's prompt prefilled once, a
preallocated KV cache, finished rows dropped from the batch), any other model through
transformers' forward with a KV cache. Both sample with `lean.sample` from an explicit
`torch.Generator` (so a run is a function of its seed and resumes exactly) and give the same
tokens. A CPU generator samples on the CPU even for a GPU model; results come back as lists.
"""

from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache

from zeroth.models import lean as fastlm
from zeroth.models.hf import end_of_turn


def _cache_kwarg(model) -> str:
    """transformers 5 names the KV-cache argument `cache`; earlier versions `past_key_values`.
    A peft model passes keyword arguments through to its base model: ask the base."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@torch.no_grad()
def _generate_batch(model, prompts, *, max_new_tokens, temperature, generator, eos_ids, pad_id,
                    greedy):
    device = next(model.parameters()).device
    ids, real = (t.to(device) for t in fastlm.left_pad(prompts, pad_id))
    mask = real.long()  # (B, P)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, P)
    cache = {_cache_kwarg(model): DynamicCache()}
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                logits_to_keep=1, **cache)
    batch = ids.shape[0]
    stops = torch.tensor(sorted(eos_ids), dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    lengths = torch.full((batch,), max_new_tokens, dtype=torch.long, device=device)  # kept
    tokens = []
    next_pos = positions[:, -1:] + 1  # (B, 1)
    for t in range(max_new_tokens):
        token = fastlm.sample(out.logits[:, -1, :], temperature, generator, greedy)  # (B,)
        token = torch.where(done, torch.full_like(token, pad_id), token)
        tokens.append(token)
        ended = ~done & torch.isin(token, stops)
        lengths[ended] = t + 1
        done |= ended
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=device)], dim=-1)
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=next_pos,
                    use_cache=True, **cache)
        next_pos = next_pos + 1
    rows = torch.stack(tokens, dim=1).tolist() if tokens else [[] for _ in range(batch)]
    return [row[: int(n)] for row, n in zip(rows, lengths.tolist())]


def stop_ids(model, tokenizer) -> set[int]:
    """Token ids that end a completion: the tokenizer's eos, the generation config's and the
    chat template's end of turn."""
    ids = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(end_of_turn(tokenizer))}
    extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(extra if isinstance(extra, (list, tuple)) else [extra])
    return {i for i in ids if i is not None}


def generate(model, prompts: list[list[int]], *, max_new_tokens: int, temperature: float = 1.0,
             generator: torch.Generator | None = None, eos_id: int | set[int], pad_id: int,
             batch_size: int = 256, greedy: bool = False) -> list[list[int]]:
    """Completion token ids for each prompt, ending with a stop token when the model stopped
    (`eos_id`: one id or a set); every sampled token is kept, whatever it is."""
    eos_ids = {eos_id} if isinstance(eos_id, int) else set(eos_id)
    was_training = model.training
    model.eval()
    completions: list[list[int]] = []
    batch = fastlm.generate if fastlm.supports(model) else _generate_batch
    for start in range(0, len(prompts), batch_size):
        completions += batch(
            model, prompts[start:start + batch_size], max_new_tokens=max_new_tokens,
            temperature=temperature, generator=generator, eos_ids=eos_ids, pad_id=pad_id,
            greedy=greedy)
    model.train(was_training)
    return completions


