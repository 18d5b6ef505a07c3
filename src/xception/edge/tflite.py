"""LiteRT: a model converted by ``litert-torch`` to a ``.tflite`` flatbuffer, and such a file run by
``ai_edge_litert``'s ``Interpreter``.

The model takes one image (the traced size), NHWC by default (what TFLite users feed) or NCHW, and returns
its logits. The JSON of class names, preprocessing and model config travels in the flatbuffer's own
``metadata`` list (entry ``xception_metadata``, pointing at a buffer that holds the UTF-8 text), which any
flatbuffer reader gets back. int8: PT2E with LiteRT's ``PT2EQuantizer`` (weights int8 per output channel,
activations int8 per tensor, static ranges from calibration images), converted to integer kernels with
int8 input and output; their scale and zero point are in the file, and :class:`TfliteModel` applies them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import MissingPathError, WeightsError
from .common import METADATA_NAME, in_traced_batches, native_output_hidden, nhwc, pt2e_quantize, quiet


def convert(module: nn.Module, x: torch.Tensor, layout: str,
            calibration: Iterable[torch.Tensor] | None = None) -> bytes:
    """``module`` traced on ``x`` (NCHW) and converted to LiteRT, taking ``layout`` input; int8 when
    ``calibration`` images (NCHW batches) are given."""
    with quiet():
        import litert_torch

        example, to_input = x, (lambda t: t)
        if layout == "nhwc":
            module, example, to_input = litert_torch.to_channel_last_io(module, args=[0]), nhwc(x), nhwc
        if calibration is None:
            return bytes(litert_torch.convert(module, (example,)).model_content())
        from litert_torch.quantize import pt2e_quantizer
        from litert_torch.quantize.quant_config import QuantConfig

        config = pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)
        quantizer = pt2e_quantizer.PT2EQuantizer().set_global(config)
        quantized = pt2e_quantize(module, example, quantizer, calibration, to_input=to_input, fold=False)
        edge = litert_torch.convert(quantized, (example,), quant_config=QuantConfig(pt2e_quantizer=quantizer))
        return bytes(edge.model_content())


def with_metadata(content: bytes, text: str) -> bytes:
    """``content`` with a ``metadata`` entry :data:`METADATA_NAME` whose buffer holds ``text`` (replacing one
    of that name)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(text.encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if _name(m.name) != METADATA_NAME] + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _name(name: Any) -> str:
    return name.decode() if isinstance(name, bytes) else str(name)


def read_metadata(content: bytes) -> str | None:
    """The text of the ``xception_metadata`` entry, without unpacking the model; None when there is none."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(content, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if _name(entry.Name()) != METADATA_NAME:
            continue
        buffer = model.Buffers(entry.Buffer())
        if buffer.Offset() > 1:  # stored after the flatbuffer (large models)
            return content[buffer.Offset():buffer.Offset() + buffer.Size()].decode()
        return buffer.DataAsNumpy().tobytes().decode()
    return None


class TfliteModel:
    """A LiteRT model on ``ai_edge_litert``'s interpreter: ``model(images)`` takes an NCHW float batch (any
    size: one traced batch at a time, transposed to NHWC and quantised to int8 when the file's input is)
    and returns float32 logits on the CPU. ``text``: the file's ``xception_metadata`` (None if absent)."""

    def __init__(self, content: bytes, source: str, *, threads: int | None = None) -> None:
        self.source = source
        with native_output_hidden():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
            from ai_edge_litert.interpreter import Interpreter

            self.interpreter = Interpreter(model_content=content, num_threads=threads)
            self.interpreter.allocate_tensors()
        inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if len(inputs) != 1 or len(inputs[0]["shape"]) != 4:
            raise WeightsError(f"{source} is a LiteRT model that does not take one batch of images; export one "
                               "with 'xception export NAME.tflite'")
        self.input, self.output = inputs[0], outputs[0]
        self.text = read_metadata(content)
        shape = tuple(int(s) for s in self.input["shape"])
        self.layout = self._layout(shape)
        n, c, h, w = (shape[0], shape[3], shape[1], shape[2]) if self.layout == "NHWC" else shape
        self.input_shape = (n, c, h, w)  # as the runner feeds it: NCHW
        self.num_classes = int(self.output["shape"][-1]) if len(self.output["shape"]) == 2 else 0
        self.precision = "int8" if self.input["dtype"] == np.int8 else "float32"

    def _layout(self, shape: tuple[int, ...]) -> str:
        if self.text:
            try:
                return str(json.loads(self.text)["input"]["layout"]).upper()
            except (ValueError, KeyError, TypeError):
                pass
        return "NHWC" if shape[-1] in (1, 3) and shape[1] not in (1, 3) else "NCHW"

    def _feed(self, chunk: torch.Tensor) -> np.ndarray:
        x = (nhwc(chunk) if self.layout == "NHWC" else chunk.contiguous()).numpy()
        scale, zero = self.input["quantization"]
        if self.input["dtype"] != np.float32 and scale:
            info = np.iinfo(self.input["dtype"])
            x = np.clip(np.round(x / scale) + zero, info.min, info.max)
        return x.astype(self.input["dtype"])

    def _fetch(self) -> torch.Tensor:
        out = self.interpreter.get_tensor(self.output["index"])
        scale, zero = self.output["quantization"]
        if self.output["dtype"] != np.float32 and scale:
            out = (out.astype(np.float32) - zero) * scale
        return torch.from_numpy(np.array(out, dtype=np.float32))

    def _run(self, chunk: torch.Tensor) -> torch.Tensor:
        self.interpreter.set_tensor(self.input["index"], self._feed(chunk))
        self.interpreter.invoke()
        return self._fetch()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return in_traced_batches(images, self.input_shape[0], self._run)


def load_tflite(source: str | os.PathLike[str] | bytes, *, threads: int | None = None) -> TfliteModel:
    """A LiteRT model (a ``.tflite`` file, or its bytes) on the interpreter; a file it cannot load is a one-line
    :class:`~xception.errors.WeightsError`."""
    name = "the LiteRT model" if isinstance(source, bytes) else str(source)
    if not isinstance(source, bytes):
        path = Path(source)
        if not path.is_file():
            raise MissingPathError(f"{path} does not exist; export a model with 'xception export {path.name}'")
        source = path.read_bytes()
    try:
        return TfliteModel(source, name, threads=threads)
    except (ValueError, RuntimeError, UnicodeDecodeError) as err:
        raise WeightsError(f"{name} is not a model LiteRT can run ({str(err).strip()[:160]}); export it again "
                           "with 'xception export NAME.tflite'") from None
