"""Shared fixtures: a tiny trained-from-scratch model and tokenizer, built on the fly, offline."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import zeroth  # noqa: F401  (first: hides mismatched torchvision & co. before transformers loads)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_cfg():
    from zeroth.config import load_config

    return load_config("tiny")


@pytest.fixture(scope="session")
def tiny_task(tiny_cfg):
    from zeroth.tasks import load_task

    return load_task(tiny_cfg)


@pytest.fixture()
def tiny_model(tiny_cfg, tiny_task):
    """(model, tokenizer): a fresh random tiny Qwen2 with a tokenizer trained here."""
    from zeroth.pipeline.run import init_model

    return init_model(tiny_cfg, tiny_task)


@pytest.fixture(scope="session")
def finished_tiny_run(tmp_path_factory) -> Path:
    """runs/t of a finished `zeroth run tiny` (pretrain, then 4 RL steps x 4 prompts x 4 samples,
    a checkpoint after every RL step), made once per test session and shared by every test
    module that reads a real run. Read it only: copy it (shutil.copytree) before changing it."""
    base = tmp_path_factory.mktemp("finished-tiny-run")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "zeroth.cli", "run", "tiny", "run.name=t",
                           "rl.checkpoint_every=1", "eval.max_new_tokens=16", "--quiet"],
                          cwd=base, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return base / "runs" / "t"


# A tiny run with vLLM as the engine (head size 32: vLLM's CPU attention takes no smaller), a
# checkpoint after each of its 6 RL steps: test_vllm kills and resumes it, test_dist runs it at
# world 2, each compared with the uninterrupted world-1 run below.
VLLM_RUN = ["tiny", "--quiet", "model.hidden_size=64", "model.num_heads=2", "rl.engine=vllm",
            "rl.checkpoint_every=1", "rl.steps=6", "task.eval_problems=8"]


@pytest.fixture(scope="session")
def vllm_run_args() -> list[str]:
    return list(VLLM_RUN)


@pytest.fixture(scope="session")
def finished_vllm_run(tmp_path_factory) -> Path:
    """runs/ref of a finished `zeroth run` with VLLM_RUN, made once per test session. Read it
    only: copy it (shutil.copytree) before changing it."""
    base = tmp_path_factory.mktemp("finished-vllm-run")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "zeroth.cli", "run", *VLLM_RUN, "run.name=ref"],
                          cwd=base, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return base / "runs" / "ref"


def _coin(completions, **_):  # a deterministic "verifier" that passes about half of any text
    return [float(sum(map(ord, c)) % 2 == 0) for c in completions]


@pytest.fixture()
def coin_tasks(monkeypatch):
    """Tasks whose verifier a barely trained tiny model can pass, so rejection keeps samples."""
    from zeroth.pipeline import run as run_module

    monkeypatch.setattr(run_module, "load_task", with_coin(run_module.load_task))


def with_coin(load_task):
    """`load_task` whose tasks score with the coin verifier and a format always met."""

    def load(cfg):
        task = load_task(cfg)
        return replace(task, rewards={**task.rewards, "correct": _coin,
                                      "format": lambda c, **_: [1.0] * len(c)})

    return load
