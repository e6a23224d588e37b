"""DAPO's parts in the RL step: dynamic sampling, the soft overlong penalty, and the named
algorithm's reward weights; also the stage id (`phase`) in the random streams and the ledger."""

from dataclasses import replace
from random import Random

import pytest
import torch

from zeroth.models.hf import prompt_ids
from zeroth.pipeline.ledger import Ledger
from zeroth.rewards import overlong
from zeroth.rollout import hash_seed
from zeroth.rollout.decoder import generate, stop_ids
from zeroth.seeding import stable_fraction
from zeroth.stages.eval import decode
from zeroth.stages.rl import RLContext, rl_step, step_weights, train


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


def _moved(before, model) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def _prompts(task, tag: str, n: int) -> list[str]:
    return [r["prompt"] for r in task.train_rows(Random(tag), n)]


def _stub(flat_prompts: set[str]):
    """A deterministic reward: 0.5 for every completion of a prompt in `flat_prompts` (a group
    with no signal), otherwise a fraction hashed from the completion (distinct texts differ)."""
    def stub(completions, prompt, **_):
        return [0.5 if p in flat_prompts else stable_fraction(c)
                for c, p in zip(completions, prompt)]
    return stub


def _dapo(tiny_cfg, tiny_task, stub, **overrides):
    task = replace(tiny_task, rewards={**tiny_task.rewards, "stub": stub})
    rl = replace(tiny_cfg.rl, algorithm="dapo", reward_weights={"stub": 1.0, "overlong": 0.0},
                 **overrides)
    return task, rl


def test_dynamic_sampling_drops_flat_groups_and_refills_from_new_prompts(
        tiny_cfg, tiny_task, tiny_model):
    model, tok = tiny_model
    P, G = tiny_cfg.rl.prompts_per_step, tiny_cfg.rl.group_size
    assert P == 4  # the tiny recipe's
    first = _prompts(tiny_task, "0-rl-0", P)  # round 0: the usual draw of step 0
    second = _prompts(tiny_task, "0-rl-0-r1", P)  # round 1: fresh prompts
    assert not set(second) & {first[0], first[2]}
    task, rl = _dapo(tiny_cfg, tiny_task, _stub({first[0], first[2]}))
    opt = torch.optim.AdamW(model.parameters(), lr=rl.lr)
    before = _params(model)
    metrics, rows = rl_step(RLContext(model, opt, None, tok, task, rl, seed=0), 0)

    assert (metrics["groups_kept"], metrics["sample_rounds"]) == (P, 2)
    assert metrics["groups_flat"] == 2 / P  # share of flat groups in the first round
    assert len(rows) == 2 * P * G  # every sampled rollout is in the ledger
    groups = [rows[i * G: (i + 1) * G] for i in range(2 * P)]
    assert [g[0]["prompt"] for g in groups] == first + second
    why = [g[0]["extra"].get("dropped") for g in groups]
    assert why == ["flat", None, "flat", None,  # round 0: the two flat groups are set aside
                   None, None, "surplus", "surplus"]  # round 1: the first two refill to P
    assert [g[0]["extra"]["round"] for g in groups] == [0] * P + [1] * P
    for group, reason in zip(groups, why):
        if reason:
            assert all(r["advantage"] == 0.0 for r in group)
        else:
            assert abs(sum(r["advantage"] for r in group)) < 1e-4
            assert any(r["advantage"] != 0.0 for r in group)
    assert _moved(before, model)


def test_dynamic_sampling_trains_on_what_it_found_after_max_rounds(
        tiny_cfg, tiny_task, tiny_model):
    model, tok = tiny_model
    P, G = tiny_cfg.rl.prompts_per_step, tiny_cfg.rl.group_size
    first = _prompts(tiny_task, "0-rl-0", P)
    task, rl = _dapo(tiny_cfg, tiny_task, _stub(set(first[1:])), max_sample_rounds=1)
    opt = torch.optim.AdamW(model.parameters(), lr=rl.lr)
    metrics, rows = rl_step(RLContext(model, opt, None, tok, task, rl, seed=0), 0)
    assert (metrics["groups_kept"], metrics["sample_rounds"]) == (1, 1)
    kept = [r for r in rows if "dropped" not in r["extra"]]
    assert [r["prompt"] for r in kept] == [first[0]] * G
    assert len(rows) == P * G


def test_a_step_where_every_group_is_flat_changes_no_weights(tiny_cfg, tiny_task, tiny_model):
    model, tok = tiny_model
    P, G = tiny_cfg.rl.prompts_per_step, tiny_cfg.rl.group_size

    def constant(completions, **_):
        return [1.0] * len(completions)

    task, rl = _dapo(tiny_cfg, tiny_task, constant, max_sample_rounds=2)
    opt = torch.optim.AdamW(model.parameters(), lr=rl.lr)
    before = _params(model)
    metrics, rows = rl_step(RLContext(model, opt, None, tok, task, rl, seed=0), 0)
    assert not _moved(before, model)
    assert not opt.state  # AdamW never stepped
    assert (metrics["groups_kept"], metrics["sample_rounds"], metrics["groups_flat"]) == \
        (0, 2, 1.0)
    assert "loss" not in metrics and metrics["reward"] == 1.0
    assert len(rows) == 2 * P * G
    assert all(r["extra"]["dropped"] == "flat" and r["advantage"] == 0.0 for r in rows)


def test_overlong_penalty_at_the_boundaries_of_a_custom_cache():
    ids = [[0] * n for n in (15, 16, 18, 20, 21)]
    # cap 20, cache 5: free up to 15 tokens, then -1/5 per token, -1 at the cap and beyond
    assert overlong([""] * 5, completion_ids=ids, max_new_tokens=[20] * 5, overlong_cache=5) \
        == pytest.approx([0.0, -0.2, -0.6, -1.0, -1.0])
    # one cache per completion, as the RL step passes it
    assert overlong(["", ""], completion_ids=[[0] * 15, [0] * 15], max_new_tokens=[20, 20],
                    overlong_cache=[5, 10]) == pytest.approx([0.0, -0.5])
    with pytest.raises(ValueError, match="overlong_cache"):
        overlong([""], completion_ids=[[0]], max_new_tokens=[20], overlong_cache=0)


def test_dapo_adds_the_overlong_reward_with_the_configured_cache(
        tiny_cfg, tiny_task, tiny_model):
    model, tok = tiny_model
    task = replace(tiny_task, rewards={**tiny_task.rewards, "stub": _stub(set())})
    rl = replace(tiny_cfg.rl, algorithm="dapo", reward_weights={"stub": 1.0},
                 overlong_cache=30, max_new_tokens=40)
    opt = torch.optim.AdamW(model.parameters(), lr=rl.lr)
    metrics, rows = rl_step(RLContext(model, opt, None, tok, task, rl, seed=0), 0)
    assert "reward_overlong" in metrics
    for r in rows:
        expected = 0.0 if r["n_tokens"] <= 10 else max(-1.0, -(r["n_tokens"] - 10) / 30)
        assert r["rewards"]["overlong"] == pytest.approx(expected)
        assert r["reward"] == pytest.approx(r["rewards"]["stub"] + expected)  # weight 1
    assert any(r["rewards"]["overlong"] < 0 for r in rows)


def test_step_weights_add_overlong_only_where_the_algorithm_uses_it(tiny_cfg, tiny_task):
    rl = replace(tiny_cfg.rl, reward_weights={"correct": 1.0})
    assert step_weights(replace(rl, algorithm="dapo"), tiny_task) == \
        {"correct": 1.0, "overlong": 1.0}
    assert step_weights(replace(rl, algorithm="grpo"), tiny_task) == {"correct": 1.0}
    own = replace(rl, algorithm="dapo", reward_weights={"correct": 1.0, "overlong": 0.25})
    assert step_weights(own, tiny_task)["overlong"] == 0.25  # the recipe's weight wins
    assert step_weights(replace(rl, reward_weights=None), tiny_task) == tiny_task.weights


def test_phase_rl_keeps_the_old_prompt_stream_and_groups_sample_from_their_own_seeds(
        tiny_cfg, tiny_task, tiny_model):
    model, tok = tiny_model
    rl, P, G = tiny_cfg.rl, tiny_cfg.rl.prompts_per_step, tiny_cfg.rl.group_size
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: both calls see the same model
    _, rows = rl_step(RLContext(model, opt, None, tok, tiny_task, rl, seed=0), 3)
    _, other = rl_step(RLContext(model, opt, None, tok, tiny_task, rl, phase="rl2"), 3)
    old_rows = tiny_task.train_rows(Random("0-rl-3"), P)  # the tag before stages had ids
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in old_rows for _ in range(G)]
    assert [r["prompt"] for r in other][::G] == _prompts(tiny_task, "0-rl2-3", P)
    assert [r["prompt"] for r in other] != [r["prompt"] for r in rows]
    # sample j of group g samples from hash_seed(f"rl-{seed}-{step}-g{g}") (62 bits) + j
    prompts = prompt_ids(tok, [r["prompt"] for r in rows])
    stops = stop_ids(model, tok)
    seeds = [(hash_seed(f"rl-0-3-g{g}") >> 1) + j for g in range(P) for j in range(G)]
    want = generate(model, prompts, max_new_tokens=rl.max_new_tokens, seeds=seeds,
                    temperature=rl.temperature, eos_id=stops, pad_id=tok.pad_token_id,
                    batch_size=len(prompts))
    assert [r["completion"] for r in rows] == decode(tok, want, stops)


def test_train_logs_under_its_stage_id(tiny_cfg, tiny_task, tiny_model, tmp_path):
    model, tok = tiny_model
    cfg = replace(tiny_cfg, rl=replace(tiny_cfg.rl, steps=1))
    ledger, shown, saved = Ledger(tmp_path / "ledger.sqlite"), [], []
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.rl.lr)
    train(RLContext(model, opt, None, tok, tiny_task, cfg.rl, phase="rl2"), start=0,
          ledger=ledger, show=lambda step, **kw: shown.append(step), save=saved.append)
    assert {r["phase"] for r in ledger.rollouts()} == {"rl2"}
    assert [m["phase"] for m in ledger.metrics()] == ["rl2"]
    assert (shown, saved) == ([1], [1])
    ledger.close()
