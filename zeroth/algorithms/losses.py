"""Policy losses of the GRPO family: per-token terms and their aggregation.

Notation as in zeroth.algorithms.advantages. Per-token quantities, with
ratio = exp(logp - old_logp):

    k3 KL         k3 = exp(ref - logp) - (ref - logp) - 1 >= 0, an unbiased estimate of
                  KL(pi || ref) when tokens are sampled from pi
    surrogate     loss = -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A)
    total         loss + beta * k3                                    (only if beta > 0)

Importance-sampling correction of the engine gap (`engine_weights`, TRL's definitions): the
tokens were sampled by an engine (vLLM) whose log-probs `eng` differ slightly from the
trainer's own `old` for the same policy. With the ratio r = exp(old - eng),

    token_truncate     w_t = min(r_t, cap)
    token_mask         w_t = r_t, or 0 where r_t > cap
    sequence_truncate  w_t = min(R, cap),   R = exp(sum_t m_t (old_t - eng_t)) = prod_t r_t
    sequence_mask      w_t = R, or 0 (the whole sequence) where R > cap

and the per-token surrogate (not the KL term) is multiplied by w before aggregation; a masked
token still counts in the aggregation's denominator.

Aggregation of a per-token loss l with mask m:

    seq      (GRPO)      mean_i [ sum_t m_it l_it / sum_t m_it ]
    token    (DAPO)      sum_it m_it l_it / sum_it m_it
    constant (Dr. GRPO)  sum_it m_it l_it / (B * C),   C = `constant`, default T

On several ranks each holds some rows of a batch; B and sum_it m_it are then the whole batch's
(`total`), so the ranks' losses sum to the loss world 1 computes, and so do their gradients.
A registered aggregation that takes no `total` serves one process only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from zeroth.algorithms import LOSS_AGGREGATIONS

# ---------------------------------------------------------------------------------------------
# Per-token terms
# ---------------------------------------------------------------------------------------------


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(pi || ref): exp(ref - logp) - (ref - logp) - 1, always >= 0."""
    d = ref_logp - logp  # (B, T)
    return torch.exp(d) - d - 1.0  # (B, T)


def clipped_surrogate(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, eps_low: float, eps_high: float
) -> tuple[Tensor, Tensor]:
    """PPO clipped surrogate with a decoupled clip range.

    Returns (per_token_loss (B, T), clipped (B, T) bool). `clipped` marks tokens where the clipped
    branch is the active one (strictly smaller objective), i.e. the tokens that get no gradient:
    A > 0 with ratio > 1 + eps_high, or A < 0 with ratio < 1 - eps_low.
    """
    adv = advantages.to(logp.dtype).unsqueeze(-1)  # (B, 1) broadcast over T
    ratio = torch.exp(logp - old_logp)  # (B, T)
    unclipped = ratio * adv  # (B, T)
    clipped_obj = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv  # (B, T)
    per_token = -torch.minimum(unclipped, clipped_obj)  # (B, T)
    clipped = (clipped_obj < unclipped).detach()  # (B, T) bool
    return per_token, clipped


# ---------------------------------------------------------------------------------------------
# Aggregation: (per_token (B, T), mask (B, T) float, constant) -> scalar
# ---------------------------------------------------------------------------------------------


def agg_seq(per_token: Tensor, mask: Tensor, constant: float | None,
            total: tuple | None = None) -> Tensor:
    # (B,); a row with no completion tokens contributes 0 and still counts in the mean over B
    per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    return per_seq.mean() if total is None else per_seq.sum() / total[0]


def agg_token(per_token: Tensor, mask: Tensor, constant: float | None,
              total: tuple | None = None) -> Tensor:
    tokens = mask.sum().clamp(min=1.0) if total is None else max(1.0, total[1])
    return (per_token * mask).sum() / tokens


def agg_constant(per_token: Tensor, mask: Tensor, constant: float | None,
                 total: tuple | None = None) -> Tensor:
    batch, length = per_token.shape
    c = float(length) if constant is None else float(constant)
    if c <= 0:
        raise ValueError(f"aggregation constant must be > 0, got {constant}")
    return (per_token * mask).sum() / ((batch if total is None else total[0]) * c)


def aggregate(per_token: Tensor, mask: Tensor, mode: str, constant: float | None = None,
              total: tuple[int, int] | None = None) -> Tensor:
    """Reduce a (B, T) per-token loss to a scalar over the masked tokens; see the module doc.
    `total`: (sequences, tokens) of the whole batch when these B rows are one rank's share of
    it; each rank's loss is then its part of the whole batch's, and the parts sum to it."""
    try:
        fn = LOSS_AGGREGATIONS[mode]
    except KeyError:
        valid = ", ".join(sorted(LOSS_AGGREGATIONS))
        raise ValueError(f"unknown loss aggregation {mode!r}; valid: {valid}") from None
    if per_token.dim() != 2 or mask.shape != per_token.shape:
        raise ValueError(
            f"per_token and mask must both be (B, T), got {tuple(per_token.shape)} "
            f"and {tuple(mask.shape)}"
        )
    mask = mask.to(per_token.dtype)
    return fn(per_token, mask, constant) if total is None else fn(per_token, mask, constant,
                                                                  total)


def _masked_mean(x: Tensor, mask: Tensor) -> float:
    return float((x * mask).sum() / mask.sum().clamp(min=1.0))


ENGINE_CORRECTIONS = ("none", "token_truncate", "token_mask", "sequence_truncate",
                      "sequence_mask")


@torch.no_grad()
def engine_weights(old_logp: Tensor, engine_logp: Tensor, mask: Tensor, mode: str,
                   cap: float) -> tuple[Tensor | None, dict[str, float]]:
    """Importance weights (B, T) for the engine gap (see the module doc; None for mode "none")
    and their stats: the mean and max |old - eng| over the masked tokens (logprob_gap,
    logprob_gap_max), and, when correcting, the weights' mean / min / max (per token, or per
    sequence in the sequence modes) and the share above the cap (is_capped)."""
    if mode not in ENGINE_CORRECTIONS:
        raise ValueError(f"unknown engine correction {mode!r}; valid: "
                         f"{', '.join(ENGINE_CORRECTIONS)}")
    m = mask.to(old_logp.dtype)  # (B, T)
    diff = (old_logp - engine_logp) * m  # (B, T) log r, 0 off the mask
    on = m.bool()
    gap = diff.abs()[on]
    stats = {"logprob_gap": float(gap.mean()) if gap.numel() else 0.0,
             "logprob_gap_max": float(gap.max()) if gap.numel() else 0.0}
    if mode == "none":
        return None, stats
    if mode.startswith("sequence"):
        ratio = diff.sum(-1, keepdim=True).exp()  # (B, 1) prod of the token ratios
        counted = on.any(-1, keepdim=True)  # (B, 1) rows with a completion token
    else:
        ratio, counted = diff.exp(), on  # (B, T)
    above = ratio > cap
    weights = ratio.clamp(max=cap) if mode.endswith("truncate") else ratio.masked_fill(above, 0.0)
    shown = weights[counted]
    if shown.numel():
        stats.update(is_weight_mean=float(shown.mean()), is_weight_min=float(shown.min()),
                     is_weight_max=float(shown.max()),
                     is_capped=float(above[counted].float().mean()))
    return weights.expand_as(m) * m, stats


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps_low: float,
    eps_high: float,
    loss_agg: str,
    ref_logp: Tensor | None = None,
    beta: float = 0.0,
    agg_constant: float | None = None,
    is_weights: Tensor | None = None,
    total: tuple[int, int] | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Clipped surrogate (times `is_weights` (B, T), the engine-gap correction, when given;
    + beta * k3 KL when beta > 0), aggregated over the masked tokens.

    `total`: the whole batch's (sequences, tokens) when this is one rank's share (`aggregate`).
    Returns (scalar loss with grad, stats). Stats are python floats over the masked tokens:
    clip_frac (share of clipped tokens), kl (mean k3, reported whenever ref_logp is given, even
    with beta == 0, where it stays out of the loss; else 0.0) and ratio_mean.
    """
    if beta > 0 and ref_logp is None:
        raise ValueError("beta > 0 needs ref_logp (the reference model's log-probs)")
    per_token, clipped = clipped_surrogate(logp, old_logp, advantages, eps_low, eps_high)
    if is_weights is not None:
        per_token = per_token * is_weights.detach()
    kl = None
    if ref_logp is not None:
        with torch.set_grad_enabled(beta > 0 and torch.is_grad_enabled()):
            kl = kl_k3(logp, ref_logp)  # (B, T); no graph when it is only a statistic
        if beta > 0:
            per_token = per_token + beta * kl
    loss = aggregate(per_token, mask, loss_agg, agg_constant, total)

    m = mask.detach().to(per_token.dtype)  # (B, T)
    with torch.no_grad():
        stats = {
            "clip_frac": _masked_mean(clipped.to(m.dtype), m),
            "kl": 0.0 if kl is None else _masked_mean(kl.detach(), m),
            "ratio_mean": _masked_mean(torch.exp(logp.detach() - old_logp.detach()), m),
        }
    return loss, stats


# ---------------------------------------------------------------------------------------------
# Log-probs
# ---------------------------------------------------------------------------------------------


def token_logprobs(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> Tensor:
    """log softmax(logits / temperature) at `tokens`: logits (B, T, V), tokens (B, T) -> (B, T).

    Uses gather - logsumexp, so no (B, T, V) log-softmax tensor is kept for the backward pass.
    Half-precision logits are upcast to float32 first.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature  # (B, T, V)
    picked = logits.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)  # (B, T)
    return picked - torch.logsumexp(logits, dim=-1)  # (B, T)
