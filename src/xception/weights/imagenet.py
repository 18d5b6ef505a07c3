"""ImageNet-1k's 1000 class names, in the order every ImageNet classifier uses (sorted WordNet ids).

Shipped with the package (``imagenet_classes.txt``: WordNet id, tab, name) so that predictions have names
without a download.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

NUM_CLASSES = 1000


@cache
def _table() -> tuple[tuple[str, str], ...]:
    text = files(__package__).joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    rows = tuple((wnid, name) for wnid, name in (line.split("\t") for line in text.splitlines()))
    if len(rows) != NUM_CLASSES:
        raise RuntimeError(f"imagenet_classes.txt has {len(rows)} rows, expected {NUM_CLASSES}; reinstall xception")
    return rows


def imagenet_class_names() -> list[str]:
    """The 1000 human-readable names, index = class id (``0: 'tench'``, ``1: 'goldfish'``, …)."""
    return [name for _, name in _table()]


def imagenet_wnids() -> list[str]:
    """The 1000 WordNet ids (``n01440764``, …), index = class id."""
    return [wnid for wnid, _ in _table()]
