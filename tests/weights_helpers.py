"""Shared by the weights tests: randomised reference models and files written the way their sources write them."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("KERAS_BACKEND", "torch")


def tolerance(reference: np.ndarray | torch.Tensor) -> float:
    """1e-4, relative to the largest reference value when that exceeds 1."""
    return 1e-4 * max(1.0, float(np.abs(np.asarray(reference)).max()))


def max_abs_diff(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


def assert_same_state(actual: torch.nn.Module, expected: torch.nn.Module, *, except_prefix: str = "\0") -> None:
    """Same keys and bit-identical tensors (except those under ``except_prefix``)."""
    a, b = actual.state_dict(), expected.state_dict()
    assert a.keys() == b.keys()
    different = [k for k in a if not k.startswith(except_prefix) and not torch.equal(a[k], b[k])]
    assert not different, different


# -- PyTorch (timm) ---------------------------------------------------------------------------------------

def bn_statistics(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """BN parameters with variances spread over 1e-3…1 (so that the epsilon matters: 1e-3 against 1e-5 changes
    the scale of the small ones by up to 40 %), and gammas scaled to keep each layer's gain at 0.2–0.6 so that
    activations neither explode nor vanish through the network."""
    variance = 10.0 ** rng.uniform(-3.0, 0.0, n)
    return {
        "gamma": rng.uniform(0.2, 0.6, n) * np.sqrt(variance + 1e-3),
        "beta": rng.normal(0.0, 0.1, n),
        "moving_mean": rng.normal(0.0, 0.1, n),
        "moving_variance": variance,
    }


def randomise_torch(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights and BN statistics (fresh BN statistics would hide layout and epsilon errors)."""
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                bn = bn_statistics(rng, m.num_features)
                for param, key in (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
                                   ("running_var", "moving_variance")):
                    getattr(m, param).copy_(torch.from_numpy(bn[key]))
            elif isinstance(m, torch.nn.Conv2d | torch.nn.Linear):
                m.weight.normal_(0.0, (2.0 / m.weight[0].numel()) ** 0.5, generator=g)
                if m.bias is not None:
                    m.bias.normal_(0.0, 0.1, generator=g)
    return model.eval()


# -- Keras ------------------------------------------------------------------------------------------------

def randomise_keras(model, seed: int):
    import keras

    """Random kernels (He scale), BN gammas/betas and moving statistics for every Keras layer."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.Model):  # a nested model: its own layers
            randomise_keras(layer, int(rng.integers(1 << 31)))
            continue
        bn = bn_statistics(rng, layer.weights[0].shape[0]) if isinstance(layer, keras.layers.BatchNormalization) else {}
        for w in layer.weights:
            shape, kind = tuple(w.shape), w.name
            if kind in bn:
                value = bn[kind]
            elif kind == "bias":
                value = rng.normal(0.0, 0.1, shape)
            else:  # kernel (kh, kw, in, out) or (in, out), depthwise (kh, kw, in, 1), pointwise (1, 1, in, out)
                fan_in = int(np.prod(shape[:-1])) if kind != "depthwise_kernel" else int(np.prod(shape[:2]))
                value = rng.normal(0.0, (2.0 / fan_in) ** 0.5, shape)
            w.assign(value.astype("float32"))
    return model


def keras2_names(model, offset: int) -> dict[str, str]:
    """Keras 2 style names: the unnamed residual layers become conv2d_{offset+i}, batch_normalization_{…}."""
    names, counters = {}, {"conv2d": offset, "batch_normalization": offset}
    for layer in model.layers:
        base = re.sub(r"_\d+$", "", layer.name)
        if base in counters:
            names[layer.name] = f"{base}_{counters[base]}"
            counters[base] += 1
        else:
            names[layer.name] = layer.name
    return names


def write_keras2_h5(path: Path, model, *, top: bool = True, offset: int = 1, order: list[str] | None = None) -> Path:
    """The legacy HDF5 layout Keras 2 wrote (keras.applications' official files): root attribute
    ``layer_names`` (every layer, weights or not), per layer ``weight_names`` like ``block1_conv1/kernel:0``,
    datasets at those paths inside the layer's group. ``order`` lists Keras layer names to write in that order."""
    import h5py
    import keras

    names = keras2_names(model, offset)
    by_name = {layer.name: layer for layer in model.layers}
    layers = [by_name[n] for n in order] if order else list(model.layers)
    if not top:
        layers = [layer for layer in layers if layer.name not in ("avg_pool", "predictions")]
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = b"2.1.6"
        f.attrs["backend"] = b"tensorflow"
        f.attrs["layer_names"] = np.array([names[layer.name].encode() for layer in layers])
        for layer in layers:
            name = names[layer.name]
            group = f.create_group(name)
            weight_names = [f"{name}/{w.name}:0" for w in layer.weights]
            group.attrs["weight_names"] = np.array([n.encode() for n in weight_names], dtype="S")
            for weight_name, w in zip(weight_names, layer.weights, strict=True):
                group.create_dataset(weight_name, data=keras.ops.convert_to_numpy(w))
    return path


def keras_predict(model, x_nchw: np.ndarray) -> np.ndarray:
    import keras

    return keras.ops.convert_to_numpy(model(x_nchw.transpose(0, 2, 3, 1), training=False))
