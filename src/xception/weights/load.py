"""Weights from anywhere into a model: a local path, a URL or a named tag; Keras, timm or our own files.

The format is read from the file's content, never from its extension. Whatever the format, the file
decides which network it belongs to (Keras weights → ``xception``, timm's → the timm variant, ours → the
recorded config), its classifier size becomes the default ``num_classes``, and the model comes back in
eval mode with the preprocessing and class names that belong to the weights. RGB weights go into a model
with another ``in_chans`` through an adapted first conv (:func:`~xception.weights.mapping.adapt_input_channels`).

A training checkpoint (``last.pt``, ``best.pt``) is weights too, recognised by what it holds, and so is a run
folder: its ``model.safetensors``, or its best intact checkpoint when the run wrote none
(:mod:`.checkpoint`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import ConfigError, MissingPathError, WeightsError, hint
from ..fileio import sha256_file
from ..models import Xception, model_config
from ..preprocessing import Preprocessing
from . import hfhub, hub, keras3
from .checkpoint import as_weights, run_folder_weights
from .keras import read_keras
from .mapping import STEM, LoadReport, MappedWeights, adapt_input_channels, fit_hint, load_into
from .meta import WeightsMeta
from .native import is_int8_file, read_metadata, read_weights, save_weights
from .timm import map_timm_state, read_torch, unwrap

Format = Literal["hdf5", "keras", "torch", "safetensors"]
SUPPORTED = ("Keras 3 .keras and .weights.h5, Keras .h5 (legacy HDF5 layout), PyTorch/timm .pth state dicts, "
             "safetensors (timm's or ours), training checkpoints and run folders of this library")
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"

log = logging.getLogger(__name__)


def detect_format(path: str | os.PathLike[str]) -> Format:
    """The container a weights file uses, from its first bytes (and, for a zip archive, the names of its
    members: a ``.keras`` file or a torch.save file); a :class:`WeightsError` for anything else."""
    with open(path, "rb") as f:
        head = f.read(16)
    size = os.path.getsize(path)
    if not head:
        raise WeightsError(f"{path} is empty; download or export it again")
    if head.startswith(HDF5_MAGIC):
        return "hdf5"
    # torch.save writes a zip archive (PK..); before PyTorch 1.6 it wrote a bare pickle (protocol 2+).
    if head.startswith(b"PK\x03\x04"):
        return "keras" if keras3.is_keras_archive(path) else "torch"
    if head[0] == 0x80 and 2 <= head[1] <= 5:
        return "torch"
    # safetensors: a little-endian u64 header length, then the JSON header.
    if len(head) > 8 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size:
        return "safetensors"
    raise WeightsError(f"{path} is not a weights file this library reads (it starts with {head[:8]!r}); "
                       f"supported: {SUPPORTED}")


def _our_state_dict(state: dict[str, Any], name: str | None, path: str | os.PathLike[str]) -> MappedWeights:
    """A bare state dict in our own names (e.g. ``torch.save(model.state_dict())``): the name is needed,
    since nothing in the file says which padding and BN settings it was trained with."""
    if name is None:
        fits = fit_hint(state)
        how = fits or "name its model, e.g. " + hint("create_model('xception', weights=...)", "--model xception")
        raise WeightsError(f"{path} is a state dict of this library without metadata: {how}; save it with "
                           "xception.save_weights to keep its metadata")
    return MappedWeights("xception-state-dict", name, dict(state))


def read_mapped_weights(path: str | os.PathLike[str], *, name: str | None = None) -> MappedWeights:
    """Read any supported file into a :class:`MappedWeights` (our names, PyTorch layouts)."""
    kind = detect_format(path)
    if kind == "keras":
        return keras3.read_archive(path)
    if kind == "hdf5":
        return keras3.read_weights_h5(path) if _keras3_layout(path) else read_keras(path)
    if kind == "safetensors":
        meta = read_metadata(path)
        if meta is not None:
            tensors, meta = read_weights(path)
            return MappedWeights(
                "xception", meta.model, tensors, config=meta.config, preprocessing=meta.preprocessing,
                class_names=meta.class_names, metrics=meta.metrics, source=meta.source, sha256=meta.sha256,
            )
        if is_int8_file(path):
            raise WeightsError(f"{path} is an int8 model of 'xception quantize', not float weights: predict, "
                               "evaluate, serve and bench run it as it is; to change it, quantise the float "
                               "weights again")
        try:
            state = load_file(str(path))
        except SafetensorError as err:
            raise WeightsError(f"{path} is a damaged or truncated safetensors file ({err}); download it again") from err
    else:
        data = _load_torch(path)
        if isinstance(data, dict) and "model_config" in data:  # a training checkpoint: its config beside the weights
            return as_weights(data, path)
        state = unwrap(data, path)
    if STEM in state:
        return _our_state_dict(state, name, path)
    return map_timm_state(state, str(path))


def _load_torch(path: str | os.PathLike[str]) -> object:
    """What a torch.save file holds, tensors and plain containers only (``weights_only``: nothing runs)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        read_torch(path)  # raises the error that says why (code it would have to run, or a damaged file)
        raise


def _keras3_layout(path: str | os.PathLike[str]) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return keras3.is_keras3_h5(f)
    except keras3.H5_ERRORS:
        return False  # damaged: the legacy reader says so


def _for_channels(pre: Preprocessing | None, channels: int) -> Preprocessing | None:
    """RGB preprocessing for an adapted first conv: one channel takes the mean of the three means (and
    stds), N channels repeat them as the weights repeat R, G, B."""
    if pre is None or pre.channels == channels:
        return pre
    if channels == 1:
        return pre.replace(channels=1, mean=(sum(pre.mean) / len(pre.mean),), std=(sum(pre.std) / len(pre.std),))
    return pre.replace(channels=channels, mean=tuple(pre.mean[i % pre.channels] for i in range(channels)),
                       std=tuple(pre.std[i % pre.channels] for i in range(channels)))


def resolve(
    weights: str | os.PathLike[str] | hub.WeightsTag, *, name: str | None = None, progress: bool = True
) -> tuple[Path, hub.WeightsTag | None]:
    """The local file behind ``weights`` (downloading a tag's, URL's or Hub file), and its tag if it has one.

    A path that exists wins (a folder: a training run's, see :func:`_run_folder_weights`); then URLs
    (``http(s)://``) and Hugging Face Hub files (``hf-hub:ORG/NAME[/FILE][@REVISION]``; a known source gets
    its tag); then tags; ``"imagenet"`` is the default tag of ``name`` (``xception`` → the Keras file).
    """
    if isinstance(weights, hub.WeightsTag):
        return hub.fetch(weights, progress=progress), weights
    text = os.fspath(weights)
    if Path(text).exists():
        if Path(text).is_dir():
            return _run_folder_weights(Path(text)), None
        return Path(text), None
    if text.startswith(("http://", "https://")):
        return hub.fetch(text, progress=progress), None
    if hfhub.is_hub_ref(text):
        return hub.fetch(text, progress=progress), hub.tag_for_url(text)
    if text == "imagenet":
        default = hub.DEFAULT_TAGS.get(name or "xception")
        if default is None:
            raise ConfigError(f"no default ImageNet weights for {name!r}; known tags: {', '.join(hub.TAGS)}")
        text = default
    if text in hub.TAGS:
        tag = hub.TAGS[text]
        return hub.fetch(tag, progress=progress), tag
    raise MissingPathError(
        f"weights {text!r}: no such file, and not a URL or a known tag ({', '.join(hub.TAGS)}, imagenet); "
        "a file on the Hugging Face Hub is hf-hub:ORG/NAME"
    )


def _run_folder_weights(folder: Path) -> Path:
    """A training run's folder as weights: its model.safetensors, else its best intact checkpoint (said in a
    warning); an :class:`~xception.errors.IsAFolderError` for a folder that holds neither."""
    path, note = run_folder_weights(folder)
    if note is not None:
        log.warning(note)
    return path


def _name_conflict(requested: str, mapped: MappedWeights, source: str) -> str:
    message = f"{source} holds {mapped.format} weights for {mapped.model!r}, but {requested!r} was requested. "
    if {requested, mapped.model} == {"xception", "legacy_xception"}:
        message += ("'xception' computes as Keras does (TF 'same' padding, BN eps 1e-3), 'legacy_xception' as "
                    "timm does (symmetric padding, eps 1e-5): on the same weights their outputs differ. ")
    overrides = hint("padding= and bn_eps= overrides", "--set model.padding=… and --set model.bn_eps=…")
    ask = hint(f"Leave the name out or ask for {mapped.model!r}", f"Leave --model out or pass --model {mapped.model}")
    return message + f"{ask} ({overrides} still apply if you mean to change how it computes)."


class Loaded(NamedTuple):
    """What :func:`load_pretrained` returns: the model, and how the file's tensors went into it."""

    model: Xception
    report: LoadReport


def load_pretrained(
    weights: str | os.PathLike[str] | hub.WeightsTag,
    *,
    name: str | None = None,
    progress: bool = True,
    **overrides: Any,
) -> Loaded:
    """A model carrying ``weights`` (path, URL, ``hf-hub:ORG/NAME`` or tag), in eval mode, and the report of
    the load.

    A training checkpoint (``last.pt``, ``best.pt``) gives the model the run would export at that point (its
    EMA weights when it averages), with its config, class names and preprocessing; a run folder gives its
    ``model.safetensors``, or its best intact checkpoint when it has none.

    The model's ``weights_meta`` says what the weights mean (preprocessing, class names, source, metrics).
    ``name`` (optional) must agree with the weights. ``overrides`` change the config; a different
    ``num_classes`` keeps the backbone and starts a new classifier (a
    :class:`~xception.weights.mapping.HeadReplacedWarning`, and ``report.new_head``); another ``in_chans``
    adapts RGB weights' first conv (summed for 1 channel, repeated and scaled by 3/N for N; said in
    ``report.adapted``). Any other disagreement raises
    :class:`~xception.weights.mapping.WeightsMismatchError`, and no model is returned.
    """
    path, tag = resolve(weights, name=name, progress=progress)
    source = f"{tag.name} ({tag.url})" if tag else os.fspath(weights)
    mapped = read_mapped_weights(path, name=name)
    if name is not None and name != mapped.model:
        raise ConfigError(_name_conflict(name, mapped, source))
    if tag is not None:
        mapped = dataclasses.replace(mapped, preprocessing=tag.preprocessing, metrics=dict(tag.metrics),
                                     class_names=tag.class_names or mapped.class_names)
    if mapped.config is not None:
        config = mapped.config.replace(**overrides)
    else:
        config = model_config(mapped.model, **{"num_classes": mapped.num_classes, "in_chans": mapped.in_chans,
                                               **overrides})
    mapped, adapted = adapt_input_channels(mapped, config.in_chans, source)
    if adapted is not None:
        mapped.preprocessing = _for_channels(mapped.preprocessing, config.in_chans)
    with torch.device("meta"):  # memory comes once the file's tensors have been checked
        model = Xception(config)
    report = dataclasses.replace(load_into(model, mapped, source), adapted=adapted)
    intact = not report.skipped and not report.new_head  # the classifier is the file's own
    model.weights_meta = WeightsMeta(
        model=mapped.model, config=config,
        class_names=mapped.class_names if intact and config.num_classes else None,
        preprocessing=mapped.preprocessing,
        source=source if mapped.source is None else mapped.source,
        sha256=sha256_file(path) if mapped.sha256 is None else mapped.sha256,
        metrics=mapped.metrics if intact else {},
    )
    return Loaded(model.eval(), report)


def load_native(path: str | os.PathLike[str], **overrides: Any) -> Xception:
    """Rebuild the network one of our files describes and load its weights, in eval mode."""
    if read_metadata(path) is None:
        raise WeightsError(f"{path} is a safetensors file without xception metadata; convert it with "
                           "'xception convert'")
    return load_pretrained(Path(path), **overrides).model


def convert_weights(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], *, name: str | None = None, progress: bool = True
) -> tuple[WeightsMeta, LoadReport]:
    """Convert any supported weights (path, URL or tag) into our safetensors format at ``dst``."""
    model, report = load_pretrained(src, name=name, progress=progress)
    return save_weights(model, dst), report
