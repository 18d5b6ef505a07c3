"""``xception info``: what a bug report needs, in text and JSON, read from the installation itself."""

import json
import os
import subprocess
import sys

import torch

from xception.fast import native
from xception.runtime import cpu_name


def info(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xception", "info", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_json_names_versions_cpu_threads_kernels_and_folders(tmp_path):
    from test_data_fashion_mnist import write_fake_dataset

    write_fake_dataset(tmp_path / "fashion-mnist")
    done = info("--json", env={"XCEPTION_DATA_PATH": str(tmp_path), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["packages"]["torch"] == torch.__version__.split("+")[0]
    assert report["python"] == ".".join(map(str, sys.version_info[:3]))
    assert report["cpu"]["name"] == cpu_name()
    assert ("avx2" in report["cpu"]["features"]) == ("AVX" in cpu_name())
    assert report["threads"]["torch_threads"] == 1 and report["threads"]["OMP_NUM_THREADS"] == "1"
    assert report["native_kernels"]["isa"] == native.isa() and report["native_kernels"]["built"] == native.built()
    assert report["cuda_devices"] == ([] if not torch.cuda.is_available() else report["cuda_devices"])
    assert report["files"]["fashion_mnist"] == str(tmp_path / "fashion-mnist")
    assert report["files"]["fashion_mnist_searched"] == [str(tmp_path / "fashion-mnist")]


def test_text_says_the_same_and_where_the_dataset_was_not_found():
    done = info()
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert f"torch {torch.__version__.split('+')[0]}" in text and cpu_name() in text
    assert f"native: {native.isa()}" in text
    assert "Fashion-MNIST not found (training downloads it); searched: no folder (XCEPTION_DATA_PATH is empty)" in text
