"""SQLite backend behaviour beyond the conformance suite: durability settings and failures."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.storage import (
    SQLiteStorage,
    StorageError,
    StorageUnavailable,
)
from server.storage.sqlite import SCHEMA_VERSION
from tests.test_storage_conformance import LogModel, snapshot

pytestmark = pytest.mark.anyio


@pytest.fixture
async def sqlite_storage(tmp_path: Path) -> AsyncIterator[SQLiteStorage]:
    storage = SQLiteStorage(tmp_path / "log.db", busy_timeout=0.2)
    await storage.open()
    try:
        yield storage
    finally:
        await storage.close()


async def test_durability_settings(sqlite_storage: SQLiteStorage, tmp_path: Path) -> None:
    writer = sqlite_storage._write()  # the settings live on the connection
    assert await writer.run(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == 2  # FULL
    assert await writer.run(lambda c: c.execute("PRAGMA foreign_keys").fetchone()[0]) == 1
    with sqlite3.connect(tmp_path / "log.db") as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        version = other.execute("SELECT version FROM schema_version").fetchone()[0]
        assert version == SCHEMA_VERSION
    other.close()


async def test_foreign_keys_hold(sqlite_storage: SQLiteStorage) -> None:
    writer = sqlite_storage._write()
    with pytest.raises(StorageError, match="constraint"):
        await writer.run(
            lambda c: c.execute(
                "INSERT INTO leaf_hashes (leaf_hash, leaf_index) VALUES (?, 7)", (b"\x00" * 32,)
            )
        )


async def test_locked_database_is_unavailable(
    sqlite_storage: SQLiteStorage, tmp_path: Path
) -> None:
    model = LogModel()
    await model.commit(sqlite_storage, model.batch([b"a"]))
    other = sqlite3.connect(tmp_path / "log.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        with pytest.raises(StorageUnavailable, match=r"BUSY|locked"):
            await sqlite_storage.commit(model.checkpoint, model.batch([b"b"]))
        assert await sqlite_storage.read_entries(0, 5) == [b"a"]  # readers go on under WAL
        other.execute("ROLLBACK")
    finally:
        other.close()
    await model.commit(sqlite_storage, model.batch([b"b"]))
    assert await sqlite_storage.read_entries(0, 5) == [b"a", b"b"]


async def test_full_disk_is_unavailable_and_stores_nothing(sqlite_storage: SQLiteStorage) -> None:
    model = LogModel()
    await model.commit(sqlite_storage, model.batch([b"a"]))
    before = await snapshot(sqlite_storage)
    writer = sqlite_storage._write()
    pages = await writer.run(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
    await writer.run(lambda c: c.execute(f"PRAGMA max_page_count = {pages + 2}"))
    big = model.batch([bytes([i % 256]) * 60_000 for i in range(20)])
    with pytest.raises(StorageUnavailable, match="FULL"):
        await sqlite_storage.commit(model.checkpoint, big)
    assert await snapshot(sqlite_storage) == before
    await writer.run(lambda c: c.execute("PRAGMA max_page_count = 1073741823"))
    await model.commit(sqlite_storage, big)
    assert await sqlite_storage.read_entries(0, 30) == model.entries


async def test_missing_directory_is_unavailable(tmp_path: Path) -> None:
    storage = SQLiteStorage(tmp_path / "missing" / "log.db")
    with pytest.raises(StorageUnavailable, match="CANTOPEN"):
        await storage.open()
    with pytest.raises(StorageError, match="not open"):
        await storage.load_state()


async def test_not_a_database_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    path.write_bytes(b"this is not an SQLite database, just some text" * 100)
    storage = SQLiteStorage(path)
    with pytest.raises(StorageError, match="NOTADB") as caught:
        await storage.open()
    assert not isinstance(caught.value, StorageUnavailable)


async def test_reads_continue_during_a_commit(sqlite_storage: SQLiteStorage) -> None:
    model = LogModel()
    await model.commit(sqlite_storage, model.batch([b"first"]))
    big = model.batch([f"entry {i}".encode() * 20 for i in range(3000)])
    commit = asyncio.create_task(sqlite_storage.commit(model.checkpoint, big))
    reads = 0
    while not commit.done():
        state = await sqlite_storage.load_state()
        assert state is not None
        assert state.tree_size in (1, 3001)  # never a half-committed state
        reads += 1
    await commit
    model.adopt(big)
    assert reads > 1
    state = await sqlite_storage.load_state()
    assert state is not None
    assert state.tree_size == 3001
