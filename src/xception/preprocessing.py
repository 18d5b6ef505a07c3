"""What a set of weights expects of its input images: size, resize/crop rule, interpolation, scaling.

A plain description (no torchvision here): the data package turns it into transforms, the weights
package stores it next to the tensors, so a user never has to guess the mean/std or the crop.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from .errors import ConfigError

Interpolation = Literal["nearest", "bilinear", "bicubic"]
ResizeMode = Literal["crop", "squash"]


@dataclass(frozen=True)
class Preprocessing:
    """How to turn an image into the network's input tensor.

    Attributes:
        input_size: side of the square input, in pixels.
        crop_pct: ``"crop"`` mode resizes the shorter side to ``input_size / crop_pct``, then takes the
            central ``input_size`` square (1.0: resize the shorter side to the input size and crop).
        resize_mode: ``"crop"`` as above, or ``"squash"`` to resize straight to input_size×input_size.
        interpolation: resampling filter for the resize.
        mean, std: per-channel normalisation of [0, 1] pixels: ``(x - mean) / std``. Keras's Xception
            scaling ``x / 127.5 - 1`` is mean 0.5, std 0.5.
        channels: 3 for RGB, 1 for grayscale.
    """

    input_size: int = 299
    crop_pct: float = 0.875
    resize_mode: ResizeMode = "crop"
    interpolation: Interpolation = "bicubic"
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    channels: int = 3

    def __post_init__(self) -> None:
        if self.input_size < 1:
            raise ConfigError(f"input_size must be ≥ 1, got {self.input_size}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ConfigError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if self.resize_mode not in ("crop", "squash"):
            raise ConfigError(f"resize_mode must be 'crop' or 'squash', got {self.resize_mode!r}")
        if self.interpolation not in ("nearest", "bilinear", "bicubic"):
            raise ConfigError(f"interpolation must be nearest, bilinear or bicubic, got {self.interpolation!r}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ConfigError(f"mean and std need {self.channels} values each")
        if any(s <= 0 for s in self.std):
            raise ConfigError("std values must be > 0")

    @classmethod
    def centred(cls, channels: int = 3, input_size: int = 299) -> Preprocessing:
        """Keras's Xception scaling (``x / 127.5 − 1``, pixels to [-1, 1]) for any number of channels."""
        return cls(input_size=input_size, mean=(0.5,) * channels, std=(0.5,) * channels, channels=channels)

    @property
    def resize_size(self) -> int:
        """Shorter side after the resize, before the centre crop."""
        return self.input_size if self.resize_mode == "squash" else round(self.input_size / self.crop_pct)

    def replace(self, **changes: Any) -> Preprocessing:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"unknown preprocessing fields {sorted(unknown)}; known: {sorted(names)}")
        data = dict(data)
        for key in ("mean", "std"):
            if key in data:
                data[key] = tuple(float(v) for v in data[key])
        return cls(**data)


# Keras's Xception: x / 127.5 - 1 at 299 px.
KERAS = Preprocessing(input_size=299, crop_pct=0.875, interpolation="bicubic")
# timm's legacy_xception (Cadene's port of the Keras weights) evaluates with this crop.
TIMM_LEGACY = Preprocessing(input_size=299, crop_pct=0.8975, interpolation="bicubic")
