"""Advantages of the GRPO family: group-relative baselines, one scalar per completion.

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
  `zeroth.stages.rl` and `zeroth.rewards.shaping`.
- The KL term is added per token before aggregation (as the GRPO paper writes it), so it is
  normalised in the same way as the surrogate.
"""


from __future__ import annotations

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
