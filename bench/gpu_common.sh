# Sourced by bench/gpu_check*.sh, after `default_out=...`: the output folder (the script's first
# argument, else $OUT, else default_out) made, the hub offline, the GPUs and the versions written
# there, the benchmark model built (`folder`: a random-init Qwen2 of the 0.5B shape) and the GPUs
# counted (`gpus`).
out="${1:-${OUT:-$default_out}}"
mkdir -p "$out"
export HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python - <<'PY' | tee "$out/versions.txt"
import importlib.util, torch
line = f"torch {torch.__version__} cuda {torch.version.cuda} nccl {torch.cuda.nccl.version()}"
if importlib.util.find_spec("vllm"):
    import vllm
    line += f" vllm {vllm.__version__}"
print(line)
PY
folder=$(python bench/gpu_check.py "$out/qwen2-0.5b-shape" | tail -1)
gpus=$(nvidia-smi -L | wc -l)
