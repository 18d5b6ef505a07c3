#!/bin/bash
# On the code of 78ad4e7 (even tiles, gathered first-conv windows, windows inside the image taken in runs): the
# 2026-12-05e script (the int8 bench at the four settings, then int8_layers --batch 1) into this folder.
cd "$(dirname "$0")/../../.." && exec benchmarks/runs/2026-12-05e-zen4/run.sh benchmarks/runs/2026-12-05f-zen4
