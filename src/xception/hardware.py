"""The machine as the operating system describes it, read without torch (``xception info`` answers in well
under the time ``import torch`` takes): the CPU's name and feature flags, the CPUs this process may run on and
the physical cores among them, and the NVIDIA GPUs the driver lists."""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

CPU_ROOT = Path("/sys/devices/system/cpu")
NVIDIA_PROC = Path("/proc/driver/nvidia/gpus")


def _cpu_info() -> dict[str, str]:
    """The first processor's block of /proc/cpuinfo (empty where there is none)."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if not sep:
                    break  # the first processor's block is enough
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info


def cpu_flags() -> set[str]:
    """The CPU's feature flags as /proc/cpuinfo names them (``avx2``, ``avx512_vnni``, ``amx_int8``, …)."""
    return set(_cpu_info().get("flags", "").split())


def cpu_name() -> str:
    """The CPU's name with what decides kernel speed: family/model (virtual machines often report a generic
    name such as "Intel(R) Xeon(R) Processor") and the widest vector extensions (VNNI: AVX-512's int8 dot
    product, which the int8 kernels use)."""
    info = _cpu_info()
    if not info:
        return platform.processor() or platform.machine()
    flags = set(info.get("flags", "").split())
    isa = [name for name, flag in (("AVX-512", "avx512f"), ("VNNI", "avx512_vnni"), ("AVX512-BF16", "avx512_bf16"),
                                   ("AMX", "amx_bf16")) if flag in flags] or (["AVX2"] if "avx2" in flags else [])
    name = info.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in info and "model" in info:
        name += f" (family {info['cpu family']} model {info['model']}{', ' + ', '.join(isa) if isa else ''})"
    return name


def all_cpus() -> list[int]:
    """The numbers of the machine's CPUs (logical processors) that are online."""
    try:
        return _cpu_list((CPU_ROOT / "online").read_text())
    except (OSError, ValueError):
        return list(range(os.cpu_count() or 1))


def usable_cpus() -> list[int]:
    """The numbers of the CPUs this process may run on (its affinity: taskset, cgroup cpusets)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return all_cpus()


def physical_cores(cpus: list[int]) -> int:
    """How many physical cores ``cpus`` (logical processors) sit on: hyper-threads of one core count once."""
    cores = set()
    for cpu in cpus:
        topology = CPU_ROOT / f"cpu{cpu}" / "topology"
        try:
            cores.add(tuple((topology / name).read_text().strip() for name in ("physical_package_id", "core_id")))
        except OSError:
            cores.add(("cpu", str(cpu)))  # no topology (not Linux, or hidden): each processor its own core
    return max(len(cores), 1)


def _cpu_list(text: str) -> list[int]:
    """``0-3,8,10-11`` (the kernel's list format) as numbers."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        first, _, last = part.partition("-")
        cpus.extend(range(int(first), int(last or first) + 1))
    return cpus


def nvidia_gpus() -> list[dict[str, Any]]:
    """The NVIDIA GPUs the driver lists, in its order: index, uuid, name, memory_gib and capability (None
    where the driver's tools do not say); ``[]`` without the driver. Asks ``nvidia-smi``, else reads
    /proc/driver/nvidia (names only)."""
    query = ["nvidia-smi", "--query-gpu=index,uuid,name,memory.total,compute_cap", "--format=csv,noheader,nounits"]
    try:
        done = subprocess.run(query, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        done = None
    if done is not None and done.returncode == 0:
        gpus = []
        for line in done.stdout.splitlines():
            fields = [field.strip() for field in line.split(",")]
            if len(fields) == 5:
                index, uuid, name, memory, capability = fields
                gpus.append({"index": int(index), "uuid": uuid, "name": name,
                             "memory_gib": round(float(memory) / 1024, 1) if _number(memory) else None,
                             "capability": capability if _number(capability) else None})
        return gpus
    return _proc_gpus()


def _proc_gpus() -> list[dict[str, Any]]:
    """The GPUs the loaded driver describes in /proc, by PCI bus order: names and UUIDs only."""
    gpus = []
    folders = sorted(NVIDIA_PROC.iterdir()) if NVIDIA_PROC.is_dir() else []
    for index, folder in enumerate(folders):
        fields: dict[str, str] = {}
        try:
            for line in (folder / "information").read_text().splitlines():
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
        except OSError:
            continue
        gpus.append({"index": index, "uuid": fields.get("GPU UUID"), "name": fields.get("Model", "NVIDIA GPU"),
                     "memory_gib": None, "capability": None})
    return gpus


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


KERNEL_ISAS = ("none", "avx2", "avx512")  # what the compiled kernels' xc_isa() answers, by number
INT8_KERNEL_ISAS = ("none", "avx2", "avx512-vnni")  # ... and their xc_qisa(), for the int8 kernels


@functools.cache
def load_kernels() -> ctypes.CDLL | None:
    """The compiled CPU kernels (``xception.fast._cpu``) as a ctypes library, once per process, with
    ``XCEPTION_CPU_ISA`` (``avx2``, ``avx512``) forcing a lower instruction set; None when not built or not
    loadable. Found beside this file rather than imported: importing ``xception.fast`` imports torch."""
    folder = Path(__file__).with_name("fast")
    spec = importlib.machinery.PathFinder.find_spec("xception.fast._cpu", [str(folder)])
    if spec is None or spec.origin is None:
        return None
    try:
        lib = ctypes.CDLL(spec.origin)
    except OSError:
        return None
    forced = os.environ.get("XCEPTION_CPU_ISA", "").lower()
    if forced in KERNEL_ISAS[1:]:
        lib.xc_select_isa(KERNEL_ISAS.index(forced))
    return lib

