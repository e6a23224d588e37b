"""Advantages and policy losses of the GRPO family, as small pure tensor functions.

Notation: a batch holds N = n_groups * G completions; consecutive rows are one group (G samples
of the same prompt), r is the (N,) vector of scalar rewards, mean_g/std_g are taken over a group.
Per-token tensors are (B, T) with B = N completions padded to T tokens; `mask` marks real
completion tokens.

Advantages (one scalar per completion, broadcast over its tokens):

    grpo          A_i = (r_i - mean_g(r)) / (std_g(r) + eps)         (std part only if scale)
    dr_grpo       A_i =  r_i - mean_g(r)                             (never scaled)
    rloo          A_i =  r_i - mean_{j != i} r_j = G / (G - 1) * (r_i - mean_g(r))
                         (/ (std_g(r) + eps) if scale; off by default)
    reinforce_pp  A_i = (r_i - mean_g(r)) / (std_batch(r - mean_g(r)) + eps)  (std part if scale)

Per-token quantities, with ratio = exp(logp - old_logp):

    k3 KL         k3 = exp(ref - logp) - (ref - logp) - 1 >= 0, an unbiased estimate of
                  KL(pi || ref) when tokens are sampled from pi
    surrogate     loss = -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A)
    total         loss + beta * k3                                    (only if beta > 0)

Aggregation of a per-token loss l with mask m:

    seq      (GRPO)      mean_i [ sum_t m_it l_it / sum_t m_it ]
    token    (DAPO)      sum_it m_it l_it / sum_it m_it
    constant (Dr. GRPO)  sum_it m_it l_it / (B * C),   C = `constant`, default T

Where we depart from the papers, and choices the papers leave open:

- std is the unbiased (Bessel-corrected, divide by G - 1) estimate, as TRL's GRPOTrainer does;
  the GRPO paper does not say. eps = 1e-4 is added to the std, outside the square root, also as
  in TRL. A group of identical rewards gives A = 0, never 0 / 0. With G = 1 (or a batch of one)
  the std falls back to the biased estimate, which is 0, so A = 0 rather than NaN.
- dr_grpo takes `scale` only to share the signature and ignores it. Dr. GRPO also removes the
  per-sequence length normalisation: pair it with loss_agg="constant" to get the paper's loss.
- Dr. GRPO divides by the maximum generation length; `aggregate(..., "constant")` defaults to
  the padded length T of the batch, which equals it when completions are padded to the max.
  Pass `constant` explicitly to get a normaliser that does not change from batch to batch.
- reinforce_pp follows the "REINFORCE++-baseline" variant: group mean as baseline, then a
  normalisation by the std over the whole batch. OpenRLHF also subtracts the batch mean there;
  after centring each group the batch mean is already 0, so we only divide. REINFORCE++ puts
  the KL penalty into the reward; here KL is always the separate k3 loss term, as in GRPO.
- The decoupled clip range (eps_low, eps_high) is DAPO's clip-higher; eps_low == eps_high is
  the PPO/GRPO clip. No dual-clip. DAPO's dynamic sampling and overlong penalty live in
  `zeroth.train` and `zeroth.rewards.shaping`.
- The KL term is added per token before aggregation (as the GRPO paper writes it), so it is
  normalised in the same way as the surrogate.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

# ---------------------------------------------------------------------------------------------
# Advantages: (rewards (N,), group_size, scale, eps) -> (N,)
# ---------------------------------------------------------------------------------------------


def _groups(rewards: Tensor, group_size: int, min_size: int = 1) -> Tensor:
    """Check the shapes and return rewards as (n_groups, G) floats."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (N,), got shape {tuple(rewards.shape)}")
    if group_size < min_size:
        raise ValueError(f"group_size must be >= {min_size}, got {group_size}")
    if rewards.numel() % group_size != 0:
        raise ValueError(
            f"number of rewards ({rewards.numel()}) is not a multiple of group_size ({group_size})"
        )
    return rewards.float().view(-1, group_size)  # (n_groups, G)


def _std(x: Tensor, dim: int | None = None) -> Tensor:
    """Unbiased std; falls back to the biased one (0) when there is a single element."""
    n = x.numel() if dim is None else x.shape[dim]
    correction = 1 if n > 1 else 0
    if dim is None:
        return x.std(correction=correction)
    return x.std(dim=dim, keepdim=True, correction=correction)


def grpo_advantages(
    rewards: Tensor, group_size: int, scale: bool = True, eps: float = 1e-4
) -> Tensor:
    """GRPO: reward minus its group mean, divided by the group's unbiased std + eps if `scale`."""
    r = _groups(rewards, group_size)  # (n_groups, G)
    adv = r - r.mean(dim=1, keepdim=True)  # (n_groups, G)
    if scale:
        adv = adv / (_std(r, dim=1) + eps)  # (n_groups, 1) broadcast
    return adv.reshape(-1)  # (N,)


def dr_grpo_advantages(
    rewards: Tensor, group_size: int, scale: bool = False, eps: float = 1e-4
) -> Tensor:
    """Dr. GRPO: GRPO advantages without the std scaling; `scale` and `eps` are ignored."""
    return grpo_advantages(rewards, group_size, scale=False, eps=eps)  # (N,)


def rloo_advantages(
    rewards: Tensor, group_size: int, scale: bool = False, eps: float = 1e-4
) -> Tensor:
    """RLOO: reward minus the mean of the other G - 1 rewards of its group (G >= 2)."""
    r = _groups(rewards, group_size, min_size=2)  # (n_groups, G)
    loo_mean = (r.sum(dim=1, keepdim=True) - r) / (group_size - 1)  # (n_groups, G)
    adv = r - loo_mean  # (n_groups, G) == G / (G - 1) * (r - mean)
    if scale:
        adv = adv / (_std(r, dim=1) + eps)
    return adv.reshape(-1)  # (N,)


def reinforce_pp_advantages(
    rewards: Tensor, group_size: int, scale: bool = True, eps: float = 1e-4
) -> Tensor:
    """REINFORCE++-baseline: subtract the group mean, then divide by the batch-wide std."""
    r = _groups(rewards, group_size)  # (n_groups, G)
    adv = (r - r.mean(dim=1, keepdim=True)).reshape(-1)  # (N,)
    if scale:
        adv = adv / (_std(adv) + eps)  # scalar std over the whole batch
    return adv  # (N,)


ADVANTAGES: dict[str, Callable[[Tensor, int, bool, float], Tensor]] = {
    "grpo": grpo_advantages,
    "dr_grpo": dr_grpo_advantages,
    "rloo": rloo_advantages,
    "reinforce_pp": reinforce_pp_advantages,
}

# The algorithm family by name: what `rl.algorithm` sets for every rl field left null.
# `overlong` adds the soft overlong penalty reward (weight 1) unless the recipe weights it itself.
#   grpo          DeepSeekMath / R1: group mean/std, per-sequence mean, symmetric clip, k3 KL
#                 with R1's beta = 0.001
#   dr_grpo       "Understanding R1-Zero-like training": no std, no per-length normalisation
#                 (sum over tokens / max_new_tokens), no KL
#   dapo          clip-higher 0.2 / 0.28, token-level mean, dynamic sampling, soft overlong
#                 penalty, no KL, group mean/std kept
#   rloo          "Back to Basics": leave-one-out baseline, no std; the whole completion is one
#                 action (sum of its token log-probs), hence the constant normaliser, not seq
#   reinforce_pp  REINFORCE++-baseline: group mean, batch std, token-level mean (OpenRLHF)
ALGORITHMS: dict[str, dict] = {
    "grpo": {"advantage": "grpo", "scale_rewards": True, "loss_agg": "seq", "eps_low": 0.2,
             "eps_high": 0.2, "beta": 0.001, "dynamic_sampling": False, "overlong": False},
    "dr_grpo": {"advantage": "dr_grpo", "scale_rewards": False, "loss_agg": "constant",
                "eps_low": 0.2, "eps_high": 0.2, "beta": 0.0, "dynamic_sampling": False,
                "overlong": False},
    "dapo": {"advantage": "grpo", "scale_rewards": True, "loss_agg": "token", "eps_low": 0.2,
             "eps_high": 0.28, "beta": 0.0, "dynamic_sampling": True, "overlong": True},
    "rloo": {"advantage": "rloo", "scale_rewards": False, "loss_agg": "constant", "eps_low": 0.2,
             "eps_high": 0.2, "beta": 0.001, "dynamic_sampling": False, "overlong": False},
    "reinforce_pp": {"advantage": "reinforce_pp", "scale_rewards": True, "loss_agg": "token",
                     "eps_low": 0.2, "eps_high": 0.2, "beta": 0.001, "dynamic_sampling": False,
                     "overlong": False},
}

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


def _agg_seq(per_token: Tensor, mask: Tensor, constant: float | None) -> Tensor:
    # (B,); a row with no completion tokens contributes 0 and still counts in the mean over B
    per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    return per_seq.mean()


def _agg_token(per_token: Tensor, mask: Tensor, constant: float | None) -> Tensor:
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


def _agg_constant(per_token: Tensor, mask: Tensor, constant: float | None) -> Tensor:
    batch, length = per_token.shape
    c = float(length) if constant is None else float(constant)
    if c <= 0:
        raise ValueError(f"aggregation constant must be > 0, got {constant}")
    return (per_token * mask).sum() / (batch * c)


AGGREGATIONS: dict[str, Callable[[Tensor, Tensor, float | None], Tensor]] = {
    "seq": _agg_seq,
    "token": _agg_token,
    "constant": _agg_constant,
}


def aggregate(per_token: Tensor, mask: Tensor, mode: str, constant: float | None = None) -> Tensor:
    """Reduce a (B, T) per-token loss to a scalar over the masked tokens; see the module doc."""
    try:
        fn = AGGREGATIONS[mode]
    except KeyError:
        valid = ", ".join(sorted(AGGREGATIONS))
        raise ValueError(f"unknown loss aggregation {mode!r}; valid: {valid}") from None
    if per_token.dim() != 2 or mask.shape != per_token.shape:
        raise ValueError(
            f"per_token and mask must both be (B, T), got {tuple(per_token.shape)} "
            f"and {tuple(mask.shape)}"
        )
    return fn(per_token, mask.to(per_token.dtype), constant)


def _masked_mean(x: Tensor, mask: Tensor) -> float:
    return float((x * mask).sum() / mask.sum().clamp(min=1.0))


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
) -> tuple[Tensor, dict[str, float]]:
    """Clipped surrogate (+ beta * k3 KL when beta > 0), aggregated over the masked tokens.

    Returns (scalar loss with grad, stats). Stats are python floats over the masked tokens:
    clip_frac (share of clipped tokens), kl (mean k3, reported whenever ref_logp is given, even
    with beta == 0, where it stays out of the loss; else 0.0) and ratio_mean.
    """
    if beta > 0 and ref_logp is None:
        raise ValueError("beta > 0 needs ref_logp (the reference model's log-probs)")
    per_token, clipped = clipped_surrogate(logp, old_logp, advantages, eps_low, eps_high)
    kl = None
    if ref_logp is not None:
        with torch.set_grad_enabled(beta > 0 and torch.is_grad_enabled()):
            kl = kl_k3(logp, ref_logp)  # (B, T); no graph when it is only a statistic
        if beta > 0:
            per_token = per_token + beta * kl
    loss = aggregate(per_token, mask, loss_agg, agg_constant)

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
