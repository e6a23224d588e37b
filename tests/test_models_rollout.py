import torch

from zeroth.models.hf import load_model, prompt_ids
from zeroth.rollout.decoder import generate


def test_tokenizer_keeps_digits_and_tags_and_roundtrips(tiny_model):
    _, tok = tiny_model
    text = "<think>7+9+0=16 4+8+1=13</think><answer>936</answer>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pieces = tok.convert_ids_to_tokens(ids)
    assert "<think>" in pieces and "<answer>" in pieces
    assert [p for p in pieces if p.isdigit()] == list("7901648113936")
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_chat_template_renders_prompt(tiny_model):
    _, tok = tiny_model
    ids = prompt_ids(tok, ["What is 12+34?"])[0]
    assert tok.decode(ids) == "<|bos|><|user|>What is 12+34?<|end|><|assistant|>"


def test_model_saves_and_loads_as_hugging_face(tiny_model, tmp_path):
    model, tok = tiny_model
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    again, tok2 = load_model(tmp_path)
    ids = torch.tensor([prompt_ids(tok, ["What is 1+2?"])[0]])
    assert torch.allclose(model(ids).logits, again(ids).logits)
    assert tok2.chat_template == tok.chat_template


def _gen(model, tok, prompts, seed, **kw):
    return generate(model, prompts, max_new_tokens=12, eos_id=tok.eos_token_id,
                    pad_id=tok.pad_token_id, generator=torch.Generator().manual_seed(seed), **kw)


def test_generation_is_seeded_and_batch_independent_of_padding(tiny_model):
    model, tok = tiny_model
    prompts = prompt_ids(tok, ["What is 12+34?", "What is 5+6?"])  # different lengths
    a = _gen(model, tok, prompts, 0)
    assert a == _gen(model, tok, prompts, 0)
    greedy_batch = _gen(model, tok, prompts, 0, greedy=True)
    greedy_alone = [_gen(model, tok, [p], 0, greedy=True)[0] for p in prompts]
    assert greedy_batch == greedy_alone  # left padding does not change what a row sees


def test_generation_stops_at_eos(tiny_model):
    model, tok = tiny_model
    prompts = prompt_ids(tok, ["What is 1+1?", "What is 22+33?"])
    first = _gen(model, tok, prompts, 0, greedy=True)
    stop = first[0][0]  # declare the first greedy token the end of sequence
    out = generate(model, prompts, max_new_tokens=12, eos_id=stop, pad_id=tok.pad_token_id,
                   greedy=True)
    assert out[0] == [stop]
    row = first[1]
    assert out[1] == (row[: row.index(stop) + 1] if stop in row else row)


def test_saved_tokenizer_reloads_identically_with_autotokenizer(tiny_cfg, tiny_task, tmp_path):
    """transformers rebuilds a qwen2 folder's tokenizer from vocab + merges: ours must survive."""
    from dataclasses import replace

    from transformers import AutoTokenizer

    from zeroth.pipeline.run import init_model

    text = "What is 12+345? <think>1+5=06 é 日本</think><answer>357</answer>\n  x"
    for arch in ("qwen2", "llama"):
        cfg = replace(tiny_cfg, model=replace(tiny_cfg.model, arch=arch))
        model, tok = init_model(cfg, tiny_task)
        folder = tmp_path / arch
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        again = AutoTokenizer.from_pretrained(folder)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert again(text, add_special_tokens=False)["input_ids"] == ids
        assert again.decode(ids) == text
        assert prompt_ids(again, ["What is 1+2?"]) == prompt_ids(tok, ["What is 1+2?"])


def test_special_tokens_smuggled_into_an_answer_stay_visible(tiny_model):
    from zeroth.rewards import exact_answer
    from zeroth.stages.eval import decode

    _, tok = tiny_model
    ids = tok("<answer>9<|user|>36</answer>", add_special_tokens=False)["input_ids"]
    text = decode(tok, [ids + [tok.eos_token_id]])[0]
    assert text == "<answer>9<|user|>36</answer>"  # only the closing eos is dropped
    assert exact_answer([text], answer=["936"]) == [0.0]


def test_stop_ids_include_the_generation_config_eos(tiny_model):
    from zeroth.rollout.decoder import stop_ids

    model, tok = tiny_model
    model.generation_config.eos_token_id = [tok.eos_token_id, 7]
    assert stop_ids(model, tok) == {tok.eos_token_id, 7}
