"""Reading one image file robustly: every mode PIL knows becomes RGB or grayscale, bad files say why.

Real image folders hold grayscale scans, palette GIFs, RGBA PNGs, CMYK JPEGs, 16-bit TIFFs, empty files,
half-downloaded JPEGs, HTML pages saved as ``.jpg`` and the occasional decompression bomb. Each readable
image is converted to the channels the model wants; each unreadable one raises :class:`UnreadableImage`
with a short reason, so datasets can skip and count it (or fail, in strict mode).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ConfigError, DataError

# Files a folder scan treats as images (lower-case suffixes). Anything else is reported as "not an image".
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jfif"}
)

# PIL's own default (about 89 megapixels): larger images are refused as likely decompression bombs.
MAX_PIXELS = 89_478_485

# Skip reasons, as counted in run summaries.
MISSING = "not found"
EMPTY = "empty file"
NOT_AN_IMAGE = "not an image"
TRUNCATED = "truncated"
CORRUPT = "corrupt"
TOO_LARGE = "decompression bomb"
DUPLICATE = "duplicate"  # a file or folder reached again through a link: used once, not twice
UNREADABLE_FOLDER = "folder not readable"


class UnreadableImage(DataError):
    """An image file that cannot be used; ``reason`` is one of the short labels above."""

    def __init__(self, path: str | os.PathLike[str], reason: str, detail: str = "") -> None:
        self.path, self.reason, self.detail = str(path), reason, detail
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


def is_image_file(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def load_image(path: str | os.PathLike[str], channels: int = 3, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode ``path`` fully and return it as an ``RGB`` (channels=3) or ``L`` (channels=1) image.

    EXIF orientation is applied; transparency is composited over white; 16-bit and float images are
    scaled to 8 bits rather than clipped. Raises :class:`UnreadableImage` for anything unusable.
    """
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {channels}")
    try:
        if os.path.getsize(path) == 0:
            raise UnreadableImage(path, EMPTY)
    except FileNotFoundError as err:
        raise UnreadableImage(path, MISSING) from err
    except OSError as err:
        raise UnreadableImage(path, CORRUPT, err.strerror or str(err)) from err
    return _decode(path, path, channels, max_pixels)


def decode_image(data: bytes, channels: int = 3, *, name: str = "upload", max_pixels: int = MAX_PIXELS) -> Image.Image:
    """:func:`load_image` for bytes in memory (an upload): the same conversions and the same reasons."""
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {channels}")
    if not data:
        raise UnreadableImage(name, EMPTY)
    return _decode(io.BytesIO(data), name, channels, max_pixels)


def _decode(source: str | os.PathLike[str] | io.BytesIO, name: str | os.PathLike[str], channels: int,
            max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # PIL only warns between its limit and twice that; treat the warning as the error it is.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Damaged EXIF (parsed by PIL's TIFF code) leaves the pixels intact: the image is used as stored,
            # without a warning per epoch.
            warnings.filterwarnings("ignore", category=UserWarning, module="PIL.TiffImagePlugin")
            with Image.open(source) as img:
                if img.width * img.height > max_pixels:
                    raise UnreadableImage(name, TOO_LARGE, f"{img.width}×{img.height} pixels")
                img.load()
                return to_mode(ImageOps.exif_transpose(img), channels)
    except UnreadableImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise UnreadableImage(name, TOO_LARGE, str(err).split(".")[0]) from err
    except UnidentifiedImageError as err:
        raise UnreadableImage(name, NOT_AN_IMAGE, "unknown format") from err
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as err:
        # PIL reports a cut-off file as "image file is truncated" or "broken data stream".
        text = str(err)
        reason = TRUNCATED if "truncated" in text or "broken data stream" in text else CORRUPT
        raise UnreadableImage(name, reason, text) from err


def to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL mode to ``RGB`` or ``L`` without losing the image's meaning."""
    target = "RGB" if channels == 3 else "L"
    if img.mode == target:
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        img = _to_8bit(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert(target)


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit integer images span 0–65535 and float ones 0–1 (or 0–255): scale, don't clip, to 0–255."""
    values = np.asarray(img, dtype=np.float64)
    scale = 255.0 / 65535.0
    if img.mode == "F":
        scale = 255.0 if values.max(initial=0.0) <= 1.0 else 1.0
    return Image.fromarray(np.clip(values * scale + 0.5, 0, 255).astype(np.uint8))
