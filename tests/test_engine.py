"""The generation engine interface: the RL loop samples through `rl.engine` and tells the
engine after every optimiser step, so another engine (vLLM on a GPU) plugs in unchanged."""

from dataclasses import replace

import pytest
import torch

from zeroth import rollout
from zeroth.config import load_config
from zeroth.errors import UserError
from zeroth.rollout.torch_engine import TorchEngine
from zeroth.stages.rl import RLContext, rl_step, train


class ScriptedEngine:
    """An engine that ignores the model: completion i of a group answers `answers[i % 2]`."""

    def __init__(self, model, tokenizer, answers):
        self.model, self.tok, self.answers = model, tokenizer, answers
        self.calls, self.syncs = [], 0

    def generate(self, prompts, *, max_new_tokens, temperature, generator, eos_id, pad_id,
                 batch_size=256, greedy=False, logprobs=False, seeds=None):
        self.calls.append(len(prompts))
        stop = min(eos_id) if isinstance(eos_id, set) else eos_id
        texts = [f"<think>guess</think> <answer>{self.answers[i % 2]}</answer>"
                 for i in range(len(prompts))]
        out = [self.tok(t, add_special_tokens=False)["input_ids"][:max_new_tokens - 1] + [stop]
               for t in texts]
        return (out, None) if logprobs else out  # no log-probs of its own

    def sync(self, model):
        self.syncs += 1
        self.model = model


def test_a_custom_engine_drives_rl_step(tiny_cfg, tiny_task, tiny_model):
    model, tok = tiny_model
    rows = tiny_task.train_rows(__import__("random").Random("0-rl-0"), 1)
    engine = ScriptedEngine(model, tok, [rows[0]["answer"], "-1"])
    rl = replace(tiny_cfg.rl, prompts_per_step=1, group_size=4, lr=1e-2)
    opt = torch.optim.AdamW(model.parameters(), lr=rl.lr)
    before = [p.detach().clone() for p in model.parameters()]
    ctx = RLContext(model, opt, None, tok, tiny_task, rl, seed=0, engine=engine)
    metrics, ledger_rows = rl_step(ctx, 0)
    assert engine.calls == [4] and metrics["reward_correct"] == 0.5
    assert [r["rewards"]["correct"] for r in ledger_rows] == [1.0, 0.0, 1.0, 0.0]
    assert [r["advantage"] > 0 for r in ledger_rows] == [True, False, True, False]
    assert all(r["completion"].startswith("<think>guess</think>") for r in ledger_rows)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_train_uses_the_configured_engine_and_syncs_after_every_step(
        tiny_cfg, tiny_task, tiny_model, monkeypatch):
    model, tok = tiny_model
    made = []

    def factory(m, cfg):
        made.append(ScriptedEngine(m, tok, ["1", "2"]))
        return made[-1]

    monkeypatch.setitem(rollout.ENGINES, "scripted", factory)
    cfg = replace(tiny_cfg, rl=replace(tiny_cfg.rl, engine="scripted", steps=3,
                                       checkpoint_every=100, prompts_per_step=2, group_size=2))
    logged = []

    class Ledger:
        def log_rollouts(self, phase, step, rows):
            logged.append((step, len(rows)))

        def log_metrics(self, phase, step, metrics):
            pass

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    engine = rollout.make_engine(cfg, model)
    train(RLContext(model, opt, None, tok, tiny_task, cfg.rl, engine=engine), start=0,
          ledger=Ledger())
    assert len(made) == 1 and made[0].calls == [4, 4, 4] and made[0].syncs == 3
    assert logged == [(1, 4), (2, 4), (3, 4)]


def test_the_default_engine_is_torch_and_unknown_ones_are_refused():
    assert load_config().rl.engine == "torch"
    engine = rollout.make_engine(load_config(), torch.nn.Linear(1, 1))
    assert isinstance(engine, TorchEngine)
    assert {"torch", "vllm", "vllm-server", "auto"} <= set(rollout.ENGINES)
    with pytest.raises(UserError, match="rl.engine.*generation engine"):
        load_config(overrides=["rl.engine=sglang"])
    with pytest.raises(KeyError, match="unknown (generation )?engine 'sglang'"):
        rollout.ENGINES["sglang"]


def test_evaluation_and_rejection_sampling_sample_through_the_engine(tiny_cfg, tiny_task,
                                                                     tiny_model):
    from zeroth.stages.eval import evaluate
    from zeroth.stages.rejection import sample_verified

    model, tok = tiny_model
    rows = tiny_task.eval_rows(3, 0)
    engine = ScriptedEngine(model, tok, [rows[0]["answer"], "-1"])
    metrics, samples = evaluate(engine, tok, tiny_task, rows, replace(tiny_cfg.eval, k=2), 0)
    assert engine.calls == [6, 3]  # k samples of each problem, then the greedy ones
    assert metrics["problems"] == 3 and samples[0]["completion"].startswith("<think>guess")
    kept, rollouts, _ = sample_verified(engine, tok, tiny_task, rows, samples=2,
                                        temperature=1.0, max_new_tokens=64, keep_per_prompt=1,
                                        require_format=True, batch_size=4, seed_tag="t")
    assert engine.calls[2:] == [4, 2] and len(rollouts) == 6
    assert [k["answer"] for k in kept] == [rows[0]["answer"]]
