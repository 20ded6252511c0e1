"""Settings of a serving process's Python runtime: the cyclic garbage collector.

Reference counting frees almost everything a request allocates; the cyclic collector only has
to find cycles. With CPython's default threshold (a collection of the youngest generation
every 700 net allocations of tracked objects) a log under load collects many times a second,
because a round of answers keeps a few thousand objects alive at once; every tenth of those
collections also scans the middle generation and every hundredth the whole heap, a pause of
tens of milliseconds for a log with warm caches (`benchmarks/RESULTS.md`, "Log server":
about 0.5 s of a 13-second single-submission run went to the collector, including 7-9 full
collections of 20-24 ms each).

:func:`tune_gc` moves what start-up allocated (modules, the app, the caches filled while the
stored log was verified) out of the collector's sight with :func:`gc.freeze`, and makes the
youngest generation hold :data:`GC_THRESHOLD` objects before it is collected. Cyclic garbage
still goes, later and in larger batches; nothing else changes.
"""

from __future__ import annotations

import gc

__all__ = ["GC_THRESHOLD", "tune_gc"]

GC_THRESHOLD = (20_000, 10, 10)
"""``gc.set_threshold`` arguments for a serving process (CPython's default: 700, 10, 10)."""


def tune_gc() -> None:
    """Collect once, freeze every object that survives, and set :data:`GC_THRESHOLD`.

    Call once start-up is over, before serving. Process-wide and idempotent.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)
