"""PostgreSQL backend of the witness storage, through :mod:`asyncpg`.

Tables are prefixed ``witness_`` so a witness can share a database server with a log. Every
:meth:`PostgresWitnessStorage.update` runs in one transaction that first makes sure the origin
has a row in ``witness_checkpoints`` (a placeholder with NULL columns before the first
cosignature) and then locks it with ``SELECT ... FOR UPDATE``: concurrent updates of one origin
queue on that row lock, updates of different origins run in parallel. Commits are durable with
PostgreSQL's default ``synchronous_commit = on``.

Triggers make the record tables append-only and forbid lowering a stored tree size. Schema
creation is serialized across processes with a transaction-scoped advisory lock.

Driver and connection errors become :class:`~witness.errors.StorageUnavailableError`
(connection lost, server shutting down, too many connections, disk full) or
:class:`~witness.errors.StorageError` (anything else). The connection URL may carry a password:
it never appears in an error message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import asyncpg

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

__all__ = ["SCHEMA_VERSION", "PostgresWitnessStorage"]

T = TypeVar("T")

SCHEMA_VERSION = 1
"""Value of ``witness_schema.version`` for the current schema."""

_SCHEMA_LOCK = 0x77_69_74_6E  # "witn": the advisory lock key for schema creation

_SCHEMA = """
CREATE TABLE IF NOT EXISTS witness_schema (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS witness_checkpoints (
    origin TEXT PRIMARY KEY,
    tree_size BIGINT CHECK (tree_size >= 0),
    root_hash BYTEA CHECK (octet_length(root_hash) = 32),
    note BYTEA,
    updated_at BIGINT,
    CHECK ((tree_size IS NULL) = (root_hash IS NULL)
       AND (tree_size IS NULL) = (note IS NULL)
       AND (tree_size IS NULL) = (updated_at IS NULL))
);
CREATE OR REPLACE FUNCTION witness_never_shrink() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.tree_size IS NOT NULL AND (NEW.tree_size IS NULL OR NEW.tree_size < OLD.tree_size) THEN
        RAISE EXCEPTION 'witness tree size must not decrease';
    END IF;
    RETURN NEW;
END $$;
CREATE OR REPLACE FUNCTION witness_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'witness records are append-only';
END $$;
CREATE OR REPLACE TRIGGER witness_checkpoints_never_shrink BEFORE UPDATE ON witness_checkpoints
    FOR EACH ROW EXECUTE FUNCTION witness_never_shrink();
CREATE OR REPLACE TRIGGER witness_checkpoints_never_deleted BEFORE DELETE ON witness_checkpoints
    FOR EACH ROW EXECUTE FUNCTION witness_append_only();
"""

_RECORD_TABLE = """
CREATE TABLE IF NOT EXISTS witness_{table} (
    id BIGSERIAL PRIMARY KEY,
    origin TEXT NOT NULL,
    kind TEXT NOT NULL,
    fingerprint BYTEA NOT NULL UNIQUE CHECK (octet_length(fingerprint) = 32),
    document BYTEA NOT NULL,
    recorded_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS witness_{table}_by_origin ON witness_{table} (origin, id);
CREATE OR REPLACE TRIGGER witness_{table}_append_only BEFORE UPDATE OR DELETE ON witness_{table}
    FOR EACH ROW EXECUTE FUNCTION witness_append_only();
"""

_RECORD_TABLES = {"evidence": "witness_evidence", "refused": "witness_refused"}

_UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53", "57", "58")  # connection, resources, operator, I/O


def _translate(exc: BaseException) -> StorageError:
    sqlstate = getattr(exc, "sqlstate", None)
    name = type(exc).__name__
    if isinstance(sqlstate, str) and sqlstate[:2] in _UNAVAILABLE_SQLSTATE_CLASSES:
        return StorageUnavailableError(f"witness database unavailable ({name}, {sqlstate})")
    if isinstance(exc, OSError | asyncpg.exceptions.InterfaceError | TimeoutError):
        return StorageUnavailableError(f"witness database unavailable ({name})")
    if isinstance(sqlstate, str):
        return StorageError(f"witness database error ({name}, {sqlstate})")
    return StorageError(f"witness database error ({name})")


_LOCK_CHECKPOINT = (
    "SELECT origin, tree_size, root_hash, note, updated_at FROM witness_checkpoints "
    "WHERE origin = $1 FOR UPDATE"
)
_SELECT_CHECKPOINT = (
    "SELECT origin, tree_size, root_hash, note, updated_at FROM witness_checkpoints "
    "WHERE origin = $1"
)
_SELECT_CHECKPOINTS = (
    "SELECT origin, tree_size, root_hash, note, updated_at FROM witness_checkpoints "
    'WHERE tree_size IS NOT NULL ORDER BY origin COLLATE "C"'
)
_GET_EVIDENCE = (
    "SELECT id, origin, kind, fingerprint, document, recorded_at FROM witness_evidence "
    "WHERE id = $1"
)
# Literal queries per record table (no SQL is ever assembled from strings at run time).
_INSERT_RECORD = {
    "witness_evidence": "INSERT INTO witness_evidence "
    "(origin, kind, fingerprint, document, recorded_at) VALUES ($1, $2, $3, $4, $5) "
    "ON CONFLICT (fingerprint) DO NOTHING RETURNING id",
    "witness_refused": "INSERT INTO witness_refused "
    "(origin, kind, fingerprint, document, recorded_at) VALUES ($1, $2, $3, $4, $5) "
    "ON CONFLICT (fingerprint) DO NOTHING RETURNING id",
}
_LIST_RECORDS = {
    "witness_evidence": "SELECT id, origin, kind, fingerprint, document, recorded_at "
    "FROM witness_evidence WHERE id > $1 ORDER BY id LIMIT $2",
    "witness_refused": "SELECT id, origin, kind, fingerprint, document, recorded_at "
    "FROM witness_refused WHERE id > $1 ORDER BY id LIMIT $2",
}
_LIST_ORIGIN_RECORDS = {
    "witness_evidence": "SELECT id, origin, kind, fingerprint, document, recorded_at "
    "FROM witness_evidence WHERE origin = $1 AND id > $2 ORDER BY id LIMIT $3",
    "witness_refused": "SELECT id, origin, kind, fingerprint, document, recorded_at "
    "FROM witness_refused WHERE origin = $1 AND id > $2 ORDER BY id LIMIT $3",
}


class PostgresWitnessStorage:
    """Witness storage in PostgreSQL (see the module docstring). Create with :meth:`open`."""

    def __init__(self, pool: Any) -> None:
        """Wrap an open asyncpg pool whose schema exists; use :meth:`open` instead."""
        self._pool = pool
        self._closed = False

    @classmethod
    async def open(cls, dsn: str, *, max_connections: int = 10) -> PostgresWitnessStorage:
        """Connect to ``dsn`` (``postgresql://...``) and create the schema if needed.

        Raises StorageUnavailableError when the server cannot be reached, StorageError when
        the schema is newer than this code.
        """
        try:
            pool = await asyncpg.create_pool(
                dsn, min_size=1, max_size=max_connections, command_timeout=30
            )
        except Exception as exc:
            raise _translate(exc) from None
        storage = cls(pool)
        try:
            await storage._create_schema()
        except BaseException:
            await storage.close()
            raise
        return storage

    async def _create_schema(self) -> None:
        try:
            async with self._pool.acquire() as connection, connection.transaction():
                await connection.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
                await connection.execute(_SCHEMA)
                for table in _RECORD_TABLES:
                    await connection.execute(_RECORD_TABLE.format(table=table))
                version = await connection.fetchval(
                    "SELECT version FROM witness_schema WHERE id = 1"
                )
                if version is None:
                    await connection.execute(
                        "INSERT INTO witness_schema (id, version) VALUES (1, $1)", SCHEMA_VERSION
                    )
                elif version > SCHEMA_VERSION:
                    raise StorageError(
                        f"witness database schema version {version} is newer than this code "
                        f"({SCHEMA_VERSION})"
                    )
        except StorageError:
            raise
        except Exception as exc:
            raise _translate(exc) from None

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("witness storage is closed")

    # ------------------------------------------------------------------ update

    async def update(self, origin: str, decide: Callable[[LogState], Decision[T]]) -> Applied[T]:
        """Run ``decide`` on the origin's locked state and commit its writes (see protocol)."""
        self._check_open()
        try:
            async with self._pool.acquire() as connection, connection.transaction():
                row = await connection.fetchrow(
                    _LOCK_CHECKPOINT,
                    origin,
                )
                if row is None:
                    await connection.execute(
                        "INSERT INTO witness_checkpoints (origin) VALUES ($1) "
                        "ON CONFLICT (origin) DO NOTHING",
                        origin,
                    )
                    row = await connection.fetchrow(
                        _LOCK_CHECKPOINT,
                        origin,
                    )
                evidence_count = await connection.fetchval(
                    "SELECT count(*) FROM witness_evidence WHERE origin = $1", origin
                )
                state = LogState(origin, _checkpoint_row(row), evidence_count)
                decision = decide(state)
                if decision.checkpoint is not None:
                    check_new_checkpoint(state, decision.checkpoint)
                    stored = decision.checkpoint
                    await connection.execute(
                        "UPDATE witness_checkpoints SET tree_size = $2, root_hash = $3, "
                        "note = $4, updated_at = $5 WHERE origin = $1",
                        stored.origin,
                        stored.tree_size,
                        stored.root_hash,
                        stored.note,
                        stored.updated_at,
                    )
                evidence_ids = await _insert_records(
                    connection, "witness_evidence", origin, decision.evidence
                )
                refused_ids = await _insert_records(
                    connection, "witness_refused", origin, decision.refused
                )
        except StorageError:
            raise
        except (
            asyncpg.exceptions.PostgresError,
            asyncpg.exceptions.InterfaceError,
            OSError,
            TimeoutError,
        ) as exc:
            raise _translate(exc) from None
        return Applied(decision.result, evidence_ids, refused_ids)

    # ------------------------------------------------------------------ reads

    async def _fetch(self, query: str, *args: Any) -> list[Any]:
        self._check_open()
        try:
            async with self._pool.acquire() as connection:
                return list(await connection.fetch(query, *args))
        except Exception as exc:
            raise _translate(exc) from None

    async def latest(self, origin: str) -> StoredCheckpoint | None:
        """Return the origin's latest cosigned checkpoint, or ``None``."""
        rows = await self._fetch(_SELECT_CHECKPOINT, origin)
        return _checkpoint_row(rows[0]) if rows else None

    async def latest_all(self) -> list[StoredCheckpoint]:
        """Return every origin's latest cosigned checkpoint, ordered by origin."""
        rows = await self._fetch(_SELECT_CHECKPOINTS)
        return [checkpoint for row in rows if (checkpoint := _checkpoint_row(row))]

    async def evidence_counts(self) -> dict[str, int]:
        """Return the number of evidence records per origin."""
        rows = await self._fetch("SELECT origin, count(*) FROM witness_evidence GROUP BY origin")
        return {row[0]: row[1] for row in rows}

    async def list_evidence(
        self, origin: str | None = None, *, after: int = 0, limit: int = 100
    ) -> list[StoredRecord]:
        """Return evidence records with ``id > after`` in id order (see the protocol)."""
        return await self._list("witness_evidence", origin, after, limit)

    async def list_refused(
        self, origin: str | None = None, *, after: int = 0, limit: int = 100
    ) -> list[StoredRecord]:
        """Return refused-checkpoint records with ``id > after`` in id order."""
        return await self._list("witness_refused", origin, after, limit)

    async def _list(
        self, table: str, origin: str | None, after: int, limit: int
    ) -> list[StoredRecord]:
        if not 1 <= limit <= 1000:
            raise StorageError("page limit must be in 1..1000")
        if not 0 <= after < 2**63:
            raise StorageError("page cursor out of range")
        if origin is None:
            rows = await self._fetch(_LIST_RECORDS[table], after, limit)
        else:
            rows = await self._fetch(_LIST_ORIGIN_RECORDS[table], origin, after, limit)
        return [_record_row(row) for row in rows]

    async def get_evidence(self, record_id: int) -> StoredRecord | None:
        """Return one evidence record by id, or ``None``."""
        if not 0 < record_id < 2**63:
            return None
        rows = await self._fetch(_GET_EVIDENCE, record_id)
        return _record_row(rows[0]) if rows else None

    async def close(self) -> None:
        """Close the connection pool; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._pool.close()
        except Exception as exc:
            raise _translate(exc) from None


def _checkpoint_row(row: Any) -> StoredCheckpoint | None:
    if row is None or row["tree_size"] is None:
        return None
    return StoredCheckpoint(
        row["origin"],
        row["tree_size"],
        bytes(row["root_hash"]),
        bytes(row["note"]),
        row["updated_at"],
    )


def _record_row(row: Any) -> StoredRecord:
    return StoredRecord(
        row["id"],
        row["origin"],
        row["kind"],
        bytes(row["fingerprint"]),
        bytes(row["document"]),
        row["recorded_at"],
    )


async def _insert_records(
    connection: Any, table: str, origin: str, records: tuple[Record, ...]
) -> tuple[int, ...]:
    inserted: list[int] = []
    for record in records:
        if record.origin != origin:
            raise StorageError("decision appends a record of another origin")
        record_id = await connection.fetchval(
            _INSERT_RECORD[table],
            record.origin,
            record.kind,
            record.fingerprint,
            record.document,
            record.recorded_at,
        )
        if record_id is not None:
            inserted.append(record_id)
    return tuple(inserted)
