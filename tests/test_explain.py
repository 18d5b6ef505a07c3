"""Grad-CAM: exactly CAM at the last layer, right through in-place ReLUs, and where the evidence is."""

import json

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import xception
from data_factory import stripes_folder
from weights_helpers import randomise_torch
from xception.cli import main
from xception.errors import ConfigError
from xception.explain import crop_box, explain, grad_cam, keras_layer_names, overlay, resolve_layer
from xception.preprocessing import Preprocessing


def _paper(**options) -> xception.Xception:
    model = xception.create_model("xception", width=0.25, middle_repeats=1, num_classes=5, **options)
    return randomise_torch(model, seed=11).double()


def test_grad_cam_at_the_last_activation_is_cam():
    # GAP + linear head: ∂logit_c/∂A_k = W_ck / HW everywhere, so α_k ∝ W_ck and Grad-CAM = ReLU(Σ_k W_ck A_k) / HW.
    model = _paper()
    x = torch.randn(3, 3, 96, 107, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    cam = grad_cam(model, x, target=[0, 3, 4])
    assert cam.layer == "exit_flow.block7.act"  # the last module's final ReLU (Keras: block14_sepconv2_act)
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model(x)
    classes = model.head.fc.weight[[0, 3, 4]]  # (N, K)
    reference = torch.einsum("nk,nkhw->nhw", classes, features).clamp_min(0)
    hw = features.shape[-2] * features.shape[-1]
    torch.testing.assert_close(cam.raw, reference / hw, rtol=1e-12, atol=1e-15)
    peak = reference.amax((1, 2), keepdim=True)
    assert (peak > 0).sum() >= 2  # (a class with no positive evidence anywhere has an all-zero map)
    normalised = torch.where(peak > 0, reference / peak.clamp_min(1e-300), torch.zeros_like(reference))
    torch.testing.assert_close(cam.heatmaps, normalised, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(cam.logits, logits, rtol=0, atol=0)  # the hooks change nothing the model computes
    assert all(p.grad is None for p in model.parameters())


def test_gradients_survive_the_in_place_relu_after_the_layer():
    model = _paper()
    last = model.exit_flow.block7
    assert last.shortcut is None and last.act.inplace  # the layer's output is overwritten by an in-place ReLU
    layer = "exit_flow.block7.main.sepconv2_bn"
    x = torch.randn(2, 3, 80, 80, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    cam = grad_cam(model, x, target=2, layer=layer)

    # Reference by hand: A is the BN output before the ReLU, ∂logit/∂A = W_c,k · [A > 0] / HW.
    seen = []

    def keep(module, inputs, output) -> None:  # returns None: the model's own output goes on
        seen.append(output.clone())

    hook = last.main.sepconv2_bn.register_forward_hook(keep)
    with torch.no_grad():
        model(x)
    hook.remove()
    a = seen[0]
    grad = model.head.fc.weight[2].view(1, -1, 1, 1) * (a > 0) / (a.shape[-2] * a.shape[-1])
    reference = (grad.mean((2, 3), keepdim=True) * a).sum(1).clamp_min(0)
    assert (a < 0).any()  # the ReLU does zero part of it: a post-ReLU capture would be wrong
    torch.testing.assert_close(cam.raw, reference, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name, options, side", [
    ("xception41", {"output_stride": 8}, 64),
    ("xception65p", {"output_stride": 16}, 64),
    ("xception", {"output_stride": 16, "padding": "symmetric"}, 80),
])
def test_any_variant_any_output_stride_any_layer(name, options, side):
    model = xception.create_model(name, width=0.125, middle_repeats=1, num_classes=3, **options).eval()
    x = torch.randn(2, 3, side, side)
    stride = model.config.effective_output_stride
    cam = grad_cam(model, x)
    assert cam.heatmaps.shape[-1] == model.forward_features(x).shape[-1]
    assert cam.heatmaps.shape[-1] >= -(-side // stride) - 2  # dilation keeps the map at side / stride
    assert torch.all((cam.heatmaps >= 0) & (cam.heatmaps <= 1))
    assert cam.targets == tuple(model(x).argmax(1).tolist())
    first = grad_cam(model, x, layer="entry_flow.block2")
    assert first.heatmaps.shape[-1] > cam.heatmaps.shape[-1] or stride == 8


def test_keras_layer_names_are_keras_layers():
    keras = pytest.importorskip("keras")
    reference = keras.applications.Xception(weights=None, input_shape=(71, 71, 3))
    kinds = {type(layer).__name__ for layer in reference.layers}
    ours = xception.create_model("xception")
    table = keras_layer_names(ours)
    assert len(table) == len([layer for layer in reference.layers if layer.name.startswith("block")])
    modules = dict(ours.named_modules())
    for keras_name, module_name in table.items():
        layer = reference.get_layer(keras_name)  # raises if Keras has no such layer
        expected = {"Activation": torch.nn.ReLU, "ReLU": torch.nn.ReLU, "BatchNormalization": torch.nn.BatchNorm2d,
                    "Conv2D": torch.nn.Conv2d, "SeparableConv2D": xception.SeparableConv2d,
                    "MaxPooling2D": torch.nn.MaxPool2d}[type(layer).__name__]
        assert isinstance(modules[module_name], expected), (keras_name, module_name)
    assert "Activation" in kinds
    assert resolve_layer(ours, "block14_sepconv2_act") == "exit_flow.block14.act" == resolve_layer(ours)
    assert resolve_layer(ours, "block14_sepconv1_act") == "exit_flow.block14.main.sepconv2_act"
    assert resolve_layer(ours, "block4_sepconv1_act") == "entry_flow.block4.main.sepconv1_act"


def test_bad_layers_and_targets_fail_with_what_to_do():
    model = xception.create_model("xception", width=0.125, middle_repeats=1, num_classes=3).eval()
    x = torch.randn(1, 3, 71, 71)
    with pytest.raises(ConfigError, match=r"no layer .block99_act.*exit_flow\.block7\.act.*block7_sepconv2_act"):
        grad_cam(model, x, layer="block99_act")
    with pytest.raises(ConfigError, match="does not output a feature map"):
        grad_cam(model, x, layer="head.fc")
    with pytest.raises(ConfigError, match="class 3 does not exist"):
        grad_cam(model, x, target=3)
    with pytest.raises(ConfigError, match=r"before xception\.optimize"):
        grad_cam(xception.optimize(model), x)


def _quadrant_images(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """32-px noise with a bright 8×8 square somewhere inside one quadrant; the class is the quadrant."""
    x = torch.rand(n, 1, 32, 32, generator=generator) * 0.3
    quadrant = torch.randint(0, 4, (n,), generator=generator)
    jitter = torch.randint(0, 5, (n, 2), generator=generator)
    for i in range(n):
        top = 16 * int(quadrant[i] // 2) + 2 + int(jitter[i, 0])
        left = 16 * int(quadrant[i] % 2) + 2 + int(jitter[i, 1])
        x[i, 0, top : top + 8, left : left + 8] = 1.0
    return (x - 0.5) / 0.5, quadrant


def test_heatmap_mass_lands_in_the_quadrant_that_holds_the_evidence(one_thread):
    generator = torch.Generator().manual_seed(0)
    train_x, train_y = _quadrant_images(320, generator)
    test_x, test_y = _quadrant_images(48, generator)
    torch.manual_seed(0)
    model = xception.create_model("xception", num_classes=4, in_chans=1, stem="small", width=0.125,
                                  middle_repeats=0)
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    model.train()
    for _ in range(2):
        for batch in torch.randperm(len(train_x), generator=generator).split(32):
            loss = F.cross_entropy(model(train_x[batch]), train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():  # BN statistics of the final weights (a few steps leave the running ones behind)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        model(train_x[:256])
    model.eval()
    # At 32 px every position of the last exit-flow map sees the whole image; entry_flow.block3 (8×8 at
    # stride 4) is where a network this small keeps its evidence local.
    cam = grad_cam(model, test_x, layer="entry_flow.block3")
    assert (cam.logits.argmax(1) == test_y).float().mean() >= 0.9
    assert cam.heatmaps.shape[-2:] == (8, 8)
    mass = torch.stack([
        cam.heatmaps[i, 4 * int(q // 2) : 4 * int(q // 2) + 4, 4 * int(q % 2) : 4 * int(q % 2) + 4].sum()
        / cam.heatmaps[i].sum() for i, q in enumerate(test_y.tolist())
    ])
    assert (mass > 0.5).float().mean() >= 0.75, mass  # a quarter of the mass would be chance
    assert mass.median() > 0.6


def test_overlay_is_the_colour_map_at_the_given_opacity_inside_the_crop():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))
    pre = Preprocessing(input_size=32, crop_pct=0.8, interpolation="bilinear")
    box = crop_box(image.size, pre)
    assert box == (14, 4, 46, 36)  # shorter side resized to 32 / 0.8 = 40 (here: as it is), centre 32 × 32
    heat = np.full((4, 4), 0.75, dtype=np.float32)
    out = np.asarray(overlay(image, heat, box=box, alpha=0.4), dtype=np.float64)
    base = np.asarray(image, dtype=np.float64)
    colour = np.asarray(matplotlib.colormaps["jet"](0.75)[:3]) * 255
    np.testing.assert_allclose(out[4:36, 14:46], 0.6 * base[4:36, 14:46] + 0.4 * colour, atol=0.51)
    np.testing.assert_allclose(out[:, :14], 0.5 * base[:, :14], atol=0.51)  # what the network did not see
    np.testing.assert_allclose(out[:4], 0.5 * base[:4], atol=0.51)
    with pytest.raises(ConfigError, match="opacity"):
        overlay(image, heat, alpha=1.5)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain")
    folder = stripes_folder(root / "images", per_class=1)
    torch.manual_seed(0)
    model = xception.create_model("xception", num_classes=3, stem="small", width=0.125, middle_repeats=1)
    pre = Preprocessing(input_size=32, crop_pct=1.0, interpolation="bilinear")
    xception.save_weights(model, root / "w.safetensors", class_names=["diagonal", "horizontal", "vertical"],
                          preprocessing=pre)
    (root / "cut.png").write_bytes((folder / "vertical" / "2000.png").read_bytes()[:100])
    return root, folder, model.eval()


def test_explain_writes_a_heatmap_and_an_overlay_per_image(weights, tmp_path):
    root, folder, model = weights
    image = folder / "horizontal" / "1000.png"
    results = explain(root / "w.safetensors", [image, root / "cut.png"], out=tmp_path / "cams", target="vertical")
    good, bad = results
    assert bad.error.startswith("truncated") and not (tmp_path / "cams" / "cut.overlay.png").exists()
    assert good.target == 2 and good.target_name == "vertical" and good.layer == "exit_flow.block7.act"
    heat = np.load(good.heatmap)
    pixels = torch.from_numpy(np.asarray(Image.open(image).convert("RGB"), dtype=np.float32) / 127.5 - 1)
    expected = grad_cam(model, pixels.permute(2, 0, 1)[None], target=2)
    np.testing.assert_allclose(heat, expected.heatmaps[0].numpy(), atol=1e-5)
    assert Image.open(good.overlay).size == Image.open(image).size
    assert sorted(p.name for p in (tmp_path / "cams").iterdir()) == ["1000.heatmap.npy", "1000.overlay.png"]


def test_explain_command(weights, tmp_path, capsys):
    root, folder, _ = weights
    args = ["explain", "--weights", str(root / "w.safetensors"), "--out", str(tmp_path), "--json", "--top-k", "2"]
    assert main([*args, str(folder / "diagonal"), "--layer", "block4_sepconv2_bn"]) == 0
    [out] = json.loads(capsys.readouterr().out)
    assert out["layer"] == "entry_flow.block4.main.sepconv2_bn" and len(out["top"]) == 2
    assert out["target"]["class"] == out["top"][0]["class"]  # the predicted class by default
    assert np.load(out["heatmap"]).shape == (8, 8) and out["overlay"].endswith("0000.overlay.png")
    assert main([*args, str(folder / "diagonal"), str(root / "cut.png")]) == 1
    assert main([*args, str(folder / "diagonal"), "--class", "round"]) == 1
    assert "no class named 'round'" in capsys.readouterr().err
