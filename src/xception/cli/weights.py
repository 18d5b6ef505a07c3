"""``xception weights``: the named pretrained weights, where they come from, and the download cache."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ConfigError
from ._common import print_json


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "weights",
        help="list the named pretrained weights (tags) and download them into the cache",
        description="List the tags create_model(weights=TAG) accepts, with their model, classes, reported "
        "accuracy and whether the file is in the cache ($XCEPTION_CACHE, else $XDG_CACHE_HOME/xception; for a "
        "tag on the Hugging Face Hub, hf-hub:ORG/NAME, the Hub's cache). With --download, fetch the given tags "
        "(checksum-verified, resumable; Hub files against the sha256 the Hub states, needs huggingface_hub).",
        epilog="examples:\n  xception weights\n  xception weights xception.keras_in1k --download\n"
        "  xception weights xception65.ra3_in1k --download",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("tags", nargs="*", metavar="TAG", help="tags to show (default: all)")
    parser.add_argument("--download", action="store_true", help="download the given tags into the cache")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..weights import hub

    if args.download and not args.tags:
        raise ConfigError("name the tags to download, e.g. 'xception weights xception.keras_in1k --download'")
    tags = [hub.get_tag(name) for name in args.tags] if args.tags else list(hub.TAGS.values())
    rows = []
    for tag in tags:
        path = hub.fetch(tag, progress=not args.json) if args.download else tag.path()
        cached = path is not None and path.exists()
        rows.append({**tag.to_dict(), "path": str(path) if path is not None else None, "cached": cached})
    if args.json:
        print_json(rows)
        return 0
    for row in rows:
        top1 = row["metrics"].get("top1")
        accuracy = f"top-1 {top1}%" if top1 is not None else "features only" if not row["num_classes"] else ""
        state = "cached" if row["cached"] else "not downloaded"
        print(f"{row['name']:28} {row['model']:16} {row['num_classes']:>5} classes  {accuracy:14} {state}")
        where = row["path"] or "the Hugging Face cache"
        print(f"{'':28} {row['source']}\n{'':28} {row['url']}\n{'':28} → {where}")
    return 0
