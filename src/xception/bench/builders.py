"""How each float contender is built. Our model's inference contenders open a file of it through the inference
layer (:meth:`~.base.BuildContext.open`: the weights on ``torch`` or ``fast``, the ONNX export on
``onnxruntime`` or ``openvino``, an edge export on ``executorch`` or ``litert``) and time the runner's
``forward``; so a runtime added to :mod:`xception.inference` is benchmarkable with one more table entry.
timm's network, which is not a file of ours, runs as timm builds it (and its ONNX export on the same runners).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..inference.pytorch import torch_kernels
from .base import BuildContext, Contender, Skip, runner_details
from .models import TIMM_MODEL

OV_PRECISIONS = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
EDGE_RUNTIMES = {"pte": ("executorch", "executorch"), "tflite": ("litert", "ai-edge-litert")}  # runtime, package


def _autocast(ctx: BuildContext) -> bool:
    """The plain model runs in reduced precision under autocast on CUDA only (as users run it)."""
    return ctx.device.type == "cuda" and ctx.dtype != torch.float32


def _compiled_kernels(device: torch.device) -> str:
    return f"Inductor ({'cuDNN' if device.type == 'cuda' else 'oneDNN'} convs)"


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def eager(ctx: BuildContext, compiled: bool) -> Contender:
    """The plain model as users run it: float32 NCHW on CPU; autocast + channels_last on CUDA. Ours: its
    weights file on the ``torch`` runtime, whose ``forward`` is timed (with the model compiled, for
    ``compiled``); timm's: its module."""
    x, device, autocast, dtype = ctx.x, ctx.device, _autocast(ctx), ctx.dtype
    runner = ctx.open(ctx.models.weights_file(), "torch", device) if ctx.network == "ours" else None
    model: nn.Module = runner.model if runner is not None else ctx.model().to(device)
    details = runner_details(runner, model=ctx.cfg.model) if runner is not None \
        else {"model": f"timm {TIMM_MODEL}", "kernels": torch_kernels(device)}
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    fn = torch.compile(model) if compiled else model
    if runner is not None:
        runner.model, fn = fn, runner.forward

    def run() -> Any:
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=autocast):
            return fn(x)

    if compiled:
        details["kernels"] = _compiled_kernels(device)
    if autocast:
        details["precision"] = f"{_name(dtype)} (autocast)"
    return Contender(run, x.shape[0], details=details, precision=dtype if autocast else torch.float32)


def fast(ctx: BuildContext, compile: bool, graphs: bool) -> Contender:
    """Our weights file on the ``fast`` runtime (``xception.optimize``), at the contender's dtype."""
    cfg, x = ctx.cfg, ctx.x
    runner = ctx.open(ctx.models.weights_file(), "fast", ctx.device, dtype=ctx.dtype, compile=compile,
                      cuda_graphs=graphs, batch_size=x.shape[0], input_size=cfg.input_size,
                      keep_memory=cfg.keep_memory)
    program = runner.fast
    details = runner_details(runner, model=cfg.model, **program.settings)
    if program.kernel_choices:
        details["kernel_choices"] = program.kernel_choices
    return Contender(lambda: runner.forward(x), x.shape[0], details=details)


def onnxruntime(ctx: BuildContext) -> Contender:
    """ONNX Runtime on the network's ONNX export (float32), CUDA provider on a CUDA run."""
    path, export_s = ctx.models.onnx_file(ctx.network)
    return ort_contender(ctx, path, export_s=round(export_s, 2))


def ort_contender(ctx: BuildContext, path: Path, **extra: Any) -> Contender:
    """The ONNX file ``path`` on the ``onnxruntime`` runtime (CUDA provider on a CUDA run). The memory pass gets
    its own arena-less session, created and warmed here so that loading the model is not counted as the
    call's working set."""
    import onnxruntime as ort

    if ctx.device.type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise Skip("onnxruntime has no CUDAExecutionProvider here")
    x = ctx.x.float().cpu()  # ONNX Runtime takes host arrays
    runner = ctx.open(path, "onnxruntime", ctx.device, threads=ctx.cfg.threads)
    plain = ctx.open(path, "onnxruntime", ctx.device, threads=ctx.cfg.threads, arena=False)
    plain.forward(x)
    details = runner_details(runner, onnxruntime=ort.__version__, **extra)
    return Contender(lambda: runner.forward(x), x.shape[0], details=details, memory_run=lambda: plain.forward(x),
                     memory_note="arena-less session (an arena would hide the working set)")


def openvino(ctx: BuildContext) -> Contender:
    """OpenVINO's CPU runtime on the network's ONNX export, the precision hint set explicitly (OpenVINO picks
    bf16 by itself on CPUs with AMX / AVX-512 BF16); the row's precision is what the plugin applied."""
    path, export_s = ctx.models.onnx_file(ctx.network)
    contender = ov_contender(ctx, path, precision=_name(ctx.dtype), export_s=round(export_s, 2))
    contender.precision = OV_PRECISIONS[contender.details["inference_precision"]]
    return contender


def ov_contender(ctx: BuildContext, path: Path, *, precision: str = "float32",
                 nncf_images: torch.Tensor | None = None, **extra: Any) -> Contender:
    """The ONNX file ``path`` on the ``openvino`` runtime (int8 by NNCF on ``nncf_images``, if given): one
    synchronous request per call, static shapes. OpenVINO allocates a compiled model's working memory on its
    first inference and keeps it, so the memory pass runs the first inference of a second compiled model."""
    x = ctx.x.float().cpu()
    runner = ctx.open(path, "openvino", threads=ctx.cfg.threads, batch_size=x.shape[0], precision=precision,
                      calibration=nncf_images)
    spare = [runner.recompiled()]
    details = runner_details(runner, device="CPU", **extra)
    return Contender(lambda: runner.forward(x), x.shape[0], details=details,
                     memory_run=lambda: spare.pop().forward(x),
                     memory_note="first inference of a separately compiled model")


def edge(ctx: BuildContext, fmt: str, int8: bool) -> Contender:
    """ExecuTorch (XNNPACK delegate) or LiteRT (interpreter) on our model, converted as ``xception export
    NAME.pte|.tflite`` converts it, written to the run's folder and opened on the ``executorch`` or ``litert``
    runtime: one image per call, as on a phone, so a batch is that many calls; int8 calibrated on the run's
    calibration images (PT2E, static), those of every int8 contender."""
    from importlib.metadata import version

    from ..edge import edge_bytes

    x = ctx.x.float().cpu()
    threads = ctx.cfg.threads or torch.get_num_threads()
    calibration = ctx.models.calibration_images() if int8 else None
    start = time.perf_counter()
    content = edge_bytes(ctx.model(), fmt, precision="int8" if int8 else "fp32", input_size=ctx.cfg.input_size,
                         calibration=calibration)
    path = ctx.models.workdir / f"ours{'.int8' if int8 else ''}.{fmt}"
    path.write_bytes(content)
    runtime, package = EDGE_RUNTIMES[fmt]
    runner = ctx.open(path, runtime, threads=threads)
    details = runner_details(runner, export_s=round(time.perf_counter() - start, 2), threads=threads,
                             input_shape=list(runner.file.input_shape), calls_per_batch=len(x),
                             **{package: version(package)})
    if calibration is not None:
        details["calibration"] = {"images": len(calibration)}
    return Contender(lambda: runner.forward(x), x.shape[0], details=details,
                     precision=torch.int8 if int8 else torch.float32)


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

    kernels = _compiled_kernels(device) if compiled else torch_kernels(device)
    model_name = ctx.cfg.model if ctx.network == "ours" else f"timm {TIMM_MODEL}"
    return Contender(step, batch, details={"model": model_name, "optimizer": "SGD momentum 0.9", "kernels": kernels},
                     precision=dtype if autocast else torch.float32)
