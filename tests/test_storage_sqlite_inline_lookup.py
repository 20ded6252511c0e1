"""SQLite token-reference lookups read on the calling thread (``SQLiteStorage.lookup_entries``).

Point lookups by token reference are read on the event loop's thread, on a read-only
connection of its own; they give the same hits as a reader thread, see every commit that
returned before them, fall back to a reader when SQLite answers busy or when called from
another thread, map other errors, and the connection is closed and reopened with the storage.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from merkle.hashing import leaf_hash
from server.storage import Batch, NewEntry, SQLiteStorage
from server.storage.base import LookupHit, StorageError

pytestmark = pytest.mark.anyio


def entry(i: int, ref: str) -> NewEntry:
    data = f"entry {i}".encode()
    return NewEntry(
        index=i,
        leaf_hash=leaf_hash(data),
        data=data,
        idempotency_key=f"key-{i}",
        lookup_keys=(("token_ref", ref), ("client_id", "client")),
        log_time=1000 + i,
    )


async def filled(path: Path, count: int) -> SQLiteStorage:
    storage = SQLiteStorage(path, readers=2)
    await storage.open()
    entries = [entry(i, f"ref-{i % 7}") for i in range(count)]
    await storage.commit(None, Batch(entries, {}, b"note", count, b"range"))
    return storage


class _Refusing(sqlite3.Connection):
    """A connection whose every statement fails with the given SQLite error code."""

    code = sqlite3.SQLITE_BUSY

    def execute(self, *args: Any, **kwargs: Any) -> sqlite3.Cursor:
        error = sqlite3.OperationalError("refused for the test")
        error.sqlite_errorcode = self.code
        raise error


def refusing(storage: SQLiteStorage, code: int) -> None:
    """Put a connection answering ``code`` to everything in place of the inline one."""
    conn = sqlite3.connect(storage.path, factory=_Refusing)
    conn.code = code
    storage._close_inline()
    storage._inline, storage._inline_thread = conn, threading.get_ident()


def inline_of(storage: SQLiteStorage) -> sqlite3.Connection | None:
    """The storage's inline connection, if open."""
    return storage._inline


async def test_inline_hits_equal_the_reader_hits(tmp_path: Path) -> None:
    storage = await filled(tmp_path / "log.db", 300)
    try:
        for k in range(7):
            inline = await storage.lookup_entries("token_ref", f"ref-{k}")
            assert storage._inline is not None
            # More than 100 results, or a time bound: read by a reader thread.
            by_reader = await storage.lookup_entries("token_ref", f"ref-{k}", limit=101)
            assert inline == by_reader[:100]
            assert (
                inline
                == [LookupHit(i, 1000 + i, f"entry {i}".encode()) for i in range(k, 300, 7)][:100]
            )
            bounded = await storage.lookup_entries("token_ref", f"ref-{k}", since_ms=0)
            assert bounded == inline
            after = await storage.lookup_entries("token_ref", f"ref-{k}", after=inline[-1].index)
            assert [h.index for h in after] == list(range(inline[-1].index + 7, 300, 7))
        assert await storage.lookup_entries("token_ref", "never") == []
        assert await storage.lookup_entries("token_ref", "bad\x00value") == []
    finally:
        await storage.close()


async def test_inline_reads_see_each_returned_commit(tmp_path: Path) -> None:
    storage = await filled(tmp_path / "log.db", 10)
    try:
        for n in range(10, 20):
            await storage.commit(b"note", Batch([entry(n, "new")], {}, b"note", n + 1, b"range"))
            found = await storage.lookup_entries("token_ref", "new")
            assert [h.index for h in found] == list(range(10, n + 1))
    finally:
        await storage.close()


async def test_busy_falls_back_to_a_reader(tmp_path: Path) -> None:
    storage = await filled(tmp_path / "log.db", 20)
    try:
        expected = await storage.lookup_entries("token_ref", "ref-3")
        for code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, 517):  # 517: BUSY_SNAPSHOT
            refusing(storage, code)
            assert await storage.lookup_entries("token_ref", "ref-3") == expected
    finally:
        await storage.close()


async def test_other_errors_are_mapped(tmp_path: Path) -> None:
    storage = await filled(tmp_path / "log.db", 5)
    try:
        refusing(storage, sqlite3.SQLITE_IOERR)
        with pytest.raises(StorageError):
            await storage.lookup_entries("token_ref", "ref-1")
        refusing(storage, sqlite3.SQLITE_CORRUPT)
        with pytest.raises(StorageError):
            await storage.lookup_entries("token_ref", "ref-1")
    finally:
        await storage.close()


async def test_other_threads_ask_a_reader(tmp_path: Path) -> None:
    storage = await filled(tmp_path / "log.db", 30)
    try:
        here = await storage.lookup_entries("token_ref", "ref-2")
        owner = storage._inline_thread
        answers: list[list[LookupHit]] = []

        def elsewhere() -> None:
            # The storage's reader threads serve a loop on any thread.
            answers.append(asyncio.run(storage.lookup_entries("token_ref", "ref-2")))

        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join(30)
        assert answers == [here]
        assert storage._inline_thread == owner
    finally:
        await storage.close()


async def test_close_closes_and_reopen_reopens(tmp_path: Path) -> None:
    storage = await filled(tmp_path / "log.db", 10)
    first = await storage.lookup_entries("token_ref", "ref-1")
    conn = storage._inline
    assert conn is not None
    await storage.close()
    assert storage._inline is None
    with pytest.raises(sqlite3.ProgrammingError):
        conn.execute("SELECT 1")
    with pytest.raises(StorageError):
        await storage.lookup_entries("token_ref", "ref-1")
    await storage.open()
    try:
        assert await storage.lookup_entries("token_ref", "ref-1") == first
        reopened = inline_of(storage)
        assert reopened is not None
        assert reopened is not conn
    finally:
        await storage.close()
