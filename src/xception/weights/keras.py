"""Keras's Xception weights (the legacy HDF5 layout of ``keras.applications``) in our names and layouts.

(Keras 3's own formats, ``.keras`` and ``.weights.h5``, are read by :mod:`.keras3`.)

A file written by Keras 2 (the official ImageNet files are) lists its layers in the root attribute
``layer_names``; each layer's group lists its weights in ``weight_names`` (``block1_conv1/kernel:0``;
Keras 3 drops the ``:0``). ``model.save()`` files keep the same layout under a ``model_weights`` group.

The paper's layers carry the names ``keras.applications`` gives them (``block2_sepconv1``, …), so they are
matched by name. The four shortcut conv/BN pairs were left unnamed: Keras called them ``conv2d_1``,
``batch_normalization_1``, … numbered by whatever the saving process had built before. They are matched
by kind and order instead: the n-th unnamed 1×1 conv (and BN) belongs to the n-th module with a conv
shortcut. A wrong match cannot pass silently, since the shapes of the four differ.

Loaded into the ``xception`` model (TF 'same' padding, BN eps 1e-3) they reproduce Keras's outputs: its
logits (Keras applies a softmax after them unless ``classifier_activation=None``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import torch

from ..errors import WeightsError
from ..preprocessing import KERAS
from .imagenet import imagenet_class_names
from .mapping import MappedWeights, has_shortcut_conv, modules_after_stem, sepconvs, skeleton

MODEL = "xception"
BN_WEIGHTS = frozenset({"gamma", "beta", "moving_mean", "moving_variance"})


def _same(x: np.ndarray) -> np.ndarray:
    return x


def _kernel(x: np.ndarray) -> np.ndarray:
    """Conv (kh, kw, in, out) → (out, in, kh, kw); dense (in, out) → (out, in)."""
    return x.transpose(3, 2, 0, 1) if x.ndim == 4 else x.T


def _depthwise(x: np.ndarray) -> np.ndarray:
    """Depthwise (kh, kw, in, multiplier) → grouped conv (in·multiplier, 1, kh, kw), channel-major."""
    kh, kw, cin, mult = x.shape
    return x.transpose(2, 3, 0, 1).reshape(cin * mult, 1, kh, kw)


# Keras weight → (our parameter within the module, Keras layout → PyTorch layout).
WEIGHTS = {
    "kernel": ("weight", _kernel),
    "bias": ("bias", _same),
    "depthwise_kernel": ("depthwise.weight", _depthwise),
    "pointwise_kernel": ("pointwise.weight", _kernel),
    "gamma": ("weight", _same),
    "beta": ("bias", _same),
    "moving_mean": ("running_mean", _same),
    "moving_variance": ("running_var", _same),
}

# The dimensions each Keras weight has (a kernel: 4 in a conv, 2 in a dense layer).
NDIM = {name: (4,) if "kernel" in name else (1,) for name in WEIGHTS} | {"kernel": (2, 4)}


@cache
def layer_table() -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Keras layer name → our module, and the unnamed shortcut (conv, BN) modules in network order.

    block1 is the stem; ``blockN_sepconvI`` is module N's I-th separable conv, ``_bn`` its batch norm.
    """
    table = {
        "block1_conv1": "entry_flow.block1.conv1",
        "block1_conv1_bn": "entry_flow.block1.conv1_bn",
        "block1_conv2": "entry_flow.block1.conv2",
        "block1_conv2_bn": "entry_flow.block1.conv2_bn",
        "predictions": "head.fc",
    }
    shortcuts = []
    for n, (ours, block) in enumerate(modules_after_stem(skeleton(MODEL)), start=2):
        for sep in sepconvs(block):
            table[f"block{n}_{sep}"] = f"{ours}.main.{sep}"
            table[f"block{n}_{sep}_bn"] = f"{ours}.main.{sep}_bn"
        if has_shortcut_conv(block):
            shortcuts.append((f"{ours}.shortcut.conv", f"{ours}.shortcut.bn"))
    return table, shortcuts


@dataclass
class KerasLayer:
    """One layer group of the file: its name and its weights by short name (``kernel``, ``gamma``, …)."""

    name: str
    weights: dict[str, np.ndarray]

    @property
    def kind(self) -> str:
        names = set(self.weights)
        if names == BN_WEIGHTS:
            return "bn"
        kernel = self.weights.get("kernel")
        if kernel is not None and kernel.ndim == 4 and names == {"kernel"}:
            return "conv"
        if kernel is not None and kernel.ndim == 2 and names <= {"kernel", "bias"}:
            return "dense"
        return "other"


def _attribute_list(group: Any, name: str) -> list[str]:
    """A list attribute as Keras writes it: whole, or split into ``name0``, ``name1``, … when large."""
    if name in group.attrs:
        chunks = [group.attrs[name]]
    else:
        chunks, i = [], 0
        while f"{name}{i}" in group.attrs:
            chunks.append(group.attrs[f"{name}{i}"])
            i += 1
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for chunk in chunks for v in chunk]


def read_layers(path: str | os.PathLike[str]) -> list[KerasLayer]:
    """The layers that carry weights, in the file's order."""
    import h5py  # only needed for Keras files

    try:
        with h5py.File(path, "r") as f:
            root = f
            if not _attribute_list(f, "layer_names") and "model_weights" in f:
                root = f["model_weights"]  # a whole model saved with model.save()
            names = _attribute_list(root, "layer_names")
            if not names:
                raise WeightsError(f"{path} is an HDF5 file but not Keras weights: neither the legacy layout (a "
                                   "'layer_names' attribute) nor Keras 3's (a 'layers' group)")
            layers = []
            for name in names:
                group = root[name]
                # Normally one group per layer (its weights' name prefix may differ: TF 1 renamed variables
                # of a model built twice). A nested model (a fine-tuned Xception inside another model)
                # stores all its layers in one group, told apart by the prefix of each weight's name.
                weights = [(w.rpartition("/")[0].rpartition("/")[2], w) for w in _attribute_list(group, "weight_names")]
                nested = len({prefix for prefix, _ in weights}) > 1
                by_layer: dict[str, dict[str, np.ndarray]] = {}
                for prefix, weight in weights:
                    short = weight.rpartition("/")[2].split(":", 1)[0]
                    by_layer.setdefault(prefix if nested else name, {})[short] = np.asarray(group[weight])
                layers += [KerasLayer(layer, values) for layer, values in by_layer.items()]
            return layers
    except WeightsError:
        raise
    except Exception as err:  # a damaged file: h5py raises OSError, KeyError, RuntimeError, UnicodeDecodeError…
        raise WeightsError(f"{path} is a damaged or truncated HDF5 file ({err}); download or export it again") from err


def read_keras(path: str | os.PathLike[str]) -> MappedWeights:
    """A Keras Xception ``.h5`` file (with or without its classifier) as mapped weights for ``xception``."""
    layers = read_layers(path)
    table, shortcuts = layer_table()
    by_module: list[tuple[KerasLayer, str]] = [(layer, table[layer.name]) for layer in layers if layer.name in table]
    unnamed = [layer for layer in layers if layer.name not in table]
    convs = [layer for layer in unnamed if layer.kind == "conv"]
    norms = [layer for layer in unnamed if layer.kind == "bn"]
    dense = [layer for layer in unnamed if layer.kind == "dense"]
    by_module += [(layer, conv) for layer, (conv, _) in zip(convs, shortcuts, strict=False)]
    by_module += [(layer, norm) for layer, (_, norm) in zip(norms, shortcuts, strict=False)]
    matched = {id(layer) for layer, _ in by_module}
    if not any(ours == "head.fc" for _, ours in by_module) and len(dense) == 1:
        # A fine-tuned model whose classifier is not called 'predictions'.
        by_module.append((dense[0], "head.fc"))
        matched.add(id(dense[0]))

    unmapped = [f"{layer.name} ({layer.kind} layer)" for layer in layers if id(layer) not in matched]
    return to_mapped("keras-h5", by_module, unmapped)


def to_mapped(fmt: str, by_module: list[tuple[KerasLayer, str]], unmapped: list[str]) -> MappedWeights:
    """Keras layers assigned to our modules → mapped weights for ``xception`` (PyTorch layouts, our names)."""
    tensors: dict[str, torch.Tensor] = {}
    names: dict[str, str] = {}
    unmapped = list(unmapped)
    for layer, module in by_module:
        for weight, value in layer.weights.items():
            if weight not in WEIGHTS:
                unmapped.append(f"{layer.name}/{weight}")
                continue
            if value.ndim not in NDIM[weight] or value.dtype.kind != "f" or value.dtype.itemsize not in (2, 4, 8):
                unmapped.append(f"{layer.name}/{weight} ({value.dtype} {value.shape}: not a {weight} of this network)")
                continue
            param, to_torch = WEIGHTS[weight]
            key = f"{module}.{param}"
            # HDF5 may store big-endian floats; torch takes the machine's byte order only.
            tensors[key] = torch.from_numpy(np.ascontiguousarray(to_torch(value), dtype=value.dtype.newbyteorder("=")))
            names[key] = f"{layer.name}/{weight}"

    mapped = MappedWeights(fmt, MODEL, tensors, names, unmapped, preprocessing=KERAS)
    mapped.class_names = imagenet_class_names() if mapped.num_classes == 1000 else None
    return mapped
