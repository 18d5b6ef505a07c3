"""What a benchmark run measures: :class:`BenchConfig`, and the defaults that depend on the device.

A config may leave the batch sizes, the modes and the dtype open (None); :meth:`BenchConfig.resolved`
fills them in for the device (batch 8 on a CPU, 256 on a GPU; float32 on a CPU, bfloat16 on a GPU) and
checks everything, so that the command line and library callers get the same defaults.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..errors import ConfigError, DeviceError
from ..runtime import inference_dtype, resolve_device

DEFAULT_MODES: dict[str, tuple[str, ...]] = {
    "cpu": ("eager", "fast", "timm", "ort-timm", "ov-timm"),
    "cuda": ("eager", "compiled", "fast", "fast-compiled", "fast-graphs", "timm", "timm-compiled"),
}
DEFAULT_BATCH = {"cpu": 8, "cuda": 256}
# A training step holds activations for the backward pass: half the inference batch fits an 80 GB GPU.
DEFAULT_TRAIN_BATCH = {"cuda": 128}


def parse_device(text: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto``, present on this machine; else a :class:`DeviceError`."""
    device = resolve_device(text)
    if device.type not in DEFAULT_BATCH:
        raise DeviceError(f"the benchmark runs on cpu, cuda or cuda:N, got {text!r}")
    return device


@dataclass
class BenchConfig:
    """What to measure. ``modes`` are names of the contender table's entries (checked against it when the run
    starts: :func:`~xception.bench.contenders.specs_for`); every None is a device default."""

    model: str = "legacy_xception"
    device: str = "cpu"
    batch_size: int | None = None  # None: 8 on CPU, 256 on CUDA
    train_batch_size: int | None = None  # None: 128 on CUDA, else the inference batch
    input_size: int = 299
    modes: Sequence[str] | None = None  # None: DEFAULT_MODES of the device
    repeats: int = 10
    warmup: int = 2
    dtype: str | None = None  # None: float32 on CPU, bfloat16 on CUDA
    threads: int | None = None
    keep_memory: bool = True
    measure_memory: bool = True
    check_outputs: bool = True
    model_options: dict[str, Any] = field(default_factory=dict)
    calibration_images: int = 16  # the int8 contenders' calibration images (the same for all of them)
    weight_bits: int | str = "auto"  # the int8 contenders' weights: 8, 7 or auto (xception.quantize(weight_bits=...))
    activation_bits: int | str = "auto"  # fast-int8's: 8, 7 or auto (the ONNX contenders' stay 8: ONNX has no 7)

    def resolved(self) -> BenchConfig:
        """A checked copy with every default filled in for the device: what a run actually uses."""
        device = parse_device(self.device)
        batch = self.batch_size if self.batch_size is not None else DEFAULT_BATCH[device.type]
        train_batch = self.train_batch_size if self.train_batch_size is not None \
            else DEFAULT_TRAIN_BATCH.get(device.type, batch)
        if batch < 1 or train_batch < 1:
            raise ConfigError(f"batch sizes must be ≥ 1, got {batch} and {train_batch}")
        if self.repeats < 1 or self.warmup < 0:
            raise ConfigError(f"need repeats ≥ 1 and warmup ≥ 0, got {self.repeats} and {self.warmup}")
        if self.input_size < 1:
            raise ConfigError(f"input_size must be ≥ 1, got {self.input_size}")
        from ..quantize import resolve_bits

        weight_bits, activation_bits = resolve_bits(self.weight_bits, self.activation_bits)
        if self.calibration_images < 1:
            raise ConfigError(f"calibration_images must be ≥ 1, got {self.calibration_images}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be ≥ 1, got {self.threads}")
        return replace(self, device=str(device), batch_size=batch, train_batch_size=train_batch,
                       weight_bits=weight_bits, activation_bits=activation_bits,
                       modes=self.resolved_modes(), dtype=str(self.resolved_dtype()).removeprefix("torch."))

    def validate(self) -> BenchConfig:
        """``self``, after checking that it resolves (a :class:`ConfigError` or :class:`DeviceError` if not)."""
        self.resolved()
        return self

    def resolved_modes(self) -> tuple[str, ...]:
        return tuple(self.modes) if self.modes else DEFAULT_MODES[parse_device(self.device).type]

    def resolved_dtype(self) -> torch.dtype:
        if self.dtype is None:
            return inference_dtype(parse_device(self.device))
        dtype = getattr(torch, self.dtype, None)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ConfigError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        return dtype

    @property
    def same_network_as_timm(self) -> bool:
        return self.model == "legacy_xception" and not self.model_options
