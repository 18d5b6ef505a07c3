"""One record per variant: the registry, the weights tags and the timm tables are all read from it."""

from __future__ import annotations

import pytest

import xception
from xception.catalog import CATALOG, HF_HUB, by_timm_name, variant
from xception.errors import ConfigError
from xception.models import ARCHITECTURES, MODELS, model_config, model_entry
from xception.weights import hub
from xception.weights.timm import ALIGNED_VARIANTS, PREPROCESSING, TIMM_NAMES


def test_the_registry_is_the_catalog():
    assert MODELS is CATALOG and xception.list_models() == list(CATALOG)
    for name, record in CATALOG.items():
        assert record.name == name and record.arch in ARCHITECTURES
        assert model_entry(name) is record
        config = model_config(name)
        assert config.arch == record.arch and all(getattr(config, k) == v for k, v in record.config.items())
    with pytest.raises(ConfigError, match="unknown model 'xception99'; known models: xception, legacy_xception"):
        variant("xception99")


def test_every_tag_is_a_published_set_of_weights_of_a_registered_variant():
    published = {f"{r.name}.{w.tag}": (r, w) for r in CATALOG.values() for w in r.weights}
    assert list(hub.TAGS) == list(published)
    for name, tag in hub.TAGS.items():
        record, weights = published[name]
        assert tag.model == record.name in xception.list_models()
        assert (tag.url, tag.checksum, tag.preprocessing, tag.num_classes, tag.source, tag.metrics) == (
            weights.url, weights.checksum, weights.preprocessing, weights.num_classes, weights.source,
            dict(weights.metrics))
    assert {r.name: f"{r.name}.{r.weights[0].tag}" for r in CATALOG.values() if r.weights} == hub.DEFAULT_TAGS
    assert {"xception.keras_in1k", "legacy_xception.tf_in1k"} <= set(hub.TAGS)  # the tags users know stay


def test_checksums_are_published_ones_or_none_for_the_hub():
    for record in CATALOG.values():
        for weights in record.weights:
            if weights.on_hub:  # nothing invented: the Hub's own sha256 is checked, and the record says so
                assert weights.checksum is None and "no checksum published" in weights.source
                assert weights.url == f"{HF_HUB}timm/{record.timm_name}.{weights.tag}"
            else:
                assert weights.url.startswith("https://") and weights.checksum is not None


def test_every_variants_timm_name_maps_back():
    for record in CATALOG.values():
        if record.timm_name is not None:
            assert TIMM_NAMES[record.timm_name] == record.name and by_timm_name(record.timm_name) is record
            assert PREPROCESSING[record.name] == record.preprocessing
    assert sorted(ALIGNED_VARIANTS.values()) == sorted(n for n in TIMM_NAMES.values() if n != "legacy_xception")
    assert ALIGNED_VARIANTS[(False, 21)] == "xception65" and ALIGNED_VARIANTS[(True, 13)] == "xception41p"
    assert by_timm_name("resnet50") is None


def test_the_records_agree_with_timms_own_pretrained_configs():
    timm_models = pytest.importorskip("timm.models")
    for record in CATALOG.values():
        if record.timm_name is None:
            continue
        default = timm_models.get_pretrained_cfg(record.timm_name)
        assert default.tag == record.default_weights.tag  # the same default weights as timm's
        for weights in record.weights:
            cfg = timm_models.get_pretrained_cfg(f"{record.timm_name}.{weights.tag}")
            where = f"{HF_HUB}{cfg.hf_hub_id}" if cfg.hf_hub_id else cfg.url
            assert where == weights.url
            pre = weights.preprocessing
            assert (pre.crop_pct, pre.input_size, pre.interpolation, pre.mean, pre.std) == (
                cfg.crop_pct, cfg.input_size[-1], cfg.interpolation, tuple(cfg.mean), tuple(cfg.std))
