"""Keras 3's own files, ``model.save("ft.keras")`` and ``model.save_weights("ft.weights.h5")``, in our names.

Keras 3 stores weights by the structure of the model, not by layer name. Each layer's variables are the
datasets ``vars/0``, ``vars/1``, … of a group named after the layer's class and its position among the
layers of that class in its model: ``layers/conv2d``, ``layers/conv2d_1``, …; a model nested in
another (the usual fine-tuned model wraps ``Xception(include_top=False)``) has its own
``layers/functional/layers/…``, and a subclassed model saves what it holds under its attributes' names
(``base/layers/…``, ``fc/vars/…``). A ``.keras`` file is a zip archive holding that same HDF5 file
(``model.weights.h5``) beside the model's ``config.json``.

Those group names depend on the structure alone, never on the names Keras gave the layers (which count
whatever the process built before), so layers are matched by kind and position:

* the network is the model, nested or not, that holds the separable convs. Its 3×3 convs are the stem
  and its 1×1 convs the shortcuts; its separable convs and batch norms come in network order, the batch
  norms as Keras 3 orders a functional model's layers (each module's main branch, then its shortcut);
* the classifier is that model's dense layer (``include_top=True``), or else the one dense layer around
  it (``Xception(include_top=False, pooling="avg")`` then ``Dense(n)``), of any size.

Newer Keras 3 versions also record each layer's name beside its variables. Where that is a name
``keras.applications`` gives (``block5_sepconv1_bn``), it must be the one the position implies: a file
ordered otherwise is refused instead of loaded into the wrong places. Shapes are checked as for every
format (:func:`~xception.weights.mapping.load_into`).

The model computes Keras's logits: a ``Dense(n, activation="softmax")`` classifier's probabilities are
their softmax.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
import zlib
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from ..errors import WeightsError
from ..preprocessing import KERAS
from .keras import MODEL, KerasLayer, layer_table, to_mapped
from .mapping import MappedWeights, has_shortcut_conv, modules_after_stem, sepconvs, skeleton

ARCHIVE_MEMBERS = frozenset({"config.json", "model.weights.h5"})
# What reading a damaged zip archive raises (ValueError: also bad JSON or text inside).
ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, NotImplementedError)
# What h5py raises on a damaged file, beyond OSError, depending on where the damage is.
H5_ERRORS = (OSError, KeyError, ValueError, RuntimeError, TypeError, AttributeError)
# Keras 3 class (snake case) → what its vars/0, vars/1, … are, in the order layer.weights lists them.
VARIABLES = {
    "conv2d": ("kernel", "bias"),
    "separable_conv2d": ("depthwise_kernel", "pointwise_kernel", "bias"),
    "batch_normalization": ("gamma", "beta", "moving_mean", "moving_variance"),
    "dense": ("kernel", "bias"),
}
MAX_DEPTH = 16  # objects within objects that a walk of the file follows
# Objects Keras saves beside the layers that hold state, not weights.
STATE = frozenset({"optimizer", "seed_generator"})
# Names keras.applications gives the paper's layers; a recorded name of this form is checked.
APPLICATION_NAME = re.compile(r"block\d+_(conv|sepconv)\d+(_bn)?|predictions")


@dataclass
class StoredLayer:
    """One layer group of a Keras 3 weights file.

    Attributes:
        model: the path of the (nested) model holding it, ``""`` for the outermost.
        key: the group's name in the model (``conv2d_3``, or an attribute's name in a subclassed model).
        kind: the layer's class in snake case (``separable_conv2d``); index: its position among the
            model's layers of that class.
        name: the name Keras gave the layer, where the file records it.
        values: its variables, ``vars/0``, ``vars/1``, …
    """

    model: str
    key: str
    kind: str
    index: int
    name: str | None
    values: list[np.ndarray]

    @property
    def label(self) -> str:
        """The group's path without the ``layers/`` steps, for messages: ``functional/batch_normalization_3``."""
        return f"{self.model}/{self.key}" if self.model else self.key

    def as_keras_layer(self) -> KerasLayer:
        """The variables by their Keras names (``kernel``, ``gamma``, …); unknown ones by number."""
        names = VARIABLES.get(self.kind, ())
        if self.kind == "batch_normalization" and len(self.values) != len(names):
            names = ()  # center=False or scale=False: not a layout Xception has
        return KerasLayer(self.label, {names[i] if i < len(names) else f"vars/{i}": v
                                       for i, v in enumerate(self.values)})


def is_keras3_h5(root: Any) -> bool:
    """True for an open HDF5 file (or group) in Keras 3's layout."""
    import h5py

    return ("layer_names" not in root.attrs and "model_weights" not in root
            and any(isinstance(root.get(key), h5py.Group) for key in ("layers", "vars")))


def is_keras_archive(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a ``.keras`` zip archive (``config.json`` and ``model.weights.h5``).

    The first member's name, in the first bytes, tells most files apart without reading the archive (so a
    damaged one is still recognised): Keras writes ``metadata.json`` first, torch.save ``<name>/data.pkl``
    or ``<name>/version``. Anything else is decided by the archive's directory.
    """
    with open(path, "rb") as f:
        header = f.read(30 + 64)
    first = header[30:30 + int.from_bytes(header[26:28], "little")]
    if first in (b"metadata.json", b"config.json", b"model.weights.h5"):
        return True
    if b"/" in first:
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return set(archive.namelist()) >= ARCHIVE_MEMBERS
    except ZIP_ERRORS:
        return False


def stored_layers(root: Any) -> list[StoredLayer]:
    """Every layer of the file that holds variables, with the model it belongs to.

    A functional or Sequential model lists its layers under ``layers/``, each named by class and position;
    a subclassed model saves what it holds under its attributes' names (``base/``, ``fc/``), so there the
    kind is read from the variables' shapes, and objects of no known kind (metrics, trackers) are passed
    over. Optimizer and random-number state are not weights and are left out.
    """
    import h5py

    layers: list[StoredLayer] = []

    def visit(group: Any, model: str) -> None:
        if model.count("/") > MAX_DEPTH:
            return  # deeper than any model nests: links that loop back (a damaged file)
        for key, child in group.items():
            if not isinstance(child, h5py.Group) or key == "vars" or key in STATE:
                continue
            if key == "layers":
                for name, layer in child.items():
                    if isinstance(layer, h5py.Group):
                        add(layer, model, name, listed=True)
            else:
                add(child, model, key, listed=False)

    def add(group: Any, model: str, key: str, *, listed: bool) -> None:
        variables = group.get("vars")
        values = []
        if isinstance(variables, h5py.Group):
            values = [np.asarray(variables[k]) for k in sorted(variables, key=_number)
                      if isinstance(variables[k], h5py.Dataset)]
        if values:
            name = variables.attrs.get("name")
            name = name.decode("utf8", "replace") if isinstance(name, bytes) else name
            if listed:
                match = re.fullmatch(r"(.*?)(?:_(\d+))?", key)
                assert match is not None  # the pattern matches any string
                layers.append(StoredLayer(model, key, match[1], int(match[2] or 0), name, values))
            elif (kind := kind_of(values)) is not None:
                layers.append(StoredLayer(model, key, kind, 0, name, values))
        visit(group, f"{model}/{key}" if model else key)  # a nested model, or objects the layer holds

    visit(root, "")
    return layers


def kind_of(values: list[np.ndarray]) -> str | None:
    """The kind of layer whose variables these are, from their shapes (None: not a kind Xception has)."""
    dims = [v.ndim for v in values]
    if dims in ([2], [2, 1]):
        return "dense"
    if dims in ([4], [4, 1]):
        return "conv2d"
    if dims in ([4, 4], [4, 4, 1]) and values[0].shape[-1] == 1:
        return "separable_conv2d"
    if dims == [1, 1, 1, 1] and len({v.shape for v in values}) == 1:
        return "batch_normalization"
    return None


def _number(key: str) -> int:
    return int(key) if key.isdigit() else 1 << 30


@cache
def network_order() -> dict[str, list[tuple[str, str | None]]]:
    """Our ``xception`` modules in the order a Keras 3 file holds them, per kind of layer, each with the
    name ``keras.applications`` gives that layer (None for the unnamed shortcut layers)."""
    keras_name = {ours: theirs for theirs, ours in layer_table()[0].items()}
    order: dict[str, list[str]] = {
        "stem": ["entry_flow.block1.conv1", "entry_flow.block1.conv2"],
        "shortcut": [],
        "separable_conv2d": [],
        "batch_normalization": ["entry_flow.block1.conv1_bn", "entry_flow.block1.conv2_bn"],
    }
    for ours, block in modules_after_stem(skeleton(MODEL)):
        for sep in sepconvs(block):
            order["separable_conv2d"].append(f"{ours}.main.{sep}")
            order["batch_normalization"].append(f"{ours}.main.{sep}_bn")
        if has_shortcut_conv(block):
            order["shortcut"].append(f"{ours}.shortcut.conv")
            order["batch_normalization"].append(f"{ours}.shortcut.bn")
    return {kind: [(module, keras_name.get(module)) for module in modules] for kind, modules in order.items()}


def map_layers(layers: list[StoredLayer], source: str) -> MappedWeights:
    """Assign stored layers to our modules by kind and position (see the module's description)."""
    models = [m for m in dict.fromkeys(layer.model for layer in layers)
              if any(layer.model == m and layer.kind == "separable_conv2d" for layer in layers)]
    network = models[0] if models else None
    ours = [layer for layer in layers if layer.model == network]

    def of_kind(kind: str) -> list[StoredLayer]:
        return sorted((layer for layer in ours if layer.kind == kind), key=lambda layer: layer.index)

    convs = of_kind("conv2d")
    groups = {
        "stem": [c for c in convs if c.values[0].ndim == 4 and c.values[0].shape[:2] == (3, 3)],
        "shortcut": [c for c in convs if c.values[0].ndim == 4 and c.values[0].shape[:2] == (1, 1)],
        "separable_conv2d": of_kind("separable_conv2d"),
        "batch_normalization": of_kind("batch_normalization"),
    }
    order = network_order()
    by_module: list[tuple[KerasLayer, str]] = []
    assigned: set[int] = set()
    for kind, stored in groups.items():
        for layer, (module, expected) in zip(stored, order[kind], strict=False):
            if layer.name is not None and APPLICATION_NAME.fullmatch(layer.name) and layer.name != expected:
                raise WeightsError(
                    f"{source}: the layer in {layer.label} is called {layer.name!r}, but its position is that of "
                    f"{expected or 'an unnamed shortcut layer'} in keras.applications.Xception; the file's layers "
                    "are ordered otherwise, and loading them by position would put weights in the wrong places"
                )
            by_module.append((layer.as_keras_layer(), module))
            assigned.add(id(layer))

    dense = of_kind("dense") or [layer for layer in layers if layer.kind == "dense" and layer.model != network]
    if len(dense) == 1:
        by_module.append((dense[0].as_keras_layer(), "head.fc"))
        assigned.add(id(dense[0]))
    unmapped = [f"{layer.label} ({layer.kind} layer)" for layer in layers if id(layer) not in assigned]
    return to_mapped("keras3", by_module, unmapped)


def read_weights_h5(path: str | os.PathLike[str]) -> MappedWeights:
    """A Keras 3 ``model.save_weights("ft.weights.h5")`` file as mapped weights for ``xception``."""
    return _read_h5(path, os.fspath(path))


def read_archive(path: str | os.PathLike[str]) -> MappedWeights:
    """A Keras 3 ``model.save("ft.keras")`` archive as mapped weights for ``xception``; its config's input
    size becomes the preprocessing's (Keras's [-1, 1] scaling, at the size the model was built for)."""
    try:
        with zipfile.ZipFile(path) as archive:
            missing = ARCHIVE_MEMBERS - set(archive.namelist())
            if not missing:
                config = json.loads(archive.read("config.json"))
                data = archive.read("model.weights.h5")
    except ZIP_ERRORS as err:
        raise WeightsError(f"{path} is a damaged or truncated .keras file ({err}); save it again") from err
    if missing:
        raise WeightsError(f"{path} is a zip archive without {' and '.join(sorted(missing))}: not a model "
                           "saved by Keras 3 (a .keras file holds both)")
    mapped = _read_h5(io.BytesIO(data), f"{os.fspath(path)} (its model.weights.h5)")
    size = input_size(config)
    if size is not None:
        mapped.preprocessing = KERAS.replace(input_size=size)
    return mapped


def _read_h5(file: str | os.PathLike[str] | io.BytesIO, source: str) -> MappedWeights:
    import h5py

    try:
        f = h5py.File(file, "r")
    except H5_ERRORS as err:
        raise WeightsError(f"{source} is a damaged or truncated HDF5 file ({err}); save it again") from err
    with f:
        try:
            layers = stored_layers(f)
        except H5_ERRORS as err:
            raise WeightsError(f"{source} is a damaged or truncated Keras weights file ({err}); save it "
                               "again") from err
    return map_layers(layers, source)


def input_size(config: Any) -> int | None:
    """The side of the square input the outermost model was built for (None: variable or not square)."""
    if isinstance(config, dict):
        if config.get("class_name") == "InputLayer":
            inner = config.get("config") or {}
            shape = inner.get("batch_shape") or inner.get("batch_input_shape")
            if (isinstance(shape, list) and len(shape) == 4 and isinstance(shape[1], int) and shape[1] > 0
                    and shape[1] == shape[2]):
                return shape[1]
            return None
        children = (config.get("config") or {}).get("layers") if isinstance(config.get("config"), dict) else None
        for child in children or ():
            if (found := input_size(child)) is not None:
                return found
    return None
