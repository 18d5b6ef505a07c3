"""The int8 file: safetensors holding the integer network, with what it means in the header.

A sibling of the float format (:mod:`xception.weights.native`), told apart by content: its header's
``__metadata__`` has the key ``xception_int8`` (never ``xception``, so the float loader does not take it for
float weights). The value is JSON: ``format`` (``"xception-int8"``), ``format_version``, the model's name
and full config (which rebuilds the network's steps), class names, preprocessing, the scheme in words, the
calibration (method, images) and the measured agreement with float32.

Tensors, per conv, under the float model's layer name (``entry_flow.block2.main.sepconv1.depthwise.…``):

* ``weight`` int8 (out, in/groups, kh, kw), ``weight_scale`` float32 (out,), ``bias`` int32 (out,), in the
  accumulator's scale ``input_scale·weight_scale``;
* ``multiplier`` float32 (out,): the requantisation ``M[c]``, stored so every kernel uses the same values;
* ``input_scale`` / ``input_zero_point``, ``output_scale`` / ``output_zero_point`` (float32 / uint8, one each);
* for the conv that adds a residual: ``residual_scale`` / ``residual_zero_point`` and ``residual_multiplier``.

``input.scale`` / ``input.zero_point`` quantise the image; ``head.fc.*`` is the classifier (its ``multiplier``
dequantises the logits, ``pool_scale`` / ``pool_zero_point`` the average-pooled features). Reading a file back
gives the same tensors, so the same outputs bit for bit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..errors import ConfigError, IsAFolderError, MissingPathError, WeightsError
from ..fileio import atomic_write
from ..models import Xception, XceptionConfig
from ..preprocessing import Preprocessing
from ..weights.native import INT8_META_KEY, is_int8_file
from .reference import QuantizedXception, float_program

META_KEY = INT8_META_KEY
FORMAT = "xception-int8"
FORMAT_VERSION = 1
SCHEME: dict[str, str] = {
    "weights": "int8, symmetric per output channel, [-127, 127]: w = weight_scale[c] * q",
    "activations": "uint8, one scale and zero point per tensor: x = scale * (q - zero_point); codes 0-255, or 0-127 "
                   "where the header's activation_bits is 7",
    "accumulator": "int32: acc[c] = bias[c] + sum_k (q_in[k] - input_zero_point) * weight[c, k]; padding is "
                   "input_zero_point (conv) or 0 (max-pool)",
    "requantisation": "v = f32(acc[c]) * multiplier[c] (+ f32(q_res - residual_zero_point) * residual_multiplier), "
                      "each product and sum rounded to float32, no FMA; q = int(clamp(round_half_even(v), lo - z, "
                      "255 - z)) + z with z = output_zero_point, lo = z after a ReLU, else 0",
    "relu_in": "max(q, input_zero_point) before the conv",
    "max_pool": "on codes, same scale and zero point",
    "average_pool": "acc = sum_hw (q - input_zero_point); requantised with multiplier f32(input_scale / (H*W * "
                    "pool_scale)), worked out per input size in float64",
    "logits": "f32(acc[c]) * head.fc.multiplier[c], multiplier = f32(pool_scale * weight_scale[c])",
    "input": "q = saturate(round_half_even(x / input.scale) + input.zero_point), as ONNX QuantizeLinear",
}


def state_tensors(model: QuantizedXception) -> dict[str, torch.Tensor]:
    """Every tensor of the int8 network, under its file name."""
    tensors = {"input.scale": model.input_scale, "input.zero_point": model.input_zero_point}
    for module in [*model.convs(), model.head]:
        tensors.update({f"{module.name}.{key}": t for key, t in module.named_buffers(recurse=False)})
    return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}


def _assign(model: QuantizedXception, tensors: dict[str, torch.Tensor], path: Path) -> None:
    expected = state_tensors(model)
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    wrong = [k for k, t in expected.items()
             if k in tensors and (tensors[k].dtype, tensors[k].shape) != (t.dtype, t.shape)]
    if missing or unexpected or wrong:
        first = (missing or unexpected or wrong)[0]
        raise WeightsError(f"{path} does not fit the network its header describes: {len(missing)} tensors missing, "
                           f"{len(unexpected)} unexpected, {len(wrong)} of another shape or type (first: {first})")
    model.input_scale, model.input_zero_point = tensors["input.scale"], tensors["input.zero_point"]
    for module in [*model.convs(), model.head]:
        for key, _ in list(module.named_buffers(recurse=False)):
            setattr(module, key, tensors[f"{module.name}.{key}"])


def save_quantized(model: QuantizedXception, path: str | os.PathLike[str], *, source: str = "") -> Path:
    """Write ``model`` to ``path`` (``*.safetensors``), atomically."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ConfigError(f"the int8 format is safetensors: name the file *.safetensors, not {path.name!r}")
    header = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "model": model.model_name,
        "config": model.config.to_dict(), "class_names": model.class_names,
        "preprocessing": model.preprocessing.to_dict() if model.preprocessing is not None else None,
        "source": source, "scheme": SCHEME, **model.info, "activation_bits": model.activation_bits,
    }
    tensors = state_tensors(model)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(header)}))
    return path


def read_header(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The int8 header of a safetensors file; None for any other file (not safetensors, or not ours)."""
    try:
        with safe_open(str(path), "pt") as f:
            text = (f.metadata() or {}).get(META_KEY)
    except (SafetensorError, OSError):
        return None
    if text is None:
        return None
    try:
        header = json.loads(text)
    except json.JSONDecodeError as err:
        raise WeightsError(f"{path} carries a damaged int8 header ({err}); quantise the model again") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise WeightsError(f"{path} carries a damaged int8 header (no format {FORMAT!r}); quantise the model again")
    return header


def is_quantized(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is an int8 file of this library (read from its content, not its name)."""
    return Path(path).is_file() and is_int8_file(path)


def load_quantized(path: str | os.PathLike[str]) -> QuantizedXception:
    """The int8 network of an int8 file, with its class names, preprocessing and calibration record."""
    path = Path(path)
    if not path.exists():
        raise MissingPathError(f"{path} does not exist")
    if path.is_dir():
        raise IsAFolderError(f"{path} is a folder; give the int8 file (*.safetensors) that 'xception quantize' wrote")
    header = read_header(path)
    if header is None:
        raise WeightsError(f"{path} is not an int8 model of this library; make one with 'xception quantize'")
    if header.get("format_version") != FORMAT_VERSION:
        raise WeightsError(f"{path} is int8 format version {header.get('format_version')!r}; this library reads "
                           f"version {FORMAT_VERSION}")
    try:
        config = XceptionConfig.from_dict(header["config"])
        pre = header.get("preprocessing")
        preprocessing = Preprocessing.from_dict(pre) if pre else None
        tensors = load_file(str(path))
    except (KeyError, TypeError, ValueError, SafetensorError) as err:
        raise WeightsError(f"{path} is a damaged int8 file ({err}); quantise the model again") from None
    program, names = float_program(Xception(config))  # the network's steps; its float weights are not used
    model = QuantizedXception(program, names)
    _assign(model, tensors, path)
    model.model_name = str(header.get("model") or config.arch)
    model.class_names = list(header["class_names"]) if header.get("class_names") else None
    model.preprocessing = preprocessing
    model.info = {k: header[k] for k in ("calibration", "metrics") if k in header}
    try:
        model.activation_bits = int(header.get("activation_bits", 8))
    except (TypeError, ValueError, ConfigError) as err:
        raise WeightsError(f"{path} is a damaged int8 file ({err}); quantise the model again") from None
    return model.eval()
