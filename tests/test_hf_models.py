"""Real Hugging Face models: templates, dtypes, LoRA, gradient checkpointing, memory, export.

Tiny Qwen2 and Llama models are built here and saved to temporary folders; nothing downloads.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, Qwen2Config

from zeroth.config import ModelConfig
from zeroth.errors import UserError
from zeroth.models.hf import (
    CHAT_TEMPLATE,
    R1_TEMPLATE,
    is_lora,
    load_model,
    n_params,
    pick_device,
    prepare_model,
    prompt_ids,
    resolve_model_path,
    train_tokenizer,
)
from zeroth.models.locate import model_dir
from zeroth.pipeline import memory
from zeroth.pipeline.checkpoint import load_checkpoint, save_checkpoint
from zeroth.pipeline.export import export_model, save_final, verify
from zeroth.rollout.decoder import generate
from zeroth.stages.pretrain import render

LINES = ["What is 12+34? <think>2+4=6 1+3=4</think><answer>46</answer>",
         "The quick brown fox jumps over the lazy dog.", "User: hello\nAssistant: hi there"] * 4


def _save(folder, config, tok):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(LINES, 300)


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory, tok):
    config = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         tie_word_embeddings=True, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)
    return _save(tmp_path_factory.mktemp("qwen"), config, tok)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, tok):
    """A Llama whose tokenizer has no chat template (a base model)."""
    bare = train_tokenizer(LINES, 300)
    bare.chat_template = None
    config = LlamaConfig(vocab_size=len(bare), hidden_size=48, intermediate_size=96,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4,
                         tie_word_embeddings=False, eos_token_id=bare.eos_token_id,
                         pad_token_id=bare.pad_token_id, bos_token_id=bare.bos_token_id)
    return _save(tmp_path_factory.mktemp("llama"), config, bare)


def _ids(tok, text="What is 1+2?"):
    return torch.tensor([prompt_ids(tok, [text])[0]])


def _lora(qwen_dir, seed=1, **kw):
    model, tok = load_model(qwen_dir)
    torch.manual_seed(seed)
    return prepare_model(model, ModelConfig(lora_r=4, lora_alpha=8.0, **kw), "cpu"), tok


def _step(model, tok, lr=0.05):
    """One AdamW step on a language-modelling loss; returns the optimizer."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    ids = torch.tensor([tok(render(tok, "What is 12+34?", "<answer>46</answer>"),
                            add_special_tokens=False)["input_ids"]])
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return opt


# --- templates -------------------------------------------------------------------------------


def test_templates_auto_own_r1(qwen_dir, llama_dir):
    _, own = load_model(qwen_dir)
    assert own.chat_template == CHAT_TEMPLATE
    _, forced = load_model(qwen_dir, template="r1")
    assert forced.chat_template == R1_TEMPLATE
    _, fallback = load_model(llama_dir)  # no template of its own: R1-style
    assert fallback.chat_template == R1_TEMPLATE
    with pytest.raises(UserError, match="no chat template"):
        load_model(llama_dir, template="own")
    with pytest.raises(UserError, match="model.template"):
        load_model(qwen_dir, template="chatml")


def test_r1_template_renders_turns_and_generation_prompt(llama_dir):
    _, tok = load_model(llama_dir)
    head = tok.decode(prompt_ids(tok, ["What is 1+2?"])[0])
    assert head.startswith(tok.bos_token + "A conversation between a User and an Assistant.")
    assert "<think> </think>" in head and "<answer> </answer>" in head
    assert head.endswith("\n\nUser: What is 1+2?\nAssistant:\n")
    full = tok.apply_chat_template(
        [{"role": "user", "content": "What is 1+2?"},
         {"role": "assistant", "content": "<answer>3</answer>"}], tokenize=False)
    assert full == render(tok, "What is 1+2?", "<answer>3</answer>")  # prompt is a prefix
    system = tok.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        add_generation_prompt=True, tokenize=False)
    assert system == tok.bos_token + "Be brief.\n\nUser: Hi\nAssistant:\n"
    ids = tok(full, add_special_tokens=False)["input_ids"]
    prompt = prompt_ids(tok, ["What is 1+2?"])[0]
    assert ids[: len(prompt)] == prompt  # the boundary tokenizes the same way


def test_missing_folder_and_hub_ids(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="does not exist"):
        load_model(tmp_path / "nope")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="does not exist"):
        resolve_model_path("Qwen/Qwen2.5-0.5B")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert resolve_model_path("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    with pytest.raises(UserError, match="does not exist"):
        resolve_model_path("./not/here")  # a path, never a hub id


# --- dtype, device ---------------------------------------------------------------------------


def test_bf16_loads_and_generates(qwen_dir):
    model, tok = load_model(qwen_dir, dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    out = generate(model, prompt_ids(tok, ["What is 1+2?", "Hi"]), max_new_tokens=5,
                   eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
                   generator=torch.Generator().manual_seed(0))
    assert len(out) == 2 and all(isinstance(t, int) for row in out for t in row)
    fp32, _ = load_model(qwen_dir)
    cast = prepare_model(fp32, ModelConfig(dtype="bfloat16"), "cpu")
    assert {p.dtype for p in cast.parameters()} == {torch.bfloat16}
    rotary = dict(cast.named_buffers())["model.rotary_emb.inv_freq"]
    assert rotary.dtype == torch.float32  # buffers keep their precision, as when loading bf16
    assert torch.equal(cast(_ids(tok)).logits, model(_ids(tok)).logits)


def test_pick_device(monkeypatch):
    assert pick_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    with pytest.raises(UserError, match="no CUDA GPU"):
        pick_device("cuda")
    with pytest.raises(UserError, match="unknown"):
        pick_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto") == torch.device("cuda")


# --- LoRA ------------------------------------------------------------------------------------


def test_lora_trains_only_adapters_and_a_step_changes_the_merged_model(qwen_dir, tmp_path):
    model, tok = _lora(qwen_dir)
    assert is_lora(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    base_before = {n: p.detach().clone() for n, p in model.named_parameters()
                   if not p.requires_grad}
    before = model(_ids(tok)).logits.detach()  # lora_B starts at zero: the base model's output
    _step(model, tok)
    assert all(torch.equal(p, base_before[n]) for n, p in model.named_parameters()
               if not p.requires_grad)
    save_final(model, tok, tmp_path / "final")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    after = merged(_ids(tok)).logits
    assert not torch.allclose(after, before, atol=1e-4)
    assert torch.allclose(after, model(_ids(tok)).logits, atol=1e-5)
    assert is_lora(model)  # save_final leaves the model in memory as it was


def test_lora_checkpoint_round_trips_exactly_and_resumes(qwen_dir, tmp_path):
    model, tok = _lora(qwen_dir)
    opt = _step(model, tok)
    path = save_checkpoint(tmp_path / "run", "rl-000001", model=model, tokenizer=tok,
                           optimizer=opt, state={"step": 1})
    moved = tmp_path / "elsewhere"
    shutil.move(str(path), moved)  # self-contained: no path to anything outside it
    again, tok2 = load_model(model_dir(moved))
    assert is_lora(again) and tok2.chat_template == tok.chat_template
    assert torch.equal(again(_ids(tok)).logits, model(_ids(tok)).logits)
    assert {n for n, p in again.named_parameters() if p.requires_grad} == \
        {n for n, p in model.named_parameters() if p.requires_grad}
    opt2 = torch.optim.AdamW([p for p in again.parameters() if p.requires_grad], lr=0.05)
    load_checkpoint(moved, optimizer=opt2, restore_rng=False)
    for m, o in ((model, opt), (again, opt2)):  # one more identical step on each
        ids = _ids(tok)
        m(input_ids=ids, labels=ids).loss.backward()
        o.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))
    plain = AutoModelForCausalLM.from_pretrained(model_dir(moved))  # adapter attached by HF
    ref, _ = load_model(model_dir(moved))
    assert torch.allclose(plain(_ids(tok)).logits, ref(_ids(tok)).logits, atol=1e-6)


def test_an_adapter_only_folder_loads_on_its_base(qwen_dir, tmp_path):
    model, tok = _lora(qwen_dir)
    _step(model, tok)
    model.save_pretrained(tmp_path / "adapter")  # peft's own layout: adapter files only
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(qwen_dir)
    again, tok2 = load_model(tmp_path / "adapter")  # the tokenizer comes from the base
    assert is_lora(again) and tok2.chat_template == CHAT_TEMPLATE
    assert torch.equal(again(_ids(tok)).logits, model(_ids(tok)).logits)


def test_lora_bf16_round_trip(qwen_dir, tmp_path):
    model, tok = load_model(qwen_dir, dtype="bfloat16")
    torch.manual_seed(1)
    model = prepare_model(model, ModelConfig(lora_r=2, dtype="bfloat16",
                                             lora_targets="q_proj,v_proj"), "cpu")
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(("q_proj" in n or "v_proj" in n) for n in names)
    _step(model, tok)
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    save_checkpoint(tmp_path, "rl-000001", model=model, tokenizer=tok, state={})
    again, _ = load_model(model_dir(tmp_path / "checkpoints" / "rl-000001"), dtype="bfloat16")
    again = prepare_model(again, ModelConfig(lora_r=2, dtype="bfloat16"), "cpu")
    assert torch.equal(again(_ids(tok)).logits, model(_ids(tok)).logits)
    with pytest.raises(UserError, match="lora_targets"):
        prepare_model(load_model(qwen_dir)[0], ModelConfig(lora_r=2, lora_targets="nothing"))


# --- export ----------------------------------------------------------------------------------


def test_export_merges_and_plain_transformers_loads_and_generates(qwen_dir, tmp_path):
    model, tok = _lora(qwen_dir)
    _step(model, tok)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("run: {}\n")
    save_checkpoint(run, "rl-000001", model=model, tokenizer=tok, state={})
    out = export_model(run, tmp_path / "out")  # a run without final/: its latest checkpoint
    names = set(os.listdir(out))
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not any(n.startswith("adapter_") for n in names)
    plain = AutoModelForCausalLM.from_pretrained(out)
    assert type(plain).__name__ == "Qwen2ForCausalLM"
    assert AutoTokenizer.from_pretrained(out).chat_template == CHAT_TEMPLATE
    assert torch.allclose(plain(_ids(tok)).logits, model(_ids(tok)).logits, atol=1e-5)
    assert len(verify(out)) == 4
    with pytest.raises(UserError, match="not empty"):
        export_model(run, out)
    save_final(load_model(qwen_dir)[0], tok, run / "final")  # final/ once the run is finished
    (run / "summary.json").write_text("{}")
    export_model(run, out, force=True)
    base, _ = load_model(qwen_dir)
    again = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(again(_ids(tok)).logits, base(_ids(tok)).logits)
    assert not list(tmp_path.glob(".out.*"))  # no temporary folder left behind


def test_export_of_a_plain_folder_and_bad_sources(llama_dir, tmp_path):
    out = export_model(llama_dir, tmp_path / "llama")
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == R1_TEMPLATE  # the template the model is used with
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        export_model(llama_dir, tmp_path / "file")
    with pytest.raises(UserError, match="not a folder"):
        export_model(tmp_path / "missing", tmp_path / "o")
    with pytest.raises(UserError, match="no final model"):
        (tmp_path / "emptyrun").mkdir()
        (tmp_path / "emptyrun" / "config.yaml").write_text("run: {}\n")
        export_model(tmp_path / "emptyrun", tmp_path / "o2")


# --- gradient checkpointing -----------------------------------------------------------------


def _grads_and_calls(model, tok):
    calls = []
    layers = (model.get_base_model() if is_lora(model) else model).model.layers
    hooks = [layer.self_attn.register_forward_hook(lambda *_: calls.append(1))
             for layer in layers]
    model.eval()  # as in the RL update
    ids = _ids(tok, "What is 12+34? <think>")
    model.zero_grad(set_to_none=True)
    model(input_ids=ids, labels=ids).loss.backward()
    for h in hooks:
        h.remove()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, \
        len(calls)


@pytest.mark.parametrize("lora", [False, True])
def test_gradient_checkpointing_same_gradients_and_recomputes(qwen_dir, lora):
    kw = {"lora_r": 4} if lora else {}
    plain, tok = load_model(qwen_dir)
    torch.manual_seed(1)
    plain = prepare_model(plain, ModelConfig(**kw), "cpu")
    again, _ = load_model(qwen_dir)
    torch.manual_seed(1)
    ckpt = prepare_model(again, ModelConfig(gradient_checkpointing=True, **kw), "cpu")
    if lora:  # non-zero adapters, the same in both
        with torch.no_grad():
            for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
                if "lora_B" in name:
                    a.normal_(std=0.1)
                    b.copy_(a)
    g1, n1 = _grads_and_calls(plain, tok)
    g2, n2 = _grads_and_calls(ckpt, tok)
    assert n1 == 2 and n2 == 4  # two layers; each attention runs again in the backward pass
    assert g1.keys() == g2.keys() and g1
    assert all(torch.allclose(g1[k], g2[k], atol=1e-6) for k in g1)
    assert not ckpt.training  # still in eval mode: no dropout anywhere
    prompts = prompt_ids(tok, ["What is 1+2?", "Hi"])
    args = {"max_new_tokens": 6, "eos_id": tok.eos_token_id, "pad_id": tok.pad_token_id}
    assert generate(ckpt, prompts, generator=torch.Generator().manual_seed(3), **args) == \
        generate(plain, prompts, generator=torch.Generator().manual_seed(3), **args)


# --- memory ----------------------------------------------------------------------------------


def _cfg(tiny_cfg, **model):
    return replace(tiny_cfg, model=replace(tiny_cfg.model, **model))


def test_memory_counts_parameters_from_config_only(tiny_cfg, tiny_model, qwen_dir):
    model, _ = load_model(qwen_dir)
    est = memory.estimate(_cfg(tiny_cfg, path=str(qwen_dir)))
    assert est["params"] == n_params(model)
    assert est["weights"] == sum(p.numel() * p.element_size() for p in model.parameters())
    assert est["grads"] == est["weights"] and est["optimizer"] == 2 * est["weights"]
    half = memory.estimate(_cfg(tiny_cfg, path=str(qwen_dir), dtype="bfloat16"))
    assert half["weights"] * 2 == est["weights"]
    lora_model, _ = _lora(qwen_dir)
    lora = memory.estimate(_cfg(tiny_cfg, path=str(qwen_dir), lora_r=4))
    adapters = sum(p.numel() for p in lora_model.parameters() if p.requires_grad)
    assert lora["trainable"] == adapters and lora["optimizer"] == 2 * 4 * adapters
    scratch, tok = tiny_model
    shape = memory.model_shape(tiny_cfg.model)  # the from-scratch shape
    assert shape["params"] - n_params(scratch) == \
        (tiny_cfg.model.vocab_size + 4 - len(tok)) * tiny_cfg.model.hidden_size
    assert est["reference"] == 0  # the tiny recipe has beta = 0
    ref = memory.estimate(replace(tiny_cfg, rl=replace(tiny_cfg.rl, beta=0.04)))
    assert ref["reference"] == ref["weights"]


def test_memory_counts_the_lean_decoders_weight_copy(tiny_cfg, qwen_dir):
    """Generation through zeroth.models.lean copies the decoder layers' weights (fused, input-major);
    the estimate counts that copy beside the KV cache, and not for LoRA models (generic path)."""
    model, _ = load_model(qwen_dir)
    est = memory.estimate(_cfg(tiny_cfg, path=str(qwen_dir)))
    layers = sum(p.numel() * p.element_size() for p in model.model.layers.parameters())
    assert est["decode"] == layers > 0
    assert est["total"] - est["weights"] - est["grads"] - est["optimizer"] - est["reference"] \
        == max(est["activations"], est["kv_cache"] + layers)
    assert memory.estimate(_cfg(tiny_cfg, path=str(qwen_dir), lora_r=4))["decode"] == 0
    assert "decoding weights" in memory.check(_cfg(tiny_cfg, path=str(qwen_dir)))


def _saved_bytes(model, ids):
    """(bytes autograd keeps for the backward pass, parameters excluded, plus the logits'
    gradient; the part kept by the first decoder layer alone)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen, layer0, inside = {}, {}, []

    def pack(t):
        key = t.untyped_storage().data_ptr()
        if key not in params:
            seen[key] = t.untyped_storage().nbytes()
            if inside:
                layer0[key] = seen[key]
        return t

    layer = model.model.layers[0]
    hooks = [layer.register_forward_pre_hook(lambda *_: inside.append(1)),
             layer.register_forward_hook(lambda *_: inside.clear())]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        logits.float().log_softmax(-1).mean()
    for h in hooks:
        h.remove()
    return sum(seen.values()) + logits.numel() * 4, sum(layer0.values())


def test_memory_activation_estimate_matches_measurement(qwen_dir):
    """The estimate against what autograd really keeps, with and without checkpointing (which
    keeps each layer's input and, in the backward pass, one layer's activations at a time)."""
    model, _ = load_model(qwen_dir)
    shape = memory.model_shape(ModelConfig(path=str(qwen_dir)))
    ids = torch.randint(0, shape["vocab"], (4, 48))
    full, one_layer = _saved_bytes(model.eval(), ids)
    estimated = memory.activation_bytes(shape, 4, 48, False)
    assert full / 1.25 < estimated < full * 1.25
    model = prepare_model(model, ModelConfig(gradient_checkpointing=True), "cpu").eval()
    kept, _ = _saved_bytes(model, ids)
    assert kept < full
    estimated = memory.activation_bytes(shape, 4, 48, True)
    assert (kept + one_layer) / 1.25 < estimated < (kept + one_layer) * 1.25


def test_memory_check_refuses_and_explains(tiny_cfg, monkeypatch):
    line = memory.check(tiny_cfg)
    assert line.startswith("memory estimate:") and "free on cpu" in line
    assert "reference -" in line and "AdamW" in line
    monkeypatch.setattr(memory, "available", lambda device: 1000)
    with pytest.raises(UserError) as err:
        memory.check(tiny_cfg)
    text = str(err.value)
    for tip in ("model.lora_r", "model.dtype=bfloat16", "model.gradient_checkpointing=true",
                "rl.minibatch_size", "run.memory_check=false"):
        assert tip in text
    off = replace(tiny_cfg, run=replace(tiny_cfg.run, memory_check=False))
    assert memory.check(off).startswith("memory estimate:")
    assert json.dumps(memory.estimate(tiny_cfg))  # plain numbers
