"""OpenVINO (``openvino``): an ONNX file compiled by OpenVINO's CPU plugin, on the CPU whatever the device.

It runs what ONNX Runtime runs: an ONNX export as it is (OpenVINO keeps the file's ``xception`` metadata, so
class names and preprocessing come from it), or weights, exported to ONNX first. A QDQ model of ``xception
quantize --format onnx`` compiles to the plugin's int8 kernels as it is. One synchronous request per call,
the latency hint. Options (``open_model(..., options={...})``):

- ``precision``: the plugin's inference-precision hint, ``"float32"`` (the default, set explicitly: the
  plugin picks bf16 by itself on CPUs with AMX or AVX-512 BF16), ``"bfloat16"`` or ``"float16"``;
- ``threads``: inference threads (default: the plugin's);
- ``batch_size``: the input reshaped to this static batch (the plugin plans its memory once; default: any);
- ``calibration``: a float tensor (N, C, H, W) of images preprocessed as the model expects: the model is
  quantised to int8 by NNCF's post-training quantisation on them before it is compiled (needs ``nncf``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from .base import OpenRequest, Runner
from .exported import export_weights, preprocessing_or_default, quiet_logger

PRECISIONS = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}
KERNELS = "OpenVINO CPU plugin (oneDNN)"


def _import_openvino() -> Any:
    try:
        import openvino
    except ImportError as err:
        raise ConfigError("running models on OpenVINO needs openvino: pip install openvino") from err
    return openvino


def _file_facts(model: Any, source: str) -> dict[str, Any]:
    """What a runner says about an ONNX file OpenVINO read: from its ``xception`` metadata and its shapes."""
    from ..export import METADATA_KEY, parse_metadata

    key = ["framework", METADATA_KEY]
    text = model.get_rt_info(key).astype(str) if model.has_rt_info(key) else None
    meta, pre, config = parse_metadata(text, source)
    channels, classes = model.inputs[0].partial_shape[1], model.outputs[0].partial_shape[-1]
    in_chans = channels.get_length() if channels.is_static else 3
    return {"model_name": config.arch if config is not None else Path(source).stem,
            "class_names": meta.get("class_names"), "config": config,
            "num_classes": classes.get_length() if classes.is_static else len(meta.get("class_names") or ()),
            "preprocessing": preprocessing_or_default(pre, in_chans, source)}


def nncf_int8(model: Any, images: torch.Tensor) -> Any:
    """``model`` (an ``openvino.Model``) quantised to int8 by NNCF's post-training quantisation, its activation
    ranges from ``images`` (one item per image); a ConfigError in one line when NNCF is not installed."""
    try:
        import nncf
    except ImportError as err:
        raise ConfigError("int8 on OpenVINO from calibration images needs NNCF: pip install nncf") from err
    items = [image[None].float().cpu().numpy() for image in images]
    nncf.set_log_level(logging.ERROR)
    # Its progress bars go to stdout, where a --json report goes; its torch backend, loaded on the way, logs
    # that it found no CUDA.
    with contextlib.redirect_stdout(io.StringIO()), quiet_logger("torch.utils.cpp_extension"):
        return nncf.quantize(model, nncf.Dataset(items), subset_size=len(items))


def _is_quantized(model: Any) -> bool:
    """A QDQ model: OpenVINO reads its QuantizeLinear nodes as FakeQuantize."""
    return any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())


def _config(options: Mapping[str, Any]) -> dict[Any, Any]:
    import openvino.properties as props
    import openvino.properties.hint as hints
    from openvino import Type

    precision = options.get("precision", "float32")
    if precision not in PRECISIONS:
        raise ConfigError(f"OpenVINO's precision hint is one of {', '.join(PRECISIONS)}, not {precision!r}")
    config: dict[Any, Any] = {hints.inference_precision: getattr(Type, PRECISIONS[precision]),
                              hints.performance_mode: hints.PerformanceMode.LATENCY}
    if options.get("threads"):
        config[props.inference_num_threads] = int(options["threads"])
    return config


class OpenVINORunner(Runner):
    """An ONNX model compiled by OpenVINO for the CPU (see the module's docstring for its options)."""

    name = "openvino"
    native_kind = "onnx"
    option_names = ("precision", "threads", "batch_size", "calibration")

    def __init__(self, *, core: Any, ov_model: Any, compile_config: dict[Any, Any], quantization: str | None,
                 **facts: Any) -> None:
        super().__init__(device=torch.device("cpu"), **facts)
        self.core, self.ov_model, self.compile_config = core, ov_model, compile_config
        self.quantization = quantization  # "NNCF PTQ", "QDQ model" or None (float)
        self._compile()

    def _compile(self) -> None:
        self.compiled = self.core.compile_model(self.ov_model, "CPU", self.compile_config)
        self.request = self.compiled.create_infer_request()

    @classmethod
    def open(cls, request: OpenRequest) -> OpenVINORunner:
        ov = _import_openvino()
        options, model, facts = request.options, None, None
        compile_config = _config(options)  # a wrong option is refused before any work
        if request.kind == "onnx":
            path = Path(request.source)
        else:  # kept for Grad-CAM, as the other runtimes that export weights keep it
            model, facts, path = export_weights(request, "OpenVINO")
        core = ov.Core()
        ov_model = core.read_model(str(path))
        facts = facts or _file_facts(ov_model, request.source)
        quantization = "QDQ model" if _is_quantized(ov_model) else None
        if options.get("calibration") is not None:
            ov_model, quantization = nncf_int8(ov_model, options["calibration"]), "NNCF PTQ"
        if options.get("batch_size"):
            shape = ov_model.inputs[0].partial_shape
            shape[0] = int(options["batch_size"])
            ov_model.reshape(shape)
        return cls(core=core, ov_model=ov_model, compile_config=compile_config, quantization=quantization,
                   source=request.source, model=model, **facts)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        array = batch.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.request.infer({0: array}, share_inputs=True)[0])

    def recompiled(self) -> OpenVINORunner:
        """The same model compiled once more: the plugin allocates a compiled model's working memory on its
        first inference and keeps it, so a benchmark measures that on a copy."""
        twin = copy.copy(self)
        twin._compile()
        return twin

    def _int8_convolutions(self) -> tuple[int, int]:
        """(convolutions the plugin runs on int8 inputs, all convolutions), from the compiled graph."""
        convs = [op.get_rt_info() for op in self.compiled.get_runtime_model().get_ordered_ops()
                 if op.get_rt_info()["layerType"].astype(str) == "Convolution"]
        return sum(info["runtimePrecision"].astype(str) in ("u8", "i8") for info in convs), len(convs)

    def details(self) -> dict[str, Any]:
        import openvino
        import openvino.properties as props
        import openvino.properties.hint as hints

        applied = self.compiled.get_property(hints.inference_precision).get_type_name()
        kernels, precision = KERNELS, next((k for k, v in PRECISIONS.items() if v == applied), applied)
        if self.quantization is not None:
            int8, convs = self._int8_convolutions()
            kernels = f"{KERNELS}, {self.quantization}: {int8} of {convs} convs int8"
            precision = f"int8 ({self.quantization})"
        return {"precision": precision, "kernels": kernels, "inference_precision": applied,
                "threads": self.compiled.get_property(props.inference_num_threads),
                "performance_hint": str(self.compiled.get_property(hints.performance_mode)),
                "input_shape": str(self.ov_model.inputs[0].partial_shape), "openvino": openvino.__version__}
