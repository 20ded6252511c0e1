"""Etch as several processes around one PostgreSQL: front ends, one elected sequencer.

Every process of a cluster is a front end: it authenticates and validates a submission where
the request arrives (the app's intake), then hands the prepared :class:`Submission` to the
sequencer and waits for the answer: over the local link (:mod:`server.cluster_link`) when the
sequencing process runs on the same host, else through the table ``etch_pending`` of the log's
database. Exactly one process at a time also sequences: the one holding the log's PostgreSQL
advisory lock.

::

    front end                         PostgreSQL                          elected sequencer
    ---------                         ----------                          -----------------
    INSERT etch_pending, NOTIFY p ──► etch_pending (id order) ──────────► feeder: rows by id
                                                                            Sequencer.submit
                                      state/tiles/entries  ◄── one commit ── (CAS on checkpoint)
    DELETE ... RETURNING index   ◄──  etch_pending.leaf_index ◄── UPDATE, NOTIFY c
    receipt from stored tiles
    against the stored checkpoint

The sequencing process itself (:class:`ClusterLog.submit`)
    Hands its own submissions straight to its sequencer: no queue row, no notification, and the
    receipts come from the tiles the sequencer just wrote, as in a single-process log. Its
    commits are announced on the commit channel (coalesced, one ``NOTIFY`` in flight) unless a
    run of queued rows is being sequenced, whose ``UPDATE`` notifies anyway. If it stops
    sequencing while submissions of its own wait, they go through the queue to the successor
    (an entry the cut-short round did commit is then answered as a duplicate, with its index).

Local link (:class:`ClusterLog.submit`, ``local_link=True``, the default)
    The sequencing process also listens on a local socket named after the database URL and the
    origin; a front end on its host sends its prepared submissions there and gets the finished
    results (index, leaf hash, checkpoint, proof) back, with no queue row, notification or tile
    read. When the link is down or answers that its process no longer sequences, and when the
    connection is lost with submissions in flight, they go through the queue below (anything
    the link's sequencer did commit is then answered as a duplicate, with its index).

Front end through the queue (:class:`ClusterLog.submit`)
    Concurrent submissions of one process are coalesced into one ``INSERT`` (one round trip for
    all of them) that also ``NOTIFY``s the pending channel. The process ``LISTEN``s on the commit
    channel. The sequencer's notification of a run carries the signed checkpoint and where each
    row landed (:func:`encode_answers`, e.g. ``7:40+3`` for rows 7-9 at indexes 40-42), so the
    front end learns its answers without a query; it reads the tiles its proofs need and
    answers each submitter with an inclusion proof against that checkpoint (the state row and
    the tiles it covers are written in one transaction, so they always agree). When the answers
    do not fit a notification (8000 bytes), and at the latest every second while submitters wait
    (a lost notification costs a second, never a hang), it claims its answered rows with one
    ``DELETE ... RETURNING`` instead.

Election (:class:`ClusterLog`, ``sequence=True``)
    Every half second a process that does not sequence tries ``pg_try_advisory_lock`` on a
    dedicated connection (named ``etch-sequencer pid=<pid>`` in ``pg_stat_activity``). The
    holder starts a :class:`server.sequencer.Sequencer`, which loads and re-verifies the stored
    state before it signs anything (ARCHITECTURE.md invariant 3), and a feeder that pulls pending
    rows in id order, submits them, records each row's index, and notifies the commit channel.
    When the lock connection is lost (its termination, or a failed liveness query) the sequencer
    is stopped at once; when the sequencer stops for good (e.g. it lost the checkpoint
    compare-and-swap to another writer) the process gives the lock up and competes again.

Why this is safe
    PostgreSQL releases the advisory lock when the holder's session ends (``kill -9``, lost
    network), and another process takes over within about a second. Even if two processes ever
    sequenced at once (a holder that lost its lock connection but not yet its pool), the
    checkpoint compare-and-swap of :meth:`server.storage.base.Storage.commit` lets exactly one
    of them commit each tree size; the other gets ``CheckpointConflict`` and stops. A crash
    between the log commit and the ``UPDATE`` of the pending rows is harmless: the next
    sequencer submits those rows again and deduplication answers with the original indexes
    (flagged ``duplicate``). Rows answered through a notification stay in the table, for a
    front end that missed it; the sequencer deletes rows answered more than two minutes ago.

Reads
    The checkpoint a front end serves, and the tree size that bounds its tile and proof reads,
    are those of the *read* storage's own state row (a streaming replica's with
    :mod:`server.replica`), so it never serves a checkpoint whose tiles it cannot serve yet.
    Receipts of submissions are built from the primary (the entry may not have reached a
    replica yet), so their tree size may briefly be ahead of the served checkpoint.

Freezing (:meth:`ClusterLog.freeze`)
    Every process of a frozen log refuses submissions from the moment it freezes (all of them
    do, with the same ``frozen`` or ``not_after`` setting). The sequencing process stops taking
    submissions, lets the rounds in flight finish, and stores the newest committed checkpoint
    (with witnesses, the cosigned one covering it) as the final checkpoint; the others serve it
    once their view reaches its tree. A process never starts sequencing a log whose storage holds
    a final checkpoint, and a process started later serves such a log read-only.

``etch_pending`` is an ``UNLOGGED`` table: its rows are not written to the WAL (no fsync per
enqueue, and not replicated). A PostgreSQL crash may empty it, which loses nothing acknowledged:
a receipt is only ever given for an entry of the log's own, durable tables; submitters whose
rows vanished time out (503) and resubmit, and deduplication answers for whatever did commit.

Several logs may share one database in separate schemas (``search_path`` in the URL): the
table is per schema, the lock key and the channel names are derived from the origin.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import asyncpg

from merkle.checkpoint import open_checkpoint
from merkle.errors import MerkleError
from merkle.note import Ed25519Signer
from merkle.tree import Node, build_inclusion_proof, inclusion_nodes
from server.cluster_link import LinkClient, LinkLost, LinkServer, Moved, link_address
from server.config import Settings
from server.log import FROZEN_META_KEY, InFlight, LogService, Published
from server.replica import ReplicaRoutedStorage, ReplicaStorage
from server.sequencer import (
    IntegrityFailure,
    MonotonicClock,
    Sequenced,
    Sequencer,
    SequencerStopped,
    Submission,
)
from server.storage.base import LogState, Storage, StorageError, StorageUnavailable, encode_key
from server.storage.postgres import PostgresStorage
from server.treeview import ExpandedTile, TreeReader, hashes_for_nodes, tiles_for_nodes

__all__ = [
    "LEADER_APPLICATION_NAME",
    "ClusterLog",
    "ClusterNames",
    "build_cluster_service",
    "cluster_names",
    "decode_answers",
    "decode_lookup_keys",
    "encode_answers",
    "encode_lookup_keys",
    "ensure_pending_table",
]

log = logging.getLogger(__name__)

LEADER_APPLICATION_NAME: Final = "etch-sequencer pid="
"""Prefix of the ``application_name`` of every election connection (then the OS process id)."""

_SCHEMA_LOCK: Final = 0x4554_4348_0000_0002
"""Advisory lock held while ``etch_pending`` is created ("ETCH", 2)."""

_CREATE_PENDING: Final = (
    """CREATE UNLOGGED TABLE IF NOT EXISTS etch_pending (
        id bigserial PRIMARY KEY,
        data bytea NOT NULL,
        leaf_hash bytea NOT NULL CHECK (length(leaf_hash) = 32),
        idempotency_key bytea,
        lookup_keys bytea NOT NULL,
        log_time bigint NOT NULL,
        leaf_index bigint,
        duplicate boolean,
        done_at timestamptz
    )""",
    "CREATE INDEX IF NOT EXISTS etch_pending_todo ON etch_pending (id) WHERE leaf_index IS NULL",
)

_ENQUEUE: Final = """
    WITH added AS (
        INSERT INTO etch_pending (data, leaf_hash, idempotency_key, lookup_keys, log_time)
        SELECT d, h, k, l, t
        FROM unnest($1::bytea[], $2::bytea[], $3::bytea[], $4::bytea[], $5::bigint[])
             WITH ORDINALITY AS u (d, h, k, l, t, n)
        ORDER BY n
        RETURNING id
    )
    SELECT (SELECT array_agg(id ORDER BY id) FROM added) AS ids, pg_notify($6, '') AS notified
"""
"""Insert a run of submissions in order and wake the sequencer; ids ascend in input order."""

_CLAIM: Final = """
    DELETE FROM etch_pending WHERE id = ANY($1::bigint[]) AND leaf_index IS NOT NULL
    RETURNING id, leaf_index, duplicate
"""

_FETCH_TODO: Final = """
    SELECT id, data, leaf_hash, idempotency_key, lookup_keys, log_time FROM etch_pending
    WHERE leaf_index IS NULL AND NOT (id = ANY($1::bigint[]))
    ORDER BY id LIMIT $2
"""

_MARK_DONE: Final = """
    WITH done AS (
        UPDATE etch_pending AS p SET leaf_index = u.i, duplicate = u.d, done_at = now()
        FROM unnest($1::bigint[], $2::bigint[], $3::boolean[]) AS u (id, i, d)
        WHERE p.id = u.id AND p.leaf_index IS NULL
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM done) AS marked, pg_notify($4, $5) AS notified
"""

_SWEEP: Final = (
    "DELETE FROM etch_pending WHERE done_at IS NOT NULL AND done_at < now() - interval '2 minutes'"
)
"""Answered rows are kept a while for a front end that missed its notification, then deleted."""

_MAX_PAYLOAD: Final = 7900
"""Largest commit notification payload (PostgreSQL's limit is 8000 bytes)."""

_DB_ERRORS: Final = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
"""What talking to PostgreSQL may raise; the loops below log it and try again."""


@dataclass(frozen=True, slots=True)
class ClusterNames:
    """The PostgreSQL names of one log's cluster: advisory lock key and notification channels.

    Derived from the origin (:func:`cluster_names`), so processes of one log agree without
    configuration and two logs in one database never share a lock or a channel.
    """

    lock_key: int
    pending_channel: str
    commit_channel: str


def cluster_names(origin: str) -> ClusterNames:
    """Return the lock key and channels of the log ``origin``.

    ``lock_key`` is the first 8 bytes of SHA-256("etch/cluster/v1" || 0x00 || origin) as a
    signed 64-bit integer (``pg_try_advisory_lock(bigint)``); the channels are ``etch_p_<hex>``
    and ``etch_c_<hex>`` with the next 6 bytes in hex (valid unquoted identifiers).
    """
    digest = hashlib.sha256(b"etch/cluster/v1\x00" + origin.encode("utf-8")).digest()
    tag = digest[8:14].hex()
    return ClusterNames(
        lock_key=int.from_bytes(digest[:8], "big", signed=True),
        pending_channel=f"etch_p_{tag}",
        commit_channel=f"etch_c_{tag}",
    )


def encode_lookup_keys(keys: Sequence[tuple[str, str]]) -> bytes:
    """Return lookup keys as the bytes stored in ``etch_pending``: ASCII JSON ``[[kind, value]]``.

    Example: ``(("client_id", "c1"),)`` -> ``b'[["client_id","c1"]]'``. Any string, NUL and
    lone surrogates included, round-trips through :func:`decode_lookup_keys`.
    """
    if not keys:
        return b"[]"
    return json.dumps([[kind, value] for kind, value in keys], separators=(",", ":")).encode(
        "ascii"
    )


def decode_lookup_keys(data: bytes) -> tuple[tuple[str, str], ...]:
    """Return the lookup keys stored by :func:`encode_lookup_keys`.

    Raises ValueError if ``data`` is not a JSON array of two-string arrays.
    """
    if data == b"[]":
        return ()
    value = json.loads(data.decode("ascii"))
    if not isinstance(value, list):
        raise ValueError("lookup keys are not a JSON array")
    out: list[tuple[str, str]] = []
    for item in value:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not all(isinstance(part, str) for part in item)
        ):
            raise ValueError("a lookup key is not a pair of strings")
        out.append((item[0], item[1]))
    return tuple(out)


async def ensure_pending_table(conn: Any) -> None:
    """Create ``etch_pending`` and its index if missing, under an advisory lock (many starters).

    Raises asyncpg errors (the caller maps them).
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
        for statement in _CREATE_PENDING:
            await conn.execute(statement)


def _commit_payload(state: LogState, answers: str = "") -> str:
    """Return the commit notification of ``state``: ``<tree size>\\n[@<answers>\\n]<note>``.

    ``answers`` (:func:`encode_answers`) is left out when it would not fit PostgreSQL's payload
    limit (front ends then claim their rows), and the note too when even it does not fit.
    """
    note = state.checkpoint.decode("utf-8")
    if answers:
        payload = f"{state.tree_size}\n@{answers}\n{note}"
        if len(payload) <= _MAX_PAYLOAD:  # ASCII: the note's origin is ASCII-checked text
            return payload
    payload = f"{state.tree_size}\n{note}"
    if len(payload.encode("utf-8")) > _MAX_PAYLOAD:
        payload = str(state.tree_size)
    return payload


def encode_answers(ids: Sequence[int], answers: Sequence[tuple[int, bool]]) -> str:
    """Return where pending rows landed, compactly: ``<id>:<index>[+<n>]`` or ``<id>:<index>d``.

    ``answers[k]`` is ``(index, duplicate)`` of row ``ids[k]``. Consecutive ids landing on
    consecutive new indexes make one run (``+n``: ``n`` rows in all); a duplicate is one run of
    its own marked ``d``. Runs are joined with ``,``. Example: ids ``[7, 8, 9, 12]`` at
    ``[(40, False), (41, False), (42, False), (3, True)]`` -> ``"7:40+3,12:3d"``.
    """
    runs: list[str] = []
    k = 0
    while k < len(ids):
        first_id, (first_index, duplicate) = ids[k], answers[k]
        n = 1
        if not duplicate:
            while (
                k + n < len(ids)
                and ids[k + n] == first_id + n
                and answers[k + n] == (first_index + n, False)
            ):
                n += 1
        runs.append(
            f"{first_id}:{first_index}" + ("d" if duplicate else "") + (f"+{n}" if n > 1 else "")
        )
        k += n
    return ",".join(runs)


def decode_answers(text: str) -> list[tuple[int, int, bool]]:
    """Return the ``(id, index, duplicate)`` triples of :func:`encode_answers` text.

    Raises ValueError for anything else (numbers are canonical ASCII decimals).
    """

    def number(part: str) -> int:
        if not (part.isascii() and part.isdigit()) or (len(part) > 1 and part[0] == "0"):
            raise ValueError(f"not a canonical decimal: {part!r}")
        return int(part)

    out: list[tuple[int, int, bool]] = []
    for run in text.split(","):
        head, _, rest = run.partition(":")
        index_text, plus, count_text = rest.partition("+")
        duplicate = index_text.endswith("d")
        if duplicate:
            index_text = index_text[:-1]
        count = number(count_text) if plus else 1
        if count < 1 or (duplicate and count != 1):
            raise ValueError(f"bad run {run!r}")
        first_id, first_index = number(head), number(index_text)
        out.extend((first_id + n, first_index + n, duplicate) for n in range(count))
    return out


def _no_answer_in_time() -> SequencerStopped:
    """Return the refusal for a submission no sequencer answered within ``wait_timeout``."""
    return SequencerStopped(
        "no sequencer answered in time; resubmit to get the entry's index", retry_after=1
    )


def _map_db_error(exc: BaseException) -> StorageError:
    """Return the storage error a submitter sees for a failure of the pending queue."""
    return StorageUnavailable(f"PostgreSQL unavailable ({type(exc).__name__})")


@dataclass(slots=True)
class _Enqueue:
    submissions: Sequence[Submission]
    ids: asyncio.Future[list[tuple[int, asyncio.Future[Sequenced]]]]
    """Each submission's row id and the future its answer will be set on."""


_EARLY_ANSWERS: Final = 16384
"""Answers remembered for rows not (yet) known to be this process's own (see ``_flush``)."""


async def _keep_session(conn: Any) -> None:
    """Pool reset hook: nothing to reset, the queue's statements never change session state.

    asyncpg's default reset (``RESET ALL``, ``UNLISTEN *``...) costs a round trip per use.
    """


class _Leadership:
    """What the elected process runs: its sequencer and the feeder that fills it."""

    def __init__(self, owner: ClusterLog) -> None:
        self.owner = owner
        self.sequencer = Sequencer(
            owner.primary,
            owner.signer,
            owner.origin,
            batch_size=owner.batch_size,
            batch_period=owner.batch_period,
            clock=owner.sequencer.clock,
            full_check=owner.full_check,
        )
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[int] = set()
        self._slots = asyncio.Semaphore(4)
        self._batches: set[asyncio.Task[None]] = set()
        self.started = time.monotonic()
        self.sequencer.subscribe(self._on_commit)
        self.link: LinkServer | None = None
        self.closing = False
        """Set when the log freezes: no new submission reaches the sequencer from then on."""
        self._in_flight = InFlight()

    async def submit(self, submissions: Sequence[Submission]) -> list[Sequenced]:
        """Sequence submissions (this process's own, the link's, the queue's), counted so that
        a freeze can wait for them. Raises SequencerStopped, also once the log is closing."""
        if self.closing:
            raise SequencerStopped("the log is frozen", retry_after=1)
        with self._in_flight:
            return await self.sequencer.submit(submissions)

    async def close(self) -> tuple[bytes, int]:
        """Take no more submissions, wait for those in flight, and return the newest committed
        checkpoint note and its size (the final tree of a freeze). Raises SequencerStopped
        when the sequencer has stopped."""
        self.closing = True
        await self._in_flight.drained()
        if self.failure is not None:
            raise SequencerStopped(f"the sequencer stopped: {self.failure}", retry_after=1)
        note = self.sequencer.checkpoint
        assert note is not None, "a started sequencer has a checkpoint"
        return note, self.sequencer.tree_size

    def _on_commit(self, note: bytes) -> None:
        """After each commit: tell the owner, and announce it unless a pending run will."""
        self.owner._local_commit(note, self.sequencer.tree_size, announce=not self._inflight)

    async def start(self) -> None:
        """Load and verify the stored log, then feed it. Raises IntegrityFailure, StorageError."""
        await self.sequencer.start()
        self._task = asyncio.create_task(self._feed(), name=f"feeder {self.owner.origin}")
        if self.owner.local_link:
            link = LinkServer(self.owner.link_address, self._link_submit)
            try:
                await link.start()
                self.link = link
            except OSError as exc:  # a previous sequencer here still holds it: the queue works
                log.warning("cannot open the local link (%s); front ends use the queue", exc)

    async def _link_submit(self, submissions: list[Submission]) -> list[Sequenced]:
        """Sequence what a front end sent over the local link, like this process's own.

        Raises Moved when this process no longer sequences (the front end uses the queue, where
        the successor answers, with the original index for anything committed here), else
        SequencerStopped.
        """
        if self.owner._leadership is not self or self.failure is not None:
            raise Moved("this process no longer sequences")
        try:
            return await self.submit(submissions)
        except SequencerStopped:
            if self.owner._leadership is not self or self.failure is not None:
                raise Moved("this process stopped sequencing") from None
            raise

    async def stop(self) -> None:
        """Stop feeding and sequencing at once (pending rows stay for the next sequencer)."""
        link, self.link = self.link, None
        if link is not None:
            await link.stop()
        tasks = [t for t in (self._task, *self._batches) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.sequencer.stop()

    @property
    def failure(self) -> str | None:
        """Why the sequencer stopped for good, else ``None``."""
        return self.sequencer.failure

    async def _feed(self) -> None:
        owner = self.owner
        last_sweep = 0.0
        while True:
            owner.pending_event.clear()
            if self.closing:  # frozen: queued rows stay; their submitters time out and retry
                await asyncio.sleep(1.0)
                continue
            try:
                rows = await owner.pool.fetch(_FETCH_TODO, list(self._inflight), owner.batch_size)
                if time.monotonic() - last_sweep > 10.0:
                    last_sweep = time.monotonic()
                    await owner.pool.execute(_SWEEP)
            except _DB_ERRORS as exc:
                log.warning("the feeder cannot read pending entries: %s", type(exc).__name__)
                await asyncio.sleep(0.2)
                continue
            if not rows:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(owner.pending_event.wait(), 1.0)
                continue
            await self._slots.acquire()
            ids = [int(r["id"]) for r in rows]
            self._inflight.update(ids)
            task = asyncio.create_task(self._sequence(ids, rows))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    async def _sequence(self, ids: list[int], rows: Sequence[Any]) -> None:
        """Sequence one run of pending rows and record where each landed."""
        owner = self.owner
        try:
            submissions = [
                Submission(
                    data=bytes(r["data"]),
                    leaf_hash=bytes(r["leaf_hash"]),
                    idempotency_key=None
                    if r["idempotency_key"] is None
                    else bytes(r["idempotency_key"]).decode("utf-8"),
                    lookup_keys=decode_lookup_keys(bytes(r["lookup_keys"])),
                    log_time=int(r["log_time"]),
                )
                for r in rows
            ]
            results = await self.submit(submissions)
            newest = max(results, key=lambda r: r.tree_size)
            payload = _commit_payload(
                LogState(newest.checkpoint, newest.tree_size, b""),
                encode_answers(ids, [(r.index, r.duplicate) for r in results]),
            )
            for attempt in range(50):
                try:
                    await owner.pool.fetchrow(
                        _MARK_DONE,
                        ids,
                        [r.index for r in results],
                        [r.duplicate for r in results],
                        owner.names.commit_channel,
                        payload,
                    )
                    break
                except _DB_ERRORS as exc:
                    log.warning("cannot record sequenced entries (%s)", type(exc).__name__)
                    await asyncio.sleep(min(0.05 * (attempt + 1), 1.0))
        except (SequencerStopped, StorageError, ValueError, UnicodeDecodeError) as exc:
            log.warning("a run of %d pending entries was not sequenced: %s", len(ids), exc)
            await asyncio.sleep(0.1)
        finally:
            self._inflight.difference_update(ids)
            self._slots.release()


class ClusterLog(LogService):
    """A log served by one process of a cluster (see the module docstring).

    ``storage`` is the primary's :class:`server.storage.postgres.PostgresStorage` (the sequencer
    commits there), ``dsn`` its URL (the pending queue, notifications and the election use their
    own connections). ``read_storage`` answers reads (tiles, proofs, entries, lookups and the
    served checkpoint); it defaults to ``storage`` and is typically a
    :class:`server.replica.ReplicaRoutedStorage`. With ``sequence=False`` the process never
    sequences (a pure front end). ``full_check`` is the sequencer's start-up check on every
    takeover (default: the right edge and compact range only, so a takeover stays fast on a
    large log; ``etch fsck`` does the full check). ``wait_timeout`` bounds how long a submitter
    waits for its entry (then 503, and a retry finds the original index). ``local_link``: hand
    submissions to a sequencing process on this host over :mod:`server.cluster_link` (and, when
    this process sequences, listen for front ends there).
    """

    def __init__(
        self,
        storage: Storage,
        signer: Ed25519Signer,
        origin: str,
        *,
        dsn: str,
        read_storage: Storage | None = None,
        batch_size: int = 1000,
        batch_period: float = 0.025,
        clock: MonotonicClock | None = None,
        full_check: bool = False,
        witnessed: bool = False,
        sequence: bool = True,
        wait_timeout: float = 30.0,
        lease_interval: float = 0.5,
        local_link: bool = True,
    ) -> None:
        super().__init__(
            storage,
            signer,
            origin,
            batch_size=batch_size,
            batch_period=batch_period,
            clock=clock,
            full_check=full_check,
            witnessed=witnessed,
        )
        self.primary = storage
        self.storage = read_storage or storage
        self.reader = TreeReader(self.storage)
        self.names = cluster_names(origin)
        self.batch_size = batch_size
        self.batch_period = batch_period
        self.full_check = full_check
        self.sequence = sequence
        self.wait_timeout = wait_timeout
        self.lease_interval = lease_interval
        self.local_link = local_link
        self.link_address = link_address(dsn, origin)
        self._link = LinkClient(self.link_address)
        self._dsn = dsn
        self._primary_reader = TreeReader(storage)
        self._pool: Any = None
        self._listener: Any = None
        self._lock_conn: Any = None
        self._leadership: _Leadership | None = None
        self.pending_event = asyncio.Event()
        self._commit_event = asyncio.Event()
        self._view_event = asyncio.Event()
        self._waiting: dict[int, asyncio.Future[Sequenced]] = {}
        self._answers: list[tuple[int, int, bool]] = []
        self._early: OrderedDict[int, tuple[int, bool]] = OrderedDict()
        self._claim = False
        self._buffer: list[_Enqueue] = []
        self._flushing = False
        self._flush_task: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._view: LogState | None = None
        self._latest: LogState | None = None
        self._notified_size = 0
        self._last_failure: str | None = None
        self._announcement: LogState | None = None
        self._announcer: asyncio.Task[None] | None = None
        self.takeovers = 0

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def pool(self) -> Any:
        """The cluster's own connection pool (pending queue). Requires a started log."""
        if self._pool is None:
            raise StorageError("the cluster log is not running")
        return self._pool

    async def start(self) -> None:
        """Open storage, create the pending table, listen, read the served state, join the election.

        Raises StorageError (StorageUnavailable when PostgreSQL cannot be reached).
        """
        await self.primary.open()
        if self.storage is not self.primary:
            await self._open_read_storage()
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn, min_size=1, max_size=4, reset=_keep_session
            )
            async with self._pool.acquire() as conn:
                await ensure_pending_table(conn)
        except _DB_ERRORS as exc:
            raise _map_db_error(exc) from exc
        await self._connect_listener()
        await self._refresh_view()
        if self._view is not None:
            # A log frozen earlier (its storage holds its final checkpoint) is served read-only:
            # it refuses submissions and this process never competes to sequence it.
            await self._restore_final(self._view.checkpoint)
        loops = [self._listen_loop(), self._resolve_loop(), self._view_loop()]
        if self.sequence and self.final is None:
            loops.append(self._elect_loop())
        self._tasks = [asyncio.create_task(coro) for coro in loops]

    async def _open_read_storage(self, within: float = 30.0) -> None:
        """Open the read storage, waiting while a new replica has not replayed the schema yet.

        Raises StorageUnavailable after ``within`` seconds, StorageError at once otherwise.
        """
        deadline = time.monotonic() + within
        while True:
            try:
                await self.storage.open()
                return
            except StorageUnavailable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    async def stop(self) -> None:
        """Leave the election, stop every loop, close connections and storage."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        await self._step_down("shutting down")
        announcer, self._announcer, self._announcement = self._announcer, None, None
        if announcer is not None:  # let a NOTIFY in flight finish: its pool connection stays sound
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(announcer, 2.0)
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(SequencerStopped("the log is shutting down", retry_after=1))
        self._waiting.clear()
        self._link.close()
        for conn in (self._listener, self._lock_conn):
            if conn is not None:
                conn.terminate()
        self._listener = self._lock_conn = None
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None
        if self.storage is not self.primary:
            await self.storage.close()
        await self.primary.close()

    # -- served state ------------------------------------------------------------------------

    @property
    def is_sequencer(self) -> bool:
        """Whether this process holds the sequencer role now."""
        return self._leadership is not None

    @property
    def tree_size(self) -> int:
        """The tree size of the read storage's state row: its tiles and entries are readable."""
        return self._view.tree_size if self._view else 0

    @property
    def latest(self) -> tuple[bytes, int] | None:
        """The newest committed checkpoint this process has seen (from the primary) and its size."""
        state = self._latest or self._view
        return None if state is None else (state.checkpoint, state.tree_size)

    @property
    def healthy(self) -> tuple[bool, str]:
        """Whether this front end can serve: it has a verified view of the log."""
        if self._view is None:
            return False, "no checkpoint yet (waiting for a sequencer)"
        if self.collector is not None and self.collector.ahead:
            ahead = ", ".join(f"{n} at {s}" for n, s in sorted(self.collector.ahead.items()))
            return False, f"witnesses have seen a larger tree than this log's ({ahead})"
        return True, "ok"

    def _verified(self, state: LogState) -> bool:
        """Tell whether ``state``'s checkpoint is signed by the log key and matches its size."""
        try:
            checkpoint, _, _ = open_checkpoint(state.checkpoint, self._verifier)
        except MerkleError as exc:
            log.error("a stored checkpoint does not verify; not using it: %s", exc)
            return False
        if checkpoint.tree_size != state.tree_size or checkpoint.origin != self.origin:
            log.error("a stored checkpoint does not match its tree size or origin; not using it")
            return False
        return True

    def _note_latest(self, state: LogState) -> None:
        """Remember ``state`` (verified) as the newest committed one if it is newer."""
        if self._latest is None or self._latest.tree_size < state.tree_size:
            self._latest = state
            self._changed.set()
            self._changed = asyncio.Event()

    def _local_commit(self, note: bytes, tree_size: int, *, announce: bool) -> None:
        """Take a commit of this process's own sequencer; ``announce``: notify the others.

        The note was signed here moments ago: it is remembered (and served, when reads go to
        the primary) without a verification. Announcements are coalesced: at most one
        ``NOTIFY`` is in flight, and it carries the newest commit.
        """
        state = LogState(note, tree_size, b"")
        self._note_latest(state)
        if self.storage is self.primary and not self.witnessed:
            self._adopt(state)
        else:
            self._notified_size = max(self._notified_size, tree_size)
            self._view_event.set()
        if announce:
            self._announcement = state
            if self._announcer is None or self._announcer.done():
                self._announcer = asyncio.get_running_loop().create_task(self._announce())

    async def _announce(self) -> None:
        """Send the newest commit on the commit channel until none is left to send."""
        while self._announcement is not None:
            state, self._announcement = self._announcement, None
            try:
                await self.pool.execute(
                    "SELECT pg_notify($1, $2)", self.names.commit_channel, _commit_payload(state)
                )
            except (StorageError, *_DB_ERRORS) as exc:  # the others poll every second
                log.debug("cannot announce a commit: %s", type(exc).__name__)

    def _adopt(self, state: LogState) -> None:
        """Serve ``state`` (verified) if it is newer than the served one."""
        current = self._view
        if current is not None and state.tree_size <= current.tree_size:
            return
        self._view = state
        self.metrics.tree_size.set(state.tree_size)
        if not self.witnessed:
            self._set_published(state.checkpoint)
        self._note_latest(state)

    async def _refresh_view(self) -> None:
        """Read the served state from the read storage and serve it if newer and verified.

        With a witness policy the published checkpoint is the stored cosigned one.
        """
        state = await self.storage.load_state()
        current = self._view
        newer = state is not None and (current is None or state.tree_size > current.tree_size)
        if state is not None and newer and self._verified(state):
            self._adopt(state)
        if self.witnessed:
            cosigned = await self.storage.latest_cosigned_checkpoint()
            if cosigned is not None:
                self._set_published(cosigned)

    async def _view_loop(self) -> None:
        """Follow the log: re-read the served state when a commit is ahead, and every second."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._view_event.wait(), 1.0)
            self._view_event.clear()
            try:
                await self._refresh_view()
            except (StorageError, *_DB_ERRORS) as exc:
                log.debug("cannot refresh the served checkpoint: %s", type(exc).__name__)
                await asyncio.sleep(0.2)
                continue
            if self._view is not None and self._view.tree_size < self._notified_size:
                await asyncio.sleep(0.02)  # a replica behind the primary: look again soon
                self._view_event.set()

    # -- notifications -----------------------------------------------------------------------

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        """Dispatch a notification; a commit's is ``<tree size>\\n[@<answers>\\n]<note>``.

        Answers for rows this process waits for are handed to the resolver; a commit
        notification without answers makes it claim its rows from the table.
        """
        if channel == self.names.pending_channel:
            self.pending_event.set()
            return
        if channel != self.names.commit_channel:
            return
        self._commit_event.set()
        size_text, _, note = payload.partition("\n")
        answered = False
        if note.startswith("@"):
            answers, _, note = note[1:].partition("\n")
            try:
                decoded = decode_answers(answers)
                answered = True
            except ValueError:
                log.warning("a commit notification carries malformed answers; claiming instead")
            else:
                waiting, early = self._waiting, self._early
                for pending_id, index, duplicate in decoded:
                    if pending_id in waiting:
                        self._answers.append((pending_id, index, duplicate))
                    else:  # another process's row, or one of ours whose id is not known yet
                        early[pending_id] = (index, duplicate)
                while len(early) > _EARLY_ANSWERS:
                    early.popitem(last=False)
        if not answered:
            self._claim = True
        if not (size_text.isascii() and size_text.isdigit()):
            self._view_event.set()
            return
        size = int(size_text)
        self._notified_size = max(self._notified_size, size)
        if self._view is not None and size <= self._view.tree_size:
            return  # served already (e.g. this process's own commit, announced to the others)
        if note and size > (self._latest.tree_size if self._latest else -1):
            state = LogState(note.encode("utf-8"), size, b"")
            if self._verified(state):
                self._note_latest(state)
                if self.storage is self.primary and not self.witnessed:
                    self._adopt(state)  # the primary serves reads: nothing to wait for
                    return
        self._view_event.set()

    async def _connect_listener(self) -> None:
        try:
            conn = await asyncpg.connect(self._dsn)
            await conn.add_listener(self.names.commit_channel, self._on_notify)
            await conn.add_listener(self.names.pending_channel, self._on_notify)
        except _DB_ERRORS as exc:
            raise _map_db_error(exc) from exc
        self._listener = conn

    async def _listen_loop(self) -> None:
        """Keep the LISTEN connection alive; reconnect when it is lost (others poll meanwhile)."""
        while True:
            await asyncio.sleep(1.0)
            conn = self._listener
            if conn is not None and not conn.is_closed():
                continue
            self._listener = None
            with contextlib.suppress(StorageError):
                await self._connect_listener()
                self._commit_event.set()
                self._view_event.set()
                self.pending_event.set()

    # -- election ------------------------------------------------------------------------------

    async def _elect_loop(self) -> None:
        while self._final is None:  # a frozen log is never sequenced again
            try:
                if self._leadership is None:
                    await self._try_lead()
                else:
                    await self._check_lead()
            except _DB_ERRORS as exc:
                await self._step_down(f"lost the lock connection ({type(exc).__name__})")
            except Exception as exc:  # a bug must not leave a sequencer without its lock check
                log.exception("unexpected error in the sequencer election")
                await self._step_down(f"election error ({type(exc).__name__})")
            await asyncio.sleep(self.lease_interval)

    async def _try_lead(self) -> None:
        conn = self._lock_conn
        if conn is None or conn.is_closed():
            conn = await asyncpg.connect(
                self._dsn,
                server_settings={"application_name": f"{LEADER_APPLICATION_NAME}{os.getpid()}"},
            )
            conn.add_termination_listener(self._on_lock_lost)
            self._lock_conn = conn
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", self.names.lock_key):
            return
        final = None if self.final is not None else await self.primary.get_meta(FROZEN_META_KEY)
        if self.final is not None or final is not None:
            # Frozen (by this cluster or before it): nothing is ever sequenced again, and a
            # process that has not frozen itself (its settings do not say so) serves it frozen.
            await conn.fetchval("SELECT pg_advisory_unlock($1)", self.names.lock_key)
            if final is not None:
                await self._adopt_final(final)
            return
        leadership = _Leadership(self)
        try:
            await leadership.start()
        except (IntegrityFailure, StorageError) as exc:
            self._last_failure = str(exc)
            log.error("this process holds the sequencer lock but cannot sequence: %s", exc)
            await leadership.stop()
            await conn.fetchval("SELECT pg_advisory_unlock($1)", self.names.lock_key)
            await asyncio.sleep(2.0)
            return
        self._leadership = leadership
        self.takeovers += 1
        log.info("this process (pid %d) now sequences %s", os.getpid(), self.origin)

    async def _check_lead(self) -> None:
        leadership = self._leadership
        assert leadership is not None
        if leadership.failure is not None:
            await self._step_down(leadership.failure)
            return
        conn = self._lock_conn
        if conn is None or conn.is_closed():
            await self._step_down("the lock connection is closed")
            return
        await asyncio.wait_for(conn.fetchval("SELECT 1"), timeout=max(2.0, self.lease_interval))

    def _on_lock_lost(self, conn: Any) -> None:
        """Termination listener of the lock connection: stop sequencing at once."""
        if self._leadership is not None and conn is self._lock_conn:
            asyncio.get_running_loop().create_task(self._step_down("the lock connection ended"))

    async def _step_down(self, reason: str) -> None:
        leadership, self._leadership = self._leadership, None
        conn, self._lock_conn = self._lock_conn, None
        if conn is not None:
            conn.terminate()  # ends the session: PostgreSQL releases the lock
        if leadership is None:
            return
        self._last_failure = reason
        log.warning("this process stops sequencing: %s", reason)
        await leadership.stop()

    # -- freezing ------------------------------------------------------------------------------

    async def freeze(self) -> Published:
        """Freeze the log across the cluster and return its final checkpoint.

        Every process refuses submissions from the first moment. The one that sequences closes
        its sequencer (nothing new reaches it; the rounds in flight finish), takes the newest
        committed checkpoint (with witnesses: the cosigned one once it covers that tree), and
        stores it as the final checkpoint; from then on no process ever sequences the log
        again. Every other process waits for the stored final checkpoint and adopts it once its
        view covers that tree. When the sequencing process dies first, its successor never
        starts sequencing (the stored final checkpoint stops it) or, if the freeze was not
        stored yet, freezes in its turn. Raises StorageError (freezing may be retried).
        """
        self._accepting = False
        while self._final is None:
            try:
                note = await self.primary.get_meta(FROZEN_META_KEY)
            except _DB_ERRORS as exc:
                raise _map_db_error(exc) from exc
            if note is not None:
                if await self._adopt_final(note):
                    break
            else:
                leadership = self._leadership
                if leadership is not None and leadership.failure is None:
                    try:
                        final = await self._close_for_good(leadership)
                    except SequencerStopped:
                        pass  # the sequencer stopped: its successor (or this loop) goes on
                    else:
                        await self.primary.put_meta(FROZEN_META_KEY, final)
                        log.info("log %s frozen by this process", self.origin)
                        continue
            await asyncio.sleep(0.2)
        assert self._final is not None
        await self._step_down("the log is frozen")
        await self._release_waiting()
        return self._final

    async def _release_waiting(self, grace: float = 2.0) -> None:
        """Answer the submitters still waiting on the queue once the log is frozen.

        Rows the sequencer committed before the freeze are answered by the resolver within
        ``grace`` seconds (it claims them at least every second); whatever is still waiting
        then was never sequenced, and nothing will sequence it now: 503 (a retry gets 409).
        """
        if self._waiting:
            await asyncio.sleep(grace)
        for future in list(self._waiting.values()):
            if not future.done():
                future.set_exception(
                    SequencerStopped("the log froze before this entry was sequenced")
                )

    async def _close_for_good(self, leadership: _Leadership) -> bytes:
        """Close the sequencer and return the final checkpoint note to store.

        Raises SequencerStopped when the sequencer stopped meanwhile.
        """
        note, size = await leadership.close()
        if not self.witnessed:
            return note
        while True:  # the published checkpoint is the stored cosigned one (its quorum's)
            published = self._published
            if published is not None and published.checkpoint.tree_size >= size:
                return published.note
            if leadership.failure is not None:
                raise SequencerStopped("the sequencer stopped", retry_after=1)
            with contextlib.suppress(StorageError, *_DB_ERRORS):
                await self._refresh_view()
            await asyncio.sleep(0.2)

    async def _adopt_final(self, note: bytes) -> bool:
        """Serve the stored final checkpoint ``note`` once this process's view covers its tree;
        return whether it is served now.

        Raises IntegrityFailure when it does not match the stored tree.
        """
        try:
            await self._refresh_view()
        except (StorageError, *_DB_ERRORS) as exc:
            log.debug("cannot refresh the served checkpoint: %s", type(exc).__name__)
            return False
        view = self._view
        if view is None:
            return False
        try:
            final, _, _ = open_checkpoint(note, self._verifier)
        except MerkleError as exc:
            raise IntegrityFailure(f"the stored final checkpoint does not verify: {exc}") from None
        if view.tree_size < final.tree_size:
            return False
        await self._restore_final(view.checkpoint)
        return self._final is not None

    # -- submissions ---------------------------------------------------------------------------

    async def submit(self, submissions: Sequence[Submission]) -> list[Sequenced]:
        """Sequence submissions and wait until each is committed; results in the same order.

        In the process that sequences, the submissions go straight to its sequencer, and the
        proofs come from the tiles it just wrote (no queue, no reads). Elsewhere they are
        enqueued for the sequencer, and each result carries an inclusion proof against the
        checkpoint of the commit that answered it. Raises SequencerStopped (503, retry) when no
        sequencer answers within ``wait_timeout``, StorageError when PostgreSQL cannot take the
        entries, LogFrozen when the log is frozen.
        """
        self.check_accepting()
        if not submissions:
            return []
        start = time.perf_counter()
        leadership = self._leadership
        if leadership is not None and leadership.failure is None:
            try:
                results = await leadership.submit(submissions)
            except SequencerStopped:
                if self._leadership is leadership:
                    raise
                # Sequencing moved on while these waited: hand them to the successor. Entries
                # the cut-short round did commit are answered as duplicates with their index.
                results = await self._submit_queued(submissions)
        elif self.local_link:
            results = await self._submit_linked(submissions)
        else:
            results = await self._submit_queued(submissions)
        new = sum(1 for r in results if not r.duplicate)
        if new:
            self.metrics.submissions.labels("new").inc(new)
        if len(results) - new:
            self.metrics.submissions.labels("duplicate").inc(len(results) - new)
        self.metrics.sequencing_latency.observe(time.perf_counter() - start)
        return results

    async def _submit_linked(self, submissions: Sequence[Submission]) -> list[Sequenced]:
        """Hand submissions to the sequencing process over the local link, else the queue."""
        try:
            async with asyncio.timeout(self.wait_timeout):
                return await self._link.submit(submissions)
        except LinkLost:
            return await self._submit_queued(submissions)
        except TimeoutError:
            raise _no_answer_in_time() from None

    async def _submit_queued(self, submissions: Sequence[Submission]) -> list[Sequenced]:
        """Enqueue submissions for the elected sequencer and wait for their answers."""
        loop = asyncio.get_running_loop()
        ids_future: asyncio.Future[list[tuple[int, asyncio.Future[Sequenced]]]]
        ids_future = loop.create_future()
        self._buffer.append(_Enqueue(submissions, ids_future))
        if not self._flushing:
            self._flushing = True
            self._flush_task = loop.create_task(self._flush())
        try:
            async with asyncio.timeout(self.wait_timeout):
                rows = await ids_future
                results = list(await asyncio.gather(*(future for _, future in rows)))
        except TimeoutError:
            raise _no_answer_in_time() from None
        finally:
            if ids_future.done() and not ids_future.cancelled() and not ids_future.exception():
                for pending_id, _ in ids_future.result():
                    self._waiting.pop(pending_id, None)
        return results

    async def _flush(self) -> None:
        """Insert every buffered run of submissions, one statement per round trip."""
        try:
            while self._buffer:
                runs, self._buffer = self._buffer, []
                flat = [s for run in runs for s in run.submissions]
                try:
                    keys = [
                        None if s.idempotency_key is None else encode_key(s.idempotency_key)
                        for s in flat
                    ]
                    row = await self.pool.fetchrow(
                        _ENQUEUE,
                        [s.data for s in flat],
                        [s.leaf_hash for s in flat],
                        keys,
                        [encode_lookup_keys(s.lookup_keys) for s in flat],
                        [s.log_time for s in flat],
                        self.names.pending_channel,
                    )
                except (StorageError, *_DB_ERRORS) as exc:
                    error = exc if isinstance(exc, StorageError) else _map_db_error(exc)
                    for run in runs:
                        if not run.ids.done():
                            run.ids.set_exception(error)
                    continue
                # Waiters are registered here, as soon as the ids are known: the answers may be
                # dispatched before the submitters run again. Answers that arrived even before
                # the ids did (this process was descheduled) were kept in ``_early``.
                loop = asyncio.get_running_loop()
                early = self._early
                offset = 0
                for run in runs:
                    count = len(run.submissions)
                    registered = []
                    for pending in row["ids"][offset : offset + count]:
                        pending_id = int(pending)
                        future: asyncio.Future[Sequenced] = loop.create_future()
                        self._waiting[pending_id] = future
                        registered.append((pending_id, future))
                        answer = early.pop(pending_id, None)
                        if answer is not None:
                            self._answers.append((pending_id, *answer))
                            self._commit_event.set()
                    if run.ids.done():  # the submitter went away (cancelled)
                        for pending_id, _ in registered:
                            self._waiting.pop(pending_id, None)
                    else:
                        run.ids.set_result(registered)
                    offset += count
        finally:
            self._flushing = False

    async def _resolve_loop(self) -> None:
        """Answer waiting submitters after each commit notification.

        The answers come in the notification; when one arrives without them, and every second
        while submitters wait (a lost notification), the answered rows are claimed from the
        table instead. The receipts of every row answered at once are built from one read of
        the tiles they need.
        """
        while True:
            if self._waiting:
                try:
                    await asyncio.wait_for(self._commit_event.wait(), 1.0)
                except TimeoutError:
                    self._claim = True
            else:
                await self._commit_event.wait()
            self._commit_event.clear()
            answered, self._answers = self._answers, []
            claim, self._claim = self._claim, False
            if not self._waiting:
                continue
            waiting = self._waiting
            claimed = [(waiting.pop(i), index, dup) for i, index, dup in answered if i in waiting]
            if claim and waiting:
                try:
                    rows = await self.pool.fetch(_CLAIM, list(waiting))
                except (StorageError, *_DB_ERRORS) as exc:
                    log.debug("cannot claim answered entries: %s", type(exc).__name__)
                    rows = []
                    self._claim = True
                    await asyncio.sleep(0.2)
                claimed += [
                    (waiting.pop(int(row["id"])), int(row["leaf_index"]), row["duplicate"])
                    for row in rows
                    if int(row["id"]) in waiting
                ]
            if not claimed:
                continue
            try:
                results = await self._receipts([(index, dup) for _, index, dup in claimed])
            except (StorageError, SequencerStopped, *_DB_ERRORS) as exc:
                error = (
                    exc
                    if isinstance(exc, StorageError | SequencerStopped)
                    else (_map_db_error(exc))
                )
                for future, _, _ in claimed:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (future, _, _), result in zip(claimed, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def _receipts(self, answers: Sequence[tuple[int, bool]]) -> list[Sequenced]:
        """Return each answer with an inclusion proof from the primary's tiles and checkpoint.

        Raises StorageError, or SequencerStopped if the stored tree does not hold an index yet.
        """
        needed = max(index for index, _ in answers) + 1
        state = self._latest
        if state is None or state.tree_size < needed:
            state = await self.primary.load_state()
        if state is None or state.tree_size < needed:
            raise SequencerStopped("the committed entry is not readable yet", retry_after=1)
        size = state.tree_size
        wanted = [[Node(0, index), *inclusion_nodes(index, size)] for index, _ in answers]
        keys = tiles_for_nodes(node for nodes in wanted for node in nodes)
        tiles = await self._primary_reader.expanded_tiles(keys)

        def expanded(key: tuple[int, int]) -> ExpandedTile:
            rows = tiles.get(key)
            if rows is None:
                raise LookupError(f"tile {key} is not stored")
            return rows

        results = []
        try:
            for (index, duplicate), nodes in zip(answers, wanted, strict=True):
                stored, *hashes = hashes_for_nodes(nodes, expanded)
                proof = build_inclusion_proof(index, size, hashes)
                results.append(
                    Sequenced(index, stored, duplicate, size, state.checkpoint, tuple(proof))
                )
        except LookupError as exc:
            raise SequencerStopped(f"cannot read the proof: {exc}", retry_after=1) from None
        return results


def build_cluster_service(
    settings: Settings, signer: Ed25519Signer, *, witnessed: bool
) -> ClusterLog:
    """Return the (unstarted) cluster front end the settings describe (``settings.clustered``).

    Reads go to ``settings.replica_url`` when set (:class:`server.replica.ReplicaRoutedStorage`).
    Raises ValueError when the database or the replica is not a PostgreSQL URL.
    """
    if not settings.is_postgres:
        raise ValueError("cluster mode (cluster, workers, replica_url) needs a PostgreSQL database")
    primary = PostgresStorage(settings.database)
    read_storage: Storage | None = None
    if settings.replica_url is not None:
        if not settings.replica_url.startswith(("postgresql://", "postgres://")):
            raise ValueError("replica_url must be a postgresql:// URL")
        read_storage = ReplicaRoutedStorage(primary, ReplicaStorage(settings.replica_url))
    return ClusterLog(
        primary,
        signer,
        settings.origin,
        dsn=settings.database,
        read_storage=read_storage,
        batch_size=settings.batch_size,
        batch_period=settings.batch_period_ms / 1000,
        witnessed=witnessed,
        local_link=settings.local_link,
    )
