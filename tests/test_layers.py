"""SeparableConv2d and the padding rules, against float64 references built from standard convolutions."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xception.layers import (
    BatchNorm2d,
    DepthwiseConv2d,
    SeparableConv2d,
    TFSamePad2d,
    make_divisible,
    same_padding,
    tf_same_padding,
)
from xception.layers import _PixelRowsBatchNorm as PixelRowsBatchNorm


def _fill(module: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return module.double()


def test_separable_conv_is_a_standard_conv_with_a_factorised_kernel():
    # A depthwise k×k then pointwise 1×1 conv equals one k×k conv with kernel W[n, m] = P[n, m] · D[m].
    sep = _fill(SeparableConv2d(5, 7, 3, padding="symmetric"))
    x = torch.randn(2, 5, 9, 9, dtype=torch.float64)
    depth = sep.depthwise.weight[:, 0]  # (M, k, k)
    point = sep.pointwise.weight[:, :, 0, 0]  # (N, M)
    full = point[:, :, None, None] * depth[None]  # (N, M, k, k)
    torch.testing.assert_close(sep(x), F.conv2d(x, full, padding=1))


def test_depth_multiplier_feeds_the_pointwise_step_m_times_the_channels():
    sep = _fill(SeparableConv2d(3, 4, 3, depth_multiplier=2, padding="symmetric"))
    assert sep.depthwise.weight.shape == (6, 1, 3, 3)
    assert sep.pointwise.weight.shape == (4, 6, 1, 1)
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    # Reference: depthwise filters of channel m are output channels 2m, 2m+1 (PyTorch's grouped layout).
    depth = sep.depthwise.weight[:, 0].reshape(3, 2, 3, 3)
    point = sep.pointwise.weight[:, :, 0, 0].reshape(4, 3, 2)
    full = torch.einsum("nmj,mjab->nmab", point, depth)
    torch.testing.assert_close(sep(x), F.conv2d(x, full, padding=1))


def test_pointwise_first_order_runs_the_1x1_conv_before_the_spatial_conv():
    sep = _fill(SeparableConv2d(5, 7, 3, order="pointwise_first", padding="symmetric"))
    assert [name for name, _ in sep.named_children()] == ["pointwise", "depthwise"]
    assert sep.depthwise.weight.shape == (7, 1, 3, 3)
    x = torch.randn(1, 5, 8, 8, dtype=torch.float64)
    expected = F.conv2d(F.conv2d(x, sep.pointwise.weight), sep.depthwise.weight, padding=1, groups=7)
    torch.testing.assert_close(sep(x), expected)


@pytest.mark.parametrize("activation, kind", [("relu", nn.ReLU), ("elu", nn.ELU)])
def test_intermediate_activation_sits_between_the_two_steps(activation, kind):
    sep = SeparableConv2d(4, 6, activation=activation)
    names = [name for name, _ in sep.named_children()]
    assert names == ["depthwise", "act", "pointwise"]
    assert isinstance(sep.act, kind)
    _fill(sep)
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    plain = F.conv2d(F.conv2d(x, sep.depthwise.weight, padding=1, groups=4), sep.pointwise.weight)
    with_act = F.conv2d(kind()(F.conv2d(x, sep.depthwise.weight, padding=1, groups=4)), sep.pointwise.weight)
    torch.testing.assert_close(sep(x), with_act)
    assert not torch.allclose(sep(x), plain)


def test_no_activation_and_no_bias_by_default():
    sep = SeparableConv2d(4, 6)
    assert [name for name, _ in sep.named_children()] == ["depthwise", "pointwise"]
    assert sep.depthwise.bias is None and sep.pointwise.bias is None
    assert SeparableConv2d(4, 6, bias=True).pointwise.bias is not None


@pytest.mark.parametrize(
    "size, kernel, stride, expected",
    [
        (74, 3, 2, (0, 1)),  # SPEC: Keras's module-3 max-pool on 74×74 pads (0, 1)
        (147, 3, 2, (1, 1)),
        (37, 3, 2, (1, 1)),
        (19, 3, 2, (1, 1)),
        (147, 1, 2, (0, 0)),  # the 1×1/2 residual convs need no padding
        (10, 3, 1, (1, 1)),
        (8, 4, 1, (1, 2)),  # even kernel, stride 1: the extra pixel goes after
    ],
)
def test_tf_same_padding_values(size, kernel, stride, expected):
    assert tf_same_padding(size, kernel, stride) == expected
    padded = TFSamePad2d(kernel, stride)(torch.zeros(1, 1, size, size))
    out = F.conv2d(padded, torch.zeros(1, 1, kernel, kernel), stride=stride)
    assert out.shape[-1] == -(-size // stride)  # TF 'same' keeps ceil(size / stride)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_tf_same_matches_pytorch_same_at_stride_1_with_even_kernel():
    x = torch.randn(1, 2, 9, 11, dtype=torch.float64)
    w = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(F.conv2d(TFSamePad2d(4, 1)(x), w), F.conv2d(x, w, padding="same"))


def test_tf_and_symmetric_padding_disagree_only_on_strided_even_inputs():
    for rule in ("tf", "symmetric"):
        pad, static = same_padding(3, 1, 1, rule)
        assert pad is None and static == 1  # stride 1: both rules are the static symmetric padding
    pad, static = same_padding(3, 2, 1, "tf")
    assert isinstance(pad, TFSamePad2d) and static == 0
    assert same_padding(3, 2, 1, "symmetric") == (None, 1)
    assert same_padding(3, 1, 4, "tf") == (None, 4)  # dilated: padding grows with the dilation

    torch.manual_seed(0)
    tf = SeparableConv2d(4, 4, 3, 2, padding="tf")
    sym = SeparableConv2d(4, 4, 3, 2, padding="symmetric")
    sym.load_state_dict(tf.state_dict())
    odd, even = torch.randn(1, 4, 9, 9), torch.randn(1, 4, 10, 10)
    torch.testing.assert_close(tf(odd), sym(odd))
    assert tf(even).shape == sym(even).shape == (1, 4, 5, 5)
    assert not torch.allclose(tf(even), sym(even))


def test_max_pool_padding_never_wins_the_max():
    pad = TFSamePad2d(3, 2, value=float("-inf"))
    x = -torch.rand(1, 1, 4, 4) - 1  # all negative: zero padding would leak zeros into the max
    out = F.max_pool2d(pad(x), 3, 2)
    assert (out < 0).all()


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="order must be one of"):
        SeparableConv2d(4, 4, order="sideways")
    with pytest.raises(ValueError, match="pointwise_first"):
        SeparableConv2d(4, 4, order="pointwise_first", depth_multiplier=2)
    with pytest.raises(ValueError, match="padding rule"):
        SeparableConv2d(4, 4, padding="reflect")
    with pytest.raises(ValueError, match="activation"):
        SeparableConv2d(4, 4, activation="gelu")


def test_make_divisible_rounds_to_multiples_of_8():
    assert [make_divisible(c * 0.5) for c in (32, 64, 728, 2048)] == [16, 32, 368, 1024]
    assert make_divisible(3) == 8


@pytest.mark.parametrize("size", [1, 2, 3])
def test_depthwise_on_maps_smaller_than_the_kernel_matches_float64(size: int) -> None:
    torch.manual_seed(0)
    conv = DepthwiseConv2d(12, 12, 3, 1, 1, groups=12, bias=True).to(memory_format=torch.channels_last)
    x = torch.randn(5, 12, size, size + 1).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = conv(x)
    (y**2).sum().backward()

    ref = nn.Conv2d(12, 12, 3, 1, 1, groups=12).double()
    ref.load_state_dict({k: v.double() for k, v in conv.state_dict().items()})
    xr = x.detach().double().requires_grad_()
    yr = ref(xr)
    (yr**2).sum().backward()
    assert y.shape == yr.shape == (5, 12, size, size + 1)
    for got, want in ((y, yr), (x.grad, xr.grad), (conv.weight.grad, ref.weight.grad),
                      (conv.bias.grad, ref.bias.grad)):
        assert (got.double() - want).abs().max() <= 1e-5 * want.abs().max()
    with torch.no_grad():  # inference takes PyTorch's own path: the same outputs
        assert torch.allclose(conv(x), y, atol=1e-6)


@pytest.mark.parametrize(("shape", "momentum"), [((16, 8, 7, 9), 0.1), ((6, 3, 5, 5), None), ((7, 1, 3, 1), 0.3)])
def test_batch_norm_on_few_channels_matches_float64_in_training(shape, momentum, monkeypatch) -> None:
    calls = []
    apply = PixelRowsBatchNorm.apply
    monkeypatch.setattr(PixelRowsBatchNorm, "apply", lambda *a: calls.append(1) or apply(*a))
    torch.manual_seed(0)
    c = shape[1]
    bn, ref = BatchNorm2d(c, eps=1e-3, momentum=momentum), nn.BatchNorm2d(c, eps=1e-3, momentum=momentum).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    ref.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in bn.state_dict().items()})
    for _ in range(2):  # running statistics over two batches, far from zero mean and unit variance
        x = (torch.randn(shape) * 3 + 5).contiguous(memory_format=torch.channels_last).requires_grad_()
        g = torch.randn(shape)
        y = torch.relu_(bn(x))  # as the network uses it: an in-place ReLU on the output
        y.backward(g)
        xr = x.detach().double().requires_grad_()
        yr = torch.relu_(ref(xr))
        yr.backward(g.double())
        assert y.is_contiguous(memory_format=torch.channels_last)
        for got, want in ((y, yr), (x.grad, xr.grad), (bn.weight.grad, ref.weight.grad),
                          (bn.bias.grad, ref.bias.grad), (bn.running_mean, ref.running_mean),
                          (bn.running_var, ref.running_var)):
            assert (got.double() - want).abs().max() <= 1e-5 * want.abs().max()
        assert int(bn.num_batches_tracked) == int(ref.num_batches_tracked)
        bn.zero_grad()
        ref.zero_grad()
    assert len(calls) == 2  # the sums over the NHWC memory ran, not PyTorch's layer


def test_batch_norm_is_pytorchs_layer_where_pytorch_is_not_slow() -> None:
    torch.manual_seed(0)
    for c, layout, train in ((16, torch.channels_last, True), (8, torch.contiguous_format, True),
                             (8, torch.channels_last, False)):
        bn, ref = BatchNorm2d(c).train(train), nn.BatchNorm2d(c).train(train)
        with torch.no_grad():
            bn.running_var.uniform_(0.5, 2)
        ref.load_state_dict(bn.state_dict())
        x = torch.randn(4, c, 5, 5).contiguous(memory_format=layout)
        assert torch.equal(bn(x), ref(x))
        assert torch.equal(bn.running_mean, ref.running_mean)
