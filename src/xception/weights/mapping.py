"""What every weights format becomes before it meets a model, and the one place tensors enter a model.

Each reader (:mod:`.keras`, :mod:`.timm`, :mod:`.native`) turns a file into a :class:`MappedWeights`: the
tensors renamed to our module names and converted to PyTorch layouts, plus what the file says about
them. :func:`load_into` then checks them against the model, all at once, before copying anything:

* the classifier alone differs (another ``num_classes``, or a file without one): the backbone loads, the
  classifier keeps its fresh initialisation, and the skipped tensors are reported;
* anything else missing, unexpected or misshaped: :class:`WeightsMismatchError` lists it all.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..models import Xception, XceptionConfig, build_model
from ..preprocessing import Preprocessing

HEAD = ("head.fc.weight", "head.fc.bias")


@dataclass
class MappedWeights:
    """Weights read from a file, in our names and layouts, with what the file says about them.

    Attributes:
        format: ``"keras-h5"``, ``"timm"`` or ``"xception"`` (our safetensors files).
        model: the registry name whose computation these weights were trained with.
        tensors: our parameter/buffer name → tensor (PyTorch layout).
        source_names: our name → the tensor's name in the file, for messages.
        unmapped: names in the file that no table row accounts for (reported as unexpected).
        config: the full model config, when the file records one (our format).
        preprocessing, class_names, metrics: what the weights expect and achieved, where known.
        source, sha256: where the weights first came from, as our files record it (None: this file).
    """

    format: str
    model: str
    tensors: dict[str, torch.Tensor]
    source_names: dict[str, str] = field(default_factory=dict)
    unmapped: list[str] = field(default_factory=list)
    config: XceptionConfig | None = None
    preprocessing: Preprocessing | None = None
    class_names: list[str] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    source: str | None = None
    sha256: str | None = None

    @property
    def num_classes(self) -> int:
        """Classes of the file's classifier (0: it has none)."""
        head = self.tensors.get("head.fc.bias", self.tensors.get("head.fc.weight"))
        return 0 if head is None else head.shape[0]

    @property
    def in_chans(self) -> int:
        """Input channels of the file's first conv."""
        stem = self.tensors.get("entry_flow.block1.conv1.weight")
        return 3 if stem is None else stem.shape[1]

    def file_name(self, key: str) -> str:
        return self.source_names.get(key, key)


@dataclass(frozen=True)
class LoadReport:
    """How a file's tensors went into a model: ``skipped`` names the file's tensors left out (in the
    file's own names) and ``new_head`` says the classifier kept its fresh initialisation."""

    source: str
    format: str
    model: str
    loaded: int
    skipped: tuple[str, ...] = ()
    new_head: bool = False


class WeightsMismatchError(ValueError):
    """The file's tensors do not fit the model (beyond a different classifier)."""


class HeadReplacedWarning(UserWarning):
    """The file's classifier was left out (another ``num_classes``), or the file had none."""


def skeleton(name: str) -> Xception:
    """The named network's structure, without memory (meta device): what the key tables walk."""
    with torch.device("meta"):
        return build_model(name)


def sepconvs(block: nn.Module) -> list[str]:
    """The separable convs of a module's main branch, in order: ``["sepconv1", "sepconv2", ...]``."""
    main = getattr(block, "main", None)
    return [n for n in (main._modules if main is not None else ()) if re.fullmatch(r"sepconv\d+", n)]


def has_shortcut_conv(block: nn.Module) -> bool:
    return isinstance(getattr(block, "shortcut", None), nn.Sequential)


def modules_after_stem(model: Xception) -> Iterator[tuple[str, nn.Module]]:
    """Our residual modules in order (block2 onwards), with their full names."""
    blocks = model.blocks()
    next(blocks)
    yield from blocks


def rename(
    state: dict[str, torch.Tensor], table: dict[str, str]
) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """Rename ``module.param`` keys with a module table: (tensors, our name → file name, unmapped keys)."""
    tensors: dict[str, torch.Tensor] = {}
    names: dict[str, str] = {}
    unmapped: list[str] = []
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        if module not in table:
            unmapped.append(key)
            continue
        ours = f"{table[module]}.{param}"
        tensors[ours], names[ours] = value, key
    return tensors, names, unmapped


def _listing(title: str, items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit]) + (f", … ({len(items) - limit} more)" if len(items) > limit else "")
    return f"\n  {title} ({len(items)}): {shown}"


def load_into(model: Xception, mapped: MappedWeights, source: str) -> LoadReport:
    """Give ``model`` (built on the meta device, so without memory yet) the mapped tensors.

    Everything is checked before any memory is allocated, and every tensor of the model is then written:
    from the file, or, for what a file may lack, BN update counters set to zero and a new classifier
    initialised as a fresh model's would be. On an error the model stays an empty shell.
    """
    expected = model.state_dict()
    # Counters of BN updates carry no information for inference; files from Keras or old PyTorch lack them.
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    missing = [k for k in expected if k not in mapped.tensors and k not in optional]
    unexpected = [k for k in mapped.tensors if k not in expected]
    misshaped = [k for k in mapped.tensors if k in expected and mapped.tensors[k].shape != expected[k].shape]
    problems = set(missing) | set(unexpected) | set(misshaped)

    new_head = bool(problems) and problems <= set(HEAD) and not mapped.unmapped
    if (problems and not new_head) or mapped.unmapped:
        message = f"{source} ({mapped.format} weights for {mapped.model}) does not fit {model.config.arch}:"
        if missing:
            message += _listing("missing from the file", missing)
        if unexpected or mapped.unmapped:
            message += _listing("unexpected in the file", [mapped.file_name(k) for k in unexpected] + mapped.unmapped)
        if misshaped:
            message += _listing("shape differs (file vs model)", [
                f"{mapped.file_name(k)} {tuple(mapped.tensors[k].shape)} vs {tuple(expected[k].shape)}"
                for k in misshaped
            ])
        raise WeightsMismatchError(message)

    skipped = tuple(mapped.file_name(k) for k in HEAD if k in mapped.tensors) if new_head else ()
    state = {k: v for k, v in mapped.tensors.items() if not (new_head and k in HEAD)}
    model.to_empty(device="cpu")
    if new_head:
        model.head.reset(model.config.num_classes)
    written = set(state) | (set(HEAD) if new_head else set())
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if key in state:
                tensor.copy_(state[key])
            elif key in optional:
                tensor.zero_()
            elif key not in written:
                raise RuntimeError(f"{key} was neither loaded nor initialised")  # unreachable after the checks
    if new_head:
        classes = model.config.num_classes
        if classes == 0:
            what = f"the model has no classifier (num_classes=0); skipped the file's {', '.join(skipped)}"
        elif not skipped:
            what = f"the file has no classifier; the model's {classes}-class classifier is freshly initialised"
        else:
            what = (f"the file's classifier has {mapped.num_classes} classes, the model {classes}; skipped "
                    f"{', '.join(skipped)} and initialised a new classifier")
        warnings.warn(f"{source}: {what}", HeadReplacedWarning, stacklevel=3)
    new_head = new_head and model.config.num_classes > 0
    return LoadReport(source, mapped.format, mapped.model, len(state), skipped, new_head)
