#!/bin/bash
# After tiles of even height in a block and the first conv's windows gathered in one register: the int8
# contenders at 1 and 2 threads, batch 8 and 1 (benchmarks/runs/2026-12-05-zen4/bench.sh), then the layers at
# batch 1 against OpenVINO, each kernel call of the replayed pass timed (benchmarks/int8_layers.py). Reports into
# this folder, or into FOLDER (run.sh FOLDER).
set -u
cd "$(dirname "$0")/../../.."
D=${1:-benchmarks/runs/2026-12-05e-zen4}
benchmarks/runs/2026-12-05-zen4/bench.sh $D
echo "== $(date +%T) int8_layers batch 1"
PYTHONPATH=src .venv/bin/python benchmarks/int8_layers.py --batch 1 --repeats 10 --json $D/int8-layers-b1.json > $D/int8-layers-b1.txt 2>&1
head -n 6 $D/int8-layers-b1.txt
echo "== $(date +%T) done"
