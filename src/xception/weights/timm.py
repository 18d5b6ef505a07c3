"""timm's Xception state dicts (``legacy_xception`` = Cadene's port, and the aligned ``xception41/65/71``,
``41p``, ``65p``) in our names.

Both sides are PyTorch, so tensors keep their layouts; only names change, module by module, through the
two tables below. The variant is recognised from the keys (Cadene's ``block1.rep…`` or timm's
``stem…``/``blocks.N…``, the number of modules, pre-activation norms), and the weights go into the model
of the same name, which computes what timm computes (symmetric padding, timm's BN eps).

``.pth`` files are read with ``torch.load(weights_only=True)``: tensors and plain containers only. A
pickle that needs code to load is refused, because unpickling it would run that code.
"""

from __future__ import annotations

import os
import pickle
import re
from functools import cache

import torch

from ..catalog import CATALOG
from ..errors import WeightsError
from ..models import ARCHITECTURES
from ..preprocessing import Preprocessing
from .imagenet import imagenet_class_names
from .mapping import MappedWeights, has_shortcut_conv, modules_after_stem, rename, sepconvs, skeleton

# The variants timm has, by timm's name (each record says its own), and what each computes like.
TIMM_NAMES: dict[str, str] = {record.timm_name: name for name, record in CATALOG.items() if record.timm_name}


def _module_count(arch: str) -> int:
    table = ARCHITECTURES[arch]
    return len(table.entry) + table.middle_repeats + len(table.exit)


# (pre-activation, number of modules) → our name of an aligned variant: what timm's keys tell apart.
ALIGNED_VARIANTS: dict[tuple[bool, int], str] = {
    (ARCHITECTURES[CATALOG[name].arch].family == "preact", _module_count(CATALOG[name].arch)): name
    for name in TIMM_NAMES.values() if ARCHITECTURES[CATALOG[name].arch].family != "paper"
}

# timm's evaluation settings for each variant's default weights (all scale pixels to [-1, 1]).
PREPROCESSING: dict[str, Preprocessing] = {
    name: preprocessing for name in TIMM_NAMES.values() if (preprocessing := CATALOG[name].preprocessing)
}


@cache
def legacy_table() -> dict[str, str]:
    """Cadene's / timm's ``legacy_xception`` module → ours.

    Its ``blockK`` (1–12) is our module K+1; ``rep`` is a flat [ReLU, SepConv, BN] × n list, except that
    block1 starts without the ReLU, shifting its indices by one. A SepConv's depthwise step is ``conv1``.
    The last module is unrolled into ``conv3``/``bn3``/``conv4``/``bn4``.
    """
    table = {
        "conv1": "entry_flow.block1.conv1",
        "bn1": "entry_flow.block1.conv1_bn",
        "conv2": "entry_flow.block1.conv2",
        "bn2": "entry_flow.block1.conv2_bn",
        "fc": "head.fc",
        "last_linear": "head.fc",  # the name Cadene's pretrainedmodels gives the classifier
    }
    *modules, (last, _) = modules_after_stem(skeleton("legacy_xception"))
    for k, (ours, block) in enumerate(modules, start=1):
        first = 1 if "sepconv1_act" in block.main._modules else 0
        for i, sep in enumerate(sepconvs(block)):
            rep = f"block{k}.rep.{first + 3 * i}"
            table[f"{rep}.conv1"] = f"{ours}.main.{sep}.depthwise"
            table[f"{rep}.pointwise"] = f"{ours}.main.{sep}.pointwise"
            table[f"block{k}.rep.{first + 3 * i + 1}"] = f"{ours}.main.{sep}_bn"
        if has_shortcut_conv(block):
            table[f"block{k}.skip"] = f"{ours}.shortcut.conv"
            table[f"block{k}.skipbn"] = f"{ours}.shortcut.bn"
    for i, (conv, bn) in enumerate((("conv3", "bn3"), ("conv4", "bn4")), start=1):
        table[f"{conv}.conv1"] = f"{last}.main.sepconv{i}.depthwise"
        table[f"{conv}.pointwise"] = f"{last}.main.sepconv{i}.pointwise"
        table[bn] = f"{last}.main.sepconv{i}_bn"
    return table


@cache
def aligned_table(name: str) -> dict[str, str]:
    """timm's ``XceptionAligned`` module → ours, for ``xception41/65/71`` and the ``p`` variants.

    ``stem.0``/``stem.1`` are our block1 convs; ``blocks.J`` is our module J+2. Each SepConv is
    ``stack.convI`` with ``conv_dw``/``conv_pw``; aligned modules put ``bn_dw`` between the two and ``bn_pw``
    after, pre-activation modules open with ``norm`` (BN-ReLU) and put one at the start of conv2 and conv3.
    """
    preact = ARCHITECTURES[CATALOG[name].arch].family == "preact"
    table = {
        "stem.0.conv": "entry_flow.block1.conv1",
        "stem.0.bn": "entry_flow.block1.conv1_bn",
        "head.fc": "head.fc",
    }
    if preact:
        table["stem.1"] = "entry_flow.block1.conv2"  # a bare conv: the first module's norm follows it
    else:
        table["stem.1.conv"] = "entry_flow.block1.conv2"
        table["stem.1.bn"] = "entry_flow.block1.conv2_bn"
    for j, (ours, block) in enumerate(modules_after_stem(skeleton(name))):
        for i, sep in enumerate(sepconvs(block), start=1):
            theirs, mine = f"blocks.{j}.stack.conv{i}", f"{ours}.main.{sep}"
            table[f"{theirs}.conv_dw"] = f"{mine}.depthwise"
            table[f"{theirs}.conv_pw"] = f"{mine}.pointwise"
            if preact:
                table[f"{theirs}.norm"] = f"{mine}_bn"
            else:
                table[f"{theirs}.bn_dw"] = f"{mine}.norm"
                table[f"{theirs}.bn_pw"] = f"{mine}_bn"
        if preact:
            table[f"blocks.{j}.norm"] = f"{ours}.pre.bn"
            table[f"blocks.{j}.shortcut"] = f"{ours}.shortcut.conv"
        else:
            table[f"blocks.{j}.shortcut.conv"] = f"{ours}.shortcut.conv"
            table[f"blocks.{j}.shortcut.bn"] = f"{ours}.shortcut.bn"
    return table


def read_torch(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A state dict from a ``.pth`` file, without running any code from it."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        what = f" (it contains a {found[1]} object)" if found else ""
        raise WeightsError(
            f"{path} refused: it is a pickle that needs Python code to load{what}, and unpickling it would run "
            "that code. Only tensors and plain containers are read. If you trust the file, load it yourself "
            "and save just the weights: torch.save(checkpoint['state_dict'], 'weights.pth')"
        ) from err
    except Exception as err:  # a damaged file: torch raises RuntimeError, EOFError, BadZipFile, UnicodeDecodeError…
        reason = str(err).split(". ")[0] or type(err).__name__
        raise WeightsError(f"{path} is not a readable PyTorch checkpoint ({reason}); it may be truncated or in "
                           "another format: download or export it again") from err
    return unwrap(data, path)


def unwrap(data: object, path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of a state dict, also when a training checkpoint wraps it (``state_dict``, ``model``)
    or DataParallel prefixed it (``module.``)."""
    if isinstance(data, dict):
        for key in ("state_dict", "model"):
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not data or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()
    ):
        raise WeightsError(f"{path} holds a {type(data).__name__}, not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in data.items()}


def identify(state: dict[str, torch.Tensor]) -> str | None:
    """Which timm variant a state dict belongs to, from its keys (None: not a timm Xception)."""
    if "block1.rep.0.conv1.weight" in state:
        return TIMM_NAMES["legacy_xception"]
    if "stem.0.conv.weight" in state:
        modules = {int(m[1]) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
        preact = "blocks.0.norm.weight" in state
        return ALIGNED_VARIANTS.get((preact, len(modules)))
    return None


def map_timm_state(state: dict[str, torch.Tensor], source: str) -> MappedWeights:
    """A timm / Cadene Xception state dict as mapped weights for the model of the same name."""
    name = identify(state)
    if name is None:
        sample = ", ".join(list(state)[:4])
        raise WeightsError(
            f"{source}: a state dict with keys like {sample} is not an Xception this library knows (timm's "
            f"legacy_xception, {', '.join(sorted(set(ALIGNED_VARIANTS.values())))}, or a file of ours)"
        )
    table = legacy_table() if name == "legacy_xception" else aligned_table(name)
    tensors, names, unmapped = rename(state, table)
    for key, value in tensors.items():
        # Cadene's original file stored pointwise kernels as (out, in) matrices; PyTorch wants (out, in, 1, 1).
        if key.endswith("pointwise.weight") and value.ndim == 2:
            tensors[key] = value[:, :, None, None]
    mapped = MappedWeights("timm", name, tensors, names, unmapped, preprocessing=PREPROCESSING[name])
    mapped.class_names = imagenet_class_names() if mapped.num_classes == 1000 else None
    return mapped
