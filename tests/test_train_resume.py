"""Interrupted runs continue exactly: Ctrl-C saves mid-epoch, and the resumed run matches.

Each run is a real `xception train` process, deterministic, on CPU with one thread; an interrupted and
resumed run must end with bit-identical weights (model and EMA) to an uninterrupted one. SIGKILL at random
moments (mid-epoch checkpoints) is tested in test_reliability_training.py.
"""

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data_factory import cli_environment, run_beside, signal_on_line, stripes_folder, tiny_recipe
from xception.train import load_checkpoint

EPOCHS = 2  # the resumed run finishes the cut epoch and trains a whole one after it


def command(folder: Path, recipe: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "xception", "train", str(folder), "--recipe", str(recipe), "--out", str(out),
            "--deterministic", "--no-progress", *extra]


environment = cli_environment


def run_to_end(args: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(args, env=environment(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done


def ctrl_c_once_training_starts(args: list[str]) -> subprocess.CompletedProcess:
    """Start a run and send SIGINT as soon as it announces its run folder (the first epoch begins)."""
    return signal_on_line(args, "run folder:", signal.SIGINT)


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = load_checkpoint(a), load_checkpoint(b)
    assert first["epoch"] == second["epoch"] == EPOCHS and first["step"] == second["step"]
    for part in ("model", "ema", "optimizer"):
        left, right = first[part], second[part]
        if part == "optimizer":
            left = {k: v for s in left["state"].values() for k, v in s.items()}
            right = {k: v for s in right["state"].values() for k, v in s.items()}
        assert left.keys() == right.keys()
        for key in left:
            if isinstance(left[key], torch.Tensor):
                assert torch.equal(left[key], right[key]), f"{part}.{key} differs"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    folder = stripes_folder(root / "data", per_class=16)
    recipe = root / "tiny.toml"
    # Dropout and EMA make the RNG state and the averaged weights part of what must be restored; mixup and
    # CutMix, the mixing of each batch.
    recipe.write_text(tiny_recipe(epochs=EPOCHS, ema_decay=0.8, workers=1, hflip=0.5, mixup=0.4, cutmix=1.0,
                                  model_options={"stem": "small", "width": 0.25, "middle_repeats": 1,
                                                 "drop_rate": 0.3}).to_toml())
    reference = root / "reference"
    return root, folder, recipe, reference, run_beside(command(folder, recipe, reference))  # uninterrupted


def test_ctrl_c_saves_mid_epoch_and_the_resumed_run_matches(setup):
    root, folder, recipe, reference, uninterrupted = setup
    out = root / "interrupted"
    stopped = ctrl_c_once_training_starts(command(folder, recipe, out))
    assert stopped.returncode == 130, stopped.stderr
    assert "continue with: xception train --resume" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    state = load_checkpoint(out / "last.pt")
    assert state["epoch"] == 0 and state["position"] > 0  # saved in the middle of the first epoch
    run_to_end([sys.executable, "-m", "xception", "train", "--resume", str(out), "--no-progress"])
    assert uninterrupted.result().returncode == 0, uninterrupted.result().stderr
    assert_same_weights(reference / "last.pt", out / "last.pt")
