"""The bfloat16 kernels (AVX-512 BF16) compute what a float64 computation of the same bfloat16 operands gives.

Their arithmetic: bfloat16 activations and weights; the depthwise step in float32, its result rounded to bfloat16
(A of the GEMM); the GEMM's products summed in float32 from the bias; residual and ReLU; the output rounded to
bfloat16 once. The reference does the same in float64, so a kernel may differ from it by the output's rounding
(half a bfloat16 step, 2^-8 of the value) and by the few elements of A that float32 and float64 round to
neighbouring bfloat16 values (a small fraction of a step of the layer's largest output).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xception
from test_fast_native import _calibrated, _separable  # BatchNorms with real statistics; a separable step
from test_fast_native import _conv as float32_conv
from xception import fast as fast_module
from xception.fast import native
from xception.fast.fused import FusedConv
from xception.layers import TFSamePad2d

pytestmark = pytest.mark.skipif(not native.bf16_available(), reason="no bfloat16 kernels here (need AVX-512 BF16)")


def _conv(*args, **kwargs) -> nn.Conv2d:
    return float32_conv(*args, **kwargs).to(torch.bfloat16).requires_grad_(False)


def _bf16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).double()


def _assert_bf16_close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == torch.bfloat16 and got.shape == want.shape
    assert got.is_contiguous(memory_format=torch.channels_last)
    bound = 2 ** -8 * want.abs() + 2 ** -10 * want.abs().max()
    worst = float(((got.double() - want).abs() - bound).max())
    assert worst <= 0, f"off by {worst} past a bfloat16 rounding"


SEPARABLE = [  # (channels in, out, size, stride, dilation, relu_in, relu_mid + depthwise bias, residual, relu_out)
    (728, 728, 19, 1, 1, True, False, True, False),
    (24, 40, 13, 1, 1, False, True, False, True),
    (91, 45, 11, 1, 1, True, False, True, True),  # odd depth: half a pair at the end of every row of A
    (128, 256, 15, 2, 1, True, False, False, True),
    (37, 33, 9, 1, 2, True, True, True, True),
    (20, 12, 2, 1, 1, True, True, False, False),
    (16, 8, 1, 1, 1, False, False, True, True),
    (1536, 70, 5, 1, 1, True, False, True, True),  # the whole depth in one pass, rows padded off 2 KB multiples
]


@pytest.mark.parametrize(("cin", "cout", "size", "stride", "dilation", "relu_in", "mid", "residual", "relu_out"),
                         SEPARABLE)
def test_separable_conv_matches_float64(cin, cout, size, stride, dilation, relu_in, mid, residual, relu_out):
    step, depthwise, pointwise = _separable(cin, cout, stride, dilation, relu_in, mid, relu_out, torch.bfloat16)
    x = torch.randn(3, cin, size, size).bfloat16()
    y = F.relu(x.double()) if relu_in else x.double()
    y = F.conv2d(y, depthwise.weight.double(), depthwise.bias.double() if mid else None, stride, dilation, dilation,
                 groups=cin)
    a = _bf16(F.relu(y) if mid else y)  # A: the depthwise output, rounded to bfloat16
    y = F.conv2d(a, pointwise.weight.double(), pointwise.bias.double())
    add = torch.randn(y.shape).bfloat16() if residual else None
    if add is not None:
        y = y + add.double()
    _assert_bf16_close(step(x, add=add), F.relu(y) if relu_out else y)


@pytest.mark.parametrize(("cin", "cout", "k", "stride", "size", "tf_pad", "relu_in"), [
    (3, 32, 3, 2, 21, False, False),  # K = 27: odd, patches always
    (32, 64, 3, 1, 17, False, False),  # windows read in place, inside the image
    (3, 32, 3, 2, 20, True, False),
    (64, 128, 1, 2, 15, False, False),  # a strided 1×1 conv
    (91, 50, 1, 2, 9, False, True),
    (19, 45, 1, 1, 11, False, False),  # a 1×1 conv on an odd depth: A copied, a zero half pair at the end
    (24, 40, 1, 1, 11, False, True),  # ... and with the input's ReLU
    (40, 24, 1, 1, 11, False, False),  # read in place
])
def test_plain_pointwise_and_strided_convs_match_float64(cin, cout, k, stride, size, tf_pad, relu_in):
    conv = _conv(cin, cout, k, stride)
    if tf_pad or k == 1:
        conv.padding = (0, 0)
    fused = FusedConv(conv, TFSamePad2d(k, stride) if tf_pad else None)
    fused.relu_in, fused.relu_out = relu_in, True
    step = native.NativeConv(fused)
    x = torch.randn(2, cin, size, size).bfloat16()
    top, bottom, left, right = fused.pads(x)
    xd = F.relu(x.double()) if relu_in else x.double()
    want = F.relu(F.conv2d(F.pad(xd, (left, right, top, bottom)), conv.weight.double(), conv.bias.double(), stride))
    _assert_bf16_close(step(x), want)


def test_the_half_pair_past_an_odd_depth_is_a_real_zero():
    """B's half pair past an odd depth is zero; A's must be too, whatever the scratch held before (0 · NaN)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: both convs use the same scratch
    try:
        spill = native.NativeConv(FusedConv(_conv(21, 8, 1)))  # copies its NaN input into the scratch
        spill(torch.full((1, 21, 16, 16), float("nan")).bfloat16())
        conv = FusedConv(_conv(19, 8, 1))
        conv.relu_out = True
        x = torch.randn(1, 19, 16, 16).bfloat16()
        want = F.relu(F.conv2d(x.double(), conv.weight.double(), conv.bias.double()))
        _assert_bf16_close(native.NativeConv(conv)(x), want)
    finally:
        torch.set_num_threads(before)


def test_a_float32_input_is_refused_with_what_it_is():
    step = native.NativeConv(FusedConv(_conv(8, 8, 1)))
    with pytest.raises(TypeError, match=r"bfloat16 conv got a torch\.float32 input"):
        step(torch.randn(1, 8, 4, 4))


def on_native_kernels(fast: torch.nn.Module) -> bool:
    """Whether every conv of a fast model runs on the native kernels (a FusedConv left is a NativeConv's window)."""
    windows = {id(m.window) for m in fast.modules() if isinstance(m, native.NativeConv)}
    return bool(windows) and all(id(conv) in windows for conv in fast.program.convs())


NETWORKS = [
    ("xception", {}, 74), ("legacy_xception", {}, 71), ("xception41", {}, 64),
    ("xception", {"stem": "small", "width": 0.125, "middle_repeats": 8}, 28),  # odd channel counts
]


@pytest.mark.parametrize(("name", "options", "size"), NETWORKS, ids=[f"{n}{o or ''}" for n, o, _ in NETWORKS])
def test_every_family_runs_on_the_bf16_kernels_within_bf16_error(name, options, size, monkeypatch):
    model = _calibrated(name, **options)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model.double()(x.double())
    model.float()
    fast = xception.optimize(model, dtype=torch.bfloat16, kernels="native")
    assert "avx512-bf16" in fast.settings["kernels"] and fast.settings["replay"]
    assert on_native_kernels(fast), "every conv on the native kernels"
    got = fast(x)
    assert got.dtype == torch.float32
    error = float((got.double() - want).abs().max() / want.abs().max())
    # oneDNN's bf16 route, the reference of the same precision: the native kernels no further off
    monkeypatch.setattr(fast_module, "native_bf16_preferred", lambda: False)
    onednn = xception.optimize(model, dtype=torch.bfloat16)
    assert "native (" not in onednn.settings["kernels"]
    onednn_error = float((onednn(x).double() - want).abs().max() / want.abs().max())
    assert error <= max(2 * onednn_error, 1e-2), (error, onednn_error)


def test_replayed_bf16_passes_and_threads_give_the_layer_by_layer_bits():
    model = _calibrated("xception", width=0.5, middle_repeats=2)
    replayed = xception.optimize(model, dtype=torch.bfloat16)
    plain = xception.optimize(model, dtype=torch.bfloat16, replay=False)
    x = torch.randn(3, 3, 95, 95, generator=torch.Generator().manual_seed(2))
    first, second = replayed(x), replayed(x)  # recorded, then replayed
    assert replayed._run.replayable() == {(3, 3, 95, 95): True}
    before = torch.get_num_threads()
    try:
        outputs = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            outputs.append(plain(x))
    finally:
        torch.set_num_threads(before)
    for out in [second, *outputs]:
        assert torch.equal(out, first)


def test_cpus_with_amx_keep_onednn_for_bf16(monkeypatch):
    monkeypatch.setattr(fast_module, "cpu_flags", lambda: {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
    assert not fast_module.native_bf16_preferred()
    fast = xception.optimize(_calibrated("xception", width=0.25, middle_repeats=1), dtype=torch.bfloat16)
    assert "native max-pools" in fast.settings["kernels"]


def test_forcing_avx2_turns_the_bf16_kernels_off_and_native_bf16_is_refused():
    code = ("import torch, xception\nfrom xception.fast import native\nassert not native.bf16_available()\n"
            "m = xception.create_model('xception', width=0.25, middle_repeats=1).eval()\n"
            "f = xception.optimize(m, dtype=torch.bfloat16)\nassert 'native (' not in f.settings['kernels']\n"
            "try:\n    xception.optimize(m, dtype=torch.bfloat16, kernels='native')\n"
            "except xception.errors.ConfigError as e:\n    assert 'AVX-512 BF16' in str(e)\n"
            "else:\n    raise SystemExit('not refused')\n")
    env = {**os.environ, "XCEPTION_CPU_ISA": "avx2", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
