#!/usr/bin/env bash
# The GPU check (under six minutes on an H100/H200): the test suite's CUDA tests, then correctness of every
# fast path on the GPU, then speed and memory against timm. Needs torch, timm, triton, pytest (and optionally
# onnxruntime). One run verifies every CUDA code path: until it passes for a path, that path stays opt-in.
#
#   OUT=./bench-out benchmarks/gpu_check.sh            # results: $OUT/*.json, summary.md, gpu_check.log, cuda_tests.log
#   benchmarks/gpu_check.sh --sections correctness     # one part only
#   benchmarks/gpu_check.sh --device cpu --tiny        # test the script itself on a CPU (no CUDA tests)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-./bench-out}"
mkdir -p "$OUT"
PYTHON="${PYTHON:-python}"
tests_rc=0
if [[ " $* " != *" --device cpu "* ]]; then
  # The suite's tests of CUDA code paths (marked cuda; skipped on a machine without a GPU).
  timeout --kill-after=5 150 "$PYTHON" -m pytest -q -m cuda -p no:cacheprovider tests 2>&1 | tee "$OUT/cuda_tests.log"
  tests_rc=${PIPESTATUS[0]}
fi
timeout --kill-after=5 298 "$PYTHON" benchmarks/gpu_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
check_rc=${PIPESTATUS[0]}
exit $(( tests_rc != 0 ? tests_rc : check_rc ))
