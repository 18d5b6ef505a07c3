"""Data-parallel training and evaluation under torchrun: 2 CPU processes (gloo) against 1.

Every data-parallel run is a real ``torchrun ... -m xception`` job on a tiny generated image folder; the
one-process runs they are compared with are the same commands, run in this process (one thread).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import xception
from data_factory import run_beside, stripes_folder, tiny_recipe
from xception.cli import main
from xception.train import load_checkpoint

SRC = str(Path(xception.__file__).parents[1])
# SGD on full images (no random crop or flip): the only difference left between runs is how they split work.
# In float64: this tiny network's float32 training is chaotic (a 1e-7 change of the input moves the second
# step's gradients by a few %), which would hide a real difference behind rounding noise.
RECIPE = tiny_recipe(val_fraction=0.0, scale=(1.0, 1.0), ratio=(1.0, 1.0), optimizer="sgd", lr=0.05, momentum=0.9,
                     epochs=2, batch_size=12, deterministic=True, precision="float64", amp="off")


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1",
            "XCEPTION_DIST_TIMEOUT": "60"}


def torchrun(*args: str, restarts: int = 0) -> list[str]:
    """``xception ARGS`` as a job of two processes."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
            f"--max-restarts={restarts}", "-m", "xception", *args]


def in_process(*args: str) -> None:
    """``xception ARGS`` as one process: here, with one thread (the module's fixture)."""
    assert main(list(args)) == 0


def run_while(cmd: list[str], *in_this_process: str) -> subprocess.CompletedProcess:
    """Run ``cmd`` and, meanwhile, ``xception IN_THIS_PROCESS``; ``cmd``'s outcome (both must succeed)."""
    running = run_beside(cmd, environment())
    in_process(*in_this_process)
    done = running.result()
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ddp")
    recipe = root / "recipe.toml"
    recipe.write_text(RECIPE.to_toml())
    return stripes_folder(root / "images", per_class=12), recipe  # 36 images: 3 steps of 12 per epoch


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory, one_thread) -> dict[str, Path]:
    """The same training on 1 process (batch 12) and on 2 processes with SyncBatchNorm (6 + 6)."""
    folder, recipe = data
    root = tmp_path_factory.mktemp("runs")
    train = ("train", str(folder), "--recipe", str(recipe), "--no-progress")
    run_while(torchrun(*train, "--out", str(root / "two"), "--batch-size", "6", "--sync-bn"),
              *train, "--out", str(root / "one"), "--batch-size", "12")
    return {"one": root / "one", "two": root / "two"}


def test_two_processes_with_sync_bn_end_with_the_weights_of_one_process_with_the_global_batch(runs):
    one, two = load_checkpoint(runs["one"] / "last.pt"), load_checkpoint(runs["two"] / "last.pt")
    assert one["step"] == two["step"] == 6
    assert two["world_size"] == 2
    for key, value in one["model"].items():
        torch.testing.assert_close(two["model"][key], value, rtol=1e-9, atol=1e-12, msg=key)
    # The model really moved: the comparison is not between two copies of the initialisation.
    first = tiny_model_state(RECIPE)
    assert any(not torch.allclose(first[k], v) for k, v in one["model"].items() if v.is_floating_point())


def tiny_model_state(recipe) -> dict[str, torch.Tensor]:
    torch.manual_seed(recipe.seed)
    model = xception.create_model(recipe.model, num_classes=3, in_chans=3, **recipe.model_options)
    return model.double().state_dict()


def test_only_rank_0_writes_the_run_folder(runs):
    def kinds(folder: Path) -> list[str]:  # TensorBoard's file name carries a time stamp and a pid
        return sorted("events" if p.name.startswith("events.out.tfevents") else p.name for p in folder.iterdir())

    assert kinds(runs["two"]) == kinds(runs["one"])  # the same artifacts, once each
    assert kinds(runs["two"]).count("events") == 1
    records = [json.loads(line) for line in (runs["two"] / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]


def test_evaluation_counts_from_two_ranks_equal_one_process_on_an_uneven_set(runs, tmp_path, capsys, one_thread):
    uneven = stripes_folder(tmp_path / "uneven", per_class=7, seed=3)  # 21 images: 11 + 10 per rank
    weights = str(runs["one"] / "model.safetensors")
    evaluate = ("evaluate", "--weights", weights, "--data", str(uneven), "--json", "--no-plot", "--no-progress")
    capsys.readouterr()
    two = json.loads(run_while(torchrun(*evaluate), *evaluate).stdout)  # rank 0 alone prints
    one = json.loads(capsys.readouterr().out)
    assert one["images"] == two["images"] == 21
    assert one["confusion_matrix"] == two["confusion_matrix"]
    assert one["top1"] == two["top1"]


def test_a_two_process_checkpoint_resumes_on_one_process(runs, tmp_path, capsys, one_thread):
    import shutil

    folder = shutil.copytree(runs["two"], tmp_path / "two")
    in_process("train", "--resume", str(folder), "--epochs", "3", "--no-progress")
    assert "resumed in epoch 3" in capsys.readouterr().err
    state = load_checkpoint(folder / "last.pt")
    # The per-process batch (6) stays: alone, the process takes 6 steps for the third epoch's 36 images.
    assert state["epoch"] == 3 and state["world_size"] == 1 and state["step"] == 6 + 6


def worker_pids(parent: int) -> list[int]:
    children = Path(f"/proc/{parent}/task/{parent}/children")
    return [int(p) for p in children.read_text().split()] if children.exists() else []


def test_a_killed_worker_brings_the_job_down_and_max_restarts_resumes_it(data, tmp_path):
    folder, recipe = data
    out = tmp_path / "run"
    # Mid-epoch checkpoints as often as the ranks can agree on them (every 10th update: update 10, in epoch 4).
    cmd = torchrun("train", str(folder), "--recipe", str(recipe), "--out", str(out), "--batch-size", "6",
                       "--epochs", "4", "--checkpoint-minutes", "0.0001", "--no-progress", restarts=1)
    proc = subprocess.Popen(cmd, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (out / "last.pt").exists():  # the first epoch's checkpoint: the second epoch is under way
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 5 minutes"
        time.sleep(0.05)
    victims = worker_pids(proc.pid)
    assert len(victims) == 2
    os.kill(victims[1], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-12000:]
    assert "resumed in epoch" in stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert load_checkpoint(out / "last.pt")["epoch"] == 4
    assert load_checkpoint(out / "last.prev.pt")["position"] > 0  # the mid-epoch checkpoint before the last
    assert (out / "model.safetensors").is_file()
