"""Transforms from a :class:`~xception.preprocessing.Preprocessing` description.

Two kinds, one meaning:

* per image (PIL → tensor), for image folders decoded in loader workers: torchvision's transforms;
* per batch (uint8 tensor → tensor), for datasets held in memory such as Fashion-MNIST: the random
  resized crop and the flip become one affine resampling of the whole batch, on whichever device the
  batch is — far cheaper than a PIL round trip per 28×28 image.

Training augmentation follows the paper's recipe family (Inception-style random resized crop and
horizontal flip); evaluation resizes the shorter side to ``input_size / crop_pct`` and takes the centre.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode, v2

from ..errors import ConfigError, DataError
from ..preprocessing import Preprocessing

_INTERPOLATION = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
}


@dataclass(frozen=True)
class Augmentation:
    """Random training augmentation.

    Attributes:
        scale: range of the crop's area as a fraction of the image (Inception: 0.08–1).
        ratio: range of the crop's aspect ratio.
        hflip: probability of a horizontal flip.
        translate: how far (fraction of the side) a crop may reach beyond the border, filled with black;
            0 keeps crops inside the image. Small images (Fashion-MNIST) like a little of it.
    """

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    translate: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < self.scale[0] <= self.scale[1] <= 1.0:
            raise ConfigError(f"augmentation scale must satisfy 0 < low ≤ high ≤ 1, got {self.scale}")
        if not 0.0 < self.ratio[0] <= self.ratio[1]:
            raise ConfigError(f"augmentation ratio must satisfy 0 < low ≤ high, got {self.ratio}")
        if not 0.0 <= self.hflip <= 1.0:
            raise ConfigError(f"hflip is a probability, got {self.hflip}")
        if not 0.0 <= self.translate < 1.0:
            raise ConfigError(f"translate must be in [0, 1), got {self.translate}")


def _normalize(pre: Preprocessing) -> list[Any]:
    return [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(pre.mean, pre.std)]


def eval_transform(pre: Preprocessing) -> Callable[[Any], torch.Tensor]:
    """PIL image → normalised tensor: resize (shorter side to ``pre.resize_size``), centre crop."""
    interpolation = _INTERPOLATION[pre.interpolation]
    if pre.resize_mode == "squash":
        resize = [v2.Resize((pre.input_size, pre.input_size), interpolation=interpolation, antialias=True)]
    else:
        resize = [v2.Resize(pre.resize_size, interpolation=interpolation, antialias=True),
                  v2.CenterCrop(pre.input_size)]
    return v2.Compose([*resize, *_normalize(pre)])


def train_transform(pre: Preprocessing, aug: Augmentation) -> Callable[[Any], torch.Tensor]:
    """PIL image → augmented, normalised tensor: random resized crop, horizontal flip."""
    steps: list[Any] = []
    if aug.translate:
        steps.append(v2.Pad(round(aug.translate * pre.input_size)))
    steps += [
        v2.RandomResizedCrop(pre.input_size, scale=aug.scale, ratio=aug.ratio,
                             interpolation=_INTERPOLATION[pre.interpolation], antialias=True),
        v2.RandomHorizontalFlip(aug.hflip),
    ]
    return v2.Compose([*steps, *_normalize(pre)])


class BatchTransform:
    """uint8 batch (N, C, H, W) → normalised float batch, augmented (training) or resized (evaluation).

    Augmentation draws from the ``generator`` passed in, so a batch's augmentation is reproducible from
    a seed (exact resume) whatever happened before.
    """

    def __init__(self, pre: Preprocessing, aug: Augmentation | None = None) -> None:
        self.pre, self.aug = pre, aug

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if images.dim() != 4:
            raise DataError(f"expected a batch shaped (N, C, H, W), got {tuple(images.shape)}")
        channels = self.pre.channels
        if images.shape[1] not in (1, channels):
            raise DataError(f"images have {images.shape[1]} channels but the preprocessing expects {channels}")
        x = images.float().div_(255.0)
        x = self._augment(x, generator) if self.aug is not None else self._resize_crop(x)
        if x.shape[1] != channels:
            x = x.expand(-1, channels, -1, -1)  # grayscale images for an RGB model
        mean = torch.tensor(self.pre.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.pre.std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def _resize_crop(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.pre
        h, w = x.shape[-2:]
        if pre.resize_mode == "squash":
            size = (pre.input_size, pre.input_size)
        else:
            short = pre.resize_size
            size = (short, max(short, round(w * short / h))) if h <= w else (max(short, round(h * short / w)), short)
        if (h, w) != size:
            smooth = pre.interpolation != "nearest"
            x = F.interpolate(x, size=size, mode=pre.interpolation, antialias=smooth,
                              **({"align_corners": False} if smooth else {})).clamp(0.0, 1.0)
        top, left = (size[0] - pre.input_size) // 2, (size[1] - pre.input_size) // 2
        return x[..., top : top + pre.input_size, left : left + pre.input_size]

    def _augment(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Random resized crop + flip of each image as one affine resampling (normalised coordinates)."""
        aug, n = self.aug, x.shape[0]
        assert aug is not None

        def uniform(low: float, high: float) -> torch.Tensor:
            return torch.rand(n, generator=generator) * (high - low) + low

        area = uniform(*aug.scale)
        log_ratio = uniform(math.log(aug.ratio[0]), math.log(aug.ratio[1]))
        # Crop width and height as fractions of the image side (crops never exceed the image).
        cw = torch.sqrt(area * log_ratio.exp()).clamp(max=1.0)
        ch = torch.sqrt(area / log_ratio.exp()).clamp(max=1.0)
        # Centre offsets in [-1, 1] coordinates: inside the image, plus `translate` beyond the border.
        reach_x = 1.0 - cw + 2 * aug.translate
        reach_y = 1.0 - ch + 2 * aug.translate
        cx = (torch.rand(n, generator=generator) * 2 - 1) * reach_x
        cy = (torch.rand(n, generator=generator) * 2 - 1) * reach_y
        flip = torch.where(torch.rand(n, generator=generator) < aug.hflip, -1.0, 1.0)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2] = cw * flip, cx
        theta[:, 1, 1], theta[:, 1, 2] = ch, cy
        theta = theta.to(x.device)
        size = self.pre.input_size
        grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
