#!/bin/bash
# The middle flow's separable convs with cold weights (int8_micro.cpp's chain), with and without a slice of the next
# panel of B fetched into L2 with each row tile (next-panel.patch), three times in turns; VNNI build.
set -u
cd "$(dirname "$0")/../../.."
D=benchmarks/runs/2026-12-05c-zen4-next-panel
F="-O3 -std=c++17 -fno-math-errno -ffp-contract=off -DMICRO_VNNI"
g++ $F -I src/xception/fast/csrc benchmarks/int8_micro.cpp -o /tmp/micro_base
rm -rf /tmp/next && mkdir -p /tmp/next && cp -r src/xception/fast/csrc /tmp/next/ && patch -s -d /tmp/next -p4 < $D/next-panel.patch
g++ $F -I /tmp/next/csrc benchmarks/int8_micro.cpp -o /tmp/micro_next
for i in 1 2 3; do for v in base next; do echo "== $v"; /tmp/micro_$v 9 | tail -4; done; done
