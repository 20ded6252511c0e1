"""The serving process's collector settings (server.runtime)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from server.runtime import GC_THRESHOLD, tune_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    """Give the test process its collector settings back afterwards."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_gc")
def test_tune_gc_freezes_what_lives_and_raises_the_threshold() -> None:
    assert gc.get_freeze_count() == 0
    tune_gc()
    assert gc.get_threshold() == GC_THRESHOLD == (20_000, 10, 10)
    frozen = gc.get_freeze_count()
    assert frozen > 1000  # at least this test process's modules and their objects
    # Garbage made later is still collected, cycles included.
    cycle: list[object] = []
    cycle.append(cycle)
    alive = len(gc.get_objects())
    del cycle
    assert gc.collect() >= 1
    assert len(gc.get_objects()) < alive
    tune_gc()  # again: nothing breaks, the threshold stays
    assert gc.get_threshold() == GC_THRESHOLD
    assert gc.get_freeze_count() >= frozen


def test_serving_entry_points_tune_the_collector_after_start_up() -> None:
    """``etch serve`` and the benchmark servers call it (their start-up order is the point)."""
    import inspect

    import benchmarks.baseline_app as baseline
    import benchmarks.serve_raw as raw
    import server.__main__ as entry

    serve = inspect.getsource(entry.serve)
    assert serve.index("await _start(") < serve.index("tune_gc()") < serve.index("uvicorn.Config")
    serve_raw = inspect.getsource(raw.serve_raw)
    assert serve_raw.index("await service.start()") < serve_raw.index("tune_gc()")
    assert "tune_gc()" in inspect.getsource(baseline.main)
