"""Runtimes of exported models: ONNX Runtime (``onnxruntime``) and ``torch.export`` programs (``torch-export``).

Each runs its own file as it is, with the class names and preprocessing of the file's ``xception``
metadata, and has no PyTorch model to explain with. Each can also start from weights: the model is exported
first (ONNX: to a file, checked against PyTorch; torch.export: traced in memory), and the plain model is
kept for Grad-CAM. Exports from weights fix the image size at the preprocessing's: requests are always
preprocessed to it, and a fixed size makes the simplest graph.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..errors import WeightsError
from ..models import Xception
from ..preprocessing import Preprocessing
from .base import OpenRequest, Runner
from .pytorch import classifier_facts, load_classifier

log = logging.getLogger(__name__)

_ONNX_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(bfloat16)": "bfloat16",
               "tensor(double)": "float64"}


def preprocessing_or_default(pre: Preprocessing | None, channels: int, source: str) -> Preprocessing:
    """The export's preprocessing; Keras's 299 px, [-1, 1] scaling (said in the log) when it carries none."""
    if pre is not None:
        return pre
    log.warning("%s carries no preprocessing: using 299 px, [-1, 1] scaling", source)
    return Preprocessing.centred(channels)


def export_weights(request: OpenRequest, runtime: str) -> tuple[Xception, dict[str, Any], Path]:
    """The weights of ``request`` as a plain model, what a runner says about it, and its ONNX export (fixed
    at the preprocessing's image size, checked against PyTorch) in ``request.workdir`` or a temporary folder."""
    from ..export import export_model

    model = load_classifier(request)
    facts = classifier_facts(model)
    folder = Path(request.workdir) if request.workdir is not None else Path(tempfile.mkdtemp(prefix="xception-"))
    path = folder / "model.onnx"
    log.info("exporting the model to %s for %s", path, runtime)
    export_model(model, path, input_size=facts["preprocessing"].input_size, dynamic_spatial=False)
    return model, facts, path


class OnnxRunner(Runner):
    """ONNX Runtime on an ONNX file: CPU, or its CUDA provider for a CUDA device when it has one. Options:
    ``threads`` (intra-op threads) and ``arena`` (False: no CPU memory arena, so that freed memory is returned)."""

    name = "onnxruntime"
    native_kind = "onnx"
    option_names = ("threads", "arena")

    def __init__(self, *, onnx: Any, **facts: Any) -> None:
        super().__init__(**facts)
        self.onnx = onnx  # xception.export.OnnxModel

    @classmethod
    def open(cls, request: OpenRequest) -> OnnxRunner:
        from ..export import load_onnx

        # ONNX Runtime copies host inputs to its device itself: inputs stay on the CPU.
        cpu = torch.device("cpu")
        if request.kind == "onnx":
            onnx = load_onnx(request.source, device=request.device, **dict(request.options))
            name = onnx.config.arch if onnx.config is not None else Path(request.source).stem
            return cls(onnx=onnx, source=request.source, model_name=name, device=cpu, config=onnx.config,
                       class_names=onnx.class_names, num_classes=onnx.num_classes,
                       preprocessing=preprocessing_or_default(onnx.preprocessing, onnx.in_chans, request.source))
        model, facts, path = export_weights(request, "ONNX Runtime")
        onnx = load_onnx(path, device=request.device, **dict(request.options))
        return cls(onnx=onnx, source=request.source, device=cpu, model=model.to(request.device), **facts)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.onnx(batch)

    def details(self) -> dict[str, Any]:
        inputs = self.onnx.session.get_inputs()
        precision = _ONNX_TYPES.get(inputs[0].type, inputs[0].type)
        if "quantization" in self.onnx.metadata:  # a QDQ model of ``xception quantize``: float in and out
            precision = "int8 (QDQ: uint8 activations, int8 weights)"
        provider = self.onnx.provider
        return {"precision": precision, "provider": provider, "onnx": str(self.onnx.path),
                "kernels": "MLAS" if provider == "CPUExecutionProvider" else provider}


def _program_io(program: torch.export.ExportedProgram) -> tuple[int, int]:
    """(input channels, classes) of a program's one input and output, from the shapes it was traced with."""
    try:
        nodes = {node.name: node for node in program.graph.nodes}
        x = nodes[program.graph_signature.user_inputs[0]].meta["val"]
        out = next(node for node in program.graph.nodes if node.op == "output").args[0][0].meta["val"]
        return int(x.shape[1]), int(out.shape[1])
    except (KeyError, IndexError, TypeError, AttributeError, StopIteration):
        return 3, 0


@contextlib.contextmanager
def quiet_logger(logger: str) -> Iterator[None]:
    """``logger``'s records dropped for the duration (the error is reported once, in one line, by the caller)."""
    target = logging.getLogger(logger)
    before, target.disabled = target.disabled, True
    try:
        yield
    finally:
        target.disabled = before


def load_program(path: str, device: torch.device) -> tuple[torch.export.ExportedProgram, dict[str, Any]]:
    """A ``.pt2`` file's program on ``device`` and its metadata (what :func:`xception.export.parse_metadata`
    returns, as a dict); a damaged file is a one-line :class:`~xception.errors.WeightsError`."""
    from ..export import PROGRAM_METADATA, parse_metadata

    extra = {PROGRAM_METADATA: ""}
    try:
        # Checked first: torch.export.load logs a traceback for a damaged archive before it raises.
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
        if damaged is not None:
            raise ValueError(f"its record {damaged} fails its checksum")
        with open(path, "rb") as f, quiet_logger("torch.export"):  # a file: given a path, it wants a .pt2 name
            program = torch.export.load(f, extra_files=extra)
    except Exception as err:  # zipfile and torch raise many types for a damaged archive
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise WeightsError(f"{path} is a torch.export program that cannot be loaded ({first}); it may be "
                           "truncated: export it again") from None
    meta, pre, config = parse_metadata(extra[PROGRAM_METADATA] or None, path)
    if device.type != "cpu":
        from torch.export.passes import move_to_device_pass

        program = move_to_device_pass(program, device)
    return program, {"meta": meta, "preprocessing": pre, "config": config}


class ProgramRunner(Runner):
    """A ``torch.export`` program (``xception export MODEL.pt2``), run by PyTorch."""

    name = "torch-export"
    native_kind = "pt2"

    def __init__(self, *, program: torch.export.ExportedProgram, **facts: Any) -> None:
        super().__init__(**facts)
        self.program = program
        self.module = program.module()

    @classmethod
    def open(cls, request: OpenRequest) -> ProgramRunner:
        from ..export import example_input, exportable, trace

        if request.kind == "pt2":
            program, read = load_program(request.source, request.device)
            in_chans, num_classes = _program_io(program)
            config = read["config"]
            name = config.arch if config is not None else Path(request.source).stem
            pre = preprocessing_or_default(read["preprocessing"], in_chans, request.source)
            return cls(program=program, source=request.source, model_name=name, device=request.device,
                       config=config, class_names=read["meta"].get("class_names"), num_classes=num_classes,
                       preprocessing=pre)
        model = load_classifier(request)
        facts = classifier_facts(model)
        x = example_input(model, facts["preprocessing"].input_size)
        program, _ = trace(exportable(model), x)
        if request.device.type != "cpu":
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, request.device)
        return cls(program=program, source=request.source, device=request.device, model=model.to(request.device),
                   **facts)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.module(batch.to(self.device))

    def details(self) -> dict[str, Any]:
        first = next(iter(self.program.state_dict.values()), None)
        dtype = first.dtype if first is not None else torch.float32
        return {"precision": str(dtype).removeprefix("torch."), "kernels": "torch.export program"}
