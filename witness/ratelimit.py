"""Per-origin token buckets for ``add-checkpoint`` (answered 429 when empty).

Each origin has a bucket of ``burst`` tokens refilled continuously at ``rate`` tokens per
second; a request takes one token. The witness uses the log list's ``qpd`` (requests per day)
as the rate when it is given, its configured default otherwise. State lives in memory only: a
restart refills every bucket.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from witness.errors import RateLimitedError

__all__ = ["RateLimiter"]


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets keyed by origin, on a monotonic clock (injectable for tests)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        """Start with every bucket full; ``clock`` returns seconds and never goes back."""
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str, *, rate: float, burst: int) -> None:
        """Take one token from ``key``'s bucket.

        Requires ``rate > 0`` and ``burst >= 1``. Raises RateLimitedError, with the whole
        seconds until a token is available as ``retry_after`` (at least 1), when it is empty.
        """
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(burst), now)
        bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens < 1.0:
            wait = (1.0 - bucket.tokens) / rate
            raise RateLimitedError(
                f"request budget for {key!r} is spent",
                retry_after=max(1, math.ceil(wait)),
            )
        bucket.tokens -= 1.0
