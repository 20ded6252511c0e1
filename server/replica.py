"""Reads from a PostgreSQL streaming replica, writes and security decisions on the primary.

:class:`ReplicaStorage` opens a hot standby without migrating it (a standby is read-only; it
checks that the replicated schema is the version this code reads). :class:`ReplicaRoutedStorage`
is the storage a cluster front end (:mod:`server.cluster`) uses when ``replica_url`` is set:

=================================================  ==========================================
what                                               where
=================================================  ==========================================
state row (the served checkpoint), tiles, entries  replica; what the replica lacks yet (an entry
leaf-hash / idempotency index, lookups, history    committed a moment ago) is asked of the
cosigned checkpoint                                primary, so a read is never wrong, only
                                                   sometimes served by the primary
commit, cosigned checkpoint and metadata writes    primary
principals (authentication, revocation)            primary: a revocation takes effect at once
=================================================  ==========================================

The served checkpoint is the replica's own state row: the replica applies each commit
(state row, entries, tiles) as one transaction, so a checkpoint read there always has its tiles
there too (C2SP tlog-tiles readers never see a checkpoint they cannot verify).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from server.storage.base import (
    Batch,
    LogState,
    LookupHit,
    Principal,
    PrincipalKey,
    StorageError,
    StorageUnavailable,
    TileKey,
)
from server.storage.postgres import SCHEMA_VERSION, PostgresStorage

__all__ = ["ReplicaRoutedStorage", "ReplicaStorage"]


class ReplicaStorage(PostgresStorage):
    """A :class:`PostgresStorage` on a hot standby: opening checks the schema, never changes it.

    Raises ``StorageUnavailable`` from :meth:`open` while the standby has not yet replayed the
    primary's schema (retry), ``StorageError`` when the schema version differs from this code's.
    """

    @staticmethod
    async def _migrate(conn: Any) -> None:
        exists = await conn.fetchval("SELECT to_regclass('schema_version') IS NOT NULL")
        if not exists:
            raise StorageUnavailable("the replica has no Etch schema yet (not caught up)")
        version = await conn.fetchval("SELECT version FROM schema_version WHERE id = 1")
        if version is None:
            raise StorageUnavailable("the replica has no Etch schema yet (not caught up)")
        if int(version) != SCHEMA_VERSION:
            raise StorageError(
                f"the replica's schema version {version} is not this code's {SCHEMA_VERSION}"
            )


class ReplicaRoutedStorage:
    """Storage and OAuth storage that read from a replica and write to the primary.

    Implements :class:`server.storage.base.Storage` and :class:`server.storage.base.OAuthStorage`
    (see the module docstring for the routing). Every method may raise what the backends raise.
    """

    def __init__(self, primary: PostgresStorage, replica: PostgresStorage) -> None:
        self.primary = primary
        self.replica = replica

    async def open(self) -> None:
        """Open both (the primary first, so a fresh database gets its schema)."""
        await self.primary.open()
        await self.replica.open()

    async def close(self) -> None:
        """Close both."""
        try:
            await self.replica.close()
        finally:
            await self.primary.close()

    async def load_state(self) -> LogState | None:
        """Return the replica's state row (what it can serve)."""
        return await self.replica.load_state()

    async def commit(self, previous: bytes | None, batch: Batch) -> None:
        """Commit on the primary (see :meth:`server.storage.base.Storage.commit`)."""
        await self.primary.commit(previous, batch)

    async def find_leaf_hashes(self, leaf_hashes: Sequence[bytes]) -> dict[bytes, int]:
        """Find leaf hashes on the replica, then the ones it lacks on the primary."""
        found = await self.replica.find_leaf_hashes(leaf_hashes)
        missing = [h for h in leaf_hashes if h not in found]
        if missing:
            found.update(await self.primary.find_leaf_hashes(missing))
        return found

    async def find_idempotency_keys(self, keys: Sequence[str]) -> dict[str, int]:
        """Find idempotency keys on the replica, then the ones it lacks on the primary."""
        found = await self.replica.find_idempotency_keys(keys)
        missing = [k for k in keys if k not in found]
        if missing:
            found.update(await self.primary.find_idempotency_keys(missing))
        return found

    async def read_tiles(self, coords: Sequence[TileKey]) -> dict[TileKey, bytes]:
        """Read tiles on the replica, then the ones it lacks on the primary."""
        found = await self.replica.read_tiles(coords)
        missing = [c for c in coords if c not in found]
        if missing:
            found.update(await self.primary.read_tiles(missing))
        return found

    async def read_entries(self, start: int, end: int) -> list[bytes]:
        """Read entries on the replica, the rest of the range on the primary."""
        entries = await self.replica.read_entries(start, end)
        if start + len(entries) < end:
            entries += await self.primary.read_entries(start + len(entries), end)
        return entries

    async def read_entry_meta(self, index: int) -> tuple[bytes, int] | None:
        """Read an entry on the replica, else on the primary."""
        found = await self.replica.read_entry_meta(index)
        return found if found is not None else await self.primary.read_entry_meta(index)

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
        """Look up on the replica (it may lag the primary by its replay delay)."""
        return await self.replica.lookup(
            kind, value, after=after, limit=limit, since_ms=since_ms, until_ms=until_ms
        )

    async def checkpoint_history(self, *, after_size: int = -1, limit: int = 100) -> list[bytes]:
        """Read the checkpoint history on the replica."""
        return await self.replica.checkpoint_history(after_size=after_size, limit=limit)

    async def put_cosigned_checkpoint(self, tree_size: int, note: bytes) -> None:
        """Store a cosigned checkpoint on the primary."""
        await self.primary.put_cosigned_checkpoint(tree_size, note)

    async def latest_cosigned_checkpoint(self) -> bytes | None:
        """Read the latest cosigned checkpoint on the replica."""
        return await self.replica.latest_cosigned_checkpoint()

    async def get_meta(self, key: str) -> bytes | None:
        """Read metadata on the primary (small, and written there)."""
        return await self.primary.get_meta(key)

    async def put_meta(self, key: str, value: bytes) -> None:
        """Write metadata on the primary."""
        await self.primary.put_meta(key, value)

    # -- OAuthStorage: principals on the primary, lookups on the replica -------------------

    async def add_principal(self, principal: Principal) -> None:
        """Add a principal on the primary."""
        await self.primary.add_principal(principal)

    async def add_principal_key(self, role: str, name: str, key: PrincipalKey) -> None:
        """Add a principal key on the primary."""
        await self.primary.add_principal_key(role, name, key)

    async def get_principal(self, role: str, name: str) -> Principal | None:
        """Read a principal on the primary."""
        return await self.primary.get_principal(role, name)

    async def find_principal(self, credential_hash: bytes) -> Principal | None:
        """Find a principal by credential on the primary (revocations count at once)."""
        return await self.primary.find_principal(credential_hash)

    async def list_principals(self, role: str) -> list[Principal]:
        """List principals on the primary."""
        return await self.primary.list_principals(role)

    async def set_principal_status(self, role: str, name: str, status: str) -> bool:
        """Set a principal's status on the primary."""
        return await self.primary.set_principal_status(role, name, status)

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
        """Look up entries with their contents on the replica."""
        return await self.replica.lookup_entries(
            kind, value, after=after, limit=limit, since_ms=since_ms, until_ms=until_ms
        )
