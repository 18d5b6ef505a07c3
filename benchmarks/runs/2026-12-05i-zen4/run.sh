#!/bin/bash
# The native bfloat16 kernels (81cedaa): the bf16 contenders at 1 and 2 threads, batch 8 and 1 (as
# benchmarks/runs/2026-12-05g-zen4/run.sh runs them), the bf16 layers at batch 8 and 1 against OpenVINO's bf16
# profile (benchmarks/bf16_layers.py), and the float32 kernels after the prologues' templating against the code
# before (kernel_ab.py, batch 1 and 8). Reports into this folder.
set -u
cd "$(dirname "$0")/../../.."
D=benchmarks/runs/2026-12-05i-zen4
X=".venv/bin/python -m xception bench --model legacy_xception --no-memory"
run() { name=$1; shift; echo "== $(date +%T) $name: $*"; $X "$@" --out $D/$name.json > $D/$name.txt 2>&1; tail -n 12 $D/$name.txt; }
for cfg in "1 8 6" "2 8 6" "1 1 20" "2 1 20"; do set -- $cfg
  run bf16-t$1-b$2 --modes fast-bf16,ov-timm-bf16 --dtype bfloat16 --threads $1 --batch-size $2 --repeats $3; done
for b in 8 1; do
  echo "== $(date +%T) bf16_layers batch $b"
  PYTHONPATH=src:benchmarks .venv/bin/python benchmarks/bf16_layers.py --batch $b --repeats $((b == 8 ? 3 : 10)) \
    --json $D/bf16-layers-b$b.json > $D/bf16-layers-b$b.txt 2>&1
  head -n 2 $D/bf16-layers-b$b.txt
done
echo "== $(date +%T) kernel_ab float32, batch 1 and 8"
PYTHONPATH=src .venv/bin/python benchmarks/kernel_ab.py --variant old=@0a546ef --variant base= --batch 1 --repeats 20 \
  --json $D/kernel_ab-fp32-b1.json > $D/kernel_ab-fp32-b1.txt 2>&1
tail -n 3 $D/kernel_ab-fp32-b1.txt
PYTHONPATH=src .venv/bin/python benchmarks/kernel_ab.py --variant base= --variant old=@0a546ef --batch 8 --repeats 5 \
  --json $D/kernel_ab-fp32-b8.json > $D/kernel_ab-fp32-b8.txt 2>&1
tail -n 3 $D/kernel_ab-fp32-b8.txt
echo "== $(date +%T) done"
