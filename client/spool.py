"""The emitter's durable local spool: one SQLite file (WAL, ``synchronous=FULL``).

Signed events wait here until the log has returned a receipt that verifies; verified receipts
are kept here so the OAuth server can hand them out. Two tables and a version:

``outbox``
    one row per signed event not yet delivered: ``seq`` (increasing, never reused), ``jti``,
    ``event`` (the deterministic CBOR the signature covers), ``signature`` (64-byte Ed25519, or
    empty when the emitter signs batch roots at delivery instead, :mod:`client.batchsig`),
    ``created_ms``, ``attempts``, ``next_attempt_ms``, ``state`` (``pending`` or ``failed``) and
    the last error. ``failed`` rows were refused for good by the log (a 4xx problem): they are
    never sent again unchanged and stay for inspection until discarded or put back.
``receipts``
    one row per verified delivery: the spool ``seq`` and ``jti`` of the event, the log ``index``,
    ``leaf_hash``, ``tree_size``, the signed ``checkpoint`` the proof is against, the C2SP
    tlog-proof ``receipt`` text, the exact leaf bytes ``entry``, and ``duplicate``. The oldest
    rows beyond a bound are pruned.
``PRAGMA user_version``
    the schema version (:data:`SCHEMA_VERSION`).

Moving an event from ``outbox`` to ``receipts`` is one transaction, so a crash leaves it in
exactly one of the two. An event delivered whose receipt was not yet recorded when the process
died is sent again on the next start; the log answers a resubmission with the original index and
receipt (idempotency on ``(submitter, jti)``), so nothing is logged twice.

One process owns a spool at a time: :class:`SpoolLock` takes an exclusive ``flock`` on
``<spool>.lock`` (released by the kernel when the process dies, even on ``SIGKILL``).

Each :class:`Spool` wraps one connection; it is not safe for concurrent use from two threads
(the emitter gives each thread its own, or guards a shared one with a lock).

Errors: :class:`SpoolError` (the database cannot be opened, has an unknown schema, or a
statement failed; wraps ``sqlite3.Error``) and its subclass :class:`SpoolLockedError`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

__all__ = [
    "SCHEMA_VERSION",
    "FailedEvent",
    "NewEvent",
    "Spool",
    "SpoolError",
    "SpoolLock",
    "SpoolLockedError",
    "SpoolUsage",
    "SpooledEvent",
    "StoredReceipt",
]

SCHEMA_VERSION: Final = 1
"""Version of the spool schema written to ``PRAGMA user_version``."""

ROW_OVERHEAD: Final = 64
"""Bytes counted per outbox row on top of its event, signature and jti (indexes, bookkeeping)."""

_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        jti TEXT NOT NULL,
        event BLOB NOT NULL,
        signature BLOB NOT NULL,
        created_ms INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_ms INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'failed')),
        status INTEGER,
        problem_type TEXT,
        detail TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS outbox_state_seq ON outbox (state, seq)",
    """CREATE TABLE IF NOT EXISTS receipts (
        seq INTEGER PRIMARY KEY,
        jti TEXT NOT NULL,
        log_index INTEGER NOT NULL,
        leaf_hash BLOB NOT NULL,
        tree_size INTEGER NOT NULL,
        checkpoint BLOB NOT NULL,
        receipt BLOB NOT NULL,
        entry BLOB NOT NULL,
        duplicate INTEGER NOT NULL,
        delivered_ms INTEGER NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS receipts_jti ON receipts (jti)",
)


class SpoolError(Exception):
    """The spool database cannot be opened or used (wraps ``sqlite3.Error`` and OS errors)."""


class SpoolLockedError(SpoolError):
    """Another process (or another emitter in this one) already owns the spool."""


@dataclass(frozen=True, slots=True)
class NewEvent:
    """A signed event ready to be written to the outbox.

    ``event`` is the deterministic CBOR the Ed25519 ``signature`` covers (with its domain
    prefix); ``created_ms`` is POSIX milliseconds.
    """

    jti: str
    event: bytes
    signature: bytes
    created_ms: int

    @property
    def size(self) -> int:
        """Bytes this row counts against the spool's byte bound."""
        return len(self.event) + len(self.signature) + len(self.jti.encode()) + ROW_OVERHEAD


@dataclass(frozen=True, slots=True)
class SpooledEvent:
    """An outbox row waiting for delivery: what :meth:`Spool.due` returns."""

    seq: int
    jti: str
    event: bytes
    signature: bytes
    created_ms: int
    attempts: int

    @property
    def size(self) -> int:
        """Bytes this row counts against the spool's byte bound (see :attr:`NewEvent.size`)."""
        return len(self.event) + len(self.signature) + len(self.jti.encode()) + ROW_OVERHEAD


@dataclass(frozen=True, slots=True)
class FailedEvent:
    """An event the log refused for good: kept for inspection, never resent unchanged.

    ``status`` is the HTTP status of the problem (e.g. 409, 422), ``problem_type`` its RFC 9457
    ``type`` and ``detail`` its human text (the log never echoes field values in it).
    """

    seq: int
    jti: str
    event: bytes
    signature: bytes
    created_ms: int
    attempts: int
    status: int
    problem_type: str
    detail: str


@dataclass(frozen=True, slots=True)
class StoredReceipt:
    """A verified delivery: where the log put the event and the proof that it is there.

    ``checkpoint`` is the signed checkpoint note the inclusion proof was verified against,
    ``receipt`` the C2SP tlog-proof text for the same proof, ``entry`` the exact leaf bytes
    (``leaf_hash == SHA-256(0x00 || entry)``), ``duplicate`` whether the log had already logged
    this event (a resubmission after a crash), ``delivered_ms`` POSIX milliseconds.
    """

    seq: int
    jti: str
    index: int
    leaf_hash: bytes
    tree_size: int
    checkpoint: bytes
    receipt: bytes
    entry: bytes
    duplicate: bool
    delivered_ms: int


@dataclass(frozen=True, slots=True)
class Deferral:
    """An outbox row to try again no earlier than ``until_ms``, and why."""

    seq: int
    until_ms: int
    detail: str


@dataclass(frozen=True, slots=True)
class Refusal:
    """An outbox row the log refused for good, with the problem it answered."""

    seq: int
    status: int
    problem_type: str
    detail: str


@dataclass(frozen=True, slots=True)
class SpoolUsage:
    """What the outbox holds: ``pending`` and ``failed`` rows and their counted ``size`` bytes."""

    pending: int
    failed: int
    size: int

    @property
    def rows(self) -> int:
        """All outbox rows, pending and failed."""
        return self.pending + self.failed


class SpoolLock:
    """An exclusive, non-blocking ``flock`` on ``<spool>.lock`` held while a spool is in use.

    Raises SpoolLockedError if another open file description holds it, SpoolError if the lock
    file cannot be created.
    """

    def __init__(self, spool_path: Path) -> None:
        self.path = spool_path.with_name(spool_path.name + ".lock")
        try:
            self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise SpoolError(
                f"cannot create the spool lock file {self.path}: {exc.strerror}"
            ) from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._fd)
            self._fd = None
            raise SpoolLockedError(f"the spool {spool_path} is in use by another emitter") from None

    def release(self) -> None:
        """Release the lock (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _connect(path: Path) -> sqlite3.Connection:
    """Open ``path`` (mode 0600 if new) in WAL mode with ``synchronous=FULL``."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.close(fd)
        connection = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
    except (OSError, sqlite3.Error) as exc:
        raise SpoolError(f"cannot open the spool {path}: {exc}") from None
    try:
        connection.execute("PRAGMA busy_timeout = 30000")
        mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise SpoolError(f"the spool {path} cannot use WAL journaling")
        connection.execute("PRAGMA synchronous = FULL")
        connection.execute("PRAGMA wal_autocheckpoint = 0")
    except sqlite3.Error as exc:
        connection.close()
        raise SpoolError(f"cannot configure the spool {path}: {exc}") from None
    return connection


class Spool:
    """One connection to the spool database at ``path``, created with its schema if new.

    ``write_lock``, shared by every connection of one process, serialises their write
    transactions in Python: a writer then waits exactly as long as the transaction ahead of it,
    instead of polling SQLite's busy handler (which sleeps up to 100 ms between tries).
    Automatic WAL checkpoints are off (they would run inside a commit and stall it);
    :meth:`checkpoint` runs one without blocking writers.

    Raises SpoolError when the file cannot be opened or holds another schema version.
    """

    def __init__(self, path: Path, write_lock: threading.Lock | None = None) -> None:
        self.path = path
        self._write_lock = write_lock if write_lock is not None else threading.Lock()
        self._db = _connect(path)
        try:
            self._migrate()
        except SpoolError:
            self._db.close()
            raise

    def _migrate(self) -> None:
        """Create the schema in a new file; refuse an unknown version."""
        with self._write() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                for statement in _SCHEMA:
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise SpoolError(
                    f"the spool {self.path} has schema version {version}; "
                    f"this emitter reads version {SCHEMA_VERSION}"
                )

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._db.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """Run the block in one ``BEGIN IMMEDIATE`` transaction; wrap sqlite3 errors."""
        db = self._db
        with self._write_lock:
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise SpoolError(f"cannot write to the spool: {exc}") from None
            try:
                yield db
                db.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise SpoolError(f"spool write failed: {exc}") from None
                raise

    def checkpoint(self) -> None:
        """Copy committed WAL frames into the database file (``wal_checkpoint(PASSIVE)``).

        Never waits for other connections and never blocks writers; the WAL restarts from the
        beginning once a checkpoint has caught up. Raises SpoolError.
        """
        try:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            raise SpoolError(f"spool checkpoint failed: {exc}") from None

    def _read(self, sql: str, parameters: Sequence[object] = ()) -> list[Any]:
        """Run one read statement and return its rows; wrap sqlite3 errors."""
        try:
            return self._db.execute(sql, parameters).fetchall()
        except sqlite3.Error as exc:
            raise SpoolError(f"spool read failed: {exc}") from None

    # -- writer side -------------------------------------------------------------------------

    def append(self, events: Sequence[NewEvent]) -> None:
        """Write ``events`` to the outbox in one durable transaction (one fsync).

        Raises SpoolError if the transaction fails; then nothing was written.
        """
        rows = [(e.jti, e.event, e.signature, e.created_ms) for e in events]
        with self._write() as db:
            db.executemany(
                "INSERT INTO outbox (jti, event, signature, created_ms) VALUES (?, ?, ?, ?)", rows
            )

    # -- delivery side -----------------------------------------------------------------------

    def due(self, limit: int, now_ms: int) -> list[SpooledEvent]:
        """Return up to ``limit`` pending rows whose retry time has come, oldest first."""
        rows = self._read(
            "SELECT seq, jti, event, signature, created_ms, attempts FROM outbox "
            "WHERE state = 'pending' AND next_attempt_ms <= ? ORDER BY seq LIMIT ?",
            (now_ms, limit),
        )
        return [
            SpooledEvent(int(s), str(j), bytes(e), bytes(g), int(c), int(a))
            for s, j, e, g, c, a in rows
        ]

    def next_due_ms(self) -> int | None:
        """Return the earliest retry time of a pending row, or None when none is pending."""
        (row,) = self._read("SELECT MIN(next_attempt_ms) FROM outbox WHERE state = 'pending'")
        return None if row[0] is None else int(row[0])

    def settle(
        self,
        delivered: Sequence[StoredReceipt],
        refused: Sequence[Refusal],
        deferred: Sequence[Deferral],
        *,
        max_receipts: int,
    ) -> None:
        """Record the outcome of one delivery round in one transaction.

        Delivered rows move from the outbox to ``receipts``, refused rows become ``failed``,
        deferred rows get a later retry time; every row touched counts one more attempt.
        Receipts of events more than ``max_receipts`` spool sequence numbers older than the
        newest delivered one are pruned (so at most ``max_receipts`` are kept; fewer when some
        sequence numbers belong to failed or dropped events). Raises SpoolError.
        """
        with self._write() as db:
            db.executemany("DELETE FROM outbox WHERE seq = ?", [(r.seq,) for r in delivered])
            db.executemany(
                "INSERT OR REPLACE INTO receipts (seq, jti, log_index, leaf_hash, tree_size, "
                "checkpoint, receipt, entry, duplicate, delivered_ms) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (r.seq, r.jti, r.index, r.leaf_hash, r.tree_size, r.checkpoint, r.receipt,
                     r.entry, int(r.duplicate), r.delivered_ms)
                    for r in delivered
                ],
            )
            db.executemany(
                "UPDATE outbox SET state = 'failed', attempts = attempts + 1, status = ?, "
                "problem_type = ?, detail = ? WHERE seq = ?",
                [(r.status, r.problem_type, r.detail, r.seq) for r in refused],
            )
            db.executemany(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt_ms = ?, detail = ? "
                "WHERE seq = ?",
                [(d.until_ms, d.detail, d.seq) for d in deferred],
            )
            if delivered:
                # Keep the receipts of the newest max_receipts spool sequence numbers: a range
                # delete on the primary key, whatever the size of the table.
                newest = max(r.seq for r in delivered)
                db.execute("DELETE FROM receipts WHERE seq <= ?", (newest - max_receipts,))

    def count_attempt(self, seqs: Sequence[int]) -> None:
        """Count one more (transiently failed) delivery attempt for each row. Raises SpoolError."""
        with self._write() as db:
            db.executemany(
                "UPDATE outbox SET attempts = attempts + 1 WHERE seq = ?", [(s,) for s in seqs]
            )

    # -- inspection --------------------------------------------------------------------------

    def usage(self) -> SpoolUsage:
        """Return the outbox's pending and failed row counts and counted bytes."""
        (row,) = self._read(
            "SELECT COALESCE(SUM(state = 'pending'), 0), COALESCE(SUM(state = 'failed'), 0), "
            "COALESCE(SUM(length(event) + length(signature) + length(CAST(jti AS BLOB))), 0) "
            "+ ? * COUNT(*) FROM outbox",
            (ROW_OVERHEAD,),
        )
        pending, failed, size = row
        return SpoolUsage(int(pending), int(failed), int(size))

    def receipt(self, jti: str) -> StoredReceipt | None:
        """Return the newest kept receipt of the event ``jti``, or None."""
        rows = self._read(
            "SELECT seq, jti, log_index, leaf_hash, tree_size, checkpoint, receipt, entry, "
            "duplicate, delivered_ms FROM receipts WHERE jti = ? ORDER BY seq DESC LIMIT 1",
            (jti,),
        )
        return _receipt(rows[0]) if rows else None

    def receipts(self, after_seq: int = 0, limit: int = 100) -> list[StoredReceipt]:
        """Return up to ``limit`` kept receipts with ``seq > after_seq``, in spool order."""
        rows = self._read(
            "SELECT seq, jti, log_index, leaf_hash, tree_size, checkpoint, receipt, entry, "
            "duplicate, delivered_ms FROM receipts WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        )
        return [_receipt(row) for row in rows]

    def pending(self, limit: int = 100) -> list[SpooledEvent]:
        """Return up to ``limit`` pending rows, oldest first, whatever their retry time."""
        return self.due(limit, 2**62)

    def failed(self, limit: int = 100) -> list[FailedEvent]:
        """Return up to ``limit`` failed rows, oldest first."""
        rows = self._read(
            "SELECT seq, jti, event, signature, created_ms, attempts, status, problem_type, "
            "detail FROM outbox WHERE state = 'failed' ORDER BY seq LIMIT ?",
            (limit,),
        )
        return [
            FailedEvent(
                int(s), str(j), bytes(e), bytes(g), int(c), int(a), int(st or 0), str(t or ""),
                str(d or ""),
            )
            for s, j, e, g, c, a, st, t, d in rows
        ]

    def discard_failed(self, seqs: Sequence[int]) -> int:
        """Delete the given failed rows; return how many were deleted. Raises SpoolError."""
        with self._write() as db:
            cursor = db.executemany(
                "DELETE FROM outbox WHERE seq = ? AND state = 'failed'", [(s,) for s in seqs]
            )
            return cursor.rowcount


def _receipt(row: Any) -> StoredReceipt:
    """Build a StoredReceipt from a ``receipts`` row."""
    seq, jti, index, value, size, checkpoint, receipt, entry, duplicate, delivered = row
    return StoredReceipt(
        seq=int(seq),
        jti=str(jti),
        index=int(index),
        leaf_hash=bytes(value),
        tree_size=int(size),
        checkpoint=bytes(checkpoint),
        receipt=bytes(receipt),
        entry=bytes(entry),
        duplicate=bool(duplicate),
        delivered_ms=int(delivered),
    )
