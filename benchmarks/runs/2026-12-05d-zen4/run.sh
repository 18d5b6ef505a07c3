#!/bin/bash
# After the input's codes in 8 lanes and the head's global pool as a kernel call (the replayed pass runs to the
# logits): the int8 contenders at 1 and 2 threads, batch 8 and 1 (benchmarks/runs/2026-12-05-zen4/bench.sh), then
# the layers at batch 1 against OpenVINO, each kernel call of the replayed pass timed (benchmarks/int8_layers.py),
# and the kernels on their own (benchmarks/int8_micro.cpp). Reports into this folder.
set -u
cd "$(dirname "$0")/../../.."
D=benchmarks/runs/2026-12-05d-zen4
benchmarks/runs/2026-12-05-zen4/bench.sh $D
echo "== $(date +%T) int8_layers batch 1"
PYTHONPATH=src .venv/bin/python benchmarks/int8_layers.py --batch 1 --repeats 10 --json $D/int8-layers-b1.json > $D/int8-layers-b1.txt 2>&1
head -n 6 $D/int8-layers-b1.txt
echo "== $(date +%T) int8_micro"
g++ -O3 -std=c++17 -fno-math-errno -ffp-contract=off -I src/xception/fast/csrc -DMICRO_VNNI benchmarks/int8_micro.cpp \
  -o /tmp/int8_micro && /tmp/int8_micro 9 > $D/int8-micro.txt 2>&1
cat $D/int8-micro.txt
echo "== $(date +%T) done"
