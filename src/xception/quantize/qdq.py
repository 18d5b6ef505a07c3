"""The int8 network as a QDQ ONNX model: QuantizeLinear/DequantizeLinear around the float ops, same scales.

Every tensor the int8 network holds as uint8 is a ``QuantizeLinear → DequantizeLinear`` pair with its scale
and zero point; every weight is an int8 initializer behind a per-channel ``DequantizeLinear`` (axis 0), every
bias an int32 initializer dequantised with ``input_scale·weight_scale[c]``. The float ops between (Conv with
its residual Add and Relu, MaxPool, GlobalAveragePool, Gemm) are where a runtime's QDQ fusion puts its
integer kernels (ONNX Runtime: QLinearConv, QLinearAdd, …), so the file runs as int8 where the runtime can
and as simulated int8 elsewhere. Its requantisation rounds as the runtime's kernels do, not necessarily as
:mod:`.scheme` does (a residual add, for one, may be requantised twice), so it agrees with the reference up
to a tolerance, not bit for bit.

The graph is built for one image size, the held-out images' (the preprocessing's; TF-'same' pads depend on
it); the batch is free. Its ``xception`` metadata is the one ``xception export`` writes, so ``xception
predict`` runs it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..export import INPUT_NAME, METADATA_KEY, OUTPUT_NAME
from ..fileio import atomic_write
from .reference import QBlock, QConv, QHead, QMaxPool, QReLU, QuantizedXception
from .scheme import QParams

OPSET = 17
IR_VERSION = 8  # opset 17's: every ONNX Runtime that runs the opset reads it


class _Graph:
    """Nodes and initializers, with the tensor flowing through: (name, its quantisation, height, width)."""

    def __init__(self) -> None:
        import onnx

        self.helper, self.numpy_helper = onnx.helper, onnx.numpy_helper
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.count = 0

    def fresh(self, stem: str) -> str:
        self.count += 1
        return f"{stem}_{self.count}"

    def const(self, stem: str, array: np.ndarray) -> str:
        name = self.fresh(stem)
        self.inits.append(self.numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], output: str | None = None, **attrs: Any) -> str:
        output = output or self.fresh(op.lower())
        self.nodes.append(self.helper.make_node(op, inputs, [output], **attrs))
        return output

    def qdq(self, x: str, params: QParams, stem: str) -> str:
        """``x`` quantised to uint8 and back: the network's uint8 tensor, as a QDQ runtime sees it."""
        scale = self.const(f"{stem}.scale", np.array(params.scale, dtype=np.float32))
        zero = self.const(f"{stem}.zero_point", np.array(params.zero_point, dtype=np.uint8))
        q = self.node("QuantizeLinear", [x, scale, zero], self.fresh(f"{stem}.q"))
        return self.node("DequantizeLinear", [q, scale, zero], self.fresh(f"{stem}.dq"))

    def dequantized(self, stem: str, values: torch.Tensor, scale: torch.Tensor) -> str:
        """An int8 weight or int32 bias initializer, dequantised per output channel (axis 0)."""
        data = self.const(stem, values.numpy())
        scales = self.const(f"{stem}_scale", scale.float().numpy())
        zeros = self.const(f"{stem}_zero_point", np.zeros(len(scale), dtype=values.numpy().dtype))
        return self.node("DequantizeLinear", [data, scales, zeros], self.fresh(f"{stem}.dq"), axis=0)


Flow = tuple[str, QParams, int, int]  # a tensor: name, quantisation, height, width


def _bias_scale(module: QConv | QHead, in_scale: float) -> torch.Tensor:
    return (in_scale * module.weight_scale.double()).float()


def _conv(g: _Graph, conv: QConv, x: Flow, add: Flow | None = None) -> Flow:
    name, params, h, w = x
    if conv.relu_in:
        name = g.node("Relu", [name])
    top, bottom, left, right = conv.pads(h, w)
    weight = g.dequantized(f"{conv.name}.weight", conv.weight, conv.weight_scale)
    bias = g.dequantized(f"{conv.name}.bias", conv.bias, _bias_scale(conv, params.scale))
    y = g.node("Conv", [name, weight, bias], kernel_shape=list(conv.kernel_size), strides=list(conv.stride),
               dilations=list(conv.dilation), group=conv.groups, pads=[top, left, bottom, right])
    if add is not None:
        y = g.node("Add", [y, add[0]])
    if conv.relu_out:
        y = g.node("Relu", [y])
    out = conv.output_params
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    oh = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    ow = (w + left + right - dw * (kw - 1) - 1) // sw + 1
    return g.qdq(y, out, conv.name), out, oh, ow


def _step(g: _Graph, step: nn.Module, x: Flow) -> Flow:
    name, params, h, w = x
    if isinstance(step, QConv):
        return _conv(g, step, x)
    if isinstance(step, QMaxPool):
        top, bottom, left, right = step.pads(h, w)
        p = step.padding
        pads = [top + p, left + p, bottom + p, right + p]
        y = g.node("MaxPool", [name], kernel_shape=[step.kernel] * 2, strides=[step.stride] * 2, pads=pads)
        oh = (h + pads[0] + pads[2] - step.kernel) // step.stride + 1
        ow = (w + pads[1] + pads[3] - step.kernel) // step.stride + 1
        return g.qdq(y, params, "pool"), params, oh, ow
    if isinstance(step, QReLU):
        return g.qdq(g.node("Relu", [name]), params, "relu"), params, h, w
    raise ConfigError(f"no ONNX form for {type(step).__name__}")


def _block(g: _Graph, block: QBlock, x: Flow) -> Flow:
    h = x
    for step in block.main[:-1]:
        h = _step(g, step, h)
    last = block.main[-1]
    if block.shortcut is not None:
        out = _conv(g, block.shortcut, x, add=_step(g, last, h))
    elif block.identity:
        assert isinstance(last, QConv)
        out = _conv(g, last, h, add=x)
    else:
        out = _step(g, last, h)
    return _step(g, QReLU(), out) if block.act else out


def _head(g: _Graph, head: QHead, x: Flow) -> str:
    name, params = x[0], x[1]
    if head.pool_type == "avg":
        pooled = g.node("GlobalAveragePool", [name])
        params = QParams(float(head.pool_scale.item()), int(head.pool_zero_point.item()))
        pooled = g.qdq(pooled, params, "head.pool")
    else:
        pooled = g.node("GlobalMaxPool", [name])
    flat = g.node("Flatten", [pooled], axis=1)
    weight = g.dequantized("head.fc.weight", head.weight, head.weight_scale)
    bias = g.dequantized("head.fc.bias", head.bias, _bias_scale(head, params.scale))
    return g.node("Gemm", [flat, weight, bias], OUTPUT_NAME, transB=1)


def build_qdq(model: QuantizedXception, size: tuple[int, int]) -> Any:
    """The ONNX ``ModelProto`` of ``model`` for images of ``size`` (height, width), any batch."""
    import onnx

    g = _Graph()
    x: Flow = (g.qdq(INPUT_NAME, model.input_params, "input"), model.input_params, *size)
    for step in model.stem:
        x = _step(g, step, x)
    for block in model.blocks:
        x = _block(g, block, x)
    _head(g, model.head, x)
    float_type = onnx.TensorProto.FLOAT
    graph = g.helper.make_graph(
        g.nodes, f"{model.model_name}-int8-qdq",
        [g.helper.make_tensor_value_info(INPUT_NAME, float_type, ["batch", model.config.in_chans, *size])],
        [g.helper.make_tensor_value_info(OUTPUT_NAME, float_type, ["batch", model.num_classes])], g.inits,
    )
    proto = g.helper.make_model(graph, opset_imports=[g.helper.make_opsetid("", OPSET)], producer_name="xception")
    proto.ir_version = IR_VERSION
    g.helper.set_model_props(proto, {METADATA_KEY: _metadata(model, min(size))})
    onnx.checker.check_model(proto)
    return proto


def _metadata(model: QuantizedXception, input_size: int) -> str:
    return json.dumps({
        "model": model.config.to_dict(), "class_names": model.class_names,
        "preprocessing": model.preprocessing.to_dict() if model.preprocessing is not None else None,
        "input": {"name": INPUT_NAME, "layout": "NCHW", "dynamic": ["batch"], "min_size": input_size},
        "output": {"name": OUTPUT_NAME, "meaning": "logits (apply a softmax for probabilities)"},
        "quantization": {"format": "QDQ", "weights": "int8 per output channel", "activations": "uint8 per tensor",
                         **model.info},
    })


def write_qdq(model: QuantizedXception, path: str | os.PathLike[str], size: tuple[int, int]) -> Path:
    """Write the QDQ ONNX model of ``model`` to ``path``, atomically."""
    if model.activation_bits != 8:
        raise ConfigError("ONNX's QDQ format has no 7-bit activations (its QuantizeLinear saturates at 255): "
                          "export an ONNX model from a quantisation with activation_bits=8")
    try:
        import onnx
    except ImportError as err:
        raise ConfigError("writing ONNX needs the onnx package: pip install 'xception[export]'") from err
    proto = build_qdq(model, size)
    return atomic_write(path, lambda tmp: onnx.save(proto, str(tmp)))
