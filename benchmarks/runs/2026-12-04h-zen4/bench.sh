#!/bin/bash
# The AVX-512 / VNNI / AVX512-BF16 CPU: int8, fp32, bf16, 1 and 2 threads, batch 8 and 1, reports into folder $1
# (default: this one; 2026-12-04i-zen4-after/ ran its int8 and fp32 loops after the first kernel changes,
# 2026-12-04j-zen4-final/ all three after the last).
set -u
cd "$(dirname "$0")/../../.."
D=${1:-benchmarks/runs/2026-12-04h-zen4}
X=".venv/bin/python -m xception bench --model legacy_xception --no-memory"
run() { name=$1; shift; echo "== $(date +%T) $name: $*"; $X "$@" --out $D/$name.json > $D/$name.txt 2>&1; tail -n 12 $D/$name.txt; }
for cfg in "1 8 6" "2 8 6" "1 1 30" "2 1 30"; do set -- $cfg
  run int8-t$1-b$2 --modes fast-int8,ort-int8,ov-int8 --threads $1 --batch-size $2 --repeats $3; done
for cfg in "1 8 6" "2 8 6" "1 1 30" "2 1 30"; do set -- $cfg
  run fp32-t$1-b$2 --modes fast,ort-timm,ov-timm --threads $1 --batch-size $2 --repeats $3; done
for cfg in "1 8 6" "2 8 6" "1 1 20" "2 1 20"; do set -- $cfg
  run bf16-t$1-b$2 --modes fast-bf16,ov-timm-bf16 --dtype bfloat16 --threads $1 --batch-size $2 --repeats $3; done
echo "== $(date +%T) done"
