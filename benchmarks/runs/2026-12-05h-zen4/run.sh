#!/bin/bash
# On the code of a04ab1e (the float32 output look-ahead for reading, the stem's windows in one tile call): the
# float32 contenders at 1 and 2 threads, batch 8 and 1, as benchmarks/runs/2026-12-05g-zen4/run.sh runs them.
# Reports into this folder.
set -u
cd "$(dirname "$0")/../../.."
D=benchmarks/runs/2026-12-05h-zen4
X=".venv/bin/python -m xception bench --model legacy_xception --no-memory"
for cfg in "1 8 6" "2 8 6" "1 1 30" "2 1 30"; do set -- $cfg
  echo "== $(date +%T) fp32-t$1-b$2"
  $X --modes fast,ort-timm,ov-timm --threads $1 --batch-size $2 --repeats $3 --out $D/fp32-t$1-b$2.json > $D/fp32-t$1-b$2.txt 2>&1
  grep -E "^(fast|ort-timm|ov-timm) |turn by turn" $D/fp32-t$1-b$2.txt
done
echo "== $(date +%T) done"
