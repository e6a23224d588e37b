"""The GRPO family: advantage estimators and policy losses as small pure tensor functions
(zeroth.algorithms.advantages, zeroth.algorithms.losses), and the algorithms as presets.

`rl.algorithm` names a preset (ALGORITHMS below) that fills every rl field left null;
`rl.advantage` and `rl.loss_agg` name entries of the ADVANTAGES and LOSS_AGGREGATIONS
registries. This module imports no torch, so config checks read all three at once; a new
estimator is one function and one registry entry.
"""

from __future__ import annotations

from zeroth.registry import Registry

ADVANTAGES = Registry("advantage estimator", {  # (rewards (N,), G, scale, eps) -> (N,)
    "grpo": "zeroth.algorithms.advantages:grpo_advantages",
    "dr_grpo": "zeroth.algorithms.advantages:dr_grpo_advantages",
    "rloo": "zeroth.algorithms.advantages:rloo_advantages",
    "reinforce_pp": "zeroth.algorithms.advantages:reinforce_pp_advantages",
})

LOSS_AGGREGATIONS = Registry("loss aggregation", {  # (per_token, mask, constant[, total])
    "seq": "zeroth.algorithms.losses:agg_seq",
    "token": "zeroth.algorithms.losses:agg_token",
    "constant": "zeroth.algorithms.losses:agg_constant",
})

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
