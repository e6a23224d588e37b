"""Models: Hugging Face causal LMs and tokenizers (hf), a lean Qwen2/Llama forward for rollouts
and updates (lean), and where a model lives in a folder, checkpoint or run directory (locate,
which imports no torch)."""
