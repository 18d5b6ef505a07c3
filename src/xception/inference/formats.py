"""What a model file is, from its content: the one place formats are told apart.

:func:`sniff` reads a file's first bytes (and, for a zip archive, the names of its members) and never its
name: an ONNX export renamed ``model.bin`` is still an ONNX export. Weights go on to
:func:`xception.weights.load.detect_format`, which tells the weights containers apart; exported models
(ONNX protobufs, ``torch.export`` archives, ExecuTorch and LiteRT flatbuffers) are recognised here, before it.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Literal

from ..errors import WeightsError
from ..weights.load import SUPPORTED, detect_format
from ..weights.native import is_int8_file

Kind = Literal["onnx", "pt2", "int8", "pte", "tflite", "hdf5", "keras", "torch", "safetensors", "reference"]
# "reference": not a local file (a tag, a URL, a folder); the weights layer resolves it.

# Files that run only as they are (not weights a model is built from).
EXPORTS: dict[str, str] = {"onnx": "an ONNX export", "pt2": "a torch.export program",
                           "int8": "an int8 model of 'xception quantize'", "pte": "an ExecuTorch program",
                           "tflite": "a LiteRT (TFLite) model"}
WEIGHTS: tuple[str, ...] = ("hdf5", "keras", "torch", "safetensors", "reference")

ZIP_MAGIC = b"PK\x03\x04"
# ModelProto's first field is ir_version (field 1, a varint: tag 0x08); the next is one of its other fields.
_ONNX_NEXT_TAGS = frozenset({0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72, 0xA2, 0xCA, 0xD2})
# Members only a torch.export archive has (torch.save writes <name>/data.pkl, <name>/data/0, …).
_PROGRAM_MEMBERS = ("/archive_format", "/models/model.json", "serialized_exported_program.json")
_PROGRAM_FIRST = (b"/data/weights/", b"/data/constants/", b"/models/", b"/extra/", b"/archive_format",
                  b"serialized_")


def _varint(data: bytes, start: int) -> tuple[int, int] | None:
    """The varint at ``start`` and the offset after it; None if it runs off the data."""
    value = shift = 0
    for i in range(start, min(len(data), start + 10)):
        value |= (data[i] & 0x7F) << shift
        if not data[i] & 0x80:
            return value, i + 1
        shift += 7
    return None


def looks_like_onnx(head: bytes) -> bool:
    """An ONNX ``ModelProto``: an ir_version of 1 to 64, then the tag of another ModelProto field."""
    if not head.startswith(b"\x08"):
        return False
    parsed = _varint(head, 1)
    return parsed is not None and 1 <= parsed[0] <= 64 and parsed[1] < len(head) \
        and head[parsed[1]] in _ONNX_NEXT_TAGS


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    return len(head) > 8 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size


def is_program_archive(path: str | os.PathLike[str], head: bytes) -> bool:
    """A ``torch.export.save`` archive rather than a ``torch.save`` one (or a Keras ``.keras``).

    The first member's name, in the first bytes, says so even for a truncated archive; otherwise the
    archive's directory is read."""
    first = head[30:30 + int.from_bytes(head[26:28], "little")]
    if any(marker in first for marker in _PROGRAM_FIRST):
        return True
    if first.endswith(b"/data.pkl") or b"/" not in first:
        return False  # torch.save's pickle, or a Keras archive's metadata.json
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith(_PROGRAM_MEMBERS) for name in archive.namelist())
    except (zipfile.BadZipFile, OSError, EOFError):
        return False


def edge_kind(head: bytes) -> Kind | None:
    """A flatbuffer of an edge runtime, by its file identifier at bytes 4-8: ``"tflite"`` (``TFL3``) or
    ``"pte"`` (an ExecuTorch program: ``ET`` and the schema version, ``ET12``)."""
    if head[4:8] == b"TFL3":
        return "tflite"
    if head[4:6] == b"ET" and head[6:8].isdigit():
        return "pte"
    return None


def sniff(source: str | os.PathLike[str]) -> Kind:
    """The kind of model ``source`` is, from its content: ``"onnx"``, ``"pt2"`` (a torch.export program),
    ``"pte"`` (an ExecuTorch program), ``"tflite"`` (a LiteRT model),
    a weights container (``"hdf5"``, ``"keras"``, ``"torch"``, ``"safetensors"``), or ``"reference"`` for
    what is not a local file (a tag, a URL, a folder: the weights layer resolves those). A file of none of
    these kinds is a :class:`~xception.errors.WeightsError` in one line."""
    path = Path(os.fspath(source))
    if not path.is_file():
        return "reference"
    with open(path, "rb") as f:
        head = f.read(128)
    if not head:
        raise WeightsError(f"{path} is empty; download or export it again")
    if head.startswith(ZIP_MAGIC) and is_program_archive(path, head):
        return "pt2"
    if (edge := edge_kind(head)) is not None:
        return edge
    is_safetensors = _looks_like_safetensors(head, path.stat().st_size)
    if looks_like_onnx(head) and not is_safetensors:
        return "onnx"
    if is_safetensors and is_int8_file(path):
        return "int8"
    try:
        return detect_format(path)
    except WeightsError:
        raise WeightsError(f"{path} is not a model this library reads (it starts with {head[:8]!r}): it reads "
                           f"weights ({SUPPORTED}) and what 'xception export' writes: ONNX and torch.export (.pt2), "
                           "ExecuTorch (.pte) and LiteRT (.tflite) files") from None


def describe_kind(kind: str) -> str:
    """``an ONNX export``, ``a torch.export program``, or ``weights``: for messages."""
    return EXPORTS.get(kind, "weights")
