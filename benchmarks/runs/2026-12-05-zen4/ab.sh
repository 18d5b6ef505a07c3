#!/bin/bash
# The int8 changes of 2026-12-05, builds in turns (benchmarks/kernel_ab.py): base = all of them, stored = all but the
# epilogue on the dot loop's registers (-DXC_QREGS=0), floatdw = all but the depthwise step on vpdpbusd
# (-DXC_QDW_QUADS=0), old = none (7408ca4); batch 8 and batch 1, one thread; then the
# depthwise step on its own (benchmarks/int8_micro.cpp, byte quads against the float32 step) and the layers at
# batch 1 against OpenVINO (benchmarks/int8_layers.py). Reports into folder $1 (default: this one).
set -u
cd "$(dirname "$0")/../../.."
D=${1:-benchmarks/runs/2026-12-05-zen4}
P=".venv/bin/python"
echo "== $(date +%T) kernel_ab batch 8"
PYTHONPATH=src $P benchmarks/kernel_ab.py --int8 --variant base= --variant stored=-DXC_QREGS=0 --variant floatdw=-DXC_QDW_QUADS=0 --variant old=@7408ca4 \
  --batch 8 --threads 1 --repeats 6 --json $D/kernel_ab-int8-t1-b8.json > $D/kernel_ab-int8-t1-b8.txt 2>&1
tail -n 8 $D/kernel_ab-int8-t1-b8.txt
echo "== $(date +%T) kernel_ab batch 1"
PYTHONPATH=src $P benchmarks/kernel_ab.py --int8 --variant base= --variant stored=-DXC_QREGS=0 --variant floatdw=-DXC_QDW_QUADS=0 --variant old=@7408ca4 \
  --batch 1 --threads 1 --repeats 20 --json $D/kernel_ab-int8-t1-b1.json > $D/kernel_ab-int8-t1-b1.txt 2>&1
tail -n 8 $D/kernel_ab-int8-t1-b1.txt
echo "== $(date +%T) int8_micro"
for flags in "" "-DXC_QDW_QUADS=0"; do
  g++ -O3 -std=c++17 -fno-math-errno -ffp-contract=off -I src/xception/fast/csrc -DMICRO_VNNI $flags \
    benchmarks/int8_micro.cpp -o /tmp/int8_micro && { echo "-DMICRO_VNNI $flags"; /tmp/int8_micro 9; }
done > $D/int8-micro.txt 2>&1
cat $D/int8-micro.txt
echo "== $(date +%T) int8_layers batch 1"
PYTHONPATH=src $P benchmarks/int8_layers.py --batch 1 --repeats 5 --json $D/int8-layers-b1.json > $D/int8-layers-b1.txt 2>&1
head -n 6 $D/int8-layers-b1.txt
echo "== $(date +%T) done"
