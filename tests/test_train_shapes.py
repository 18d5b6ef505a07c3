"""Training on the CPU with the default settings survives every small input size and width.

torch 2.14's CPU weight-gradient kernel for strided 1×1 convolutions in channels_last corrupts the heap
for some shapes (8 → 16 channels at 56–72 px among them): the process dies with SIGSEGV or a glibc
abort, without a message. The sweep runs in a subprocess with glibc's heap checks on, so a corruption
fails this test instead of taking pytest down.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from data_factory import stripes_folder

SIZES = (32, 48, 56, 64, 72, 96)
WIDTHS = (0.125, 0.25, 0.5)

# Each run is the training of `xception train`'s first epoch (updates, validation, checkpoints, the model's
# export); the end of a run (curves, summary) is left out: it draws plots, whatever the shapes.
SWEEP = textwrap.dedent("""
    import sys
    import torch
    from xception.train import RunSettings, fit, load_recipe, open_log, open_run

    torch.set_num_threads(1)
    folder, out = sys.argv[1], sys.argv[2]
    for size in {sizes}:
        for width in {widths}:
            # `xception train FOLDER --epochs 1 --batch-size 8 --input-size S --set model.width=W
            #  --set model.stem=small`: the folder recipe's defaults otherwise (channels_last on CPU).
            recipe = load_recipe("modern").replace(
                epochs=1, batch_size=8, input_size=size, workers=0, device="cpu",
                model_options={{"stem": "small", "width": width, "middle_repeats": 1}},
            )
            run = open_run(recipe, RunSettings(data=folder), out=f"{{out}}/{{size}}-{{width}}")
            with open_log(run) as run_log:
                done = fit(run, run_log)
            run.close()
            assert not done.interrupted and [r["epoch"] for r in done.records] == [1], done
            print("trained", size, width, flush=True)
""")


def test_cpu_training_survives_small_sizes_and_widths(tmp_path: Path) -> None:
    folder = stripes_folder(tmp_path / "data", per_class=6, size=40)
    script = SWEEP.format(sizes=SIZES, widths=WIDTHS)
    env = {**os.environ, "MALLOC_CHECK_": "3", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script, str(folder), str(tmp_path / "runs")], env=env,
                          capture_output=True, text=True, timeout=900)
    trained = [line for line in done.stdout.splitlines() if line.startswith("trained")]
    last = trained[-1] if trained else "none"
    assert done.returncode == 0, (f"training died with exit code {done.returncode} after {len(trained)} runs "
                                  f"(last good: {last}):\n{done.stderr[-3000:]}")
    assert len(trained) == len(SIZES) * len(WIDTHS)


@pytest.mark.parametrize("autocast", [False, True])
def test_strided_shortcut_gradients_match_float64(autocast: bool) -> None:
    import torch

    from xception.layers import StridedPointwiseConv2d

    torch.manual_seed(0)
    conv = StridedPointwiseConv2d(8, 16, 2, bias=True).to(memory_format=torch.channels_last)
    x = torch.randn(4, 8, 15, 15).contiguous(memory_format=torch.channels_last).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = conv(x)
    (y.float() ** 2).sum().backward()

    ref = torch.nn.Conv2d(8, 16, 1, 2).double()
    ref.weight.data.copy_(conv.weight.detach().double())
    ref.bias.data.copy_(conv.bias.detach().double())
    xr = x.detach().double().requires_grad_()
    yr = ref(xr)
    (yr**2).sum().backward()
    tol = 3e-2 if autocast else 1e-5
    assert y.shape == yr.shape == (4, 16, 8, 8)
    for got, want in ((y, yr), (x.grad, xr.grad), (conv.weight.grad, ref.weight.grad),
                      (conv.bias.grad, ref.bias.grad)):
        assert (got.double() - want).abs().max() <= tol * want.abs().max()
