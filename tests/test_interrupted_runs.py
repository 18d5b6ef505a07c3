"""An interrupted run leaves a usable model, and checkpoints and run folders are weights everywhere.

* model.safetensors is written at every new best epoch (the EMA weights, with the best record's figures), so
  a run stopped by SIGTERM (exit status 143) holds the best model so far;
* ``create_model(weights=...)`` takes best.pt, last.pt and the run folder itself, each giving the logits of the
  model it holds (checked against that checkpoint's own model, built here by hand); ``predict``, ``evaluate``
  and ``convert`` take a checkpoint on the command line;
* resuming a finished run says there is nothing to do and changes no file; ``--resume`` into a folder another
  training holds is refused before any checkpoint is read.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import xception
from data_factory import CLASSES, cli_environment, signal_on_line, stripes_folder, tiny_recipe
from xception.cli import main
from xception.errors import WeightsError
from xception.models import Xception, XceptionConfig
from xception.preprocessing import Preprocessing
from xception.train import finish, fit, open_log, open_run, train
from xception.train.stop import Aborted, StopRequest
from xception.weights import load_pretrained, read_metadata

MODEL = {"stem": "small", "width": 0.125, "middle_repeats": 1}
RECIPE = tiny_recipe(ema_decay=0.8, model_options=MODEL, checkpoint_minutes=0.0)

pytestmark = pytest.mark.usefixtures("one_thread")


environment = cli_environment


def own_model(checkpoint_path: Path) -> Xception:
    """The model a checkpoint holds, built by hand: its config, and its EMA weights (the run averages)."""
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    model = Xception(XceptionConfig.from_dict(checkpoint["model_config"]))
    model.load_state_dict({k.removeprefix("module."): v for k, v in checkpoint["ema"].items() if k != "updates"})
    return model.eval()


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.linspace(-2, 2, 2 * 3 * 32 * 32).reshape(2, 3, 32, 32))


def assert_same_logits(a: torch.nn.Module, b: torch.nn.Module) -> None:
    torch.testing.assert_close(logits(a), logits(b), rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return stripes_folder(tmp_path_factory.mktemp("data") / "images", per_class=8)  # 18 training images


@pytest.fixture(scope="module")
def stopped(data, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A 50-epoch run sent SIGTERM once its first epoch has ended."""
    root = tmp_path_factory.mktemp("stopped")
    recipe, out = root / "tiny.toml", root / "run"
    recipe.write_text(RECIPE.replace(epochs=50).to_toml())
    args = [sys.executable, "-m", "xception", "train", str(data), "--recipe", str(recipe), "--out", str(out),
            "--no-progress"]
    return out, signal_on_line(args, "epoch 1/50:", signal.SIGTERM)


def test_sigterm_exits_143_and_leaves_the_best_model_so_far(stopped):
    out, done = stopped
    assert done.returncode == 128 + signal.SIGTERM, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert f"best model so far: {out / 'model.safetensors'}" in done.stderr
    assert f"model: {out / 'model.safetensors'}" in done.stdout
    best = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    meta = read_metadata(out / "model.safetensors")
    assert meta is not None and meta.class_names == CLASSES and meta.metrics["ema"] is True
    assert meta.metrics["epoch"] == best["best"]["epoch"] and meta.metrics["val_top1"] == best["best"]["val_top1"]
    assert_same_logits(xception.create_model(weights=out / "model.safetensors"), own_model(out / "best.pt"))


def test_checkpoints_and_the_run_folder_are_weights(stopped):
    out, _ = stopped
    for path in (out / "best.pt", out / "last.pt", out / "last.prev.pt"):
        model = xception.create_model(weights=path)
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        assert_same_logits(model, own_model(path))
        assert tuple(model.class_names) == CLASSES == tuple(checkpoint["class_names"])
        assert model.preprocessing == Preprocessing.from_dict(checkpoint["preprocessing"])
        assert model.config == XceptionConfig.from_dict(checkpoint["model_config"])
    assert_same_logits(xception.create_model(weights=out), own_model(out / "best.pt"))
    # The name the recipe trained is accepted (a bare state dict of the same tensors needs it, and fails without).
    named, report = load_pretrained(out / "best.pt", name="xception")
    assert report.format == "xception-checkpoint" and report.new_head is False
    assert_same_logits(named, own_model(out / "best.pt"))


def test_a_run_folder_without_its_model_loads_its_best_intact_checkpoint_and_says_which(stopped, tmp_path, caplog):
    out, _ = stopped
    copy = shutil.copytree(out, tmp_path / "run", ignore=shutil.ignore_patterns("model.safetensors"))
    with caplog.at_level(logging.WARNING, logger="xception"):
        assert_same_logits(xception.create_model(weights=copy), own_model(out / "best.pt"))
    assert f"{copy} has no model.safetensors: loading {copy / 'best.pt'}, its best model so far" in caplog.text
    damage(copy / "best.pt")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="xception"):
        assert_same_logits(xception.create_model(weights=copy), own_model(out / "last.pt"))
    assert f"loading {copy / 'last.pt'}, the model as last saved; best.pt is damaged" in caplog.text
    with pytest.raises(WeightsError, match=r"best\.pt is a training checkpoint but damaged"):
        xception.create_model(weights=copy / "best.pt")


def damage(path: Path) -> None:
    """Flip one byte in the middle of the file: tensor data, which torch.load would read without noticing."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_predict_evaluate_and_convert_take_a_checkpoint(stopped, data, tmp_path, capsys):
    out, _ = stopped
    best = str(out / "best.pt")
    assert main(["predict", "--weights", best, str(data / "vertical"), "--top-k", "1", "--json"]) == 0
    predictions = json.loads(capsys.readouterr().out)
    assert len(predictions) == 8 and all(p["top"][0]["class"] in CLASSES for p in predictions)
    assert main(["evaluate", "--weights", best, "--data", str(data), "--workers", "0", "--json",
                 "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["class_names"] == list(CLASSES) and report["images"] == 24
    converted = tmp_path / "best.safetensors"
    assert main(["convert", best, str(converted), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "xception-checkpoint"
    assert_same_logits(xception.create_model(weights=converted), own_model(out / "best.pt"))


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory) -> tuple[Path, bytes | None]:
    """A finished two-epoch run; and its model.safetensors as written at its best epoch, before finish()."""
    out = tmp_path_factory.mktemp("finished") / "run"
    run = open_run(RECIPE.replace(epochs=2), xception.train.RunSettings(data=str(data)), out=out)
    try:
        with open_log(run) as run_log:
            fit(run, run_log)
        at_best = (out / "model.safetensors").read_bytes() if (out / "model.safetensors").is_file() else None
        finish(run)
    finally:
        run.close()
    return out, at_best


def test_the_model_written_at_the_best_epoch_is_the_one_the_run_exports(finished):
    out, at_best = finished
    assert at_best is not None and (out / "model.safetensors").read_bytes() == at_best


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir() if p.name != ".lock"}


def test_resuming_a_finished_run_says_there_is_nothing_to_do_and_changes_nothing(finished, capsys):
    out, _ = finished
    before = snapshot(out)
    time.sleep(0.01)  # a rewrite would show in the modification times
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"{out} has finished its 2 epochs: nothing to do" in err
    assert "resumed in epoch" not in err and "done in" not in err
    assert snapshot(out) == before
    result = train(RECIPE.replace(epochs=2), resume=out, progress=False)
    assert result.nothing_to_do and result.epochs_done == 2 and result.weights == out / "model.safetensors"
    assert snapshot(out) == before


def test_resume_into_a_folder_in_use_is_refused_before_any_checkpoint_is_read(finished, monkeypatch, capsys):
    out, _ = finished
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from xception.fileio import FolderLock; "
         "lock = FolderLock(sys.argv[1]); print('held', flush=True); time.sleep(120)", str(out)],
        env=environment(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"

        def no_read(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("a checkpoint was read before the folder was claimed")

        monkeypatch.setattr(xception.train.checkpoint, "_read", no_read)
        assert main(["train", "--resume", str(out), "--no-progress"]) == 1
        err = capsys.readouterr().err
        assert f"{out} is in use by another training (process {holder.pid} " in err
    finally:
        holder.kill()
        holder.wait()


def test_a_second_stop_signal_aborts_with_its_own_exit_status(monkeypatch, data, capsys):
    stop = StopRequest()
    stop._handle(signal.SIGTERM, None)
    assert stop.requested and stop.signum == signal.SIGTERM
    with pytest.raises(Aborted) as aborted:
        stop._handle(signal.SIGTERM, None)
    assert isinstance(aborted.value, KeyboardInterrupt) and aborted.value.signum == signal.SIGTERM

    def aborting(*args: Any, **kwargs: Any) -> Any:
        raise Aborted(signal.SIGTERM)

    monkeypatch.setattr(xception.train, "train", aborting)
    assert main(["train", str(data), "--no-progress"]) == 143
    assert "interrupted" in capsys.readouterr().err


def test_counts_of_one_are_said_in_the_singular(data, tmp_path, capsys):
    train(RECIPE.replace(epochs=1, val_fraction=0.0), data, out=tmp_path / "run", progress=False)
    err = capsys.readouterr().err
    assert ", 1 epoch, " in err and "3 classes" in err
