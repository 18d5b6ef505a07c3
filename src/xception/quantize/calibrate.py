"""Activation ranges from calibration images, by several methods, for :meth:`QuantizedXception.build`.

The float program (BatchNorm folded, the same steps as the int8 network) runs the calibration images twice
with hooks at every point the int8 network quantises: its input, every conv's output (after its bias,
residual add and ReLU: what the conv's epilogue requantises) and the average-pooled features. The first pass
finds each point's range, the second fills a histogram of :data:`BINS` bins over it (exact zeros left out).
Each method then picks a range (lo, hi) per point from the histogram:

* ``minmax``: the whole observed range; nothing clipped, the coarsest steps.
* ``percentile-P``: the (100 − P)th and Pth percentiles; the rarest outliers clipped.
* ``mse``: the range, each end shrunk by a factor in [0.2, 1], that minimises the mean squared quantisation
  error of the observed values (clipping plus rounding).
* ``entropy``: the range, found the same way, that minimises the Kullback–Leibler divergence between the
  histogram (outliers folded into its end bins) and its quantised version (TensorRT's calibration,
  asymmetric here).

Which one loses least is a property of the network and the data, so :func:`xception.quantize` tries them all
on held-out images and keeps the best (none is assumed).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch

from ..errors import ConfigError, DataError
from ..fast.fused import FusedXception
from .reference import INPUT
from .scheme import QMAX, QMIN

METHODS: tuple[str, ...] = ("minmax", "percentile-99.99", "percentile-99.9", "mse", "entropy")
BINS = 2048
SHRINK = torch.linspace(0.2, 1.0, 81, dtype=torch.float64)  # the ranges mse and entropy choose among
POOL = "head.pool"


@dataclass
class Histogram:
    """The values seen at one point: their range, then their distribution over it."""

    lo: float = math.inf
    hi: float = -math.inf
    counts: torch.Tensor = field(default_factory=lambda: torch.zeros(BINS, dtype=torch.float64))

    def extend(self, t: torch.Tensor) -> None:
        self.lo, self.hi = min(self.lo, float(t.min())), max(self.hi, float(t.max()))

    def add(self, t: torch.Tensor) -> None:
        # Exact zeros (ReLU outputs are often half zeros) are left out: 0 is always exactly representable, so
        # they cost no error under any range, and a spike at 0 would dominate the divergence.
        if self.hi > self.lo:
            values = t.detach().float()
            self.counts += torch.histc(values[values != 0], BINS, self.lo, self.hi).double()

    def centres(self) -> torch.Tensor:
        step = (self.hi - self.lo) / BINS
        return self.lo + step * (torch.arange(BINS, dtype=torch.float64) + 0.5)


def observe(program: FusedXception, names: Sequence[str], batches: Callable[[], Iterable[torch.Tensor]]
            ) -> dict[str, Histogram]:
    """Histograms at every quantisation point of ``program`` over two passes of ``batches()``."""
    stats = {name: Histogram() for name in (INPUT, *names, POOL)}
    stage = {"pass": "range"}

    def record(name: str, t: torch.Tensor) -> None:
        if stage["pass"] == "range":
            stats[name].extend(t)
        else:
            stats[name].add(t)

    hooks = [conv.register_forward_hook(lambda m, a, out, name=name: record(name, out))
             for conv, name in zip(program.convs(), names, strict=True)]
    hooks.append(program.head.fc.register_forward_pre_hook(lambda m, args: record(POOL, args[0])))
    try:
        for stage["pass"] in ("range", "histogram"):
            seen = 0
            with torch.inference_mode():
                for x in batches():
                    record(INPUT, x)
                    program(x)
                    seen += len(x)
            if not seen:
                raise DataError("no calibration images could be read")
            if stage["pass"] == "range":
                for h in stats.values():  # every range holds 0, so that zero padding is exact
                    h.lo, h.hi = min(h.lo, 0.0), max(h.hi, 0.0)
    finally:
        for hook in hooks:
            hook.remove()
    return stats


def _roundtrip(h: Histogram, lo: torch.Tensor, hi: torch.Tensor, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(levels, dequantised values) of the bin centres on the grid of codes 0 … ``qmax`` over [lo, hi], for
    each candidate pair: shapes (F, BINS)."""
    scale = ((hi - lo) / (qmax - QMIN)).clamp(min=1e-30)[:, None]
    zero = torch.round(-lo[:, None] / scale).clamp(QMIN, qmax)
    levels = torch.round(h.centres()[None] / scale + zero).clamp(QMIN, qmax)
    return levels, (levels - zero) * scale


def _squared_error(h: Histogram, lo: torch.Tensor, hi: torch.Tensor, qmax: int = QMAX) -> torch.Tensor:
    _, values = _roundtrip(h, lo, hi, qmax)
    return ((h.centres()[None] - values) ** 2 * h.counts[None]).sum(1)


def _divergence(h: Histogram, lo: torch.Tensor, hi: torch.Tensor, qmax: int = QMAX) -> torch.Tensor:
    """KL(P‖Q) per candidate: P the histogram within [lo, hi], outliers folded into its end bins; Q the
    in-range part quantised, each level's mass spread over its non-empty bins (as TensorRT does)."""
    levels, _ = _roundtrip(h, lo, hi, qmax)
    centres, out = h.centres(), torch.full((len(lo),), math.inf, dtype=torch.float64)
    for i in range(len(lo)):
        inside = ((centres >= lo[i]) & (centres <= hi[i])).nonzero()
        if not len(inside):
            continue
        first, last = int(inside.min()), int(inside.max())
        kept = h.counts[first:last + 1]
        p = kept.clone()
        p[0] += h.counts[:first].sum()
        p[-1] += h.counts[last + 1:].sum()
        lev = levels[i, first:last + 1].long()
        mass = torch.zeros(qmax + 1, dtype=torch.float64).scatter_add_(0, lev, kept)
        filled = torch.zeros(qmax + 1, dtype=torch.float64).scatter_add_(0, lev, (p > 0).double())
        q = torch.where(p > 0, mass[lev] / filled[lev].clamp(min=1), torch.zeros_like(p))
        p, q = p / p.sum(), q / q.sum().clamp(min=1e-300)
        nz = p > 0
        out[i] = (p[nz] * (p[nz] / q[nz].clamp(min=1e-12)).log()).sum()
    return out


def search_range(h: Histogram, cost: Callable[[Histogram, torch.Tensor, torch.Tensor], torch.Tensor]
                 ) -> tuple[float, float]:
    """The range of least ``cost``, each end shrunk towards 0 by a factor of :data:`SHRINK` in turn (the high
    end, the low end, the high end again): the two tails of a signed tensor are rarely alike."""
    lo, hi = h.lo, h.hi
    for end in ("hi", "lo", "hi"):
        if (h.lo if end == "lo" else h.hi) == 0.0:
            continue
        los = h.lo * SHRINK if end == "lo" else torch.full_like(SHRINK, lo)
        his = h.hi * SHRINK if end == "hi" else torch.full_like(SHRINK, hi)
        best = int(cost(h, los, his).argmin())
        lo, hi = float(los[best]), float(his[best])
    return lo, hi


def percentile_range(h: Histogram, percent: float) -> tuple[float, float]:
    cdf = h.counts.cumsum(0) / h.counts.sum()
    step = (h.hi - h.lo) / BINS
    tail = 1.0 - percent / 100.0
    low_bin = int(torch.searchsorted(cdf, torch.tensor([tail], dtype=torch.float64)))
    high_bin = int(torch.searchsorted(cdf, torch.tensor([1.0 - tail], dtype=torch.float64)))
    return h.lo + step * low_bin, h.lo + step * min(high_bin + 1, BINS)


def check_method(method: str) -> None:
    known = method in ("minmax", "mse", "entropy") or (method.startswith("percentile-") and _percent(method))
    if not known:
        raise ConfigError(f"unknown calibration method {method!r}; known: {', '.join(METHODS)} "
                          "(any percentile-P with 50 < P < 100)")


def _percent(method: str) -> bool:
    try:
        return 50.0 < float(method.removeprefix("percentile-")) < 100.0
    except ValueError:
        return False


def ranges(stats: dict[str, Histogram], method: str, qmax: int = QMAX) -> dict[str, tuple[float, float]]:
    """(lo, hi) per quantisation point by ``method`` (see the module's docstring), for codes 0 … ``qmax``."""
    check_method(method)
    out = {}
    for name, h in stats.items():
        if not h.hi > h.lo or method == "minmax":
            out[name] = (h.lo, h.hi) if h.hi >= h.lo else (0.0, 0.0)
        elif method == "mse":
            out[name] = search_range(h, functools.partial(_squared_error, qmax=qmax))
        elif method == "entropy":
            out[name] = search_range(h, functools.partial(_divergence, qmax=qmax))
        else:
            out[name] = percentile_range(h, float(method.removeprefix("percentile-")))
    return out
