#!/usr/bin/env bash
# Time and peak memory of the default run (`zeroth run`), as quoted in the README.
# Usage: bench/default_run.sh [extra overrides...]   — writes runs/bench-<date>/ and prints
# the results table, wall time and peak resident memory. Not run by the tests.
set -euo pipefail
name="bench-$(date +%Y%m%d-%H%M%S)"
/usr/bin/time -f "wall %e s, peak RSS %M KiB" zeroth run run.name="$name" --quiet "$@"
python -c "import json,sys; s=json.load(open('runs/$name/summary.json')); \
print({k: s[k] for k in ('base_pass1','final_pass1','base_greedy','final_greedy', \
'demo_accuracy','base_mean_len','final_mean_len','wall_s')})"
