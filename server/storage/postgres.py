"""PostgreSQL storage backend through an ``asyncpg`` pool, for production and scale.

Schema: created or migrated by :meth:`PostgresStorage.open` in one transaction under a
transaction-scoped advisory lock, so several processes may open one database at once. The
version lives in ``schema_version``.

Commit: one transaction that first compare-and-swaps the single ``state`` row
(``UPDATE ... WHERE checkpoint IS NOT DISTINCT FROM $previous``). A concurrent writer blocks on
that row until the first one ends and then finds the checkpoint changed, so exactly one of them
wins. Then entries, leaf hashes, idempotency keys and lookup keys go in with one binary ``COPY``
each (whatever the batch size), and the tiles as one ``INSERT ... SELECT FROM unnest(...)``
upsert that refuses to change stored hashes. Durable on return with the server's default
``synchronous_commit = on``.

The index tables carry no foreign keys to ``entries``: their rows are written only by the
commit, in the transaction that writes the entries, and checking each row by trigger would
double the cost of a commit. Uniqueness is enforced by primary keys.

Failures: driver and server errors are mapped onto :mod:`server.storage.base`: lost connections,
a server that is down, starting or shutting down, lack of resources (disk full, too many
connections), serialization failures, read-only servers and timeouts become
:class:`StorageUnavailable`; constraint violations :class:`IntegrityError`; everything else
:class:`StorageError`. When a connection turns out to be dead, every idle connection of the pool
is expired (a restarted server has dropped them all) and the operation is retried once on a new
connection; a commit may be retried because it is idempotent (see
:meth:`server.storage.base.Storage.commit`). The pool reconnects by itself once the server is back.

The pool skips asyncpg's per-release session reset (``RESET ALL``, ``UNLISTEN``, advisory
unlock), one round trip per operation: this backend never changes session state and takes only
transaction-scoped advisory locks; an open transaction is still rolled back on release.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg

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

__all__ = ["SCHEMA_VERSION", "PostgresStorage"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_SCHEMA_LOCK = 0x4554_4348_0000_0001
"""Key of the advisory lock held while the schema is created or migrated ("ETCH", 1)."""

_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # Version 0 -> 1: the initial schema.
    (
        """CREATE TABLE state (
            id smallint PRIMARY KEY CHECK (id = 1),
            checkpoint bytea,
            tree_size bigint NOT NULL CHECK (tree_size >= 0),
            compact_range bytea NOT NULL
        )""",
        "INSERT INTO state (id, checkpoint, tree_size, compact_range) VALUES (1, NULL, 0, '')",
        """CREATE TABLE entries (
            leaf_index bigint PRIMARY KEY CHECK (leaf_index >= 0),
            data bytea NOT NULL,
            log_time bigint NOT NULL
        )""",
        """CREATE TABLE leaf_hashes (
            leaf_hash bytea PRIMARY KEY CHECK (length(leaf_hash) = 32),
            leaf_index bigint NOT NULL
        )""",
        """CREATE TABLE idempotency_keys (
            idempotency_key bytea PRIMARY KEY,
            leaf_index bigint NOT NULL
        )""",
        """CREATE TABLE lookup_keys (
            kind bytea NOT NULL,
            value bytea NOT NULL,
            leaf_index bigint NOT NULL,
            log_time bigint NOT NULL,
            PRIMARY KEY (kind, value, leaf_index)
        )""",
        """CREATE TABLE tiles (
            level smallint NOT NULL,
            tile_index bigint NOT NULL CHECK (tile_index >= 0),
            data bytea NOT NULL,
            PRIMARY KEY (level, tile_index)
        )""",
        # Hashes do not compress: store tiles out of line without trying.
        "ALTER TABLE tiles ALTER COLUMN data SET STORAGE EXTERNAL",
        """CREATE TABLE checkpoints (
            tree_size bigint PRIMARY KEY CHECK (tree_size >= 0),
            note bytea NOT NULL
        )""",
        """CREATE TABLE cosigned_checkpoint (
            id smallint PRIMARY KEY CHECK (id = 1),
            tree_size bigint NOT NULL,
            note bytea NOT NULL
        )""",
        """CREATE TABLE meta (
            key bytea PRIMARY KEY,
            value bytea NOT NULL
        )""",
    ),
    # Version 1 -> 2: principals (submitters, readers) and their public keys.
    (
        """CREATE TABLE principals (
            role text NOT NULL,
            name text NOT NULL,
            credential_hash bytea NOT NULL UNIQUE CHECK (length(credential_hash) = 32),
            status text NOT NULL CHECK (status IN ('active', 'revoked')),
            created_ms bigint NOT NULL,
            PRIMARY KEY (role, name)
        )""",
        """CREATE TABLE principal_keys (
            role text NOT NULL,
            name text NOT NULL,
            key_id text NOT NULL,
            usage text NOT NULL,
            algorithm text NOT NULL,
            public_key bytea NOT NULL,
            created_ms bigint NOT NULL,
            not_after_ms bigint,
            issuer text,
            PRIMARY KEY (role, name, key_id),
            FOREIGN KEY (role, name) REFERENCES principals (role, name)
        )""",
    ),
)
"""``_MIGRATIONS[v]`` holds the statements that take the schema from version ``v`` to ``v + 1``."""

SCHEMA_VERSION = len(_MIGRATIONS)
"""The schema version this code creates and reads."""

_SWAP_STATE = """
    UPDATE state SET checkpoint = $1, tree_size = $2, compact_range = $3
    WHERE id = 1 AND checkpoint IS NOT DISTINCT FROM $4::bytea AND tree_size = $5
    RETURNING tree_size
"""
_UPSERT_TILES = """
    INSERT INTO tiles AS t (level, tile_index, data)
    SELECT * FROM unnest($1::smallint[], $2::bigint[], $3::bytea[])
    ON CONFLICT (level, tile_index) DO UPDATE SET data = excluded.data
    WHERE length(excluded.data) >= length(t.data)
      AND substr(excluded.data, 1, length(t.data)) = t.data
"""
"""Store each tile's newest width; a row is updated only if its stored hashes stay a prefix."""

_INSERT_CHECKPOINT = """
    INSERT INTO checkpoints (tree_size, note) VALUES ($1, $2) ON CONFLICT (tree_size) DO NOTHING
"""

_INSERT_KEY = """
    INSERT INTO principal_keys (role, name, key_id, usage, algorithm, public_key, created_ms,
                                not_after_ms, issuer)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
"""
_SELECT_PRINCIPALS = {
    "name": "SELECT role, name, credential_hash, status, created_ms FROM principals"
    " WHERE role = $1 AND name = $2",
    "credential": "SELECT role, name, credential_hash, status, created_ms FROM principals"
    " WHERE credential_hash = $1",
    "role": "SELECT role, name, credential_hash, status, created_ms FROM principals"
    " WHERE role = $1 ORDER BY name",
}
"""The principal queries, by what they select on."""

_SELECT_KEYS = """
    SELECT role, name, key_id, usage, algorithm, public_key, created_ms, not_after_ms, issuer
    FROM principal_keys WHERE (role, name) IN (SELECT * FROM unnest($1::text[], $2::text[]))
    ORDER BY created_ms, key_id
"""

_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,  # connection closed, pool closing
    asyncpg.PostgresConnectionError,  # class 08: connection lost or refused
    asyncpg.OperatorInterventionError,  # class 57: shutdown, starting up, statement timeout
    asyncpg.InsufficientResourcesError,  # class 53: disk full, out of memory, too many connections
    asyncpg.TransactionRollbackError,  # class 40: serialization failure, deadlock
    asyncpg.ReadOnlySQLTransactionError,  # connected to a standby
    asyncpg.PostgresIOError,  # 58030: I/O error on the server
)
"""Errors that go away without a code change: the caller answers 503 and retries."""

_CONNECTION_LOST: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
)
"""Errors after which pooled connections are likely dead: expire them and retry once."""


def _map_error(exc: Exception) -> StorageError | None:
    """Return the storage error for a driver or server error, ``None`` for anything else."""
    if isinstance(exc, StorageError):
        return exc
    name = type(exc).__name__
    if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
        return IntegrityError(f"constraint violated ({name}): {exc}")
    if isinstance(exc, _UNAVAILABLE):
        return StorageUnavailable(f"PostgreSQL unavailable ({name}): {exc}")
    if isinstance(exc, asyncpg.PostgresError | asyncpg.exceptions.InternalClientError):
        return StorageError(f"PostgreSQL error ({name}): {exc}")
    return None


def _row_count(status: str) -> int:
    """Return the row count of a command status such as ``"INSERT 0 5"``."""
    return int(status.rsplit(" ", 1)[-1])


async def _keep_session(connection: Any) -> None:
    """Pool reset hook: nothing to reset, this backend never changes session state."""


class PostgresStorage:
    """The :class:`server.storage.base.Storage` of one PostgreSQL database (see module docstring).

    ``dsn`` is a libpq-style URL (``postgresql://user@host/db``, ``?host=/socket/dir`` for a
    Unix socket); ``min_size``/``max_size`` bound the pool; ``connect_timeout`` bounds opening a
    connection and ``command_timeout`` each statement, both in seconds (exceeding them is
    :class:`StorageUnavailable`).
    """

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = 10.0,
        command_timeout: float = 30.0,
    ) -> None:
        if not 1 <= min_size <= max_size:
            raise ValueError(f"bad pool size bounds {min_size}..{max_size}")
        self._dsn = dsn
        self._min_size = min_size
        self._max_size = max_size
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._pool: Any = None

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the pool, then create or migrate the schema under an advisory lock.

        Does nothing if already open. Raises ``StorageUnavailable`` if the server cannot be
        reached, ``StorageError`` if the schema is newer than this code or the DSN is refused.
        """
        if self._pool is not None:
            return
        try:
            pool = await asyncpg.create_pool(
                self._dsn,
                min_size=self._min_size,
                max_size=self._max_size,
                timeout=self._connect_timeout,
                command_timeout=self._command_timeout,
                reset=_keep_session,
            )
        except Exception as exc:
            mapped = _map_error(exc)
            if mapped is None:
                raise StorageError(f"cannot open PostgreSQL pool ({type(exc).__name__})") from exc
            raise mapped from exc
        self._pool = pool
        try:
            await self._run(self._migrate)
        except BaseException:
            self._pool = None
            pool.terminate()
            raise

    @staticmethod
    async def _migrate(conn: Any) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                " id smallint PRIMARY KEY CHECK (id = 1), version integer NOT NULL)"
            )
            found = await conn.fetchval("SELECT version FROM schema_version WHERE id = 1")
            version = 0 if found is None else int(found)
            if version > SCHEMA_VERSION:
                raise StorageError(
                    f"database schema version {version} is newer than this code ({SCHEMA_VERSION})"
                )
            for statements in _MIGRATIONS[version:]:
                for statement in statements:
                    await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_version (id, version) VALUES (1, $1)"
                " ON CONFLICT (id) DO UPDATE SET version = excluded.version",
                SCHEMA_VERSION,
            )

    async def close(self) -> None:
        """Close the pool, waiting up to ``command_timeout`` for busy connections; idempotent."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), self._command_timeout)
        except (Exception, asyncio.CancelledError):
            pool.terminate()
            raise

    async def _run(self, op: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``op(connection)`` on a pooled connection, mapping errors; retry once if lost.

        ``op`` must be safe to run twice (reads, upserts, the idempotent commit).
        """
        for attempt in (1, 2):
            pool = self._pool
            if pool is None:
                raise StorageError("storage is not open")
            try:
                async with pool.acquire(timeout=self._command_timeout) as conn:
                    return await op(conn)
            except Exception as exc:
                mapped = _map_error(exc)
                if mapped is None or mapped is exc:
                    raise
                if isinstance(exc, _CONNECTION_LOST):
                    await self._expire(pool)
                    if attempt == 1:
                        log.info("PostgreSQL connection lost (%s); retrying", type(exc).__name__)
                        continue
                raise mapped from exc
        raise AssertionError("unreachable")  # the loop returns or raises

    @staticmethod
    async def _expire(pool: Any) -> None:
        """Mark every pooled connection stale so the next acquire reconnects."""
        try:
            await pool.expire_connections()
        except Exception:  # an expired pool is only an optimization
            log.debug("could not expire pooled connections", exc_info=True)

    # -- the sequencer's state and commit --------------------------------------------------

    async def load_state(self) -> LogState | None:
        """Return the latest checkpoint and compact range, or ``None`` before the first commit."""

        async def load(conn: Any) -> LogState | None:
            row = await conn.fetchrow(
                "SELECT checkpoint, tree_size, compact_range FROM state WHERE id = 1"
            )
            if row is None or row["checkpoint"] is None:
                return None
            return LogState(
                checkpoint=bytes(row["checkpoint"]),
                tree_size=int(row["tree_size"]),
                compact_range=bytes(row["compact_range"]),
            )

        return await self._run(load)

    async def commit(self, previous: bytes | None, batch: Batch) -> None:
        """Store a batch in one transaction, compare-and-swapping the latest checkpoint.

        See :meth:`server.storage.base.Storage.commit` for the contract. Raises
        ``CheckpointConflict``, ``IntegrityError`` (nothing stored) or ``StorageUnavailable``.
        """
        start = check_batch(batch)
        entries = batch.entries
        rows: list[tuple[str, tuple[str, ...], list[tuple[object, ...]]]] = [
            (
                "entries",
                ("leaf_index", "data", "log_time"),
                [(e.index, e.data, e.log_time) for e in entries],
            ),
            ("leaf_hashes", ("leaf_hash", "leaf_index"), [(e.leaf_hash, e.index) for e in entries]),
            (
                "idempotency_keys",
                ("idempotency_key", "leaf_index"),
                [
                    (encode_key(e.idempotency_key), e.index)
                    for e in entries
                    if e.idempotency_key is not None
                ],
            ),
            (
                "lookup_keys",
                ("kind", "value", "leaf_index", "log_time"),
                [
                    (kind, value, e.index, e.log_time)
                    for e in entries
                    for kind, value in unique_lookup_keys(e)
                ],
            ),
        ]
        tiles = list(batch.tiles.items())

        async def commit(conn: Any) -> None:
            async with conn.transaction():
                fault_point(Step.SWAP_CHECKPOINT, Phase.BEFORE, conn)
                swapped = await conn.fetchval(
                    _SWAP_STATE,
                    batch.checkpoint,
                    batch.tree_size,
                    batch.compact_range,
                    previous,
                    start,
                )
                if swapped is None:
                    await self._explain_failed_swap(conn, previous, batch, start)
                else:
                    fault_point(Step.SWAP_CHECKPOINT, Phase.AFTER, conn)
                    await store(conn)
                fault_point(Step.COMMIT, Phase.BEFORE, conn)
            fault_point(Step.COMMIT, Phase.AFTER, conn)

        async def store(conn: Any) -> None:
            (table, columns, records), *index_rows = rows
            fault_point(Step.STORE_ENTRIES, Phase.BEFORE, conn)
            if records:
                await conn.copy_records_to_table(table, columns=columns, records=records)
            fault_point(Step.STORE_ENTRIES, Phase.AFTER, conn)
            fault_point(Step.STORE_HASHES_AND_TILES, Phase.BEFORE, conn)
            for table, columns, records in index_rows:
                if records:
                    await conn.copy_records_to_table(table, columns=columns, records=records)
            if tiles:
                status = await conn.execute(
                    _UPSERT_TILES,
                    [level for (level, _), _ in tiles],
                    [index for (_, index), _ in tiles],
                    [data for _, data in tiles],
                )
                if _row_count(status) != len(tiles):
                    raise IntegrityError("a tile update would change stored hashes")
            fault_point(Step.STORE_HASHES_AND_TILES, Phase.AFTER, conn)
            await conn.execute(_INSERT_CHECKPOINT, batch.tree_size, batch.checkpoint)

        await self._run(commit)

    @staticmethod
    async def _explain_failed_swap(
        conn: Any, previous: bytes | None, batch: Batch, start: int
    ) -> None:
        """Raise why the state row was not swapped, or return if this batch is already stored."""
        row = await conn.fetchrow("SELECT checkpoint, tree_size FROM state WHERE id = 1")
        stored = None if row["checkpoint"] is None else bytes(row["checkpoint"])
        size = int(row["tree_size"])
        if stored != previous:
            if stored == batch.checkpoint and size == batch.tree_size:
                return  # this very batch is already committed (a retried commit)
            raise CheckpointConflict("the stored checkpoint is not the previous one", stored)
        raise IntegrityError(f"batch starts at index {start}, stored tree size is {size}")

    # -- reads -----------------------------------------------------------------------------

    async def find_leaf_hashes(self, leaf_hashes: Sequence[bytes]) -> dict[bytes, int]:
        """Return the index of each given leaf hash that is stored (one indexed query)."""
        wanted = list(dict.fromkeys(leaf_hashes))
        if not wanted:
            return {}

        async def find(conn: Any) -> dict[bytes, int]:
            rows = await conn.fetch(
                "SELECT leaf_hash, leaf_index FROM leaf_hashes WHERE leaf_hash = ANY($1::bytea[])",
                wanted,
            )
            return {bytes(r["leaf_hash"]): int(r["leaf_index"]) for r in rows}

        return await self._run(find)

    async def find_idempotency_keys(self, keys: Sequence[str]) -> dict[str, int]:
        """Return the index of each given idempotency key that is stored (one indexed query)."""
        encoded: dict[bytes, str] = {}
        for key in keys:
            try:
                encoded[encode_key(key)] = key
            except IntegrityError:  # unencodable keys are never stored
                continue
        if not encoded:
            return {}

        async def find(conn: Any) -> dict[str, int]:
            rows = await conn.fetch(
                "SELECT idempotency_key, leaf_index FROM idempotency_keys"
                " WHERE idempotency_key = ANY($1::bytea[])",
                list(encoded),
            )
            return {encoded[bytes(r["idempotency_key"])]: int(r["leaf_index"]) for r in rows}

        return await self._run(find)

    async def read_tiles(self, coords: Sequence[TileKey]) -> dict[TileKey, bytes]:
        """Return the stored contents of each given tile (one query on the primary key)."""
        wanted = [
            (level, index)
            for level, index in dict.fromkeys(coords)
            if MIN_TILE_LEVEL <= level <= MAX_TILE_LEVEL and fits_int64(index)
        ]
        if not wanted:
            return {}

        async def read(conn: Any) -> dict[TileKey, bytes]:
            if len(wanted) == 1:
                data = await conn.fetchval(
                    "SELECT data FROM tiles WHERE level = $1 AND tile_index = $2", *wanted[0]
                )
                return {} if data is None else {wanted[0]: bytes(data)}
            rows = await conn.fetch(
                "SELECT t.level, t.tile_index, t.data"
                " FROM unnest($1::smallint[], $2::bigint[]) AS c (level, tile_index)"
                " JOIN tiles AS t ON t.level = c.level AND t.tile_index = c.tile_index",
                [level for level, _ in wanted],
                [index for _, index in wanted],
            )
            return {(int(r["level"]), int(r["tile_index"])): bytes(r["data"]) for r in rows}

        return await self._run(read)

    async def read_entries(self, start: int, end: int) -> list[bytes]:
        """Return entries ``start`` to ``end - 1`` in order, stopping at the first missing one.

        Raises ``ValueError`` unless ``0 <= start <= end``.
        """
        check_read_range(start, end)
        low, high = clamp64(start), clamp64(end)
        if low >= high:
            return []

        async def read(conn: Any) -> list[bytes]:
            rows = await conn.fetch(
                "SELECT leaf_index, data FROM entries"
                " WHERE leaf_index >= $1 AND leaf_index < $2 ORDER BY leaf_index",
                low,
                high,
            )
            return leading_entries(rows, low)

        return await self._run(read)

    async def read_entry_meta(self, index: int) -> tuple[bytes, int] | None:
        """Return ``(data, log_time)`` of the entry at ``index``, or ``None``."""
        if not fits_int64(index):
            return None

        async def read(conn: Any) -> tuple[bytes, int] | None:
            row = await conn.fetchrow(
                "SELECT data, log_time FROM entries WHERE leaf_index = $1", index
            )
            return None if row is None else (bytes(row["data"]), int(row["log_time"]))

        return await self._run(read)

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
            kind_key, value_key = encode_key(kind), encode_key(value)
        except IntegrityError:
            return []

        async def find(conn: Any) -> list[int]:
            rows = await conn.fetch(
                "SELECT leaf_index FROM lookup_keys"
                " WHERE kind = $1 AND value = $2 AND leaf_index > $3"
                " AND log_time >= $4 AND log_time < $5"
                " ORDER BY leaf_index LIMIT $6",
                kind_key,
                value_key,
                after,
                low,
                high,
                limit,
            )
            return [int(r["leaf_index"]) for r in rows]

        return await self._run(find)

    async def checkpoint_history(self, *, after_size: int = -1, limit: int = 100) -> list[bytes]:
        """Return up to ``limit`` signed checkpoints with tree size ``> after_size``, by size.

        Raises ``ValueError`` if ``limit < 1``.
        """
        after, count = clamp64(after_size), check_limit(limit)

        async def read(conn: Any) -> list[bytes]:
            rows = await conn.fetch(
                "SELECT note FROM checkpoints WHERE tree_size > $1 ORDER BY tree_size LIMIT $2",
                after,
                count,
            )
            return [bytes(r["note"]) for r in rows]

        return await self._run(read)

    # -- cosigned checkpoint and metadata --------------------------------------------------

    async def put_cosigned_checkpoint(self, tree_size: int, note: bytes) -> None:
        """Store the latest cosigned checkpoint unless a larger tree size is already stored.

        Raises ``ValueError`` if ``tree_size`` is negative or beyond 64 bits.
        """
        if not fits_int64(tree_size):
            raise ValueError(f"bad tree size {tree_size}")

        async def put(conn: Any) -> None:
            await conn.execute(
                "INSERT INTO cosigned_checkpoint AS c (id, tree_size, note) VALUES (1, $1, $2)"
                " ON CONFLICT (id) DO UPDATE SET tree_size = excluded.tree_size,"
                " note = excluded.note WHERE excluded.tree_size >= c.tree_size",
                tree_size,
                note,
            )

        await self._run(put)

    async def latest_cosigned_checkpoint(self) -> bytes | None:
        """Return the latest cosigned checkpoint note, or ``None``."""

        async def read(conn: Any) -> bytes | None:
            note = await conn.fetchval("SELECT note FROM cosigned_checkpoint WHERE id = 1")
            return None if note is None else bytes(note)

        return await self._run(read)

    async def get_meta(self, key: str) -> bytes | None:
        """Return the metadata value stored under ``key``, or ``None``."""
        try:
            encoded = encode_key(key)
        except IntegrityError:
            return None

        async def read(conn: Any) -> bytes | None:
            value = await conn.fetchval("SELECT value FROM meta WHERE key = $1", encoded)
            return None if value is None else bytes(value)

        return await self._run(read)

    async def put_meta(self, key: str, value: bytes) -> None:
        """Set the metadata value under ``key``; raises ``IntegrityError`` if not encodable."""
        encoded = encode_key(key)

        async def put(conn: Any) -> None:
            await conn.execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                encoded,
                value,
            )

        await self._run(put)

    # -- principals and entry lookups (OAuthStorage) ---------------------------------------

    async def add_principal(self, principal: Principal) -> None:
        """Store a new principal and its keys in one transaction.

        Raises ``IntegrityError`` (nothing stored) for a taken name or credential hash, or an
        invalid field.
        """
        check_principal(principal)

        async def add(conn: Any) -> None:
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO principals (role, name, credential_hash, status, created_ms)"
                    " VALUES ($1, $2, $3, $4, $5)",
                    principal.role,
                    principal.name,
                    principal.credential_hash,
                    principal.status,
                    principal.created_ms,
                )
                for key in principal.keys:
                    await _insert_key(conn, principal.role, principal.name, key)

        await self._run(add)

    async def add_principal_key(self, role: str, name: str, key: PrincipalKey) -> None:
        """Add a key to a stored principal.

        Raises ``IntegrityError`` for an unknown principal, a taken key id or an invalid key.
        """
        check_principal_key(key)

        async def add(conn: Any) -> None:
            async with conn.transaction():
                found = await conn.fetchval(
                    "SELECT 1 FROM principals WHERE role = $1 AND name = $2", role, name
                )
                if found is None:
                    raise IntegrityError(f"no {role} named {name}")
                await _insert_key(conn, role, name, key)

        await self._run(add)

    async def _principals(self, by: str, *params: object) -> list[Principal]:
        """Return the principals of query ``_SELECT_PRINCIPALS[by]``, each with its keys."""

        async def read(conn: Any) -> list[Principal]:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                rows = await conn.fetch(_SELECT_PRINCIPALS[by], *params)
                if not rows:
                    return []
                key_rows = await conn.fetch(
                    _SELECT_KEYS, [r["role"] for r in rows], [r["name"] for r in rows]
                )
            keys: dict[tuple[str, str], list[PrincipalKey]] = {}
            for k in key_rows:
                keys.setdefault((k["role"], k["name"]), []).append(
                    PrincipalKey(
                        k["key_id"],
                        k["usage"],
                        k["algorithm"],
                        bytes(k["public_key"]),
                        int(k["created_ms"]),
                        None if k["not_after_ms"] is None else int(k["not_after_ms"]),
                        k["issuer"],
                    )
                )
            return [
                Principal(
                    r["role"],
                    r["name"],
                    bytes(r["credential_hash"]),
                    r["status"],
                    int(r["created_ms"]),
                    tuple(keys.get((r["role"], r["name"]), ())),
                )
                for r in rows
            ]

        return await self._run(read)

    async def get_principal(self, role: str, name: str) -> Principal | None:
        """Return the principal with this role and name, keys included, or ``None``."""
        found = await self._principals("name", role, name)
        return found[0] if found else None

    async def find_principal(self, credential_hash: bytes) -> Principal | None:
        """Return the principal whose credential hash this is, or ``None``."""
        found = await self._principals("credential", credential_hash)
        return found[0] if found else None

    async def list_principals(self, role: str) -> list[Principal]:
        """Return every principal of ``role``, keys included, ordered by name."""
        return await self._principals("role", role)

    async def set_principal_status(self, role: str, name: str, status: str) -> bool:
        """Set a principal's status; return whether it exists. Raises ``IntegrityError``."""
        if status not in STATUSES:
            raise IntegrityError("status must be active or revoked")

        async def update(conn: Any) -> bool:
            result = await conn.execute(
                "UPDATE principals SET status = $1 WHERE role = $2 AND name = $3",
                status,
                role,
                name,
            )
            return _row_count(result) == 1

        return await self._run(update)

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

        Raises ``ValueError`` if ``limit < 1``.
        """
        after, limit, low, high = lookup_bounds(after, limit, since_ms, until_ms)
        try:
            kind_key, value_key = encode_key(kind), encode_key(value)
        except IntegrityError:
            return []

        async def find(conn: Any) -> list[LookupHit]:
            rows = await conn.fetch(
                "SELECT k.leaf_index, k.log_time, e.data FROM lookup_keys AS k"
                " JOIN entries AS e ON e.leaf_index = k.leaf_index"
                " WHERE k.kind = $1 AND k.value = $2 AND k.leaf_index > $3"
                " AND k.log_time >= $4 AND k.log_time < $5"
                " ORDER BY k.leaf_index LIMIT $6",
                kind_key,
                value_key,
                after,
                low,
                high,
                limit,
            )
            return [
                LookupHit(int(r["leaf_index"]), int(r["log_time"]), bytes(r["data"])) for r in rows
            ]

        return await self._run(find)


async def _insert_key(conn: Any, role: str, name: str, key: PrincipalKey) -> None:
    """Insert one principal key (inside the caller's transaction)."""
    await conn.execute(
        _INSERT_KEY,
        role,
        name,
        key.key_id,
        key.usage,
        key.algorithm,
        key.public_key,
        key.created_ms,
        key.not_after_ms,
        key.issuer,
    )
