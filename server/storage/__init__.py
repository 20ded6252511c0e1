"""Storage backends of the log behind one interface (ARCHITECTURE.md "Storage").

:func:`open_storage` picks the backend from a URL; the interface, values and errors are in
:mod:`server.storage.base`.
"""

from __future__ import annotations

from server.storage.base import (
    Batch,
    CheckpointConflict,
    IntegrityError,
    LogState,
    LookupHit,
    NewEntry,
    OAuthStorage,
    Principal,
    PrincipalKey,
    Storage,
    StorageError,
    StorageUnavailable,
)
from server.storage.postgres import PostgresStorage
from server.storage.sqlite import SQLiteStorage

__all__ = [
    "Batch",
    "CheckpointConflict",
    "IntegrityError",
    "LogState",
    "LookupHit",
    "NewEntry",
    "OAuthStorage",
    "PostgresStorage",
    "Principal",
    "PrincipalKey",
    "SQLiteStorage",
    "Storage",
    "StorageError",
    "StorageUnavailable",
    "open_storage",
]

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")
_SQLITE_SCHEME = "sqlite://"


def open_storage(url: str, *, pool_max_size: int = 10) -> Storage:
    """Return an unopened storage for ``url``; call ``await storage.open()`` before use.

    ``postgresql://...`` and ``postgres://...`` (libpq URLs, e.g.
    ``postgresql://etch@/etch?host=/run/postgresql``) select :class:`PostgresStorage` with a pool
    of at most ``pool_max_size`` connections. ``sqlite://<path>`` (so ``sqlite:///var/lib/etch/
    log.db`` is the absolute path ``/var/lib/etch/log.db``) or a plain file path select
    :class:`SQLiteStorage`.

    Raises ``ValueError`` for another URL scheme, an empty path or an in-memory database.
    """
    if url.startswith(_POSTGRES_SCHEMES):
        return PostgresStorage(url, max_size=pool_max_size)
    path = url[len(_SQLITE_SCHEME) :] if url.startswith(_SQLITE_SCHEME) else url
    if "://" in path:
        raise ValueError("storage URL must be postgresql://, postgres://, sqlite:// or a file path")
    return SQLiteStorage(path)
