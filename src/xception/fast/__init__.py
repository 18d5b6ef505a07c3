"""The fast inference path: ``xception.optimize(model)`` returns a module that computes the same logits faster.

    >>> import torch, xception
    >>> model = xception.create_model("xception").eval()
    >>> fast = xception.optimize(model)                       # CPU: folded BN, oneDNN fused convs
    >>> logits = fast(torch.randn(8, 3, 299, 299))
    >>> gpu = xception.optimize(model, device="cuda", compile=True, cuda_graphs=True, batch_size=256)

Each step and the number that justifies it are in ``benchmarks/NOTES.md``:

1. BatchNorm folded into the conv before it (:mod:`.fold`), in float64: exact up to rounding.
2. ReLUs, TF-'same' pads and residual adds fused into the convolutions (:mod:`.fused`).
3. channels_last memory: PyTorch then runs depthwise and 1×1 convs with oneDNN (CPU) / cuDNN NHWC kernels.
4. CPU: oneDNN convolutions with pre-packed weights; freed memory kept for reuse (:mod:`.memory`).
   GPU: bf16 weights and activations, cuDNN's fused conv + bias (+ residual) + ReLU, a Triton depthwise
   kernel where it beats cuDNN (timed per layer on the first batch).
5. Optional: ``torch.compile`` (with Inductor's freezing), CUDA graphs for fixed batch shapes.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

from ..errors import ConfigError
from ..hardware import cpu_flags
from ..models import Xception
from ..runtime import check_device, inference_dtype, median_ms
from . import native, triton_depthwise
from .fold import fold_batch_norms, fold_conv_bn, fold_xception, fuse_conv_bn_weights
from .fused import (
    Backend,
    FusedConv,
    FusedXception,
    cudnn_fusion_available,
    mkldnn_available,
    mkldnn_bf16_available,
)
from .graphs import CudaGraphRunner
from .memory import keep_freed_memory
from .replay import NativeReplay

__all__ = [
    "FastXception", "FusedConv", "FusedXception", "fold_batch_norms", "fold_conv_bn", "fold_xception",
    "fuse_conv_bn_weights", "keep_freed_memory", "mkldnn_available", "optimize",
]

Kernels = Literal["auto", "native", "torch", "mkldnn", "triton", "cudnn", "experimental"]
KERNELS: tuple[str, ...] = ("auto", "native", "torch", "mkldnn", "triton", "cudnn", "experimental")


class FastXception(nn.Module):
    """What :func:`optimize` returns: inference only; float32 logits from half-precision compute.

    Inputs are moved to the model's device, dtype and memory format inside ``forward``, so callers pass
    the same tensors they would give the plain model. ``settings`` records what was applied, and
    ``kernel_choices`` (GPU, ``kernels="experimental"``) the per-layer Triton/cuDNN timings behind each choice.
    """

    def __init__(
        self, program: FusedXception, *, device: torch.device, dtype: torch.dtype, channels_last: bool,
        settings: dict[str, Any], runner: Callable[[torch.Tensor], torch.Tensor] | None = None,
        choose_depthwise: bool = False, base_backend: Backend = "torch",
    ) -> None:
        super().__init__()
        self.program = program
        self.config = program.config
        self.device, self.dtype, self.channels_last = device, dtype, channels_last
        self.settings = settings
        self.kernel_choices: dict[str, dict[str, Any]] = {}
        self._run = runner  # the compiled / graphed program, if any
        self._choose_depthwise = choose_depthwise  # time Triton against base_backend on the first batch
        self._base_backend = base_backend  # what a depthwise layer runs when Triton does not win

    def check_input(self, x: torch.Tensor) -> None:
        Xception.check_input(self, x)  # the checks read only .config

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.to(device=self.device, dtype=self.dtype, memory_format=fmt)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        with torch.inference_mode():
            x = self._prepare(x)
            if self._choose_depthwise:
                self._choose_depthwise_kernels(x)
            out = (self._run or self.program)(x)
            return out if out.dtype in (torch.float32, torch.float64) else out.float()

    def _choose_depthwise_kernels(self, x: torch.Tensor, repeats: int = 5) -> None:
        """Time the Triton kernel against cuDNN on every depthwise layer's real input; keep the faster."""
        self._choose_depthwise = False
        if not x.is_cuda or torch.cuda.is_current_stream_capturing():
            return
        inputs: dict[str, torch.Tensor] = {}
        convs = {name: m for name, m in self.program.named_modules() if isinstance(m, FusedConv) and m.depthwise}
        hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: inputs.setdefault(name, args[0]))
                 for name, m in convs.items()]
        try:
            for conv in convs.values():
                conv.set_backend(self._base_backend)
            self.program(x)
        finally:
            for hook in hooks:
                hook.remove()
        for name, conv in convs.items():
            timings = {}
            for backend in (self._base_backend, "triton"):
                if conv.set_backend(backend).backend != backend:
                    continue
                timings[backend] = median_ms(lambda conv=conv, inp=inputs[name]: conv(inp), x.device, repeats)
            best = min(timings, key=timings.__getitem__)
            conv.set_backend(best)  # type: ignore[arg-type]
            self.kernel_choices[name] = {"backend": best, **{f"{k}_ms": v for k, v in timings.items()}}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.settings.items())


class FrozenCompiled:
    """``torch.compile`` with Inductor's freezing: weights become constants that it folds and pre-packs.

    Freezing is read from Inductor's global config when a graph is compiled, which happens lazily on the
    first call of each input shape; ``torch.compile(options={"freezing": True})`` does not reach it
    (checked on torch 2.14), so every call runs inside the config patch.
    """

    def __init__(self, module: nn.Module) -> None:
        self.compiled = torch.compile(module)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch._inductor.config as inductor_config

        with inductor_config.patch(freezing=True):
            return self.compiled(x)


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def optimize(
    model: Xception,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    channels_last: bool = True,
    compile: bool = False,
    cuda_graphs: bool = False,
    batch_size: int | None = None,
    input_size: int | None = None,
    kernels: Kernels = "auto",
    keep_memory: bool | None = None,
    replay: bool = True,
) -> FastXception:
    """An inference-only copy of ``model`` that computes the same logits faster (``model`` is untouched).

    Args:
        device: where to run (default: where ``model`` is).
        dtype: compute dtype (default: float32 on CPU, bfloat16 on CUDA). Logits come back in float32
            (float64 if that is the compute dtype).
        channels_last: NHWC activations and weights (faster for depthwise and 1×1 convs on CPU and GPU).
        compile: ``torch.compile`` the fused program (Inductor, with freezing: constant-folded weights).
            Takes about a minute on a 2-core CPU, less on a GPU host; happens on the first batch of each
            shape, or right here when ``batch_size`` is given.
        cuda_graphs: replay each batch shape as one CUDA graph (removes per-kernel launch overhead).
        batch_size: warm up now (compile, choose kernels, capture graphs) for this batch size.
        input_size: image side for that warm-up (default: the model's preprocessing, else 299).
        kernels: ``"auto"`` (CPU: the compiled kernels of :mod:`.native` — each separable conv one fused
            GEMM — where they are installed, oneDNN fused convs for the rest or where they are not, said once
            in a warning; in bfloat16, the native bf16 kernels on a CPU with AVX-512 BF16 and no AMX, else
            oneDNN's convs and matrix products (AMX tiles where there are) with the native max-pools; CUDA:
            PyTorch's kernels, on the folded and fused program), or force ``"native"``, ``"torch"``,
            ``"mkldnn"``, or the experimental CUDA kernels, not yet verified on a GPU: ``"cudnn"`` (cuDNN's
            fused conv + bias + ReLU), ``"triton"`` (the Triton depthwise kernel) and ``"experimental"``
            (both: Triton per depthwise layer wherever it beats cuDNN on the first batch).
        keep_memory: CPU only: keep freed memory for reuse (process-wide, see :mod:`xception.fast.memory`);
            default on for CPU.
        replay: on the native kernels: replay each input shape's recorded kernel calls (:mod:`.replay`).
    """
    if not isinstance(model, Xception):
        raise TypeError(f"optimize() expects an xception.Xception, got {type(model).__name__}")
    device = check_device(torch.device(device)) if device is not None else _model_device(model)
    dtype = dtype if dtype is not None else inference_dtype(device)
    _check_request(kernels, device, dtype, cuda_graphs)

    program, folded = _fused_program(model, kernels, device, dtype, channels_last)
    backend, use_triton, use_cudnn = _choose_kernels(program, kernels, device, dtype, compile, cuda_graphs)
    keep_memory = (keep_memory is None or keep_memory) and device.type == "cpu" and keep_freed_memory()

    settings = {"device": str(device), "dtype": str(dtype).removeprefix("torch."), "channels_last": channels_last,
                "folded_batch_norms": folded, "kernels": backend, "compile": compile, "cuda_graphs": cuda_graphs,
                "keep_memory": keep_memory, "replay": replay and backend.startswith("native") and not compile}
    fast = FastXception(program, device=device, dtype=dtype, channels_last=channels_last, settings=settings,
                        runner=_runner(program, compile, settings["replay"], cuda_graphs),
                        choose_depthwise=use_triton and kernels == "experimental",
                        base_backend="cudnn" if use_cudnn else "torch")
    if batch_size is not None:
        size = input_size or (model.preprocessing.input_size if model.preprocessing is not None else 299)
        settings["warmup_seconds"] = _warm_up(fast, batch_size, model.config.in_chans, size, device)
    return fast


def _runner(program: FusedXception, compile: bool, replay: bool,
            cuda_graphs: bool) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """What runs ``program``'s passes, if not the program itself: compiled, replayed, and/or graphed."""
    runner: Callable[[torch.Tensor], torch.Tensor] | None = FrozenCompiled(program) if compile else None
    if replay:
        runner = NativeReplay(program)
    if cuda_graphs:
        runner = CudaGraphRunner(runner or program)
    return runner


def _fused_program(model: Xception, kernels: str, device: torch.device, dtype: torch.dtype,
                   channels_last: bool) -> tuple[FusedXception, int]:
    """A copy of ``model`` with its BatchNorms folded (and how many were), as one fused program."""
    plain = copy.deepcopy(model).to(torch.float64 if dtype == torch.float64 else torch.float32).cpu().eval()
    folded = fold_xception(plain)
    # Forced Triton reads the ReLU into the depthwise kernel; otherwise ReLUs close the conv before them,
    # where cuDNN fuses them with the bias.
    program = FusedXception(plain, prefer_relu_in=kernels == "triton").to(device=device, dtype=dtype)
    if channels_last:
        program = program.to(memory_format=torch.channels_last)
    return program, folded


def _warm_up(fast: FastXception, batch_size: int, channels: int, size: int, device: torch.device) -> float:
    """Run one batch now (compiling, choosing kernels, capturing graphs); the seconds it took."""
    start = time.perf_counter()
    fast(torch.zeros(batch_size, channels, size, size, device=device))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return round(time.perf_counter() - start, 2)


def _check_request(kernels: str, device: torch.device, dtype: torch.dtype, cuda_graphs: bool) -> None:
    """Refuse what cannot run here before anything is copied, saying what would."""
    if kernels not in KERNELS:
        raise ConfigError(f"kernels must be one of {KERNELS}, got {kernels!r}")
    if cuda_graphs and device.type != "cuda":
        raise ConfigError("cuda_graphs=True needs device='cuda'")
    if not dtype.is_floating_point:
        raise ConfigError(f"dtype must be a floating-point dtype, got {dtype}")
    if kernels == "mkldnn" and (device.type != "cpu" or not mkldnn_available()):
        raise ConfigError("kernels='mkldnn' needs a CPU device and a PyTorch built with oneDNN")
    if kernels == "native" and (device.type != "cpu" or not native.available()
                                or dtype not in (torch.float32, torch.bfloat16)
                                or (dtype == torch.bfloat16 and not native.bf16_available())):
        raise ConfigError("kernels='native' needs a CPU model, the compiled CPU kernels, and for bfloat16 a CPU with "
                          f"AVX-512 BF16 (here: {native.isa()} kernels, bf16 kernels: {native.bf16_available()}); "
                          "use kernels='auto' to fall back to oneDNN")
    if kernels == "triton" and not triton_depthwise.available(device):
        raise ConfigError("kernels='triton' needs Triton and a CUDA device; use kernels='auto' to fall back")
    if kernels == "cudnn" and not cudnn_fusion_available(device):
        raise ConfigError("kernels='cudnn' needs a CUDA device with cuDNN; use kernels='auto' to fall back")
    if kernels == "experimental" and device.type != "cuda":
        raise ConfigError("kernels='experimental' (Triton and cuDNN epilogues) needs a CUDA device")


def native_bf16_preferred() -> bool:
    """Whether a bfloat16 program runs on the native bf16 kernels by default: where they run and the CPU has no
    AMX, whose matrix tiles oneDNN's bf16 matrix products use (the native kernels are not measured against them)."""
    return native.bf16_available() and "amx_bf16" not in cpu_flags()


def _choose_kernels(program: FusedXception, kernels: str, device: torch.device, dtype: torch.dtype, compile: bool,
                    cuda_graphs: bool) -> tuple[str, bool, bool]:
    """Put each conv of ``program`` on its kernels; returns (the choice in words, Triton used, cuDNN used)."""
    # On CUDA, "auto" is PyTorch's own kernels: the Triton and cuDNN-epilogue kernels stay opt-in
    # ("experimental": both, Triton per depthwise layer where it wins) until a GPU run of
    # benchmarks/gpu_check.sh has verified them.
    experimental = kernels == "experimental" and device.type == "cuda"
    use_triton = kernels == "triton" or (experimental and not compile and triton_depthwise.available(device))
    # cuDNN's fused ops are not traced by torch.compile, nor yet measured inside CUDA graphs.
    use_cudnn = kernels == "cudnn" or (experimental and not compile and not cuda_graphs
                                       and cudnn_fusion_available(device))
    backend = "torch"
    cpu_auto = kernels == "auto" and not compile and device.type == "cpu"
    if cpu_auto:
        native.warn_if_unavailable()
    onednn_dtype = dtype == torch.float32 or (dtype == torch.bfloat16 and mkldnn_bf16_available())
    if kernels == "mkldnn" or (cpu_auto and onednn_dtype and mkldnn_available()):
        backend = "mkldnn"
        program.set_backend("mkldnn")  # what the native kernels cannot run stays on oneDNN
    if kernels == "native" or (cpu_auto and dtype == torch.float32 and native.available()) or (
            cpu_auto and dtype == torch.bfloat16 and native_bf16_preferred()):
        steps = native.use_native_kernels(program)
        isa = native.isa() + ("-bf16" if dtype == torch.bfloat16 else "")
        backend = f"native ({isa}, {steps} fused steps)" + (" + mkldnn" if backend == "mkldnn" else "")
    elif cpu_auto and dtype == torch.bfloat16 and native.available():
        pools = native.use_native_kernels(program, pools_only=True)
        backend += f" + native max-pools ({native.isa()}, {pools})"
    elif use_triton or use_cudnn:
        if use_cudnn:
            backend = "cudnn"
            program.set_backend("cudnn")
        if use_triton:
            base = "cudnn fused" if use_cudnn else "cudnn"
            backend = "triton" if kernels == "triton" else f"experimental (triton or {base} per depthwise layer)"
            program.set_backend("triton", depthwise_only=True)
    return backend, use_triton, use_cudnn
