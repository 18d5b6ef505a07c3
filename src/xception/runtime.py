"""Where computation runs: device names resolved in one place, the defaults that depend on the device,
and one clock for timing calls on it (CUDA events on a GPU, ``perf_counter`` on a CPU)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from .errors import DeviceError
from .hardware import cpu_flags as cpu_flags  # re-exported: what runs on a device is reported with its CPU
from .hardware import cpu_name as cpu_name


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
