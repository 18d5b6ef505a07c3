"""Phones and the edge: ExecuTorch (``.pte``, XNNPACK delegate) and LiteRT (``.tflite``) exports, float32 or
int8, each run by its own runtime and checked against PyTorch before it is written.

    >>> from xception.edge import export_edge, load
    >>> result = export_edge(model, "model.tflite")                     # NHWC input, float32
    >>> result = export_edge(model, "model.pte", precision="int8", calibration="photos/",
    ...                      held_out="photos-test/")                   # PT2E, XNNPACKQuantizer
    >>> print(result.int8.format())                                     # top-1 against float32
    >>> logits = load("tflite", "model.tflite")(images)                 # NCHW float batch in

The files carry their class names and preprocessing (:mod:`.common`), so ``xception predict --weights
model.pte`` runs them as they are (:mod:`xception.inference.edge`). :mod:`.pte` and :mod:`.tflite` hold each
toolchain and runtime; :mod:`.api` the export. Needs ``pip install 'xception[edge]'``.
"""

from .api import edge_bytes, export_edge, load
from .common import EDGE_FORMATS, FP32_TOLERANCE, LAYOUTS, PRECISIONS, EdgeExportResult, Int8Check

__all__ = [
    "EDGE_FORMATS",
    "FP32_TOLERANCE",
    "LAYOUTS",
    "PRECISIONS",
    "EdgeExportResult",
    "Int8Check",
    "edge_bytes",
    "export_edge",
    "load",
]
