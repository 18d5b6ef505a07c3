"""Transforms from a :class:`~xception.preprocessing.Preprocessing` description.

Two kinds, one meaning:

* per image (PIL → tensor), for image folders decoded in loader workers: torchvision's transforms;
* per batch (uint8 tensor → tensor), for datasets held in memory such as Fashion-MNIST: the random
  resized crop and the flip become one affine resampling of the whole batch, on whichever device the
  batch is — far cheaper than a PIL round trip per 28×28 image.

Training augmentation follows the paper's recipe family (Inception-style random resized crop and
horizontal flip), with random erasing (Zhong et al., AAAI 2020) on top when asked; evaluation resizes the
shorter side to ``input_size / crop_pct`` and takes the centre. An input size above the images' own (28 px
Fashion-MNIST at 32) upsamples them the same way in both.
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
        erase: probability of random erasing: a rectangle of the (cropped, normalised) image replaced by
            standard normal noise, Zhong et al.'s best variant (0: off).
        erase_scale: range of the erased rectangle's area as a fraction of the image (the paper: 0.02–0.4).
        erase_ratio: range of its aspect ratio, height / width, drawn log-uniformly (the paper: 0.3–1/0.3).
    """

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    translate: float = 0.0
    erase: float = 0.0
    erase_scale: tuple[float, float] = (0.02, 0.4)
    erase_ratio: tuple[float, float] = (0.3, 3.3)

    def __post_init__(self) -> None:
        if not 0.0 < self.scale[0] <= self.scale[1] <= 1.0:
            raise ConfigError(f"augmentation scale must satisfy 0 < low ≤ high ≤ 1, got {self.scale}")
        if not 0.0 < self.ratio[0] <= self.ratio[1]:
            raise ConfigError(f"augmentation ratio must satisfy 0 < low ≤ high, got {self.ratio}")
        if not 0.0 <= self.hflip <= 1.0:
            raise ConfigError(f"hflip is a probability, got {self.hflip}")
        if not 0.0 <= self.translate < 1.0:
            raise ConfigError(f"translate must be in [0, 1), got {self.translate}")
        if not 0.0 <= self.erase <= 1.0:
            raise ConfigError(f"erase is a probability, got {self.erase}")
        if not 0.0 < self.erase_scale[0] <= self.erase_scale[1] < 1.0:
            raise ConfigError(f"erase_scale must satisfy 0 < low ≤ high < 1, got {self.erase_scale}")
        if not 0.0 < self.erase_ratio[0] <= self.erase_ratio[1]:
            raise ConfigError(f"erase_ratio must satisfy 0 < low ≤ high, got {self.erase_ratio}")


def random_erase(x: torch.Tensor, aug: Augmentation, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random erasing of a batch (N, C, H, W): with probability ``aug.erase`` per image, one rectangle of
    ``aug.erase_scale`` of the area and aspect ratio (height / width) in ``aug.erase_ratio`` is replaced
    by standard normal noise. Up to 10 shapes are drawn per image and the first that fits inside is
    used (none fits: the image is kept). Every draw comes from ``generator`` and their number does not
    depend on the outcome, so the same generator state gives the same batch."""
    if aug.erase <= 0.0:
        return x
    n, c, h, w = x.shape
    tries = 10

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, dtype=torch.float64) * (high - low) + low

    chosen = torch.rand(n, generator=generator) < aug.erase
    area = uniform(*aug.erase_scale, n, tries) * (h * w)
    ratio = uniform(math.log(aug.erase_ratio[0]), math.log(aug.erase_ratio[1]), n, tries).exp()
    heights, widths = (area * ratio).sqrt().round().long(), (area / ratio).sqrt().round().long()
    fits = (heights >= 1) & (heights < h) & (widths >= 1) & (widths < w)
    first = fits.to(torch.uint8).argmax(1, keepdim=True)  # the first shape that fits (0 when none does)
    eh, ew = heights.gather(1, first).squeeze(1), widths.gather(1, first).squeeze(1)
    chosen &= fits.any(1)
    top = (torch.rand(n, generator=generator, dtype=torch.float64) * (h - eh + 1)).floor().long()
    left = (torch.rand(n, generator=generator, dtype=torch.float64) * (w - ew + 1)).floor().long()
    noise = torch.randn(n, c, h, w, generator=generator)
    rows, cols = torch.arange(h), torch.arange(w)
    inside_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None])
    inside_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])
    mask = inside_rows[:, :, None] & inside_cols[:, None, :] & chosen[:, None, None]
    mask = mask[:, None].to(x.device)
    return torch.where(mask, noise.to(x.device, x.dtype), x)


class _EraseOne:
    """Random erasing of one image tensor (C, H, W) in a per-image pipeline, from the global RNG (which
    the folder dataset seeds per sample)."""

    def __init__(self, aug: Augmentation) -> None:
        self.aug = aug

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return random_erase(image[None], self.aug)[0]


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
    """PIL image → augmented, normalised tensor: random resized crop, horizontal flip, random erasing."""
    steps: list[Any] = []
    if aug.translate:
        steps.append(v2.Pad(round(aug.translate * pre.input_size)))
    steps += [
        v2.RandomResizedCrop(pre.input_size, scale=aug.scale, ratio=aug.ratio,
                             interpolation=_INTERPOLATION[pre.interpolation], antialias=True),
        v2.RandomHorizontalFlip(aug.hflip),
    ]
    erase = [_EraseOne(aug)] if aug.erase > 0 else []
    return v2.Compose([*steps, *_normalize(pre), *erase])


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
        x = (x - mean) / std
        # Erasing comes last, in normalised units, as in the per-image pipeline.
        return random_erase(x, self.aug, generator) if self.aug is not None else x

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
        # Within the image's extent, sample as a resize does (the outer half pixel repeats the edge pixel)
        # rather than blending with the black beyond: an input larger than the images (28 px Fashion-MNIST
        # at 32) is then upsampled exactly as evaluation upsamples it. Past the extent (translate), black.
        limits = torch.tensor([1 - 1 / x.shape[-1], 1 - 1 / x.shape[-2]], device=grid.device)
        grid = torch.where(grid.abs() <= 1, torch.minimum(torch.maximum(grid, -limits), limits), grid)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
