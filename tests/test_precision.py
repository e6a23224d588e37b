"""model.precision: fp32, bf16-mixed (float32 master weights, bf16 autocast) and auto.

bf16-mixed must give the same numbers as fp32 within bf16's rounding, on every path that runs a
model (the lean decoder, transformers' decoder, the lean and transformers' log-probs, the
supervised loss), keep the weights, gradients and optimiser state float32, and train."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

from zeroth.algorithms.update import completion_logprobs
from zeroth.config import load_config
from zeroth.errors import UserError
from zeroth.models import lean, precision
from zeroth.models.precision import autocast, precision_of, resolve, set_precision
from zeroth.rollout import decoder

VOCAB, PAD = 96, 0
PROMPTS = [[5, 6, 7], [5, 6, 7], [9, 10], [11, 12, 13, 14], [11, 12, 13, 14]]
COMPLETIONS = [[20, 21, 22], [23], [24, 25, 26, 27, 28], [29, 30], [31, 32, 33]]


def _model(arch: str, mode: str = "fp32", seed: int = 0):
    common = {"vocab_size": VOCAB, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "initializer_range": 0.05,
              "pad_token_id": PAD}
    config = Qwen2Config(hidden_size=64, tie_word_embeddings=True, **common) if arch == "qwen2" \
        else LlamaConfig(hidden_size=64, tie_word_embeddings=False, **common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    return set_precision(model, mode)


# ---------------------------------------------------------------------------------------------
# What auto chooses, and the config's checks.
# ---------------------------------------------------------------------------------------------


def test_resolve_fp32_bf16_mixed_and_auto(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve("fp32", "float32", 4096, cpu) == "fp32"
    assert resolve("bf16-mixed", "float32", 8, cpu) == "bf16-mixed"  # asked: taken
    assert resolve("bf16-mixed", "bfloat16", 4096, cpu) == "fp32"  # bf16 weights compute as such
    monkeypatch.setattr(precision, "fast_bf16", lambda device: True)
    assert resolve("auto", "float32", precision.MIN_HIDDEN, cpu) == "bf16-mixed"
    assert resolve("auto", "float32", precision.MIN_HIDDEN - 1, cpu) == "fp32"  # too narrow
    monkeypatch.setattr(precision, "fast_bf16", lambda device: False)
    assert resolve("auto", "float32", 4096, cpu) == "fp32"  # no fast bf16 here


def test_a_model_is_fp32_until_marked_and_autocast_follows_the_mark():
    model = _model("qwen2")
    assert precision_of(model) == "fp32"
    x = torch.randn(2, 64)
    with autocast(model):
        assert model.lm_head(x).dtype == torch.float32
    set_precision(model, "bf16-mixed")
    with autocast(model):
        assert model.lm_head(x).dtype == torch.bfloat16
    assert model.lm_head.weight.dtype == torch.float32  # the master weights are untouched


@pytest.mark.parametrize("overrides, message", [
    (["model.precision=fp16"], "model.precision' must be one of auto, fp32, bf16-mixed"),
    (["model.precision=bf16-mixed", "model.dtype=bfloat16"], "keeps float32 master weights"),
    (["student.precision=bf16-mixed", "student.dtype=bfloat16"], "student.dtype is bfloat16"),
])
def test_bad_precision_settings_are_refused_in_one_line(overrides, message):
    with pytest.raises(UserError, match=message) as err:
        load_config(None, overrides)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# The same numbers within bf16 rounding, on every path.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("fast", [True, False])
def test_bf16_mixed_logprobs_and_gradients_are_fp32_within_bf16_rounding(arch, fast):
    ref, mixed = _model(arch), _model(arch, "bf16-mixed")
    logp32, mask32 = completion_logprobs(ref, PROMPTS, COMPLETIONS, PAD, 1.0, fast)
    logp16, mask16 = completion_logprobs(mixed, PROMPTS, COMPLETIONS, PAD, 1.0, fast)
    assert logp16.dtype == torch.float32  # log-probs are float32 whatever the products were
    assert torch.equal(mask32.bool(), mask16.bool())
    real = mask32.bool()
    assert (logp16 - logp32)[real].abs().max() < 0.05
    (logp32 * mask32).sum().backward()
    (logp16 * mask16).sum().backward()
    for (name, a), b in zip(ref.named_parameters(), mixed.parameters()):
        assert b.dtype == torch.float32 and b.grad.dtype == torch.float32, name
        scale = a.grad.norm() + 1e-6
        assert (a.grad - b.grad).norm() / scale < 0.05, name


def test_bf16_on_cpu_rounds_row_counts_to_a_few_sizes():
    mixed, fp32 = _model("qwen2", "bf16-mixed"), _model("qwen2")
    assert lean.bucketed(mixed) and not lean.bucketed(fp32)
    assert [lean.rows_for(n, fp32) for n in (1, 65, 1000)] == [1, 65, 1000]  # fp32: as they are
    sizes = {lean.rows_for(n, mixed) for n in range(1, 20000)}
    assert min(sizes) == 64 and len(sizes) < 80 and all(s % 64 == 0 for s in sizes)
    assert all(n <= lean.rows_for(n, mixed) <= n + max(63, n / 8) for n in range(1, 20000))


def _loss_and_grads(model, pieces: str):
    model.zero_grad()
    if pieces == "logprobs":
        logp, mask = completion_logprobs(model, PROMPTS, COMPLETIONS, PAD, 0.7, True)
        value = (logp * mask).sum()
    else:
        ids = torch.tensor([p + c + [PAD] * (9 - len(p + c)) for p, c in zip(PROMPTS, COMPLETIONS)])
        labels = ids.masked_fill(ids == PAD, -100)
        value = lean.sequence_loss(model, ids, labels)
    value.backward()
    return value.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("pieces", ["logprobs", "sequence_loss"])
def test_spare_rows_of_rounded_counts_change_no_result(pieces, monkeypatch):
    """bf16 on a CPU pads the packed tokens with spare rows up to a rounded count: the loss and
    every gradient are those of the unpadded pass (the spare rows are never read back)."""
    mixed = _model("qwen2", "bf16-mixed")
    padded, padded_grads = _loss_and_grads(mixed, pieces)
    monkeypatch.setattr(lean, "bucketed", lambda model: False)
    plain, plain_grads = _loss_and_grads(mixed, pieces)
    assert torch.allclose(padded, plain, rtol=1e-3, atol=1e-3)
    for a, b in zip(padded_grads, plain_grads):
        assert (a - b).norm() <= 1e-3 * (b.norm() + 1e-6)


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("backend", [lean.Decoding, decoder.HFForward])
def test_bf16_mixed_decoding_keeps_float32_cache_and_logits(arch, backend):
    ref, mixed = _model(arch), _model(arch, "bf16-mixed")
    fp32, bf16 = backend(ref, PROMPTS, PAD, 6), backend(mixed, PROMPTS, PAD, 6)
    a, b = fp32.start().float(), bf16.start().float()
    assert (a - b).abs().max() < 0.05
    token = a.argmax(-1)
    for _ in range(4):  # the same tokens fed to both: their logits stay close step after step
        a, b = fp32.step(token).float(), bf16.step(token).float()
        assert (a - b).abs().max() < 0.05
        token = a.argmax(-1)
    if backend is lean.Decoding:  # on a CPU, attention and its cache stay float32
        assert all(c.dtype == torch.float32 for c in bf16.cache_k + bf16.cache_v)
        assert all(c.dtype == torch.float32 for c in fp32.cache_k + fp32.cache_v)
        assert all(w.dtype == torch.bfloat16 for w in bf16.fused[0][::2])  # products in bf16
    assert all(p.dtype == torch.float32 for p in mixed.parameters())


def test_bf16_mixed_generate_samples_from_float32_distributions():
    mixed = _model("qwen2", "bf16-mixed")
    out = decoder.generate(mixed, PROMPTS, max_new_tokens=8, eos_id=1, pad_id=PAD,
                           generator=torch.Generator().manual_seed(0))
    assert [len(c) for c in out] and all(0 < len(c) <= 8 for c in out)
    assert all(0 <= t < VOCAB for c in out for t in c)


# ---------------------------------------------------------------------------------------------
# A whole run in bf16-mixed: trains, saves float32 weights, evaluates.
# ---------------------------------------------------------------------------------------------


def test_a_tiny_run_in_bf16_mixed_trains_and_saves_float32_weights(tmp_path, finished_tiny_run):
    from safetensors import safe_open

    proc = subprocess.run([sys.executable, "-m", "zeroth.cli", "run", "tiny", "--quiet",
                           "run.name=b", "model.precision=bf16-mixed", "rl.steps=2",
                           "task.eval_problems=8"],
                          cwd=tmp_path, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "b"
    summary = json.loads((run / "summary.json").read_text())
    fp32 = json.loads((finished_tiny_run / "summary.json").read_text())  # the same, in fp32
    loss16 = summary["stages"][0]["result"]["final_loss"]
    loss32 = fp32["stages"][0]["result"]["final_loss"]
    assert abs(loss16 - loss32) < 0.05 * loss32, (loss16, loss32)  # pre-training learned alike
    with safe_open(str(run / "final" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}  # noqa: SIM118
    assert "precision: bf16-mixed" in (run / "config.yaml").read_text()


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_bf16_mixed_supervised_loss_is_fp32_within_bf16_rounding(arch):
    from zeroth.stages.supervised import right_pad, token_loss

    ref, mixed = _model(arch), _model(arch, "bf16-mixed")
    ids, labels = right_pad([(p + c, [-100] * len(p) + c) for p, c in zip(PROMPTS, COMPLETIONS)],
                            PAD)
    want = token_loss(ref, ids, labels)[0]
    with autocast(mixed):
        got = token_loss(mixed, ids, labels)[0]
    assert got.dtype == torch.float32
    assert abs(got.item() - want.item()) < 0.01 * want.item()


def test_bf16_decoding_drops_finished_rows_to_rounded_batch_sizes(monkeypatch):
    """Under bf16 on a CPU, finished rows leave the decoding batch only down to a rounded size
    (a few product shapes, not one per count of live rows); the rows kept to fill it change no
    completion."""
    mixed = _model("qwen2", "bf16-mixed")
    prompts = [[5 + i % 7, 6, 7] for i in range(150)]
    seen, step = [], lean.Decoding.step
    monkeypatch.setattr(lean.Decoding, "step", lambda self, token: seen.append(len(token))
                        or step(self, token))

    def sample():
        return decoder.generate(mixed, prompts, max_new_tokens=12, eos_id=set(range(84, 96)),
                                pad_id=PAD, generator=torch.Generator().manual_seed(0))

    rounded = sample()
    assert len(set(seen)) > 1 and all(size in (150, 128, 64) for size in seen)
    monkeypatch.setattr(lean, "bucketed", lambda model: False)
    seen.clear()
    assert sample() == rounded
    assert any(size not in (150, 128, 64) for size in seen)  # unrounded: any live count
