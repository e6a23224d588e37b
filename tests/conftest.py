"""Shared fixtures: a tiny trained-from-scratch model and tokenizer, built on the fly, offline."""

from __future__ import annotations

import os

import pytest
import torch

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
    from zeroth.run import init_model

    return init_model(tiny_cfg, tiny_task)
