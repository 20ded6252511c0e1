"""Benchmark: the emitter's cost on an OAuth server's request path.

Run with ``.venv/bin/python -m benchmarks.bench_emitter`` (``--quick`` for a short run).
Reports the median and 99th percentile, in microseconds, of the wall time of one call of:

* ``emit`` with the emitter otherwise idle (the bare cost: copy, defaults, enqueue);
* ``emit`` at a steady request rate while the writer signs and group-commits and the delivery
  thread posts batches to an in-process log and verifies every receipt (the realistic case:
  the background threads compete for the GIL);
* ``emit_durable`` one call at a time (each waits for its group commit: one fsync), and from
  several threads at once (their events share commits).

Target (issue 4): ``emit`` at most 50 µs median. The in-process log is the tests' fake log
(``tests/emitter_fakelog.py``: real Merkle proofs and signed checkpoints, no network), so the
delivery thread does the full verification work. The spool lives in a temporary directory; on
a tmpfs ``fsync`` is nearly free, so ``emit_durable`` figures depend on where that is (set
``TMPDIR`` to a directory on the real disk to measure it).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.emitter import Emitter, EmitterConfig
from tests.emitter_fakelog import FakeLog

REF = "-bfU429PR50gUa3RLbpGgosKKPkwMRgFyt9OMlQb4OQ"


def event(number: int) -> dict[str, Any]:
    """A token-issued event of typical size (about 300 bytes of CBOR once filled)."""
    return {
        "type": "token-issued",
        "client_id": "s6BhdRkqt3",
        "sub": f"pseudonym-{number}",
        "token_type": "access_token",
        "grant_type": "authorization_code",
        "scope": ["openid", "profile", "email"],
        "exp": 1_900_000_000,
        "token_ref": REF,
    }


def percentiles(samples_ns: list[int]) -> tuple[float, float, float]:
    """Return (median, p99, max) of ``samples_ns`` in microseconds."""
    ordered = sorted(samples_ns)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered) / 1000, p99 / 1000, ordered[-1] / 1000


def timed(call: Callable[[], object], count: int, pause: float = 0.0) -> list[int]:
    """Call ``call`` ``count`` times, pausing ``pause`` s between calls; return ns per call."""
    samples: list[int] = []
    clock = time.perf_counter_ns
    for _ in range(count):
        start = clock()
        call()
        samples.append(clock() - start)
        if pause:
            time.sleep(pause)
    return samples


def make_emitter(
    directory: Path,
    name: str,
    fake: FakeLog,
    key: Ed25519PrivateKey,
    config: EmitterConfig | None = None,
) -> Emitter:
    """An emitter delivering to ``fake`` in process, spooling in ``directory``."""
    return Emitter(
        "http://log.invalid",
        fake.credential,
        key,
        directory / f"{name}.db",
        log_vkey=fake.vkey,
        issuer="https://as.example.com",
        submitter=fake.submitter,
        transport=fake.transport(),
        config=config or EmitterConfig(max_queue=100_000),
    )


def main(argv: list[str] | None = None) -> None:
    """Run the measurements and print one line per case."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer calls (a smoke run)")
    args = parser.parse_args(argv)
    scale = 0.1 if args.quick else 1.0
    key = Ed25519PrivateKey.generate()
    results: list[tuple[str, int, tuple[float, float, float]]] = []
    with tempfile.TemporaryDirectory(prefix="etch-bench-") as tmp:
        directory = Path(tmp)

        # 1. emit, nothing else running: the writer sleeps through a long commit window.
        fake = FakeLog(key.public_key())
        fake.down = True
        idle = EmitterConfig(max_queue=100_000, commit_interval=3600.0)
        emitter = make_emitter(directory, "idle", fake, key, idle)
        count = int(20_000 * scale)
        timed(lambda: emitter.emit(event(0)), 1000)  # warm up
        results.append(("emit, background idle", count, percentiles(
            timed(lambda: emitter.emit(event(1)), count))))
        emitter.close(timeout=0.1)

        # 2. emit at 2,000 events/s with signing, commits, delivery and verification running.
        fake = FakeLog(key.public_key())
        emitter = make_emitter(directory, "loaded", fake, key)
        count = int(20_000 * scale)
        samples = timed(lambda: emitter.emit(event(2)), count, pause=0.0005)
        results.append(("emit, 2k/s, writer + delivery busy", count, percentiles(samples)))
        emitter.flush(60.0)
        delivered = emitter.stats().delivered

        # 3. emit_durable, one caller: each call waits for its own group commit (an fsync).
        count = int(2_000 * scale)
        results.append(("emit_durable, 1 thread", count, percentiles(
            timed(lambda: emitter.emit_durable(event(3)), count))))

        # 4. emit_durable, 8 callers at once: commits are shared.
        per_thread = int(500 * scale)
        gathered: list[list[int]] = []

        def worker() -> None:
            gathered.append(timed(lambda: emitter.emit_durable(event(4)), per_thread))

        threads = [threading.Thread(target=worker) for _ in range(8)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        all_samples = [s for part in gathered for s in part]
        results.append(("emit_durable, 8 threads", len(all_samples), percentiles(all_samples)))
        emitter.flush(60.0)
        stats = emitter.stats()
        emitter.close(timeout=5.0)

    print(f"{'case':<38} {'calls':>7} {'median µs':>10} {'p99 µs':>10} {'max µs':>10}")
    for name, calls, (median, p99, worst) in results:
        print(f"{name:<38} {calls:>7} {median:>10.1f} {p99:>10.1f} {worst:>10.1f}")
    print(
        f"durable, 8 threads: {len(all_samples) / elapsed:,.0f} events/s; "
        f"delivered and verified in the loaded run: {delivered}; "
        f"in all: {stats.delivered} of {stats.spooled} spooled, {stats.requests} requests"
    )


if __name__ == "__main__":
    main()
