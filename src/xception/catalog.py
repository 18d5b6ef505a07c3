"""One record per named variant: everything known about it, in one place.

A :class:`VariantRecord` names the module-spec table it builds (``arch``, a key of
:data:`xception.models.config.ARCHITECTURES`, where the tables stay as data), the config defaults that make
it compute what its source computes, its name in timm, and the weights published for it, each with its
source, its checksum where one is published, and the preprocessing and class count that go with it. The
variant's default preprocessing is that of its first (default) weights.

The model registry (:mod:`xception.models.registry`) reads the architecture and the config defaults; the
weights package derives its tags (:mod:`xception.weights.hub`) and its timm tables
(:mod:`xception.weights.timm`) from the same records. The records mention weights files, and the model
package knows nothing of weights, so they live here, beside :mod:`xception.preprocessing`, as plain data
both packages import: this module imports nothing of the library but the preprocessing description, so
neither package reaches into the other through it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .errors import ConfigError
from .preprocessing import KERAS, TIMM_LEGACY, Preprocessing

HF_HUB = "hf-hub:"  # the prefix of a Hugging Face Hub repository, as timm writes it


@dataclass(frozen=True)
class PublishedWeights:
    """One published set of weights of a variant; its tag is ``<variant>.<tag>`` (``xception.keras_in1k``).

    ``url`` is an ``https://`` URL, or ``hf-hub:ORG/NAME`` for a repository on the Hugging Face Hub.
    ``checksum`` is ``"md5:<hex>"`` or ``"sha256:<hex>"`` (a sha256 may be the prefix a file name carries);
    None where the source publishes none: a Hub file is then checked against the sha256 the Hub states for
    it (its LFS ETag), never against a digest of ours. ``metrics`` are accuracies the source reports, in
    percent, on the ImageNet validation set.
    """

    tag: str
    url: str
    checksum: str | None
    preprocessing: Preprocessing
    source: str
    num_classes: int = 1000
    metrics: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", MappingProxyType(dict(self.metrics)))

    @property
    def on_hub(self) -> bool:
        return self.url.startswith(HF_HUB)


@dataclass(frozen=True)
class VariantRecord:
    """A registered name: which table it builds, with which defaults, what it is, and its weights."""

    name: str
    arch: str
    description: str
    config: Mapping[str, Any] = field(default_factory=dict)  # XceptionConfig fields on top of the defaults
    timm_name: str | None = None
    weights: tuple[PublishedWeights, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "config", MappingProxyType(dict(self.config)))

    @property
    def default_weights(self) -> PublishedWeights | None:
        """What ``weights="imagenet"`` loads: the first weights listed."""
        return self.weights[0] if self.weights else None

    @property
    def preprocessing(self) -> Preprocessing | None:
        """What the variant's default weights expect of their input."""
        return self.default_weights.preprocessing if self.default_weights else None


_KERAS_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/xception/"
_KERAS_SOURCE = "keras.applications.Xception ImageNet weights (trained by F. Chollet)"
# timm's aligned weights: TensorFlow DeepLab's ImageNet checkpoints (tf_in1k) and timm's own training (ra3_in1k),
# evaluated at crop 0.903 and 0.94. The Hub publishes no checksum beside them; it states each file's sha256.
_TF_CROP, _RA3_CROP = Preprocessing(crop_pct=0.903), Preprocessing(crop_pct=0.94)
_NO_CHECKSUM = "; no checksum published (the Hub's sha256 of the file is checked)"


def _timm_hub(timm_name: str, tag: str) -> PublishedWeights:
    kind = ("TensorFlow DeepLab's ImageNet weights, ported by timm" if tag == "tf_in1k"
            else "trained on ImageNet-1k in timm")
    return PublishedWeights(tag, f"{HF_HUB}timm/{timm_name}.{tag}", None,
                            _TF_CROP if tag == "tf_in1k" else _RA3_CROP,
                            f"timm {timm_name}.{tag}: {kind}{_NO_CHECKSUM}")


def _aligned(name: str, description: str, tags: tuple[str, ...], **config: Any) -> VariantRecord:
    # timm builds the aligned family with symmetric padding; the first tag is timm's default for the name.
    return VariantRecord(name, name, description, {"padding": "symmetric", **config}, name,
                         tuple(_timm_hub(name, tag) for tag in tags))


# TF 'same' padding and BN eps 1e-3 reproduce Keras; symmetric padding and timm's eps reproduce timm's ports.
CATALOG: dict[str, VariantRecord] = {record.name: record for record in (
    VariantRecord(
        "xception", "xception", "the paper's model, as keras.applications.Xception computes it",
        weights=(
            PublishedWeights("keras_in1k", _KERAS_BASE + "xception_weights_tf_dim_ordering_tf_kernels.h5",
                             "md5:0a58e3b7378bc2990ea3b43d5981f1f6", KERAS, _KERAS_SOURCE,
                             metrics={"top1": 79.0, "top5": 94.5, "reported_by": "Chollet 2017, Table 1"}),
            PublishedWeights("keras_in1k_notop", _KERAS_BASE + "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
                             "md5:b0042744bf5b25fce3cb969f33bebb97", KERAS, _KERAS_SOURCE + ", without the classifier",
                             num_classes=0),
        ),
    ),
    VariantRecord(
        "legacy_xception", "xception",
        "the paper's model as timm/Cadene compute it (symmetric padding, BN eps 1e-5)",
        {"padding": "symmetric", "bn_eps": 1e-5}, "legacy_xception",
        (PublishedWeights(
            "tf_in1k",
            "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-cadene/xception-43020ad28.pth",
            "sha256:43020ad28", TIMM_LEGACY,
            "timm legacy_xception.tf_in1k: Cadene's PyTorch port of the Keras weights",
            metrics={"top1": 79.06, "reported_by": "timm results table", "cadene_top1": 78.888,
                     "cadene_top5": 94.292},
        ),),
    ),
    _aligned("xception41", "aligned Xception-41 (DeepLabv3+)", ("tf_in1k",)),
    _aligned("xception65", "aligned Xception-65 (DeepLabv3+)", ("ra3_in1k", "tf_in1k")),
    _aligned("xception71", "aligned Xception-71 (DeepLabv3+)", ("tf_in1k",)),
    _aligned("xception41p", "aligned Xception-41, pre-activation", ("ra3_in1k",), bn_eps=1e-5),
    _aligned("xception65p", "aligned Xception-65, pre-activation", ("ra3_in1k",)),
)}


def variant(name: str) -> VariantRecord:
    """The record of ``name``; a :class:`ConfigError` listing the known names for any other."""
    if name not in CATALOG:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(CATALOG)}")
    return CATALOG[name]


def by_timm_name(timm_name: str) -> VariantRecord | None:
    """The variant timm calls ``timm_name`` (None: timm has no such Xception here)."""
    return next((r for r in CATALOG.values() if r.timm_name == timm_name), None)
