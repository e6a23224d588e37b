import copy
from dataclasses import replace

import pytest
import torch

from zeroth.algorithms.update import pack
from zeroth.stages.eval import majority_correct, pass_at_k
from zeroth.stages.rl import RLContext, rl_step


def test_pack_aligns_completion_mask_with_targets():
    ids, attn, mask = pack([[1, 2, 3], [4]], [[5, 6], [7, 8, 9]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3, 5, 6], [4, 7, 8, 9, 0]]
    assert attn.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    # targets are ids[:, 1:]: row 0 -> [2, 3, 5, 6], completion tokens 5, 6
    assert mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 0]]


def test_pass_at_k_matches_hand_values():
    assert pass_at_k(4, 0, 1) == 0.0
    assert pass_at_k(4, 1, 1) == 0.25
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)
    assert pass_at_k(4, 3, 2) == 1.0
    assert pass_at_k(8, 2, 8) == 1.0


def test_majority_vote():
    assert majority_correct(["5", "5", "6"], [True, True, False])
    assert not majority_correct(["6", "6", "5"], [False, False, True])
    assert not majority_correct([None, None], [False, False])


def _shape_reward(completions, **_):
    """A user reward in TRL's convention: longer completions score higher."""
    return [min(len(c), 40) / 40 for c in completions]


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("overrides", [
    {},
    {"mu": 2, "minibatch_size": 8, "loss_agg": "token"},
    {"loss_agg": "constant", "advantage": "dr_grpo", "scale_rewards": False},
    {"advantage": "rloo"},
])
def test_rl_step_moves_weights_with_a_user_reward(tiny_cfg, tiny_task, tiny_model, overrides):
    model, tok = tiny_model
    task = replace(tiny_task, rewards={**tiny_task.rewards, "shape": _shape_reward})
    rl = replace(tiny_cfg.rl, reward_weights={"shape": 1.0, "correct": 1.0}, lr=1e-2,
                 **overrides)
    opt = torch.optim.AdamW(model.parameters(), lr=rl.lr)
    before = _params(model)
    metrics, rows = rl_step(RLContext(model, opt, None, tok, task, rl, seed=0), 0)
    assert len(rows) == rl.prompts_per_step * rl.group_size
    assert {"reward", "reward_shape", "reward_correct", "mean_len", "loss", "grad_norm"} <= \
        set(metrics)
    assert "kl" not in metrics  # beta = 0: no reference, no KL
    assert all(set(r["rewards"]) == {"shape", "correct"} for r in rows)
    group = [r["advantage"] for r in rows[: rl.group_size]]
    assert abs(sum(group)) < 1e-4  # group-relative advantages are centred
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_rl_step_with_reference_reports_kl(tiny_cfg, tiny_task, tiny_model):
    model, tok = tiny_model
    ref = copy.deepcopy(model).requires_grad_(False)
    task = replace(tiny_task, rewards={**tiny_task.rewards, "shape": _shape_reward})
    rl = replace(tiny_cfg.rl, reward_weights={"shape": 1.0}, beta=0.1, mu=2, lr=1e-2)
    opt = torch.optim.AdamW(model.parameters(), lr=rl.lr)
    first, _ = rl_step(RLContext(model, opt, ref, tok, task, rl, seed=0), 0)
    second, _ = rl_step(RLContext(model, opt, ref, tok, task, rl, seed=0), 1)
    assert first["kl"] == pytest.approx(0.0, abs=1e-6)  # sampled from the reference itself
    assert second["kl"] > 0.0  # the policy has left the reference
    assert 0.0 <= second["clip_frac"] <= 1.0


def test_verifier_failure_gets_no_advantage(tiny_cfg, tiny_task, tiny_model):
    model, tok = tiny_model

    def flaky(completions, **_):  # fails on the first half of the batch
        if len(completions) and not hasattr(flaky, "called"):
            flaky.called = True
            raise RuntimeError("timeout")
        return [1.0] * len(completions)

    task = replace(tiny_task, rewards={**tiny_task.rewards, "flaky": flaky,
                                       "shape": _shape_reward})
    rl = replace(tiny_cfg.rl, reward_weights={"flaky": 1.0, "shape": 1.0})
    opt = torch.optim.AdamW(model.parameters(), lr=rl.lr)
    _, rows = rl_step(RLContext(model, opt, None, tok, task, rl, seed=0), 0)
    assert all(r["rewards"]["flaky"] is None and r["advantage"] == 0.0 for r in rows)


def _hashed_reward(completions, **_):
    """Distinct completions score differently, so no group is flat."""
    from zeroth.seeding import stable_fraction

    return [stable_fraction(c) for c in completions]


@pytest.mark.parametrize("algorithm", ["grpo", "dr_grpo", "dapo", "rloo", "reinforce_pp"])
def test_rl_step_of_each_algorithm_moves_the_weights(tiny_cfg, tiny_task, tiny_model,
                                                     algorithm):
    from zeroth.config import resolve_rl

    model, tok = tiny_model
    task = replace(tiny_task, rewards={**tiny_task.rewards, "hashed": _hashed_reward})
    fields = ("eps_low", "eps_high", "beta", "advantage", "scale_rewards", "loss_agg",
              "dynamic_sampling")
    rl = replace(tiny_cfg.rl, algorithm=algorithm, reward_weights={"hashed": 1.0},
                 **dict.fromkeys(fields))  # every field from the algorithm's name
    ref = copy.deepcopy(model).requires_grad_(False) if resolve_rl(rl).beta > 0 else None
    opt = torch.optim.AdamW(model.parameters(), lr=rl.lr)
    before = _params(model)
    metrics, rows = rl_step(RLContext(model, opt, ref, tok, task, rl, seed=0), 0)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert ("kl" in metrics) == (ref is not None)
    assert ("reward_overlong" in metrics) == (algorithm == "dapo")
    assert len(rows) == rl.prompts_per_step * rl.group_size


def test_step_reports_entropy_lr_reflection_and_rows_name_their_task(tiny_cfg, tiny_task,
                                                                      tiny_model):
    from zeroth.algorithms.update import completion_logprobs, update
    from zeroth.config import resolve_rl
    from zeroth.stages.rl import sample, score

    model, tok = tiny_model
    task = replace(tiny_task, rewards={**tiny_task.rewards, "shape": _shape_reward})
    rl = resolve_rl(replace(tiny_cfg.rl, reward_weights={"shape": 1.0, "correct": 1.0}))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the update leaves the policy
    ctx = RLContext(model, opt, None, tok, task, rl)
    batch = sample(ctx, step=0)
    score(ctx, batch)
    with torch.no_grad():  # the sampled tokens' mean surprisal under the sampling policy
        logp, mask = completion_logprobs(model, batch.prompts, batch.completions,
                                         tok.pad_token_id, rl.temperature, fast=False)
    want = float(-(logp * mask).sum() / mask.sum())
    stats = update(ctx, batch, torch.linspace(-1, 1, len(batch)))
    assert stats["entropy"] == pytest.approx(want, rel=1e-4) and stats["entropy"] > 0
    assert stats["lr"] == 0.0
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    metrics, rows = rl_step(RLContext(model, opt, None, tok, task, rl, seed=0), 0)
    assert metrics["lr"] == 3e-4 and 0.0 <= metrics["reflect_rate"] <= 1.0
    assert {r["task"] for r in rows} == {task.name}
    assert all(r["difficulty"] is None or isinstance(r["difficulty"], str) for r in rows)


@pytest.mark.parametrize("lora", [False, True])  # the lean decoder, and transformers' forward
def test_a_group_samples_the_same_in_any_share_of_the_groups(tiny_cfg, tiny_task, tiny_model,
                                                             lora):
    """What a rank of a data-parallel run samples (its share of the groups) is what one
    process samples for those groups: each group's stream comes from (seed, stage, step,
    round, group index), not from its place in a batch."""
    from zeroth.config import ModelConfig, resolve_rl
    from zeroth.models.hf import prepare_model
    from zeroth.stages.rl import sample

    model, tok = tiny_model
    if lora:
        model = prepare_model(model, ModelConfig(lora_r=2), "cpu")
    rl = resolve_rl(replace(tiny_cfg.rl, prompts_per_step=4, group_size=3, max_new_tokens=12))
    ctx = RLContext(model.eval(), torch.optim.SGD(model.parameters(), lr=0.0), None, tok,
                    tiny_task, rl, seed=5)
    whole = sample(ctx, step=2)
    shares = [sample(ctx, step=2, groups=range(1)), sample(ctx, step=2, groups=range(1, 4))]
    assert whole.completions == shares[0].completions + shares[1].completions
    assert whole.rows == shares[0].rows + shares[1].rows
    assert len({tuple(c) for c in whole.completions[:3]}) > 1  # a group's samples differ
    assert sample(ctx, step=2, round_=1).completions != whole.completions
