"""The compiled CPU kernels compute what PyTorch computes, in float64, on every instruction set they have.

Each kernel is checked on its own (a separable conv with every option, plain and strided convs, max-pools,
odd channel counts that leave partial register tiles, pixel counts that leave partial row tiles), then
whole networks of every family through ``xception.optimize``. The AVX2 kernels run in a subprocess with
``XCEPTION_CPU_ISA=avx2`` so that an AVX-512 machine tests both.
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
from xception import fast as fast_module
from xception.fast import native
from xception.fast.fused import FusedConv
from xception.layers import TFSamePad2d

pytestmark = pytest.mark.skipif(not native.available(), reason=f"no compiled CPU kernels here ({native.isa()})")


def _conv(cin: int, cout: int, k: int, stride: int = 1, dilation: int = 1, groups: int = 1, bias: bool = True,
          seed: int = 0) -> nn.Conv2d:
    torch.manual_seed(seed)
    conv = nn.Conv2d(cin, cout, k, stride, dilation * (k // 2), dilation, groups=groups, bias=bias)
    conv.weight.data.normal_(0, (k * k * cin / groups) ** -0.5)
    if bias:
        conv.bias.data.normal_(0, 0.5)
    return conv


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want).abs().max() / want.abs().max())


def _separable(cin: int, cout: int, stride: int, dilation: int, relu_in: bool, mid: bool, relu_out: bool,
               dtype: torch.dtype = torch.float32) -> tuple[native.NativeConv, FusedConv, FusedConv]:
    """A depthwise + pointwise pair (ReLU before, bias + ReLU between when ``mid``) on the kernels, and its parts."""
    depthwise = FusedConv(_conv(cin, cin, 3, stride, dilation, groups=cin, bias=mid, seed=1).to(dtype))
    pointwise = FusedConv(_conv(cin, cout, 1, seed=2).to(dtype))
    depthwise.relu_in, depthwise.relu_out, pointwise.relu_out = relu_in, mid, relu_out
    return native.NativeConv(depthwise, pointwise), depthwise, pointwise


SEPARABLE = [  # (channels in, out, size, stride, dilation, relu_in, relu_mid + depthwise bias, residual, relu_out)
    (728, 728, 19, 1, 1, True, False, True, False),
    (24, 40, 13, 1, 1, False, True, False, True),
    (150, 300, 11, 1, 1, True, False, True, True),  # groups of B's panels, the last group short, its last panel ragged
    (128, 256, 15, 2, 1, True, False, False, True),
    (37, 33, 9, 1, 2, True, True, True, True),
    (3, 5, 7, 2, 2, False, False, False, False),
    (20, 12, 2, 1, 1, True, True, False, False),  # windows past the border above and below at once, runs of 2
    (16, 8, 1, 1, 1, False, False, True, True),  # a 1 × 1 map: one output, its window all padding but the centre
    (1000, 40, 5, 1, 1, True, False, True, True),  # K past one panel depth (768 on AVX2): partial sums, a short last
]


@pytest.mark.parametrize(("cin", "cout", "size", "stride", "dilation", "relu_in", "mid", "residual", "relu_out"),
                         SEPARABLE)
def test_separable_conv_matches_float64(cin, cout, size, stride, dilation, relu_in, mid, residual, relu_out):
    step, depthwise, pointwise = _separable(cin, cout, stride, dilation, relu_in, mid, relu_out)
    x = torch.randn(3, cin, size, size, dtype=torch.float64)
    y = F.relu(x) if relu_in else x
    y = F.conv2d(y, depthwise.weight.double(), depthwise.bias.double() if mid else None, stride, dilation, dilation,
                 groups=cin)
    y = F.conv2d(F.relu(y) if mid else y, pointwise.weight.double(), pointwise.bias.double())
    add = torch.randn_like(y) if residual else None
    if add is not None:
        y = y + add
    want = F.relu(y) if relu_out else y
    got = step(x.float(), add=add.float() if add is not None else None)
    assert got.shape == want.shape and got.is_contiguous(memory_format=torch.channels_last)
    assert _relative_error(got, want) < 1e-5


@pytest.mark.parametrize(("cin", "cout", "k", "stride", "size", "tf_pad"), [
    (3, 32, 3, 2, 21, False), (32, 64, 3, 1, 17, False), (3, 32, 3, 2, 20, True), (5, 7, 3, 1, 6, True),
    (64, 128, 1, 2, 15, False), (728, 1024, 1, 2, 19, False), (19, 45, 1, 1, 11, False),
])
def test_plain_and_strided_convs_match_float64(cin, cout, k, stride, size, tf_pad):
    conv = _conv(cin, cout, k, stride)
    if tf_pad or k == 1:
        conv.padding = (0, 0)
    fused = FusedConv(conv, TFSamePad2d(k, stride) if tf_pad else None)
    fused.relu_out = True
    step = native.NativeConv(fused)
    x = torch.randn(2, cin, size, size, dtype=torch.float64)
    top, bottom, left, right = fused.pads(x)
    with torch.no_grad():
        want = F.relu(F.conv2d(F.pad(x, (left, right, top, bottom)), conv.weight.double(), conv.bias.double(), stride))
    got = step(x.float())
    assert got.shape == want.shape
    assert _relative_error(got, want) < 1e-5


@pytest.mark.parametrize(("channels", "size", "tf_pad"), [(128, 147, True), (24, 10, True), (37, 9, False)])
def test_max_pool_with_residual_matches_pytorch(channels, size, tf_pad):
    x = torch.randn(2, channels, size, size)
    if tf_pad:
        pool, pad = nn.MaxPool2d(3, 2), TFSamePad2d(3, 2, value=float("-inf"))
        want = pool(pad(x))
    else:
        pool, pad = nn.MaxPool2d(3, 2, 1), None
        want = pool(x)
    add = torch.randn_like(want)
    got = native.NativeMaxPool(pool, pad)(x, add=add)
    assert torch.equal(got, want + add)  # max and one add: exact


def _calibrated(name: str, **options) -> xception.Xception:
    model = xception.create_model(name, **options).eval()
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


NETWORKS = [
    ("legacy_xception", {}, 71), ("xception", {}, 74), ("xception41", {}, 64), ("xception65p", {}, 64),
    ("xception", {"stem": "small", "width": 0.25, "middle_repeats": 2}, 28),
    ("xception", {"output_stride": 16, "width": 0.5, "middle_repeats": 1}, 80),
    ("xception", {"separable_order": "pointwise_first", "width": 0.5, "middle_repeats": 1}, 71),
]


@pytest.mark.parametrize(("name", "options", "size"), NETWORKS, ids=[f"{n}{o or ''}" for n, o, _ in NETWORKS])
def test_every_family_gives_the_plain_models_logits(name, options, size):
    model = _calibrated(name, **options)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model.double()(x.double())
    model.float()
    fast = xception.optimize(model, kernels="native")
    assert fast.settings["kernels"].startswith("native")
    assert _relative_error(fast(x), want) < 1e-4


def test_threads_split_the_work_without_changing_a_bit():
    model = _calibrated("xception", width=0.5, middle_repeats=2)
    fast = xception.optimize(model, kernels="native")
    x = torch.randn(3, 3, 95, 95)  # 3·12·12 = 432 pixels in the middle flow: blocks of unequal tiles
    before = torch.get_num_threads()
    outputs = []
    try:
        for threads in (1, 2, 3):  # the blocks are a multiple of the thread count
            torch.set_num_threads(threads)
            outputs.append(fast(x))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outputs[0], outputs[1])
    assert torch.equal(outputs[0], outputs[2])


def test_replayed_passes_give_the_layer_by_layer_bits():
    model = _calibrated("xception", width=0.5, middle_repeats=2)
    replayed = xception.optimize(model, kernels="native")
    plain = xception.optimize(model, kernels="native", replay=False)
    assert replayed.settings["replay"] and not plain.settings["replay"]
    g = torch.Generator().manual_seed(2)
    inputs = [torch.randn(shape, generator=g) for shape in [(1, 3, 71, 71), (3, 3, 80, 80)] * 2]
    got = [replayed(x) for x in inputs]  # each shape recorded, then replayed
    assert replayed._run.replayable() == {(1, 3, 71, 71): True, (3, 3, 80, 80): True}
    for x, y in zip(inputs, got, strict=True):
        assert torch.equal(y, plain(x))  # and no later pass wrote over an earlier pass's logits


def test_a_pass_with_a_step_outside_the_kernels_runs_layer_by_layer(monkeypatch):
    model = _calibrated("xception", width=0.25, middle_repeats=1)
    fast = xception.optimize(model, kernels="native")
    x = torch.randn(2, 3, 71, 71)
    want = fast(x)
    fast._run.reset()
    pool = next(m for m in fast.modules() if isinstance(m, native.NativeMaxPool))
    forward = pool.forward
    monkeypatch.setattr(pool, "forward", lambda h, add=None: forward(h, add) * 1.0)  # a copy the kernels did not make
    assert torch.equal(fast(x), want)
    assert fast._run.replayable() == {(2, 3, 71, 71): False}
    assert torch.equal(fast(x), want)


def test_replay_keeps_the_plans_of_the_last_shapes_only():
    fast = xception.optimize(_calibrated("xception", width=0.25, middle_repeats=1), kernels="native")
    fast._run.max_shapes = 2
    for size in (83, 71, 77, 71):
        fast(torch.randn(1, 3, size, size))
    assert list(fast._run.replayable()) == [(1, 3, 77, 77), (1, 3, 71, 71)]


def test_without_the_kernels_the_fast_path_runs_on_onednn(monkeypatch):
    model = _calibrated("xception", width=0.25, middle_repeats=1)
    monkeypatch.setattr(native, "available", lambda: False)
    fast = xception.optimize(model)
    assert fast.settings["kernels"] == "mkldnn"
    assert not any(isinstance(m, native.NativeConv) for m in fast.modules())
    x = torch.randn(2, 3, 71, 71)
    with torch.no_grad():
        want = model(x)
    assert _relative_error(fast(x), want.double()) < 1e-4
    with pytest.raises(ValueError, match="compiled CPU kernels"):
        xception.optimize(model, kernels="native")


@pytest.mark.skipif(native.isa() != "avx512", reason="the AVX2 kernels are tested separately on AVX-512 machines")
def test_the_avx2_kernels_too():
    """Rerun this file's kernel tests with the AVX2 kernels forced."""
    env = {**os.environ, "XCEPTION_CPU_ISA": "avx2", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", "not avx2_kernels_too"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


@pytest.mark.parametrize("with_residual", [False, True])
def test_bf16_max_pool_is_exact_and_rounds_the_residual_sum_once(with_residual):
    torch.manual_seed(3)
    x = torch.randn(2, 37, 15, 15).bfloat16().contiguous(memory_format=torch.channels_last)
    pool = native.NativeMaxPool(nn.MaxPool2d(3, 2, 1))
    out_hw = 8
    add = torch.randn(2, 37, out_hw, out_hw).bfloat16() if with_residual else None
    got = pool(x, add)
    pooled = F.max_pool2d(x.double(), 3, 2, 1)
    expected = (pooled + add.double()).bfloat16() if with_residual else pooled.bfloat16()  # one rounding
    assert got.dtype == torch.bfloat16 and got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got, expected)


def test_bf16_on_onednn_runs_its_max_pools_on_the_native_kernels(monkeypatch):
    monkeypatch.setattr(fast_module, "native_bf16_preferred", lambda: False)  # a CPU without AVX-512 BF16, or AMX
    model = xception.create_model("legacy_xception", width=0.25, middle_repeats=1).eval()
    x = torch.randn(2, 3, 75, 75)
    fast = xception.optimize(model, dtype=torch.bfloat16)
    assert "native max-pools" in fast.settings["kernels"]
    assert sum(isinstance(m, native.NativeMaxPool) for m in fast.program.modules()) == 4
    with torch.no_grad():
        expected = model(x)
    out = fast(x)
    assert ((out - expected).abs().max() / expected.abs().max()) <= 3e-2
