"""Builds the model bench/gpu_check.sh runs: a random-init Qwen2 of Qwen2-0.5B's shape (24 layers,
hidden 896, 14 query / 2 key-value heads of 64 dims, MLP 4864, vocabulary 151,936, tied
embeddings), bf16, with zeroth's byte-level tokenizer (its ids are the first few hundred of the
vocabulary), saved as a local folder. Nothing is downloaded.

    python bench/gpu_check.py FOLDER
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout


def build(folder: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from zeroth.config import load_config
    from zeroth.models.hf import apply_template, save_model, train_tokenizer
    from zeroth.stages.pretrain import demonstrations
    from zeroth.tasks import load_task

    if (folder / "config.json").exists():
        return folder
    task = load_task(load_config())
    texts = [p + " " + c for p, c, _ in demonstrations(task, 5000, 0)]
    tokenizer = apply_template(train_tokenizer(texts, 320), "auto")
    config = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                         num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                         max_position_embeddings=2048, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    save_model(model, tokenizer, folder)
    return folder


if __name__ == "__main__":
    print(build(Path(sys.argv[1])))
