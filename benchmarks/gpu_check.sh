#!/usr/bin/env bash
# The GPU check (under five minutes on an H100/H200): correctness of every fast path on the GPU, then
# speed and memory against timm. Needs only torch, timm, triton (and optionally onnxruntime).
#
#   OUT=./bench-out benchmarks/gpu_check.sh            # results: $OUT/*.json, summary.md, gpu_check.log
#   benchmarks/gpu_check.sh --sections correctness     # one part only
#   benchmarks/gpu_check.sh --device cpu --tiny        # test the script itself on a CPU
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-./bench-out}"
mkdir -p "$OUT"
PYTHON="${PYTHON:-python}"
timeout --kill-after=5 298 "$PYTHON" benchmarks/gpu_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
