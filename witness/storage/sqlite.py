"""SQLite backend of the witness storage: one database file, the default.

Standard-library :mod:`sqlite3` in WAL mode with ``synchronous=FULL``: a transaction is on disk
when :meth:`SQLiteWitnessStorage.update` returns. Two connections, each owned by one dedicated
thread: the writer runs every :meth:`~SQLiteWitnessStorage.update` under ``BEGIN IMMEDIATE``
(so two processes on one file serialize too), the reader serves reads with ``query_only`` on.

Group commit. Updates queued while the writer is busy are applied in one transaction, in queue
order, each inside its own ``SAVEPOINT`` (a ``decide`` that raises undoes only its own writes),
and made durable by a single ``COMMIT``; only then does any of them return. Each update still
sees the state left by the ones before it, so the result is exactly that of running them one
after the other, with one ``fsync`` for the group instead of one each.

Triggers make the record tables append-only and forbid lowering a stored tree size, a second
guard behind :func:`~witness.storage.base.check_new_checkpoint`.

``sqlite3`` errors become :class:`~witness.errors.StorageUnavailableError` (busy, locked, I/O,
disk full, cannot open) or :class:`~witness.errors.StorageError` (anything else).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from witness.errors import StorageError, StorageUnavailableError
from witness.storage.base import (
    Applied,
    Decision,
    LogState,
    Record,
    StoredCheckpoint,
    StoredRecord,
    check_new_checkpoint,
)

__all__ = ["SCHEMA_VERSION", "SQLiteWitnessStorage"]

T = TypeVar("T")

SCHEMA_VERSION = 1
"""``PRAGMA user_version`` of the current schema."""

_SCHEMA = (
    """CREATE TABLE checkpoints (
        origin TEXT PRIMARY KEY,
        tree_size INTEGER NOT NULL CHECK (tree_size >= 0),
        root_hash BLOB NOT NULL CHECK (length(root_hash) = 32),
        note BLOB NOT NULL,
        updated_at INTEGER NOT NULL
    ) STRICT""",
    """CREATE TRIGGER checkpoints_never_shrink BEFORE UPDATE OF tree_size ON checkpoints
        WHEN NEW.tree_size < OLD.tree_size
        BEGIN SELECT RAISE(ABORT, 'witness tree size must not decrease'); END""",
    """CREATE TRIGGER checkpoints_never_deleted BEFORE DELETE ON checkpoints
        BEGIN SELECT RAISE(ABORT, 'witness checkpoints are never deleted'); END""",
    *(
        statement
        for table in ("evidence", "refused")
        for statement in (
            f"""CREATE TABLE {table} (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                origin TEXT NOT NULL,
                kind TEXT NOT NULL,
                fingerprint BLOB NOT NULL UNIQUE CHECK (length(fingerprint) = 32),
                document BLOB NOT NULL,
                recorded_at INTEGER NOT NULL
            ) STRICT""",
            f"CREATE INDEX {table}_by_origin ON {table} (origin, id)",
            f"""CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table}
                BEGIN SELECT RAISE(ABORT, '{table} records are append-only'); END""",
            f"""CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table}
                BEGIN SELECT RAISE(ABORT, '{table} records are append-only'); END""",
        )
    ),
)

_SELECT_CHECKPOINT = (
    "SELECT origin, tree_size, root_hash, note, updated_at FROM checkpoints WHERE origin = ?"
)
_SELECT_CHECKPOINTS = (
    "SELECT origin, tree_size, root_hash, note, updated_at FROM checkpoints ORDER BY origin"
)
# Literal queries per record table (no SQL is ever assembled from strings at run time).
_INSERT_RECORD = {
    "evidence": "INSERT INTO evidence (origin, kind, fingerprint, document, recorded_at) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (fingerprint) DO NOTHING",
    "refused": "INSERT INTO refused (origin, kind, fingerprint, document, recorded_at) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (fingerprint) DO NOTHING",
}
_LIST_RECORDS = {
    "evidence": "SELECT id, origin, kind, fingerprint, document, recorded_at FROM evidence "
    "WHERE id > ? ORDER BY id LIMIT ?",
    "refused": "SELECT id, origin, kind, fingerprint, document, recorded_at FROM refused "
    "WHERE id > ? ORDER BY id LIMIT ?",
}
_LIST_ORIGIN_RECORDS = {
    "evidence": "SELECT id, origin, kind, fingerprint, document, recorded_at FROM evidence "
    "WHERE origin = ? AND id > ? ORDER BY id LIMIT ?",
    "refused": "SELECT id, origin, kind, fingerprint, document, recorded_at FROM refused "
    "WHERE origin = ? AND id > ? ORDER BY id LIMIT ?",
}

_UNAVAILABLE_CODES = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_PROTOCOL,
    }
)


def _translate(exc: sqlite3.Error) -> StorageError:
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    message = f"witness database: {exc}"
    if primary in _UNAVAILABLE_CODES or (
        primary is None and isinstance(exc, sqlite3.OperationalError)
    ):
        return StorageUnavailableError(message)
    return StorageError(message)


def _connect(path: str, *, readonly: bool) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
    connection.execute("PRAGMA busy_timeout = 10000")
    if readonly:
        connection.execute("PRAGMA query_only = ON")
    else:
        connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = FULL")
    return connection


_MAX_GROUP = 64
"""Most updates committed together by one ``COMMIT``."""


@dataclass(slots=True)
class _Job(Generic[T]):
    """Work for the writer thread and where to deliver its outcome."""

    run: Callable[[], T]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[T]
    update: bool


_NOTHING = object()


def _deliver(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _send(job: _Job[Any], result: Any, error: BaseException | None) -> None:
    """Hand an outcome back to the job's event loop (dropped if that loop is gone)."""
    with contextlib.suppress(RuntimeError):
        job.loop.call_soon_threadsafe(_deliver, job.future, result, error)


class SQLiteWitnessStorage:
    """Witness storage in one SQLite file (see the module docstring).

    Create with :meth:`open`, which makes the file and schema if needed. Raises
    StorageError for a database whose schema is newer than this code,
    StorageUnavailableError when the file cannot be opened.
    """

    def __init__(self, path: str) -> None:
        """Prepare (but do not open) storage at ``path``; use :meth:`open` instead."""
        self._path = path
        self._jobs: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._writer_thread = threading.Thread(
            target=self._writer_loop, name="witness-sqlite-writer", daemon=True
        )
        self._writer_thread.start()
        self._reader_pool = ThreadPoolExecutor(1, thread_name_prefix="witness-sqlite-reader")
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._closed = False

    @classmethod
    async def open(cls, path: str | os.PathLike[str]) -> SQLiteWitnessStorage:
        """Open (creating if needed) the database file at ``path`` and its schema."""
        storage = cls(os.fspath(path))
        try:
            await storage._on_writer(storage._open_writer)
            await storage._on_reader(storage._open_reader)
        except BaseException:
            await storage.close()
            raise
        return storage

    # ------------------------------------------------------------------ threads

    async def _on_writer(self, fn: Callable[[], T], *, update: bool = False) -> T:
        if self._closed:
            raise StorageError("witness storage is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put(_Job(fn, loop, future, update))
        try:
            return await future
        except sqlite3.Error as exc:
            raise _translate(exc) from None

    async def _on_reader(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise StorageError("witness storage is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._reader_pool, fn)
        except sqlite3.Error as exc:
            raise _translate(exc) from None

    def _writer_loop(self) -> None:
        """The writer thread: run jobs in order, grouping consecutive updates in one commit."""
        pending: _Job[Any] | object | None = _NOTHING
        while True:
            job = self._jobs.get() if pending is _NOTHING else pending
            pending = _NOTHING
            if not isinstance(job, _Job):
                return  # the close sentinel
            if not job.update:
                self._run_alone(job)
                continue
            group: list[_Job[Any]] = [job]
            while len(group) < _MAX_GROUP:
                try:
                    following = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if following is None or not following.update:
                    pending = following
                    break
                group.append(following)
            self._commit_group(group)

    def _run_alone(self, job: _Job[Any]) -> None:
        try:
            result = job.run()
        except BaseException as exc:
            _send(job, None, exc)
        else:
            _send(job, result, None)

    def _commit_group(self, group: list[_Job[Any]]) -> None:
        outcomes: list[tuple[Any, BaseException | None]] = []
        try:
            connection = self._writer_connection()
            connection.execute("BEGIN IMMEDIATE")
            try:
                for job in group:
                    connection.execute("SAVEPOINT witness_update")
                    try:
                        result = job.run()
                    except BaseException as exc:
                        connection.execute("ROLLBACK TO witness_update")
                        outcomes.append((None, exc))
                    else:
                        outcomes.append((result, None))
                    connection.execute("RELEASE witness_update")
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
        except BaseException as exc:
            outcomes = [(None, exc)] * len(group)
        for job, (result, error) in zip(group, outcomes, strict=True):
            _send(job, result, error)

    def _open_writer(self) -> None:
        Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        connection = _connect(self._path, readonly=False)
        self._writer = connection
        connection.execute("BEGIN IMMEDIATE")
        try:
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StorageError(
                    f"witness database schema version {version} is newer than this code "
                    f"({SCHEMA_VERSION})"
                )
            if version == 0:
                for statement in _SCHEMA:
                    connection.execute(statement)
                connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise

    def _open_reader(self) -> None:
        self._reader = _connect(self._path, readonly=True)

    def _writer_connection(self) -> sqlite3.Connection:
        if self._writer is None:
            raise StorageError("witness storage is not open")
        return self._writer

    def _reader_connection(self) -> sqlite3.Connection:
        if self._reader is None:
            raise StorageError("witness storage is not open")
        return self._reader

    # ------------------------------------------------------------------ update

    async def update(self, origin: str, decide: Callable[[LogState], Decision[T]]) -> Applied[T]:
        """Run ``decide`` on the origin's state and commit its writes (see the protocol).

        Runs on the writer thread inside a group transaction (module docstring); returns once
        that transaction is committed.
        """
        return await self._on_writer(lambda: self._apply(origin, decide), update=True)

    def _apply(self, origin: str, decide: Callable[[LogState], Decision[T]]) -> Applied[T]:
        connection = self._writer_connection()
        state = LogState(
            origin,
            _checkpoint_row(connection.execute(_SELECT_CHECKPOINT, (origin,)).fetchone()),
            connection.execute(
                "SELECT count(*) FROM evidence WHERE origin = ?", (origin,)
            ).fetchone()[0],
        )
        decision = decide(state)
        if decision.checkpoint is not None:
            check_new_checkpoint(state, decision.checkpoint)
            stored = decision.checkpoint
            connection.execute(
                "INSERT INTO checkpoints (origin, tree_size, root_hash, note, updated_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (origin) DO UPDATE SET "
                "tree_size = excluded.tree_size, root_hash = excluded.root_hash, "
                "note = excluded.note, updated_at = excluded.updated_at",
                (stored.origin, stored.tree_size, stored.root_hash, stored.note, stored.updated_at),
            )
        evidence_ids = _insert_records(connection, "evidence", origin, decision.evidence)
        refused_ids = _insert_records(connection, "refused", origin, decision.refused)
        return Applied(decision.result, evidence_ids, refused_ids)

    # ------------------------------------------------------------------ reads

    async def latest(self, origin: str) -> StoredCheckpoint | None:
        """Return the origin's latest cosigned checkpoint, or ``None``."""
        return await self._on_reader(
            lambda: _checkpoint_row(
                self._reader_connection().execute(_SELECT_CHECKPOINT, (origin,)).fetchone()
            )
        )

    async def latest_all(self) -> list[StoredCheckpoint]:
        """Return every origin's latest cosigned checkpoint, ordered by origin."""

        def read() -> list[StoredCheckpoint]:
            rows = self._reader_connection().execute(_SELECT_CHECKPOINTS)
            return [checkpoint for row in rows if (checkpoint := _checkpoint_row(row))]

        return await self._on_reader(read)

    async def evidence_counts(self) -> dict[str, int]:
        """Return the number of evidence records per origin."""

        def read() -> dict[str, int]:
            rows = self._reader_connection().execute(
                "SELECT origin, count(*) FROM evidence GROUP BY origin"
            )
            return {str(origin): int(count) for origin, count in rows}

        return await self._on_reader(read)

    async def list_evidence(
        self, origin: str | None = None, *, after: int = 0, limit: int = 100
    ) -> list[StoredRecord]:
        """Return evidence records with ``id > after`` in id order (see the protocol)."""
        return await self._list("evidence", origin, after, limit)

    async def list_refused(
        self, origin: str | None = None, *, after: int = 0, limit: int = 100
    ) -> list[StoredRecord]:
        """Return refused-checkpoint records with ``id > after`` in id order."""
        return await self._list("refused", origin, after, limit)

    async def _list(
        self, table: str, origin: str | None, after: int, limit: int
    ) -> list[StoredRecord]:
        _check_page(after, limit)
        if origin is None:
            query = _LIST_RECORDS[table]
            args: tuple[Any, ...] = (after, limit)
        else:
            query = _LIST_ORIGIN_RECORDS[table]
            args = (origin, after, limit)
        return await self._on_reader(
            lambda: [StoredRecord(*row) for row in self._reader_connection().execute(query, args)]
        )

    async def get_evidence(self, record_id: int) -> StoredRecord | None:
        """Return one evidence record by id, or ``None``."""

        def read() -> StoredRecord | None:
            row = (
                self._reader_connection()
                .execute(
                    "SELECT id, origin, kind, fingerprint, document, recorded_at FROM evidence "
                    "WHERE id = ?",
                    (record_id,),
                )
                .fetchone()
            )
            return None if row is None else StoredRecord(*row)

        if not 0 < record_id < 2**63:
            return None
        return await self._on_reader(read)

    async def close(self) -> None:
        """Close both connections and stop both threads; idempotent."""
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        if self._writer is not None:
            writer = self._writer
            await self._on_writer(writer.close)
            self._writer = None
        if self._reader is not None:
            await loop.run_in_executor(self._reader_pool, self._reader.close)
            self._reader = None
        self._closed = True
        self._jobs.put(None)
        await loop.run_in_executor(None, self._writer_thread.join)
        self._reader_pool.shutdown(wait=True)


def _check_page(after: int, limit: int) -> None:
    if not 1 <= limit <= 1000:
        raise StorageError("page limit must be in 1..1000")
    if not 0 <= after < 2**63:
        raise StorageError("page cursor out of range")


def _checkpoint_row(row: tuple[Any, ...] | None) -> StoredCheckpoint | None:
    if row is None:
        return None
    origin, tree_size, root_hash, note, updated_at = row
    return StoredCheckpoint(origin, tree_size, bytes(root_hash), bytes(note), updated_at)


def _insert_records(
    connection: sqlite3.Connection, table: str, origin: str, records: tuple[Record, ...]
) -> tuple[int, ...]:
    inserted: list[int] = []
    for record in records:
        if record.origin != origin:
            raise StorageError("decision appends a record of another origin")
        cursor = connection.execute(
            _INSERT_RECORD[table],
            (record.origin, record.kind, record.fingerprint, record.document, record.recorded_at),
        )
        if cursor.rowcount == 1 and cursor.lastrowid is not None:
            inserted.append(cursor.lastrowid)
    return tuple(inserted)
