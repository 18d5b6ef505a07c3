"""Prometheus text for ``GET /metrics``, rendered by hand: counters and two histograms, nothing else.

Every update happens on the server's event loop (requests in the middleware, batch sizes in the batcher),
so plain dictionaries need no lock.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass
class Histogram:
    """Cumulative buckets, a sum and a count, as Prometheus histograms are exposed."""

    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out = [f'{name}_bucket{{{labels}{sep}le="{_number(b)}"}} {c}' for b, c in zip(self.buckets, self.counts,
                                                                                      strict=True)]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}')
        braces = f"{{{labels}}}" if labels else ""
        return [*out, f"{name}_sum{braces} {_number(self.total)}", f"{name}_count{braces} {self.count}"]


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """What the server counts: requests by endpoint and status, errors by kind, latency, batch sizes."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()
        self.errors: Counter[str] = Counter()
        self.latency: dict[str, Histogram] = {}
        self.batches = Histogram(BATCH_BUCKETS)
        self.in_flight = 0

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests[endpoint, status] += 1
        self.latency.setdefault(endpoint, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def error(self, kind: str) -> None:
        self.errors[kind] += 1

    def batch(self, size: int) -> None:
        self.batches.observe(size)

    def render(self) -> str:
        lines = ["# HELP xception_requests_total HTTP requests by endpoint and status code.",
                 "# TYPE xception_requests_total counter"]
        lines += [f'xception_requests_total{{endpoint="{_escape(e)}",status="{s}"}} {n}'
                  for (e, s), n in sorted(self.requests.items())]
        lines += ["# HELP xception_errors_total Requests answered with an error, by kind.",
                  "# TYPE xception_errors_total counter"]
        lines += [f'xception_errors_total{{kind="{_escape(k)}"}} {n}' for k, n in sorted(self.errors.items())]
        lines += ["# HELP xception_request_duration_seconds Time from request to response, by endpoint.",
                  "# TYPE xception_request_duration_seconds histogram"]
        for endpoint, hist in sorted(self.latency.items()):
            lines += hist.lines("xception_request_duration_seconds", f'endpoint="{_escape(endpoint)}"')
        lines += ["# HELP xception_batch_size Images per model call (micro-batching).",
                  "# TYPE xception_batch_size histogram"]
        lines += self.batches.lines("xception_batch_size")
        lines += ["# HELP xception_requests_in_flight Requests being answered now.",
                  "# TYPE xception_requests_in_flight gauge", f"xception_requests_in_flight {self.in_flight}"]
        return "\n".join(lines) + "\n"
