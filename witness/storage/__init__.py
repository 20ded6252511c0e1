"""Witness storage: the :class:`~witness.storage.base.WitnessStorage` port and its backends.

:func:`open_storage` picks the backend from the location: a ``postgresql://`` or
``postgres://`` URL opens :class:`~witness.storage.postgres.PostgresWitnessStorage`; a
``sqlite:///path`` URL or a plain file path opens
:class:`~witness.storage.sqlite.SQLiteWitnessStorage`.
"""

from __future__ import annotations

import os

from witness.errors import StorageError
from witness.storage.base import (
    Applied,
    Decision,
    LogState,
    Record,
    StoredCheckpoint,
    StoredRecord,
    WitnessStorage,
)

__all__ = [
    "Applied",
    "Decision",
    "LogState",
    "Record",
    "StoredCheckpoint",
    "StoredRecord",
    "WitnessStorage",
    "open_storage",
]


async def open_storage(location: str | os.PathLike[str]) -> WitnessStorage:
    """Open the witness storage at ``location`` (see the module docstring for the forms).

    Raises StorageError for an unsupported URL scheme or a schema newer than this code,
    StorageUnavailableError when the database cannot be reached or opened.
    """
    text = os.fspath(location)
    if text.startswith(("postgresql://", "postgres://")):
        from witness.storage.postgres import PostgresWitnessStorage

        return await PostgresWitnessStorage.open(text)
    if text.startswith("sqlite:///"):
        text = text[len("sqlite://") :]
    elif "://" in text:
        raise StorageError("witness database must be a postgresql:// URL or a SQLite path")
    from witness.storage.sqlite import SQLiteWitnessStorage

    return await SQLiteWitnessStorage.open(text)
