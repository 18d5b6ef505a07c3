"""The figures of a run: one :class:`Result` per contender, medians and latency percentiles of its times."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile with linear interpolation between order statistics (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass
class Result:
    """One contender's figures. ``times_ms`` are per call, in the order measured."""

    name: str
    kind: str  # "inference" | "training" | "anchor"
    status: str = "ok"  # "ok" | "skipped" | "failed"
    reason: str = ""
    batch_size: int = 0
    times_ms: list[float] = field(default_factory=list)
    setup_s: float = 0.0
    peak_memory_bytes: int | None = None
    details: dict[str, Any] = field(default_factory=dict)
    # What it computes in ("float32", "bfloat16", …): ratios are only taken between equal precisions.
    precision: str = ""
    network: str = ""  # "ours" | "timm" | "" (the anchor): whose weights and layers it runs

    @property
    def median_ms(self) -> float | None:
        return statistics.median(self.times_ms) if self.times_ms else None

    @property
    def images_per_s(self) -> float | None:
        med = self.median_ms
        return self.batch_size / (med / 1e3) if med and self.kind != "anchor" else None

    def latency_ms(self) -> dict[str, float] | None:
        if not self.times_ms:
            return None
        return {"p50": percentile(self.times_ms, 50), "p90": percentile(self.times_ms, 90),
                "p99": percentile(self.times_ms, 99), "min": min(self.times_ms), "max": max(self.times_ms)}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(median_ms=self.median_ms, images_per_s=self.images_per_s, latency_ms=self.latency_ms())
        return data
