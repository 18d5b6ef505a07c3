"""A benchmark run, step by step: build each contender → warm it up → check its output → one memory pass
each → time them all in turns (with the GEMM anchor) → the report.

Timing in turns (repeat 1 of every contender, then repeat 2 of every contender, …) means that a noisy
neighbour slows all of them alike; figures are medians over the repeats, and ratios are only ever taken
between contenders of the same run (of their medians, and turn by turn: the report's ``paired_ratios``).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..runtime import synchronize, time_call
from .base import BuildContext, Contender, Skip
from .config import BenchConfig
from .contenders import ContenderSpec, specs_for
from .measure import GEMM_SIZE, gemm_flops_runner, peak_memory, time_in_turns
from .models import Models, flops_per_image, relative_error
from .report import environment, make_report
from .stats import Result

Say = Callable[[str], None]


@dataclass
class Entry:
    """A contender that was set up, and the result its figures go into."""

    contender: Contender
    result: Result


def run_benchmark(cfg: BenchConfig, progress: Say | None = None) -> dict[str, Any]:
    """Measure every mode of ``cfg`` (see the module doc) and return the report as a JSON-ready dict."""
    cfg = cfg.resolved()
    specs = specs_for(cfg.modes)
    with _torch_threads(cfg.threads):
        return _run(cfg, specs, progress or (lambda _msg: None))


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run(cfg: BenchConfig, specs: list[ContenderSpec], say: Say) -> dict[str, Any]:
    device = torch.device(cfg.device)
    keep = _keep_freed_memory(cfg, device)
    x = torch.randn(cfg.batch_size, 3, cfg.input_size, cfg.input_size,
                    generator=torch.Generator().manual_seed(0)).to(device)
    with tempfile.TemporaryDirectory(prefix="xception-bench-") as tmp:
        models = Models(cfg, Path(tmp))
        results, entries = [], []
        for spec in specs:
            say(f"setting up {spec.name}")
            result, contender = set_up(spec, cfg, x, models)
            results.append(result)
            if result.status != "ok":
                say(f"  {result.status}: {result.reason}")
            if contender is not None:
                entries.append(Entry(contender, result))
        anchor = _anchor(device)
        if cfg.measure_memory:
            memory_pass(entries, device, say)
        time_all([*entries, anchor], cfg.repeats, device, say)
    return make_report(cfg, [*results, anchor.result], environment(device), keep_memory=keep,
                       flops=flops_per_image(cfg))


def _keep_freed_memory(cfg: BenchConfig, device: torch.device) -> bool:
    if device.type != "cpu" or not cfg.keep_memory:
        return False
    from ..fast.memory import keep_freed_memory

    return keep_freed_memory()  # process-wide: applies to every contender alike


def set_up(spec: ContenderSpec, cfg: BenchConfig, x: torch.Tensor,
           models: Models) -> tuple[Result, Contender | None]:
    """Build, warm up and check one contender; a contender that cannot run comes back as a skipped or
    failed result (and None), so that the others still run."""
    device = x.device
    ctx = BuildContext(cfg, x, device, spec.dtype(cfg.resolved_dtype()), spec.network, models)
    result = Result(spec.name, spec.kind, network=spec.network, precision=_name(ctx.dtype))
    start = time.perf_counter()
    try:
        if (why := spec.unmet_requirement(device)) is not None:
            raise Skip(why)
        contender = spec.build(ctx)
        for _ in range(cfg.warmup):
            contender.run()
        synchronize(device)
        if cfg.check_outputs and spec.kind == "inference":
            contender.details["max_rel_err"] = relative_error(contender.run(), models.reference(spec.network, x))
    except Skip as why:
        result.status, result.reason = "skipped", str(why)
        return result, None
    except Exception as err:  # a failing contender is reported, the others still run
        result.status, result.reason = "failed", f"{type(err).__name__}: {err}"
        return result, None
    result.setup_s = round(time.perf_counter() - start, 2)
    result.batch_size, result.details = contender.batch_size, contender.details
    if contender.precision is not None:
        result.precision = _name(contender.precision)
    return result, contender


def _anchor(device: torch.device) -> Entry:
    run, flops, dtype = gemm_flops_runner(device)
    details = {"size": GEMM_SIZE, "dtype": dtype, "flops_per_call": flops}
    run()  # warm-up
    return Entry(Contender(run, 0, details=details), Result("gemm", "anchor", details=details, precision=dtype))


def memory_pass(entries: list[Entry], device: torch.device, say: Say) -> None:
    """Peak memory of one call of each contender, one after the other (see :func:`peak_memory`)."""
    for entry in entries:
        say(f"memory pass: {entry.result.name}")
        contender = entry.contender
        peak, method = peak_memory(contender.memory_run or contender.run, device)
        entry.result.peak_memory_bytes = peak
        entry.result.details["memory_method"] = f"{method}; {contender.memory_note}" if contender.memory_note \
            else method


def time_all(entries: list[Entry], repeats: int, device: torch.device, say: Say) -> None:
    """Every entry's times, measured in turns."""
    runs = {entry.result.name: entry.contender.run for entry in entries}
    times = time_in_turns(runs, repeats, lambda fn: time_call(fn, device), say)
    for entry in entries:
        entry.result.times_ms = times[entry.result.name]


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
