"""SQLite storage backend: one database file, the embedded default (ARCHITECTURE.md "Storage").

Uses the standard-library :mod:`sqlite3` in WAL mode with ``synchronous=FULL``, so a commit is
on disk when :meth:`SQLiteStorage.commit` returns. Each connection is owned by one dedicated
thread: the writer (schema, commits, metadata writes) and ``readers`` readers (every read, with
``query_only`` on; a read goes to the reader with the fewest calls in flight, so concurrent
requests query in parallel, SQLite releasing the GIL while it works). WAL lets the readers run
while the writer commits, and a read started after a commit returned sees it. A commit runs
under ``BEGIN IMMEDIATE``, so two storage objects (or two processes) on one file serialize,
and the compare-and-swap of the checkpoint holds across them.

Text keys are stored as UTF-8 BLOBs (see :mod:`server.storage.base`). ``sqlite3`` errors are
mapped onto the :mod:`server.storage.base` hierarchy: busy, locked, I/O, disk full and
cannot-open become :class:`StorageUnavailable`, constraint violations :class:`IntegrityError`,
anything else :class:`StorageError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Final, TypeVar

from server.faults import Phase, Step, fault_point
from server.storage.base import (
    MAX_TILE_LEVEL,
    MIN_TILE_LEVEL,
    STATUSES,
    Batch,
    CheckpointConflict,
    IntegrityError,
    LogState,
    LookupHit,
    Principal,
    PrincipalKey,
    StorageError,
    StorageUnavailable,
    TileKey,
    check_batch,
    check_limit,
    check_principal,
    check_principal_key,
    check_read_range,
    clamp64,
    encode_key,
    fits_int64,
    leading_entries,
    lookup_bounds,
    unique_lookup_keys,
)

__all__ = ["SCHEMA_VERSION", "SQLiteStorage"]

T = TypeVar("T")

_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # Version 0 -> 1: the initial schema.
    (
        """CREATE TABLE state (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            checkpoint BLOB,
            tree_size INTEGER NOT NULL CHECK (tree_size >= 0),
            compact_range BLOB NOT NULL
        ) STRICT""",
        "INSERT INTO state (id, checkpoint, tree_size, compact_range) VALUES (1, NULL, 0, x'')",
        """CREATE TABLE entries (
            leaf_index INTEGER PRIMARY KEY CHECK (leaf_index >= 0),
            data BLOB NOT NULL,
            log_time INTEGER NOT NULL
        ) STRICT""",
        """CREATE TABLE leaf_hashes (
            leaf_hash BLOB PRIMARY KEY CHECK (length(leaf_hash) = 32),
            leaf_index INTEGER NOT NULL REFERENCES entries (leaf_index)
        ) STRICT, WITHOUT ROWID""",
        """CREATE TABLE idempotency_keys (
            idempotency_key BLOB PRIMARY KEY,
            leaf_index INTEGER NOT NULL REFERENCES entries (leaf_index)
        ) STRICT, WITHOUT ROWID""",
        """CREATE TABLE lookup_keys (
            kind BLOB NOT NULL,
            value BLOB NOT NULL,
            leaf_index INTEGER NOT NULL REFERENCES entries (leaf_index),
            log_time INTEGER NOT NULL,
            PRIMARY KEY (kind, value, leaf_index)
        ) STRICT, WITHOUT ROWID""",
        # Tiles are up to 8 KiB, too large for WITHOUT ROWID to pay off.
        """CREATE TABLE tiles (
            level INTEGER NOT NULL,
            tile_index INTEGER NOT NULL CHECK (tile_index >= 0),
            data BLOB NOT NULL,
            PRIMARY KEY (level, tile_index)
        ) STRICT""",
        """CREATE TABLE checkpoints (
            tree_size INTEGER PRIMARY KEY CHECK (tree_size >= 0),
            note BLOB NOT NULL
        ) STRICT""",
        """CREATE TABLE cosigned_checkpoint (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            tree_size INTEGER NOT NULL,
            note BLOB NOT NULL
        ) STRICT""",
        """CREATE TABLE meta (
            key BLOB PRIMARY KEY,
            value BLOB NOT NULL
        ) STRICT, WITHOUT ROWID""",
    ),
    # Version 1 -> 2: principals (submitters, readers) and their public keys.
    (
        """CREATE TABLE principals (
            role TEXT NOT NULL,
            name TEXT NOT NULL,
            credential_hash BLOB NOT NULL UNIQUE CHECK (length(credential_hash) = 32),
            status TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
            created_ms INTEGER NOT NULL,
            PRIMARY KEY (role, name)
        ) STRICT, WITHOUT ROWID""",
        """CREATE TABLE principal_keys (
            role TEXT NOT NULL,
            name TEXT NOT NULL,
            key_id TEXT NOT NULL,
            usage TEXT NOT NULL,
            algorithm TEXT NOT NULL,
            public_key BLOB NOT NULL,
            created_ms INTEGER NOT NULL,
            not_after_ms INTEGER,
            issuer TEXT,
            PRIMARY KEY (role, name, key_id),
            FOREIGN KEY (role, name) REFERENCES principals (role, name)
        ) STRICT, WITHOUT ROWID""",
    ),
)
"""``_MIGRATIONS[v]`` holds the statements that take the schema from version ``v`` to ``v + 1``."""

SCHEMA_VERSION = len(_MIGRATIONS)
"""The schema version this code creates and reads."""

_CHUNK = 500
"""Most values bound in one ``IN (...)`` list (SQLite allows 32766 variables)."""

_UNAVAILABLE_CODES = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
    }
)
"""Primary result codes of conditions an operator can clear (disk, locks, permissions)."""

_UPSERT_TILE = """
    INSERT INTO tiles (level, tile_index, data) VALUES (?, ?, ?)
    ON CONFLICT (level, tile_index) DO UPDATE SET data = excluded.data
    WHERE length(excluded.data) >= length(tiles.data)
      AND substr(excluded.data, 1, length(tiles.data)) = tiles.data
"""
"""Store a tile's newest width; the update applies only if the stored hashes are kept as prefix."""


def _map_error(exc: sqlite3.Error) -> StorageError:
    """Return the :mod:`server.storage.base` error for a ``sqlite3`` error (never raises)."""
    code = getattr(exc, "sqlite_errorcode", None)
    name = getattr(exc, "sqlite_errorname", type(exc).__name__)
    if isinstance(exc, sqlite3.IntegrityError):
        return IntegrityError(f"constraint violated: {exc}")
    if code is not None and code & 0xFF in _UNAVAILABLE_CODES:
        return StorageUnavailable(f"SQLite database unavailable ({name}): {exc}")
    return StorageError(f"SQLite error ({name}): {exc}")


def _chunks(items: Sequence[T]) -> Iterator[Sequence[T]]:
    """Yield consecutive slices of at most ``_CHUNK`` items."""
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


def _select_in(select: str, column: str, values: Sequence[object]) -> str:
    """Return ``"<select> WHERE <column> IN (?,...,?)"`` with one placeholder per value.

    ``select`` and ``column`` are constants of this module; values are always bound.
    """
    marks = ",".join("?" * len(values))
    return f"{select} WHERE {column} IN ({marks})"


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back the open transaction, if any; a failed rollback leaves SQLite's own undo."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


_Call = tuple[Callable[[sqlite3.Connection], Any], "asyncio.Future[Any]"]


class _Worker:
    """One thread owning one ``sqlite3`` connection; every call on the connection runs there.

    Calls made during one turn of the event loop travel to the thread together and run there
    one after the other, in order: a busy server pays one thread wake-up (and one GIL hand-over
    back) per group of concurrent reads instead of one per read.
    """

    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._conn: sqlite3.Connection | None = None
        self._batch: list[_Call] | None = None
        self.in_flight = 0

    @property
    def collecting(self) -> bool:
        """Tell whether calls are being grouped for the next trip to the thread."""
        return self._batch is not None

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on the worker thread and return its result.

        Raises ``StorageError`` if the connection is closed, and the mapped error of any
        ``sqlite3`` error.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if self._batch is None:
            self._batch = []
            loop.call_soon(self._dispatch, loop)
        self._batch.append((fn, future))
        self.in_flight += 1
        try:
            return await future
        finally:
            self.in_flight -= 1

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Send the grouped calls to the thread; settle their futures when they are done."""
        batch, self._batch = self._batch or [], None
        try:
            done = self._executor.submit(self._invoke_all, [fn for fn, _ in batch])
        except RuntimeError:  # the executor was shut down: the storage is closed
            for _, future in batch:
                if not future.done():
                    future.set_exception(StorageError("storage is closed"))
            return
        done.add_done_callback(
            lambda finished: loop.call_soon_threadsafe(self._settle, batch, finished)
        )

    def _invoke_all(
        self, calls: list[Callable[[sqlite3.Connection], Any]]
    ) -> list[tuple[bool, Any]]:
        """Run each call in order on this thread; return (succeeded, result or exception)."""
        outcomes: list[tuple[bool, Any]] = []
        for fn in calls:
            try:
                outcomes.append((True, self._invoke(fn)))
            except Exception as exc:  # handed to the caller's future
                outcomes.append((False, exc))
        return outcomes

    @staticmethod
    def _settle(batch: list[_Call], finished: Future[list[tuple[bool, Any]]]) -> None:
        """Set each caller's result or exception (callers that gave up are skipped)."""
        failure = finished.exception()
        outcomes = [] if failure is not None else finished.result()
        for index, (_, future) in enumerate(batch):
            if future.done():
                continue
            if failure is not None:
                future.set_exception(failure)
                continue
            succeeded, value = outcomes[index]
            if succeeded:
                future.set_result(value)
            else:
                future.set_exception(value)

    def _invoke(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise StorageError("storage is closed")
        try:
            return fn(conn)
        except sqlite3.Error as exc:
            raise _map_error(exc) from exc

    async def connect(self, setup: Callable[[], sqlite3.Connection]) -> None:
        """Create the worker's connection with ``setup`` on the worker thread."""

        def attach() -> None:
            try:
                self._conn = setup()
            except sqlite3.Error as exc:
                raise _map_error(exc) from exc

        await asyncio.get_running_loop().run_in_executor(self._executor, attach)

    async def close(self) -> None:
        """Close the connection on its thread and let the thread end."""

        def detach() -> None:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, detach)
        finally:
            self._executor.shutdown(wait=False)


class SQLiteStorage:
    """The :class:`server.storage.base.Storage` of one SQLite file (see the module docstring).

    ``path`` is the database file (created if missing; its directory must exist);
    ``busy_timeout`` is how long, in seconds, a statement waits for another connection's lock
    before :class:`StorageUnavailable`; ``readers`` is the number of reading connections.
    Raises ValueError for a bad path or ``readers < 1``.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, busy_timeout: float = 10.0, readers: int = 4
    ) -> None:
        self._path = os.fspath(path)
        if self._path in ("", ":memory:") or self._path.startswith("file:"):
            raise ValueError("SQLite storage needs a file path (no :memory: or URI names)")
        if readers < 1:
            raise ValueError("SQLite storage needs at least one reader")
        self._busy_ms = int(busy_timeout * 1000)
        self._reader_count = readers
        self._writer: _Worker | None = None
        self._readers: tuple[_Worker, ...] = ()
        # Point reads answered on the event loop's own thread (see lookup_entries).
        self._inline: sqlite3.Connection | None = None
        self._inline_thread = -1

    @property
    def path(self) -> str:
        """The database file."""
        return self._path

    # -- lifecycle -------------------------------------------------------------------------

    def _connect(self, *, writer: bool) -> sqlite3.Connection:
        """Open and configure one connection (runs on the worker thread)."""
        conn = sqlite3.connect(
            self._path,
            timeout=self._busy_ms / 1000,
            isolation_level=None,
            check_same_thread=True,
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {self._busy_ms:d}")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA synchronous = FULL")
            # 32 MiB of page cache per connection, filled as pages are touched and kept: the
            # writer, each reader and the lookup connection may hold up to 32 MiB each.
            conn.execute("PRAGMA cache_size = -32768")
            if writer:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StorageError(f"SQLite refused WAL mode (journal_mode={mode})")
                self._migrate(conn)
            else:
                conn.execute("PRAGMA query_only = ON")
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        """Create the schema or bring it to ``SCHEMA_VERSION``, in one write transaction."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                " id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL) STRICT"
            )
            row = conn.execute("SELECT version FROM schema_version WHERE id = 1").fetchone()
            version = 0 if row is None else int(row[0])
            if version > SCHEMA_VERSION:
                raise StorageError(
                    f"database schema version {version} is newer than this code ({SCHEMA_VERSION})"
                )
            for statements in _MIGRATIONS[version:]:
                for statement in statements:
                    conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_version (id, version) VALUES (1, ?)"
                " ON CONFLICT (id) DO UPDATE SET version = excluded.version",
                (SCHEMA_VERSION,),
            )
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise

    async def open(self) -> None:
        """Open the file, switch it to WAL and create or migrate the schema.

        Does nothing if already open. Raises ``StorageUnavailable`` if the file cannot be opened
        or is locked past the busy timeout, ``StorageError`` for a newer schema or a file that
        is not a database.
        """
        if self._writer is not None:
            return
        writer = _Worker("etch-sqlite-writer")
        readers = tuple(_Worker("etch-sqlite-reader") for _ in range(self._reader_count))
        try:
            await writer.connect(lambda: self._connect(writer=True))
            for reader in readers:
                await reader.connect(lambda: self._connect(writer=False))
        except BaseException:
            await writer.close()
            for reader in readers:
                await reader.close()
            raise
        self._writer, self._readers = writer, readers

    async def close(self) -> None:
        """Close every connection; does nothing if not open."""
        writer, readers = self._writer, self._readers
        self._writer, self._readers = None, ()
        self._close_inline()
        for reader in readers:
            await reader.close()
        if writer is not None:
            await writer.close()

    def _write(self) -> _Worker:
        if self._writer is None:
            raise StorageError("storage is not open")
        return self._writer

    def _read(self) -> _Worker:
        """Return a reader grouping calls for its next trip, else the one with fewest in flight."""
        if not self._readers:
            raise StorageError("storage is not open")
        for reader in self._readers:
            if reader.collecting:
                return reader
        return min(self._readers, key=_in_flight)

    # -- the sequencer's state and commit --------------------------------------------------

    async def load_state(self) -> LogState | None:
        """Return the latest checkpoint and compact range, or ``None`` before the first commit."""

        def load(conn: sqlite3.Connection) -> LogState | None:
            row = conn.execute(
                "SELECT checkpoint, tree_size, compact_range FROM state WHERE id = 1"
            ).fetchone()
            if row is None or row[0] is None:
                return None
            return LogState(checkpoint=row[0], tree_size=row[1], compact_range=row[2])

        return await self._read().run(load)

    async def commit(self, previous: bytes | None, batch: Batch) -> None:
        """Store a batch in one ``BEGIN IMMEDIATE`` transaction, swapping the latest checkpoint.

        See :meth:`server.storage.base.Storage.commit` for the contract. Raises
        ``CheckpointConflict``, ``IntegrityError`` (nothing stored) or ``StorageUnavailable``.
        """
        await self._write().run(lambda conn: self._commit(conn, previous, batch))

    @staticmethod
    def _commit(conn: sqlite3.Connection, previous: bytes | None, batch: Batch) -> None:
        start = check_batch(batch)
        conn.execute("BEGIN IMMEDIATE")
        try:
            stored, size = conn.execute(
                "SELECT checkpoint, tree_size FROM state WHERE id = 1"
            ).fetchone()
            if stored != previous:
                if stored == batch.checkpoint and size == batch.tree_size:
                    conn.execute("ROLLBACK")  # this very batch is already committed
                    return
                raise CheckpointConflict("the stored checkpoint is not the previous one", stored)
            if size != start:
                raise IntegrityError(f"batch starts at index {start}, stored tree size is {size}")
            SQLiteStorage._insert_entries(conn, batch)
            for (level, index), data in batch.tiles.items():
                if conn.execute(_UPSERT_TILE, (level, index, data)).rowcount != 1:
                    raise IntegrityError(f"tile {(level, index)} update would change stored hashes")
            fault_point(Step.STORE_HASHES_AND_TILES, Phase.AFTER, conn)
            fault_point(Step.SWAP_CHECKPOINT, Phase.BEFORE, conn)
            conn.execute(
                "INSERT INTO checkpoints (tree_size, note) VALUES (?, ?)"
                " ON CONFLICT (tree_size) DO NOTHING",
                (batch.tree_size, batch.checkpoint),
            )
            conn.execute(
                "UPDATE state SET checkpoint = ?, tree_size = ?, compact_range = ? WHERE id = 1",
                (batch.checkpoint, batch.tree_size, batch.compact_range),
            )
            fault_point(Step.SWAP_CHECKPOINT, Phase.AFTER, conn)
            fault_point(Step.COMMIT, Phase.BEFORE, conn)
            conn.execute("COMMIT")
            fault_point(Step.COMMIT, Phase.AFTER, conn)
        except BaseException:
            _rollback(conn)
            raise

    @staticmethod
    def _insert_entries(conn: sqlite3.Connection, batch: Batch) -> None:
        entries = batch.entries
        fault_point(Step.STORE_ENTRIES, Phase.BEFORE, conn)
        if entries:
            conn.executemany(
                "INSERT INTO entries (leaf_index, data, log_time) VALUES (?, ?, ?)",
                [(e.index, e.data, e.log_time) for e in entries],
            )
        fault_point(Step.STORE_ENTRIES, Phase.AFTER, conn)
        fault_point(Step.STORE_HASHES_AND_TILES, Phase.BEFORE, conn)
        if not entries:
            return
        conn.executemany(
            "INSERT INTO leaf_hashes (leaf_hash, leaf_index) VALUES (?, ?)",
            [(e.leaf_hash, e.index) for e in entries],
        )
        keys = [
            (encode_key(e.idempotency_key), e.index)
            for e in entries
            if e.idempotency_key is not None
        ]
        if keys:
            conn.executemany(
                "INSERT INTO idempotency_keys (idempotency_key, leaf_index) VALUES (?, ?)", keys
            )
        lookups = [
            (kind, value, e.index, e.log_time)
            for e in entries
            for kind, value in unique_lookup_keys(e)
        ]
        if lookups:
            conn.executemany(
                "INSERT INTO lookup_keys (kind, value, leaf_index, log_time) VALUES (?, ?, ?, ?)",
                lookups,
            )

    # -- reads -----------------------------------------------------------------------------

    async def find_leaf_hashes(self, leaf_hashes: Sequence[bytes]) -> dict[bytes, int]:
        """Return the index of each given leaf hash that is stored."""
        wanted = list(dict.fromkeys(leaf_hashes))

        def find(conn: sqlite3.Connection) -> dict[bytes, int]:
            found: dict[bytes, int] = {}
            for chunk in _chunks(wanted):
                query = _select_in(
                    "SELECT leaf_hash, leaf_index FROM leaf_hashes", "leaf_hash", chunk
                )
                found.update(conn.execute(query, chunk).fetchall())
            return found

        return await self._read().run(lambda conn: _snapshot(conn, find)) if wanted else {}

    async def find_idempotency_keys(self, keys: Sequence[str]) -> dict[str, int]:
        """Return the index of each given idempotency key that is stored."""
        encoded: dict[bytes, str] = {}
        for key in keys:
            with contextlib.suppress(IntegrityError):  # unencodable keys are never stored
                encoded[encode_key(key)] = key
        wanted = list(encoded)

        def find(conn: sqlite3.Connection) -> dict[str, int]:
            found: dict[str, int] = {}
            for chunk in _chunks(wanted):
                query = _select_in(
                    "SELECT idempotency_key, leaf_index FROM idempotency_keys",
                    "idempotency_key",
                    chunk,
                )
                for key, index in conn.execute(query, chunk):
                    found[encoded[key]] = index
            return found

        return await self._read().run(lambda conn: _snapshot(conn, find)) if wanted else {}

    async def read_tiles(self, coords: Sequence[TileKey]) -> dict[TileKey, bytes]:
        """Return the stored contents of each given tile (one primary-key lookup per tile)."""
        wanted = [key for key in dict.fromkeys(coords) if _storable_tile(key)]

        def read(conn: sqlite3.Connection) -> dict[TileKey, bytes]:
            found: dict[TileKey, bytes] = {}
            for key in wanted:
                row = conn.execute(
                    "SELECT data FROM tiles WHERE level = ? AND tile_index = ?", key
                ).fetchone()
                if row is not None:
                    found[key] = row[0]
            return found

        return await self._read().run(lambda conn: _snapshot(conn, read)) if wanted else {}

    async def read_entries(self, start: int, end: int) -> list[bytes]:
        """Return entries ``start`` to ``end - 1`` in order, stopping at the first missing one.

        Raises ``ValueError`` unless ``0 <= start <= end``.
        """
        check_read_range(start, end)
        low, high = clamp64(start), clamp64(end)

        def read(conn: sqlite3.Connection) -> list[bytes]:
            rows = conn.execute(
                "SELECT leaf_index, data FROM entries"
                " WHERE leaf_index >= ? AND leaf_index < ? ORDER BY leaf_index",
                (low, high),
            ).fetchall()
            return leading_entries(rows, low)

        return await self._read().run(read) if low < high else []

    async def read_entry_meta(self, index: int) -> tuple[bytes, int] | None:
        """Return ``(data, log_time)`` of the entry at ``index``, or ``None``."""
        if not fits_int64(index):
            return None

        def read(conn: sqlite3.Connection) -> tuple[bytes, int] | None:
            row = conn.execute(
                "SELECT data, log_time FROM entries WHERE leaf_index = ?", (index,)
            ).fetchone()
            return None if row is None else (row[0], row[1])

        return await self._read().run(read)

    async def lookup(
        self,
        kind: str,
        value: str,
        *,
        after: int = -1,
        limit: int = 100,
        since_ms: int | None = None,
        until_ms: int | None = None,
    ) -> list[int]:
        """Return up to ``limit`` ascending indexes ``> after`` with lookup key ``(kind, value)``.

        Uses the ``(kind, value, leaf_index)`` primary key; the time range filters the rows it
        walks. Raises ``ValueError`` if ``limit < 1``.
        """
        after, limit, low, high = lookup_bounds(after, limit, since_ms, until_ms)
        try:
            params = (encode_key(kind), encode_key(value), after, low, high, limit)
        except IntegrityError:
            return []

        def find(conn: sqlite3.Connection) -> list[int]:
            rows = conn.execute(
                "SELECT leaf_index FROM lookup_keys"
                " WHERE kind = ? AND value = ? AND leaf_index > ?"
                " AND log_time >= ? AND log_time < ?"
                " ORDER BY leaf_index LIMIT ?",
                params,
            )
            return [index for (index,) in rows]

        return await self._read().run(find)

    async def checkpoint_history(self, *, after_size: int = -1, limit: int = 100) -> list[bytes]:
        """Return up to ``limit`` signed checkpoints with tree size ``> after_size``, by size.

        Raises ``ValueError`` if ``limit < 1``.
        """
        params = (clamp64(after_size), check_limit(limit))

        def read(conn: sqlite3.Connection) -> list[bytes]:
            rows = conn.execute(
                "SELECT note FROM checkpoints WHERE tree_size > ? ORDER BY tree_size LIMIT ?",
                params,
            )
            return [note for (note,) in rows]

        return await self._read().run(read)

    # -- cosigned checkpoint and metadata --------------------------------------------------

    async def put_cosigned_checkpoint(self, tree_size: int, note: bytes) -> None:
        """Store the latest cosigned checkpoint unless a larger tree size is already stored.

        Raises ``ValueError`` if ``tree_size`` is negative or beyond 64 bits.
        """
        if not fits_int64(tree_size):
            raise ValueError(f"bad tree size {tree_size}")

        def put(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO cosigned_checkpoint (id, tree_size, note) VALUES (1, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET tree_size = excluded.tree_size,"
                " note = excluded.note WHERE excluded.tree_size >= cosigned_checkpoint.tree_size",
                (tree_size, note),
            )

        await self._write().run(put)

    async def latest_cosigned_checkpoint(self) -> bytes | None:
        """Return the latest cosigned checkpoint note, or ``None``."""

        def read(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("SELECT note FROM cosigned_checkpoint WHERE id = 1").fetchone()
            return None if row is None else bytes(row[0])

        return await self._read().run(read)

    async def get_meta(self, key: str) -> bytes | None:
        """Return the metadata value stored under ``key``, or ``None``."""
        try:
            encoded = encode_key(key)
        except IntegrityError:
            return None

        def read(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (encoded,)).fetchone()
            return None if row is None else bytes(row[0])

        return await self._read().run(read)

    async def put_meta(self, key: str, value: bytes) -> None:
        """Set the metadata value under ``key``; raises ``IntegrityError`` if not encodable."""
        encoded = encode_key(key)

        def put(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (encoded, value),
            )

        await self._write().run(put)

    # -- principals and entry lookups (OAuthStorage) ---------------------------------------

    async def add_principal(self, principal: Principal) -> None:
        """Store a new principal and its keys in one transaction.

        Raises ``IntegrityError`` (nothing stored) for a taken name or credential hash, or an
        invalid field.
        """
        check_principal(principal)

        def add(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "INSERT INTO principals (role, name, credential_hash, status, created_ms)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (
                        principal.role,
                        principal.name,
                        principal.credential_hash,
                        principal.status,
                        principal.created_ms,
                    ),
                )
                for key in principal.keys:
                    _insert_key(conn, principal.role, principal.name, key)
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise

        await self._write().run(add)

    async def add_principal_key(self, role: str, name: str, key: PrincipalKey) -> None:
        """Add a key to a stored principal.

        Raises ``IntegrityError`` for an unknown principal, a taken key id or an invalid key.
        """
        check_principal_key(key)

        def add(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                found = conn.execute(
                    "SELECT 1 FROM principals WHERE role = ? AND name = ?", (role, name)
                ).fetchone()
                if found is None:
                    raise IntegrityError(f"no {role} named {name}")
                _insert_key(conn, role, name, key)
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise

        await self._write().run(add)

    async def get_principal(self, role: str, name: str) -> Principal | None:
        """Return the principal with this role and name, keys included, or ``None``."""

        def read(conn: sqlite3.Connection) -> Principal | None:
            rows = _principal_rows(conn, "name", (role, name))
            return rows[0] if rows else None

        return await self._read().run(lambda conn: _snapshot(conn, read))

    async def find_principal(self, credential_hash: bytes) -> Principal | None:
        """Return the principal whose credential hash this is, or ``None``."""

        def read(conn: sqlite3.Connection) -> Principal | None:
            rows = _principal_rows(conn, "credential", (credential_hash,))
            return rows[0] if rows else None

        return await self._read().run(lambda conn: _snapshot(conn, read))

    async def list_principals(self, role: str) -> list[Principal]:
        """Return every principal of ``role``, keys included, ordered by name."""
        return await self._read().run(
            lambda conn: _snapshot(conn, lambda c: _principal_rows(c, "role", (role,)))
        )

    async def set_principal_status(self, role: str, name: str, status: str) -> bool:
        """Set a principal's status; return whether it exists. Raises ``IntegrityError``."""
        if status not in STATUSES:
            raise IntegrityError("status must be active or revoked")

        def update(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE principals SET status = ? WHERE role = ? AND name = ?",
                (status, role, name),
            )
            return cursor.rowcount == 1

        return await self._write().run(update)

    async def lookup_entries(
        self,
        kind: str,
        value: str,
        *,
        after: int = -1,
        limit: int = 100,
        since_ms: int | None = None,
        until_ms: int | None = None,
    ) -> list[LookupHit]:
        """Return the entries :meth:`lookup` finds, with their log times and leaf bytes.

        A token-reference lookup with no time bounds and at most :data:`INLINE_LOOKUP_LIMIT`
        results (a few index probes: a token has few events) is read on the calling thread,
        on a connection of its own (see :meth:`_inline_lookup`), rather than handed to a reader
        thread; every other lookup goes to a reader. Both see every commit that returned before
        the call. Raises ``ValueError`` if ``limit < 1``.
        """
        after, limit, low, high = lookup_bounds(after, limit, since_ms, until_ms)
        try:
            params = (encode_key(kind), encode_key(value), after, low, high, limit)
        except IntegrityError:
            return []
        if (
            kind == "token_ref"
            and since_ms is None
            and until_ms is None
            and limit <= INLINE_LOOKUP_LIMIT
            and self._readers
        ):
            hits = self._inline_lookup(params)
            if hits is not None:
                return hits

        def find(conn: sqlite3.Connection) -> list[LookupHit]:
            return _lookup_hits(conn, params)

        return await self._read().run(find)

    def _inline_lookup(self, params: tuple[object, ...]) -> list[LookupHit] | None:
        """Run the lookup query on this thread's own read-only connection, never waiting.

        The connection (opened on first use, by the thread that first uses it: the event
        loop's) has ``query_only`` on and a zero busy timeout: in WAL mode a read takes no lock
        a writer holds, and in the rare moments SQLite answers busy (say, while a checkpoint
        resets the WAL) this returns ``None`` and the caller asks a reader thread, which
        waits. ``None`` too when called from another thread. Raises the mapped error of any
        other ``sqlite3`` error.
        """
        conn = self._inline
        if conn is None:
            conn = self._open_inline()
        elif self._inline_thread != threading.get_ident():
            return None
        try:
            return _lookup_hits(conn, params)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                return None
            raise _map_error(exc) from exc
        except sqlite3.Error as exc:
            raise _map_error(exc) from exc

    def _open_inline(self) -> sqlite3.Connection:
        """Open the calling thread's read-only connection (see :meth:`_inline_lookup`).

        Raises the mapped error if the file cannot be opened.
        """
        try:
            conn = sqlite3.connect(
                self._path, timeout=0, isolation_level=None, check_same_thread=True
            )
        except sqlite3.Error as exc:
            raise _map_error(exc) from exc
        try:
            conn.execute("PRAGMA busy_timeout = 0")
            conn.execute("PRAGMA query_only = ON")
            conn.execute("PRAGMA cache_size = -32768")
        except sqlite3.Error as exc:
            conn.close()
            raise _map_error(exc) from exc
        self._inline, self._inline_thread = conn, threading.get_ident()
        return conn

    def _close_inline(self) -> None:
        """Close the inline connection (from its own thread; otherwise just drop it)."""
        conn, self._inline = self._inline, None
        if conn is not None and self._inline_thread == threading.get_ident():
            conn.close()
        self._inline_thread = -1


_LOOKUP_SQL: Final = (
    "SELECT k.leaf_index, k.log_time, e.data FROM lookup_keys AS k"
    " JOIN entries AS e ON e.leaf_index = k.leaf_index"
    " WHERE k.kind = ? AND k.value = ? AND k.leaf_index > ?"
    " AND k.log_time >= ? AND k.log_time < ?"
    " ORDER BY k.leaf_index LIMIT ?"
)
"""The lookup query: a range of the ``lookup_keys`` primary key (which holds the log time),
then one rowid probe of ``entries`` per hit."""

INLINE_LOOKUP_LIMIT: Final = 100
"""Most results of a token-reference lookup read on the calling thread."""


def _lookup_hits(conn: sqlite3.Connection, params: tuple[object, ...]) -> list[LookupHit]:
    """Return the hits of :data:`_LOOKUP_SQL` with ``params`` (a read of its own)."""
    return [
        LookupHit(index, log_time, data)
        for index, log_time, data in conn.execute(_LOOKUP_SQL, params)
    ]


def _insert_key(conn: sqlite3.Connection, role: str, name: str, key: PrincipalKey) -> None:
    """Insert one principal key (inside the caller's transaction)."""
    conn.execute(
        "INSERT INTO principal_keys (role, name, key_id, usage, algorithm, public_key,"
        " created_ms, not_after_ms, issuer) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            role,
            name,
            key.key_id,
            key.usage,
            key.algorithm,
            key.public_key,
            key.created_ms,
            key.not_after_ms,
            key.issuer,
        ),
    )


_SELECT_PRINCIPALS: Final = {
    "name": "SELECT role, name, credential_hash, status, created_ms FROM principals"
    " WHERE role = ? AND name = ?",
    "credential": "SELECT role, name, credential_hash, status, created_ms FROM principals"
    " WHERE credential_hash = ?",
    "role": "SELECT role, name, credential_hash, status, created_ms FROM principals"
    " WHERE role = ? ORDER BY name",
}
"""The principal queries, by what they select on."""

_SELECT_KEYS: Final = (
    "SELECT key_id, usage, algorithm, public_key, created_ms, not_after_ms, issuer"
    " FROM principal_keys WHERE role = ? AND name = ? ORDER BY created_ms, key_id"
)


def _principal_rows(
    conn: sqlite3.Connection, by: str, params: tuple[object, ...]
) -> list[Principal]:
    """Return the principals of query ``_SELECT_PRINCIPALS[by]``, each with its keys."""
    found: list[Principal] = []
    for role, name, credential_hash, status, created_ms in conn.execute(
        _SELECT_PRINCIPALS[by], params
    ).fetchall():
        keys = tuple(
            PrincipalKey(*row) for row in conn.execute(_SELECT_KEYS, (role, name)).fetchall()
        )
        found.append(Principal(role, name, credential_hash, status, created_ms, keys))
    return found


def _in_flight(worker: _Worker) -> int:
    """Return the number of calls queued on or running in ``worker``."""
    return worker.in_flight


def _storable_tile(key: TileKey) -> bool:
    """Return whether a tile key is in the range a commit accepts (others are never stored)."""
    level, index = key
    return MIN_TILE_LEVEL <= level <= MAX_TILE_LEVEL and fits_int64(index)


def _snapshot(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """Run several reads in one read transaction, so they see one state of the database."""
    conn.execute("BEGIN")
    try:
        return fn(conn)
    finally:
        _rollback(conn)
