"""Models: Hugging Face causal LMs and tokenizers (hf), a lean Qwen2/Llama forward for rollouts
and updates (lean), and where a model lives in a folder, checkpoint or run directory (locate,
which imports no torch).

ARCHS names the architectures a model is built from scratch with (`model.arch`); config checks
read it without importing transformers.
"""

from zeroth.registry import Registry

ARCHS = Registry("model architecture", {  # model.arch -> transformers config class
    "qwen2": "transformers:Qwen2Config",
    "llama": "transformers:LlamaConfig",
})
