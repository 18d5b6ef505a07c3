"""Small generated datasets and bad files for the data, training, evaluation and prediction tests."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from xception.data import images as img
from xception.preprocessing import Preprocessing
from xception.train import Recipe, load_checkpoint

CLASSES = ("diagonal", "horizontal", "vertical")


def stripes_folder(root: Path, per_class: int = 12, size: int = 32, seed: int = 0) -> Path:
    """An easy, learnable ImageFolder: bright stripes on noise, one orientation per class."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            a = rng.integers(0, 80, (size, size, 3)).astype(np.uint8)
            offset = int(rng.integers(0, 5))
            for j in range(offset, size, 6):
                if name == "horizontal":
                    a[j : j + 2] = 255
                elif name == "vertical":
                    a[:, j : j + 2] = 255
                else:
                    for t in range(size):
                        a[t, (t + j) % size] = 255
            Image.fromarray(a).save(root / name / f"{label}{i:03d}.png")
    return root


def bomb_png(path: Path, width: int = 50_000, height: int = 50_000) -> Path:
    """A tiny PNG whose header claims width×height pixels: a decompression bomb by its dimensions."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def add_bad_files(folder: Path) -> dict[str, str]:
    """Every kind of bad file, in one class folder; returns {file name: expected skip reason}."""
    folder.mkdir(parents=True, exist_ok=True)
    good = Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    (folder / "empty.png").write_bytes(b"")
    good.save(folder / "whole.png")
    data = (folder / "whole.png").read_bytes()
    (folder / "whole.png").unlink()
    (folder / "cut.png").write_bytes(data[: len(data) // 2])
    good.save(folder / "whole.jpg", quality=90)
    data = (folder / "whole.jpg").read_bytes()
    (folder / "whole.jpg").unlink()
    (folder / "cut.jpg").write_bytes(data[: len(data) // 2])
    (folder / "page.jpg").write_text("<html><body>not an image</body></html>")
    (folder / "notes.txt").write_text("a note someone left here")
    bomb_png(folder / "bomb.png")
    return {
        "empty.png": img.EMPTY, "cut.png": img.TRUNCATED, "cut.jpg": img.TRUNCATED, "page.jpg": img.NOT_AN_IMAGE,
        "notes.txt": img.NOT_AN_IMAGE, "bomb.png": img.TOO_LARGE,
    }


def tiny_recipe(**changes: object) -> Recipe:
    """A recipe for tests: a tiny small-stem Xception on 32 px RGB images, a few quick epochs, no workers."""
    base = Recipe(
        name="tiny", model_options={"stem": "small", "width": 0.25, "middle_repeats": 1}, input_size=32,
        crop_pct=1.0, interpolation="bilinear", scale=(0.6, 1.0), hflip=0.0, val_fraction=0.25, workers=0,
        epochs=2, batch_size=8, optimizer="adamw", lr=3e-3, lr_base_batch=0, weight_decay=0.0,
        schedule="constant", ema_decay=0.0, device="cpu",
    )
    return base.replace(**changes)


def assert_same_training(a: Path, b: Path) -> None:
    """Two checkpoints hold the same point of the same training: position, weights, EMA, optimizer state."""
    first, second = load_checkpoint(a), load_checkpoint(b)
    assert (first["epoch"], first["step"], first["position"]) == (second["epoch"], second["step"], second["position"])
    for part in ("model", "ema"):
        assert first[part].keys() == second[part].keys()
        for key, value in first[part].items():
            assert torch.equal(value, second[part][key]), f"{part}.{key} differs"
    left = {k: v for s in first["optimizer"]["state"].values() for k, v in s.items()}
    right = {k: v for s in second["optimizer"]["state"].values() for k, v in s.items()}
    assert all(torch.equal(v, right[k]) for k, v in left.items() if isinstance(v, torch.Tensor))


SRC = str(Path(__file__).resolve().parents[1] / "src")


def cli_environment() -> dict[str, str]:
    """The environment of an ``xception`` subprocess: this checkout's sources, one thread."""
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}


_BESIDE = ThreadPoolExecutor(max_workers=2, thread_name_prefix="beside")


def run_beside(args: list[str], env: dict[str, str] | None = None) -> Future[subprocess.CompletedProcess]:
    """Start ``args`` (in ``env``, by default :func:`cli_environment`'s) and return at once: it runs on the
    machine's other cores while the test goes on; ``.result()`` waits for its outcome."""
    return _BESIDE.submit(subprocess.run, args, env=env or cli_environment(), capture_output=True, text=True,
                          timeout=600)


def signal_on_line(args: list[str], prefix: str, sig: int = signal.SIGINT) -> subprocess.CompletedProcess:
    """Run ``args`` and send ``sig`` once a line of its stderr starts with ``prefix``; the whole outcome."""
    proc = subprocess.Popen(args, env=cli_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith(prefix):
            proc.send_signal(sig)
            break
    stdout, rest = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(args, proc.returncode, stdout, "".join(lines) + rest)


GRAY_PRE = Preprocessing(input_size=32, crop_pct=1.0, interpolation="bilinear", mean=(0.5,), std=(0.5,), channels=1)


def folder_tensors(folder: Path, pre: Preprocessing = GRAY_PRE) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of a stripes folder as one preprocessed batch, and its labels."""
    from xception.data import FolderSource
    from xception.data.folder import scan_folder

    scan = scan_folder(folder, list(CLASSES))
    batches = list(FolderSource(scan.samples, scan.classes, str(folder)).batches(pre, train=False, batch_size=256,
                                                                                 workers=0))
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


def stripes_sets(root: Path) -> dict[str, Path]:
    """Three stripes folders drawn apart: training, calibration and held-out images."""
    return {name: stripes_folder(root / name, per_class=n, seed=seed)
            for name, n, seed in (("train", 16, 0), ("calibration", 8, 1), ("held", 20, 2))}


def tiny_trained_weights(train: Path, path: Path) -> Path:
    """A tiny gray model trained for a few seconds on ``train``, saved with its class names and preprocessing."""
    import torch.nn.functional as F

    import xception

    torch.manual_seed(0)
    model = xception.create_model("xception", num_classes=3, in_chans=1, stem="small", width=0.125,
                                  middle_repeats=1)
    x, y = folder_tensors(train)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(60):
        pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(step))[:24]
        loss = F.cross_entropy(model(x[pick]), y[pick])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    xception.save_weights(model.eval(), path, class_names=list(CLASSES), preprocessing=GRAY_PRE)
    return path
