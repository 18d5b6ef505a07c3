"""ExecuTorch: a model lowered to the XNNPACK delegate as a ``.pte`` program, and such a program run by
``executorch.runtime``.

The program's ``forward`` takes one NCHW float32 image (the traced size) and returns its logits. Its
constant method ``xception_metadata`` returns the JSON of class names, preprocessing and model config
(:func:`xception.edge.common.metadata_text`), which the runtime reads back like any other method. int8:
PT2E with ExecuTorch's ``XNNPACKQuantizer`` (weights int8 per output channel, activations int8 per tensor,
static ranges from calibration images); inputs and outputs stay float32.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import MissingPathError, WeightsError
from .common import METADATA_NAME, in_traced_batches, native_output_hidden, pt2e_quantize, quiet


def lower(module: nn.Module, x: torch.Tensor, metadata: str,
          calibration: Iterable[torch.Tensor] | None = None) -> bytes:
    """``module`` traced on ``x`` and lowered to XNNPACK, int8 when ``calibration`` images are given; the
    program's bytes, ``metadata`` its constant method."""
    with quiet():
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        if calibration is not None:
            from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
                XNNPACKQuantizer,
                get_symmetric_quantization_config,
            )

            quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
            module = pt2e_quantize(module, x, quantizer, calibration)
        program = torch.export.export(module, (x,))
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()],
                                           constant_methods={METADATA_NAME: metadata})
        return bytes(edge.to_executorch().buffer)


def set_threads(threads: int) -> None:
    """ExecuTorch's thread pool (one per process, shared by every program) resized to ``threads``."""
    from executorch.extension.pybindings import portable_lib

    with native_output_hidden():  # "Resetting threadpool to N threads."
        portable_lib._unsafe_reset_threadpool(threads)


class PteModel:
    """An ExecuTorch program on ``executorch.runtime``: ``model(images)`` takes an NCHW float batch (any
    size: it runs the program's traced batch at a time) and returns float32 logits on the CPU.

    ``text`` is the program's ``xception_metadata`` (None for a program written by something else)."""

    def __init__(self, program: Any, source: str) -> None:
        self.source = source
        self.program = program  # its methods point into it: it lives as long as they do
        self.method = program.load_method("forward")
        meta = self.method.metadata
        if meta.num_inputs() != 1 or len(meta.input_tensor_meta(0).sizes()) != 4:
            raise WeightsError(f"{source} is an ExecuTorch program that does not take one batch of images "
                               "(N, C, H, W); export one with 'xception export NAME.pte'")
        self.input_shape = tuple(int(s) for s in meta.input_tensor_meta(0).sizes())
        out = meta.output_tensor_meta(0).sizes()
        self.num_classes = int(out[-1]) if len(out) == 2 else 0
        self.text: str | None = None
        if METADATA_NAME in program.method_names:
            self.text = str(program.load_method(METADATA_NAME).execute([])[0])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return in_traced_batches(images, self.input_shape[0], lambda x: self.method.execute([x])[0])


def load_pte(source: str | os.PathLike[str] | bytes) -> PteModel:
    """An ExecuTorch program (a ``.pte`` file, or its bytes) loaded by ``executorch.runtime``; a file it
    cannot load is a one-line :class:`~xception.errors.WeightsError`."""
    name = "the ExecuTorch program" if isinstance(source, bytes) else str(source)
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise MissingPathError(f"{source} does not exist; export a model with 'xception export {Path(source).name}'")
    try:
        with native_output_hidden():  # the CPU probe's log lines
            from executorch.runtime import Runtime

            program = Runtime.get().load_program(source if isinstance(source, bytes) else Path(source))
    except RuntimeError as err:
        raise WeightsError(f"{name} is not a program ExecuTorch can load ({str(err).strip()[:160]}); export it "
                           "again with 'xception export NAME.pte'") from None
    return PteModel(program, name)
