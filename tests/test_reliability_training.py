"""A training run never loses work and never shares its folder.

* files follow the user's umask (as a plain ``open()`` would create them);
* a run folder belongs to one training at a time (a lock the kernel drops when its process dies);
* a full disk stops the run with one line naming the file, the previous checkpoint intact, no partial files
  (on a real 2 MB-scale tmpfs when the machine lets us mount one, and by fault injection at the write call);
* a damaged ``last.pt`` does not block ``--resume``: the newest intact checkpoint is used, and said so;
* SIGKILL at random moments loses at most the last few seconds: mid-epoch checkpoints resume exactly.

Every training here is deterministic on CPU with one thread, so "resumed exactly" means bit-identical weights.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import xception
from data_factory import assert_same_training, run_beside, stripes_folder, tiny_recipe
from xception import fileio
from xception.errors import BusyError, ConfigError, StorageError
from xception.train import RunSettings, fit, load_checkpoint, open_log, open_run, read_metrics, resume_settings, train

SRC = str(Path(xception.__file__).parents[1])
EPOCHS = 3
# Dropout, flips and EMA make the RNG state and the averaged weights part of what must be restored.
RECIPE = tiny_recipe(epochs=EPOCHS, ema_decay=0.8, workers=1, hflip=0.5, deterministic=True,
                     model_options={"stem": "small", "width": 0.25, "middle_repeats": 1, "drop_rate": 0.3})
SMALL = tiny_recipe(epochs=1, model_options={"stem": "small", "width": 0.125, "middle_repeats": 1})

pytestmark = pytest.mark.usefixtures("one_thread")


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}


def xception_train(*args: str) -> list[str]:
    return [sys.executable, "-m", "xception", "train", *args, "--no-progress"]


def finish(args: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(args, env=environment(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def leftovers(folder: Path) -> list[str]:
    """Partial files an interrupted write could have left."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("data")
    recipe = root / "tiny.toml"
    recipe.write_text(RECIPE.to_toml())
    return stripes_folder(root / "images", per_class=24), recipe  # 54 training images: 6 updates per epoch, 18 in all


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Callable[[], Path]:
    """The uninterrupted run, checkpointing at epoch ends only: started here, it trains while the test runs
    its own; the fixture's value waits for it and returns its folder."""
    folder, recipe = data
    out = tmp_path_factory.mktemp("runs") / "reference"
    running = run_beside(xception_train(str(folder), "--recipe", str(recipe), "--out", str(out), "--deterministic",
                                        "--set", "checkpoint_minutes=0"))

    def finished() -> Path:
        assert running.result().returncode == 0, running.result().stderr[-3000:]
        return out

    return finished


# -- the user's umask ----------------------------------------------------------------------------------------


@pytest.fixture(params=[0o022, 0o077], ids=["umask-022", "umask-077"])
def umask(request) -> Any:
    before = os.umask(request.param)
    yield request.param
    os.umask(before)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_writes_get_the_mode_a_plain_open_gives(umask, tmp_path):
    with open(tmp_path / "plain.txt", "w") as f:
        f.write("x")
    fileio.atomic_write(tmp_path / "atomic.txt", lambda tmp: tmp.write_text("x"))
    fileio.atomic_write(tmp_path / "atomic.pt", lambda tmp: torch.save({"x": torch.ones(2)}, tmp))
    # safetensors writes a file of its own (0o600) and renames it over the path it is given.
    model = xception.create_model("xception", num_classes=2, stem="small", width=0.125, middle_repeats=1)
    xception.save_weights(model, tmp_path / "atomic.safetensors")
    expected = 0o666 & ~umask
    assert mode(tmp_path / "plain.txt") == expected
    assert {mode(tmp_path / f"atomic.{kind}") for kind in ("txt", "pt", "safetensors")} == {expected}


def test_a_run_folder_follows_the_umask(umask, tmp_path):
    folder = stripes_folder(tmp_path / "images", per_class=4)
    result = train(SMALL.replace(val_fraction=0.25, batch_size=4), folder, out=tmp_path / "run", progress=False)
    files = [p for p in result.run_dir.iterdir() if p.is_file()]
    assert {"config.toml", "metrics.jsonl", "last.pt", "best.pt", "model.safetensors", "summary.json",
            "loss.png"} <= {p.name for p in files}
    assert {p.name: mode(p) for p in files} == {p.name: 0o666 & ~umask for p in files}
    assert mode(result.run_dir) == 0o777 & ~umask


# -- one training per run folder -------------------------------------------------------------------------------


def test_a_folder_lock_is_exclusive_between_processes_and_dies_with_its_holder(tmp_path):
    code = ("import sys, time; from xception.fileio import FolderLock; lock = FolderLock(sys.argv[1]); "
            "print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env=environment(), stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(BusyError, match=rf"{tmp_path} is in use by another training \(process {holder.pid}\b"):
            fileio.FolderLock(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    fileio.FolderLock(tmp_path).release()  # SIGKILL left no stale lock


# -- a full disk -----------------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path) -> Any:
    """A real 16 MB file system (tmpfs), when this machine lets us mount one."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small file system needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` until ``leave`` bytes are free."""
    filler = disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 16))
                f.flush()
        except OSError as err:
            assert err.errno == errno.ENOSPC
    os.truncate(filler, filler.stat().st_size - leave)
    return filler


def test_a_full_disk_stops_the_run_in_one_line_and_keeps_the_last_checkpoint(small_disk, tmp_path):
    folder = stripes_folder(tmp_path / "images", per_class=8)
    out = small_disk / "run"
    recipe = SMALL.replace(epochs=1, deterministic=True)
    train(recipe, folder, out=out, progress=False)
    last = (out / "last.pt").read_bytes()
    filler = fill(small_disk, leave=len(last) // 3)  # room for logs, not for a checkpoint

    full = subprocess.run(xception_train("--resume", str(out), "--epochs", "2"), env=environment(),
                          capture_output=True, text=True, timeout=300)
    assert full.returncode == 1 and "Traceback" not in full.stderr and "iostream" not in full.stderr
    message = full.stderr.strip().splitlines()[-1]
    assert message.startswith("xception train: error: no space left on device writing "), full.stderr[-3000:]
    assert message.endswith(f"; free space and continue with --resume {out}")
    assert (out / "last.pt").read_bytes() == last
    assert leftovers(out) == []
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines][:1] == [1]  # every line whole (none cut short)

    filler.unlink()
    result = train(recipe.replace(epochs=2), resume=out, progress=False)
    assert result.weights is not None and load_checkpoint(out)["epoch"] == 2
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2]


class FullDisk:
    """A file whose writes fail with ENOSPC once ``room`` bytes are in, as a full disk's do."""

    def __init__(self, file: Any, room: int) -> None:
        self.file, self.room = file, room

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            self.file.write(bytes(data[: self.room]))
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.file.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)


def save_into(wrap: Any) -> Any:
    """torch.save, its bytes sent through ``wrap(file)``: a fault at the write call itself."""
    real_save = torch.save

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(f, str | os.PathLike):
            with open(f, "wb") as file:
                return real_save(obj, wrap(file), *args, **kwargs)
        return real_save(obj, wrap(f), *args, **kwargs)

    return save


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory) -> tuple[Path, Path]:
    """A run folder after one epoch of a two-epoch run (copied by each test that changes it)."""
    root = tmp_path_factory.mktemp("one-epoch")
    folder = stripes_folder(root / "images", per_class=8)
    train(SMALL.replace(deterministic=True), folder, out=root / "run", progress=False)
    return folder, root / "run"


def test_a_write_failing_with_enospc_becomes_one_clear_error_and_leaves_nothing_behind(one_epoch, tmp_path,
                                                                                          monkeypatch):
    out = shutil.copytree(one_epoch[1], tmp_path / "run")
    last = (out / "last.pt").read_bytes()
    stored, _ = resume_settings(out)
    monkeypatch.setattr(torch, "save", save_into(lambda f: FullDisk(f, 4096)))
    with pytest.raises(StorageError, match=rf"^no space left on device writing {out}/(last|best)\.pt; free space "
                                           rf"and continue with (--resume {out}|resume='{out}')"):
        train(stored.replace(epochs=2), resume=out, progress=False)
    assert (out / "last.pt").read_bytes() == last and leftovers(out) == []
    monkeypatch.undo()
    assert train(stored.replace(epochs=2), resume=out, progress=False).epochs_done == 2


class Truncating:
    """A file that silently keeps only its first ``room`` bytes (a write the system lost)."""

    def __init__(self, file: Any, room: int) -> None:
        self.file, self.room = file, room

    def write(self, data: bytes) -> int:
        keep = bytes(data[: max(self.room, 0)])
        self.room -= len(data)
        self.file.write(keep)
        return len(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)


def test_a_checkpoint_that_does_not_read_back_never_replaces_the_last_good_one(one_epoch, tmp_path, monkeypatch):
    out = shutil.copytree(one_epoch[1], tmp_path / "run")
    last = (out / "last.pt").read_bytes()
    stored, _ = resume_settings(out)
    monkeypatch.setattr(torch, "save", save_into(lambda f: Truncating(f, 20_000)))
    with pytest.raises(StorageError, match=r"(last|best)\.pt did not read back after writing"):
        train(stored.replace(epochs=2), resume=out, progress=False)
    assert (out / "last.pt").read_bytes() == last and leftovers(out) == []


# -- damaged checkpoints ---------------------------------------------------------------------------------------


def damage(path: Path) -> None:
    """Flip one byte in the middle of the file (a bit error the zip records' CRCs catch)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_resume_falls_back_to_the_newest_intact_checkpoint_and_says_so(tmp_path, capsys):
    folder = stripes_folder(tmp_path / "images", per_class=12)  # 27 training images: 3 updates per epoch
    recipe = tiny_recipe(epochs=2, deterministic=True, ema_decay=0.5, hflip=0.5,
                         model_options={"stem": "small", "width": 0.25, "middle_repeats": 1, "drop_rate": 0.3})
    reference = train(recipe, folder, out=tmp_path / "reference", progress=False).run_dir

    out = tmp_path / "cut"
    run = open_run(recipe, RunSettings(data=str(folder)), out=out)
    with open_log(run) as run_log:
        fit(run, run_log, steps=4)  # epoch 1 (3 updates), then one update into epoch 2
    run.close()
    assert {p.name for p in out.glob("*.pt")} == {"last.pt", "last.prev.pt", "best.pt"}
    assert load_checkpoint(out / "last.pt")["position"] > 0 and load_checkpoint(out / "last.prev.pt")["step"] == 3

    damage(out / "last.pt")
    with pytest.raises(ConfigError, match=r"last\.pt is damaged"):
        load_checkpoint(out / "last.pt")  # a file named explicitly is that file
    capsys.readouterr()
    stored, _ = resume_settings(out)
    run = open_run(stored, resume=out)
    line = next(x for x in capsys.readouterr().err.splitlines() if "resuming from" in x)
    assert line.startswith("resuming from last.prev.pt (epoch 2, update 3): last.pt is damaged")
    assert line.endswith(f"kept as {out / 'last.pt.damaged'}")  # out of the way: never rotated into last.prev.pt
    with open_log(run) as run_log:
        fit(run, run_log)
    run.close()
    assert_same_training(reference, out)

    assert load_checkpoint(out / "last.prev.pt")["step"] == 3  # the one resumed from, until a newer last.pt
    (out / "last.pt").write_bytes(b"")
    damage(out / "last.prev.pt")
    assert load_checkpoint(out)["step"] == load_checkpoint(out / "best.pt")["step"]  # the only intact one left
    damage(out / "best.pt")
    with pytest.raises(ConfigError, match=r"no intact checkpoint in .*cut: last\.pt is empty.*last\.prev\.pt is "
                                          r"damaged.*best\.pt is damaged"):
        open_run(stored, resume=out)


# -- SIGKILL at random moments ---------------------------------------------------------------------------------


def kill_at_random_moments(data: tuple[Path, Path], out: Path, kills: int, seed: int) -> list[tuple[int, int]]:
    """Train into ``out`` and SIGKILL the run ``kills`` times, each a random moment after one to three new
    checkpoints (so that each session makes progress), resuming each time; then let the last session finish.
    While the first session runs, a second training into its folder is refused. Returns the (epoch, position)
    each session was killed after."""
    folder, recipe = data
    rng = random.Random(seed)
    args = xception_train(str(folder), "--recipe", str(recipe), "--out", str(out), "--deterministic",
                          "--set", "checkpoint_minutes=0.0001")  # at every update
    cut_at = []
    for session in range(kills):
        # Output to a file: a pipe would stay open until the killed run's decoding worker (a forked child that
        # outlives it for a few seconds) exits, and the next session starts at once.
        log = out.parent / f"session{session}.log"
        with open(log, "w") as output:
            proc = subprocess.Popen(args, env=environment(), stdout=output, stderr=subprocess.STDOUT)
        seen = (out / "last.pt").stat().st_mtime_ns if (out / "last.pt").exists() else None
        wanted, deadline = rng.randint(1, 3), time.monotonic() + 300
        try:
            while wanted:
                assert proc.poll() is None, f"the run ended before it was killed: {log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "no checkpoint within 5 minutes"
                now = (out / "last.pt").stat().st_mtime_ns if (out / "last.pt").exists() else None
                if now != seen:
                    seen, wanted = now, wanted - 1
                    if session == 0:
                        second_training_is_refused(out, folder, proc.pid)
                time.sleep(0.002)
            time.sleep(rng.uniform(0, 0.1))
        finally:
            proc.kill()
            proc.wait()
        assert proc.returncode == -signal.SIGKILL
        fileio.FolderLock(out).release()  # at once: the killed run's worker does not hold the folder
        at = load_checkpoint(out)
        assert at["epoch"] < EPOCHS, "killed too late: make the run longer"
        cut_at.append((at["epoch"], at["position"]))
        args = xception_train("--resume", str(out))
    finish(args)
    return cut_at


def second_training_is_refused(out: Path, folder: Path, holder: int) -> None:
    busy = rf"{out} is in use by another training \(process {holder}\b.*wait for it"
    with pytest.raises(BusyError, match=busy):
        train(RECIPE, folder, out=out, progress=False)
    with pytest.raises(BusyError, match=busy):
        train(RECIPE, resume=out, progress=False)


def check_resumed_exactly(reference: Callable[[], Path], out: Path, cut_at: list[tuple[int, int]]) -> None:
    assert_same_training(reference() / "last.pt", out / "last.pt")
    assert any(position > 0 for _, position in cut_at)  # mid-epoch checkpoints carried the run on
    assert [r["epoch"] for r in read_metrics(out)] == list(range(1, EPOCHS + 1))  # one writer, in order
    assert leftovers(out) == []
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == EPOCHS


def test_a_run_killed_twice_with_sigkill_resumes_to_identical_weights(data, reference, tmp_path):
    out = tmp_path / "killed"
    check_resumed_exactly(reference, out, kill_at_random_moments(data, out, kills=2, seed=1))


@pytest.mark.slow
def test_a_run_killed_five_times_with_sigkill_resumes_to_identical_weights(data, reference, tmp_path):
    out = tmp_path / "killed"
    check_resumed_exactly(reference, out, kill_at_random_moments(data, out, kills=5, seed=5))
