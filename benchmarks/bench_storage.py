"""Benchmark of the storage backends: commit throughput and the reads the log serves most.

Run from the project root::

    .venv/bin/python -m benchmarks.bench_storage [--backend sqlite|postgres|both]
        [--batches 30] [--batch-size 1000] [--dsn postgresql://...]

Commits ``--batches`` batches of ``--batch-size`` entries, each entry about 400 bytes with an
idempotency key and three lookup keys, the changed tiles computed by :func:`merkle.tiles.
extend_tiles` as the sequencer does (all batches are built before the clock starts). Target:
at least 8,000 entries/s with 1,000-entry batches on both backends, durably (SQLite
``synchronous=FULL``; PostgreSQL ``fsync`` and ``synchronous_commit`` on). Then times single-tile
reads, 1,000-hash deduplication look-ups and a one-bundle entry read.

SQLite uses a file in a temporary directory; PostgreSQL the ``--dsn`` given, else a throwaway
server started as in the tests (``tests/pg.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from merkle.compact import CompactRange
from merkle.hashing import leaf_hash
from merkle.tiles import TILE_WIDTH, edge_tiles, extend_tiles
from server.storage import Batch, NewEntry, Storage, open_storage
from tests.pg import PgServer


def build_batches(count: int, size: int) -> list[Batch]:
    """Return ``count`` consecutive batches of ``size`` entries, starting from the empty tree."""
    compact = CompactRange()
    edge: dict[int, bytes] = {}
    batches = [Batch((), {}, b"checkpoint 0\n", 0, compact.to_bytes())]
    for b in range(count):
        start = compact.size
        entries = []
        for i in range(start, start + size):
            data = (
                f'{{"iss":"https://as.example.com","jti":"{i:012d}","client_id":"app-{i % 97}",'
                f'"type":"token_issued","pad":"{"x" * 300}"}}'
            ).encode()
            entries.append(
                NewEntry(
                    index=i,
                    leaf_hash=leaf_hash(data),
                    data=data,
                    idempotency_key=f"https://as.example.com\x00{i:012d}",
                    lookup_keys=(
                        ("client_id", f"app-{i % 97}"),
                        ("token_ref", f"tr-{i}"),
                        ("type", "token_issued"),
                    ),
                    log_time=1_767_225_600_000 + i,
                )
            )
        hashes = [e.leaf_hash for e in entries]
        tiles = extend_tiles(start, edge, hashes)
        compact.extend(hashes)
        edge = {
            t.level: tiles.get((t.level, t.index)) or edge[t.level]
            for t in edge_tiles(compact.size)
        }
        note = f"checkpoint {b + 1}\n".encode()
        batches.append(Batch(entries, tiles, note, compact.size, compact.to_bytes()))
    return batches


async def timed(fn: Callable[[], Awaitable[object]], repeats: int) -> float:
    """Return the median seconds of ``repeats`` awaited calls of ``fn``."""
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


async def run(name: str, storage: Storage, batches: list[Batch]) -> None:
    """Commit the batches, then time the common reads; print one line per figure."""
    await storage.open()
    try:
        previous: bytes | None = None
        await storage.commit(previous, batches[0])
        previous = batches[0].checkpoint
        entries = 0
        started = time.perf_counter()
        for batch in batches[1:]:
            await storage.commit(previous, batch)
            previous = batch.checkpoint
            entries += len(batch.entries)
        elapsed = time.perf_counter() - started
        per_batch = elapsed / (len(batches) - 1) * 1000
        print(f"{name:9} commit: {entries / elapsed:8.0f} entries/s ({per_batch:.1f} ms/batch)")

        size = batches[-1].tree_size
        hashes = [e.leaf_hash for b in batches[1:] for e in b.entries][::7][:1000]
        tile = await timed(lambda: storage.read_tiles([(0, size // TILE_WIDTH // 2)]), 200)
        dedup = await timed(lambda: storage.find_leaf_hashes(hashes), 20)
        bundle = await timed(lambda: storage.read_entries(256, 512), 50)
        print(
            f"{name:9} read_tiles(1): {tile * 1e6:.0f} us, find_leaf_hashes(1000): "
            f"{dedup * 1e3:.1f} ms, read_entries(256): {bundle * 1e3:.2f} ms"
        )
    finally:
        await storage.close()


def main() -> None:
    """Parse arguments and run the benchmark on the chosen backends."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--dsn", help="PostgreSQL DSN (default: a throwaway server)")
    args = parser.parse_args()
    batches = build_batches(args.batches, args.batch_size)
    if args.backend in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(run("sqlite", open_storage(str(Path(tmp) / "log.db")), batches))
    if args.backend in ("postgres", "both"):
        server = None if args.dsn else PgServer.create()
        try:
            dsn = args.dsn or (server.create_database("bench") if server else "")
            asyncio.run(run("postgres", open_storage(dsn), batches))
        finally:
            if server is not None:
                server.destroy()


if __name__ == "__main__":
    main()
