"""``xception info``: what a bug report needs, in text and JSON, read from the installation itself."""

import json
import os
import subprocess
import sys

import pytest
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


# ``xception info --json`` in a process that then imports torch and asks it what the report says it would use.
TORCH_AFTER_INFO = """
import contextlib, io, json, sys
from xception.cli import main
with contextlib.redirect_stdout(io.StringIO()) as printed:
    status = main(["info", "--json"])
imported = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
import torch
from xception.fast import native
devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
print(json.dumps({"status": status, "report": json.loads(printed.getvalue()), "imported": imported, "torch": {
    "threads": torch.get_num_threads(), "interop": torch.get_num_interop_threads(), "cuda": torch.version.cuda,
    "onednn": torch.backends.mkldnn.is_available(), "capability": torch.backends.cpu.get_cpu_capability(),
    "isa": native.isa(), "built": native.built(), "bf16": native.bf16_available(),
    "devices": [torch.cuda.get_device_name(i) for i in range(devices)]}}))
"""


@pytest.mark.parametrize("env", [{}, {"OMP_NUM_THREADS": "64", "XCEPTION_CPU_ISA": "avx2"}],
                         ids=["defaults", "more-threads-than-cores"])
def test_info_imports_no_torch_and_says_what_torch_then_uses(env):
    environment = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    done = subprocess.run([sys.executable, "-c", TORCH_AFTER_INFO], capture_output=True, text=True, timeout=120,
                          env={**environment, **env})
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    report, actual = outcome["report"], outcome["torch"]
    assert outcome["status"] == 0 and outcome["imported"] == []
    assert (report["threads"]["torch_threads"], report["threads"]["torch_interop_threads"]) == (
        actual["threads"], actual["interop"])
    assert report["torch_build"] == {"cuda": actual["cuda"], "onednn": actual["onednn"],
                                     "cpu_capability": actual["capability"]}
    kernels = report["native_kernels"]
    assert (kernels["isa"], kernels["built"], kernels["bf16"]) == (actual["isa"], actual["built"], actual["bf16"])
    assert [d["name"] for d in report["cuda_devices"]] == actual["devices"]


def test_text_says_the_same_and_where_the_dataset_was_not_found():
    done = info()
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert f"torch {torch.__version__.split('+')[0]}" in text and cpu_name() in text
    assert f"native: {native.isa()}" in text
    assert "Fashion-MNIST not found (training downloads it); searched: no folder (XCEPTION_DATA_PATH is empty)" in text


@pytest.mark.parametrize(("family", "model", "flags", "extensions"), [
    ("25", "1", "fpu sse2 avx avx2 fma", ", AVX2"),  # AMD Zen 3
    ("25", "17", "avx2 avx512f avx512bw avx512_vnni avx512_bf16", ", AVX-512, VNNI, AVX512-BF16"),  # AMD Zen 4
    ("6", "143", "avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_int8", ", AVX-512, VNNI, AVX512-BF16, AMX"),
    ("6", "15", "sse2", ""),
])
def test_the_cpu_name_says_the_vector_extensions_the_kernels_choose_between(monkeypatch, family, model, flags,
                                                                             extensions):
    from xception import hardware

    monkeypatch.setattr(hardware, "_cpu_info", lambda: {"model name": "AMD EPYC", "cpu family": family,
                                                         "model": model, "flags": flags})
    assert hardware.cpu_name() == f"AMD EPYC (family {family} model {model}{extensions})"
