"""Shared by the serving tests: a tiny model's weights, images as bytes, and a real server process."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import xception
from xception.preprocessing import Preprocessing

CLASSES = [f"class {i}" for i in range(10)]
PREPROCESSING = Preprocessing(input_size=32, crop_pct=1.0, interpolation="bilinear")


def tiny_model(seed: int = 0) -> xception.Xception:
    torch.manual_seed(seed)
    model = xception.create_model("xception", num_classes=10, stem="small", width=0.125, middle_repeats=1)
    with torch.no_grad():  # distinct logits: a clear order for the top-5
        model.head.fc.bias.copy_(torch.linspace(-1.0, 1.0, 10))
    return model.eval()


def save_tiny(path: Path) -> Path:
    xception.save_weights(tiny_model(), path, class_names=CLASSES, preprocessing=PREPROCESSING)
    return path


def image_bytes(size: tuple[int, int] = (48, 40), fmt: str = "PNG", seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server_process(weights: Path, *args: str, ready_s: float = 180.0) -> Iterator[tuple[subprocess.Popen, str]]:
    """``xception serve`` in a subprocess on a free 127.0.0.1 port, once ``/readyz`` answers 200."""
    import httpx

    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "xception", "serve", "--weights", str(weights), "--port",
                             str(port), "--log-level", "warning", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}: {proc.stdout.read().decode()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server was not ready within {ready_s} s")
            time.sleep(0.2)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
