"""Tokenizers and causal LMs, always in Hugging Face format.

`train_tokenizer` fits a small BPE on local text (digits stay single tokens, so arithmetic is
visible to the model) and attaches a chat template; `build_model` makes a randomly initialised
Qwen2 or Llama of the configured size; `load_model` opens a Hugging Face folder (any causal LM;
a hub id only where the hub is reachable: the CLI sets HF_HUB_OFFLINE=1); `prepare_model` puts a
model on its device and dtype, adds LoRA (peft) and gradient checkpointing.

LoRA checkpoints are self-contained: the folder holds the base model (config.json + safetensors,
written by `save_model`) and the adapter beside it (adapter_config.json + adapter_model.safetensors).
`load_model` returns it as a trainable PeftModel, exactly as saved; plain
`AutoModelForCausalLM.from_pretrained` also loads it, with the adapter attached. A folder that
holds only an adapter loads its base from the adapter's `base_model_name_or_path`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import sys
import tempfile
import warnings
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
    PreTrainedTokenizerFast,
)

from zeroth.errors import UserError
from zeroth.models import ARCHS
from zeroth.models.locate import locate_model
from zeroth.models.precision import set_precision

SPECIAL = {"bos": "<|bos|>", "eos": "<|end|>", "pad": "<|pad|>", "unk": "<|unk|>"}
ROLES = ["<|system|>", "<|user|>", "<|assistant|>"]
TAGS = ["<think>", "</think>", "<answer>", "</answer>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
    "{% if m['role'] != 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# For models without a chat template (base models, R1-Zero style). A system message replaces the
# instruction. The assistant turn opens with "Assistant:\n", so a prompt rendered with
# add_generation_prompt is an exact prefix of the conversation that continues it.
R1_INSTRUCTION = (
    "A conversation between a User and an Assistant. The Assistant first reasons about the "
    "problem step by step inside <think> </think>, then writes its final answer inside "
    "<answer> </answer>, like this: <think> reasoning </think> <answer> answer </answer>."
)
R1_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% if messages and messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}"
    "{% else %}" + R1_INSTRUCTION + "{% endif %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}{{ '\\n\\nUser: ' + m['content'] }}"
    "{% elif m['role'] == 'assistant' %}{{ '\\nAssistant:\\n' + m['content'] }}"
    "{% if eos_token %}{{ eos_token }}{% endif %}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '\\nAssistant:\\n' }}{% endif %}"
)  # newlines as Jinja strings: transformers renders with trim_blocks
TEMPLATES = ("auto", "own", "r1")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


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


def hf_config(model_cfg, vocab_size: int, bos=None, eos=None, pad=None):
    """The transformers config of the from-scratch model."""
    return ARCHS[model_cfg.arch](
        vocab_size=vocab_size,
        hidden_size=model_cfg.hidden_size,
        intermediate_size=model_cfg.intermediate_size,
        num_hidden_layers=model_cfg.num_layers,
        num_attention_heads=model_cfg.num_heads,
        num_key_value_heads=model_cfg.num_heads,
        max_position_embeddings=model_cfg.max_len,
        tie_word_embeddings=True,
        bos_token_id=bos, eos_token_id=eos, pad_token_id=pad,
    )


def build_model(model_cfg, tokenizer) -> torch.nn.Module:
    """A randomly initialised causal LM (the caller seeds torch first)."""
    config = hf_config(model_cfg, len(tokenizer), tokenizer.bos_token_id,
                       tokenizer.eos_token_id, tokenizer.pad_token_id)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# Finding and loading a model.
# ---------------------------------------------------------------------------------------------


def _is_hub_id(text: str) -> bool:
    parts = text.split("/")
    return (0 < len(parts) <= 2 and all(parts) and not text.startswith((".", "~"))
            and os.sep not in text.replace("/", ""))


def resolve_model_path(path: str | Path) -> Path | str:
    """A local folder (Path; a run directory's final/ or latest checkpoint's model, a
    checkpoint's model/: see `zeroth.models.locate.locate_model`), or a hub id (str) when
    there is no such folder and the hub may be used (HF_HUB_OFFLINE is not 1); otherwise a UserError."""
    folder = Path(path).expanduser()
    if folder.is_dir():
        return locate_model(folder)[0]
    if folder.exists():
        return folder
    text = str(path)
    if _is_hub_id(text) and os.environ.get("HF_HUB_OFFLINE") != "1":
        return text
    raise UserError(f"model path '{path}' does not exist — give a local Hugging Face model "
                    "folder (a hub id is used only with HF_HUB_OFFLINE=0)")


def check_model_dir(path: str | Path) -> Path:
    """A local Hugging Face model folder with weights and a tokenizer (or a LoRA adapter)."""
    folder = resolve_model_path(path)
    if isinstance(folder, str):
        raise UserError(f"model path '{path}' does not exist")
    what = None
    if (folder / "adapter_config.json").is_file():  # a tokenizer may come with the base
        if not any(folder.glob("adapter_model.*")):
            what = "an adapter_config.json but no adapter_model.safetensors"
    elif not (folder / "config.json").is_file():
        what = "no config.json"
    elif not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        what = "no weights (*.safetensors)"
    elif not _has_tokenizer(folder):
        what = "no tokenizer (tokenizer.json)"
    if what:
        raise UserError(f"model path '{path}' has {what} — give a Hugging Face model folder "
                        "saved with save_pretrained (model and tokenizer)")
    return folder


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or (folder / "tokenizer.model").is_file()


def as_dtype(dtype) -> torch.dtype | str:
    """torch dtype from a config name ("float32", "bfloat16"); "auto" keeps the saved one."""
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if dtype not in DTYPES:
        raise UserError(f"model.dtype={dtype!r} is not supported — use float32 or bfloat16")
    return DTYPES[dtype]


def is_lora(model) -> bool:
    """True for a peft model (LoRA adapters on a frozen base)."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def load_model(path: str | Path, dtype: torch.dtype | str = torch.float32, template: str = "auto"):
    """(model, tokenizer) from a Hugging Face folder (or hub id); a folder with a LoRA adapter
    gives a trainable PeftModel. `template`: auto (the tokenizer's own chat template, else the
    R1-style one) | own (required) | r1 (always the R1-style one)."""
    source = resolve_model_path(path)
    if isinstance(source, Path):
        check_model_dir(source)
    dtype = as_dtype(dtype)
    adapter = isinstance(source, Path) and (source / "adapter_config.json").is_file()
    try:
        base = _adapter_base(source) if adapter else source
        tok_source = source if isinstance(source, str) or _has_tokenizer(source) else base
        tokenizer = AutoTokenizer.from_pretrained(tok_source)
        model = _load_lora(source, base, dtype) if adapter else \
            AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"model path '{path}' could not be loaded: {first}") from None
    apply_template(tokenizer, template, path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def apply_template(tokenizer, template: str = "auto", where: str | Path = "model"):
    """Give `tokenizer` the chat template that `template` asks for (see `load_model`)."""
    if template not in TEMPLATES:
        raise UserError(f"model.template={template!r} is unknown — use auto, own or r1")
    if template == "r1" or (template == "auto" and not tokenizer.chat_template):
        tokenizer.chat_template = R1_TEMPLATE
    elif not tokenizer.chat_template:
        raise UserError(f"model path '{where}': the tokenizer has no chat template — use "
                        "model.template=r1 (or auto) for the R1-style template")
    return tokenizer


def _adapter_base(folder: Path) -> Path | str:
    """Where the base model of an adapter folder is: the folder itself when it holds one."""
    if (folder / "config.json").is_file():
        return folder
    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path") or ""
    if base and (folder / base).is_dir():
        return (folder / base).resolve()
    if not base:
        raise UserError(f"adapter '{folder}' names no base model (base_model_name_or_path)")
    return resolve_model_path(base)


@contextlib.contextmanager
def _without_adapter(folder: Path):
    """A temporary view of `folder` without its adapter files, so that transformers loads the
    bare base model (it would attach the adapter itself otherwise)."""
    with tempfile.TemporaryDirectory(prefix="zeroth-base-") as view:
        for entry in folder.iterdir():
            if not entry.name.startswith("adapter_"):
                os.symlink(entry.resolve(), Path(view) / entry.name)
        yield Path(view)


def _load_lora(folder: Path, base: Path | str, dtype):
    from peft import PeftModel

    if base == folder:
        with _without_adapter(folder) as view:
            model = AutoModelForCausalLM.from_pretrained(view, dtype=dtype)
        model.config._name_or_path = str(folder)
    else:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    with warnings.catch_warnings():  # peft asks a deprecated transformers API
        warnings.simplefilter("ignore", FutureWarning)
        return PeftModel.from_pretrained(model, folder, is_trainable=True)


def save_model(model, tokenizer, folder: str | Path) -> None:
    """save_pretrained as safetensors; a PeftModel as its base model plus the adapter."""
    model = getattr(model, "_orig_mod", model)  # a torch.compile wrapper saves its inner module
    folder = Path(folder)
    kwargs = {}
    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:
        kwargs["safe_serialization"] = True
    if is_lora(model):
        base = model.get_base_model()
        base.save_pretrained(folder, state_dict=_base_state_dict(base), **kwargs)
        model.save_pretrained(folder)  # adapter_config.json + adapter_model.safetensors
    else:
        model.save_pretrained(folder, **kwargs)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def _base_state_dict(base) -> dict:
    """The base weights of a LoRA-wrapped model under their original names (adapters left out)."""
    out = {}
    for key, value in base.state_dict().items():
        if "lora_" in key or ".modules_to_save." in key:
            continue
        out[key.replace(".base_layer.", ".").replace(".original_module.", ".")] = value
    return out


# ---------------------------------------------------------------------------------------------
# Getting a model ready to train: device, dtype, LoRA, gradient checkpointing.
# ---------------------------------------------------------------------------------------------


def pick_device(name: str = "cpu") -> torch.device:
    """run.device: cpu | cuda | cuda:N | auto (cuda when torch sees a GPU, else cpu)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not (name == "cuda" or name.startswith("cuda:")):
        raise UserError(f"run.device={name!r} is unknown — use cpu, cuda or auto")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"run.device={name} but torch sees no CUDA GPU — use run.device=cpu "
                        "(or auto)")
    return torch.device(name)


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def prepare_model(model, model_cfg, device: str | torch.device = "cpu"):
    """`model` in model_cfg.dtype on `device`, with LoRA adapters when model_cfg.lora_r > 0 (and
    it has none yet), gradient checkpointing when asked, computing in model_cfg.precision. Returns the model to train (a
    PeftModel with LoRA). Seed torch first: new adapters are randomly initialised."""
    device = pick_device(device) if isinstance(device, str) else torch.device(device)
    dtype = as_dtype(model_cfg.dtype)
    for name, param in model.named_parameters():  # adapters stay float32 (peft's choice)
        if param.is_floating_point() and "lora_" not in name and param.dtype != dtype:
            param.data = param.data.to(dtype)  # parameters only: buffers keep their precision
    model.to(device)
    if model_cfg.lora_r > 0 and not is_lora(model):
        model = add_lora(model, model_cfg)
    if model_cfg.gradient_checkpointing:
        enable_checkpointing(model)
    return set_precision(model, model_cfg.precision, model_cfg.dtype)


def lora_config(model_cfg):
    """The peft LoraConfig of model_cfg: rank lora_r, lora_alpha, lora_dropout, lora_targets
    ("all-linear": every linear layer but the output head; or comma-separated module names)."""
    from peft import LoraConfig

    spec = model_cfg.lora_targets.strip()
    targets = "all-linear" if spec == "all-linear" else [
        t.strip() for t in spec.split(",") if t.strip()]
    return LoraConfig(r=model_cfg.lora_r, lora_alpha=model_cfg.lora_alpha,
                      lora_dropout=model_cfg.lora_dropout, target_modules=targets,
                      task_type="CAUSAL_LM")


def add_lora(model, model_cfg):
    """A PeftModel: LoRA adapters on model_cfg.lora_targets, every other weight frozen."""
    from peft import get_peft_model

    try:
        with warnings.catch_warnings():  # peft asks a deprecated transformers API
            warnings.simplefilter("ignore", FutureWarning)
            return get_peft_model(model, lora_config(model_cfg))
    except ValueError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"model.lora_targets={model_cfg.lora_targets!r}: {first}") from None


def enable_checkpointing(model) -> None:
    """Gradient (activation) checkpointing on every decoder layer, effective in eval mode too.

    transformers checkpoints a layer only while that layer's `training` flag is set, but the RL
    update runs under model.eval() (no dropout: sampled, old and new log-probs see one network).
    So each decoder layer sets its own flag (only its own: the dropout modules inside it still
    follow train()/eval()) to torch.is_grad_enabled() as it is called: checkpointing follows
    the grad mode, and generation under no_grad keeps its KV cache. Dropout rates the layer
    itself reads (float attributes named *dropout*) are set to 0."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    base = model.get_base_model() if is_lora(model) else model
    enable = getattr(base, "activation_checkpointing_enable", None)
    if enable is not None:
        enable({"use_reentrant": False})
    else:  # transformers before activation_checkpointing_enable
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for module in base.modules():
        if isinstance(module, GradientCheckpointingLayer) and module.gradient_checkpointing:
            for key, value in list(vars(module).items()):
                if "dropout" in key and isinstance(value, float):
                    setattr(module, key, 0.0)
            if not isinstance(module, _GradModeFlag):
                module.__class__ = _grad_mode_class(type(module))


class _GradModeFlag:
    """Mixed into a checkpointed decoder layer's class: its training flag is the grad mode
    when it is called (transformers reads the flag in __call__, before any forward hook)."""

    def __call__(self, *args, **kwargs):
        self.training = torch.is_grad_enabled()
        return super().__call__(*args, **kwargs)


@functools.cache
def _grad_mode_class(cls: type) -> type:
    return type(cls.__name__, (_GradModeFlag, cls), {"__qualname__": cls.__qualname__})


def end_of_turn(tokenizer) -> str:
    """The token that closes an assistant turn in the chat template (ChatML's <|im_end|>, which
    a base model's eos is not), or eos when the template closes turns with it or not at all.
    Generation stops at it and SFT learns to write it."""
    key = (id(tokenizer), tokenizer.chat_template, tokenizer.eos_token)
    if key not in _TURN_ENDS:
        _TURN_ENDS[key] = _find_end_of_turn(tokenizer)
    return _TURN_ENDS[key]


_TURN_ENDS: dict[tuple, str] = {}


def _find_end_of_turn(tokenizer) -> str:
    mark = "\x00zeroth-mark\x00"
    turns = [{"role": "user", "content": "1"}, {"role": "assistant", "content": mark}]
    try:
        text = tokenizer.apply_chat_template(turns, tokenize=False)
    except Exception:  # noqa: BLE001 — a template that cannot render this falls back to eos
        return tokenizer.eos_token
    after = text.split(mark, 1)[1] if mark in text else ""
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    special = set(tokenizer.all_special_ids) | {
        i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    if ids and ids[0] in special:
        return tokenizer.convert_ids_to_tokens(ids[0])
    return tokenizer.eos_token


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


def trainable(model) -> list:
    """The parameters an optimiser updates (LoRA: the adapters only)."""
    return [p for p in model.parameters() if p.requires_grad]
