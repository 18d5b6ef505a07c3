#!/bin/bash
# Where the replayed int8 pass at batch 1 spends its time, by function and, in the dot tile, by instruction:
# `perf record` (10 s, attached once the passes have started) of 600 passes of the paper's network (random
# weights, int8_layers.py's draws), one thread.
# Writes perf-report.txt and perf-dot-tile.txt into this folder (perf.data stays in /tmp).
set -u
cd "$(dirname "$0")/../../.."
D=benchmarks/runs/2026-12-05d-zen4
cat > /tmp/int8_passes.py <<'PY'
import sys, time
import torch
sys.path.insert(0, "benchmarks")
from int8_layers import quantized_paper_network
torch.set_num_threads(1)
network, x = quantized_paper_network(1)
for _ in range(3):
    network(x)
print("passes", flush=True)
start = time.perf_counter()
for _ in range(600):
    network(x)
print(f"{(time.perf_counter() - start) / 600 * 1e3:.2f} ms a pass")
PY
PYTHONPATH=src .venv/bin/python /tmp/int8_passes.py > /tmp/int8_passes.log 2>&1 &
until grep -q passes /tmp/int8_passes.log; do sleep 1; done
perf record -q -o /tmp/int8_passes.data -p $! -- sleep 10
wait
tail -n 1 /tmp/int8_passes.log
perf report -i /tmp/int8_passes.data --stdio --percent-limit 0.2 2>/dev/null | grep -v '^#' | grep -v '^$' > $D/perf-report.txt
TILE='(anonymous namespace)::dot_tile<12, unsigned char, signed char, (anonymous namespace)::WholeTile>'
perf annotate -i /tmp/int8_passes.data --stdio -s "$TILE" 2>/dev/null | python3 -c '
import collections, re, sys
share = collections.Counter()
for line in sys.stdin:
    m = re.match(r"\s+([0-9.]+) :\s+[0-9a-f]+:\s+(\S+)", line)
    if m:
        share[m.group(2)] += float(m.group(1))
print("samples of the 12-row dot tile by instruction (%):")
for op, pct in share.most_common(25):
    print(f"  {pct:6.2f}  {op}")' > $D/perf-dot-tile.txt
head -n 12 $D/perf-report.txt; cat $D/perf-dot-tile.txt
