"""Damaged files end in the library's own error, or for images in a counted skip: never a crash, a hang or
another exception type.

Real, small files of every kind the library reads (Keras HDF5, our safetensors, a timm state dict saved by
torch.save, PNG, JPEG) are mutated by Hypothesis: truncated, bytes flipped, chunks of the file spliced
over other parts, bytes inserted or zeroed. Mutations are drawn anywhere, and more often where a format
keeps its structure (headers, HDF5 metadata, the pickle and the zip directory), since that is where a
reader can go wrong. Examples are derandomised, so the default suite is reproducible and bounded
(``XCEPTION_FUZZ_EXAMPLES`` scales the number of examples per format, e.g. 2000 for a long hunt).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

import xception
from xception.data import UnreadableImage, eval_transform, load_image
from xception.errors import WeightsError, XceptionError
from xception.preprocessing import Preprocessing
from xception.weights import load_pretrained
from xception.weights.keras import layer_table
from xception.weights.timm import legacy_table

EXAMPLES = int(os.environ.get("XCEPTION_FUZZ_EXAMPLES", "0"))
SECONDS_PER_EXAMPLE = 10  # a hang, not a slow machine: a good load of these files takes well under 1 s
OPTIONS = {"width": 0.0625}  # every flow at full depth (the Keras and timm names need it), few channels


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=EXAMPLES or examples, deadline=None, derandomize=not EXAMPLES, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    )


class Hang(BaseException):  # a BaseException: no `except Exception` in the library can hide it
    """An example ran longer than SECONDS_PER_EXAMPLE."""


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    def expire(signum: int, frame: object) -> None:
        raise Hang(f"no answer after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# -- mutations ---------------------------------------------------------------------------------------------

MUTATIONS = ("truncate", "flip", "splice", "insert", "zero")


def mutate(draw: st.DataObject, blob: bytes, hot: list[tuple[int, int]]) -> bytes:
    """One to three mutations of ``blob``; positions fall anywhere or, as often, inside ``hot`` regions."""

    def position() -> int:
        regions = [(a, min(b, len(blob))) for a, b in hot if a < min(b, len(blob))] or [(0, len(blob))]
        if draw.draw(st.booleans()):
            return draw.draw(st.integers(0, len(blob) - 1))
        a, b = draw.draw(st.sampled_from(regions))
        return draw.draw(st.integers(a, b - 1))

    for op in draw.draw(st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=3)):
        if not blob:
            break
        at = position()
        if op == "truncate":
            blob = blob[:at]
        elif op == "flip":
            blob = blob[:at] + bytes([blob[at] ^ draw.draw(st.integers(1, 255))]) + blob[at + 1 :]
        elif op == "splice":  # a chunk of the file itself, written over another place: plausible-looking junk
            source, n = position(), draw.draw(st.integers(1, 256))
            blob = blob[:at] + blob[source : source + n] + blob[at + n :]
        elif op == "insert":
            blob = blob[:at] + draw.draw(st.binary(min_size=1, max_size=16)) + blob[at:]
        else:
            n = draw.draw(st.integers(1, 256))
            blob = blob[:at] + bytes(min(n, len(blob) - at)) + blob[at + n :]
    return blob


# -- the files ---------------------------------------------------------------------------------------------

def _keras_layers(state: dict[str, torch.Tensor], module: str) -> dict[str, torch.Tensor]:
    """One of our modules' tensors as the Keras layer stores them (names and kernel layouts)."""
    if f"{module}.running_var" in state:
        return {"gamma": state[f"{module}.weight"], "beta": state[f"{module}.bias"],
                "moving_mean": state[f"{module}.running_mean"], "moving_variance": state[f"{module}.running_var"]}
    if f"{module}.depthwise.weight" in state:
        return {"depthwise_kernel": state[f"{module}.depthwise.weight"].permute(2, 3, 0, 1),
                "pointwise_kernel": state[f"{module}.pointwise.weight"].permute(2, 3, 1, 0)}
    weight = state[f"{module}.weight"]
    if weight.ndim == 2:
        return {"kernel": weight.T, "bias": state[f"{module}.bias"]}
    return {"kernel": weight.permute(2, 3, 1, 0)}


def write_keras_h5(path: Path, model: xception.Xception) -> list[tuple[int, int]]:
    """``model`` in the legacy Keras HDF5 layout of the official files (``layer_names``, ``weight_names``,
    Keras-2 names for the unnamed shortcut layers); returns the byte ranges holding HDF5 metadata."""
    table, shortcuts = layer_table()
    layers = [*table.items(), *((f"conv2d_{i}", conv) for i, (conv, _) in enumerate(shortcuts, 1)),
              *((f"batch_normalization_{i}", bn) for i, (_, bn) in enumerate(shortcuts, 1))]
    state = model.state_dict()
    data: list[tuple[int, int]] = []
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([name.encode() for name, _ in layers])
        for name, module in layers:
            group = f.create_group(name)
            weights = _keras_layers(state, module)
            group.attrs["weight_names"] = np.array([f"{name}/{w}:0".encode() for w in weights], dtype="S")
            for w, value in weights.items():
                group.create_dataset(f"{name}/{w}:0", data=value.numpy())
        f.flush()
        f.visititems(lambda _, obj: data.append((obj.id.get_offset(), obj.id.get_storage_size()))
                     if isinstance(obj, h5py.Dataset) else None)
    # Metadata is what lies between the tensors' bytes.
    hot, end = [], 0
    for offset, size in sorted(data):
        if offset > end:
            hot.append((end, offset))
        end = max(end, offset + size)
    return [*hot, (end, path.stat().st_size)]


def write_timm_pth(path: Path) -> list[tuple[int, int]]:
    """A legacy_xception state dict in timm's names, saved by torch.save; returns the zip's structure and
    its pickle as byte ranges."""
    model = xception.create_model("legacy_xception", num_classes=3, **OPTIONS)
    ours = {module: theirs for theirs, module in legacy_table().items()}
    state = {}
    for key, value in model.state_dict().items():
        module, _, param = key.rpartition(".")
        state[f"{ours[module]}.{param}"] = value
    torch.save(state, path)
    hot = [(0, 64)]
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            header = info.header_offset
            hot.append((header, header + 30 + len(info.filename) + len(info.extra)))
            if info.filename.endswith(".pkl"):
                hot.append((header, header + 30 + len(info.filename) + len(info.extra) + info.compress_size))
    size = path.stat().st_size
    return [*hot, (max(0, size - 1024 - 22 * len(hot)), size)]  # the central directory at the end


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory) -> dict[str, tuple[bytes, list[tuple[int, int]]]]:
    """Each format's bytes, and where its structure lies; each loads cleanly before it is mutated."""
    folder = tmp_path_factory.mktemp("fuzz-weights")
    torch.manual_seed(0)
    model = xception.create_model("xception", num_classes=3, **OPTIONS)
    files = {"h5": (folder / "keras.h5", write_keras_h5(folder / "keras.h5", model))}
    xception.save_weights(model, folder / "ours.safetensors")
    header = 8 + int.from_bytes((folder / "ours.safetensors").read_bytes()[:8], "little")
    files["safetensors"] = (folder / "ours.safetensors", [(0, header)])
    files["pth"] = (folder / "timm.pth", write_timm_pth(folder / "timm.pth"))
    for path, _ in files.values():
        load_pretrained(path, **OPTIONS)
    return {kind: (path.read_bytes(), hot) for kind, (path, hot) in files.items()}


def check_weights(blob: bytes, path: Path) -> None:
    path.write_bytes(blob)
    with time_limit(SECONDS_PER_EXAMPLE), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a mutated head may only be replaced, with a warning
        with contextlib.suppress(XceptionError):
            load_pretrained(path, **OPTIONS)


@pytest.mark.parametrize("kind", ["h5", "safetensors", "pth"])
def test_damaged_weight_files_raise_the_librarys_own_error(kind, weight_files, tmp_path):
    original, hot = weight_files[kind]

    @fuzz_settings(120)
    @given(st.data())
    def run(draw: st.DataObject) -> None:
        check_weights(mutate(draw, original, hot), tmp_path / f"mutated.{kind}")

    run()


# -- images ------------------------------------------------------------------------------------------------

PRE = Preprocessing(input_size=32, crop_pct=1.0, interpolation="bilinear")


def image_bytes(fmt: str) -> bytes:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    if fmt == "png":
        Image.fromarray(pixels).save(buffer, "PNG")
    else:  # with EXIF (an orientation tag), which decoding reads and applies
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.fromarray(pixels).save(buffer, "JPEG", quality=80, exif=exif)
    return buffer.getvalue()


def fix_png_crcs(blob: bytes) -> bytes:
    """Recompute every chunk's CRC, so that a mutation reaches the decoder instead of the checksum test."""
    out, at = bytearray(blob[:8]), 8
    while at + 12 <= len(blob):
        length = int.from_bytes(blob[at : at + 4], "big")
        end = at + 8 + length
        if end + 4 > len(blob):
            break
        out += blob[at:end] + zlib.crc32(blob[at + 4 : end]).to_bytes(4, "big")
        at = end + 4
    return bytes(out + blob[at:])


def check_image(blob: bytes, path: Path) -> None:
    """Decoding ends in an image the transforms take, or in UnreadableImage (which datasets count)."""
    path.write_bytes(blob)
    with time_limit(SECONDS_PER_EXAMPLE):
        try:
            image = load_image(path)
        except UnreadableImage:
            return
        assert eval_transform(PRE)(image).shape == (3, 32, 32)


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_damaged_images_are_skipped_with_a_reason(fmt, tmp_path):
    original = image_bytes(fmt)
    hot = [(0, min(len(original), 700))]  # signature, IHDR / SOI, APP1 (EXIF), quantisation tables

    @fuzz_settings(300)
    @given(st.data())
    def run(draw: st.DataObject) -> None:
        blob = mutate(draw, original, hot)
        if fmt == "png" and draw.draw(st.booleans()):
            blob = fix_png_crcs(blob)
        check_image(blob, tmp_path / f"mutated.{'png' if fmt == 'png' else 'jpg'}")

    run()


# -- what the fuzzer found, one regression test each -------------------------------------------------------

def test_a_pickle_with_bytes_that_are_not_utf8_is_a_weights_error(tmp_path):
    """torch's weights-only unpickler raised UnicodeDecodeError on a damaged name in the pickle."""
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buffer)
    source = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    with zipfile.ZipFile(tmp_path / "damaged.pth", "w", zipfile.ZIP_STORED) as archive:
        for info in source.infolist():
            data = source.read(info)
            archive.writestr(info.filename, data.replace(b"torch._utils", b"torch\xd8utils"))
    with pytest.raises(WeightsError, match="not a readable PyTorch checkpoint") as err:
        load_pretrained(tmp_path / "damaged.pth")
    assert isinstance(err.value.__cause__, UnicodeDecodeError)


def test_keras_layer_names_that_are_not_utf8_are_a_weights_error(tmp_path):
    """Decoding a damaged ``layer_names`` attribute raised UnicodeDecodeError."""
    with h5py.File(tmp_path / "damaged.h5", "w") as f:
        f.attrs["layer_names"] = np.array([b"block1_conv1", b"block\xd8"])
    with pytest.raises(WeightsError, match="damaged or truncated HDF5 file"):
        load_pretrained(tmp_path / "damaged.h5")


def test_an_hdf5_attribute_with_a_damaged_dataspace_is_a_weights_error(tmp_path):
    """h5py raised RuntimeError for an attribute whose dataspace claims more entries than its maximum."""
    path = tmp_path / "damaged.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([b"block1_conv1"])
        f.create_group("block1_conv1").attrs["weight_names"] = np.array([b"a", b"b", b"c", b"d"], dtype="S")
    blob = path.read_bytes()
    dims = blob.index((4).to_bytes(8, "little") * 2, blob.index(b"weight_names"))  # size 4, maximum 4
    path.write_bytes(blob[: dims + 8] + bytes(8) + blob[dims + 16 :])  # maximum 0
    with pytest.raises(WeightsError, match="damaged or truncated HDF5 file"):
        load_pretrained(path)


@pytest.mark.parametrize(("field", "value"), [
    ("model", None), ("model", 5), ("config", [1, 2]), ("class_names", "abc"), ("class_names", [1, 2, 3]),
    ("metrics", [1]), ("preprocessing", [1]), ("preprocessing", {"input_size": "large"}), (None, [1, 2]),
])
def test_our_metadata_with_a_field_of_the_wrong_kind_is_a_weights_error(field, value, tmp_path):
    """Metadata that is valid JSON but not what we write raised KeyError, TypeError or AttributeError, or
    passed (a string of three letters as three class names)."""
    model = xception.create_model("xception", num_classes=3, **OPTIONS)
    xception.save_weights(model, tmp_path / "ours.safetensors")
    meta = json.loads(read_safetensors_metadata(tmp_path / "ours.safetensors")["xception"])
    damaged = value if field is None else {k: v for k, v in meta.items() if k != field or value is not None}
    if field is not None and value is not None:
        damaged[field] = value
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(tmp_path / "damaged.safetensors"), metadata={"xception": json.dumps(damaged)})
    with pytest.raises(WeightsError, match="damaged xception metadata"):
        load_pretrained(tmp_path / "damaged.safetensors")


def read_safetensors_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), "pt") as f:
        return f.metadata()
