"""One inference layer: every command runs models through it, whatever the file and the runtime.

    >>> from xception.inference import open_model
    >>> runner = open_model("model.onnx")            # ONNX Runtime; the file's content says it is ONNX
    >>> runner = open_model("runs/demo/model.safetensors", runtime="torch")
    >>> runner = open_model("model.onnx", runtime="openvino", options={"threads": 2})  # a runtime's own settings
    >>> logits = runner.run(batch)                   # (N, classes) float32 on the CPU
    >>> runner.class_names, runner.preprocessing, runner.describe(), runner.model

:func:`sniff` tells formats apart by content (:mod:`.formats`); :data:`RUNTIMES` maps each runtime's name
to its :class:`Runner` class (:mod:`.pytorch`: ``torch``, ``fast``; :mod:`.exported`: ``onnxruntime``,
``torch-export``; :mod:`.int8`: ``int8``; :mod:`.edge`: ``executorch``, ``litert``; :mod:`.openvino`:
``openvino``); :func:`open_model` picks one (:mod:`.registry` says how) and opens the file with it.
"""

from .base import OpenRequest, Runner
from .formats import EXPORTS, Kind, describe_kind, sniff
from .registry import RUNTIME_NAMES, RUNTIMES, choose_runtime, native_runtime, open_model, open_pytorch, require_weights

__all__ = [
    "EXPORTS",
    "RUNTIMES",
    "RUNTIME_NAMES",
    "Kind",
    "OpenRequest",
    "Runner",
    "choose_runtime",
    "describe_kind",
    "native_runtime",
    "open_model",
    "open_pytorch",
    "require_weights",
    "sniff",
]
