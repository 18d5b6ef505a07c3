"""The runtimes by name, and :func:`open_model`: a model file in, a :class:`~.base.Runner` out.

How the runtime is chosen (``runtime="auto"``): an exported file runs on its own runtime (ONNX →
``onnxruntime``, a torch.export program → ``torch-export``); weights run on ``fast`` on a CPU (float32,
the plain model's logits up to rounding, faster) and on ``torch`` elsewhere (``fast`` computes in bfloat16
on GPUs, which moves a few predictions; callers that want it there, such as the server, ask for it).
A runtime given by name must fit the file (an ONNX file also runs on ``openvino``); one that does not is
refused in one line saying what would.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import ConfigError, hint
from ..runtime import check_device, resolve_device
from .base import OpenRequest, Runner
from .edge import ExecuTorchRunner, LiteRTRunner
from .exported import OnnxRunner, ProgramRunner
from .formats import EXPORTS, Kind, describe_kind, sniff
from .int8 import Int8Runner
from .openvino import OpenVINORunner
from .pytorch import FastRunner, TorchRunner

RUNTIMES: dict[str, type[Runner]] = {
    cls.name: cls for cls in (TorchRunner, FastRunner, OnnxRunner, ProgramRunner, Int8Runner, ExecuTorchRunner,
                              LiteRTRunner, OpenVINORunner)
}
RUNTIME_NAMES: tuple[str, ...] = ("auto", *RUNTIMES)


def native_runtime(kind: str) -> str | None:
    """The runtime that runs an exported file of ``kind`` as it is (None for weights)."""
    return next((name for name, cls in RUNTIMES.items() if cls.native_kind == kind), None)


def choose_runtime(kind: Kind, runtime: str = "auto", device: torch.device | None = None, *,
                   weights_runtime: str | None = None, source: str = "the model") -> str:
    """The runtime that opens a file of ``kind`` (see the module's docstring for ``"auto"``);
    ``weights_runtime`` replaces auto's choice for weights. A runtime that cannot run it is a ConfigError."""
    for name in (runtime, weights_runtime):
        if name is not None and name not in RUNTIME_NAMES:
            raise ConfigError(f"runtime must be one of {', '.join(RUNTIME_NAMES)}, got {name!r}")
    if kind in EXPORTS:
        own = native_runtime(kind)
        if own is None:
            raise ConfigError(f"{source} is {describe_kind(kind)}, and no runtime here runs it")
        if runtime == "auto":
            return own
        if RUNTIMES[runtime].native_kind != kind:
            raise ConfigError(f"{source} is {describe_kind(kind)}: it runs on {own}, not {runtime}; give the "
                              f"weights it was exported from to run it on {runtime}")
        return runtime
    if runtime == "auto":
        if weights_runtime not in (None, "auto"):
            return weights_runtime
        return "fast" if device is None or device.type == "cpu" else "torch"
    if not RUNTIMES[runtime].from_weights:
        native = RUNTIMES[runtime].native_kind or "exported"
        raise ConfigError(f"{source} is weights, and {runtime} runs only {describe_kind(native)} files: export "
                          "one with 'xception export', or choose another runtime")
    return runtime


def _refuse_options(source: str, kind: Kind, model_options: Mapping[str, Any]) -> None:
    """Model options shape a model built from weights; an export was traced with its own, fixed."""
    if model_options:
        options = hint("model options", "--set model.KEY=VALUE")
        raise ConfigError(f"{source} is {describe_kind(kind)}, traced with its model options fixed: {options} "
                          "apply to weights; export the weights again with them")


def _check_options(runtime: str, options: Mapping[str, Any]) -> None:
    names = RUNTIMES[runtime].option_names
    unknown = sorted(set(options) - set(names))
    if unknown:
        takes = f"it takes {', '.join(names)}" if names else "it takes none"
        raise ConfigError(f"the {runtime} runtime has no option {', '.join(map(repr, unknown))}: {takes}")


def _check_name(runner: Runner, kind: Kind, model_name: str | None) -> None:
    """A model name given with an export must be the one its metadata records."""
    config = runner.config
    if model_name is not None and config is not None and config.arch != model_name:
        ask = hint("leave the name out", "leave --model out")
        raise ConfigError(f"{runner.source} is {describe_kind(kind)} of {config.arch!r}, not {model_name!r}: {ask}")


def open_model(
    source: str | os.PathLike[str], *, runtime: str = "auto", device: str | torch.device = "auto",
    model_name: str | None = None, model_options: Mapping[str, Any] | None = None,
    weights_runtime: str | None = None, workdir: str | os.PathLike[str] | None = None,
    options: Mapping[str, Any] | None = None,
) -> Runner:
    """Open ``source`` (weights: a file of any format the weights layer reads, a URL or a tag; or an
    exported model: ONNX, a torch.export ``.pt2``) on ``runtime`` (a name of :data:`RUNTIMES`, or
    ``"auto"``). The file's content says what it is (:func:`~.formats.sniff`), never its name.

    ``model_name`` and ``model_options`` apply to weights (a bare state dict needs the name); an export
    takes no options. ``weights_runtime`` replaces auto's choice for weights (the server asks for
    ``"fast"``). ``workdir``: where a runtime that exports weights first writes its file. ``options``: the
    chosen runtime's own settings (its ``option_names``: threads, precision, …); others are refused."""
    dev = resolve_device(device) if isinstance(device, str) else check_device(device)
    text = os.fspath(source)
    kind = sniff(text)
    chosen = choose_runtime(kind, runtime, dev, weights_runtime=weights_runtime, source=text)
    model_opts = dict(model_options or {})
    if kind in EXPORTS:
        _refuse_options(text, kind, model_opts)
    _check_options(chosen, options or {})
    request = OpenRequest(text, kind, dev, model_name, model_opts, workdir, dict(options or {}))
    runner = RUNTIMES[chosen].open(request)
    if kind in EXPORTS:
        _check_name(runner, kind, model_name)
    return runner


def require_weights(source: str | os.PathLike[str], why: str) -> Kind:
    """The kind of ``source`` when it is weights; for an exported model, a ConfigError saying ``why`` the
    weights are needed (e.g. "Grad-CAM needs the gradients of the PyTorch model")."""
    kind = sniff(source)
    if kind in EXPORTS:
        raise ConfigError(f"{os.fspath(source)} is {describe_kind(kind)}: {why}; give the weights it was "
                          "exported from")
    return kind


def open_pytorch(
    source: str | os.PathLike[str], *, why: str, device: str | torch.device = "auto", model_name: str | None = None,
    model_options: Mapping[str, Any] | None = None,
) -> Runner:
    """The ``torch`` runtime on weights, whose ``model`` is the plain network; an export is refused with
    ``why`` it will not do (:func:`require_weights`)."""
    require_weights(source, why)
    return open_model(source, runtime="torch", device=device, model_name=model_name, model_options=model_options)
