#!/usr/bin/env bash
# vLLM on one CUDA GPU: a few RL steps of a random-init Qwen2 of the 0.5B shape (bf16) with each
# engine — zeroth's torch decoder, vLLM in the trainer's process (rl.engine=vllm) and vLLM as a
# server zeroth starts (rl.engine=vllm-server) — printing per engine the sampling tokens/s, the
# RL step time (generation, update, weight sync), vLLM's start time and the largest trainer-vLLM
# log-prob gap. Needs zeroth installed with '.[vllm]' on a machine with a CUDA GPU; about
# 5 minutes (each vLLM start compiles and captures CUDA graphs once).
#
# With one GPU the server shares it with the trainer, and its weights go through disk
# (vllm.transfer=disk: NCCL cannot join two processes on one GPU); with two or more, the server
# runs on GPU 1 and the weights go over NCCL with vLLM's weight-transfer API.
#
#     bash bench/gpu_check.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
default_out=/tmp/zeroth-gpu-check
source bench/gpu_common.sh "$@"
common=(--folder "$folder" --sizes 0.5B --device cuda --dtype bfloat16 --prompts 16
        --group-size 8 --max-new-tokens 128 --warmup 1 --steps 3)
# torch and colocated vLLM (vLLM takes 30% of the GPU, the rest stays the trainer's)
timeout 300 python bench/engines.py "${common[@]}" --engines torch,vllm | tee "$out/colocated.txt"
if [ "$gpus" -ge 2 ]; then
  server=(--vllm devices=1 --vllm transfer=nccl --vllm gpu_memory=0.8)
else
  server=(--vllm transfer=disk --vllm gpu_memory=0.3)
fi
timeout 240 python bench/engines.py "${common[@]}" --engines vllm-server "${server[@]}" \
  | tee "$out/server.txt"
