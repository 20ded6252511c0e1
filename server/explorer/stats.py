"""Figures for the overview, read from the log's Prometheus metric objects (no scraping).

* ingestion rate: new entries per second, from the ``etch_submissions{outcome="new"}`` counter
  sampled each time the overview is drawn (:class:`RateMeter`);
* sequencing latency: mean and estimated quantiles of the ``etch_sequencing_seconds``
  histogram (:func:`latency_summary`). A quantile is reported as the upper bound of the
  histogram bucket it falls in, the most a histogram can say.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import Counter, Histogram

__all__ = [
    "LatencySummary",
    "Rate",
    "RateMeter",
    "counter_value",
    "histogram_buckets",
    "latency_summary",
]


@dataclass(frozen=True, slots=True)
class Rate:
    """Entries per second over the last ``window`` seconds, and the total count seen."""

    per_second: float | None
    window: float
    total: float


class RateMeter:
    """Turns a growing total into a recent rate, from samples at most one per ``spacing``.

    Samples older than ``horizon`` seconds are dropped (one older sample is kept as the base);
    the rate is measured from the oldest kept sample to now.
    """

    def __init__(
        self,
        *,
        horizon: float = 300.0,
        spacing: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._samples: deque[tuple[float, float]] = deque()
        self._horizon = horizon
        self._spacing = spacing
        self._clock = clock

    def observe(self, total: float) -> Rate:
        """Record ``total`` now and return the rate since the oldest kept sample.

        The rate is ``None`` until two samples at least ``spacing`` apart exist.
        """
        now = self._clock()
        if not self._samples or now - self._samples[-1][0] >= self._spacing:
            self._samples.append((now, total))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self._horizon:
            self._samples.popleft()
        first_time, first_total = self._samples[0]
        window = now - first_time
        if window < self._spacing:
            return Rate(None, window, total)
        return Rate(max(total - first_total, 0.0) / window, window, total)


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Count, mean and bucket upper bounds of the median, 95th and 99th percentiles (seconds).

    A quantile is ``math.inf`` when it falls beyond the largest finite bucket, ``None`` when
    nothing was observed.
    """

    count: int
    mean: float | None
    p50: float | None
    p95: float | None
    p99: float | None


def counter_value(counter: Counter, **labels: str) -> float:
    """Return the current value of a counter (the child with ``labels``), 0 if never set."""
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and dict(sample.labels) == labels:
                return float(sample.value)
    return 0.0


def histogram_buckets(histogram: Histogram) -> tuple[list[tuple[float, float]], float, float]:
    """Return a histogram's cumulative ``(upper bound, count)`` buckets, its sum and count."""
    buckets: list[tuple[float, float]] = []
    total = count = 0.0
    for metric in histogram.collect():
        for sample in metric.samples:
            if sample.name.endswith("_bucket"):
                buckets.append((float(sample.labels["le"]), float(sample.value)))
            elif sample.name.endswith("_sum"):
                total = float(sample.value)
            elif sample.name.endswith("_count"):
                count = float(sample.value)
    buckets.sort()
    return buckets, total, count


def _quantile(buckets: Sequence[tuple[float, float]], count: float, q: float) -> float | None:
    if count <= 0:
        return None
    wanted = q * count
    for bound, cumulative in buckets:
        if cumulative >= wanted:
            return bound
    return math.inf


def latency_summary(
    buckets: Iterable[tuple[float, float]], total: float, count: float
) -> LatencySummary:
    """Summarise cumulative histogram buckets (as :func:`histogram_buckets` returns them).

    Example: buckets ``[(0.01, 90), (0.1, 100), (inf, 100)]``, sum 0.5, count 100 give mean
    0.005, p50 0.01 and p95 0.1.
    """
    ordered = sorted(buckets)
    if count <= 0:
        return LatencySummary(0, None, None, None, None)
    return LatencySummary(
        int(count),
        total / count,
        _quantile(ordered, count, 0.50),
        _quantile(ordered, count, 0.95),
        _quantile(ordered, count, 0.99),
    )
