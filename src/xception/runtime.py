"""Where computation runs: device names resolved in one place, the defaults that depend on the device,
and one clock for timing calls on it (CUDA events on a GPU, ``perf_counter`` on a CPU)."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from typing import Any

import torch

from .errors import DeviceError


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA when present, else the CPU; anything else must name a device that is here."""
    if isinstance(name, str) and name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise DeviceError(f"{name!r} is not a device name; use auto, cpu, cuda or cuda:N") from err
    return check_device(device)


def check_device(device: torch.device) -> torch.device:
    """``device`` if this machine has it; a :class:`DeviceError` that says what to use instead if not."""
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"{device} was asked for but CUDA is not available here; use the cpu device")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"{device} was asked for but this machine has {torch.cuda.device_count()} GPU(s)")
    if device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise DeviceError(f"{device} was asked for but MPS is not available here; use the cpu device")
    return device


def inference_dtype(device: torch.device) -> torch.dtype:
    """The default compute dtype for inference: bfloat16 on GPUs (tensor cores), float32 on CPUs."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device) -> float:
    """Milliseconds of one call of ``fn``: CUDA events on a GPU (waiting for the work), else wall time."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    start_s = time.perf_counter()
    fn()
    return (time.perf_counter() - start_s) * 1e3


def median_ms(fn: Callable[[], Any], device: torch.device, repeats: int = 5, warmup: int = 1) -> float:
    """The median of ``repeats`` timed calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = sorted(time_call(fn, device) for _ in range(repeats))
    return times[len(times) // 2]


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
    name such as "Intel(R) Xeon(R) Processor") and the widest vector extensions."""
    info = _cpu_info()
    if not info:
        return platform.processor() or platform.machine()
    flags = set(info.get("flags", "").split())
    isa = [name for name, flag in (("AVX-512", "avx512f"), ("AVX512-BF16", "avx512_bf16"), ("AMX", "amx_bf16"))
           if flag in flags] or (["AVX2"] if "avx2" in flags else [])
    name = info.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in info and "model" in info:
        name += f" (family {info['cpu family']} model {info['model']}{', ' + ', '.join(isa) if isa else ''})"
    return name
