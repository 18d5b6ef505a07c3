"""The fast inference path computes the plain model's logits: folding is exact, fusion changes nothing.

Tolerances: float32 on CPU, max |Δ| ≤ 1e-4 × the logits' scale (max |logit|); folding itself is checked
in float64 to 1e-12. On CUDA (tests skip without it) bf16 logits match float32 ones to 3e-2 of the
logits' scale: bf16 keeps 8 significant bits, and errors grow over the network's ~40 layers.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xception
from xception import fast as fast_module
from xception.fast import (
    FusedConv,
    FusedXception,
    fold_batch_norms,
    fold_xception,
    fuse_conv_bn_weights,
    native,
    native_bf16_preferred,
    optimize,
    triton_depthwise,
)
from xception.fast import fused as fused_module
from xception.layers import TFSamePad2d
from xception.models import MODELS

CPU_TOL = 1e-4
BF16_TOL = 3e-2
def cuda(test):
    """A test of a CUDA code path: marked for benchmarks/gpu_check.sh (``-m cuda``), skipped without a GPU."""
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")(test))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny convs on a shared 2-core machine: two threads mostly wait for each other (benchmarks/NOTES.md)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomise_batch_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial statistics and affine parameters, so that folding has something to fold."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.3)
    return model


def small(name: str = "xception", **kw) -> xception.Xception:
    model = xception.create_model(name, **{"width": 0.125, "middle_repeats": 1, "num_classes": 10, **kw})
    return randomise_batch_norms(model).eval()


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


# -- folding --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["plain", "depthwise", "pointwise", "strided_with_bias"])
def test_folding_a_batch_norm_into_its_conv_is_exact_in_float64(kind):
    conv = {
        "plain": nn.Conv2d(3, 8, 3, bias=False),
        "depthwise": nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),
        "pointwise": nn.Conv2d(8, 16, 1, bias=False),
        "strided_with_bias": nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=True),
    }[kind].double()
    bn = randomise_batch_norms(nn.BatchNorm2d(conv.out_channels, eps=1e-3)).double().eval()
    x = torch.randn(2, conv.in_channels, 9, 9, dtype=torch.float64)
    expected = bn(conv(x))
    weight, bias = fuse_conv_bn_weights(conv, bn)
    folded = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    torch.testing.assert_close(folded, expected, rtol=0, atol=1e-12)


def test_folding_refuses_mismatched_channels():
    with pytest.raises(ValueError, match="cannot fold"):
        fuse_conv_bn_weights(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(4))


@pytest.mark.parametrize("name", list(MODELS))
def test_every_batch_norm_after_a_conv_folds_and_the_model_still_agrees_in_float64(name):
    model = small(name).double()
    x = torch.randn(2, 3, 71, 71, dtype=torch.float64)
    expected = model(x)
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    folded = fold_xception(model)
    left = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    # Only the pre-activation family keeps BatchNorms: each module's `pre` reads a residual sum, not a conv
    # (the first module's `pre` reads the stem's last conv, so it folds).
    if MODELS[name].arch.endswith("p"):
        assert left and all(n.endswith(".pre.bn") for n in left)
        assert "entry_flow.block2.pre.bn" not in left
    else:
        assert left == []
    assert folded + len(left) == bns
    torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-10)


def test_a_batch_norm_before_a_conv_is_not_folded():
    seq = nn.Sequential(nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, padding=1))
    assert fold_batch_norms(seq) == 0


# -- the fast path on CPU -------------------------------------------------------------------------------

VARIANTS = [(name, {}) for name in MODELS] + [
    ("xception", {"output_stride": 16}),
    ("xception", {"stem": "small"}),
    ("xception", {"separable_order": "pointwise_first"}),
    ("xception", {"activation": "relu", "residual": False}),
    ("legacy_xception", {"global_pool": "max", "output_stride": 8}),
    ("xception41", {"padding": "tf"}),
]


@pytest.mark.parametrize("kernels", ["torch", "mkldnn"])
@pytest.mark.parametrize(("name", "options"), VARIANTS, ids=[f"{n}-{o}" for n, o in VARIANTS])
def test_the_fast_path_computes_the_plain_models_logits(name, options, kernels):
    if kernels == "mkldnn" and not fused_module.mkldnn_available():
        pytest.skip("this PyTorch has no oneDNN")
    model = small(name, **options)
    size = 32 if options.get("stem") == "small" else 75  # odd sizes exercise TF's asymmetric padding
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = model(x)
    fast = optimize(model, kernels=kernels)
    out = fast(x)
    assert out.dtype == torch.float32 and out.shape == expected.shape
    assert relative_error(out, expected) <= CPU_TOL
    assert fast.settings["kernels"] == kernels


def test_the_fast_path_matches_the_full_size_paper_model():
    model = randomise_batch_norms(xception.create_model("xception")).eval()
    x = torch.randn(1, 3, 299, 299)
    with torch.no_grad():
        expected = model(x)
    assert relative_error(optimize(model)(x), expected) <= CPU_TOL


def test_auto_picks_the_native_kernels_on_cpu_and_onednn_without_them(monkeypatch):
    model = small("xception")
    if native.available():
        assert optimize(model).settings["kernels"].startswith(f"native ({native.isa()}")
    monkeypatch.setattr(native, "available", lambda: False)
    assert optimize(model).settings["kernels"] == ("mkldnn" if fused_module.mkldnn_available() else "torch")


def test_onednn_fuses_relus_adds_and_pads(monkeypatch):
    monkeypatch.setattr(native, "available", lambda: False)
    model = small("xception")  # TF padding: strided max-pools pad (0, 1)
    fast = optimize(model)
    assert fast.settings["kernels"] == ("mkldnn" if fused_module.mkldnn_available() else "torch")
    assert fast.settings["folded_batch_norms"] == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    program = fast.program
    assert not any(isinstance(m, nn.BatchNorm2d) for m in program.modules())
    # Every ReLU went into a conv: after it as a post-op, or, at the start of a module (whose shortcut
    # needs the un-activated input), into the depthwise conv that reads it.
    assert not any(isinstance(m, nn.ReLU) for m in program.modules())
    convs = program.convs()
    relus = sum(isinstance(m, nn.ReLU) for m in model.modules())
    assert sum(c.relu_in for c in convs) + sum(c.relu_out for c in convs) == relus
    assert sum(c.relu_in for c in convs) == 4  # modules 3, 4, the middle one, 13
    # TF 'same' zero pads moved into the convs; only the max-pools' -inf pads remain as steps.
    pads = {n: m for n, m in program.named_modules() if isinstance(m, TFSamePad2d)}
    assert pads and all((m.value == 0.0) == n.endswith(".pad") for n, m in pads.items())
    # The residual adds happen inside the shortcut convs and the middle module's last conv.
    x = torch.randn(1, 3, 75, 75)
    with torch.no_grad():
        assert relative_error(fast(x), model(x)) <= CPU_TOL


def test_batch_sizes_other_than_the_first_still_agree():
    model = small("legacy_xception")
    fast = optimize(model, batch_size=3, input_size=71)
    for n in (1, 4):
        x = torch.randn(n, 3, 71, 71)
        with torch.no_grad():
            assert relative_error(fast(x), model(x)) <= CPU_TOL


def test_nchw_and_float64_requests_work_too():
    model = small("legacy_xception")
    x = torch.randn(2, 3, 71, 71)
    with torch.no_grad():
        expected = model.double()(x.double())
    assert relative_error(optimize(model, channels_last=False)(x), expected) <= CPU_TOL
    fast64 = optimize(model, dtype=torch.float64)
    assert fast64.settings["kernels"] == "torch"  # oneDNN's fused ops are float32 only: clean fallback
    assert relative_error(fast64(x), expected) <= 1e-10


def test_optimize_leaves_the_model_alone():
    model = small("xception41").train()
    before = copy.deepcopy(model.state_dict())
    optimize(model)
    assert model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_the_fast_path_checks_its_input_like_the_model():
    fast = optimize(small("xception"))
    with pytest.raises(ValueError, match="channels"):
        fast(torch.randn(1, 1, 75, 75))
    with pytest.raises(ValueError, match="at least 71"):
        fast(torch.randn(1, 3, 40, 40))


def test_bad_requests_say_what_to_do():
    model = small("xception")
    with pytest.raises(ValueError, match="kernels must be one of"):
        optimize(model, kernels="fastest")
    with pytest.raises(ValueError, match="features_only"):
        optimize(xception.create_model("xception", width=0.125, middle_repeats=1, features_only=True))
    with pytest.raises(TypeError, match=r"xception\.Xception"):
        optimize(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="floating-point"):
        optimize(model, dtype=torch.int8)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            optimize(model, device="cuda")
        with pytest.raises(ValueError, match="cuda_graphs"):
            optimize(model, cuda_graphs=True)
        if not triton_depthwise.interpreting():
            with pytest.raises(ValueError, match="kernels='triton'"):
                optimize(model, kernels="triton")
        with pytest.raises(ValueError, match="kernels='cudnn' needs a CUDA device"):
            optimize(model, kernels="cudnn")


def test_a_cudnn_request_on_cpu_falls_back_to_pytorch_ops():
    program = FusedXception(fold_copy(small("xception"))).set_backend("cudnn")
    assert {c.backend for c in program.convs()} == {"torch"}


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 0.0)])
def test_bias_through_the_batch_norm_kernel_is_a_plain_add(dtype, tol):
    """The cudnn backend adds biases with BatchNorm's kernel: it must be y + b up to rounding."""
    y = torch.randn(4, 16, 9, 9, dtype=dtype).contiguous(memory_format=torch.channels_last)
    bias = torch.randn(16, dtype=dtype)
    out = fused_module.add_channel_bias(y, bias, torch.ones_like(bias) - fused_module.BIAS_EPS,
                                        torch.zeros_like(bias))
    expected = y.double() + bias.double().view(1, -1, 1, 1)
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
    assert ((out.double() - expected).abs() / expected.abs().clamp_min(1)).max() <= max(tol, 2 ** -8)


@pytest.mark.parametrize("name", ["xception", "legacy_xception", "xception41"])
def test_bf16_fast_path_on_cpu_matches_float32_within_bf16_tolerance(name):
    model = small(name)
    x = torch.randn(2, 3, 75, 75)
    with torch.no_grad():
        expected = model(x)
    fast = optimize(model, dtype=torch.bfloat16)
    out = fast(x)
    assert fast.settings["dtype"] == "bfloat16" and out.dtype == torch.float32
    assert relative_error(out, expected) <= BF16_TOL
    if native_bf16_preferred():  # every conv on the native bf16 kernels
        from test_fast_bf16 import on_native_kernels

        assert "bf16" in fast.settings["kernels"] and on_native_kernels(fast)
    elif fused_module.mkldnn_bf16_available():  # every 1×1 conv then runs as a GEMM
        pointwise = [c for c in fast.program.convs() if c.pointwise]
        assert pointwise and all(c._matrix is not None for c in pointwise)


@pytest.mark.parametrize("stride, add, relu", [(1, False, False), (2, True, True), (1, True, False)])
def test_a_bf16_pointwise_conv_as_a_gemm_is_the_conv(stride, add, relu):
    if not fused_module.mkldnn_bf16_available():
        pytest.skip("oneDNN has no native bfloat16 on this CPU: 1×1 convs stay convolutions")
    conv = nn.Conv2d(24, 40, 1, stride=stride, bias=True).to(torch.bfloat16)
    fused = FusedConv(conv)
    fused.relu_out = relu
    fused.set_backend("mkldnn")
    assert fused._matrix is not None
    x = torch.randn(3, 24, 11, 11, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    out_hw = (11 - 1) // stride + 1
    residual = torch.randn(3, 40, out_hw, out_hw, dtype=torch.bfloat16) if add else None  # NCHW on purpose
    y = fused(x, residual)
    if fused_module.onednn_linear_available():
        fused._packed = None  # the plain-PyTorch GEMM must agree too
        torch.testing.assert_close(fused(x, residual).float(), y.float(), rtol=2e-2, atol=2e-2)
    expected = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), stride=stride)
    if add:
        expected = expected + residual.double()
    if relu:
        expected = expected.relu()
    assert y.shape == expected.shape and y.dtype == torch.bfloat16
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert relative_error(y.float(), expected.float()) <= 2e-2


# -- clean fallbacks ------------------------------------------------------------------------------------


def test_without_triton_everything_falls_back_to_pytorch(monkeypatch):
    monkeypatch.setattr(triton_depthwise, "triton", None)
    assert not triton_depthwise.available("cuda")
    model = small("xception41")
    x = torch.randn(1, 3, 71, 71)
    program = FusedXception(fold_copy(model), prefer_relu_in=True).set_backend("triton", depthwise_only=True)
    assert {c.backend for c in program.convs()} == {"torch"}  # asked for Triton, got PyTorch, no error
    with torch.no_grad():
        assert relative_error(program(x), model(x)) <= CPU_TOL
    with pytest.raises(RuntimeError, match="Triton is not installed"):
        triton_depthwise.depthwise_conv2d(x, torch.randn(3, 1, 3, 3))


def test_without_onednn_auto_uses_pytorch_ops(monkeypatch):
    monkeypatch.setattr(native, "available", lambda: False)
    monkeypatch.setattr(fused_module, "mkldnn_available", lambda: False)
    monkeypatch.setattr(fast_module, "mkldnn_available", lambda: False)
    model = small("xception")
    fast = optimize(model)
    assert fast.settings["kernels"] == "torch"
    assert {c.backend for c in fast.program.convs()} == {"torch"}
    x = torch.randn(1, 3, 75, 75)
    with torch.no_grad():
        assert relative_error(fast(x), model(x)) <= CPU_TOL
    with pytest.raises(ValueError, match="oneDNN"):
        optimize(model, kernels="mkldnn")


def test_fused_conv_refuses_unknown_backends():
    with pytest.raises(ValueError, match="backend must be one of"):
        FusedConv(nn.Conv2d(2, 2, 1)).set_backend("cublas")


def fold_copy(model: nn.Module) -> nn.Module:
    model = copy.deepcopy(model)
    fold_xception(model)
    return model


# -- CUDA (skipped here; run by benchmarks/gpu_check.sh) --------------------------------------------------


@cuda
@pytest.mark.parametrize("name", ["xception", "legacy_xception", "xception41", "xception41p"])
@pytest.mark.parametrize("kernels", ["torch", "auto", "cudnn", "experimental"])
def test_bf16_fast_path_on_cuda_matches_float32_within_bf16_tolerance(name, kernels):
    model = small(name)
    x = torch.randn(4, 3, 75, 75)
    with torch.no_grad():
        expected = model(x)
    fast = optimize(model, device="cuda", kernels=kernels)
    out = fast(x)
    assert out.dtype == torch.float32 and out.device.type == "cuda"
    assert relative_error(out.cpu(), expected) <= BF16_TOL


@cuda
def test_cuda_graphs_replay_the_same_logits():
    model = small("legacy_xception")
    x = torch.randn(4, 3, 75, 75, device="cuda")
    plain = optimize(model, device="cuda", kernels="torch")(x)
    graphed = optimize(model, device="cuda", kernels="torch", cuda_graphs=True, batch_size=4, input_size=75)
    first, second = graphed(x), graphed(x * 2)
    torch.testing.assert_close(first, plain, rtol=0, atol=1e-5)
    assert not torch.equal(first, second)  # outputs are copies, not the graph's buffer


@cuda
@pytest.mark.skipif(not triton_depthwise.available("cuda"), reason="needs Triton and CUDA")
def test_triton_depthwise_is_used_where_it_wins_and_agrees_with_cudnn():
    model = small("xception")
    x = torch.randn(4, 3, 75, 75)
    fast = optimize(model, device="cuda", kernels="triton", dtype=torch.float32)
    ref = optimize(model, device="cuda", kernels="torch", dtype=torch.float32)
    assert relative_error(fast(x), ref(x)) <= 1e-4
    chosen = optimize(model, device="cuda", kernels="experimental", batch_size=4, input_size=75)
    assert chosen.kernel_choices and all(c["backend"] in ("cudnn", "triton") for c in chosen.kernel_choices.values())
    assert chosen.settings["kernels"].startswith("experimental (triton or cudnn fused")
    assert relative_error(chosen(x), ref(x)) <= 1e-4


@cuda
def test_the_cuda_default_is_pytorchs_verified_kernels():
    fast = optimize(small("xception"), device="cuda")
    assert fast.settings["kernels"] == "torch" and not fast.kernel_choices
    assert {c.backend for c in fast.program.convs()} == {"torch"}


@cuda
def test_cudnn_fused_convs_agree_with_pytorch_ops_in_float32():
    model = small("xception")
    x = torch.randn(4, 3, 75, 75)
    fused = optimize(model, device="cuda", kernels="cudnn", dtype=torch.float32)
    plain = optimize(model, device="cuda", kernels="torch", dtype=torch.float32)
    assert {c.backend for c in fused.program.convs()} == {"cudnn"}
    torch.backends.cudnn.allow_tf32 = False
    try:
        assert relative_error(fused(x).cpu(), plain(x).cpu()) <= 1e-4
    finally:
        torch.backends.cudnn.allow_tf32 = True


@pytest.mark.slow
def test_compiled_fast_path_is_frozen_and_agrees():
    from torch._inductor.utils import run_and_get_code

    model = small("xception")
    x = torch.randn(1, 3, 75, 75)
    fast = optimize(model, compile=True)
    out, code = run_and_get_code(fast, x)
    assert "_frozen_param" in code[0]  # weights became constants: Inductor's freezing took effect
    with torch.no_grad():
        assert relative_error(out, model(x)) <= CPU_TOL
