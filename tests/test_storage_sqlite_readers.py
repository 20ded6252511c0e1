"""SQLite readers: a pool of connections, and calls grouped per event-loop turn.

Many reads started in one turn travel to a connection's thread together; each still gets its
own result, an error in one does not touch the others, a caller that gives up is skipped, and
reads after close fail cleanly.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from merkle.hashing import leaf_hash
from server.storage import Batch, NewEntry, SQLiteStorage
from server.storage.base import StorageError

pytestmark = pytest.mark.anyio


async def filled(path: Path, count: int) -> SQLiteStorage:
    storage = SQLiteStorage(path, readers=3)
    await storage.open()
    entries = [
        NewEntry(
            index=i,
            leaf_hash=leaf_hash(f"entry {i}".encode()),
            data=f"entry {i}".encode(),
            idempotency_key=f"key-{i}",
            lookup_keys=(("token_ref", f"ref-{i % 7}"),),
            log_time=1000 + i,
        )
        for i in range(count)
    ]
    await storage.commit(None, Batch(entries, {}, b"note", count, b"range"))
    return storage


async def test_concurrent_reads_each_get_their_answer(tmp_path: Path) -> None:
    storage = await filled(tmp_path / "log.db", 50)
    try:
        reads = [storage.read_entry_meta(i) for i in range(50)]
        lookups = [storage.lookup_entries("token_ref", f"ref-{k}") for k in range(7)]
        metas, hits = await asyncio.gather(asyncio.gather(*reads), asyncio.gather(*lookups))
        assert metas == [(f"entry {i}".encode(), 1000 + i) for i in range(50)]
        for k, found in enumerate(hits):
            assert [h.index for h in found] == list(range(k, 50, 7))
    finally:
        await storage.close()


async def test_an_error_in_one_call_leaves_the_others(tmp_path: Path) -> None:
    storage = await filled(tmp_path / "log.db", 5)
    try:
        results = await asyncio.gather(
            storage.read_entry_meta(1),
            storage.lookup_entries("token_ref", "ref-1", limit=0),  # ValueError before the trip
            storage.read_entries(2, 1),  # ValueError: a bad range
            storage.read_entry_meta(3),
            return_exceptions=True,
        )
        assert results[0] == (b"entry 1", 1001)
        assert isinstance(results[1], ValueError)
        assert isinstance(results[2], ValueError)
        assert results[3] == (b"entry 3", 1003)
    finally:
        await storage.close()


async def test_cancelled_callers_are_skipped(tmp_path: Path) -> None:
    storage = await filled(tmp_path / "log.db", 5)
    try:
        gone = asyncio.ensure_future(storage.read_entry_meta(0))
        kept = asyncio.ensure_future(storage.read_entry_meta(4))
        await asyncio.sleep(0)
        gone.cancel()
        assert await kept == (b"entry 4", 1004)
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert await storage.read_entry_meta(0) == (b"entry 0", 1000)
    finally:
        await storage.close()


async def test_reads_after_close_fail(tmp_path: Path) -> None:
    storage = await filled(tmp_path / "log.db", 2)
    await storage.close()
    with pytest.raises(StorageError, match="not open"):
        await storage.read_entry_meta(0)
    with pytest.raises(ValueError, match="reader"):
        SQLiteStorage(tmp_path / "other.db", readers=0)
