#!/bin/bash
# After the float32 kernels fetch the next block's output lines for reading, not for writing (XC_AHEAD_OUT=1):
# the float32 and bf16 contenders at 1 and 2 threads, batch 8 and 1 (as benchmarks/runs/2026-12-04h-zen4/bench.sh
# runs them), then the float32 layers at batch 1 against ONNX Runtime and OpenVINO (benchmarks/fp32_layers.py).
# Reports into this folder.
set -u
cd "$(dirname "$0")/../../.."
D=benchmarks/runs/2026-12-05g-zen4
X=".venv/bin/python -m xception bench --model legacy_xception --no-memory"
run() { name=$1; shift; echo "== $(date +%T) $name: $*"; $X "$@" --out $D/$name.json > $D/$name.txt 2>&1; tail -n 12 $D/$name.txt; }
for cfg in "1 8 6" "2 8 6" "1 1 30" "2 1 30"; do set -- $cfg
  run fp32-t$1-b$2 --modes fast,ort-timm,ov-timm --threads $1 --batch-size $2 --repeats $3; done
for cfg in "1 8 6" "2 8 6" "1 1 20" "2 1 20"; do set -- $cfg
  run bf16-t$1-b$2 --modes fast-bf16,ov-timm-bf16 --dtype bfloat16 --threads $1 --batch-size $2 --repeats $3; done
echo "== $(date +%T) fp32_layers batch 1"
PYTHONPATH=src .venv/bin/python benchmarks/fp32_layers.py --batch 1 --repeats 10 --json $D/fp32-layers-b1.json > $D/fp32-layers-b1.txt 2>&1
head -n 4 $D/fp32-layers-b1.txt
echo "== $(date +%T) done"
