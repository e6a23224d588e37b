"""zeroth.algorithms against numbers worked out by hand (derivations in the comments)."""

import math

import pytest
import torch

from zeroth.algorithms import ADVANTAGES, LOSS_AGGREGATIONS
from zeroth.algorithms.advantages import grpo_advantages, reinforce_pp_advantages, rloo_advantages
from zeroth.algorithms.losses import (
    aggregate,
    clipped_surrogate,
    kl_k3,
    policy_loss,
    token_logprobs,
)

LN2 = math.log(2.0)
# Two groups of four: one mixed (two right, two wrong), one where every sample is right.
REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])


def close(actual, expected, tol=1e-5):
    expected = torch.as_tensor(expected, dtype=torch.float32)
    torch.testing.assert_close(actual.float(), expected, atol=tol, rtol=tol)


# ----------------------------------------------------------------------------- advantages


def test_grpo_without_scaling_is_reward_minus_group_mean():
    # group 1: mean 0.5 -> [0.5, -0.5, -0.5, 0.5]; group 2: all equal -> zeros
    adv = grpo_advantages(REWARDS, 4, scale=False)
    close(adv, [0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0, 0.0])


def test_grpo_with_scaling_uses_unbiased_group_std():
    # group 1: squared deviations 4 * 0.25 = 1, unbiased var = 1 / 3, std = 0.5773503
    #   0.5 / (0.5773503 + 1e-4) = 0.8658754
    # group 2: std 0 -> 0 / (0 + 1e-4) = 0, never NaN
    adv = grpo_advantages(REWARDS, 4)
    a = 0.8658754
    close(adv, [a, -a, -a, a, 0.0, 0.0, 0.0, 0.0])
    # eps = 0 on the mixed group alone: 0.5 / sqrt(1/3) = 0.5 * sqrt(3) = 0.8660254
    adv0 = grpo_advantages(REWARDS[:4], 4, scale=True, eps=0.0)
    close(adv0, [0.8660254, -0.8660254, -0.8660254, 0.8660254])


def test_grpo_group_of_one_gives_zero_not_nan():
    # each reward is its own group mean, and the std falls back to 0
    close(grpo_advantages(torch.tensor([3.0, -1.0]), 1), [0.0, 0.0])


def test_dr_grpo_never_scales():
    # same as unscaled GRPO even when asked to scale
    adv = ADVANTAGES["dr_grpo"](REWARDS, 4, True, 1e-4)
    close(adv, [0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0, 0.0])


def test_rloo_leave_one_out_baseline():
    # [1, 0, 0, 1]: 1 - mean(0, 0, 1) = 2/3, 0 - mean(1, 0, 1) = -2/3
    # [3, 0, 0, 0]: 3 - 0 = 3, 0 - mean(3, 0, 0) = -1   (= 4/3 * (r - 0.75))
    # [1, 1, 1, 1]: 0
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    adv = rloo_advantages(rewards, 4)
    t = 2.0 / 3.0
    close(adv, [t, -t, -t, t, 3.0, -1.0, -1.0, -1.0, 0.0, 0.0, 0.0, 0.0])
    # with scale: group 1 std sqrt(1/3) -> (2/3) / 0.5773503 = 1.1547005 (eps = 0)
    adv_s = rloo_advantages(rewards[:4], 4, scale=True, eps=0.0)
    close(adv_s, [1.1547005, -1.1547005, -1.1547005, 1.1547005])


def test_rloo_needs_two_samples_per_group():
    with pytest.raises(ValueError, match="group_size"):
        rloo_advantages(torch.tensor([1.0, 0.0]), 1)


def test_reinforce_pp_divides_by_batch_std():
    # centred: [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]; sum of squares 1 over 8 values,
    # unbiased var 1 / 7, std 0.3779645; 0.5 / 0.3779645 = 1.3228757 (eps = 0)
    # (GRPO would give 0.8660254 here: the all-right group dilutes the batch std)
    adv = reinforce_pp_advantages(REWARDS, 4, scale=True, eps=0.0)
    a = 1.3228757
    close(adv, [a, -a, -a, a, 0.0, 0.0, 0.0, 0.0])
    close(reinforce_pp_advantages(REWARDS, 4, scale=False), [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0])


def test_advantage_registry_shares_one_signature():
    assert set(ADVANTAGES) == {"grpo", "dr_grpo", "rloo", "reinforce_pp"}
    for name, fn in ADVANTAGES.items():
        adv = fn(REWARDS, 4, True, 1e-4)
        assert adv.shape == (8,), name
        # every estimator sums to zero within a group
        close(adv.view(2, 4).sum(dim=1), [0.0, 0.0])


def test_advantages_reject_ragged_groups():
    with pytest.raises(ValueError, match="multiple"):
        grpo_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="1-D"):
        grpo_advantages(torch.zeros(2, 4), 4)


# ----------------------------------------------------------------------------- KL


def test_kl_k3_known_points():
    # logp = log 0.5, ref = log 0.25: d = ref - logp = -ln 2, e^d = 0.5
    #   k3 = 0.5 + ln 2 - 1 = 0.1931472
    # logp = log 0.25, ref = log 0.5: d = ln 2, e^d = 2  ->  k3 = 2 - ln 2 - 1 = 0.3068528
    # equal log-probs: 1 - 0 - 1 = 0
    logp = torch.tensor([[math.log(0.5), math.log(0.25), -1.3]])
    ref = torch.tensor([[math.log(0.25), math.log(0.5), -1.3]])
    close(kl_k3(logp, ref), [[0.1931472, 0.3068528, 0.0]])
    assert abs(0.1931472 - (LN2 - 0.5)) < 1e-7


def test_kl_k3_is_never_negative():
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(4, 16, generator=g) * 5
    ref = -torch.rand(4, 16, generator=g) * 5
    assert (kl_k3(logp, ref) >= 0).all()


# ----------------------------------------------------------------------------- clipping


def _logp(ratios):
    # old_logp = 0, so exp(logp - old_logp) is the given ratio
    return torch.log(torch.tensor(ratios)), torch.zeros(len(ratios), len(ratios[0]))


def test_clipped_surrogate_both_sides_both_signs():
    # eps_low 0.2 -> lower bound 0.8, eps_high 0.28 -> upper bound 1.28
    # A = +1: ratio 1.1 -> -1.1 (inside)
    #         ratio 1.5 -> min(1.5, 1.28) = 1.28 -> -1.28, clipped
    #         ratio 0.5 -> min(0.5, 0.8) = 0.5 -> -0.5, not clipped (pessimistic side)
    # A = -1: ratio 1.1 -> 1.1 (inside)
    #         ratio 1.5 -> min(-1.5, -1.28) = -1.5 -> 1.5, not clipped
    #         ratio 0.5 -> min(-0.5, -0.8) = -0.8 -> 0.8, clipped
    logp, old = _logp([[1.1, 1.5, 0.5], [1.1, 1.5, 0.5]])
    loss, clipped = clipped_surrogate(logp, old, torch.tensor([1.0, -1.0]), 0.2, 0.28)
    close(loss, [[-1.1, -1.28, -0.5], [1.1, 1.5, 0.8]])
    assert clipped.tolist() == [[False, True, False], [False, False, True]]


def test_clip_low_and_high_are_separate():
    # A = +1 at ratio 1.25, A = -1 at ratio 0.75
    logp, old = _logp([[1.25], [0.75]])
    adv = torch.tensor([1.0, -1.0])
    # eps_low 0.2, eps_high 0.28: 1.25 < 1.28 inside -> -1.25; 0.75 < 0.8 clipped -> 0.8
    loss, clipped = clipped_surrogate(logp, old, adv, eps_low=0.2, eps_high=0.28)
    close(loss, [[-1.25], [0.8]])
    assert clipped.tolist() == [[False], [True]]
    # eps_low 0.3, eps_high 0.2: 1.25 > 1.2 clipped -> -1.2; 0.75 > 0.7 inside -> 0.75
    loss, clipped = clipped_surrogate(logp, old, adv, eps_low=0.3, eps_high=0.2)
    close(loss, [[-1.2], [0.75]])
    assert clipped.tolist() == [[True], [False]]


# ----------------------------------------------------------------------------- aggregation

# Ragged mask: row 0 has 3 tokens, row 1 has 1; padding holds 100 to show it is ignored.
PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0, 100.0], [10.0, 100.0, 100.0, 100.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])


def test_three_aggregations_differ_on_ragged_mask():
    # seq:      mean(mean(1, 2, 3), mean(10)) = mean(2, 10) = 6
    # token:    (1 + 2 + 3 + 10) / 4 tokens = 4
    # constant: 16 / (B * T) = 16 / (2 * 4) = 2; with constant 8: 16 / (2 * 8) = 1
    close(aggregate(PER_TOKEN, MASK, "seq"), 6.0)
    close(aggregate(PER_TOKEN, MASK, "token"), 4.0)
    close(aggregate(PER_TOKEN, MASK, "constant"), 2.0)
    close(aggregate(PER_TOKEN, MASK, "constant", constant=8), 1.0)
    close(aggregate(PER_TOKEN, MASK.bool(), "seq"), 6.0)  # bool masks work too
    assert set(LOSS_AGGREGATIONS) == {"seq", "token", "constant"}


def test_unknown_aggregation_names_valid_ones():
    with pytest.raises(ValueError, match="constant, seq, token"):
        aggregate(PER_TOKEN, MASK, "sum")


# ----------------------------------------------------------------------------- policy loss


def test_on_policy_loss_is_minus_mean_advantage():
    # old_logp == logp: ratio 1, per-token loss = -A; A = [1, -1], mask row lengths 3 and 1
    # seq: mean(-1, +1) = 0; token: (-1 * 3 + 1) / 4 = -0.5; constant: -2 / (2 * 4) = -0.25
    logp = torch.full((2, 4), -0.7, requires_grad=True)
    adv = torch.tensor([1.0, -1.0])
    expected = {"seq": 0.0, "token": -0.5, "constant": -0.25}
    for mode, value in expected.items():
        loss, stats = policy_loss(
            logp, logp.detach(), adv, MASK, eps_low=0.2, eps_high=0.28, loss_agg=mode
        )
        close(loss, value)
        assert loss.requires_grad
        assert stats == {"clip_frac": 0.0, "kl": 0.0, "ratio_mean": 1.0}


def test_beta_zero_ignores_ref_logp():
    logp = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5]]))
    ref = torch.log(torch.tensor([[0.25, 0.25], [0.25, 0.25]]))
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    adv = torch.tensor([1.0, -1.0])
    kw = {"eps_low": 0.2, "eps_high": 0.28, "loss_agg": "token"}
    # surrogate per token: row 0 -> -1, -1; row 1 -> +1 (one token); token mean -1/3
    no_ref, _ = policy_loss(logp, logp, adv, mask, **kw)
    with_ref, stats = policy_loss(logp, logp, adv, mask, ref_logp=ref, beta=0.0, **kw)
    close(no_ref, -1.0 / 3.0)
    close(with_ref, -1.0 / 3.0)
    # the KL is still reported: every token has k3 = ln 2 - 0.5 = 0.1931472
    assert stats["kl"] == pytest.approx(0.1931472, abs=1e-6)
    # beta 0.1 adds 0.1 * 0.1931472 to every token: -0.3333333 + 0.0193147 = -0.3140186
    with_kl, _ = policy_loss(logp, logp, adv, mask, ref_logp=ref, beta=0.1, **kw)
    close(with_kl, -0.3140186)


def test_beta_without_ref_is_an_error():
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="ref_logp"):
        policy_loss(
            x,
            x,
            torch.ones(1),
            torch.ones(1, 2),
            eps_low=0.2,
            eps_high=0.2,
            loss_agg="seq",
            beta=0.1,
        )


def test_stats_clip_frac_and_ratio_mean():
    # A = +1, ratios [1.1, 1.5, 0.5, 9.0(padding)], mask 3 tokens: only 1.5 is clipped
    # clip_frac = 1 / 3; ratio_mean = (1.1 + 1.5 + 0.5) / 3 = 1.0333333
    logp, old = _logp([[1.1, 1.5, 0.5, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    _, stats = policy_loss(
        logp, old, torch.ones(1), mask, eps_low=0.2, eps_high=0.28, loss_agg="seq"
    )
    assert stats["clip_frac"] == pytest.approx(1.0 / 3.0, abs=1e-6)
    assert stats["ratio_mean"] == pytest.approx(1.0333333, abs=1e-6)
    assert stats["kl"] == 0.0
    assert all(isinstance(v, float) for v in stats.values())


def test_gradient_unclipped_clipped_and_masked():
    # A = 2, old_logp = 0, ratios [1.1, 1.5, 1.0], mask [1, 1, 0], "seq" -> divide by 2 tokens
    # token 0: loss = -A * ratio / 2, d/dlogp = -A * ratio / 2 = -2 * 1.1 / 2 = -1.1
    # token 1: ratio 1.5 > 1.28, clipped branch is constant -> 0
    # token 2: masked -> 0
    logp, old = _logp([[1.1, 1.5, 1.0]])
    logp.requires_grad_(True)
    loss, _ = policy_loss(
        logp,
        old,
        torch.tensor([2.0]),
        torch.tensor([[1.0, 1.0, 0.0]]),
        eps_low=0.2,
        eps_high=0.28,
        loss_agg="seq",
    )
    loss.backward()
    close(logp.grad, [[-1.1, 0.0, 0.0]])


def test_gradient_of_kl_term():
    # one token, on-policy (ratio 1), A = 1, logp = log 0.5, ref = log 0.25, beta = 0.5
    # d(-ratio * A)/dlogp = -1; dk3/dlogp = 1 - exp(ref - logp) = 1 - 0.5 = 0.5
    # total: -1 + 0.5 * 0.5 = -0.75
    logp = torch.tensor([[math.log(0.5)]], requires_grad=True)
    ref = torch.tensor([[math.log(0.25)]])
    loss, _ = policy_loss(
        logp,
        logp.detach(),
        torch.ones(1),
        torch.ones(1, 1),
        eps_low=0.2,
        eps_high=0.28,
        loss_agg="token",
        ref_logp=ref,
        beta=0.5,
    )
    loss.backward()
    close(logp.grad, [[-0.75]])


# ----------------------------------------------------------------------------- log-probs


def test_token_logprobs_known_values():
    # logits = log([0.2, 0.3, 0.5]) -> softmax is those probabilities, token 1 -> log 0.3
    # temperature 2 -> probs proportional to sqrt(p): 0.5477226 / (0.4472136 + 0.5477226
    #   + 0.7071068) = 0.3223670 -> log = -1.1338157
    # logits [1, 2, 3], token 2 -> 3 - log(e + e^2 + e^3) = 3 - 3.4076060 = -0.4076060
    logits = torch.log(torch.tensor([[[0.2, 0.3, 0.5], [0.2, 0.3, 0.5]]]))
    tokens = torch.tensor([[1, 0]])
    close(token_logprobs(logits, tokens), [[math.log(0.3), math.log(0.2)]])
    close(token_logprobs(logits[:, :1], tokens[:, :1], temperature=2.0), [[-1.1338157]])
    close(token_logprobs(torch.tensor([[[1.0, 2.0, 3.0]]]), torch.tensor([[2]])), [[-0.4076060]])


def test_token_logprobs_matches_manual_log_softmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g)
    tokens = torch.randint(0, 11, (2, 5), generator=g)
    for temp in (1.0, 0.7):
        manual = torch.empty(2, 5)
        for b in range(2):
            for t in range(5):
                row = logits[b, t] / temp
                manual[b, t] = row[tokens[b, t]] - torch.log(torch.exp(row).sum())
        out = token_logprobs(logits, tokens, temperature=temp)
        assert out.shape == (2, 5)
        close(out, manual)


# ----------------------------------------------------------------------------- by name


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "dapo", "rloo", "reinforce_pp"])
def test_each_algorithm_name_resolves_to_its_table_row(name):
    from zeroth.algorithms import ALGORITHMS
    from zeroth.config import RLConfig, resolve_rl

    rl = resolve_rl(RLConfig(algorithm=name))
    for key, value in ALGORITHMS[name].items():
        if key != "overlong":  # a reward, added by the RL step, not an rl field
            assert getattr(rl, key) == value, key
    assert rl.advantage in ADVANTAGES and rl.loss_agg in LOSS_AGGREGATIONS


def test_the_papers_settings_in_the_table():
    from zeroth.algorithms import ALGORITHMS

    dapo, dr = ALGORITHMS["dapo"], ALGORITHMS["dr_grpo"]
    assert (dapo["eps_low"], dapo["eps_high"], dapo["loss_agg"], dapo["beta"]) == \
        (0.2, 0.28, "token", 0.0)  # clip-higher, token-level loss, no KL
    assert dapo["dynamic_sampling"] and dapo["overlong"]
    assert (dr["scale_rewards"], dr["loss_agg"]) == (False, "constant")  # no std, no 1/|o|
    assert ALGORITHMS["grpo"]["beta"] == 0.001  # R1's KL coefficient
    assert not ALGORITHMS["rloo"]["scale_rewards"]


def test_explicit_fields_override_the_algorithm():
    from zeroth.config import RLConfig, resolve_rl

    rl = resolve_rl(RLConfig(algorithm="dapo", beta=0.001, dynamic_sampling=False))
    assert (rl.beta, rl.dynamic_sampling) == (0.001, False)  # explicit values kept
    assert (rl.eps_high, rl.loss_agg) == (0.28, "token")  # the rest from the name


# ---------------------------------------------------------------------------------------------
# The engine-gap correction (rl.engine_correction), on hand-computed values.
# ---------------------------------------------------------------------------------------------

_OLD = torch.tensor([[0.0, -1.0, -2.0], [-0.5, -0.5, 0.0]])
_ENG = torch.tensor([[0.0, -2.5, -1.0], [-0.5, -0.4, 7.0]])  # the last token is off the mask
_MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
# log ratios old - eng on the mask: [[0, 1.5, -1], [0, -0.1, .]]; sequence sums 0.5 and -0.1


@pytest.mark.parametrize("mode, cap, want, capped", [
    ("token_truncate", 3.0, [[1, 3, math.exp(-1)], [1, math.exp(-0.1), 0]], 1 / 5),
    ("token_mask", 3.0, [[1, 0, math.exp(-1)], [1, math.exp(-0.1), 0]], 1 / 5),
    ("sequence_truncate", 1.5, [[1.5] * 3, [math.exp(-0.1)] * 2 + [0]], 1 / 2),
    ("sequence_mask", 1.5, [[0] * 3, [math.exp(-0.1)] * 2 + [0]], 1 / 2),
    ("sequence_mask", 3.0, [[math.exp(0.5)] * 3, [math.exp(-0.1)] * 2 + [0]], 0.0),
])
def test_engine_weights_follow_trls_definitions(mode, cap, want, capped):
    from zeroth.algorithms.losses import engine_weights

    weights, stats = engine_weights(_OLD, _ENG, _MASK, mode, cap)
    assert torch.allclose(weights, torch.tensor(want, dtype=torch.float32), atol=1e-6)
    assert stats["logprob_gap"] == pytest.approx((1.5 + 1.0 + 0.1) / 5)
    assert stats["logprob_gap_max"] == pytest.approx(1.5)
    assert stats["is_capped"] == pytest.approx(capped)
    shown = [w for row, m in zip(want, _MASK.tolist()) for w, on in zip(row, m) if on]
    if mode.startswith("sequence"):
        shown = [want[0][0], want[1][0]]  # one weight per sequence
    assert stats["is_weight_mean"] == pytest.approx(sum(shown) / len(shown), abs=1e-6)
    assert stats["is_weight_min"] == pytest.approx(min(shown), abs=1e-6)
    assert stats["is_weight_max"] == pytest.approx(max(shown), abs=1e-6)


def test_engine_weights_none_only_measures_the_gap():
    from zeroth.algorithms.losses import engine_weights

    weights, stats = engine_weights(_OLD, _ENG, _MASK, "none", 3.0)
    assert weights is None and set(stats) == {"logprob_gap", "logprob_gap_max"}
    with pytest.raises(ValueError, match="unknown engine correction"):
        engine_weights(_OLD, _ENG, _MASK, "sequence_clip", 3.0)


def test_policy_loss_weights_the_surrogate_not_the_kl():
    adv = torch.tensor([1.0, -2.0])
    w = torch.tensor([[1.0, 3.0, 0.5], [0.0, 2.0, 0.0]])
    logp = _OLD.clone().requires_grad_(True)
    loss, _ = policy_loss(logp, _OLD, adv, _MASK, eps_low=0.2, eps_high=0.2, loss_agg="token",
                          is_weights=w)
    # ratio 1: per-token surrogate -A, times w, mean over the 5 masked tokens
    want = (-(1.0 + 3.0 + 0.5) * 1.0 + (0.0 + 2.0) * 2.0) / 5
    assert loss.item() == pytest.approx(want)
    ref = _OLD - 0.3
    with_kl, _ = policy_loss(logp, _OLD, adv, _MASK, eps_low=0.2, eps_high=0.2,
                             loss_agg="token", is_weights=w, ref_logp=ref, beta=0.1)
    k3 = math.exp(-0.3) + 0.3 - 1  # the same on every token, unweighted
    assert with_kl.item() == pytest.approx(want + 0.1 * k3)


def test_engine_logprobs_are_laid_out_on_the_completion_mask():
    from zeroth.algorithms.update import on_mask

    laid = on_mask([[1.0, 2.0, 3.0], [4.0, 5.0]], _MASK)
    assert laid.tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 0.0]]
    with pytest.raises(ValueError, match="4 engine log-probs for 5"):
        on_mask([[1.0, 2.0], [4.0, 5.0]], _MASK)
