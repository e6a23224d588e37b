"""zeroth.models.lean against transformers' own path: the same tokens, log-probs, gradients, updates.

Tiny Qwen2 (q/k/v biases, tied embeddings) and Llama (grouped-query attention, untied) models
are built from configs here; token ids are plain integers, no tokenizer is needed.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config

from zeroth.algorithms import update as train
from zeroth.config import ModelConfig, RLConfig, resolve_rl
from zeroth.models import lean as fastlm
from zeroth.models.hf import prepare_model
from zeroth.rollout import decoder
from zeroth.rollout.batch import Rollouts
from zeroth.rollout.decoder import HFForward, generate, stream

VOCAB, PAD = 96, 0
PROMPTS = [[5, 6, 7], [5, 6, 7], [5, 6, 7], [9, 10], [9, 10], [11, 12, 13, 14, 15, 16], [3],
           [3], [9, 10]]  # groups of 3, 2, 1, 2 and a repeat of an earlier prompt


def _model(arch: str, seed: int = 0, **kw):
    common = dict(vocab_size=VOCAB, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2,
                  pad_token_id=PAD, **kw)
    if arch == "qwen2":
        config = Qwen2Config(hidden_size=32, tie_word_embeddings=True, **common)
    else:
        config = LlamaConfig(hidden_size=48, tie_word_embeddings=False, **common)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


@pytest.fixture(params=["qwen2", "llama"])
def model(request):
    return _model(request.param)


LEAN, HF = fastlm.Decoding, HFForward  # the decoder loop's two forward backends


def _gen(backend, model, prompts, seed, stops, greedy, max_new_tokens=10, temperature=1.0):
    """One batch through the decoder loop with the given backend."""
    seeds = decoder.seeds_for(len(prompts), torch.Generator().manual_seed(seed))
    return decoder.complete(backend(model, prompts, PAD, max_new_tokens), len(prompts),
                            max_new_tokens=max_new_tokens, temperature=temperature,
                            uniforms=decoder.row_uniforms(seeds, max_new_tokens),
                            eos_ids=stops, pad_id=PAD, greedy=greedy)


def _stop_set(rows: list[list[int]], max_new_tokens: int) -> set[int]:
    """Stop tokens that end rows at different steps before max_new_tokens while at least two
    rows run to the end: at step s >= 1, the token of a row not cut yet, three tokens at most."""
    stops: set[int] = set()
    for step in range(1, max_new_tokens - 1):
        for row in rows:
            candidate = stops | {row[step]}
            if not stops & set(row) and sum(not candidate & set(r) for r in rows) >= 2:
                stops = candidate
                break
        if len(stops) == 3:
            break
    return stops


# --- supports, share_prompts ------------------------------------------------------------------


def test_supports_qwen2_llama_not_lora_gpt2_nor_checkpointed_grad():
    qwen, llama = _model("qwen2"), _model("llama")
    assert qwen.model.layers[0].self_attn.q_proj.bias is not None  # q/k/v biases
    assert llama.config.num_key_value_heads < llama.config.num_attention_heads  # GQA
    assert fastlm.supports(qwen) and fastlm.supports(llama)
    assert fastlm.supports(qwen, grad=True) and fastlm.supports(llama, grad=True)
    torch.manual_seed(0)
    lora = prepare_model(_model("qwen2"), ModelConfig(lora_r=4), "cpu")
    assert not fastlm.supports(lora) and not fastlm.supports(lora, grad=True)
    gpt2 = AutoModelForCausalLM.from_config(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1,
                                                       n_head=2, n_positions=64))
    assert not fastlm.supports(gpt2)
    ckpt = prepare_model(_model("llama"), ModelConfig(gradient_checkpointing=True), "cpu")
    assert fastlm.supports(ckpt) and not fastlm.supports(ckpt, grad=True)
    window = _model("qwen2", use_sliding_window=True, sliding_window=4)
    assert not fastlm.supports(window)


def test_share_prompts_groups_consecutive_identical_prompts_only():
    distinct, owner = fastlm.share_prompts([[1, 2], [1, 2], [3], [1, 2], [1, 2], [1], [3]])
    assert distinct == [[1, 2], [3], [1, 2], [1], [3]]
    assert owner == [0, 0, 1, 2, 2, 3, 4]
    assert fastlm.share_prompts([[4]]) == ([[4]], [0])


# --- sample -----------------------------------------------------------------------------------


def test_sample_greedy_is_argmax():
    logits = torch.randn(6, VOCAB, generator=torch.Generator().manual_seed(0))
    assert torch.equal(decoder.sample(logits, 0.7, None, True), logits.argmax(-1))


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_sample_frequencies_match_softmax(temperature):
    logits = torch.randn(8, generator=torch.Generator().manual_seed(2)) * 2  # (V,) V = 8
    draws = 20000
    u = torch.rand(draws, generator=torch.Generator().manual_seed(3))
    tokens = decoder.sample(logits.expand(draws, -1), temperature, u, False)
    freq = torch.bincount(tokens, minlength=8).float() / draws
    expected = torch.softmax(logits / temperature, -1)
    assert (freq - expected).abs().max() < 0.02
    assert tokens.min() >= 0 and tokens.max() < 8


def test_row_uniforms_depend_on_the_row_seed_alone():
    together = decoder.row_uniforms([5, 9, 5, 11], 6)
    assert torch.equal(together[0], together[2]) and not torch.equal(together[0], together[1])
    assert torch.equal(decoder.row_uniforms([11], 6)[0], together[3])  # alone or in a batch
    assert ((together >= 0) & (together < 1)).all()
    seeds = decoder.seeds_for(3, torch.Generator().manual_seed(1))
    assert seeds == decoder.seeds_for(3, torch.Generator().manual_seed(1))
    assert all(0 <= s < 2**decoder.SEED_BITS for s in seeds)


def test_sample_top_p_keeps_the_nucleus_with_the_same_draws():
    logits = torch.randn(5, VOCAB, generator=torch.Generator().manual_seed(6)) * 3
    u = torch.rand(5, generator=torch.Generator().manual_seed(7))
    plain = decoder.sample(logits, 0.8, u, False)
    assert torch.equal(decoder.sample(logits, 0.8, u, False, top_p=1.0), plain)
    tiny = decoder.sample(logits, 0.8, u, False, top_p=1e-6)
    assert torch.equal(tiny, logits.argmax(-1))  # the nucleus of one token
    probs = torch.softmax(logits / 0.8, -1)
    kept = decoder.nucleus(logits, 0.8, 0.5) > float("-inf")  # (5, V)
    for row, p in zip(kept, probs):
        inside = p[row].sum()
        assert inside >= 0.5 and inside - p[row].min() < 0.5  # the smallest set that reaches p
    gen = torch.Generator().manual_seed(8)
    for _ in range(50):
        token = decoder.sample(logits, 0.8, torch.rand(5, generator=gen), False, top_p=0.5)
        assert kept[torch.arange(5), token].all()


# --- generate ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("greedy", [False, True])
def test_generate_matches_transformers_token_for_token(model, seed, greedy):
    prompts = PROMPTS if not greedy else [[seed + 3, 8]] + PROMPTS  # greedy groups: equal rows
    temp = (1.0, 0.7, 1.3)[seed]
    free = _gen(LEAN, model, prompts, seed, set(), greedy, temperature=temp)
    assert free == _gen(HF, model, prompts, seed, set(), greedy, temperature=temp)
    assert all(len(r) == 10 for r in free)
    stops = _stop_set(free, 10)
    fast = _gen(LEAN, model, prompts, seed, stops, greedy, temperature=temp)
    assert fast == _gen(HF, model, prompts, seed, stops, greedy, temperature=temp)
    lengths = [len(r) for r in fast]
    assert min(lengths) < 10 and max(lengths) == 10 and len(set(lengths)) > 2
    for row, whole in zip(fast, free):  # a stop only cuts a row: others' draws are unchanged
        assert row == whole[: len(row)]
        assert not stops & set(row[:-1]) and (len(row) == 10 or row[-1] in stops)


def test_generate_dispatches_to_fastlm_and_back(model, monkeypatch):
    calls = []
    real = fastlm.Decoding
    monkeypatch.setattr(fastlm, "Decoding", lambda *a: calls.append(1) or real(*a))
    kw = {"max_new_tokens": 6, "eos_id": {4, 5}, "pad_id": PAD}
    fast = generate(model, PROMPTS, generator=torch.Generator().manual_seed(0), batch_size=4,
                    **kw)
    assert len(calls) == 3  # 9 prompts in batches of 4
    monkeypatch.setattr(fastlm, "supports", lambda *a, **k: False)
    assert generate(model, PROMPTS, generator=torch.Generator().manual_seed(0), batch_size=4,
                    **kw) == fast
    assert len(calls) == 3


def test_generate_one_token_and_all_rows_stopping(model):
    for n in (1, 3):
        fast = _gen(LEAN, model, PROMPTS, 0, set(), False, max_new_tokens=n)
        assert fast == _gen(HF, model, PROMPTS, 0, set(), False, max_new_tokens=n)
        assert all(len(r) == n for r in fast)
    every = set(range(VOCAB))  # every row stops at its first token
    fast = _gen(LEAN, model, PROMPTS, 0, every, False)
    assert fast == _gen(HF, model, PROMPTS, 0, every, False)
    assert all(len(r) == 1 for r in fast)


@pytest.mark.parametrize("lean", [True, False])
def test_stream_is_generate_of_the_prompt_alone(model, monkeypatch, lean):
    """Chat's streaming goes through the same loop: token for token what `generate` samples
    for the prompt alone (both backends; greedy at temperature 0; a stop token last)."""
    if not lean:
        monkeypatch.setattr(fastlm, "supports", lambda *a, **k: False)
    prompt = PROMPTS[5]
    for seed, temp in ((0, 1.0), (1, 0.7)):
        whole = generate(model, [prompt], max_new_tokens=12, temperature=temp, eos_id=set(),
                         generator=torch.Generator().manual_seed(seed), pad_id=PAD)[0]
        streamed = stream(model, prompt, max_new_tokens=12, temperature=temp, eos_id=set(),
                          generator=torch.Generator().manual_seed(seed))
        assert list(streamed) == whole and len(whole) == 12
        cut = stream(model, prompt, max_new_tokens=12, temperature=temp, eos_id={whole[4]},
                     generator=torch.Generator().manual_seed(seed))
        assert list(cut) == whole[: whole.index(whole[4]) + 1]
    greedy = generate(model, [prompt], max_new_tokens=8, greedy=True, eos_id=set(), pad_id=PAD)
    assert list(stream(model, prompt, max_new_tokens=8, temperature=0.0, eos_id=set())) == \
        greedy[0]


# --- completion_logprobs ----------------------------------------------------------------------


def _completions(seed: int, n: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 9, (n,), generator=gen).tolist()
    return [torch.randint(1, VOCAB, (k,), generator=gen).tolist() for k in lengths]


def _transformers_logprobs(model, prompts, completions, temperature):
    ids, attn, mask = train.pack(prompts, completions, PAD)
    return train.logprobs(model, ids, attn, temperature), mask


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_completion_logprobs_and_gradients_match_transformers(model, temperature):
    completions = _completions(7, len(PROMPTS))
    completions[1] = [PAD, 4]  # a completion token equal to the pad id is a real token
    fast, fmask = fastlm.completion_logprobs(model, PROMPTS, completions, PAD, temperature)
    slow, smask = _transformers_logprobs(model, PROMPTS, completions, temperature)
    assert fmask.sum(-1).tolist() == [len(c) for c in completions]
    assert fast.shape == (len(PROMPTS), max(len(c) for c in completions))
    assert torch.equal(fast[fmask == 0], torch.zeros(int((fmask == 0).sum())))
    a, b = fast[fmask == 1], slow[smask == 1]  # row by row, token by token
    assert torch.allclose(a, b, atol=1e-5, rtol=0)
    weights = torch.randn(len(a), generator=torch.Generator().manual_seed(8))
    grads = []
    for logp in (a, b):
        model.zero_grad(set_to_none=True)
        (weights * logp).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys() == dict(model.named_parameters()).keys()
    for name, g in grads[1].items():  # relative to the tensor's scale: float32 rounding only
        diff = grads[0][name] - g
        assert diff.norm() <= 1e-4 * g.norm(), name
        assert diff.abs().max() <= 1e-5 * g.abs().max(), name
    assert all(g.abs().sum() > 0 for g in grads[0].values())


def test_large_logits_go_chunk_by_chunk_with_the_same_values_and_gradients(model, monkeypatch):
    """Past LOGIT_CHUNK values the LM head runs chunk by chunk (recomputed in the backward pass
    under grad); log-probs and gradients are those of the one-shot computation."""
    completions = _completions(11, len(PROMPTS))
    weights = torch.randn(sum(map(len, completions)), generator=torch.Generator().manual_seed(2))
    results = []
    for chunk in (10 ** 9, 3 * VOCAB):  # one shot, then 3 tokens per chunk
        monkeypatch.setattr(fastlm, "LOGIT_CHUNK", chunk)
        calls = []
        hook = model.lm_head.register_forward_hook(
            lambda m, i, o, calls=calls: calls.append(len(i[0])))
        logp, mask = fastlm.completion_logprobs(model, PROMPTS, completions, PAD, 0.8)
        model.zero_grad(set_to_none=True)
        (weights * logp[mask == 1]).sum().backward()
        hook.remove()
        results.append((logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters()},
                        calls))
    (one, g1, calls1), (chunked, g2, calls2) = results
    assert calls1 == [len(weights)] and max(calls2) == 3 and sum(calls2) == 2 * len(weights)
    assert torch.allclose(one, chunked, atol=1e-6, rtol=0)
    for name, g in g1.items():  # float32 summation order only
        diff = g2[name] - g
        assert diff.norm() <= 1e-5 * g.norm() and diff.abs().max() <= 1e-5 * g.abs().max(), name


def test_completion_logprobs_no_grad_equals_grad(model):
    completions = _completions(9, len(PROMPTS))
    with_grad, mask = fastlm.completion_logprobs(model, PROMPTS, completions, PAD, 1.0)
    assert with_grad.requires_grad
    with torch.no_grad():
        without, mask2 = fastlm.completion_logprobs(model, PROMPTS, completions, PAD, 1.0)
    assert not without.requires_grad
    assert torch.equal(mask, mask2) and torch.allclose(with_grad, without, atol=1e-6)


def test_llama_with_biases_wide_heads_and_scaled_rope_matches_transformers():
    rope = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8}
    model = _model("llama", attention_bias=True, mlp_bias=True, head_dim=16,
                   rope_parameters=rope)  # 4 heads x 16 != hidden 48
    assert model.model.rotary_emb.rope_type == "llama3" and fastlm.supports(model)
    free = _gen(LEAN, model, PROMPTS, 3, set(), False, max_new_tokens=12)
    stops = _stop_set(free, 12)
    assert _gen(LEAN, model, PROMPTS, 3, stops, False, max_new_tokens=12) == \
        _gen(HF, model, PROMPTS, 3, stops, False, max_new_tokens=12)
    completions = _completions(5, len(PROMPTS))
    fast, fmask = fastlm.completion_logprobs(model, PROMPTS, completions, PAD, 0.7)
    slow, smask = _transformers_logprobs(model, PROMPTS, completions, 0.7)
    assert torch.allclose(fast[fmask == 1], slow[smask == 1], atol=1e-5, rtol=0)


# --- zeroth.algorithms.update ------------------------------------------------------------------


def _update(model, ref, rl, batch, adv):
    """One update with a fresh AdamW. Adam divides a step by |grad|, so on an entry whose
    gradient is near 0 float rounding alone would move it by up to lr: eps=1e-3 bounds that
    to lr * |rounding| / eps, far below the tolerance, and leaves larger entries Adam-like."""
    opt = torch.optim.AdamW(model.parameters(), lr=rl.lr, eps=1e-3)
    ctx = SimpleNamespace(policy=model, optimizer=opt, ref=ref, rl=rl, pad_id=PAD)
    return train.update(ctx, batch, adv)


@pytest.mark.parametrize(("case", "use_ref"), [
    ({"mu": 1, "minibatch_size": 9, "beta": 0.04}, True),  # on-policy, one minibatch
    ({"mu": 2, "minibatch_size": 5, "beta": 0.04}, True),  # old log-probs, two minibatches
    ({"mu": 2, "minibatch_size": 5, "algorithm": "dapo"}, False),  # token loss, no reference
])
def test_update_fast_equals_transformers_path(model, monkeypatch, case, use_ref):
    rl = resolve_rl(RLConfig(lr=1e-3, temperature=0.7, max_new_tokens=10, group_size=3,
                             **case))
    assert rl.eps_low is not None and (rl.beta > 0) == use_ref
    ref = None
    if use_ref:
        ref = copy.deepcopy(model)
        with torch.no_grad():
            for i, p in enumerate(ref.parameters()):  # a reference away from the policy
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
    n = len(PROMPTS)
    batch = Rollouts(rows=[{}] * n, prompts=PROMPTS, completions=_completions(11, n),
                     texts=[""] * n, rewards=torch.zeros(n), parts=[{}] * n, rounds=[0] * n)
    adv = torch.randn(len(PROMPTS), generator=torch.Generator().manual_seed(12))
    slow_model, before = copy.deepcopy(model), copy.deepcopy(model)
    calls = []
    real = fastlm.completion_logprobs
    monkeypatch.setattr(fastlm, "completion_logprobs",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    fast_stats = _update(model, ref, rl, batch, adv)
    chunks = -(-len(PROMPTS) // rl.minibatch_size)
    on_policy = rl.mu == 1 and chunks == 1
    # the passes: mu per minibatch, the reference's, and old log-probs for every minibatch but
    # the first (its first pass gives them)
    passes = (rl.mu + use_ref) * chunks + (0 if on_policy else chunks - 1)
    assert len(calls) == passes  # the lean path ran
    monkeypatch.setattr(train.lean, "supports", lambda *a, **k: False)
    slow_stats = _update(slow_model, ref, rl, batch, adv)
    assert len(calls) == passes  # transformers' only
    assert fast_stats.keys() == slow_stats.keys()
    assert {"loss", "clip_frac", "grad_norm", "ratio_mean"} <= fast_stats.keys()
    assert ("kl" in fast_stats) == use_ref
    for key in fast_stats:
        assert fast_stats[key] == pytest.approx(slow_stats[key], rel=1e-4, abs=1e-6), key
    for (name, p), q, p0 in zip(model.named_parameters(), slow_model.parameters(),
                                before.parameters()):
        assert torch.allclose(p, q, atol=1e-6, rtol=0), name
        assert not torch.equal(p, p0), name  # every weight took the step
    if not on_policy:  # the second pass sees a moved policy: ratios away from 1
        assert fast_stats["ratio_mean"] != pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("items", [None, 40])
def test_sequence_loss_and_gradients_match_transformers(model, items):
    """The lean supervised loss (pre-training and SFT take it) is transformers' loss with
    labels: right-padded rows, prompt tokens unlabelled, the same gradients."""
    from zeroth.stages.supervised import right_pad

    rows = [([5, 6, 7, 8, 9], [-100, -100, 7, 8, 9]), ([3, 4], [3, 4]),
            ([11, 12, 13, 14, 15, 16, 17], [11, 12, 13, 14, 15, 16, 17])]
    ids, labels = right_pad(rows, PAD)
    twin = copy.deepcopy(model)
    extra = {} if items is None else {"num_items_in_batch": items}
    want = model(input_ids=ids, labels=labels, use_cache=False, **extra).loss
    got = fastlm.sequence_loss(twin, ids, labels, items)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    want.backward()
    got.backward()
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)

