"""Benchmarks that tell the truth: every contender in one process, on the same input, measured in turns.

:func:`run_benchmark` builds each contender (our model in each mode, timm's ``legacy_xception``,
ONNX Runtime on either's ONNX export, when those are installed), warms each up, measures its peak memory
in a separate pass, then times them **in turns**: repeat 1 of every contender, then repeat 2 of every
contender, and so on, so that a noisy neighbour slows all of them alike. Figures are medians over the
repeats; ratios are only ever taken between contenders of the same run. A GEMM (2048² float32 matmul on
CPU, bfloat16 on GPU) runs in the same turns as an anchor: ``of_gemm`` is the model's throughput over
the throughput it would have if all its FLOPs ran at that GEMM's rate.

Every contender starts from the same weights (BatchNorm statistics calibrated on random images, so that
folding them is not trivial), and each inference contender's output is compared with the float32 eager
output of its network: ``max_rel_err`` = max |Δ| / max |reference| is in its details.

Timing uses CUDA events on GPU (synchronising after each call) and ``time.perf_counter`` on CPU.
Peak memory is, on CUDA, ``max_memory_allocated`` during one call minus what was allocated before it;
on CPU, the peak resident set size (sampled from ``/proc/self/statm`` every millisecond by a thread)
during one call minus the resident size just before it, after handing free heap pages back to the
kernel so that reused pages count (ONNX Runtime gets an arena-less session for this pass, since an arena
would hide its working set). Both exclude the weights, which stay resident.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

SCHEMA = "xception-bench/1"

INFERENCE_MODES: tuple[str, ...] = (
    "eager", "compiled", "fast", "fast-compiled", "fast-graphs", "fast-compiled-graphs",
    "timm", "timm-compiled", "ort-timm", "ort-ours",
)
TRAINING_MODES: tuple[str, ...] = ("train-eager", "train-compiled", "train-timm", "train-timm-compiled")
ALL_MODES: tuple[str, ...] = INFERENCE_MODES + TRAINING_MODES
DEFAULT_MODES = {
    "cpu": ("eager", "fast", "timm", "ort-timm"),
    "cuda": ("eager", "compiled", "fast", "fast-compiled", "fast-graphs", "timm", "timm-compiled"),
}
GEMM_SIZE = 2048
TIMM_MODEL = "legacy_xception"


class Skip(Exception):
    """A contender that cannot run here (a package or device missing): reported, not an error."""


@dataclass
class BenchConfig:
    """What to measure. ``modes`` come from :data:`ALL_MODES`; None picks the device's defaults."""

    model: str = "legacy_xception"
    device: str = "cpu"
    batch_size: int = 8
    train_batch_size: int | None = None
    input_size: int = 299
    modes: Sequence[str] | None = None
    repeats: int = 10
    warmup: int = 2
    dtype: str | None = None  # None: float32 on CPU, bfloat16 on CUDA
    threads: int | None = None
    keep_memory: bool = True
    measure_memory: bool = True
    check_outputs: bool = True
    model_options: dict[str, Any] = field(default_factory=dict)

    def resolved_modes(self) -> tuple[str, ...]:
        kind = torch.device(self.device).type
        modes = tuple(self.modes) if self.modes else DEFAULT_MODES.get(kind, DEFAULT_MODES["cpu"])
        unknown = [m for m in modes if m not in ALL_MODES]
        if unknown:
            raise ValueError(f"unknown mode(s) {unknown}; known: {', '.join(ALL_MODES)}")
        return modes

    def resolved_dtype(self) -> torch.dtype:
        if self.dtype is None:
            return torch.bfloat16 if torch.device(self.device).type == "cuda" else torch.float32
        try:
            dtype = getattr(torch, self.dtype)
        except AttributeError:
            dtype = None
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        return dtype

    def validate(self) -> BenchConfig:
        if self.batch_size < 1 or (self.train_batch_size is not None and self.train_batch_size < 1):
            raise ValueError("batch sizes must be ≥ 1")
        if self.repeats < 1 or self.warmup < 0:
            raise ValueError(f"need repeats ≥ 1 and warmup ≥ 0, got {self.repeats} and {self.warmup}")
        if self.input_size < 1:
            raise ValueError(f"input_size must be ≥ 1, got {self.input_size}")
        device = parse_device(self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda asked for, but CUDA is not available here; use --device cpu")
        self.resolved_modes()
        self.resolved_dtype()
        return self


def parse_device(text: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``; anything else is a ValueError that says so."""
    try:
        device = torch.device(text)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu, cuda or cuda:N, got {text!r}")
    return device


@dataclass
class Result:
    """One contender's figures. ``times_ms`` are per call, in the order measured."""

    name: str
    kind: str  # "inference" | "training" | "anchor"
    status: str = "ok"  # "ok" | "skipped" | "failed"
    reason: str = ""
    batch_size: int = 0
    times_ms: list[float] = field(default_factory=list)
    setup_s: float = 0.0
    peak_memory_bytes: int | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def median_ms(self) -> float | None:
        return statistics.median(self.times_ms) if self.times_ms else None

    @property
    def images_per_s(self) -> float | None:
        med = self.median_ms
        return self.batch_size / (med / 1e3) if med and self.kind != "anchor" else None

    def latency_ms(self) -> dict[str, float] | None:
        if not self.times_ms:
            return None
        return {"p50": percentile(self.times_ms, 50), "p90": percentile(self.times_ms, 90),
                "p99": percentile(self.times_ms, 99), "min": min(self.times_ms), "max": max(self.times_ms)}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(median_ms=self.median_ms, images_per_s=self.images_per_s, latency_ms=self.latency_ms())
        return data


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile with linear interpolation between order statistics (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


# -- timing and memory ---------------------------------------------------------------------------------


class Timer:
    """Times one call: CUDA events on GPU (then synchronises), ``perf_counter`` on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], Any]) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        start_s = time.perf_counter()
        fn()
        return (time.perf_counter() - start_s) * 1e3


def time_in_turns(
    runs: dict[str, Callable[[], Any]], repeats: int, timer: Callable[[Callable[[], Any]], float],
    progress: Callable[[str], None] | None = None,
) -> dict[str, list[float]]:
    """Milliseconds per call of each run, measured in turns (one call of each, ``repeats`` times over).

    Taking turns rather than measuring one contender after the other is what makes ratios between
    them trustworthy on a shared machine: a burst of load from elsewhere slows every contender alike.
    """
    times: dict[str, list[float]] = {name: [] for name in runs}
    for rep in range(repeats):
        if progress:
            progress(f"repeat {rep + 1}/{repeats}")
        for name, run in runs.items():
            times[name].append(timer(run))
    return times


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory(fn: Callable[[], Any], device: torch.device) -> tuple[int | None, str]:
    """(bytes above the pre-call level at the call's peak, how it was measured); see the module doc."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before, "cuda max_memory_allocated - allocated before"
    if not os.path.exists("/proc/self/statm"):
        return None, "unavailable (needs /proc/self/statm)"
    from .fast.memory import release_freed_memory

    release_freed_memory()
    before = _rss_bytes()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.001):
            peak[0] = max(peak[0], _rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    peak[0] = max(peak[0], _rss_bytes())
    return peak[0] - before, "peak RSS (1 ms samples) - RSS before, after malloc_trim"


# -- contenders -----------------------------------------------------------------------------------------


@dataclass
class Contender:
    """A named thing to time: ``run()`` does one batch; ``memory_run`` (if set) replaces it for the memory pass."""

    name: str
    kind: str
    run: Callable[[], Any]
    batch_size: int
    memory_run: Callable[[], Any] | None = None
    details: dict[str, Any] = field(default_factory=dict)
    reference: str | None = None  # "ours" / "timm": which float32 eager output this one should match


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _ours(cfg: BenchConfig) -> nn.Module:
    from .models import build_model

    return build_model(cfg.model, **cfg.model_options).eval()


def _timm_model() -> nn.Module:
    try:
        import timm
    except ImportError:
        raise Skip("timm is not installed") from None
    return timm.create_model(TIMM_MODEL, pretrained=False).eval()


def calibrate_batch_norms(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Give every BatchNorm the statistics of ``x``'s activations, as training would (one pass).

    Freshly initialised BatchNorms are identities (mean 0, variance 1), which makes folding them trivial
    and lets activations drift in scale layer after layer; real statistics make the output checks mean
    what they would on a trained network.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: one pass sets the statistics exactly
    model.train()
    with torch.no_grad():
        model(x)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    return model.eval()


class Models:
    """The networks every contender copies: built once, seeded, with calibrated BatchNorm statistics, so
    that every mode computes from the same weights and outputs can be checked against a float32 reference."""

    def __init__(self, cfg: BenchConfig) -> None:
        self.cfg = cfg
        self._built: dict[str, nn.Module] = {}
        self._reference: dict[str, torch.Tensor] = {}

    def get(self, which: str) -> nn.Module:
        """A fresh copy of ``"ours"`` or ``"timm"``."""
        if which not in self._built:
            torch.manual_seed(0)
            model = _ours(self.cfg) if which == "ours" else _timm_model()
            size = self.cfg.input_size
            calib = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
            self._built[which] = calibrate_batch_norms(model, calib)
        return copy.deepcopy(self._built[which])

    def reference(self, which: str, x: torch.Tensor) -> torch.Tensor:
        """The float32 eager output of ``which`` on ``x`` (computed once, in chunks, on x's device)."""
        if which not in self._reference:
            model = self.get(which).to(x.device)
            with torch.inference_mode():
                out = torch.cat([model(chunk).float() for chunk in x.split(64)])
            self._reference[which] = out.cpu()
            del model
        return self._reference[which]


def relative_error(output: Any, reference: torch.Tensor) -> float:
    """max |output − reference| / max |reference| (outputs may be tensors or ONNX Runtime's arrays)."""
    if isinstance(output, (list, tuple)):
        output = output[0]
    out = torch.as_tensor(output).detach().float().cpu()
    return ((out - reference).abs().max() / reference.abs().max().clamp_min(1e-30)).item()


def _eager_runner(model: nn.Module, x: torch.Tensor, device: torch.device, dtype: torch.dtype,
                  compiled: bool) -> Callable[[], Any]:
    """The plain model as users run it: float32 NCHW on CPU; bf16 autocast + channels_last on CUDA."""
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    fn = torch.compile(model) if compiled else model
    autocast = device.type == "cuda" and dtype != torch.float32

    def run() -> Any:
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=autocast):
            return fn(x)

    return run


def _train_runner(model: nn.Module, batch: int, cfg: BenchConfig, device: torch.device, dtype: torch.dtype,
                  compiled: bool) -> Callable[[], Any]:
    """One SGD step (forward, cross-entropy, backward, update); bf16 autocast + channels_last on CUDA."""
    model = model.to(device).train()
    x = torch.randn(batch, 3, cfg.input_size, cfg.input_size, device=device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    classes = model.num_classes if hasattr(model, "num_classes") else 1000
    target = torch.randint(0, max(classes, 1), (batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    fn = torch.compile(model) if compiled else model
    autocast = device.type == "cuda" and dtype != torch.float32
    loss_fn = nn.CrossEntropyLoss()

    def step() -> Any:
        with torch.autocast(device.type, dtype=dtype, enabled=autocast):
            loss = loss_fn(fn(x), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step


def export_onnx(model: nn.Module, x: torch.Tensor, path: Path) -> None:
    """Write ``model`` as ONNX (TorchScript exporter: fast and dependable for plain CNNs)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["logits"],
                              opset_version=17, dynamo=False)
        except TypeError:  # older torch without the dynamo switch
            torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["logits"], opset_version=17)


def _ort_runner(model: nn.Module, x: torch.Tensor, device: torch.device, threads: int | None,
                workdir: Path, name: str) -> tuple[Callable[[], Any], Callable[[], Any], dict[str, Any]]:
    try:
        import onnxruntime as ort
    except ImportError:
        raise Skip("onnxruntime is not installed") from None
    provider = "CPUExecutionProvider"
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise Skip("onnxruntime has no CUDAExecutionProvider here")
        provider = "CUDAExecutionProvider"
    path = workdir / f"{name}.onnx"
    start = time.perf_counter()
    export_onnx(model.float().cpu().eval(), x.float().cpu(), path)
    export_s = time.perf_counter() - start

    def session(arena: bool) -> Any:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.enable_cpu_mem_arena = arena
        if threads:
            opts.intra_op_num_threads = threads
        return ort.InferenceSession(str(path), opts, providers=[provider])

    sess = session(arena=True)
    feed = {"x": x.float().cpu().numpy()}
    # The memory pass gets its own arena-less session, created and warmed here so that loading the
    # model is not counted as the call's working set.
    plain = session(arena=False)
    plain.run(None, feed)

    details = {"export_s": round(export_s, 2), "provider": provider, "onnxruntime": ort.__version__}
    return (lambda: sess.run(None, feed)), (lambda: plain.run(None, feed)), details


def gemm_flops_runner(device: torch.device) -> tuple[Callable[[], Any], int, str]:
    """The anchor: a GEMM_SIZE² matmul (float32 on CPU, bfloat16 on CUDA) and its FLOPs."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(GEMM_SIZE, GEMM_SIZE, generator=gen).to(device, dtype)
    b = torch.randn(GEMM_SIZE, GEMM_SIZE, generator=gen).to(device, dtype)
    # Several matmuls per call on GPU, where one takes ~20 µs and launch overhead would dominate.
    reps = 20 if device.type == "cuda" else 1

    def run() -> Any:
        for _ in range(reps):
            out = a @ b
        return out

    return run, 2 * GEMM_SIZE**3 * reps, str(dtype).removeprefix("torch.")


def build_contender(mode: str, cfg: BenchConfig, x: torch.Tensor, workdir: Path, models: Models) -> Contender:
    """Set up one mode; raises :class:`Skip` when it cannot run here."""
    from .fast import optimize

    device, dtype = torch.device(cfg.device), cfg.resolved_dtype()
    if mode in ("eager", "compiled"):
        runner = _eager_runner(models.get("ours"), x, device, dtype, mode == "compiled")
        return Contender(mode, "inference", runner, x.shape[0], details={"model": cfg.model}, reference="ours")
    if mode.startswith("fast"):
        graphs = mode.endswith("graphs")
        if graphs and device.type != "cuda":
            raise Skip("CUDA graphs need a CUDA device")
        fast = optimize(models.get("ours"), device=device, dtype=dtype, compile="compiled" in mode,
                        cuda_graphs=graphs, batch_size=x.shape[0], input_size=cfg.input_size,
                        keep_memory=cfg.keep_memory)
        details = {"model": cfg.model, **fast.settings}
        if fast.kernel_choices:
            details["kernel_choices"] = fast.kernel_choices
        return Contender(mode, "inference", lambda: fast(x), x.shape[0], details=details, reference="ours")
    if mode in ("timm", "timm-compiled"):
        runner = _eager_runner(models.get("timm"), x, device, dtype, mode == "timm-compiled")
        return Contender(mode, "inference", runner, x.shape[0], details={"model": f"timm {TIMM_MODEL}"},
                         reference="timm")
    if mode in ("ort-timm", "ort-ours"):
        which = "timm" if mode == "ort-timm" else "ours"
        run, memory_run, details = _ort_runner(models.get(which), x, device, cfg.threads, workdir, mode)
        return Contender(mode, "inference", run, x.shape[0], memory_run=memory_run, details=details,
                         reference=which)
    if mode in TRAINING_MODES:
        batch = cfg.train_batch_size or cfg.batch_size
        model = models.get("timm" if "timm" in mode else "ours")
        run = _train_runner(model, batch, cfg, device, dtype, mode.endswith("compiled"))
        return Contender(mode, "training", run, batch, details={"optimizer": "SGD momentum 0.9"})
    raise ValueError(f"unknown mode {mode!r}")


# -- the run --------------------------------------------------------------------------------------------


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and hardware, recorded with every run."""
    env: dict[str, Any] = {
        "device": str(device), "torch": torch.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "cpu": _cpu_name(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    for package in ("timm", "onnxruntime", "triton"):
        try:
            env[package] = __import__(package).__version__
        except Exception:
            env[package] = None
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
    with contextlib.suppress(OSError):
        env["load_average"] = [round(v, 2) for v in os.getloadavg()]
    return env


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def flops_per_image(cfg: BenchConfig) -> int:
    """2 × multiply-adds of one forward pass (convs and the classifier), from the cost accounting."""
    from .analysis import model_cost

    return 2 * model_cost(_ours(cfg), cfg.input_size).macs


def run_benchmark(cfg: BenchConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure every mode of ``cfg`` (see the module doc) and return the report as a JSON-ready dict."""
    cfg.validate()
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, progress or (lambda _msg: None))
    finally:
        torch.set_num_threads(threads)


def _run(cfg: BenchConfig, say: Callable[[str], None]) -> dict[str, Any]:
    device, dtype = torch.device(cfg.device), cfg.resolved_dtype()
    keep = False
    if device.type == "cpu" and cfg.keep_memory:
        from .fast.memory import keep_freed_memory

        keep = keep_freed_memory()  # process-wide: applies to every contender alike
    x = torch.randn(cfg.batch_size, 3, cfg.input_size, cfg.input_size,
                    generator=torch.Generator().manual_seed(0)).to(device)

    results: list[Result] = []
    contenders: list[tuple[Contender, Result]] = []
    timer = Timer(device)
    gemm_run, gemm_flops, gemm_dtype = gemm_flops_runner(device)
    anchor = Contender("gemm", "anchor", gemm_run, 0, details={"size": GEMM_SIZE, "dtype": gemm_dtype,
                                                                "flops_per_call": gemm_flops})
    models = Models(cfg)
    with tempfile.TemporaryDirectory(prefix="xception-bench-") as tmp:
        for mode in cfg.resolved_modes():
            say(f"setting up {mode}")
            result = Result(mode, "training" if mode in TRAINING_MODES else "inference")
            start = time.perf_counter()
            try:
                contender = build_contender(mode, cfg, x, Path(tmp), models)
                for _ in range(cfg.warmup):
                    contender.run()
                _sync(device)
                if cfg.check_outputs and contender.reference is not None:
                    contender.details["max_rel_err"] = relative_error(
                        contender.run(), models.reference(contender.reference, x))
            except Skip as why:
                result.status, result.reason = "skipped", str(why)
                results.append(result)
                say(f"  skipped: {why}")
                continue
            except Exception as err:  # a failing contender is reported, the others still run
                result.status, result.reason = "failed", f"{type(err).__name__}: {err}"
                results.append(result)
                say(f"  failed: {result.reason}")
                continue
            result.setup_s = round(time.perf_counter() - start, 2)
            result.batch_size, result.details = contender.batch_size, contender.details
            results.append(result)
            contenders.append((contender, result))
        anchor_result = Result("gemm", "anchor", details=anchor.details)
        anchor.run()
        contenders.append((anchor, anchor_result))

        if cfg.measure_memory:
            for contender, result in contenders:
                if contender.kind == "anchor":
                    continue
                say(f"memory pass: {contender.name}")
                result.peak_memory_bytes, method = peak_memory(contender.memory_run or contender.run, device)
                result.details["memory_method"] = method

        times = time_in_turns({c.name: c.run for c, _ in contenders}, cfg.repeats, timer, say)
        for contender, result in contenders:
            result.times_ms = times[contender.name]
    results.append(anchor_result)
    return make_report(cfg, results, environment(device), keep_memory=keep, flops=flops_per_image(cfg),
                       dtype=dtype)


def make_report(cfg: BenchConfig, results: list[Result], env: dict[str, Any], *, keep_memory: bool,
                flops: int, dtype: torch.dtype) -> dict[str, Any]:
    """The JSON report: settings, environment, every result, the anchor and the ratios between them."""
    by_name = {r.name: r for r in results if r.status == "ok"}
    gemm = by_name.get("gemm")
    anchors: dict[str, Any] = {}
    if gemm is not None and gemm.median_ms:
        gflops = gemm.details["flops_per_call"] / (gemm.median_ms / 1e3) / 1e9
        anchors["gemm"] = {"gflops": gflops, "images_per_s_at_gemm_rate": gflops * 1e9 / flops,
                           "dtype": gemm.details["dtype"], "size": gemm.details["size"]}
    ratios: dict[str, dict[str, float]] = {}
    for r in results:
        if r.status != "ok" or r.kind == "anchor" or not r.images_per_s:
            continue
        row: dict[str, float] = {}
        references = ("timm", "timm-compiled", "ort-timm", "eager") if r.kind == "inference" \
            else ("train-timm", "train-timm-compiled", "train-eager")
        for ref in references:
            other = by_name.get(ref)
            if other is not None and other.images_per_s and ref != r.name:
                row[f"vs_{ref.replace('-', '_')}"] = r.images_per_s / other.images_per_s
        if r.kind == "inference" and "gemm" in anchors:
            row["of_gemm"] = r.images_per_s / anchors["gemm"]["images_per_s_at_gemm_rate"]
        ratios[r.name] = row
    return {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {
            "model": cfg.model, "model_options": cfg.model_options, "device": cfg.device,
            "dtype": str(dtype).removeprefix("torch."), "batch_size": cfg.batch_size,
            "train_batch_size": cfg.train_batch_size or cfg.batch_size, "input_size": cfg.input_size,
            "modes": list(cfg.resolved_modes()), "repeats": cfg.repeats, "warmup": cfg.warmup,
            "threads": torch.get_num_threads(), "keep_memory": keep_memory, "flops_per_image": flops,
            "same_network_as_timm": cfg.model == "legacy_xception" and not cfg.model_options,
            "check_outputs": cfg.check_outputs,
        },
        "environment": env,
        "results": [r.to_dict() for r in results],
        "anchors": anchors,
        "ratios": ratios,
    }


def write_report(report: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write the JSON report atomically (never a half-written file)."""
    from .fileio import atomic_write

    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(report, indent=2)))


def format_report(report: dict[str, Any]) -> str:
    """The table ``xception bench`` prints: one row per contender, ratios against the anchors."""
    s = report["settings"]
    rows = []
    ref_cols = ("vs_timm", "vs_timm_compiled", "vs_ort_timm", "of_gemm")
    train_cols = ("vs_train_timm", "vs_train_timm_compiled")
    for r in report["results"]:
        if r["kind"] == "anchor":
            continue
        if r["status"] != "ok":
            rows.append((r["name"], r["status"], r["reason"][:60], "", "", "", "", "", "", "", "", ""))
            continue
        lat, ratio = r["latency_ms"], report["ratios"].get(r["name"], {})
        cols = ref_cols if r["kind"] == "inference" else (*train_cols, "", "")
        mem = r["peak_memory_bytes"]
        rows.append((
            r["name"], f"{r['images_per_s']:,.1f}", f"{lat['p50']:,.1f}", f"{lat['p90']:,.1f}", f"{lat['p99']:,.1f}",
            f"{mem / 2**20:,.0f}" if mem is not None else "-",
            *(f"{ratio[c]:.2f}×" if c and c in ratio else "" for c in cols),
            f"{r['details']['max_rel_err']:.0e}" if "max_rel_err" in r["details"] else "", f"{r['setup_s']:.0f}",
        ))
    headers = ["mode", "img/s", "p50 ms", "p90 ms", "p99 ms", "peak MiB", "vs timm", "vs timm-c", "vs ort-timm",
               "of GEMM", "max err", "setup s"]
    lines = [f"{s['model']} · {s['device']} · {s['dtype']} · batch {s['batch_size']} (train {s['train_batch_size']}) · "
             f"{s['input_size']} px · {s['repeats']} repeats in turns, medians · {s['threads']} threads",
             _table(rows, headers)]
    gemm = report["anchors"].get("gemm")
    if gemm:
        lines.append(f"anchor: {gemm['size']}² {gemm['dtype']} matmul at {gemm['gflops']:,.1f} GFLOP/s "
                     f"= {gemm['images_per_s_at_gemm_rate']:,.2f} img/s at {s['flops_per_image'] / 1e9:.2f} "
                     "GFLOP/image")
    lines.append("training rows: 'vs timm' columns compare with train-timm / train-timm-compiled; max err: "
                 "max |Δ| / max |logit| against the float32 eager model")
    if not s.get("same_network_as_timm", True) and any(r["name"].startswith(("timm", "ort-timm", "train-timm"))
                                                          for r in report["results"]):
        lines.append(f"note: {s['model']} with {s['model_options']} is not timm's {TIMM_MODEL}: "
                     "ratios against timm compare different networks")
    return "\n".join(lines)


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """Plain-text columns: the first left-aligned, the rest (numbers) right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        padded = (c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        return "  ".join(padded).rstrip()

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths), *(line(r) for r in cells[1:])])
