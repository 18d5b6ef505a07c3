"""What every weights format becomes before it meets a model, and the one place tensors enter a model.

Each reader (:mod:`.keras`, :mod:`.keras3`, :mod:`.timm`, :mod:`.native`) turns a file into a
:class:`MappedWeights`: the tensors renamed to our module names and converted to PyTorch layouts, plus
what the file says about them. :func:`load_into` then checks them against the model, all at once, before
copying anything:

* the classifier alone differs (another ``num_classes``, or a file without one): the backbone loads, the
  classifier keeps its fresh initialisation, and the skipped tensors are reported;
* anything else missing, unexpected or misshaped: :class:`WeightsMismatchError` counts it, names the first
  few of each, and says which model (and options) the file's tensors do fit, when one does.

RGB weights also go into a model with another number of input channels: :func:`adapt_input_channels`
rewrites the first conv, as timm does (summed for one channel; repeated and rescaled for more).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, WeightsError, hint, model_option
from ..models import MODELS, Xception, XceptionConfig, build_model, model_config
from ..preprocessing import Preprocessing

HEAD = ("head.fc.weight", "head.fc.bias")
STEM = "entry_flow.block1.conv1.weight"
SHOWN = 5  # names listed per kind of mismatch


@dataclass
class MappedWeights:
    """Weights read from a file, in our names and layouts, with what the file says about them.

    Attributes:
        format: ``"keras-h5"`` (legacy Keras), ``"keras3"`` (``.keras``, ``.weights.h5``), ``"timm"``,
            ``"xception"`` (our safetensors files) or ``"xception-state-dict"`` (a bare state dict of ours).
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
        stem = self.tensors.get(STEM)
        return 3 if stem is None else stem.shape[1]

    def file_name(self, key: str) -> str:
        return self.source_names.get(key, key)


@dataclass(frozen=True)
class LoadReport:
    """How a file's tensors went into a model: ``skipped`` names the file's tensors left out (in the
    file's own names), ``new_head`` says the classifier kept its fresh initialisation, and ``adapted``
    says how the first conv was rewritten for another number of input channels (None: as in the file)."""

    source: str
    format: str
    model: str
    loaded: int
    skipped: tuple[str, ...] = ()
    new_head: bool = False
    adapted: str | None = None


class WeightsMismatchError(WeightsError):
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


# -- input channels ---------------------------------------------------------------------------------------

def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """An RGB first conv ``(out, 3, kh, kw)`` rewritten for ``in_chans`` input channels (timm's convention).

    1 channel: the sum over R, G and B, so a gray image ``g`` gives what ``(g, g, g)`` gives the RGB
    weights. N channels: R, G, B repeated over the N channels and scaled by 3/N, so an RGB image repeated
    N/3 times gives the RGB output (for N = 2, 4, 5, … the repetition is cut off after N channels).
    """
    if weight.shape[1] != 3:
        raise WeightsError(f"only RGB first convs can be adapted; this one takes {weight.shape[1]} channels")
    wide = weight.double()  # sums and the 3/N scale in float64, rounded once
    if in_chans == 1:
        adapted = wide.sum(1, keepdim=True)
    else:
        adapted = wide.repeat(1, math.ceil(in_chans / 3), 1, 1)[:, :in_chans] * (3 / in_chans)
    return adapted.to(weight.dtype)


def adapt_input_channels(mapped: MappedWeights, in_chans: int, source: str) -> tuple[MappedWeights, str | None]:
    """``mapped`` with its first conv rewritten for ``in_chans`` channels (:func:`adapt_input_conv`), and a
    sentence saying so for the load report (None when nothing changed)."""
    have = mapped.in_chans
    if in_chans == have or STEM not in mapped.tensors:
        return mapped, None
    if have != 3:
        raise WeightsError(
            f"{source}: the weights are for {have}-channel images and the model for {in_chans}-channel ones; only "
            f"RGB weights are adapted to other channel counts: build the model with {model_option('in_chans', have)}"
        )
    how = ("summed over R, G and B" if in_chans == 1
           else f"R, G, B repeated over {in_chans} channels and scaled by 3/{in_chans}")
    tensors = {**mapped.tensors, STEM: adapt_input_conv(mapped.tensors[STEM], in_chans)}
    note = f"first conv adapted from 3 to {in_chans} input channels ({how})"
    return dataclasses.replace(mapped, tensors=tensors), note


# -- which model a set of tensors fits ---------------------------------------------------------------------

def _body(keys: Iterator[str] | Mapping[str, Any]) -> set[str]:
    """The keys that say which network it is: not the classifier, not BN update counters."""
    return {k for k in keys if not k.startswith("head.") and not k.endswith("num_batches_tracked")}


def fitting_models(tensors: Mapping[str, torch.Tensor]) -> list[tuple[str, dict[str, Any]]]:
    """The registered models, with the options to pass, whose backbone these tensors (our names) fill
    exactly: every key and every shape. Only options that change shapes are found (``width``,
    ``middle_repeats``); the classifier size and input channels already follow the file."""
    body = _body(tensors)
    stem = tensors.get(STEM)
    if not body or stem is None or stem.dim() != 4:
        return []
    middle = len({m[1] for k in body if (m := re.match(r"middle_flow\.(block\d+)\.", k))})
    fits = []
    for name in MODELS:
        base = model_config(name)
        tries: list[dict[str, Any]] = [{}]
        if middle != base.architecture.middle_repeats:
            tries.append({"middle_repeats": middle})
        width = stem.shape[0] / base.architecture.stem_channels[0]
        if width != 1.0:
            tries += [{**t, "width": width} for t in list(tries)]
        for options in tries:
            expected = _backbone_shapes(name, stem.shape[1], tuple(options.items()))
            if expected is not None and expected.keys() == body and all(
                tuple(tensors[k].shape) == shape for k, shape in expected.items()
            ):
                fits.append((name, options))
                break
    return fits


@functools.lru_cache(maxsize=64)
def _backbone_shapes(
    name: str, in_chans: int, options: tuple[tuple[str, Any], ...]
) -> dict[str, tuple[int, ...]] | None:
    """Shapes of the backbone tensors of ``name`` built with ``options`` (None: not a valid config)."""
    try:
        config = model_config(name, in_chans=in_chans, num_classes=0, **dict(options))
    except ConfigError:
        return None
    with torch.device("meta"):
        state = Xception(config).state_dict()
    return {k: tuple(state[k].shape) for k in _body(state)}


def _pass(name: str, options: dict[str, Any]) -> str:
    """How to ask for ``name`` with ``options``, in the caller's syntax."""
    parts = [hint(f'name="{name}"', f"--model {name}")] + [model_option(k, v) for k, v in options.items()]
    return hint(", ", " ").join(parts)


def fit_hint(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """A sentence naming the model the tensors fit and how to ask for it (None when none fits).

    Models that fit as they are win over those that need options (xception65 with ``middle_repeats=8``
    is xception41)."""
    fits = fitting_models(tensors)
    if not fits:
        return None
    fewest = min(len(options) for _, options in fits)
    fits = [(name, options) for name, options in fits if len(options) == fewest]
    names = " or ".join(repr(name) for name, _ in fits)
    ways = " or ".join(_pass(name, options) for name, options in fits)
    note = ""
    if {name for name, _ in fits} >= {"xception", "legacy_xception"}:
        note = " ('xception' computes as Keras does, 'legacy_xception' as timm does: pick the one it was trained as)"
    return f"the file's tensors are those of {names}: pass {ways}{note}"


def _listing(title: str, items: list[str], limit: int = SHOWN) -> str:
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
        unexpected_names = [mapped.file_name(k) for k in unexpected] + mapped.unmapped
        message = (f"{source} ({mapped.format} weights for {mapped.model}) does not fit {model.config.arch}: "
                   f"{len(missing)} tensors missing, {len(unexpected_names)} unexpected, {len(misshaped)} misshaped")
        if missing:
            message += _listing("missing from the file", missing)
        if unexpected_names:
            message += _listing("unexpected in the file", unexpected_names)
        if misshaped:
            message += _listing("shape differs (file vs model)", [
                f"{mapped.file_name(k)} {tuple(mapped.tensors[k].shape)} vs {tuple(expected[k].shape)}"
                for k in misshaped
            ])
        if (fits := fit_hint(mapped.tensors)) is not None:
            message += f"\n  {fits}"
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
