#!/bin/bash
# The AVX-512 / VNNI / AVX512-BF16 CPU (AMD Zen 4), after the int8 depthwise step on vpdpbusd and the epilogue's
# saturating pack: the int8 contenders at 1 and 2 threads, batch 8 and 1, reports into folder $1 (default: this
# one). float32 and bf16 code did not change since 2026-12-04j-zen4-final/.
set -u
cd "$(dirname "$0")/../../.."
D=${1:-benchmarks/runs/2026-12-05-zen4}
X=".venv/bin/python -m xception bench --model legacy_xception --no-memory"
run() { name=$1; shift; echo "== $(date +%T) $name: $*"; $X "$@" --out $D/$name.json > $D/$name.txt 2>&1; tail -n 12 $D/$name.txt; }
for cfg in "1 8 6" "2 8 6" "1 1 30" "2 1 30"; do set -- $cfg
  run int8-t$1-b$2 --modes fast-int8,ort-int8,ov-int8 --threads $1 --batch-size $2 --repeats $3; done
echo "== $(date +%T) done"
