"""Export: every final model is a plain Hugging Face folder.

`export_model(source, out)` takes a model folder, a checkpoint (has model/) or a run directory
(its final/ model when there is one, else its latest checkpoint), merges LoRA adapters into the
weights (peft merge_and_unload), and writes safetensors, config.json, generation_config.json and
the tokenizer with its chat template into `out` — written into a temporary folder beside it, then
renamed into place — and checks that `AutoModelForCausalLM.from_pretrained` loads it and
generates. `save_final` writes a run's final model the same way, from the model in memory.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from zeroth.errors import UserError
from zeroth.models.hf import is_lora, load_model, save_model
from zeroth.models.locate import locate_model
from zeroth.pipeline.checkpoint import save_folder


def resolve_source(source: str | Path) -> Path:
    """The model folder behind `source`: a run directory, a checkpoint or a model folder."""
    path = Path(source).expanduser()
    if not path.is_dir():
        raise UserError(f"export source '{source}' is not a folder — give runs/<name>, a "
                        "checkpoint or a model folder")
    return locate_model(path, "export source")[0]


def export_model(source: str | Path, out: str | Path, force: bool = False) -> Path:
    """Write `source` as a plain HF folder at `out` (LoRA merged); returns `out`. An existing
    non-empty `out` is refused unless `force`."""
    out = Path(out).expanduser()
    _check_out(out, force)
    folder = resolve_source(source)
    model, tokenizer = load_model(folder, dtype="auto")
    _write_plain(model, tokenizer, out)
    verify(out)
    return out


def save_final(model, tokenizer, folder: str | Path, verify_load: bool = False) -> Path:
    """A run's final model as a plain HF folder (LoRA merged), replacing `folder` atomically.
    The model in memory is left as it is (a LoRA model is merged from a saved copy)."""
    folder = Path(folder)
    if is_lora(model):
        raw = folder.with_name(f".{folder.name}.lora-{os.getpid()}")
        shutil.rmtree(raw, ignore_errors=True)
        try:
            save_model(model, tokenizer, raw)
            model, tokenizer = load_model(raw, dtype="auto")
            _write_plain(model, tokenizer, folder)
        finally:
            shutil.rmtree(raw, ignore_errors=True)
    else:
        _write_plain(model, tokenizer, folder)
    if verify_load:
        verify(folder)
    return folder


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"export target '{out}' is a file — give a folder path")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"export target '{out}' exists and is not empty — choose another "
                        "folder or add --force to replace it")


def _write_plain(model, tokenizer, out: Path) -> None:
    """Merge LoRA, then write `out` atomically (replacing)."""
    save_folder(model.merge_and_unload() if is_lora(model) else model, tokenizer, out)


@torch.no_grad()
def verify(folder: Path, new_tokens: int = 4) -> list[int]:
    """Load `folder` with plain transformers and generate a few tokens greedily."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if (folder / "adapter_config.json").exists() or not tokenizer.chat_template:
        raise RuntimeError(f"export {folder} is not a plain model with a chat template")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is 1+2?"}],
                                        add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
        else tokenizer.eos_token_id
    out = model.generate(**ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                         do_sample=False, pad_token_id=pad)
    return out[0, ids["input_ids"].shape[1]:].tolist()
