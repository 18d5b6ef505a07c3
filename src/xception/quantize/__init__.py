"""Post-training static int8 quantisation: ``xception.quantize(model, calibration_images, held_out=...)``.

    >>> import xception
    >>> result = xception.quantize("model.safetensors", "calibration-photos/", held_out="photos-test/",
    ...                            out="model.int8.safetensors", onnx="model.int8.onnx")
    >>> print(result.report.format())                   # every calibration method against float32
    >>> logits = result.model(images)                  # the int8 network (QuantizedXception)
    >>> int8 = xception.quantize.load_quantized("model.int8.safetensors")   # bit for bit the same network

The modules, in the order a model goes through them: :mod:`.reference` (the float program the int8 network
mirrors, and the int8 network itself, step by step), :mod:`.scheme` (its integer arithmetic),
:mod:`.calibrate` (activation ranges by each method), :mod:`.data` (calibration and held-out images),
:mod:`.report` (agreement with float32), :mod:`.fileformat` (the int8 safetensors file), :mod:`.qdq` (the QDQ
ONNX model), :mod:`.api` (:func:`quantize`).
"""

from __future__ import annotations

import sys
import types
from typing import Any

from .api import ONNX_TOLERANCE, QuantizeResult, quantize, resolve_bits
from .calibrate import METHODS
from .data import FASHION_MNIST_TEST
from .fileformat import FORMAT, is_quantized, load_quantized, read_header, save_quantized
from .reference import QConv, QuantizedXception
from .report import Agreement, QuantizeReport

__all__ = [
    "FASHION_MNIST_TEST",
    "FORMAT",
    "METHODS",
    "ONNX_TOLERANCE",
    "Agreement",
    "QConv",
    "QuantizeReport",
    "QuantizeResult",
    "QuantizedXception",
    "is_quantized",
    "load_quantized",
    "quantize",
    "read_header",
    "resolve_bits",
    "save_quantized",
]


class _CallablePackage(types.ModuleType):
    """``xception.quantize`` names both this package and its function: importing the package (``import
    xception.quantize.reference``) binds the package where the function was. Calling the package calls the
    function, so ``xception.quantize(model, images)`` works whichever of the two the name holds."""

    def __call__(self, *args: Any, **kwargs: Any) -> QuantizeResult:
        return quantize(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
