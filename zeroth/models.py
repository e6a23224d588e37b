"""Tokenizers and causal LMs, always in Hugging Face format.

`train_tokenizer` fits a small BPE on local text (digits stay single tokens, so arithmetic is
visible to the model) and attaches a chat template; `build_model` makes a randomly initialised
Qwen2 or Llama of the configured size; `load_model` opens a local Hugging Face folder.
Nothing here downloads anything.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    trainers,
)
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from zeroth.errors import UserError

SPECIAL = {"bos": "<|bos|>", "eos": "<|end|>", "pad": "<|pad|>", "unk": "<|unk|>"}
ROLES = ["<|system|>", "<|user|>", "<|assistant|>"]
TAGS = ["<think>", "</think>", "<answer>", "</answer>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
    "{% if m['role'] != 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
ARCHS = {"qwen2": Qwen2Config, "llama": LlamaConfig}


# The pre-tokenizer of Qwen2's tokenizer: digits split one by one, byte-level BPE. Training with
# exactly this pipeline means `AutoTokenizer` (which rebuilds Qwen2's pipeline from the vocab and
# merges for qwen2 folders) reloads the very tokenizer we trained, whatever the architecture.
SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
         r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE fitted to `texts` (any text encodes; each digit is its own token)."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    specials = list(SPECIAL.values()) + ROLES
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    # the reasoning tags are ordinary text to a reader (kept by decode), but one token each
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAGS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIAL["bos"], eos_token=SPECIAL["eos"],
        pad_token=SPECIAL["pad"], unk_token=SPECIAL["unk"],
        additional_special_tokens=ROLES,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(model_cfg, tokenizer) -> torch.nn.Module:
    """A randomly initialised causal LM (the caller seeds torch first)."""
    config = ARCHS[model_cfg.arch](
        vocab_size=len(tokenizer),
        hidden_size=model_cfg.hidden_size,
        intermediate_size=model_cfg.intermediate_size,
        num_hidden_layers=model_cfg.num_layers,
        num_attention_heads=model_cfg.num_heads,
        num_key_value_heads=model_cfg.num_heads,
        max_position_embeddings=model_cfg.max_len,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def check_model_dir(path: str | Path) -> Path:
    """A local Hugging Face model folder with weights, a tokenizer and a chat template."""
    folder = Path(path).expanduser()
    what = None
    if not (folder / "config.json").is_file():
        what = "no config.json"
    elif not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        what = "no weights (*.safetensors)"
    elif not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer.model").is_file():
        what = "no tokenizer (tokenizer.json)"
    if what:
        raise UserError(f"model path '{path}' has {what} — give a Hugging Face model folder "
                        "saved with save_pretrained (model and tokenizer)")
    return folder


def load_model(path: str | Path, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) from a local Hugging Face folder."""
    folder = check_model_dir(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"model path '{path}' could not be loaded: {first}") from None
    if not tokenizer.chat_template:
        raise UserError(f"model path '{path}': the tokenizer has no chat template — use an "
                        "instruct/chat model folder or add a chat_template")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def prompt_ids(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Token ids of each user prompt rendered with the chat template, ready for the assistant."""
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": p}],
                                      add_generation_prompt=True, tokenize=True,
                                      return_dict=False)
        for p in prompts
    ]


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())
