"""Benchmarks that tell the truth: every contender in one process, on the same input, measured in turns.

:func:`run_benchmark` builds each contender (our model in each mode and in int8, timm's ``legacy_xception``,
ONNX Runtime and OpenVINO on either's ONNX export, the edge runtimes, when those are installed), warms each
up, checks its output against the float32 eager output of its network, measures its peak memory in a
separate pass, then times them all **in turns**, with a GEMM as an anchor. The modules follow that pipeline:

- :mod:`.config`      what to measure (:class:`BenchConfig`) and the defaults that depend on the device
- :mod:`.contenders`  the table of contenders: one :class:`ContenderSpec` per mode
- :mod:`.base`        what a build function gets (:class:`~.base.BuildContext`) and gives (a contender)
- :mod:`.builders`    how each is built: our model's files opened through :mod:`xception.inference`
- :mod:`.int8`        the int8 contenders, all calibrated on the same images
- :mod:`.models`      the shared, calibrated networks, their float32 references and the files made of them
- :mod:`.measure`     timing in turns, peak memory of one call, the GEMM anchor
- :mod:`.runner`      :func:`run_benchmark`: build → warm up → check → memory pass → time in turns
- :mod:`.stats`       :class:`Result`, medians and percentiles
- :mod:`.report`      the JSON report, the printed table, writing the report
"""

from .base import Skip
from .config import DEFAULT_MODES, BenchConfig, parse_device
from .contenders import ALL_MODES, CONTENDERS, INFERENCE_MODES, SPECS, TRAINING_MODES, ContenderSpec
from .measure import GEMM_SIZE, gemm_flops_runner, peak_memory, time_in_turns
from .models import TIMM_MODEL, calibrate_batch_norms, flops_per_image, relative_error
from .report import SCHEMA, environment, format_report, make_report, write_report
from .runner import run_benchmark
from .stats import Result, percentile

__all__ = [
    "ALL_MODES",
    "CONTENDERS",
    "DEFAULT_MODES",
    "GEMM_SIZE",
    "INFERENCE_MODES",
    "SCHEMA",
    "SPECS",
    "TIMM_MODEL",
    "TRAINING_MODES",
    "BenchConfig",
    "ContenderSpec",
    "Result",
    "Skip",
    "calibrate_batch_norms",
    "environment",
    "flops_per_image",
    "format_report",
    "gemm_flops_runner",
    "make_report",
    "parse_device",
    "peak_memory",
    "percentile",
    "relative_error",
    "run_benchmark",
    "time_in_turns",
    "write_report",
]
