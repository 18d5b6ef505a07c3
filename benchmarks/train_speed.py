"""Training throughput of recipe variants: img/s over a fixed number of updates, each variant in turn.

    PYTHONPATH=src python benchmarks/train_speed.py 30 "" "compile=true" "amp=bf16" "model.width=0.25"

Each argument after the update count is one variant: comma-separated recipe settings applied to the
fashion-mnist recipe (the empty string is the recipe itself). Every variant opens a throw-away run,
trains 5 updates of warm-up (compilation included) and then times the given number of updates.
"""

import sys
import tempfile
import time

import torch

from xception.train import apply_overrides, fit, load_recipe, open_log, open_run


def main() -> None:
    if len(sys.argv) < 3 or not sys.argv[1].isdigit():
        sys.exit(__doc__)
    steps = int(sys.argv[1])
    for spec in sys.argv[2:]:
        changes = [c for c in spec.split(",") if c]
        recipe = apply_overrides(load_recipe("fashion-mnist"), [*changes, "checkpoint_minutes=0"])
        with tempfile.TemporaryDirectory() as out:
            run = open_run(recipe, out=f"{out}/run")
            params = sum(p.numel() for p in run.state.model.parameters())
            with open_log(run) as log:
                fit(run, log, steps=5)  # warm-up
                start = time.perf_counter()
                fit(run, log, steps=5 + steps)
                took = time.perf_counter() - start
            run.close()
        rate = steps * recipe.batch_size / took
        print(f"{spec or 'the recipe':60s} {params:>9,d} params  {rate:7.0f} img/s  {54000 / rate:6.1f} s/epoch "
              f"(threads {torch.get_num_threads()})", flush=True)


if __name__ == "__main__":
    main()
