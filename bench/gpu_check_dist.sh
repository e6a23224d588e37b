#!/usr/bin/env bash
# Several GPUs: a few RL steps of a random-init Qwen2 of the 0.5B shape on every GPU present,
# through torchrun with NCCL — train.parallel=ddp, then fsdp (FSDP2: fp32 master weights, bf16
# compute, fp32 gradient reductions) — printing the step time (generation, update) and the peak
# memory of each GPU. With one GPU the job is world 1 (FSDP has nothing to shard). Needs zeroth
# installed on a machine with CUDA GPUs; about 5 minutes.
#
#     bash bench/gpu_check_dist.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
default_out=/tmp/zeroth-gpu-check-dist
source bench/gpu_common.sh "$@"
for parallel in ddp fsdp; do
  name="$parallel-$gpus"
  rm -rf "$out/runs/$name"
  # the peak memory of each GPU, sampled every 0.5 s while the job runs
  nvidia-smi --query-gpu=index,memory.used --format=csv,noheader,nounits -lms 500 \
    > "$out/$name.mem" &
  sampler=$!
  start=$(date +%s)
  timeout 200 python -m zeroth run --nproc "$gpus" --quiet "model.path=$folder" \
    model.dtype=float32 run.device=cuda run.pipeline=[rl] "run.out_dir=$out/runs" \
    "run.name=$name" "train.parallel=$parallel" rl.steps=4 rl.prompts_per_step=16 \
    rl.group_size=8 rl.max_new_tokens=128 rl.minibatch_size=64 rl.beta=0 \
    rl.checkpoint_every=100 task.eval_problems=8 eval.k=1 eval.max_new_tokens=16 \
    2>&1 | tail -3 || echo "$name FAILED"
  kill "$sampler" 2>/dev/null || true
  echo "$name: $(( $(date +%s) - start )) s in all"
  python - "$out/runs/$name" "$out/$name.mem" <<'PY'
import json, sqlite3, statistics, sys
run, mem = sys.argv[1], sys.argv[2]
try:
    db = sqlite3.connect(f"{run}/ledger.sqlite")
    rows = [json.loads(d) for (d,) in db.execute("select data from metrics where phase='rl' order by step")][1:]
    keys = ("gen", "gather", "reward", "ref", "update", "sync", "record")
    step = statistics.median(sum(r.get(f"time_{k}", 0) for k in keys) for r in rows)
    print(f"  s/step {step:.2f} (gen {statistics.median(r['time_gen'] for r in rows):.2f}, "
          f"update {statistics.median(r['time_update'] for r in rows):.2f}), "
          f"reward {rows[-1]['reward']:.3f}, grad_norm {rows[-1]['grad_norm']:.3f}")
except Exception as exc:  # the job failed: its log says why
    print("  no RL steps recorded:", exc)
peak = {}
for line in open(mem):
    i, used = (int(x) for x in line.split(","))
    peak[i] = max(peak.get(i, 0), used)
print("  peak memory per GPU (MiB):", peak)
PY
done
