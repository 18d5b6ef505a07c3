"""What a bug report needs to know about this installation: versions, the CPU and its vector extensions,
threads, the compiled kernels, CUDA devices, and where files are kept and found. Builds no model.

    >>> from xception.info import system_info, format_info
    >>> print(format_info(system_info()))
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from typing import Any

from . import __version__
from .locations import CACHE_ENV, DATA_PATH_ENV, cache_root, dataset_folders

# Installed packages worth naming: the core, the peers and runtimes the library uses when present.
PACKAGES = (
    "torch", "torchvision", "numpy", "safetensors", "h5py", "pillow", "onnx", "onnxscript", "onnxruntime",
    "openvino", "nncf", "executorch", "litert-torch", "ai-edge-litert", "keras", "timm", "triton", "fastapi",
    "uvicorn",
)
# The CPU features that decide which kernels run, by /proc/cpuinfo's flag names.
CPU_FEATURES = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512dq", "avx512vl",
    "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8",
)


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def _threads() -> dict[str, Any]:
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {"cpu_count": os.cpu_count(), "usable_cpus": usable, "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


def _native() -> dict[str, Any]:
    from .fast import native

    problem = native.problem()
    return {"built": native.built(), "isa": native.isa(), "forced": os.environ.get("XCEPTION_CPU_ISA") or None,
            "problem": problem[0] if problem else None}


def _cuda() -> list[dict[str, Any]]:
    import torch

    if not torch.cuda.is_available():
        return []
    devices = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        devices.append({"index": i, "name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                        "capability": f"{props.major}.{props.minor}"})
    return devices


def _files() -> dict[str, Any]:
    from .data.fashion_mnist import find_fashion_mnist

    found = find_fashion_mnist()
    return {"cache": str(cache_root()), "cache_exists": cache_root().is_dir(),
            "cache_env": os.environ.get(CACHE_ENV), "data_path_env": os.environ.get(DATA_PATH_ENV),
            "fashion_mnist_searched": [str(p) for p in dataset_folders("fashion-mnist")],
            "fashion_mnist": str(found) if found is not None else None}


def system_info() -> dict[str, Any]:
    """Everything :func:`format_info` prints, as a JSON-ready dict."""
    import torch

    from .runtime import cpu_flags, cpu_name

    flags = cpu_flags()
    return {
        "xception": __version__,
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "packages": _versions(),
        "torch_build": {"cuda": torch.version.cuda, "onednn": torch.backends.mkldnn.is_available(),
                        "cpu_capability": torch.backends.cpu.get_cpu_capability()},
        "cpu": {"name": cpu_name(), "machine": platform.machine(),
                "features": [f for f in CPU_FEATURES if f in flags]},
        "threads": _threads(),
        "native_kernels": _native(),
        "cuda_devices": _cuda(),
        "files": _files(),
    }


def format_info(info: dict[str, Any]) -> str:
    """The report as text to paste into a bug report."""
    packages = info["packages"]
    native, threads, files, cpu = info["native_kernels"], info["threads"], info["files"], info["cpu"]
    lines = [
        f"xception     {info['xception']} (Python {info['python']}, {info['platform']})",
        "packages     " + ", ".join(f"{k} {v}" for k, v in packages.items() if v),
        "not present  " + (", ".join(k for k, v in packages.items() if not v) or "-"),
        f"torch build  CUDA {info['torch_build']['cuda'] or 'none'}, oneDNN "
        f"{'yes' if info['torch_build']['onednn'] else 'no'}, CPU capability {info['torch_build']['cpu_capability']}",
        f"CPU          {cpu['name']} [{cpu['machine']}]",
        f"features     {' '.join(cpu['features']) or 'none of ' + ', '.join(CPU_FEATURES[:3])}",
        f"threads      torch {threads['torch_threads']} (interop {threads['torch_interop_threads']}), "
        f"{threads['usable_cpus']} usable of {threads['cpu_count']} CPUs, OMP_NUM_THREADS "
        f"{threads['OMP_NUM_THREADS'] or 'unset'}",
        f"kernels      native: {native['isa']}" + (f" (forced by XCEPTION_CPU_ISA={native['forced']})"
                                                    if native["forced"] else ""),
    ]
    if native["problem"]:
        lines.append(f"             {native['problem']}")
    cuda = info["cuda_devices"]
    lines.append("CUDA         " + ("; ".join(f"{d['index']}: {d['name']} ({d['memory_gib']} GiB, sm {d['capability']})"
                                             for d in cuda) or "no device"))
    lines.append(f"cache        {files['cache']}" + ("" if files["cache_exists"] else " (not created yet)")
                 + (f" (from {CACHE_ENV})" if files["cache_env"] else ""))
    searched = ", ".join(files["fashion_mnist_searched"]) or f"no folder ({DATA_PATH_ENV} is empty)"
    found = files["fashion_mnist"] or "not found (training downloads it)"
    lines.append(f"Fashion-MNIST {found}; searched: {searched}")
    return "\n".join(lines)
