"""Plain-text tables, as every report of the library prints them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def format_table(rows: Sequence[Sequence[Any]], headers: Sequence[str], right: Sequence[int] | None = None) -> str:
    """Columns padded to their widest cell, a rule under the headers; ``right`` lists the columns to
    right-align (default: every column but the first, as numbers are)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    right = set(range(1, len(headers)) if right is None else right)

    def line(row: list[str]) -> str:
        padded = (c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        return "  ".join(padded).rstrip()

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths), *(line(r) for r in cells[1:])])


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``"1 thread"``, ``"2 threads"``, ``"1,000 images"``: a count with its noun in the right number."""
    return f"{count:,} {noun if count == 1 else (nouns or noun + 's')}"
