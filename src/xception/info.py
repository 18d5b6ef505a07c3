"""What a bug report needs to know about this installation: versions, the CPU and its vector extensions,
threads, the compiled kernels, CUDA devices, and where files are kept and found. Builds no model, and imports
no torch (``import torch`` takes seconds): what torch would use is worked out as torch works it out.

    >>> from xception.info import system_info, format_info
    >>> print(format_info(system_info()))
"""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import platform
import re
import sys
from pathlib import Path
from typing import Any

from . import __version__
from .hardware import (
    INT8_KERNEL_ISAS,
    KERNEL_ISAS,
    all_cpus,
    cpu_flags,
    cpu_name,
    load_kernels,
    nvidia_gpus,
    physical_cores,
    usable_cpus,
)
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


def _torch_root() -> Path | None:
    """The installed torch package's folder, found without importing it."""
    spec = importlib.util.find_spec("torch")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return Path(locations[0]) if locations else None


def _torch_build() -> dict[str, Any]:
    """What the installed torch was built with, read from its files: the constants of torch/version.py (``cuda``:
    its CUDA version) and the switches of ATen/Config.h (``AT_MKLDNN_ENABLED``: oneDNN, ``AT_MKL_ENABLED``, …)."""
    root = _torch_root()
    build: dict[str, Any] = {}
    if root is None:
        return build
    try:
        for node in ast.parse((root / "version.py").read_text()).body:
            if isinstance(node, ast.AnnAssign | ast.Assign) and isinstance(node.value, ast.Constant):
                for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    if isinstance(target, ast.Name):
                        build[target.id] = node.value.value
        header = (root / "include" / "ATen" / "Config.h").read_text()
    except (OSError, SyntaxError):
        return build
    build.update({name: value == "1" for name, value in re.findall(r"#define (AT_\w+?)(?:\(\))? (\d+)", header)})
    return build


def _cpu_capability(flags: set[str]) -> str:
    """The vector code ATen dispatches its CPU operators to (``torch.backends.cpu.get_cpu_capability()``),
    chosen as ATen chooses it: ``ATEN_CPU_CAPABILITY`` if valid, else the widest the CPU has (AVX-512 needs
    VL, BW, DQ and FMA; AVX2 needs FMA; on ARM, 256-bit SVE)."""
    if platform.machine() in ("x86_64", "AMD64"):
        forced = os.environ.get("ATEN_CPU_CAPABILITY")
        if forced in ("avx512", "avx2", "default"):
            return forced.upper()
        if {"avx512vl", "avx512bw", "avx512dq", "fma"} <= flags:
            return "AVX512"
        return "AVX2" if {"avx2", "fma"} <= flags else "DEFAULT"
    try:  # the SVE vector length a new process gets, in bytes
        sve_bytes = int(Path("/proc/sys/abi/sve_default_vector_length").read_text())
    except (OSError, ValueError):
        sve_bytes = 0
    return "SVE256" if "sve" in flags and sve_bytes == 32 else "DEFAULT"


def _env_threads(name: str) -> int | None:
    """A thread count from the environment as torch and MKL read it: the leading number (of ``4,2`` too), if
    above 0."""
    found = re.match(r"\s*(\d+)", os.environ.get(name, ""))
    count = int(found.group(1)) if found else 0
    return count if count > 0 else None


def _threads(build: dict[str, Any]) -> dict[str, Any]:
    """The CPUs, and the threads torch sets up at start-up (``torch.get_num_threads()``, and
    ``get_num_interop_threads()``: the physical cores this process may use): ``MKL_NUM_THREADS``, else
    ``OMP_NUM_THREADS``, else those cores. A build whose OpenMP threads MKL counts (the x86 wheels) takes MKL's
    count, which caps a requested one at the machine's physical cores unless ``MKL_DYNAMIC=false``."""
    usable = usable_cpus()
    cores = physical_cores(usable)
    threads = _env_threads("MKL_NUM_THREADS") or _env_threads("OMP_NUM_THREADS") or cores
    mkl = build.get("AT_MKL_ENABLED") and build.get("AT_PARALLEL_OPENMP") and not build.get("AT_MKL_SEQUENTIAL")
    if mkl and os.environ.get("MKL_DYNAMIC", "").lower() != "false":
        threads = min(threads, physical_cores(all_cpus()))
    return {"cpu_count": os.cpu_count(), "usable_cpus": len(usable), "torch_threads": threads,
            "torch_interop_threads": cores, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


def _native() -> dict[str, Any]:
    lib = load_kernels()
    isa = KERNEL_ISAS[lib.xc_isa()] if lib is not None else "none"
    problem = None
    if isa == "none":  # why, in the fast path's words; it imports torch, which only such machines pay for
        from .fast import native

        found = native.problem()
        problem = found[0] if found else None
    int8 = INT8_KERNEL_ISAS[lib.xc_qisa()] if lib is not None else "none"
    bf16 = lib is not None and hasattr(lib, "xc_bf16") and bool(lib.xc_bf16())
    return {"built": lib is not None, "isa": isa, "int8_isa": int8, "bf16": bf16,
            "forced": os.environ.get("XCEPTION_CPU_ISA") or None, "problem": problem}


def _cuda(build: dict[str, Any]) -> list[dict[str, Any]]:
    """The CUDA devices torch would see: none when it was built without CUDA; else the driver's GPUs, as
    ``CUDA_VISIBLE_DEVICES`` (indices or ``GPU-`` UUIDs, up to the first it does not match) selects and
    numbers them."""
    if not build.get("cuda"):
        return []
    gpus = nvidia_gpus()
    if (visible := os.environ.get("CUDA_VISIBLE_DEVICES")) is not None:
        chosen: list[dict[str, Any]] = []
        for item in (part.strip() for part in visible.split(",")):
            match = next((g for g in gpus if item == str(g["index"])
                          or (item.startswith("GPU-") and str(g["uuid"]).startswith(item))), None)
            if match is None or match in chosen:
                break
            chosen.append(match)
        gpus = chosen
    return [{"index": i, "name": g["name"], "memory_gib": g["memory_gib"], "capability": g["capability"]}
            for i, g in enumerate(gpus)]


def _files() -> dict[str, Any]:
    from .data.fashion_mnist import find_fashion_mnist

    found = find_fashion_mnist()
    return {"cache": str(cache_root()), "cache_exists": cache_root().is_dir(),
            "cache_env": os.environ.get(CACHE_ENV), "data_path_env": os.environ.get(DATA_PATH_ENV),
            "fashion_mnist_searched": [str(p) for p in dataset_folders("fashion-mnist")],
            "fashion_mnist": str(found) if found is not None else None}


def system_info() -> dict[str, Any]:
    """Everything :func:`format_info` prints, as a JSON-ready dict. Read from the installation and the
    operating system without importing torch: what torch reports (threads, CPU capability, CUDA devices) is
    what it would report, set up as it sets itself up at start-up."""
    flags = cpu_flags()
    build = _torch_build()
    return {
        "xception": __version__,
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "packages": _versions(),
        "torch_build": {"cuda": build.get("cuda"), "onednn": build.get("AT_MKLDNN_ENABLED"),
                        "cpu_capability": _cpu_capability(flags)},
        "cpu": {"name": cpu_name(), "machine": platform.machine(),
                "features": [f for f in CPU_FEATURES if f in flags]},
        "threads": _threads(build),
        "native_kernels": _native(),
        "cuda_devices": _cuda(build),
        "files": _files(),
    }


def format_info(info: dict[str, Any]) -> str:
    """The report as text to paste into a bug report."""
    packages = info["packages"]
    native, threads, files, cpu = info["native_kernels"], info["threads"], info["files"], info["cpu"]
    build = info["torch_build"]
    onednn = {True: "yes", False: "no"}.get(build["onednn"], "unknown")  # unknown: torch's headers are missing
    lines = [
        f"xception     {info['xception']} (Python {info['python']}, {info['platform']})",
        "packages     " + ", ".join(f"{k} {v}" for k, v in packages.items() if v),
        "not present  " + (", ".join(k for k, v in packages.items() if not v) or "-"),
        f"torch build  CUDA {build['cuda'] or 'none'}, oneDNN {onednn}, CPU capability {build['cpu_capability']}",
        f"CPU          {cpu['name']} [{cpu['machine']}]",
        f"features     {' '.join(cpu['features']) or 'none of ' + ', '.join(CPU_FEATURES[:3])}",
        f"threads      torch {threads['torch_threads']} (interop {threads['torch_interop_threads']}) at start-up, "
        f"{threads['usable_cpus']} usable of {threads['cpu_count']} CPUs, OMP_NUM_THREADS "
        f"{threads['OMP_NUM_THREADS'] or 'unset'}",
        f"kernels      native: {native['isa']}, int8: {native['int8_isa']}, bf16: {'yes' if native['bf16'] else 'no'}"
        + (f" (forced by XCEPTION_CPU_ISA={native['forced']})" if native["forced"] else ""),
    ]
    if native["problem"]:
        lines.append(f"             {native['problem']}")
    cuda = info["cuda_devices"]
    lines.append("CUDA         " + ("; ".join(map(_device_text, cuda)) or "no device"))
    lines.append(f"cache        {files['cache']}" + ("" if files["cache_exists"] else " (not created yet)")
                 + (f" (from {CACHE_ENV})" if files["cache_env"] else ""))
    searched = ", ".join(files["fashion_mnist_searched"]) or f"no folder ({DATA_PATH_ENV} is empty)"
    found = files["fashion_mnist"] or "not found (training downloads it)"
    lines.append(f"Fashion-MNIST {found}; searched: {searched}")
    return "\n".join(lines)


def _device_text(device: dict[str, Any]) -> str:
    known = [f"{device['memory_gib']} GiB" if device["memory_gib"] is not None else None,
             f"sm {device['capability']}" if device["capability"] is not None else None]
    details = ", ".join(k for k in known if k)
    return f"{device['index']}: {device['name']}" + (f" ({details})" if details else "")
