"""Reading image files: every PIL mode becomes RGB or grayscale; every kind of bad file says why."""

import numpy as np
import pytest
from PIL import Image

from data_factory import bomb_png
from xception.data import images as img
from xception.data.images import UnreadableImage, load_image


def test_grayscale_becomes_rgb_with_equal_channels(tmp_path):
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8), mode=None).save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png", channels=3)
    a = np.asarray(out)
    assert out.mode == "RGB" and a.shape == (8, 8, 3)
    assert (a[..., 0] == np.arange(64).reshape(8, 8)).all() and (a[..., 0] == a[..., 2]).all()


def test_rgb_becomes_grayscale_for_one_channel_models(tmp_path):
    Image.new("RGB", (5, 4), (255, 0, 0)).save(tmp_path / "red.png")
    out = load_image(tmp_path / "red.png", channels=1)
    assert out.mode == "L" and out.size == (5, 4)
    assert np.asarray(out)[0, 0] == 76  # ITU-R 601 luma of pure red: 0.299 × 255


def test_transparency_is_composited_over_white(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # opaque
    rgba[1, 1] = (10, 20, 30, 0)  # fully transparent: white, not the hidden colour
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    a = np.asarray(load_image(tmp_path / "a.png"))
    assert tuple(a[0, 0]) == (10, 20, 30) and tuple(a[1, 1]) == (255, 255, 255)


def test_palette_with_transparency(tmp_path):
    p = Image.new("P", (3, 1))
    p.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    p.putdata([0, 1, 1])
    p.info["transparency"] = 1
    p.save(tmp_path / "p.png", transparency=1)
    a = np.asarray(load_image(tmp_path / "p.png"))
    assert tuple(a[0, 0]) == (255, 0, 0) and tuple(a[0, 1]) == (255, 255, 255)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100)
    out = load_image(tmp_path / "c.jpg")
    r, g, b = np.asarray(out)[4, 4].astype(int)
    assert out.mode == "RGB" and r > 200 and g < 60 and b < 60  # CMYK (0, 1, 1, 0) is red


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 64, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    a = np.asarray(load_image(tmp_path / "deep.png", channels=1))
    assert a.tolist() == [[0, 64, 255]]


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (6, 2), (0, 0, 0))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    image.save(tmp_path / "phone.jpg", exif=exif)
    assert load_image(tmp_path / "phone.jpg").size == (2, 6)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: p.write_bytes(b""), img.EMPTY),
        (lambda p: p.write_text("<html>a web page saved as .jpg</html>"), img.NOT_AN_IMAGE),
        (lambda p: p.write_bytes(np.random.default_rng(0).bytes(3000)), img.NOT_AN_IMAGE),
        (lambda p: bomb_png(p), img.TOO_LARGE),
        (lambda p: None, img.MISSING),
    ],
    ids=["zero-byte", "html", "random-bytes", "bomb", "missing"],
)
def test_bad_files_raise_with_a_reason(tmp_path, make, reason):
    path = tmp_path / "bad.jpg"
    make(path)
    with pytest.raises(UnreadableImage) as info:
        load_image(path)
    assert info.value.reason == reason and str(path) in str(info.value)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_files_are_detected(tmp_path, suffix):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / f"whole{suffix}")
    data = (tmp_path / f"whole{suffix}").read_bytes()
    (tmp_path / f"cut{suffix}").write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableImage) as info:
        load_image(tmp_path / f"cut{suffix}")
    assert info.value.reason == img.TRUNCATED


def test_pixel_limit_is_configurable(tmp_path):
    Image.new("RGB", (100, 100)).save(tmp_path / "big.png")
    assert load_image(tmp_path / "big.png").size == (100, 100)
    with pytest.raises(UnreadableImage, match="100×100 pixels") as info:
        load_image(tmp_path / "big.png", max_pixels=5000)
    assert info.value.reason == img.TOO_LARGE
