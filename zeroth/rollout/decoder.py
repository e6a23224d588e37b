"""The decoder: completions sampled token by token over a KV cache, the one loop behind every
engine that generates in this process (RL, evaluation, rejection sampling, distillation's
teacher and chat).

`sample_steps` is the loop: it yields each step's new tokens for the rows still generating, so
`generate` collects whole completions and `stream` hands chat one token at a time. The forward
passes come from a backend (`Forward`), chosen per model by `forward_for`:

- zeroth.models.lean's `Decoding` for plain Qwen2/Llama models: each group's prompt prefilled
  once, a KV cache allocated once, finished rows dropped from the batch;
- `HFForward` for any other model (peft/LoRA, other architectures): transformers' own forward
  over a `DynamicCache`, finished rows kept in the batch.

Both give the same tokens up to float rounding (tests/test_fastlm.py compares them). Sampling
draws from an explicit `torch.Generator` (a run is a function of its seed and resumes exactly);
a CPU generator samples on the CPU even for a GPU model. Results come back as lists.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Protocol

import torch
from torch import Tensor
from transformers import DynamicCache

from zeroth.models import lean as fastlm
from zeroth.models.hf import end_of_turn

DROP_FRACTION = 8  # finished rows leave a backend's batch once >= 1/8 of it finished


class Forward(Protocol):
    """The forward passes of one batch being generated: `start()` runs the prompts and gives
    the logits (n, V) of every row's first token, `step(token)` feeds one token (a,) to each
    row in the batch and gives the next logits (a, V). With `drops_rows`, `keep(live)` removes
    the rows where live (a,) is False; without, every row stays to the end."""

    drops_rows: bool

    def start(self) -> Tensor: ...

    def step(self, token: Tensor) -> Tensor: ...

    def keep(self, live: Tensor) -> None: ...


def _cache_kwarg(model) -> str:
    """transformers 5 names the KV-cache argument `cache`; earlier versions `past_key_values`.
    A peft model passes keyword arguments through to its base model: ask the base."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class HFForward:
    """transformers' forward over a DynamicCache, for any causal LM. Prompts are left-padded
    (explicit attention mask and positions); finished rows stay in the batch and are fed the
    pad token, so the batch never changes shape."""

    drops_rows = False

    def __init__(self, model, prompts: list[list[int]], pad_id: int, max_new_tokens: int = 0):
        self.model, self.prompts, self.pad_id = model, prompts, pad_id

    def start(self) -> Tensor:
        device = next(self.model.parameters()).device
        ids, real = (t.to(device) for t in fastlm.left_pad(self.prompts, self.pad_id))
        self.mask = real.long()  # (B, P), then one column more per step
        positions = (self.mask.cumsum(-1) - 1).clamp(min=0)  # (B, P)
        self.cache = {_cache_kwarg(self.model): DynamicCache()}
        out = self.model(input_ids=ids, attention_mask=self.mask, position_ids=positions,
                         use_cache=True, logits_to_keep=1, **self.cache)
        self.next_pos = positions[:, -1:] + 1  # (B, 1)
        return out.logits[:, -1, :]

    def step(self, token: Tensor) -> Tensor:
        ones = torch.ones((len(token), 1), dtype=self.mask.dtype, device=self.mask.device)
        self.mask = torch.cat([self.mask, ones], dim=-1)
        out = self.model(input_ids=token[:, None], attention_mask=self.mask,
                         position_ids=self.next_pos, use_cache=True, **self.cache)
        self.next_pos = self.next_pos + 1
        return out.logits[:, -1, :]

    def keep(self, live: Tensor) -> None:
        raise NotImplementedError("HFForward keeps every row in the batch")


def forward_for(model, prompts: list[list[int]], pad_id: int, max_new_tokens: int) -> Forward:
    """The backend for `model`: the lean decoder where it applies, else transformers'."""
    backend = fastlm.Decoding if fastlm.supports(model) else HFForward
    return backend(model, prompts, pad_id, max_new_tokens)


# ---------------------------------------------------------------------------------------------
# Sampling.
# ---------------------------------------------------------------------------------------------


def nucleus(logits: Tensor, temperature: float, top_p: float) -> Tensor:
    """logits (a, V) with every token outside the top-p nucleus of softmax(logits /
    temperature) set to -inf; the most likely token always stays."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p
    drop = torch.zeros_like(outside).scatter(-1, order, outside)
    return logits.masked_fill(drop, float("-inf"))


def sample(logits: Tensor, temperature: float, generator, greedy: bool,
           rows: Tensor | None = None, batch: int | None = None, top_p: float = 1.0) -> Tensor:
    """One token per row of logits (a, V): the argmax, or a sample by inverting the CDF of
    softmax(logits / temperature) (within the top-p nucleus when top_p < 1) at a uniform draw.
    Each step draws `batch` uniforms (one per row of the whole batch, a CPU generator on the
    CPU) and row i of logits uses draw rows[i], so a row's samples do not depend on which other
    rows are still generating. Greedy draws nothing."""
    if greedy:
        return logits.argmax(-1)
    if top_p < 1.0:
        logits = nucleus(logits, temperature, top_p)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    cdf = probs.cumsum(-1)  # (a, V)
    where = cdf.device if generator is None else generator.device
    u = torch.rand((batch or len(cdf), 1), generator=generator, device=where).to(cdf.device)
    if rows is not None:
        u = u[rows]
    token = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(-1)
    return token.clamp(max=cdf.shape[-1] - 1)


# ---------------------------------------------------------------------------------------------
# The loop.
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def sample_steps(forward: Forward, *, max_new_tokens: int, temperature: float, generator,
                 eos_ids: set[int], pad_id: int, greedy: bool = False,
                 top_p: float = 1.0) -> Iterator[tuple[Tensor, Tensor]]:
    """Yields, step after step, (rows (a,), tokens (a,)): each row still generating (its index
    in the batch) and the token just sampled for it. A row ends with its first stop token (that
    step yields it) or after `max_new_tokens` tokens. Every step draws one uniform per row of
    the batch, finished or not (see `sample`). A row that finished is fed the pad token until
    the backend drops it (`Forward.keep`, once >= 1/DROP_FRACTION of its batch finished)."""
    logits = forward.start()  # (n, V)
    n, device = len(logits), logits.device
    stops = torch.tensor(sorted(eos_ids), dtype=torch.long, device=device)
    rows = torch.arange(n, device=device)  # the batch index of each row the backend holds
    live = torch.ones(n, dtype=torch.bool, device=device)
    for t in range(max_new_tokens):
        token = sample(logits, temperature, generator, greedy, rows, n, top_p)  # (a,)
        yield rows[live], token[live]
        fed = torch.where(live, token, torch.full_like(token, pad_id))
        ended = live & torch.isin(token, stops)
        if bool(ended.any()):
            live &= ~ended
            if not bool(live.any()):
                return
            if forward.drops_rows and DROP_FRACTION * int((~live).sum()) >= len(live):
                forward.keep(live)
                rows, fed, live = rows[live], fed[live], live[live]
        if t + 1 == max_new_tokens:
            return
        logits = forward.step(fed)


def complete(forward: Forward, n: int, *, max_new_tokens: int, **sampling) -> list[list[int]]:
    """The completion ids of each of the n rows of `forward`, as `sample_steps` samples them
    (`sampling`: its other arguments). Tokens are gathered on the model's device, read once."""
    out, lengths = None, None
    for t, (rows, token) in enumerate(sample_steps(forward, max_new_tokens=max_new_tokens,
                                                   **sampling)):
        if out is None:
            out = torch.zeros((n, max_new_tokens), dtype=torch.long, device=token.device)
            lengths = torch.zeros(n, dtype=torch.long, device=token.device)
        out[rows, t] = token
        lengths[rows] = t + 1
    if out is None:
        return [[] for _ in range(n)]
    return [row[: int(m)] for row, m in zip(out.tolist(), lengths.tolist())]


# ---------------------------------------------------------------------------------------------
# What engines call.
# ---------------------------------------------------------------------------------------------


def stop_ids(model, tokenizer) -> set[int]:
    """Token ids that end a completion: the tokenizer's eos, the generation config's and the
    chat template's end of turn."""
    ids = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(end_of_turn(tokenizer))}
    extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(extra if isinstance(extra, (list, tuple)) else [extra])
    return {i for i in ids if i is not None}


def _stop_set(eos_id: int | set[int]) -> set[int]:
    return {eos_id} if isinstance(eos_id, int) else set(eos_id)


def generate(model, prompts: list[list[int]], *, max_new_tokens: int, temperature: float = 1.0,
             generator: torch.Generator | None = None, eos_id: int | set[int], pad_id: int,
             batch_size: int = 256, greedy: bool = False, top_p: float = 1.0) -> list[list[int]]:
    """Completion token ids for each prompt, ending with a stop token when the model stopped
    (`eos_id`: one id or a set); every sampled token is kept, whatever it is. Prompts go
    through the model `batch_size` at a time, in eval mode (its mode is restored after)."""
    sampling = {"temperature": temperature, "generator": generator, "greedy": greedy,
                "eos_ids": _stop_set(eos_id), "pad_id": pad_id, "top_p": top_p}
    was_training = model.training
    model.eval()
    completions: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        completions += complete(forward_for(model, chunk, pad_id, max_new_tokens), len(chunk),
                                max_new_tokens=max_new_tokens, **sampling)
    model.train(was_training)
    return completions


def stream(model, prompt: list[int], *, max_new_tokens: int, temperature: float = 1.0,
           top_p: float = 1.0, generator: torch.Generator | None = None,
           eos_id: int | set[int]) -> Iterator[int]:
    """The token ids of one completion as they are sampled, a stop token last; temperature
    <= 0 means greedy. The same tokens as `generate` of the prompt alone with the same
    generator. Closing the iterator stops the generation. The model is used in the mode it is
    in (chat's is in eval mode)."""
    greedy = temperature <= 0
    steps = sample_steps(forward_for(model, [prompt], 0, max_new_tokens),  # one row: no padding
                         max_new_tokens=max_new_tokens, temperature=1.0 if greedy else temperature,
                         generator=generator, eos_ids=_stop_set(eos_id), pad_id=0, greedy=greedy,
                         top_p=top_p)
    for _, token in steps:
        yield int(token)
