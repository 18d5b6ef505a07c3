"""Interrupted runs continue exactly: SIGKILL (resume from the last epoch) and Ctrl-C (resume mid-epoch).

Each run is a real `xception train` process, deterministic, on CPU with one thread; an interrupted and
resumed run must end with bit-identical weights (model and EMA) to an uninterrupted one.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import xception
from data_factory import stripes_folder, tiny_recipe
from xception.train import load_checkpoint

EPOCHS = 4
SRC = str(Path(xception.__file__).parents[1])


def command(folder: Path, recipe: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "xception", "train", str(folder), "--recipe", str(recipe), "--out", str(out),
            "--deterministic", "--no-progress", *extra]


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}


def run_to_end(args: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(args, env=environment(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done


def kill_after_first_epoch(args: list[str], out: Path) -> subprocess.CompletedProcess:
    """Start a run, wait for its first checkpoint, then SIGKILL it; return the finished process."""
    proc = subprocess.Popen(args, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (out / "last.pt").exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "no checkpoint within 5 minutes"
        time.sleep(0.02)
    proc.kill()
    stdout, stderr = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


def ctrl_c_once_training_starts(args: list[str]) -> subprocess.CompletedProcess:
    """Start a run and send SIGINT as soon as it announces its run folder (the first epoch begins)."""
    proc = subprocess.Popen(args, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("run folder:"):
            proc.send_signal(signal.SIGINT)
            break
    stdout, rest = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(args, proc.returncode, stdout, "".join(lines) + rest)


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
    # Dropout and EMA make the RNG state and the averaged weights part of what must be restored.
    recipe.write_text(tiny_recipe(epochs=EPOCHS, ema_decay=0.8, workers=1, hflip=0.5,
                                  model_options={"stem": "small", "width": 0.25, "middle_repeats": 1,
                                                 "drop_rate": 0.3}).to_toml())
    reference = root / "reference"
    run_to_end(command(folder, recipe, reference))
    return root, folder, recipe, reference


def test_a_run_killed_with_sigkill_resumes_to_identical_weights(setup):
    root, folder, recipe, reference = setup
    out = root / "killed"
    killed = kill_after_first_epoch(command(folder, recipe, out), out)
    assert killed.returncode == -signal.SIGKILL
    assert load_checkpoint(out / "last.pt")["epoch"] < EPOCHS  # it really was cut short
    run_to_end([sys.executable, "-m", "xception", "train", "--resume", str(out), "--no-progress"])
    assert_same_weights(reference / "last.pt", out / "last.pt")
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [int(line.split('"epoch": ')[1].split(",")[0]) for line in lines] == list(range(1, EPOCHS + 1))


def test_ctrl_c_saves_mid_epoch_and_the_resumed_run_matches(setup):
    root, folder, recipe, reference = setup
    out = root / "interrupted"
    stopped = ctrl_c_once_training_starts(command(folder, recipe, out))
    assert stopped.returncode == 130, stopped.stderr
    assert "continue with: xception train --resume" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    state = load_checkpoint(out / "last.pt")
    assert state["epoch"] == 0 and state["position"] > 0  # saved in the middle of the first epoch
    run_to_end([sys.executable, "-m", "xception", "train", "--resume", str(out), "--no-progress"])
    assert_same_weights(reference / "last.pt", out / "last.pt")
