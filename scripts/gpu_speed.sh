#!/usr/bin/env bash
# The GPU figures of docs/performance.md in one run: Dark Miner's stages and every speed switch on a random-weight
# model of SD 1.4's architecture, then peak memory. Writes JSON and logs under $OUT (default ./gpu-figures).
# On the device machine: bash scripts/gpu_speed.sh; on a CPU, to check the script: ARCH=tiny DEVICE=cpu DTYPE=fp32
# bash scripts/gpu_speed.sh.
set -euo pipefail
OUT=${OUT:-gpu-figures}
ARCH=${ARCH:-sd14}
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-bf16}
mkdir -p "$OUT"
python3 -m darkminer speed --architecture "$ARCH" --device "$DEVICE" --dtype "$DTYPE" \
    --switches one_call one_batch channels_last --json "$OUT/speed.json" 2>&1 | tee "$OUT/speed.log"
python3 -m darkminer speed --architecture "$ARCH" --device "$DEVICE" --dtype "$DTYPE" --repeats 3 \
    --switches compile --json "$OUT/speed-compile.json" 2>&1 | tee "$OUT/speed-compile.log"
python3 scripts/memory_benchmark.py --architecture "$ARCH" --device "$DEVICE" --dtype "$DTYPE" --images 16 \
    2>&1 | tee "$OUT/memory.log"
