"""Training throughput of recipe variants: img/s over a fixed number of updates, each variant in turn.

    PYTHONPATH=src python benchmarks/train_speed.py 30 "" "compile=true" "amp=bf16" "model.width=0.25"
    PYTHONPATH=src python benchmarks/train_speed.py --data-dir FOLDER 30 ""   # the IDX files in FOLDER

Each argument after the update count is one variant: comma-separated recipe settings applied to the
fashion-mnist recipe (the empty string is the recipe itself). Every variant opens a throw-away run,
trains 5 updates of warm-up (compilation included) and then times the given number of updates.
Fashion-MNIST is found as training finds it (installed, cached or downloaded) unless --data-dir names it.
"""

import argparse
import tempfile
import time

import torch

from xception.train import apply_overrides, fit, load_recipe, open_log, open_run
from xception.train.checkpoint import RunSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("steps", type=int, help="updates timed per variant")
    parser.add_argument("variants", nargs="+", help="comma-separated recipe settings; '' is the recipe")
    parser.add_argument("--data-dir", help="folder with Fashion-MNIST's four IDX files")
    args = parser.parse_args()
    steps = args.steps
    for spec in args.variants:
        changes = [c for c in spec.split(",") if c]
        recipe = apply_overrides(load_recipe("fashion-mnist"), [*changes, "checkpoint_minutes=0"])
        with tempfile.TemporaryDirectory() as out:
            run = open_run(recipe, RunSettings(data_dir=args.data_dir), out=f"{out}/run")
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
