"""See what the model sees: Grad-CAM heatmaps (Selvaraju et al. 2017) for a class, at any layer.

    >>> from xception.explain import explain, grad_cam
    >>> cam = grad_cam(model, images)                      # predicted class, last exit-flow activation
    >>> cam.heatmaps.shape                                 # (N, 10, 10) at 299 px, values in [0, 1]
    >>> explain("model.safetensors", ["cat.jpg"], out="cams/")   # heatmap .npy + overlay .png per image

Grad-CAM weighs each channel k of a layer's activations A by the spatial mean of ∂score/∂A_k and keeps
the positive part of the weighted sum: ``ReLU(Σ_k α_k A_k)``, normalised to a maximum of 1. At the last
activation, before global average pooling and a linear classifier, α_k is the class's classifier weight
divided by the number of positions, so Grad-CAM there is exactly CAM (Zhou et al. 2016).

The activation is captured by a forward hook that hands the rest of the network a copy of it: the
in-place ReLUs that follow many layers of Xception then modify the copy, never the captured tensor,
and the gradient is taken with respect to the captured tensor itself (module backward hooks fail on
in-place operations, the usual way Grad-CAM code breaks on this network).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .errors import ConfigError, DataError
from .fileio import atomic_write
from .models import Xception
from .predict import Prediction
from .preprocessing import Preprocessing

DEFAULT_ALPHA = 0.4  # opacity of the colour map over the image
GRADIENTS_NEEDED = "Grad-CAM needs the gradients of the PyTorch model, which an export does not keep"
COLORMAP = "jet"


@dataclass(frozen=True)
class CamResult:
    """Grad-CAM of a batch: one heatmap per image at the layer's resolution.

    Attributes:
        heatmaps: (N, h, w) ``ReLU(Σ_k α_k A_k)`` divided by its maximum: values in [0, 1] (all zero when
            nothing in the image speaks for the class).
        raw: the same before the division.
        targets: the class each heatmap is for.
        logits: the model's (N, classes) output on the images.
        layer: the module whose activations were used.
    """

    heatmaps: torch.Tensor
    raw: torch.Tensor
    targets: tuple[int, ...]
    logits: torch.Tensor
    layer: str

    def resized(self, size: tuple[int, int]) -> torch.Tensor:
        """The heatmaps resampled (bilinear) to ``size`` = (height, width), still in [0, 1]."""
        up = F.interpolate(self.heatmaps[:, None].float(), size=size, mode="bilinear", align_corners=False)
        return up[:, 0].clamp(0.0, 1.0)


# -- layers ----------------------------------------------------------------------------------------------


def default_layer(model: Xception) -> str:
    """The last activation of the exit flow (Keras's ``block14_sepconv2_act`` in the paper's model)."""
    name, block = list(model.blocks())[-1]
    return f"{name}.act" if getattr(block, "act", None) is not None else name


def keras_layer_names(model: Xception) -> dict[str, str]:
    """Keras layer name → our module name, for the paper's family (the network Keras builds).

    Keras names a ReLU after the separable conv it feeds (``block3_sepconv1_act`` runs before
    ``block3_sepconv1``), except in the last module, where each ReLU follows its conv's batch norm
    (``block14_sepconv2_act`` is the network's last activation).
    """
    if model.config.architecture.family != "paper":
        return {}
    table: dict[str, str] = {}
    for name, block in model.blocks():
        number = name.rsplit("block", 1)[1]
        children = dict(block.named_children())
        main = children.get("main")
        if main is None:  # the stem: conv1, conv1_bn, conv1_act, conv2, …
            for child in children:
                table[f"block{number}_{child}"] = f"{name}.{child}"
            continue
        convs = [c for c in dict(main.named_children()) if re.fullmatch(r"sepconv\d+", c)]
        for i, conv in enumerate(convs, start=1):
            table[f"block{number}_{conv}"] = f"{name}.main.{conv}"
            table[f"block{number}_{conv}_bn"] = f"{name}.main.{conv}_bn"
            if getattr(block, "act", None) is not None:
                table[f"block{number}_{conv}_act"] = (f"{name}.main.sepconv{i + 1}_act" if i < len(convs)
                                                      else f"{name}.act")
            elif hasattr(main, f"{conv}_act"):
                table[f"block{number}_{conv}_act"] = f"{name}.main.{conv}_act"
        if hasattr(main, "pool"):
            table[f"block{number}_pool"] = f"{name}.main.pool"
    return table


def resolve_layer(model: Xception, layer: str | None = None) -> str:
    """Our module name for ``layer``: one of ours (``exit_flow.block14.act``), a Keras name
    (``block14_sepconv2_act``) for the paper's family, or None for :func:`default_layer`."""
    if layer is None:
        return default_layer(model)
    modules = dict(model.named_modules())
    if layer in modules and layer:
        return layer
    keras = keras_layer_names(model)
    if layer in keras and keras[layer] in modules:
        return keras[layer]
    close = [n for n in modules if n and (n.endswith(layer) or layer in n)][:5]
    last = default_layer(model)
    keras_last = next((k for k, v in keras.items() if v == last), None)
    raise ConfigError(
        f"{model.config.arch} has no layer {layer!r}; name a module such as {last!r}"
        + (f" or a Keras layer such as {keras_last!r}" if keras_last else "")
        + (f" (close: {', '.join(close)})" if close else "; 'xception summary' lists the blocks")
    )


# -- Grad-CAM ----------------------------------------------------------------------------------------------


def _targets(target: int | Sequence[int] | None, logits: torch.Tensor) -> list[int]:
    n, classes = logits.shape
    if target is None:
        return logits.argmax(1).tolist()
    chosen = [int(target)] * n if isinstance(target, int | np.integer) else [int(t) for t in target]
    if len(chosen) != n:
        raise ConfigError(f"{len(chosen)} targets for {n} images: give one class, or one per image")
    bad = [t for t in chosen if not 0 <= t < classes]
    if bad:
        raise ConfigError(f"class {bad[0]} does not exist: the model has classes 0 to {classes - 1}")
    return chosen


def grad_cam(
    model: Xception, images: torch.Tensor, target: int | Sequence[int] | None = None, layer: str | None = None,
) -> CamResult:
    """Grad-CAM heatmaps of ``images`` (N, C, H, W, preprocessed) for ``target`` (None: each image's predicted
    class; an index; or one index per image) at ``layer`` (None: the last exit-flow activation).

    Works for every variant and output stride, in any float dtype; the model runs in eval mode (its mode is
    restored afterwards) and its parameters' ``.grad`` are left untouched.
    """
    if not isinstance(model, Xception):
        raise ConfigError(f"Grad-CAM needs the xception.Xception model (it takes gradients), not "
                          f"{type(model).__name__}; pass the model before xception.optimize()")
    if model.features_only or model.config.num_classes == 0:
        raise ConfigError("Grad-CAM explains a class: the model needs a classifier (num_classes > 0)")
    name = resolve_layer(model, layer)
    module = dict(model.named_modules())[name]
    captured: list[torch.Tensor] = []

    def capture(_: nn.Module, __: Any, output: Any) -> torch.Tensor:
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            raise ConfigError(f"layer {name!r} does not output a feature map (N, C, H, W); choose a conv, "
                              "batch norm, activation or block")
        if captured:
            raise ConfigError(f"layer {name!r} runs more than once per image; choose another layer")
        activation = output.detach().requires_grad_(True)
        captured.append(activation)
        # Record the graph from here on only (nothing below the layer needs a gradient), and give the next
        # layers a copy: an in-place ReLU after this layer must not overwrite what was captured.
        torch.set_grad_enabled(True)
        return activation.clone()

    was_training = model.training
    handle = module.register_forward_hook(capture)
    try:
        model.eval()
        with torch.inference_mode(False), torch.no_grad():  # the hook turns gradients on at the layer
            x = images.clone() if images.is_inference() else images
            logits = model(x)
            if not captured:
                raise ConfigError(f"layer {name!r} is not used by the model's forward pass")
            activation = captured[0]
            chosen = _targets(target, logits.detach())
            score = logits[torch.arange(len(chosen)), torch.tensor(chosen)].sum()
            (grad,) = torch.autograd.grad(score, activation)
    finally:
        handle.remove()
        model.train(was_training)
    weights = grad.mean((2, 3), keepdim=True)  # α_k: the gradient's spatial mean per channel
    raw = (weights * activation.detach()).sum(1).clamp_min(0)
    peak = raw.amax((1, 2), keepdim=True)
    heatmaps = raw / torch.where(peak > 0, peak, torch.ones_like(peak))
    return CamResult(heatmaps=heatmaps, raw=raw, targets=tuple(chosen), logits=logits.detach(), layer=name)


# -- images and overlays -----------------------------------------------------------------------------------


def crop_box(size: tuple[int, int], pre: Preprocessing) -> tuple[int, int, int, int]:
    """The part of a (width, height) image the network sees under ``pre`` (resize, centre crop), as a box
    (left, top, right, bottom) in the image's pixels."""
    width, height = size
    if pre.resize_mode == "squash":
        return 0, 0, width, height
    side = pre.input_size * min(width, height) / pre.resize_size
    left, top = (width - side) / 2, (height - side) / 2
    return round(left), round(top), round(left + side), round(top + side)


def overlay(image: Image.Image, heatmap: np.ndarray | torch.Tensor, *, box: tuple[int, int, int, int] | None = None,
            alpha: float = DEFAULT_ALPHA, colormap: str = COLORMAP) -> Image.Image:
    """``image`` (RGB) with ``heatmap`` (h, w in [0, 1]) resized onto ``box`` (default: the whole image) in a
    colour map at opacity ``alpha``; what lies outside the box, which the network did not see, is dimmed."""
    import matplotlib

    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha is an opacity in [0, 1], got {alpha}")
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    left, top, right, bottom = box or (0, 0, image.width, image.height)
    heat = torch.as_tensor(np.asarray(heatmap, dtype=np.float32))[None, None]
    heat = F.interpolate(heat, size=(bottom - top, right - left), mode="bilinear", align_corners=False)[0, 0]
    colours = matplotlib.colormaps[colormap](heat.clamp(0, 1).numpy())[..., :3] * 255.0
    out = base * 0.5  # dimmed outside the box
    inside = base[top:bottom, left:right]
    out[top:bottom, left:right] = (1.0 - alpha) * inside + alpha * colours
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))


@dataclass
class ImageExplanation:
    """One image explained: its top classes, the class explained, the heatmap and the overlay."""

    top: list[tuple[str, float]]
    target: int
    target_name: str
    heatmap: np.ndarray  # (h, w) float32 in [0, 1], at the layer's resolution
    overlay: Image.Image
    layer: str


def class_index(target: int | str | None, names: Sequence[str]) -> int | None:
    """A class given by index or by name (as the weights name it) → its index."""
    if target is None or isinstance(target, int):
        return target
    if target in names:
        return list(names).index(target)
    if target.lstrip("-").isdigit():
        return int(target)
    shown = ", ".join(names[:8]) + (", …" if len(names) > 8 else "")
    raise ConfigError(f"no class named {target!r}; the classes are {shown} (or give an index)")


def explain_images(
    model: Xception, images: Sequence[Image.Image], *, preprocessing: Preprocessing,
    target: int | str | None = None, layer: str | None = None, top_k: int = 5, alpha: float = DEFAULT_ALPHA,
) -> list[ImageExplanation]:
    """Grad-CAM of decoded images (PIL) under ``preprocessing``, with overlays on the images themselves."""
    from .data.transforms import eval_transform

    if top_k < 1:
        raise ConfigError(f"top_k must be ≥ 1, got {top_k}")
    names = model.class_names or [str(i) for i in range(model.config.num_classes)]
    index = class_index(target, names)
    transform = eval_transform(preprocessing)
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    batch = torch.stack([transform(img) for img in images]).to(device=device, dtype=dtype)
    cam = grad_cam(model, batch, index, layer)
    probs = cam.logits.float().softmax(1)
    values, indices = probs.topk(min(top_k, probs.shape[1]), dim=1)
    results = []
    for i, img in enumerate(images):
        heat = cam.heatmaps[i].float().cpu().numpy()
        box = crop_box(img.size, preprocessing)
        results.append(ImageExplanation(
            top=[(names[c], p) for c, p in zip(indices[i].tolist(), values[i].tolist(), strict=True)],
            target=cam.targets[i], target_name=names[cam.targets[i]], heatmap=heat,
            overlay=overlay(img, heat, box=box, alpha=alpha), layer=cam.layer,
        ))
    return results


# -- files -------------------------------------------------------------------------------------------------


@dataclass
class Explanation(Prediction):
    """One file's outcome: its top classes and where its heatmap and overlay went, or why it could not be
    read (a :class:`~xception.predict.Prediction` with the Grad-CAM's files)."""

    target: int | None = None
    target_name: str | None = None
    layer: str | None = None
    heatmap: str | None = None
    overlay: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        if self.error is None:
            data.update(target={"index": self.target, "class": self.target_name}, layer=self.layer,
                        heatmap=self.heatmap, overlay=self.overlay)
        return data

    def format(self) -> str:
        if self.error is not None:
            return f"{self.path}: error: {self.error}"
        top = ", ".join(f"{n} {100 * p:.1f} %" for n, p in self.top)
        return f"{self.path}: {top}; Grad-CAM of {self.target_name!r} → {self.overlay}"


def _unique_stems(paths: Sequence[Path]) -> list[str]:
    seen: dict[str, int] = {}
    stems = []
    for path in paths:
        count = seen.get(path.stem, 0)
        seen[path.stem] = count + 1
        stems.append(path.stem if count == 0 else f"{path.stem}-{count}")
    return stems


def save_explanation(item: ImageExplanation, out: Path, stem: str) -> tuple[Path, Path]:
    """Write ``stem.heatmap.npy`` and ``stem.overlay.png`` under ``out``, each atomically."""

    def write_npy(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # np.save on a name would append .npy to the temporary file's
            np.save(f, item.heatmap.astype(np.float32))

    heatmap = atomic_write(out / f"{stem}.heatmap.npy", write_npy)
    png = atomic_write(out / f"{stem}.overlay.png", lambda tmp: item.overlay.save(tmp, format="PNG"))
    return heatmap, png


def explain(
    weights: str | os.PathLike[str], inputs: Sequence[str | os.PathLike[str]], *,
    out: str | os.PathLike[str] = "explanations", target: int | str | None = None, layer: str | None = None,
    top_k: int = 5, device: str = "auto", model_name: str | None = None,
    model_options: Mapping[str, Any] | None = None, alpha: float = DEFAULT_ALPHA, batch_size: int = 8,
) -> list[Explanation]:
    """Grad-CAM of every image in ``inputs`` (files or folders) for ``target`` (a class name or index; None:
    the predicted class), written to ``out`` as ``NAME.heatmap.npy`` (the layer's resolution, [0, 1]) and
    ``NAME.overlay.png`` (the heatmap on the image). Unreadable files are reported and the others go on.
    ``weights`` must be weights: an exported model (ONNX, ``.pt2``) is refused, since Grad-CAM needs the
    gradients of the PyTorch model."""
    from .data.images import UnreadableImage, load_image
    from .inference import open_pytorch
    from .predict import list_inputs

    paths = list_inputs(inputs)
    if not paths:
        raise DataError("no images to explain: the folders given hold no image files")
    runner = open_pytorch(weights, why=GRADIENTS_NEEDED, device=device, model_name=model_name,
                          model_options=model_options)
    model, preprocessing = runner.model, runner.preprocessing
    assert model is not None  # the torch runtime keeps the plain model
    resolve_layer(model, layer)  # a wrong layer name fails before any image is read
    out = Path(out)
    results = [Explanation(str(p)) for p in paths]
    stems = _unique_stems(paths)
    for start in range(0, len(paths), batch_size):
        good: list[tuple[int, Image.Image]] = []
        for i in range(start, min(start + batch_size, len(paths))):
            try:
                good.append((i, load_image(paths[i], preprocessing.channels)))
            except UnreadableImage as err:
                results[i].error = err.reason + (f" ({err.detail})" if err.detail else "")
        if not good:
            continue
        explained = explain_images(model, [img for _, img in good], preprocessing=preprocessing, target=target,
                                   layer=layer, top_k=top_k, alpha=alpha)
        for (i, _), item in zip(good, explained, strict=True):
            heatmap, png = save_explanation(item, out, stems[i])
            results[i] = Explanation(str(paths[i]), item.top, target=item.target, target_name=item.target_name,
                                     layer=item.layer, heatmap=str(heatmap), overlay=str(png))
    return results
