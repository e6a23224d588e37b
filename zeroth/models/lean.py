"""A lean forward pass of Llama-family decoders (Qwen2, Llama) for rollouts and updates.

The same weights and the same arithmetic as transformers' own forward (the layers' Linear and
RMSNorm modules are called as they are; rotary embedding, attention and the MLP are the same
formulas), organised around what RL does with a model:

- **A group shares its prompt.** The G samples of a prompt are consecutive rows with identical
  prompt ids. The prompt runs through the model once per group, in generation (prefill), in the
  reference pass and in the update alike; its keys and values are shared by the G completions,
  and in the update the gradients of all G completions flow back into that one prompt pass.
  Exactly the same loss and gradient as running the G copies; fewer FLOPs.
- **Decoding is one forward per token and nothing else:** keys and values go into a cache
  allocated once, positions and masks are updated in place, and rows that have finished leave
  the batch (their cache rows are dropped), so no FLOP is spent after a row's last token (under
  bf16 on a CPU, down to a rounded batch size only: `Decoding.batch_for`).
- **Log-probs only where they are used:** the output projection runs on the positions that
  predict completion tokens, never on the prompt.
- **Supervised batches are packed** (`sequence_loss`, pre-training and SFT): the rows' tokens
  go through the projections and MLP as one batch with no padding, whatever their lengths.
- **bf16-mixed** (zeroth.models.precision): products in bf16, attention and the residual
  stream in float32; decoding keeps bf16 weights for the batch, its KV cache and attention
  float32 on a CPU (`attention_dtype`). On a CPU the products' row counts are rounded to a few
  sizes (`rows_for`): oneDNN builds a bf16 kernel for every new shape.

Anything else (other architectures, peft/LoRA models, sliding windows, gradient checkpointing)
takes transformers' generic path (`supports(model)` says which); both paths give the same
numbers up to float rounding (tests/test_fastlm.py compares them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from zeroth.models.precision import autocast, compute_dtype

SUPPORTED = ("qwen2", "llama")


def supports(model, grad: bool = False) -> bool:
    """The lean path applies: a plain transformers Qwen2/Llama causal LM, full attention, SiLU
    MLP, no peft wrapper, not sharded; and for a pass with grad, no gradient checkpointing (that pass then
    takes transformers' path, which recomputes activations)."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in SUPPORTED:
        return False
    if hasattr(model, "peft_config") or hasattr(model, "get_base_model"):
        return False
    if hasattr(next(model.parameters()), "device_mesh"):  # FSDP: its hooks run in forward()
        return False
    checkpointing = getattr(model, "is_activation_checkpointing", None)  # transformers >= 5.20
    if checkpointing is None:  # older: the name newer ones deprecate (asking it warns there)
        checkpointing = getattr(model, "is_gradient_checkpointing", False)
    if grad and checkpointing:
        return False
    if getattr(cfg, "use_sliding_window", False) or getattr(cfg, "hidden_act", "silu") != "silu":
        return False
    if getattr(cfg, "attention_dropout", 0.0) and model.training:
        return False
    body = getattr(model, "model", None)
    return body is not None and hasattr(body, "layers") and hasattr(body, "rotary_emb")


def share_prompts(prompts: list[list[int]]) -> tuple[list[list[int]], list[int]]:
    """(distinct prompts, owner of each row): consecutive identical prompts (a group) share one."""
    distinct, owner = [], []
    for p in prompts:
        if not distinct or distinct[-1] != p:
            distinct.append(p)
        owner.append(len(distinct) - 1)
    return distinct, owner


def bucketed(model) -> bool:
    """Round the row counts of the model's products up to a few sizes (`rows_for`): bf16 on a
    CPU, where oneDNN builds (JIT-compiles) and caches a kernel for every new shape — 1.3 ms more
    per product at the default model's shapes, and a cache that grew a default run's memory from
    1.0 GiB (fp32) to 2.9 GiB when each batch's packed token count was a new shape."""
    return next(model.parameters()).device.type == "cpu" and compute_dtype(model) == torch.bfloat16


def rows_for(n: int, model) -> int:
    """n, or under `bucketed` the next of eight sizes per octave, a multiple of 64: at most
    max(63, n / 8) more rows, 48 sizes up to 16k."""
    if not bucketed(model):
        return n
    step = max(64, 1 << max(0, n.bit_length() - 4))
    return -(-n // step) * step


def left_pad(seqs: list[list[int]], pad_id: int, multiple: int = 1) -> tuple[Tensor, Tensor]:
    """ids (N, L) and a bool mask of real tokens (N, L), padded on the left to L, the longest
    length rounded up to `multiple`."""
    width = -(-max(len(s) for s in seqs) // multiple) * multiple
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    real = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        real[i, width - len(s):] = True
    return ids, real


def _prompts(model, distinct: list[list[int]], pad_id: int, device) -> tuple[Tensor, Tensor]:
    """`left_pad` of the distinct prompts on the model's device; under `bucketed` the width is
    a multiple of 8, so the prompt pass meets a few shapes, not one per longest prompt."""
    ids, real = left_pad(distinct, pad_id, 8 if bucketed(model) else 1)
    return ids.to(device), real.to(device)


def _spare(index: Tensor, size: int) -> Tensor:
    """`index` followed by zeros up to `size` entries: the spare rows of a rounded count
    (`rows_for`) read row 0, and what they compute is never read back."""
    return torch.cat([index, index.new_zeros(size - len(index))])


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary position embedding of x (N, heads, T, d) with cos/sin (N, 1, T, d)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def _heads(model) -> tuple[int, int, int]:
    cfg = model.config
    heads, kv = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", None)
    dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return heads, kv or heads, dim


def _qkv(attn, x: Tensor, cos: Tensor, sin: Tensor, heads: tuple[int, int, int]):
    """Rotated queries (N, H, T, d), keys and values (N, KV, T, d) of x (N, T, hidden)."""
    n, t, _ = x.shape
    h, kv, d = heads
    q = attn.q_proj(x).view(n, t, h, d).transpose(1, 2)
    k = attn.k_proj(x).view(n, t, kv, d).transpose(1, 2)
    v = attn.v_proj(x).view(n, t, kv, d).transpose(1, 2)
    return _rotate(q, cos, sin), _rotate(k, cos, sin), v


def _attend(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor | None, attn) -> Tensor:
    """softmax(q k^T * scale + mask) v, heads merged back: (N, T, H * d); `allowed` None:
    plain causal attention."""
    n, h, t, d = q.shape
    kind = q.device.type
    if torch.is_autocast_enabled(kind):  # bf16-mixed: attention stays float32 (on CPU, bf16's
        with torch.autocast(kind, enabled=False):  # flash-attention backward is slower)
            return _attend(q.float(), k.float(), v.float(), allowed, attn).to(
                torch.get_autocast_dtype(kind))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=attn.scaling,
                                         is_causal=allowed is None,
                                         enable_gqa=k.shape[1] != h)  # (N, H, T, d)
    return out.transpose(1, 2).reshape(n, t, h * d)


def _normed(norm, x: Tensor) -> Tensor:
    """norm(x), cast once to autocast's dtype when it is on: the projections that read it (q, k
    and v; gate and up) then find it cast already, instead of each casting it anew."""
    out = norm(x)
    kind = out.device.type
    return out.to(torch.get_autocast_dtype(kind)) if torch.is_autocast_enabled(kind) else out


def _mlp(layer, x: Tensor) -> Tensor:
    return x + layer.mlp(_normed(layer.post_attention_layernorm, x))


def _rope(model, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
    cos, sin = model.model.rotary_emb(x, positions)  # (N, T, d) each
    return cos.unsqueeze(1), sin.unsqueeze(1)


# ---------------------------------------------------------------------------------------------
# Prompts and completions in one pass: the reference pass and the update.
# ---------------------------------------------------------------------------------------------


def _prompt_mask(real: Tensor) -> Tensor:
    """(P, 1, L, L) causal attention among a left-padded prompt's real tokens; a pad position
    attends to itself only (its output is never read), so no row is all masked."""
    width = real.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    allowed = causal & real[:, None, :]  # (P, L, L)
    allowed |= torch.eye(width, dtype=torch.bool)
    return allowed[:, None]


def _completion_mask(prompt_real: Tensor, owner: Tensor, width: int) -> Tensor:
    """(B, 1, C, Lp + C): a completion token sees its prompt's real tokens and the completion
    tokens up to itself (right padding sits after every real token, so causality hides it)."""
    causal = torch.ones(width, width, dtype=torch.bool).tril()  # (C, C)
    prompt = prompt_real[owner][:, None, :].expand(-1, width, -1)  # (B, C, Lp)
    return torch.cat([prompt, causal.expand(len(owner), -1, -1)], dim=-1)[:, None]


class _Packed:
    """The completions' tokens packed into one (N, ...) batch for everything that works token
    by token (projections, MLP, norms: no FLOP on padding), and the map to the padded (B, C)
    grid that attention needs."""

    def __init__(self, completions: list[list[int]], owner: list[int], prompt_len: Tensor,
                 rows: int | None = None):
        device = prompt_len.device
        lengths = [len(c) for c in completions]
        self.rows, self.width = len(completions), max(1, max(lengths))
        def longs(values):
            return torch.tensor(values, dtype=torch.long, device=device)

        row = longs([i for i, n in enumerate(lengths) for _ in range(n)])
        col = longs([j for n in lengths for j in range(n)])
        self.count = len(row)  # N real tokens, then spare ones up to `rows` (`_spare`)
        size = rows or self.count
        self.ids = _spare(longs([t for c in completions for t in c]), size)  # token 0 when spare
        self.grid = row * self.width + col  # (N,) index into the flattened (B, C) grid
        self.gather = _spare(self.grid, size)  # (rows,) the grid cell each packed row reads
        positions = prompt_len[torch.tensor(owner, device=device)][row] + col  # (N,)
        self.positions = _spare(positions, size)
        first = torch.tensor(owner, device=device)[row]  # token 0 is predicted by the prompt
        offset = len(prompt_len) + torch.arange(len(row), device=device) - 1
        source = torch.where(col == 0, first, offset)  # (N,) into cat(prompt ends, tokens)
        self.source = _spare(source, size)  # (rows,): the LM head's rows

    def to_grid(self, x: Tensor) -> Tensor:
        """(rows, heads, d) -> (B, heads, C, d) of the N real tokens, zeros on padding."""
        grid = x.new_zeros((self.rows * self.width, *x.shape[1:]))
        grid = grid.index_copy(0, self.grid, x[: self.count])
        return grid.view(self.rows, self.width, *x.shape[1:]).transpose(1, 2)

    def from_grid(self, x: Tensor) -> Tensor:
        """(B, C, ...) -> (rows, ...): the real tokens' rows, then the spare ones'."""
        return x.reshape(self.rows * self.width, *x.shape[2:]).index_select(0, self.gather)


LOGIT_CHUNK = 2 ** 26  # logits per chunk (256 MiB in float32) when a batch's would be more


def _head_logprobs(model, hidden: Tensor, ids: Tensor, temperature: float) -> Tensor:
    """(N,) log-probs of ids (N,) from the final hidden states (N, hidden). When the (N, V)
    logits would pass LOGIT_CHUNK values (a real vocabulary of 150k and more than a few hundred
    tokens), the LM head runs chunk by chunk and, with grad, each chunk's logits are recomputed
    in the backward pass instead of kept: memory of one chunk, one more LM-head forward."""
    from torch.utils.checkpoint import checkpoint

    from zeroth.algorithms.losses import token_logprobs

    def piece(h: Tensor, t: Tensor) -> Tensor:
        return token_logprobs(model.lm_head(h)[None], t[None], temperature)[0]

    rows = max(1, LOGIT_CHUNK // model.lm_head.weight.shape[0])
    if len(ids) <= rows:
        return piece(hidden, ids)
    grad = torch.is_grad_enabled()
    return torch.cat([checkpoint(piece, hidden[i:i + rows], ids[i:i + rows], use_reentrant=False)
                      if grad else piece(hidden[i:i + rows], ids[i:i + rows])
                      for i in range(0, len(ids), rows)])


def completion_logprobs(model, prompts: list[list[int]], completions: list[list[int]],
                        pad_id: int, temperature: float) -> tuple[Tensor, Tensor]:
    """(logp (B, C), mask (B, C)): log-probs of each completion token under `model` at the
    sampling temperature, with the group's prompt run once and the completion tokens packed;
    with grad when grad is enabled. Every completion must have at least one token."""
    device = next(model.parameters()).device
    distinct, owner_list = share_prompts(prompts)
    owner = torch.tensor(owner_list, device=device)
    p_ids, p_real = _prompts(model, distinct, pad_id, device)  # (P, Lp)
    tokens = sum(len(c) for c in completions)
    pack = _Packed(completions, owner_list, p_real.sum(-1), rows_for(tokens, model))
    h, kv, d = heads = _heads(model)
    embed = model.get_input_embeddings()
    xp, xc = embed(p_ids), embed(pack.ids)  # (P, Lp, hidden), (N, hidden)
    rope_p = _rope(model, xp, (p_real.long().cumsum(-1) - 1).clamp(min=0))
    cos, sin = model.model.rotary_emb(xc[None], pack.positions[None])  # (1, N, d)
    rope_c = cos[0, :, None], sin[0, :, None]  # (N, 1, d)
    mask_p = _prompt_mask(p_real.cpu()).to(device)
    mask_c = _completion_mask(p_real.cpu(), owner.cpu(), pack.width).to(device)
    n = len(pack.ids)
    for layer in model.model.layers:
        attn = layer.self_attn
        qp, kp, vp = _qkv(attn, _normed(layer.input_layernorm, xp), *rope_p, heads)
        hc = _normed(layer.input_layernorm, xc)
        qc = _rotate(attn.q_proj(hc).view(n, h, d), *rope_c)
        kc = _rotate(attn.k_proj(hc).view(n, kv, d), *rope_c)
        vc = attn.v_proj(hc).view(n, kv, d)
        keys = torch.cat([kp[owner], pack.to_grid(kc)], dim=2)  # (B, KV, Lp + C, d)
        values = torch.cat([vp[owner], pack.to_grid(vc)], dim=2)
        xp = _mlp(layer, xp + attn.o_proj(_attend(qp, kp, vp, mask_p, attn)))
        o = _attend(pack.to_grid(qc), keys, values, mask_c, attn)  # (B, C, H * d)
        xc = _mlp(layer, xc + attn.o_proj(pack.from_grid(o)))
    hidden = model.model.norm(torch.cat([xp[:, -1], xc]))  # (P + N, hidden)
    logp = _head_logprobs(model, hidden.index_select(0, pack.source), pack.ids,
                          temperature)[: pack.count]
    grid = logp.new_zeros(pack.rows * pack.width).index_copy(0, pack.grid, logp)
    real = torch.zeros(pack.rows * pack.width, device=device).index_fill(0, pack.grid, 1.0)
    return grid.view(pack.rows, pack.width), real.view(pack.rows, pack.width)


def sequence_loss(model, ids: Tensor, labels: Tensor, items: int | None = None) -> Tensor:
    """Next-token cross-entropy of right-padded rows ids (B, T) against labels (B, T) (-100:
    not a target): the mean over the labelled targets, or their sum divided by `items` — what
    transformers' forward computes with labels (and num_items_in_batch), packed:

    - a row counts up to its last labelled token (what follows it changes no loss under causal
      attention), and those tokens are packed into one (N, hidden) batch for the projections,
      MLP and norms: no FLOP on padding, one pass whatever the rows' lengths;
    - attention runs on the (B, W) grid, W the longest kept row, plainly causal (the padding
      sits after every real token);
    - the output projection runs only where the next token is labelled (an SFT prompt costs no
      logits).
    Under bf16-mixed the attention stays float32 (`_attend`)."""
    h, kv, d = _heads(model)
    device, rows = ids.device, ids.shape[0]
    labelled = labels != -100  # (B, T)
    place = torch.arange(1, ids.shape[1] + 1, device=device)  # (T,)
    ends = (labelled * place).amax(dim=1, keepdim=True)  # (B, 1): one past the last target
    width = max(1, int(ends.max()))
    keep = place[None, :width] <= ends  # (B, W)
    grid = keep.flatten().nonzero().squeeze(1)  # (N,) the kept tokens in the flat (B * W) grid
    real = len(grid)
    n = rows_for(real, model)  # the packed rows: the N real tokens, then spare ones (unused)
    gather = _spare(grid, n)  # (n,) the grid cell each packed row reads
    x = model.get_input_embeddings()(ids[:, :width].flatten()[gather])  # (n, hidden)
    cos, sin = model.model.rotary_emb(x[None], (gather % width)[None])  # (1, n, d)
    rope = cos[0, :, None], sin[0, :, None]  # (n, 1, d)

    def to_grid(t: Tensor) -> Tensor:  # (n, heads, d) -> (B, heads, W, d), zeros on padding
        out = t.new_zeros((rows * width, *t.shape[1:])).index_copy(0, grid, t[:real])
        return out.view(rows, width, *t.shape[1:]).transpose(1, 2)

    for layer in model.model.layers:
        attn = layer.self_attn
        hn = _normed(layer.input_layernorm, x)
        q = _rotate(attn.q_proj(hn).view(n, h, d), *rope)
        k = _rotate(attn.k_proj(hn).view(n, kv, d), *rope)
        o = _attend(to_grid(q), to_grid(k), to_grid(attn.v_proj(hn).view(n, kv, d)), None, attn)
        x = _mlp(layer, x + attn.o_proj(o.reshape(rows * width, -1).index_select(0, gather)))
    predicts = torch.zeros_like(keep)  # (B, W): the positions whose next token is a target
    predicts[:, :-1] = labelled[:, 1:width]
    packed = torch.full((rows * width,), -1, dtype=torch.long, device=device)
    packed[grid] = torch.arange(real, device=device)  # grid index -> packed row
    source = packed[predicts.flatten()]  # (M,) row-major, as the targets below
    targeted = len(source)
    source = _spare(source, rows_for(targeted, model))
    logits = model.lm_head(model.model.norm(x.index_select(0, source)))[:targeted]  # (M, V)
    targets = labels[:, 1:width + 1][predicts[:, : labels.shape[1] - 1]]
    loss = F.cross_entropy(logits.float(), targets, reduction="sum")
    return loss / (len(targets) if items is None else items)


# ---------------------------------------------------------------------------------------------
# Generation: prefill each distinct prompt once, then one forward per token. The loop that
# samples the tokens is zeroth.rollout.decoder's (`Decoding` is its lean backend).
# ---------------------------------------------------------------------------------------------


def _prefill(model, p_ids: Tensor, p_real: Tensor, heads) -> tuple[Tensor, list, list]:
    """(last hidden (P, hidden), keys and values per layer (P, KV, Lp, d)) of the prompts."""
    x = model.get_input_embeddings()(p_ids)
    pos = (p_real.long().cumsum(-1) - 1).clamp(min=0)
    rope = _rope(model, x, pos)
    mask = _prompt_mask(p_real.cpu()).to(x.device)
    keys, values = [], []
    for layer in model.model.layers:
        attn = layer.self_attn
        q, k, v = _qkv(attn, _normed(layer.input_layernorm, x), *rope, heads)
        keys.append(k)
        values.append(v)
        x = _mlp(layer, x + attn.o_proj(_attend(q, k, v, mask, attn)))
    return model.model.norm(x[:, -1]), keys, values


def _linear(x: Tensor, weight_t: Tensor, bias: Tensor | None) -> Tensor:
    """x @ weight_t (+ bias) with the weight stored input-major (in, out), in the weight's
    dtype (bf16-mixed decoding: bf16 products, the residual stream stays float32)."""
    x = x.to(weight_t.dtype)
    return x @ weight_t if bias is None else torch.addmm(bias, x, weight_t)


def _fused(layer, dtype: torch.dtype) -> tuple:
    """The layer's decoding weights, input-major (a (64, in) @ (in, out) product runs faster
    than against the (out, in) layout) and fused: one matrix for q, k and v, one for the MLP's
    gate and up projections; two wide products per layer and token instead of five narrow ones.
    A copy in the compute `dtype` made once per generated batch (`Decoding.start`; decoding has
    no grad)."""
    attn, mlp = layer.self_attn, layer.mlp

    def joined(mods):
        bias = None if mods[0].bias is None else torch.cat([m.bias for m in mods]).to(dtype)
        return torch.cat([m.weight for m in mods]).t().to(dtype).contiguous(), bias

    def alone(mod):
        bias = None if mod.bias is None else mod.bias.to(dtype)
        return mod.weight.t().to(dtype).contiguous(), bias

    return (*joined([attn.q_proj, attn.k_proj, attn.v_proj]), *alone(attn.o_proj),
            *joined([mlp.gate_proj, mlp.up_proj]), *alone(mlp.down_proj))


def _norm(module, x: Tensor) -> Tensor:
    """The layer's RMSNorm as one fused call (the same formula as transformers' module)."""
    return F.rms_norm(x, (x.shape[-1],), module.weight, module.variance_epsilon)


def _decode_layer(layer, fused, x: Tensor, rope, heads, keys: Tensor, values: Tensor, col: int,
                  bias: Tensor) -> Tensor:
    """One layer for one new token per row: x (a, hidden); writes the token's key and value at
    column `col` of the layer's cache (a, KV, S, d) and attends over columns [0, col] with the
    additive mask `bias` (a, 1, 1, col + 1). Few, fused operations: decoding pays per call."""
    a = x.shape[0]
    h, kv, d = heads
    attn = layer.self_attn
    w_qkv, b_qkv, w_o, b_o, w_gu, b_gu, w_down, b_down = fused
    qkv = _linear(_norm(layer.input_layernorm, x), w_qkv, b_qkv).view(a, h + 2 * kv, 1, d)
    qkv = qkv.to(keys.dtype)  # attention in the cache's dtype (`attention_dtype`)
    qk = _rotate(qkv[:, : h + kv], *rope)  # queries and keys rotated together
    keys[:, :, col] = qk[:, h:, 0]
    values[:, :, col] = qkv[:, h + kv:, 0]
    q = (qk[:, :h] * attn.scaling).view(a, kv, h // kv, d)  # query heads sharing a key head
    scores = q @ keys[:, :, : col + 1].transpose(-1, -2)  # (a, KV, g, col + 1)
    scores += bias
    weights = torch.softmax(scores, dim=-1) if scores.dtype == torch.float32 else \
        torch.softmax(scores, dim=-1, dtype=torch.float32).to(scores.dtype)
    o = weights @ values[:, :, : col + 1]  # (a, KV, g, d)
    x = x + _linear(o.view(a, h * d), w_o, b_o)
    gate, up = _linear(_norm(layer.post_attention_layernorm, x), w_gu, b_gu).chunk(2, dim=-1)
    return x + _linear(F.silu(gate) * up, w_down, b_down)


def attention_dtype(model) -> torch.dtype:
    """The dtype of decoding's KV cache and attention: float32 on a CPU, as the training passes'
    attention under bf16-mixed (and a bf16 model's: on a CPU, a bf16 product with a slice of the
    cache copies the slice first, 0.7-1.7 ms per layer and token at 32M, where the float32 one
    reads it in place); elsewhere the compute dtype."""
    first = next(model.parameters())
    return torch.float32 if first.device.type == "cpu" else compute_dtype(model)


class Decoding:
    """The forward passes of one batch being generated (a backend of zeroth.rollout.decoder's
    loop): `start()` prefills each group's prompt once and gives the first logits (n, V);
    `step(token)` runs one token per row in the batch over a KV cache allocated once for the
    prompt and `max_new_tokens` tokens; `keep(index)` keeps only those rows in the batch (their
    cache rows), so no FLOP is spent on a finished row once it is dropped."""

    drops_rows = True

    def __init__(self, model, prompts: list[list[int]], pad_id: int, max_new_tokens: int):
        self.model, self.prompts, self.pad_id = model, prompts, pad_id
        self.max_new_tokens = max_new_tokens
        self.heads = _heads(model)

    def start(self) -> Tensor:
        """Prefill: the logits (n, V) of each row's first token."""
        model, n, new = self.model, len(self.prompts), self.max_new_tokens
        device = next(model.parameters()).device
        distinct, owner_list = share_prompts(self.prompts)
        owner = torch.tensor(owner_list, device=device)
        p_ids, p_real = _prompts(model, distinct, self.pad_id, device)
        with autocast(model):
            last, keys, values = _prefill(model, p_ids, p_real, self.heads)
            first = model.lm_head(last)[owner]  # (n, V)
        dt = compute_dtype(model)  # the weights of the steps
        at = attention_dtype(model)  # the cache, rotary table and attention
        self.width = width = p_ids.shape[1]
        self.cache_k, self.cache_v = [], []  # per layer (n, KV, width + new, d)
        for k, v in zip(keys, values):
            shape = (n, k.shape[1], width + new, k.shape[3])
            self.cache_k.append(k.new_empty(shape, dtype=at))
            self.cache_v.append(v.new_empty(shape, dtype=at))
            self.cache_k[-1][:, :, :width], self.cache_v[-1][:, :, :width] = k[owner], v[owner]
        self.bias = torch.full((n, 1, 1, width + new), float("-inf"), device=device,
                               dtype=at)  # 0 on the keys each row may attend to
        self.bias[:, 0, 0, :width].masked_fill_(p_real[owner], 0.0)
        self.pos = p_real.sum(-1)[owner]  # (n,) position of the next token
        self.table = tuple(c.to(at) for c in _rope(
            model, last[:1, None], torch.arange(width + new, device=device)[None]))  # (1, 1, S, d)
        self.fused = [_fused(layer, dt) for layer in model.model.layers]
        weight = model.lm_head.weight
        cast = weight.dtype != dt and model.lm_head.bias is None
        self.head = weight.to(dt) if cast else None  # bf16-mixed: cast once, not every step
        self.t = 0  # tokens fed so far
        return first

    def step(self, token: Tensor) -> Tensor:
        """The logits (a, V) after feeding token (a,) to each row in the batch."""
        model = self.model
        col = self.width + self.t
        self.bias[:, :, :, col] = 0.0
        x = model.get_input_embeddings()(token)  # (a, hidden)
        rope = tuple(c[0, 0, self.pos][:, None, None] for c in self.table)  # (a, 1, 1, d)
        for i, layer in enumerate(model.model.layers):
            x = _decode_layer(layer, self.fused[i], x, rope, self.heads, self.cache_k[i],
                              self.cache_v[i], col, self.bias[..., : col + 1])
        self.pos = self.pos + 1
        self.t += 1
        x = _norm(model.model.norm, x)
        return model.lm_head(x) if self.head is None else F.linear(x.to(self.head.dtype),
                                                                     self.head)

    def keep(self, index: Tensor) -> None:
        """Only the rows at `index` (ascending batch indices) stay in the batch."""
        self.pos, self.bias = self.pos[index], self.bias[index]
        self.cache_k = [c[index] for c in self.cache_k]
        self.cache_v = [c[index] for c in self.cache_v]

    def batch_for(self, rows: int) -> int:
        """The batch size that holds `rows` live rows: rounded up (`rows_for`) under bf16 on a
        CPU, so that decoding meets a few product shapes, not one per count of live rows."""
        return rows_for(rows, self.model)
