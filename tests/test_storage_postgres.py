"""PostgreSQL backend behaviour beyond the conformance suite: outages, restarts, timeouts.

These tests stop and restart the session's private server (``pg_server``), so each one leaves it
running again before it ends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from merkle.hashing import leaf_hash
from server.storage import (
    CheckpointConflict,
    IntegrityError,
    LogState,
    PostgresStorage,
    StorageUnavailable,
)
from tests.pg import PgServer
from tests.test_storage_conformance import LogModel

pytestmark = pytest.mark.anyio


@pytest.fixture
async def pg_storage(pg_database: str) -> AsyncIterator[PostgresStorage]:
    storage = PostgresStorage(pg_database, max_size=4, connect_timeout=5, command_timeout=10)
    await storage.open()
    try:
        yield storage
    finally:
        await storage.close()


async def test_outage_is_unavailable_and_the_pool_recovers(
    pg_server: PgServer, pg_storage: PostgresStorage
) -> None:
    model = LogModel()
    await model.commit(pg_storage, model.batch([b"before"]))
    pending = model.batch([b"during"])
    pg_server.stop()
    try:
        with pytest.raises(StorageUnavailable):
            await pg_storage.load_state()
        with pytest.raises(StorageUnavailable):
            await pg_storage.commit(model.checkpoint, pending)
        with pytest.raises(StorageUnavailable):
            await pg_storage.read_tiles([(0, 0)])
    finally:
        pg_server.start()
    # The very next call succeeds: dead pooled connections are replaced without a failure.
    state = await pg_storage.load_state()
    assert state is not None
    assert state.checkpoint == model.checkpoint
    await model.commit(pg_storage, pending)
    assert await pg_storage.read_entries(0, 5) == [b"before", b"during"]


async def test_restart_between_calls_is_invisible(
    pg_server: PgServer, pg_storage: PostgresStorage
) -> None:
    model = LogModel()
    await model.commit(pg_storage, model.batch([b"a"]))
    await asyncio.gather(*(pg_storage.read_entries(0, 1) for _ in range(4)))  # fill the pool
    pg_server.restart()
    await model.commit(pg_storage, model.batch([b"b"]))
    assert await asyncio.gather(*(pg_storage.read_entries(0, 2) for _ in range(4))) == [
        [b"a", b"b"]
    ] * 4


async def test_crash_restart_while_committing_loses_nothing_acknowledged(
    pg_server: PgServer, pg_storage: PostgresStorage
) -> None:
    """Commit batches in a loop while the server crashes (``-m immediate``) and restarts.

    Like the sequencer: after a failed commit, reload the state to learn whether it landed.
    Every batch acknowledged (or found committed) must be there after the restart.
    """
    model = LogModel()
    await model.commit(pg_storage, model.batch([]))
    acknowledged = 0
    failures = 0
    crash = asyncio.create_task(asyncio.to_thread(_crash_soon, pg_server))
    try:
        while not crash.done() or acknowledged < 20:
            batch = model.batch([f"e{model.size}-{i}".encode() for i in range(50)])
            try:
                await model.commit(pg_storage, batch)
                acknowledged += 1
            except StorageUnavailable:
                failures += 1
                state = await _load_when_back(pg_storage)
                if state is not None and state.checkpoint == batch.checkpoint:
                    model.adopt(batch)  # it was committed before the connection dropped
                else:
                    assert state is not None
                    assert state.checkpoint == model.checkpoint
    finally:
        await crash
    assert failures > 0, "the crash did not interrupt any commit"
    state = await pg_storage.load_state()
    assert state is not None
    assert (state.checkpoint, state.tree_size) == (model.checkpoint, model.size)
    assert await pg_storage.read_entries(0, model.size) == model.entries
    hashes = [leaf_hash(data) for data in model.entries]
    assert await pg_storage.find_leaf_hashes(hashes) == {h: i for i, h in enumerate(hashes)}
    history = await pg_storage.checkpoint_history(limit=1000)
    assert history[-1] == model.checkpoint


def _crash_soon(server: PgServer) -> None:
    time.sleep(0.3)
    server.restart("immediate")


async def _load_when_back(storage: PostgresStorage) -> LogState | None:
    for _ in range(200):
        try:
            return await storage.load_state()
        except StorageUnavailable:
            await asyncio.sleep(0.05)
    raise AssertionError("PostgreSQL did not come back")


async def test_open_when_server_is_unreachable(tmp_path: Path) -> None:
    storage = PostgresStorage(
        f"postgresql://postgres@/etch?host={tmp_path}", connect_timeout=2, command_timeout=2
    )
    with pytest.raises(StorageUnavailable):
        await storage.open()
    with pytest.raises(StorageUnavailable):  # and again: nothing was left half open
        await storage.open()


async def test_statement_timeout_is_unavailable_and_not_retried(pg_database: str) -> None:
    storage = PostgresStorage(pg_database, max_size=2, command_timeout=0.5)
    await storage.open()
    blocker = await asyncpg.connect(pg_database)
    try:
        model = LogModel()
        await model.commit(storage, model.batch([b"a"]))
        lock = blocker.transaction()
        await lock.start()
        await blocker.execute("SELECT * FROM state WHERE id = 1 FOR UPDATE")
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(StorageUnavailable, match="Timeout"):
            await storage.commit(model.checkpoint, model.batch([b"b"]))
        assert loop.time() - started < 2.0  # one attempt, not two
        await lock.rollback()
        await model.commit(storage, model.batch([b"b"]))
        assert await storage.read_entries(0, 3) == [b"a", b"b"]
    finally:
        await blocker.close()
        await storage.close()


async def test_failed_transactions_leave_pooled_connections_clean(pg_database: str) -> None:
    storage = PostgresStorage(pg_database, min_size=1, max_size=1)
    await storage.open()
    try:
        model = LogModel()
        await model.commit(storage, model.batch([b"a"], keys=["k"]))
        for _ in range(3):
            with pytest.raises(IntegrityError):
                await storage.commit(model.checkpoint, model.batch([b"b"], keys=["k"]))
            with pytest.raises(CheckpointConflict):
                await storage.commit(None, model.batch([b"c"]))
        await model.commit(storage, model.batch([b"b"], keys=["k2"]))
        assert await storage.read_entries(0, 5) == [b"a", b"b"]
    finally:
        await storage.close()


async def test_two_processes_create_the_schema_at_once(pg_database: str) -> None:
    stores = [PostgresStorage(pg_database, max_size=2) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        model = LogModel()
        await model.commit(stores[0], model.batch([b"x"]))
        for storage in stores:
            state = await storage.load_state()
            assert state is not None
            assert state.checkpoint == model.checkpoint
    finally:
        await asyncio.gather(*(s.close() for s in stores))


def test_pool_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="pool"):
        PostgresStorage("postgresql://x@/y", min_size=0)
    with pytest.raises(ValueError, match="pool"):
        PostgresStorage("postgresql://x@/y", min_size=5, max_size=4)

