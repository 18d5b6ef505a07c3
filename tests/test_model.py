"""The paper's model and its relatives: counts, shapes, features, dilation, gradients, ablations, errors."""

import ast
import subprocess
import sys
from collections import Counter

import pytest
import torch
from torch import nn

import xception
from xception.errors import ConfigError
from xception.layers import SeparableConv2d, TFSamePad2d
from xception.models import MODELS, XceptionConfig, XceptionModule, model_config


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def small(name: str = "xception", **kw) -> xception.Xception:
    """A narrow, shallow member of the family: same wiring, fast on CPU."""
    return xception.create_model(name, **{"width": 0.125, "middle_repeats": 1, **kw})


@pytest.fixture(scope="module")
def paper() -> xception.Xception:
    return xception.create_model("xception").eval()


def modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter has imported after running ``code``."""
    done = subprocess.run([sys.executable, "-c", f"import sys\n{code}\nprint(sorted(sys.modules))"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return set(ast.literal_eval(done.stdout.strip().splitlines()[-1]))


def ours(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.startswith("xception"))


HELP = """
import runpy
sys.argv = ["xception", *ARGS]
try:
    runpy.run_module("xception", run_name="__main__")
except SystemExit:
    pass
"""


def test_the_package_names_its_surface_and_loads_it_on_first_use():
    assert set(xception.__all__) <= set(dir(xception))
    for name in xception.__all__:
        assert getattr(xception, name) is not None, name
    from xception import XceptionConfig, create_model  # from-imports go through the same lazy lookup

    assert create_model is xception.api.create_model and XceptionConfig is xception.models.XceptionConfig
    with pytest.raises(AttributeError, match="has no attribute 'nonexistent'"):
        xception.nonexistent  # noqa: B018


def test_importing_the_package_and_asking_the_cli_for_help_do_not_import_torch():
    loaded = modules_after("import xception")
    assert "torch" not in loaded, ours(loaded)
    # python -m xception --help: no command imports torch to register itself, so help stays fast.
    for args in ([], ["train"], ["summary"]):
        loaded = modules_after(HELP.replace("ARGS", repr([*args, "--help"])))
        assert "torch" not in loaded, (args, ours(loaded))
    assert "torch" in modules_after("import xception\nxception.create_model")  # loaded on first use


def test_the_paper_model_has_22_855_952_trainable_parameters(paper):
    assert n_params(paper) == 22_855_952
    with_stats = n_params(paper) + sum(b.numel() for n, b in paper.named_buffers() if "running" in n)
    assert with_stats == 22_910_480  # Keras's "total params" counts BN statistics too


def test_without_the_head_and_counting_bn_statistics_it_matches_keras_notop():
    model = xception.create_model("xception", num_classes=0)
    stats = sum(b.numel() for n, b in model.named_buffers() if "running" in n)
    assert n_params(model) + stats == 20_861_480


def test_the_paper_model_has_36_convolutions_in_14_modules_and_81_weighted_layers(paper):
    blocks = [block for _, block in paper.blocks()]
    stem, modules = blocks[0], blocks[1:]
    assert len(blocks) == 14
    stem_convs = [m for m in stem.modules() if isinstance(m, nn.Conv2d)]
    separable = [m for m in paper.modules() if isinstance(m, SeparableConv2d)]
    assert (len(stem_convs), len(separable)) == (2, 34)
    assert len(stem_convs) + len(separable) == 36  # the paper's 36 convolution layers
    shortcut_convs = [m for b in modules if b.shortcut is not None for m in b.shortcut.modules()
                      if isinstance(m, nn.Conv2d)]
    assert len(shortcut_convs) == 4  # residual 1×1 convs of modules 2, 3, 4 and 13

    # Layers that carry weights, a separable conv counting as one layer (as Keras's SeparableConv2D).
    inside_separable = {id(m) for s in separable for m in s.modules() if m is not s}
    kinds = {nn.Conv2d: "conv", nn.BatchNorm2d: "bn", nn.Linear: "dense", SeparableConv2d: "separable"}
    weighted: Counter[str] = Counter()
    plain_convs = []
    for m in paper.modules():
        own_weights = any(True for _ in m.parameters(recurse=False))
        if id(m) in inside_separable or not (own_weights or isinstance(m, SeparableConv2d)):
            continue
        kind = next((k for cls, k in kinds.items() if isinstance(m, cls)), type(m).__name__)
        weighted[kind] += 1
        if kind == "conv":
            plain_convs.append(m)
    assert weighted == {"conv": 6, "separable": 34, "bn": 40, "dense": 1}
    assert sum(weighted.values()) == 81
    assert {id(m) for m in plain_convs} == {id(m) for m in stem_convs + shortcut_convs}


@pytest.mark.parametrize(
    "name, expected",  # timm's counts (timm 1.0), which their checkpoints need
    [
        ("legacy_xception", 22_855_952),
        ("xception41", 26_969_560),
        ("xception65", 39_916_312),
        ("xception71", 42_338_736),
        ("xception41p", 26_907_752),
        ("xception65p", 39_819_560),
    ],
)
def test_variant_parameter_counts_equal_timms(name, expected):
    assert n_params(xception.create_model(name)) == expected


def test_spatial_sizes_through_the_flows_at_299(paper):
    sizes = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: sizes.__setitem__(n, o.shape[-1]))
             for n, m in paper.named_modules() if n.count(".") <= 2]
    with torch.no_grad():
        logits = paper(torch.randn(1, 3, 299, 299))
    for h in hooks:
        h.remove()
    assert logits.shape == (1, 1000)
    assert sizes["entry_flow.block1.conv1"] == 149
    assert sizes["entry_flow.block1"] == 147
    assert [sizes[f"entry_flow.block{i}"] for i in (2, 3, 4)] == [74, 37, 19]
    assert all(sizes[f"middle_flow.block{i}"] == 19 for i in range(5, 13))
    assert sizes["exit_flow.block13"] == sizes["exit_flow.block14"] == 10


def test_module_names_follow_figure_5_and_keras(paper):
    names = dict(paper.named_parameters())
    for key in [
        "entry_flow.block1.conv1.weight", "entry_flow.block1.conv2_bn.weight",
        "entry_flow.block2.main.sepconv1.depthwise.weight", "entry_flow.block2.shortcut.conv.weight",
        "middle_flow.block12.main.sepconv3.pointwise.weight", "exit_flow.block13.main.sepconv2_bn.bias",
        "exit_flow.block14.main.sepconv2.pointwise.weight", "head.fc.weight",
    ]:
        assert key in names, key
    assert "exit_flow.block14.shortcut.conv.weight" not in names  # the last module has no shortcut
    assert "entry_flow.block2.main.sepconv1_act" not in dict(paper.named_modules())  # module 2 starts without ReLU
    assert isinstance(paper.entry_flow.block3.main[0], nn.ReLU)  # modules 3+ start with one
    assert not paper.entry_flow.block3.main[0].inplace  # ... that must not clobber the shortcut's input


def test_paper_model_uses_keras_bn_epsilon_and_tf_padding(paper):
    assert {m.eps for m in paper.modules() if isinstance(m, nn.BatchNorm2d)} == {1e-3}
    assert any(isinstance(m, TFSamePad2d) for m in paper.modules())
    legacy = xception.create_model("legacy_xception")
    assert {m.eps for m in legacy.modules() if isinstance(m, nn.BatchNorm2d)} == {1e-5}
    assert not any(isinstance(m, TFSamePad2d) for m in legacy.modules())


def test_num_classes_0_returns_pooled_2048_d_features(paper):
    headless = xception.create_model("xception", num_classes=0).eval()
    headless.load_state_dict({k: v for k, v in paper.state_dict().items() if not k.startswith("head.")})
    x = torch.randn(2, 3, 80, 80)
    with torch.no_grad():
        features = headless(x)
        assert features.shape == (2, 2048)
        torch.testing.assert_close(features, paper.forward_head(paper.forward_features(x), pre_logits=True))
        torch.testing.assert_close(features, paper.forward_features(x).mean((2, 3)))


def test_reset_classifier_and_max_pooling():
    model = small(num_classes=7)
    model.reset_classifier(3, global_pool="max")
    assert model.get_classifier().out_features == 3 and model.config.num_classes == 3
    x = torch.randn(2, 3, 72, 72)
    feats = model.forward_features(x)
    torch.testing.assert_close(model.forward_head(feats, pre_logits=True), feats.amax((2, 3)))
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)


def test_options_in_chans_dropout_width_and_repeats():
    model = xception.create_model("xception", in_chans=1, num_classes=10, drop_rate=0.5, width=0.5,
                                  middle_repeats=4)
    assert model.entry_flow.block1.conv1.in_channels == 1
    assert model.head.drop.p == 0.5
    assert len(model.middle_flow) == 4
    assert model.num_features == 1024
    assert model(torch.randn(2, 1, 71, 71)).shape == (2, 10)
    assert n_params(model) < n_params(xception.create_model("xception", in_chans=1, num_classes=10)) / 3


def test_small_stem_takes_fashion_mnist_sized_images_with_the_same_parameters():
    model = xception.create_model("xception", stem="small", in_chans=1, num_classes=10)
    assert n_params(model) == n_params(xception.create_model("xception", in_chans=1, num_classes=10))
    tiny = small(stem="small", in_chans=1, num_classes=10)
    assert tiny(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert [f.reduction for f in tiny.feature_info] == [1, 2, 4, 8, 16]


def test_gradients_reach_every_parameter():
    for name in ("xception", "xception41", "xception41p"):
        model = small(name, num_classes=5, drop_rate=0.2).train()
        loss = nn.functional.cross_entropy(model(torch.randn(2, 3, 71, 71)), torch.tensor([1, 3]))
        loss.backward()
        dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not dead, f"{name}: no gradient for {dead}"


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = small(num_classes=4).train()
    x, y = torch.randn(2, 3, 71, 71), torch.tensor([0, 2])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    nn.functional.cross_entropy(model(x), y).backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.load_state_dict(state)  # undo the BN statistics update of the first pass
    model.set_grad_checkpointing()
    nn.functional.cross_entropy(model(x), y).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, plain[n], msg=n)


@pytest.mark.parametrize("name", ["xception", "xception65", "xception71", "xception65p"])
def test_feature_maps_have_the_reported_channels_and_strides(name):
    backbone = small(name, features_only=True)
    maps = backbone(torch.randn(1, 3, 128, 128))
    assert [f.reduction for f in backbone.feature_info] == [2, 4, 8, 16, 32]
    assert [m.shape[1] for m in maps] == [f.num_chs for f in backbone.feature_info]
    for fmap, info in zip(maps, backbone.feature_info, strict=True):
        # 'same' padding gives ceil(128 / r); the paper's 'valid' stem loses up to 3 pixels on the way.
        assert 128 / info.reduction - 3 <= fmap.shape[-1] <= -(-128 // info.reduction)


def test_feature_channels_of_the_full_paper_model():
    backbone = xception.create_model("xception", features_only=True, out_indices=(1, 4))
    assert [(f.num_chs, f.reduction) for f in backbone.feature_info] == [(128, 4), (2048, 32)]
    maps = backbone(torch.randn(1, 3, 299, 299))
    assert [tuple(m.shape[1:]) for m in maps] == [(128, 74, 74), (2048, 10, 10)]


@pytest.mark.parametrize("name", ["xception", "xception65", "xception71", "xception41p"])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_dilation_keeps_the_requested_output_stride_and_the_parameters(name, output_stride):
    dilated = small(name, output_stride=output_stride, features_only=True)
    plain = small(name, features_only=True)
    assert n_params(dilated) == n_params(plain)  # so checkpoints load at any output stride
    dilated.load_state_dict(plain.state_dict())
    maps = dilated(torch.randn(1, 3, 128, 128))
    assert maps[-1].shape[-1] == 128 // output_stride
    assert [f.reduction for f in dilated.feature_info][-1] == output_stride
    dilations = {m.dilation[0] for m in dilated.modules() if isinstance(m, nn.Conv2d) and m.groups > 1}
    assert max(dilations) == 32 // output_stride


def test_residual_switch_removes_every_shortcut_and_changes_the_output():
    torch.manual_seed(0)
    with_res = small(num_classes=3).eval()
    without = small(num_classes=3, residual=False).eval()
    modules = [(n, b) for n, b in with_res.blocks() if isinstance(b, XceptionModule)]
    assert [n for n, b in modules if b.shortcut is None] == [modules[-1][0]]  # all but the last, as in the paper
    assert all(b.shortcut is None for _, b in without.blocks() if isinstance(b, XceptionModule))
    # The conv shortcuts' weights are gone; everything else is shared.
    shared = {k: v for k, v in with_res.state_dict().items() if k in without.state_dict()}
    missing, unexpected = without.load_state_dict(shared, strict=False)
    assert not missing and not unexpected
    x = torch.randn(1, 3, 71, 71)
    assert not torch.allclose(with_res(x), without(x))


@pytest.mark.parametrize("activation", ["relu", "elu"])
def test_activation_switch_puts_it_inside_every_separable_conv(activation):
    model = small(activation=activation)
    seps = [m for m in model.modules() if isinstance(m, SeparableConv2d)]
    assert seps and all(hasattr(m, "act") for m in seps)
    base = small()
    base.load_state_dict(model.state_dict())  # same parameters: only the graph differs
    x = torch.randn(1, 3, 71, 71)
    assert not torch.allclose(model.eval()(x), base.eval()(x))


def test_pointwise_first_order_is_available_for_the_whole_model():
    model = small(separable_order="pointwise_first")
    assert all(next(iter(m.named_children()))[0] == "pointwise"
               for m in model.modules() if isinstance(m, SeparableConv2d))
    assert model(torch.randn(1, 3, 71, 71)).shape == (1, 1000)


def test_aligned_models_use_strided_separable_convs_instead_of_max_pools():
    model = small("xception41")
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    strided = [m for m in model.modules() if isinstance(m, SeparableConv2d) and m.stride == 2]
    assert len(strided) == 4
    assert all(hasattr(m, "norm") for m in model.modules() if isinstance(m, SeparableConv2d))


def test_config_round_trips_through_a_dict():
    cfg = model_config("xception65", num_classes=21, output_stride=16)
    assert XceptionConfig.from_dict(cfg.to_dict()) == cfg
    assert set(MODELS) == set(xception.list_models())


class TestBadInput:
    def test_wrong_channel_count(self):
        with pytest.raises(ValueError, match="input has 1 channels but the model expects 3; build it with in_chans=1"):
            small()(torch.randn(1, 1, 80, 80))

    def test_input_smaller_than_the_stem_allows(self):
        with pytest.raises(ValueError, match=r'64×64 .* needs at least 71×71; use stem="small"'):
            small()(torch.randn(1, 3, 64, 64))

    def test_not_a_batch_of_images(self):
        with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
            small()(torch.randn(3, 80, 80))

    def test_unknown_model_lists_the_known_ones(self):
        with pytest.raises(ValueError, match="unknown model 'xceptoin'; known models: xception, legacy_xception"):
            xception.create_model("xceptoin")

    def test_impossible_output_stride_says_what_is_allowed(self):
        with pytest.raises(ValueError, match=r"output_stride=4 .* allowed: 8, 16, 32"):
            xception.create_model("xception", output_stride=4)

    @pytest.mark.parametrize(
        "option, message",
        [
            ({"num_classes": -1}, "num_classes must be ≥ 0"),
            ({"width": 0}, "width must be in"),
            ({"activation": "gelu"}, "activation must be one of"),
            ({"padding": "same"}, "padding must be one of"),
            ({"stem": "tiny"}, "stem must be"),
            ({"drop_rate": 1.5}, "drop_rate"),
            ({"colour": "red"}, r"unknown model option\(s\) \['colour'\]"),
        ],
    )
    def test_impossible_options(self, option, message):
        with pytest.raises(ValueError, match=message):
            xception.create_model("xception", **option)

    @pytest.mark.parametrize(
        "option, message",
        [({"width": "abc"}, "width must be a number, got 'abc'"),
         ({"num_classes": 2.5}, "num_classes must be an integer"),
         ({"output_stride": "16"}, "output_stride must be an integer"),
         ({"residual": "False"}, "residual must be true or false")],  # a string would pass as truthy
    )
    def test_options_of_the_wrong_type_are_named(self, option, message):
        with pytest.raises(ConfigError, match=message):
            xception.create_model("xception", **option)

    def test_config_errors_are_config_errors(self):
        with pytest.raises(ConfigError):
            xception.create_model("xceptoin")
        with pytest.raises(ConfigError):
            xception.create_model("xception", colour="red")
        with pytest.raises(ConfigError):
            xception.create_model("xception", output_stride=4)

    def test_errors_come_before_any_computation(self, monkeypatch):
        model = small()
        calls = []
        model.entry_flow.block1.register_forward_pre_hook(lambda *a: calls.append(1))
        with pytest.raises(ValueError):
            model(torch.randn(1, 4, 80, 80))
        assert calls == []
