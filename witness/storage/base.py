"""The persistence port of the witness: values, the :class:`WitnessStorage` protocol, errors.

What a witness stores, per origin:

* the latest cosigned checkpoint (tree size, root hash, the full signed note with the log's
  signature and this witness's cosignature), replaced only through :meth:`WitnessStorage.update`;
* evidence records: self-verifying JSON documents showing that the log signed checkpoints that
  cannot all be honest (:mod:`witness.evidence`). Append-only; an origin with evidence is
  *blocked*: the witness cosigns nothing more for it;
* refused-checkpoint records: validly signed checkpoints refused because the consistency proof
  the submitter sent does not verify. Append-only, not blocking (an unauthenticated proof can be
  wrong by accident or by malice).

:meth:`WitnessStorage.update` is the one write path and the heart of C2SP tlog-witness
"add-checkpoint": it reads the origin's state, calls a pure ``decide`` function with it, and
writes what the decision says, all in one transaction that excludes every other update of that
origin (SQLite ``BEGIN IMMEDIATE``, PostgreSQL ``SELECT ... FOR UPDATE``). When it returns, the
transaction is durably committed. Records are deduplicated by ``fingerprint``: the same
inconsistency seen twice is stored once.

Errors come from :mod:`witness.errors`: :class:`~witness.errors.StorageError` (a fault retrying
will not fix) and :class:`~witness.errors.StorageUnavailableError` (the database cannot be
reached or written now). Nothing a database driver raises leaks through a backend; an exception
raised by ``decide`` itself propagates unchanged after the transaction is rolled back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from witness.errors import StorageError, StorageUnavailableError

__all__ = [
    "HASH_SIZE",
    "Applied",
    "Decision",
    "LogState",
    "Record",
    "StorageError",
    "StorageUnavailableError",
    "StoredCheckpoint",
    "StoredRecord",
    "WitnessStorage",
    "check_new_checkpoint",
]

HASH_SIZE = 32
"""Length of a root hash and of a record fingerprint (SHA-256)."""

_INT64_MAX = 2**63 - 1

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    """The latest checkpoint a witness cosigned for one origin.

    ``note`` is the signed note as served to monitors: checkpoint text, the log's verified
    signature(s) and this witness's cosignature. ``updated_at`` is POSIX milliseconds.

    Raises StorageError for a negative size, a root hash that is not 32 bytes, an empty note
    or an out-of-range time.
    """

    origin: str
    tree_size: int
    root_hash: bytes
    note: bytes
    updated_at: int

    def __post_init__(self) -> None:
        if not self.origin:
            raise StorageError("checkpoint origin is empty")
        if not 0 <= self.tree_size <= _INT64_MAX:
            raise StorageError("tree size out of range")
        if len(self.root_hash) != HASH_SIZE:
            raise StorageError("root hash must be 32 bytes")
        if not self.note:
            raise StorageError("checkpoint note is empty")
        if not 0 <= self.updated_at <= _INT64_MAX:
            raise StorageError("update time out of range")


@dataclass(frozen=True, slots=True)
class Record:
    """An append-only record to store: evidence or a refused checkpoint.

    ``kind`` names what it shows (see :mod:`witness.evidence`), ``fingerprint`` (32 bytes)
    identifies the pair of checkpoints for deduplication, ``document`` is the JSON document,
    ``recorded_at`` POSIX milliseconds.

    Raises StorageError for an empty origin or kind, a fingerprint that is not 32 bytes, an
    empty document or an out-of-range time.
    """

    origin: str
    kind: str
    fingerprint: bytes
    document: bytes
    recorded_at: int

    def __post_init__(self) -> None:
        if not self.origin or not self.kind:
            raise StorageError("record origin and kind must be non-empty")
        if len(self.fingerprint) != HASH_SIZE:
            raise StorageError("record fingerprint must be 32 bytes")
        if not self.document:
            raise StorageError("record document is empty")
        if not 0 <= self.recorded_at <= _INT64_MAX:
            raise StorageError("record time out of range")


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A record as stored, with its id (increasing in insertion order within its table)."""

    id: int
    origin: str
    kind: str
    fingerprint: bytes
    document: bytes
    recorded_at: int


@dataclass(frozen=True, slots=True)
class LogState:
    """What :meth:`WitnessStorage.update` shows ``decide``: the stored state of one origin.

    ``checkpoint`` is ``None`` before the first cosignature; ``evidence_count`` counts the
    evidence records held against the origin.
    """

    origin: str
    checkpoint: StoredCheckpoint | None
    evidence_count: int

    @property
    def tree_size(self) -> int:
        """Size of the latest cosigned checkpoint, 0 if none (tlog-witness "old size")."""
        return 0 if self.checkpoint is None else self.checkpoint.tree_size

    @property
    def blocked(self) -> bool:
        """Whether evidence is held against the origin (the witness no longer cosigns it)."""
        return self.evidence_count > 0


@dataclass(frozen=True, slots=True)
class Decision(Generic[T]):
    """What ``decide`` returns: a result for the caller and the writes to commit with it.

    ``checkpoint`` replaces the latest checkpoint (``None``: unchanged); ``evidence`` and
    ``refused`` are appended (duplicates by fingerprint are skipped).
    """

    result: T
    checkpoint: StoredCheckpoint | None = None
    evidence: tuple[Record, ...] = ()
    refused: tuple[Record, ...] = ()


@dataclass(frozen=True, slots=True)
class Applied(Generic[T]):
    """What :meth:`WitnessStorage.update` returns once committed.

    ``result`` is the decision's result; ``evidence_ids`` and ``refused_ids`` are the ids of
    the records actually inserted (duplicates are not).
    """

    result: T
    evidence_ids: tuple[int, ...] = ()
    refused_ids: tuple[int, ...] = ()


def check_new_checkpoint(state: LogState, checkpoint: StoredCheckpoint) -> None:
    """Refuse a write that would roll the origin back: the last guard of "size never decreases".

    Requires ``checkpoint.origin == state.origin`` and a tree size not below the stored one.
    Raises StorageError otherwise (a bug in ``decide``, never a client's fault).
    """
    if checkpoint.origin != state.origin:
        raise StorageError("decision stores a checkpoint of another origin")
    if checkpoint.tree_size < state.tree_size:
        raise StorageError(
            f"refusing to roll back {state.origin!r} from size {state.tree_size} "
            f"to {checkpoint.tree_size}"
        )


class WitnessStorage(Protocol):
    """The witness's storage: one atomic update per origin, reads, append-only records."""

    async def update(self, origin: str, decide: Callable[[LogState], Decision[T]]) -> Applied[T]:
        """Run ``decide`` on the origin's state and commit its writes, atomically and durably.

        ``decide`` must be a quick, synchronous function without I/O; it may run on another
        thread. It is called exactly once per successful call. No other update of the same
        origin runs between the read and the commit. Raises StorageError (also when the
        decision would lower the stored tree size), StorageUnavailableError, or whatever
        ``decide`` raises (nothing is written then).
        """
        ...

    async def latest(self, origin: str) -> StoredCheckpoint | None:
        """Return the origin's latest cosigned checkpoint, or ``None``."""
        ...

    async def latest_all(self) -> list[StoredCheckpoint]:
        """Return the latest cosigned checkpoint of every origin that has one, by origin."""
        ...

    async def evidence_counts(self) -> dict[str, int]:
        """Return the number of evidence records per origin (origins without any omitted)."""
        ...

    async def list_evidence(
        self, origin: str | None = None, *, after: int = 0, limit: int = 100
    ) -> list[StoredRecord]:
        """Return evidence records with ``id > after`` in id order, at most ``limit``.

        Only the origin's records when ``origin`` is given. Requires ``1 <= limit <= 1000``.
        """
        ...

    async def get_evidence(self, record_id: int) -> StoredRecord | None:
        """Return one evidence record by id, or ``None``."""
        ...

    async def list_refused(
        self, origin: str | None = None, *, after: int = 0, limit: int = 100
    ) -> list[StoredRecord]:
        """Return refused-checkpoint records, like :meth:`list_evidence`."""
        ...

    async def close(self) -> None:
        """Release the database; later calls raise StorageError."""
        ...
