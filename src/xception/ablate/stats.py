"""Statistics over seeds: mean ± standard deviation, paired t-intervals, and how many seeds an interval needs.

Runs of one seed share their data (split, order, augmentation), so two variants are compared seed by
seed: the differences ``a_i − b_i`` over ``n`` seeds give a mean and a t-interval with ``n − 1`` degrees
of freedom. With 3 seeds the 95 % quantile is t = 4.30: intervals are wide, and :mod:`.verdicts` says so
by calling a comparison undecided rather than by claiming more than the runs show.

Student's t distribution is computed here for integer degrees of freedom from its finite closed form
(Abramowitz & Stegun 26.7.3–4), so the library needs no statistics package.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


def t_cdf(t: float, dof: int) -> float:
    """P(T ≤ t) for Student's t with ``dof`` (a positive integer) degrees of freedom."""
    if dof < 1:
        raise ValueError(f"degrees of freedom must be ≥ 1, got {dof}")
    theta = math.atan(abs(t) / math.sqrt(dof))
    c2 = math.cos(theta) ** 2
    if dof % 2:  # odd: (2/π)(θ + sinθ·[cosθ + 2/3 cos³θ + … ]) — the bracket is empty for dof = 1
        term, total = math.cos(theta), 0.0
        for j in range(1, (dof - 1) // 2 + 1):
            total += term
            term *= c2 * (2 * j) / (2 * j + 1)
        inside = 2 / math.pi * (theta + math.sin(theta) * total)
    else:  # even: sinθ·[1 + 1/2 cos²θ + (1·3)/(2·4) cos⁴θ + … ]
        term, total = 1.0, 0.0
        for j in range(1, dof // 2 + 1):
            total += term
            term *= c2 * (2 * j - 1) / (2 * j)
        inside = math.sin(theta) * total
    return 0.5 + math.copysign(0.5 * inside, t)


def t_quantile(p: float, dof: int) -> float:
    """The ``p``-quantile of Student's t with ``dof`` degrees of freedom (bisection on :func:`t_cdf`)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, dof)
    low, high = 0.0, 1.0
    while t_cdf(high, dof) < p:
        high *= 2.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if t_cdf(mid, dof) < p else (low, mid)
        if high - low < 1e-12 * max(1.0, high):
            break
    return 0.5 * (low + high)


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation (n − 1) of one measure over seeds."""

    mean: float
    std: float | None  # None for a single value
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread | None:
        if not values:
            return None
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))

    def format(self, digits: int = 2) -> str:
        return f"{self.mean:.{digits}f}" + (f" ± {self.std:.{digits}f}" if self.std is not None else "")


@dataclass(frozen=True)
class Interval:
    """The mean of paired differences and its two-sided t-interval (None bounds: a single pair)."""

    mean: float
    low: float | None
    high: float | None
    n: int
    level: float
    t: float | None  # the quantile used

    def format(self, digits: int = 2) -> str:
        if self.low is None or self.high is None:
            return "–"
        return f"[{self.low:+.{digits}f}, {self.high:+.{digits}f}]"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Interval:
    """Mean of ``a_i − b_i`` with its ``level`` t-interval over the n pairs (n − 1 degrees of freedom)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_interval needs two equally long, non-empty lists, got {len(a)} and {len(b)}")
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    mean, n = statistics.fmean(diffs), len(diffs)
    if n < 2:
        return Interval(mean, None, None, n, level, None)
    t = t_quantile(0.5 + level / 2, n - 1)
    half = t * statistics.stdev(diffs) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, level, t)


def seeds_for(distance: float, std: float, *, level: float = 0.95, power: float = 0.8,
              most: int = 1000) -> int | None:
    """The fewest pairs whose ``level`` t-interval would leave out a boundary ``distance`` away from the mean
    difference with probability ``power``, if the true mean and standard deviation of the differences were the
    observed ones: the smallest n with (t_{(1+level)/2, n−1} + t_{power, n−1}) · std / √n ≤ distance, the usual
    power estimate of a paired t-test. An estimate, as good as the observed spread; None past ``most`` pairs, or
    when the mean sits on the boundary."""
    if distance <= 0 or std < 0:
        return None
    if std == 0:
        return 2
    # The normal quantiles are below Student's, so the normal-based n is a lower bound to start from.
    normal = statistics.NormalDist()
    start = max(2, math.floor(((normal.inv_cdf(0.5 + level / 2) + normal.inv_cdf(power)) * std / distance) ** 2))
    for n in range(start, most + 1):
        if (t_quantile(0.5 + level / 2, n - 1) + t_quantile(power, n - 1)) * std / math.sqrt(n) <= distance:
            return n
    return None
