"""The decoder: completions sampled token by token over a KV cache, the one loop behind every
engine that generates in this process (RL, evaluation, rejection sampling, distillation's
teacher and chat).

`sample_steps` is the loop: it yields each step's new tokens for the rows still generating, so
`generate` collects whole completions and `stream` hands chat one token at a time. The forward
passes come from a backend (`Forward`), chosen per model by `forward_for`:

- zeroth.models.lean's `Decoding` for plain Qwen2/Llama models: each group's prompt prefilled
  once, a KV cache allocated once, finished rows dropped from the batch (`batch_for`);
- `HFForward` for any other model (peft/LoRA, other architectures): transformers' own forward
  over a `DynamicCache`, finished rows kept in the batch.

Both give the same tokens up to float rounding (tests/test_fastlm.py compares them).

Randomness is per row: each completion has its own seed (`seeds`: given, as the RL loop gives a
group's, or drawn from the caller's `torch.Generator`), and its own stream of uniforms, one per
token, drawn on the CPU from that seed before decoding. So a completion's tokens depend on its
prompt and seed alone, not on which other rows share its batch, how batches are cut, which rows
have finished, or on which process or device it is decoded (a run split across ranks samples
what one process samples). Results come back as lists.
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
from zeroth.models.precision import autocast

DROP_FRACTION = 8  # finished rows leave a backend's batch once >= 1/8 of it finished


class Forward(Protocol):
    """The forward passes of one batch being generated: `start()` runs the prompts and gives
    the logits (n, V) of every row's first token, `step(token)` feeds one token (a,) to each
    row in the batch and gives the next logits (a, V). With `drops_rows`, `keep(index)` keeps
    only the rows at `index` (ascending): the live ones and, up to the backend's batch size for
    them (`batch_for(live rows)`), some finished ones; without, every row stays to the end."""

    drops_rows: bool

    def start(self) -> Tensor: ...

    def step(self, token: Tensor) -> Tensor: ...

    def keep(self, index: Tensor) -> None: ...

    def batch_for(self, rows: int) -> int: ...


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
        with autocast(self.model):
            out = self.model(input_ids=ids, attention_mask=self.mask,
                             position_ids=positions, use_cache=True, logits_to_keep=1,
                             **self.cache)
        self.next_pos = positions[:, -1:] + 1  # (B, 1)
        return out.logits[:, -1, :]

    def step(self, token: Tensor) -> Tensor:
        ones = torch.ones((len(token), 1), dtype=self.mask.dtype, device=self.mask.device)
        self.mask = torch.cat([self.mask, ones], dim=-1)
        with autocast(self.model):
            out = self.model(input_ids=token[:, None], attention_mask=self.mask,
                             position_ids=self.next_pos, use_cache=True, **self.cache)
        self.next_pos = self.next_pos + 1
        return out.logits[:, -1, :]

    def keep(self, index: Tensor) -> None:
        raise NotImplementedError("HFForward keeps every row in the batch")

    def batch_for(self, rows: int) -> int:
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


def sample(logits: Tensor, temperature: float, uniforms: Tensor | None, greedy: bool,
           top_p: float = 1.0) -> Tensor:
    """One token per row of logits (a, V): the argmax, or a sample by inverting the CDF of
    softmax(logits / temperature) (within the top-p nucleus when top_p < 1) at the row's
    uniform draw (uniforms (a,) in [0, 1)). Greedy needs no draws."""
    if greedy:
        return logits.argmax(-1)
    if top_p < 1.0:
        logits = nucleus(logits, temperature, top_p)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    cdf = probs.cumsum(-1)  # (a, V)
    u = uniforms.to(cdf.device, cdf.dtype)[:, None]  # (a, 1)
    token = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(-1)
    return token.clamp(max=cdf.shape[-1] - 1)


SEED_BITS = 62  # a row seed plus a small offset (a sample's index in its group) stays an int64


def seeds_for(n: int, generator: torch.Generator | None) -> list[int]:
    """n row seeds drawn from `generator` (its device's stream; None: torch's global one)."""
    where = generator.device if generator is not None else "cpu"
    return torch.randint(0, 2**SEED_BITS, (n,), generator=generator, device=where).tolist()


def row_uniforms(seeds: list[int], steps: int) -> Tensor:
    """(n, steps) float64: row i's uniform for each token, from its own CPU generator."""
    out = torch.empty((len(seeds), steps), dtype=torch.float64)
    gen = torch.Generator()
    for i, seed in enumerate(seeds):
        out[i] = torch.rand(steps, generator=gen.manual_seed(seed), dtype=torch.float64)
    return out


# ---------------------------------------------------------------------------------------------
# The loop.
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def sample_steps(forward: Forward, *, max_new_tokens: int, temperature: float,
                 uniforms: Tensor | None, eos_ids: set[int], pad_id: int, greedy: bool = False,
                 top_p: float = 1.0) -> Iterator[tuple[Tensor, Tensor]]:
    """Yields, step after step, (rows (a,), tokens (a,)): each row still generating (its index
    in the batch) and the token just sampled for it. A row ends with its first stop token (that
    step yields it) or after `max_new_tokens` tokens. Row i's token t is drawn at
    uniforms[i, t] ((n, max_new_tokens), `row_uniforms`; None when greedy). A row that finished
    is fed the pad token (its stop token first) until the backend drops it (`Forward.keep`,
    once >= 1/DROP_FRACTION of its batch finished, down to the backend's `batch_for` size)."""
    logits = forward.start().float()  # (n, V); float32 whatever the model computes in
    n, device = len(logits), logits.device
    stops = torch.tensor(sorted(eos_ids), dtype=torch.long, device=device)
    rows = torch.arange(n, device=device)  # the batch index of each row the backend holds
    live = torch.ones(n, dtype=torch.bool, device=device)
    if uniforms is not None:
        uniforms = uniforms.to(device)
    for t in range(max_new_tokens):
        draws = None if greedy else uniforms[rows, t]
        token = sample(logits, temperature, draws, greedy, top_p)  # (a,)
        yield rows[live], token[live]
        fed = torch.where(live, token, torch.full_like(token, pad_id))
        ended = live & torch.isin(token, stops)
        if bool(ended.any()):
            live &= ~ended
            if not bool(live.any()):
                return
            if forward.drops_rows and DROP_FRACTION * int((~live).sum()) >= len(live):
                size = forward.batch_for(int(live.sum()))
                if size < len(live):
                    keep = _kept(live, size)
                    forward.keep(keep)
                    rows, fed, live = rows[keep], fed[keep], live[keep]
        if t + 1 == max_new_tokens:
            return
        logits = forward.step(fed).float()


def _kept(live: Tensor, size: int) -> Tensor:
    """The batch indices to keep, in order: every live row, and finished ones (the first) up to
    `size` rows (a backend that rounds its batch sizes, `Forward.batch_for`)."""
    spare = (~live).nonzero().squeeze(1)[: max(0, size - int(live.sum()))]
    return torch.cat([live.nonzero().squeeze(1), spare]).sort().values


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
             batch_size: int = 256, greedy: bool = False, top_p: float = 1.0,
             seeds: list[int] | None = None) -> list[list[int]]:
    """Completion token ids for each prompt, ending with a stop token when the model stopped
    (`eos_id`: one id or a set); every sampled token is kept, whatever it is. Row i samples
    from seeds[i] (default: seeds drawn from `generator`, one per prompt, in order). Prompts go
    through the model `batch_size` at a time, in eval mode (its mode is restored after)."""
    sampling = {"temperature": temperature, "greedy": greedy,
                "eos_ids": _stop_set(eos_id), "pad_id": pad_id, "top_p": top_p}
    if not greedy and seeds is None:
        seeds = seeds_for(len(prompts), generator)
    was_training = model.training
    model.eval()
    completions: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        draws = None if greedy else row_uniforms(seeds[start:start + batch_size],
                                                 max_new_tokens)
        completions += complete(forward_for(model, chunk, pad_id, max_new_tokens), len(chunk),
                                max_new_tokens=max_new_tokens, uniforms=draws, **sampling)
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
    draws = None if greedy else row_uniforms(seeds_for(1, generator), max_new_tokens)
    steps = sample_steps(forward_for(model, [prompt], 0, max_new_tokens),  # one row
                         max_new_tokens=max_new_tokens, temperature=1.0 if greedy else temperature,
                         uniforms=draws, eos_ids=_stop_set(eos_id), pad_id=0, greedy=greedy,
                         top_p=top_p)
    for _, token in steps:
        yield int(token)
