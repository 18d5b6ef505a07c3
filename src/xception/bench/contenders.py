"""The contenders, as one table: :data:`CONTENDERS` has one :class:`ContenderSpec` per mode.

A spec says what a mode runs (which network, hence which float32 reference its output must match), in
which precision, what it needs (packages, a kind of device) and how to build it. Adding a contender, a
new runtime or a new kernel, is one more entry; the runner, the skips and the report read everything
else from the entry.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from ..errors import ConfigError
from .models import TIMM_MODEL, Models

if TYPE_CHECKING:
    from .config import BenchConfig


class Skip(Exception):
    """A contender that cannot run here (a package or device missing): reported, not an error."""


@dataclass
class Contender:
    """A contender set up to run: ``run()`` does one batch; ``memory_run`` (if set) replaces it for the
    memory pass, and ``memory_note`` says how that pass differs."""

    run: Callable[[], Any]
    batch_size: int
    details: dict[str, Any] = field(default_factory=dict)
    precision: torch.dtype | None = None  # what it computes in, when not the dtype it was asked for
    memory_run: Callable[[], Any] | None = None
    memory_note: str = ""


@dataclass(frozen=True)
class BuildContext:
    """What a build function gets: the run's settings, its input batch and the shared networks."""

    cfg: BenchConfig  # resolved: no None defaults left
    x: torch.Tensor  # the inference batch, on the device
    device: torch.device
    dtype: torch.dtype  # the spec's precision, else the run's dtype
    network: str  # "ours" | "timm"
    models: Models

    def model(self) -> nn.Module:
        """A fresh copy of this contender's network (seeded weights, calibrated BatchNorms)."""
        return self.models.get(self.network)


# Packages a network needs before anything can be built from it.
NETWORK_PACKAGES = {"ours": (), "timm": ("timm",)}


@dataclass(frozen=True)
class ContenderSpec:
    """One mode: its name, what it is, and how to build it."""

    name: str
    kind: Literal["inference", "training"]
    network: Literal["ours", "timm"]  # whose layers and weights; an inference output must match its float32 eager
    build: Callable[[BuildContext], Contender]
    about: str  # one line for ``xception bench --help``
    precision: str | None = None  # "float32", "bfloat16", …; None: the run's dtype
    packages: tuple[str, ...] = ()
    devices: tuple[str, ...] = ("cpu", "cuda")

    def dtype(self, run_dtype: torch.dtype) -> torch.dtype:
        return getattr(torch, self.precision) if self.precision else run_dtype

    def unmet_requirement(self, device: torch.device) -> str | None:
        """Why this contender cannot run here, or None when it can."""
        for package in (*NETWORK_PACKAGES[self.network], *self.packages):
            try:
                importlib.import_module(package)
            except ImportError:
                return f"{package} is not installed"
        if device.type not in self.devices:
            return f"needs a {' or '.join(d.upper() for d in self.devices)} device (this run is on {device})"
        return None


# -- build functions ----------------------------------------------------------------------------------------


def _autocast(ctx: BuildContext) -> bool:
    """The plain model runs in reduced precision under autocast on CUDA only (as users run it)."""
    return ctx.device.type == "cuda" and ctx.dtype != torch.float32


def eager(ctx: BuildContext, compiled: bool) -> Contender:
    """The plain model as users run it: float32 NCHW on CPU; autocast + channels_last on CUDA."""
    model, x = ctx.model().to(ctx.device), ctx.x
    if ctx.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    fn = torch.compile(model) if compiled else model
    autocast, device, dtype = _autocast(ctx), ctx.device, ctx.dtype

    def run() -> Any:
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=autocast):
            return fn(x)

    library = "cuDNN" if ctx.device.type == "cuda" else "oneDNN"
    kernels = f"Inductor ({library} convs)" if compiled else f"PyTorch ops ({library})"
    return Contender(run, x.shape[0], details={"model": _model_name(ctx), "kernels": kernels},
                     precision=ctx.dtype if autocast else torch.float32)


def fast(ctx: BuildContext, compile: bool, graphs: bool) -> Contender:
    """``xception.optimize`` of our model, at the contender's dtype."""
    from ..fast import optimize

    cfg, x = ctx.cfg, ctx.x
    program = optimize(ctx.model(), device=ctx.device, dtype=ctx.dtype, compile=compile, cuda_graphs=graphs,
                       batch_size=x.shape[0], input_size=cfg.input_size, keep_memory=cfg.keep_memory)
    details = {"model": cfg.model, **program.settings}
    if program.kernel_choices:
        details["kernel_choices"] = program.kernel_choices
    return Contender(lambda: program(x), x.shape[0], details=details)


def onnxruntime(ctx: BuildContext) -> Contender:
    """ONNX Runtime on the network's ONNX export (float32), CUDA provider on a CUDA run."""
    import onnxruntime as ort

    provider = "CPUExecutionProvider"
    if ctx.device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise Skip("onnxruntime has no CUDAExecutionProvider here")
        provider = "CUDAExecutionProvider"
    path, export_s = ctx.models.onnx_file(ctx.network)
    threads = ctx.cfg.threads

    def session(arena: bool) -> Any:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.enable_cpu_mem_arena = arena
        if threads:
            opts.intra_op_num_threads = threads
        return ort.InferenceSession(str(path), opts, providers=[provider])

    sess = session(arena=True)
    feed = {sess.get_inputs()[0].name: ctx.x.float().cpu().numpy()}
    # The memory pass gets its own arena-less session, created and warmed here so that loading the
    # model is not counted as the call's working set.
    plain = session(arena=False)
    plain.run(None, feed)
    details = {"export_s": round(export_s, 2), "provider": provider, "onnxruntime": ort.__version__,
               "kernels": "MLAS" if provider == "CPUExecutionProvider" else provider}
    return Contender(lambda: sess.run(None, feed), ctx.x.shape[0], details=details,
                     memory_run=lambda: plain.run(None, feed),
                     memory_note="arena-less session (an arena would hide the working set)")


def openvino(ctx: BuildContext) -> Contender:
    """OpenVINO's CPU runtime on the network's ONNX export: one synchronous request per call, the precision
    hint set explicitly (OpenVINO picks bf16 by itself on CPUs with AMX / AVX-512 BF16)."""
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    types = {torch.float32: ov.Type.f32, torch.bfloat16: ov.Type.bf16, torch.float16: ov.Type.f16}
    path, export_s = ctx.models.onnx_file(ctx.network)
    shape = list(ctx.x.shape)
    config: dict[Any, Any] = {hints.inference_precision: types[ctx.dtype],
                              hints.performance_mode: hints.PerformanceMode.LATENCY}
    if ctx.cfg.threads:
        config[props.inference_num_threads] = ctx.cfg.threads
    core = ov.Core()

    def compiled() -> Any:
        model = core.read_model(str(path))
        model.reshape(shape)  # static shapes: the CPU plugin plans its memory once
        return core.compile_model(model, "CPU", config)

    main = compiled()
    request = main.create_infer_request()
    feed = {0: ctx.x.float().cpu().numpy()}
    # OpenVINO allocates a compiled model's working memory on its first inference and keeps it, so the
    # memory pass runs the first inference of a second compiled model, then lets it go.
    spare = [compiled().create_infer_request()]
    applied = main.get_property(hints.inference_precision)  # what the plugin does with the hint
    details = {"export_s": round(export_s, 2), "openvino": ov.__version__, "device": "CPU",
               "kernels": "OpenVINO CPU plugin (oneDNN)",
               "inference_precision": applied.get_type_name(),
               "threads": main.get_property(props.inference_num_threads),
               "performance_hint": str(main.get_property(hints.performance_mode)), "input_shape": shape}
    return Contender(lambda: request.infer(feed, share_inputs=True)[0], ctx.x.shape[0], details=details,
                     precision=next(t for t, ov_type in types.items() if ov_type == applied),
                     memory_run=lambda: spare.pop().infer(feed, share_inputs=True),
                     memory_note="first inference of a separately compiled model")


def edge(ctx: BuildContext, fmt: str, int8: bool) -> Contender:
    """ExecuTorch (XNNPACK delegate) or LiteRT (interpreter) on our model, converted in memory as ``xception
    export NAME.pte|.tflite`` converts it: one image per call, as on a phone, so a batch is that many calls;
    int8 calibrated on the run's own batch (PT2E, static)."""
    import time
    from importlib.metadata import version

    from ..edge import edge_runtime

    x = ctx.x.float().cpu()
    threads = ctx.cfg.threads or torch.get_num_threads()
    start = time.perf_counter()
    runtime = edge_runtime(ctx.model(), fmt, precision="int8" if int8 else "fp32", input_size=ctx.cfg.input_size,
                           calibration=x if int8 else None, threads=threads)
    package = "executorch" if fmt == "pte" else "ai-edge-litert"
    details = {"export_s": round(time.perf_counter() - start, 2), package: version(package), "threads": threads,
               "kernels": "XNNPACK (ExecuTorch)" if fmt == "pte" else "LiteRT interpreter (XNNPACK delegate)",
               "input_shape": list(runtime.input_shape), "calls_per_batch": len(x)}
    return Contender(lambda: runtime(x), x.shape[0], details=details, precision=torch.int8 if int8 else torch.float32)


def train(ctx: BuildContext, compiled: bool) -> Contender:
    """One SGD step (forward, cross-entropy, backward, update); autocast + channels_last on CUDA."""
    cfg, device, batch = ctx.cfg, ctx.device, ctx.cfg.train_batch_size
    model = ctx.model().to(device).train()
    x = torch.randn(batch, 3, cfg.input_size, cfg.input_size, device=device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    classes = model.num_classes if hasattr(model, "num_classes") else 1000
    target = torch.randint(0, max(classes, 1), (batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    fn = torch.compile(model) if compiled else model
    autocast, dtype = _autocast(ctx), ctx.dtype
    loss_fn = nn.CrossEntropyLoss()

    def step() -> Any:
        with torch.autocast(device.type, dtype=dtype, enabled=autocast):
            loss = loss_fn(fn(x), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    library = "cuDNN" if device.type == "cuda" else "oneDNN"
    kernels = f"Inductor ({library} convs)" if compiled else f"PyTorch ops ({library})"
    return Contender(step, batch, details={"model": _model_name(ctx), "optimizer": "SGD momentum 0.9",
                                           "kernels": kernels},
                     precision=dtype if autocast else torch.float32)


def _model_name(ctx: BuildContext) -> str:
    return ctx.cfg.model if ctx.network == "ours" else f"timm {TIMM_MODEL}"


# -- the table ----------------------------------------------------------------------------------------------

ORT = ("onnxruntime", "onnx", "onnxscript")  # the runtime, then what the export needs
OPENVINO = ("openvino", "onnx", "onnxscript")
EXECUTORCH = ("executorch",)
LITERT = ("litert_torch", "ai_edge_litert")
CPU_ONLY = ("cpu",)
CUDA_ONLY = ("cuda",)

CONTENDERS: tuple[ContenderSpec, ...] = (
    ContenderSpec("eager", "inference", "ours", partial(eager, compiled=False),
                  "our model as users run it (CUDA: autocast, channels_last)"),
    ContenderSpec("compiled", "inference", "ours", partial(eager, compiled=True), "the same, torch.compile'd"),
    ContenderSpec("fast", "inference", "ours", partial(fast, compile=False, graphs=False), "xception.optimize(model)"),
    ContenderSpec("fast-compiled", "inference", "ours", partial(fast, compile=True, graphs=False),
                  "optimize(compile=True): Inductor with freezing"),
    ContenderSpec("fast-graphs", "inference", "ours", partial(fast, compile=False, graphs=True),
                  "optimize(cuda_graphs=True)", devices=CUDA_ONLY),
    ContenderSpec("fast-compiled-graphs", "inference", "ours", partial(fast, compile=True, graphs=True),
                  "optimize(compile=True, cuda_graphs=True)", devices=CUDA_ONLY),
    ContenderSpec("fast-bf16", "inference", "ours", partial(fast, compile=False, graphs=False),
                  "optimize(dtype=torch.bfloat16)", precision="bfloat16"),
    ContenderSpec("timm", "inference", "timm", partial(eager, compiled=False),
                  "timm's legacy_xception, run like eager"),
    ContenderSpec("timm-compiled", "inference", "timm", partial(eager, compiled=True), "the same, torch.compile'd"),
    ContenderSpec("ort-timm", "inference", "timm", onnxruntime, "ONNX Runtime on timm's ONNX export",
                  precision="float32", packages=ORT),
    ContenderSpec("ort-ours", "inference", "ours", onnxruntime, "ONNX Runtime on our ONNX export",
                  precision="float32", packages=ORT),
    ContenderSpec("ov-timm", "inference", "timm", openvino, "OpenVINO (CPU, f32 hint) on timm's ONNX export",
                  precision="float32", packages=OPENVINO, devices=CPU_ONLY),
    ContenderSpec("ov-ours", "inference", "ours", openvino, "OpenVINO (CPU, f32 hint) on our ONNX export",
                  precision="float32", packages=OPENVINO, devices=CPU_ONLY),
    ContenderSpec("ov-timm-bf16", "inference", "timm", openvino, "OpenVINO (CPU, bf16 hint) on timm's ONNX export",
                  precision="bfloat16", packages=OPENVINO, devices=CPU_ONLY),
    ContenderSpec("executorch-xnnpack", "inference", "ours", partial(edge, fmt="pte", int8=False),
                  "ExecuTorch on its XNNPACK delegate, our model (.pte), one image per call", precision="float32",
                  packages=EXECUTORCH, devices=CPU_ONLY),
    ContenderSpec("executorch-int8", "inference", "ours", partial(edge, fmt="pte", int8=True),
                  "the same, int8 (PT2E, XNNPACKQuantizer)", precision="int8", packages=EXECUTORCH,
                  devices=CPU_ONLY),
    ContenderSpec("litert", "inference", "ours", partial(edge, fmt="tflite", int8=False),
                  "LiteRT's interpreter on our model (.tflite, NHWC), one image per call", precision="float32",
                  packages=LITERT, devices=CPU_ONLY),
    ContenderSpec("litert-int8", "inference", "ours", partial(edge, fmt="tflite", int8=True),
                  "the same, int8 (PT2E, LiteRT's PT2EQuantizer)", precision="int8", packages=LITERT,
                  devices=CPU_ONLY),
    ContenderSpec("train-eager", "training", "ours", partial(train, compiled=False), "one SGD step of our model"),
    ContenderSpec("train-compiled", "training", "ours", partial(train, compiled=True), "the same, torch.compile'd"),
    ContenderSpec("train-timm", "training", "timm", partial(train, compiled=False), "one SGD step of timm's"),
    ContenderSpec("train-timm-compiled", "training", "timm", partial(train, compiled=True),
                  "the same, torch.compile'd"),
)
SPECS: dict[str, ContenderSpec] = {spec.name: spec for spec in CONTENDERS}
ALL_MODES: tuple[str, ...] = tuple(SPECS)
INFERENCE_MODES: tuple[str, ...] = tuple(s.name for s in CONTENDERS if s.kind == "inference")
TRAINING_MODES: tuple[str, ...] = tuple(s.name for s in CONTENDERS if s.kind == "training")


def specs_for(modes: Sequence[str]) -> list[ContenderSpec]:
    """The table's entries for ``modes``, in order; a :class:`ConfigError` naming the known modes for any other.
    (The config names modes without importing the table, which builds from the config.)"""
    unknown = [m for m in modes if m not in SPECS]
    if unknown:
        raise ConfigError(f"unknown mode(s) {unknown}; known: {', '.join(SPECS)}")
    return [SPECS[m] for m in modes]
