"""The fast path's compiled CPU kernels are built wherever they can be, and a build that failed is said.

These tests are never skipped for want of the kernels: that is exactly the case they exist for.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import platform
import shlex
import shutil
import sysconfig

import pytest
import torch

import xception
from xception.errors import ConfigError
from xception.fast import native
from xception.runtime import cpu_flags


def _compiler() -> str | None:
    """The C++ compiler a build of the extension uses here (as setuptools picks it), if it is installed."""
    command = os.environ.get("CXX") or sysconfig.get_config_var("CXX") or "c++"
    return shutil.which(shlex.split(command)[0])


def test_the_kernels_are_built_wherever_a_compiler_and_the_cpu_allow():
    """On x86-64 with AVX2 + FMA and a C++ compiler, installing the package must have built the kernels."""
    if platform.machine() not in ("x86_64", "AMD64") or not {"avx2", "fma"} <= cpu_flags():
        pytest.skip("not an x86-64 CPU with AVX2 + FMA: the kernels cannot run here")
    if _compiler() is None:
        pytest.skip("no C++ compiler here, so the kernels could not be built (the fast path warns and uses oneDNN)")
    expected = "avx512" if {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= cpu_flags() else "avx2"
    found = native.problem()
    assert native.isa() == (os.environ.get("XCEPTION_CPU_ISA") or expected), found and found[0]


def _tiny() -> xception.Xception:
    return xception.create_model("xception", num_classes=3, in_chans=1, stem="small", width=0.125,
                                 middle_repeats=1).eval()


@pytest.fixture
def unbuilt(monkeypatch):
    """As if the extension had not been built at install time."""
    real = importlib.util.find_spec
    monkeypatch.setattr(native, "available", lambda: False)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "xception.fast._cpu" else real(name, *a))
    native.warn_if_unavailable.cache_clear()
    yield
    native.warn_if_unavailable.cache_clear()


def test_a_missing_build_is_said_once_with_its_cause_consequence_and_fix(unbuilt, caplog):
    model = _tiny()
    with caplog.at_level(logging.INFO, logger="xception.fast"):
        first = xception.optimize(model)
        xception.optimize(model)
    warnings = [r for r in caplog.records if r.name == "xception.fast"]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    text = warnings[0].getMessage()
    assert "were not built" in text and "oneDNN" in text and "0.77×" in text and "apt-get install g++" in text
    assert first.settings["kernels"] == "mkldnn"  # and the fast path still runs, on oneDNN
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(first(x), model(x), rtol=1e-4, atol=1e-4)


def test_a_cpu_without_the_instruction_sets_is_told_not_warned(monkeypatch, caplog):
    monkeypatch.setattr(native, "available", lambda: False)
    monkeypatch.setattr(native, "_load_error", lambda: None)
    native.warn_if_unavailable.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger="xception.fast"):
            assert native.warn_if_unavailable() is False
    finally:
        native.warn_if_unavailable.cache_clear()
    if importlib.util.find_spec("xception.fast._cpu") is not None:  # built here: the CPU is the reason given
        (record,) = [r for r in caplog.records if r.name == "xception.fast"]
        assert record.levelno == logging.INFO and "neither AVX-512 nor AVX2" in record.getMessage()


def test_experimental_cuda_kernels_are_refused_on_a_cpu():
    with pytest.raises(ConfigError, match=r"experimental.*needs a CUDA device"):
        xception.optimize(_tiny(), kernels="experimental")
