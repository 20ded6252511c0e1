"""The sequencer: the one writer of a log.

Submissions wait in a queue; a round takes up to ``batch_size`` of them and, in this order:

1. drops duplicates (an idempotency key or leaf hash already in the log or earlier in the batch
   answers with the original index and is never stored twice);
2. assigns consecutive indexes after the current tree size;
3. extends the compact range and the right-edge tiles with the new leaf hashes (pure, on copies);
4. signs the checkpoint of the new tree;
5. commits entries, tiles and the checkpoint in ONE storage transaction, compare-and-swapped on
   the checkpoint the round started from (ARCHITECTURE.md invariant 1);
6. only then adopts the new state, answers the submitters with inclusion proofs computed from the
   tiles it just wrote (invariant 2), and tells subscribers (the witness pusher) about the
   checkpoint.

Rounds start as soon as the previous one ended and work is pending, but no sooner than
``batch_period`` after the previous round started, unless a full batch is waiting or no new
submission arrived for ``batch_idle`` (the queue went quiet: every submitter that was about to
join is in). Under light load an entry waits at most one period; under heavy load, where
submissions keep arriving, batches grow to the period's worth or ``batch_size``; when a fixed
number of clients each wait for their answer (a closed loop), the round starts as soon as they
have all sent, instead of waiting out the period (which would bound the rate at
``clients / (period + commit)``).

Before it signs anything after start-up, and again after any failed commit, the sequencer reloads
its state from storage and proves that the stored tiles reproduce the stored checkpoint's root
(invariant 3). If they do not, it refuses to sign and says why (:class:`IntegrityFailure`).
A lost compare-and-swap means another writer touched the log: the sequencer stops for good.

A failed round is settled without waiting for the next submission: after a back-off the
sequencer reloads the state, so a round that was stored but not answered (a lost commit answer,
a failed high-water write) is still published. Subscribers (publication, the witness collector)
get the newest checkpoint after every commit and after a reload that finds a newer one; when one
of them fails, it is handed the checkpoint again after a back-off. :mod:`server.faults` names the
points before and after each step of a round where tests inject faults.

Rollback: with a :class:`server.highwater.HighWaterMark`, the newest signed checkpoint is also
kept in a file outside the database, written after each commit and before the submitters are
answered. At start-up (and at every reload) a database behind that mark, or holding another
root at the mark's size, is refused (:class:`IntegrityFailure`): it was restored from an older
copy, and signing on it would publish a second history. :meth:`Sequencer.refuse` stops signing
for the same reason when witnesses report a larger tree than the log's.

Clock: log times come from :class:`MonotonicClock`, which never goes backwards while the process
runs and, at start-up, is moved up to the newest stored log time so that a system clock stepped
back across a restart does not make log times go backwards either. A newest entry whose log time
lies in the future of the system clock is reported (:attr:`Sequencer.warnings`, a warning log).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from merkle.checkpoint import Checkpoint, format_checkpoint, open_checkpoint
from merkle.compact import CompactRange
from merkle.errors import MerkleError
from merkle.hashing import EMPTY_ROOT, HASH_SIZE, leaf_hash
from merkle.note import Ed25519Signer, sign_note
from merkle.tiles import TILE_WIDTH, edge_tiles, extend_tiles, tiles_for_size
from merkle.tree import Node, build_inclusion_proof, inclusion_nodes, root_from_hashes, root_nodes
from server.faults import Phase, Step, fault_point
from server.highwater import HighWaterMark
from server.storage.base import (
    Batch,
    CheckpointConflict,
    LogState,
    NewEntry,
    Storage,
    StorageError,
    StorageUnavailable,
)
from server.treeview import (
    EdgeTiles,
    ExpandedTile,
    TreeReader,
    expand_tile,
    extend_expanded,
    hashes_for_nodes,
    inclusion_proofs,
)

__all__ = [
    "DEFAULT_BATCH_IDLE",
    "IntegrityFailure",
    "MonotonicClock",
    "Sequenced",
    "Sequencer",
    "SequencerStopped",
    "Submission",
    "storage_condition",
    "verify_tiles",
]

log = logging.getLogger(__name__)

TileKey = tuple[int, int]

DEFAULT_BATCH_IDLE = 0.002
"""Seconds without a new submission after which a round starts before its period is over."""


class IntegrityFailure(Exception):  # noqa: N818 (it names a state, not a programming error)
    """The stored log does not reproduce its own checkpoint; the log must not sign anything."""


class SequencerStopped(Exception):  # noqa: N818 (it names a state, not a programming error)
    """The sequencer cannot take submissions now (stopped, failed, or storage unavailable).

    ``retry_after`` is set (seconds) when the condition is expected to pass.
    """

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Submission:
    """One entry to append: its exact leaf bytes and what to index it by."""

    data: bytes
    leaf_hash: bytes
    idempotency_key: str | None = None
    lookup_keys: tuple[tuple[str, str], ...] = ()
    log_time: int = 0


@dataclass(frozen=True, slots=True)
class Sequenced:
    """Where a submission landed: its index and an inclusion proof against ``checkpoint``."""

    index: int
    leaf_hash: bytes
    duplicate: bool
    tree_size: int
    checkpoint: bytes
    proof: tuple[bytes, ...]


class MonotonicClock:
    """Wall-clock milliseconds that never go backwards, even when the system clock does."""

    def __init__(self, source: Callable[[], float] = time.time) -> None:
        self._source = source
        self._last = 0

    def wall_ms(self) -> int:
        """Return the source clock in milliseconds, as it is (it may have gone backwards)."""
        return int(self._source() * 1000)

    def now_ms(self) -> int:
        """Return max(the source clock in milliseconds, the last value returned)."""
        now = int(self._source() * 1000)
        if now > self._last:
            self._last = now
        return self._last

    def advance_to(self, ms: int) -> None:
        """Never return less than ``ms`` from now on (called with the newest stored log time)."""
        self._last = max(self._last, ms)


@dataclass(slots=True)
class _Pending:
    submission: Submission
    future: asyncio.Future[Sequenced]


@dataclass(slots=True)
class _State:
    checkpoint: bytes
    compact: CompactRange
    edge: dict[TileKey, bytes] = field(default_factory=dict)
    expanded: dict[TileKey, ExpandedTile] = field(default_factory=dict)
    """Expansions of some ``edge`` tiles (``expand_tile`` of their bytes), kept from the
    rounds that computed them so that the next round extends them instead of starting over,
    and handed to the tree reader with the edge (:meth:`Sequencer.edge_tiles`)."""

    @property
    def tree_size(self) -> int:
        return self.compact.size


def _edge_keys(tree_size: int) -> list[TileKey]:
    return [(t.level, t.index) for t in edge_tiles(tree_size)]


async def verify_tiles(storage: Storage, checkpoint: Checkpoint, *, full: bool) -> None:
    """Check that the stored tiles reproduce ``checkpoint``'s root. Raises IntegrityFailure.

    With ``full``, every stored tile of the tree is read and every level-(L+1) hash recomputed
    from the level-L tile below it, and every stored entry is re-hashed and compared with its
    level-0 tile hash (ARCHITECTURE.md invariant 4), so an altered hash or entry anywhere in the
    tree is found; otherwise only the tiles on the right edge that make up the root are used.
    """
    size = checkpoint.tree_size
    reader = TreeReader(storage, cache_tiles=0)
    try:
        root = await reader.root(size)
    except LookupError as exc:
        raise IntegrityFailure(f"stored tiles do not cover tree size {size}: {exc}") from exc
    if root != checkpoint.root_hash:
        raise IntegrityFailure(
            f"stored tiles give root {root.hex()} at size {size}, "
            f"but the checkpoint says {checkpoint.root_hash.hex()}"
        )
    if not full:
        return
    tiles = tiles_for_size(size)
    by_level: dict[int, list[TileKey]] = {}
    for t in tiles:
        by_level.setdefault(t.level, []).append((t.level, t.index))
    for level in sorted(by_level):
        for upper_key in by_level.get(level + 1, []):
            stored_upper = await storage.read_tiles([upper_key])
            upper_data = stored_upper.get(upper_key)
            if upper_data is None:
                raise IntegrityFailure(f"tile {upper_key} is missing")
            width = len(upper_data) // 32
            start = upper_key[1] * TILE_WIDTH
            below_keys = [(level, start + j) for j in range(width)]
            below = await storage.read_tiles(below_keys)
            for j, key in enumerate(below_keys):
                data = below.get(key)
                if data is None or len(data) != TILE_WIDTH * 32:
                    raise IntegrityFailure(f"tile {key} is missing or not full")
                computed = expand_tile(data)[-1][0]
                if computed != upper_data[j * 32 : (j + 1) * 32]:
                    raise IntegrityFailure(
                        f"tile {key} hashes to {computed.hex()}, but tile {upper_key} holds "
                        f"{upper_data[j * 32 : (j + 1) * 32].hex()} for it"
                    )
                if level == 0:
                    await _verify_entries(storage, key[1], data)
    if size % TILE_WIDTH:
        key = (0, size // TILE_WIDTH)
        partial = (await storage.read_tiles([key])).get(key)
        if partial is None:
            raise IntegrityFailure(f"tile {key} is missing")
        await _verify_entries(storage, key[1], partial[: (size % TILE_WIDTH) * HASH_SIZE])


async def _verify_entries(storage: Storage, tile_index: int, data: bytes) -> None:
    """Re-hash the stored entries under one level-0 tile's hashes and check the leaf-hash index.

    Raises IntegrityFailure naming the first entry whose hash or index row does not match.
    """
    start = tile_index * TILE_WIDTH
    width = len(data) // HASH_SIZE
    entries = await storage.read_entries(start, start + width)
    if len(entries) != width:
        raise IntegrityFailure(f"entries {start} to {start + width - 1} are not all stored")
    hashes = [leaf_hash(entry) for entry in entries]
    for offset, value in enumerate(hashes):
        if value != data[offset * HASH_SIZE : (offset + 1) * HASH_SIZE]:
            raise IntegrityFailure(
                f"entry {start + offset} does not hash to its leaf hash in tile {(0, tile_index)}"
            )
    indexed = await storage.find_leaf_hashes(hashes)
    for offset, value in enumerate(hashes):
        if indexed.get(value) != start + offset:
            raise IntegrityFailure(
                f"the leaf-hash index does not map entry {start + offset}'s leaf hash to it"
            )


class Sequencer:
    """Appends submissions to one log in batches and signs its checkpoints.

    ``batch_period`` and ``batch_idle`` (``None``: wait out the period) shape the rounds as the
    module docstring says; :meth:`stop` answers the submitters of a round it cuts short, and
    those still queued, with :class:`SequencerStopped`.
    """

    def __init__(
        self,
        storage: Storage,
        signer: Ed25519Signer,
        origin: str,
        *,
        batch_size: int = 1000,
        batch_period: float = 0.025,
        clock: MonotonicClock | None = None,
        full_check: bool = True,
        max_pending: int = 100_000,
        batch_idle: float | None = DEFAULT_BATCH_IDLE,
        high_water: HighWaterMark | None = None,
        future_tolerance_ms: int = 60_000,
    ) -> None:
        if signer.name != origin:
            raise ValueError(f"the log key is named {signer.name!r}, not the origin {origin!r}")
        self._storage = storage
        self._signer = signer
        self._verifier = signer.verifier()
        self._origin = origin
        self._batch_size = batch_size
        self._period = batch_period
        self._idle = batch_idle
        self._last_arrival = 0.0
        self._current: list[_Pending] = []
        self._clock = clock or MonotonicClock()
        self._full_check = full_check
        self._max_pending = max_pending
        self._high_water = high_water
        self._mark_unflushed = False
        self._future_tolerance_ms = future_tolerance_ms
        self.warnings: list[str] = []
        """Conditions found at start-up that do not stop the log (a log time in the future)."""
        self._queue: list[_Pending] = []
        self._wakeup = asyncio.Event()
        self._state: _State | None = None
        self._dirty = True
        self._failure: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._subscribers: list[Callable[[bytes], None]] = []
        self._notified: bytes | None = None
        self.reader = TreeReader(storage, edge=self.edge_tiles)
        self.rounds = 0

    # -- public surface ----------------------------------------------------------------------

    @property
    def clock(self) -> MonotonicClock:
        """The log's clock (monotonic milliseconds)."""
        return self._clock

    @property
    def failure(self) -> str | None:
        """Why the sequencer stopped for good, or ``None`` while it is healthy."""
        return self._failure

    @property
    def checkpoint(self) -> bytes | None:
        """The latest committed signed checkpoint, or ``None`` before start-up."""
        return self._state.checkpoint if self._state else None

    @property
    def tree_size(self) -> int:
        """The size of the latest committed tree (0 before start-up)."""
        return self._state.tree_size if self._state else 0

    def edge_tiles(self) -> EdgeTiles | None:
        """The in-memory right-edge tiles at the committed size, for the tree reader."""
        state = self._state
        if state is None or self._dirty:
            return None
        return EdgeTiles(state.tree_size, state.edge, state.expanded)

    def refuse(self, reason: str) -> None:
        """Stop signing for good because of ``reason`` (e.g. witnesses have seen a larger tree).

        Pending and later submissions are refused (503); nothing more is committed or signed.
        """
        if self._failure is None:
            self._stop_for_good(reason, [])

    def subscribe(self, callback: Callable[[bytes], None]) -> None:
        """Call ``callback(checkpoint)`` after each commit of a new checkpoint."""
        self._subscribers.append(callback)

    async def start(self) -> None:
        """Load and verify the stored log (creating the empty tree if new), then run rounds.

        Raises IntegrityFailure when the stored log does not reproduce its checkpoint.
        """
        await self._load(full=self._full_check)
        assert self._state is not None
        self._notified = self._state.checkpoint  # the caller publishes what start-up verified
        self._task = asyncio.create_task(self._run(), name=f"sequencer {self._origin}")

    async def stop(self) -> None:
        """Stop taking rounds; pending submitters are told to retry."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        stopping = SequencerStopped("the log is shutting down", retry_after=1)
        current, self._current = self._current, []
        for p in current:  # a round cut short: its outcome is unknown, the retry tells
            if not p.future.done():
                p.future.set_exception(stopping)
        self._fail_pending(stopping)
        if self._high_water is not None:
            self._high_water.close()

    async def submit(self, submissions: Sequence[Submission]) -> list[Sequenced]:
        """Queue submissions and wait until they are committed; results in the same order.

        Raises SequencerStopped when the log cannot take them (answer 503 and retry).
        """
        if self._failure is not None:
            raise SequencerStopped(f"the log has stopped signing: {self._failure}")
        if self._task is None:
            raise SequencerStopped("the log is not running", retry_after=1)
        if len(self._queue) + len(submissions) > self._max_pending:
            raise SequencerStopped("the log is overloaded", retry_after=1)
        loop = asyncio.get_running_loop()
        pending = [_Pending(s, loop.create_future()) for s in submissions]
        self._queue.extend(pending)
        self._last_arrival = loop.time()
        self._wakeup.set()
        if len(pending) == 1:  # the common single event: no gathering future in between
            return [await pending[0].future]
        return list(await asyncio.gather(*(p.future for p in pending)))

    # -- loading and verification ------------------------------------------------------------

    async def _load(self, *, full: bool = False) -> None:
        state = await self._storage.load_state()
        if state is None:
            await self._create_empty()
            state = await self._storage.load_state()
            if state is None:
                raise IntegrityFailure("the empty tree was committed but cannot be read back")
        verified = await self._verify_state(state, full=full)
        await self._check_high_water(verified)
        await self._adopt_clock(verified.tree_size)
        self._state = verified
        self._dirty = False

    async def _check_high_water(self, state: _State) -> None:
        """Refuse a database behind (or beside) the newest checkpoint signed; then record it.

        Raises IntegrityFailure when the high-water mark is larger than the stored tree, holds
        another root at its size, does not verify, or cannot be read or written.
        """
        mark = self._high_water
        if mark is None:
            return
        try:
            raw = await asyncio.to_thread(mark.read)
        except (OSError, ValueError) as exc:
            raise IntegrityFailure(f"cannot read the high-water mark {mark.path}: {exc}") from exc
        size = state.tree_size
        if raw is not None and raw != state.checkpoint:
            try:
                signed, _, _ = open_checkpoint(raw, self._verifier)
            except MerkleError as exc:
                raise IntegrityFailure(
                    f"the high-water mark {mark.path} does not verify with the log's key: {exc}"
                ) from exc
            if signed.origin != self._origin:
                raise IntegrityFailure(
                    f"the high-water mark {mark.path} is for {signed.origin!r}, "
                    f"not {self._origin!r}"
                )
            if signed.tree_size > size:
                raise IntegrityFailure(
                    f"the database is behind the newest checkpoint this log signed: it holds "
                    f"tree size {size}, the high-water mark {mark.path} size {signed.tree_size} "
                    "(restored from an older copy?); refusing to sign a second history"
                )
            try:
                root = await TreeReader(self._storage, cache_tiles=0).root(signed.tree_size)
            except LookupError as exc:
                raise IntegrityFailure(
                    f"the stored tiles do not cover the high-water mark's size {signed.tree_size}"
                ) from exc
            if root != signed.root_hash:
                raise IntegrityFailure(
                    f"the database holds another tree at size {signed.tree_size} than the "
                    f"checkpoint in the high-water mark {mark.path}; refusing to sign"
                )
        # After a failed flush the page cache may show a note the disk never got (fsyncgate):
        # write and flush it again rather than trust what reads back.
        if raw != state.checkpoint or self._mark_unflushed:
            try:
                await asyncio.to_thread(mark.write, state.checkpoint)
            except OSError as exc:
                self._mark_unflushed = True
                raise StorageUnavailable(
                    f"cannot write the high-water mark {mark.path}: {exc}"
                ) from exc
            self._mark_unflushed = False

    async def _adopt_clock(self, tree_size: int) -> None:
        """Move the clock up to the newest stored log time; warn when it is in the future."""
        if tree_size == 0:
            return
        meta = await self._storage.read_entry_meta(tree_size - 1)
        if meta is None:
            raise IntegrityFailure(f"entry {tree_size - 1} is not stored")
        newest = meta[1]
        self._clock.advance_to(newest)
        ahead = newest - self._clock.wall_ms()
        if ahead > self._future_tolerance_ms:
            warning = (
                f"the newest entry ({tree_size - 1}) has log time {newest}, {ahead // 1000} s "
                "ahead of the system clock; log times will not go backwards, they stay at it "
                "until the clock catches up"
            )
            if warning not in self.warnings:
                self.warnings.append(warning)
            log.warning("%s", warning)

    async def _create_empty(self) -> None:
        compact = CompactRange()
        note = self._sign(0, EMPTY_ROOT)
        batch = Batch(
            entries=(), tiles={}, checkpoint=note, tree_size=0, compact_range=compact.to_bytes()
        )
        await self._storage.commit(None, batch)
        log.info("created the empty log %s", self._origin)

    async def _verify_state(self, state: LogState, *, full: bool) -> _State:
        try:
            checkpoint, _, _ = open_checkpoint(state.checkpoint, self._verifier)
            compact = CompactRange.from_bytes(state.compact_range)
        except MerkleError as exc:
            raise IntegrityFailure(f"the stored checkpoint does not verify: {exc}") from exc
        if checkpoint.origin != self._origin:
            raise IntegrityFailure(
                f"the stored checkpoint is for {checkpoint.origin!r}, not {self._origin!r}"
            )
        if checkpoint.tree_size != state.tree_size or compact.size != state.tree_size:
            raise IntegrityFailure(
                f"stored sizes disagree: checkpoint {checkpoint.tree_size}, "
                f"state {state.tree_size}, compact range {compact.size}"
            )
        if compact.root() != checkpoint.root_hash:
            raise IntegrityFailure("the stored compact range does not reproduce the checkpoint")
        await verify_tiles(self._storage, checkpoint, full=full)
        edge_keys = _edge_keys(state.tree_size)
        edge = await self._storage.read_tiles(edge_keys) if edge_keys else {}
        for key in edge_keys:
            if key not in edge:
                raise IntegrityFailure(f"edge tile {key} is missing")
        return _State(state.checkpoint, compact, dict(edge))

    def _sign(self, tree_size: int, root: bytes) -> bytes:
        text = format_checkpoint(Checkpoint(self._origin, tree_size, root))
        return sign_note(text, [self._signer])

    # -- rounds --------------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = 0.05
        last_start = 0.0
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wakeup.clear()
                # A failed round left an outcome to settle (reload the state), or a subscriber
                # has not taken the newest checkpoint: come back after the back-off even if
                # nothing is submitted, so a quiet log still publishes what it committed.
                settle = self._dirty or not self._notify()
                try:
                    async with asyncio.timeout(backoff if settle else None):
                        await self._wakeup.wait()
                except TimeoutError:
                    if not self._dirty:
                        backoff = min(backoff * 2, 2.0)
                        continue
            await self._gather_batch(last_start)
            batch, self._queue = self._queue[: self._batch_size], self._queue[self._batch_size :]
            self._current = batch
            last_start = loop.time()
            if self._failure is not None:
                self._stop_for_good(self._failure, batch)
                return
            try:
                if self._dirty:
                    await self._load()
                await self._round(batch)
                backoff = 0.05
            except CheckpointConflict as exc:
                self._stop_for_good(f"another writer changed the checkpoint: {exc}", batch)
                return
            except IntegrityFailure as exc:
                self._stop_for_good(str(exc), batch)
                return
            except (StorageError, OSError) as exc:
                self._dirty = True
                retry = SequencerStopped(
                    f"storage unavailable: {storage_condition(exc)}", retry_after=1
                )
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(retry)
                log.warning("round failed, will reload state and retry: %s", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            except Exception as exc:
                # An unexpected bug must not leave submitters hanging or sign on unknown state.
                self._dirty = True
                log.exception("unexpected error in a sequencing round")
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(SequencerStopped("internal error", retry_after=1))
                del exc
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _gather_batch(self, last_start: float) -> None:
        """Wait until the next round may start (see the module docstring).

        Returns at ``last_start + batch_period`` at the latest, at once when a full batch is
        waiting, and earlier when no submission arrived for ``batch_idle`` seconds.
        """
        loop = asyncio.get_running_loop()
        idle = self._idle
        while len(self._queue) < self._batch_size:
            now = loop.time()
            wait = last_start + self._period - now
            if wait <= 0:
                return
            if idle is not None:
                quiet = self._last_arrival + idle - now
                if quiet <= 0:
                    return
                wait = min(wait, quiet)
            await asyncio.sleep(wait)

    def _stop_for_good(self, reason: str, batch: list[_Pending]) -> None:
        self._failure = reason
        log.error("the sequencer stopped and will not sign anything: %s", reason)
        error = SequencerStopped(f"the log has stopped signing: {reason}")
        for p in batch:
            if not p.future.done():
                p.future.set_exception(error)
        self._fail_pending(error)

    def _fail_pending(self, error: SequencerStopped) -> None:
        queue, self._queue = self._queue, []
        for p in queue:
            if not p.future.done():
                p.future.set_exception(error)

    async def _round(self, batch: list[_Pending]) -> None:
        state = self._state
        assert state is not None
        batch = [p for p in batch if not p.future.done()]
        if not batch:
            return
        known_hashes = await self._storage.find_leaf_hashes(
            list({p.submission.leaf_hash for p in batch})
        )
        keys = list({p.submission.idempotency_key for p in batch if p.submission.idempotency_key})
        known_keys = await self._storage.find_idempotency_keys(keys) if keys else {}

        fault_point(Step.ASSIGN_INDEXES, Phase.BEFORE)
        fresh: list[_Pending] = []
        duplicates: list[tuple[_Pending, int]] = []
        size = state.tree_size
        for p in batch:
            sub = p.submission
            original = known_hashes.get(sub.leaf_hash)
            if original is None and sub.idempotency_key is not None:
                original = known_keys.get(sub.idempotency_key)
            if original is not None:
                duplicates.append((p, original))
                continue
            index = size + len(fresh)
            known_hashes[sub.leaf_hash] = index
            if sub.idempotency_key is not None:
                known_keys[sub.idempotency_key] = index
            fresh.append(p)
        fault_point(Step.ASSIGN_INDEXES, Phase.AFTER)

        if fresh:
            await self._commit(state, fresh)
        for p, index in duplicates:
            await self._answer_duplicate(p, index)
        self.rounds += 1

    async def _commit(self, state: _State, fresh: list[_Pending]) -> None:
        old_size = state.tree_size
        leaf_hashes = [p.submission.leaf_hash for p in fresh]
        compact = CompactRange(state.compact.size, state.compact.hashes)
        compact.extend(leaf_hashes)
        new_size = compact.size
        changed = extend_tiles(
            old_size, {level: data for (level, _), data in state.edge.items()}, leaf_hashes
        )
        fault_point(Step.SIGN, Phase.BEFORE)
        note = self._sign(new_size, compact.root())
        fault_point(Step.SIGN, Phase.AFTER, note)
        entries = [
            NewEntry(
                index=old_size + i,
                leaf_hash=p.submission.leaf_hash,
                data=p.submission.data,
                idempotency_key=p.submission.idempotency_key,
                lookup_keys=p.submission.lookup_keys,
                log_time=p.submission.log_time,
            )
            for i, p in enumerate(fresh)
        ]
        batch = Batch(
            entries=entries,
            tiles=changed,
            checkpoint=note,
            tree_size=new_size,
            compact_range=compact.to_bytes(),
        )
        if self._failure is not None:
            raise IntegrityFailure(self._failure)
        try:
            await self._storage.commit(state.checkpoint, batch)
        except BaseException:
            # The commit may or may not have happened: only storage can say, so reload first.
            self._dirty = True
            raise
        if self._high_water is not None:
            try:
                fault_point(Step.RECORD_HIGH_WATER, Phase.BEFORE, note)
                await asyncio.to_thread(self._high_water.write, note)
                fault_point(Step.RECORD_HIGH_WATER, Phase.AFTER, note)
            except OSError:
                # Committed but not recorded: answer 503 (a retry finds the entries), reload,
                # and write the mark again before signing anything on top of this round.
                self._dirty = True
                self._mark_unflushed = True
                raise

        tiles: dict[TileKey, bytes] = {**state.edge, **changed}
        new_edge = {key: tiles[key] for key in _edge_keys(new_size)}
        # Tiles only grow at their right end: an edge tile's expansion from an earlier round
        # is extended by what this round appended to it.
        expanded = {key: rows for key, rows in state.expanded.items() if key not in changed}
        earlier = state.expanded

        def expand(key: TileKey) -> ExpandedTile:
            rows = expanded.get(key)
            if rows is None:
                prefix = earlier.get(key)
                data = tiles[key]
                rows = expand_tile(data) if prefix is None else extend_expanded(prefix, data)
                expanded[key] = rows
            return rows

        self._state = _State(note, compact, new_edge)

        fault_point(Step.ANSWER_SUBMITTERS, Phase.BEFORE, note)
        proofs = inclusion_proofs(old_size, len(fresh), new_size, expand)
        self._state.expanded = {key: expanded[key] for key in new_edge if key in expanded}
        for i, (p, proof) in enumerate(zip(fresh, proofs, strict=True)):
            if not p.future.done():
                p.future.set_result(
                    Sequenced(old_size + i, p.submission.leaf_hash, False, new_size, note, proof)
                )
        fault_point(Step.ANSWER_SUBMITTERS, Phase.AFTER, note)
        self._notify()

    def _notify(self) -> bool:
        """Hand the adopted checkpoint to the subscribers unless they already have it.

        Returns False when a subscriber failed: the checkpoint is handed on again later (the
        run loop comes back to it without waiting for a submission).
        """
        state = self._state
        if state is None or state.checkpoint == self._notified:
            return True
        note = state.checkpoint
        failed = False
        try:
            fault_point(Step.PUBLISH, Phase.BEFORE, note)
            for callback in self._subscribers:
                try:
                    callback(note)
                except Exception:
                    log.exception("checkpoint subscriber failed")
                    failed = True
            fault_point(Step.PUBLISH, Phase.AFTER, note)
        except Exception:
            log.exception("handing the checkpoint to the subscribers failed")
            failed = True
        if not failed:
            self._notified = note
        return not failed

    async def _answer_duplicate(self, p: _Pending, index: int) -> None:
        state = self._state
        assert state is not None
        if p.future.done():
            return
        # The stored entry's leaf hash, not the submission's: a duplicate by idempotency key may
        # carry other bytes, and the proof is for what the log holds at ``index``.
        nodes = inclusion_nodes(index, state.tree_size)
        try:
            stored, *hashes = await self.reader.node_hashes([Node(0, index), *nodes])
        except (LookupError, StorageError) as exc:
            p.future.set_exception(
                SequencerStopped(f"cannot read the proof: {type(exc).__name__}", retry_after=1)
            )
            return
        proof = build_inclusion_proof(index, state.tree_size, hashes)
        p.future.set_result(
            Sequenced(index, stored, True, state.tree_size, state.checkpoint, tuple(proof))
        )


def storage_condition(exc: BaseException) -> str:
    """Name what a storage failure comes down to, for a 503 answer; never its message.

    Follows the ``__cause__`` chain (storage errors are raised from the driver's): an
    ``ENOSPC``, SQLite ``SQLITE_FULL`` or PostgreSQL SQLSTATE 53100 is ``the disk is full``; an
    ``EIO``, SQLite ``SQLITE_IOERR*`` or SQLSTATE 58030 is ``an I/O error``; anything else is
    named by the type of ``exc``. Example: ``storage_condition(OSError(28, "x"))`` is
    ``"the disk is full"``. Never raises.
    """
    cause: BaseException | None = exc
    for _ in range(8):
        if cause is None:
            break
        number = cause.errno if isinstance(cause, OSError) else None
        sqlite_code = getattr(cause, "sqlite_errorcode", None)
        primary = sqlite_code & 0xFF if isinstance(sqlite_code, int) else None
        sqlstate = getattr(cause, "sqlstate", None)
        if number == errno.ENOSPC or primary == _SQLITE_FULL or sqlstate == "53100":
            return "the disk is full"
        if number == errno.EIO or primary == _SQLITE_IOERR or sqlstate == "58030":
            return "an I/O error"
        cause = cause.__cause__
    return type(exc).__name__


_SQLITE_IOERR = 10
_SQLITE_FULL = 13


def root_from_edge(tree_size: int, tiles: dict[TileKey, bytes]) -> bytes:
    """Return the tree root computed from right-edge tiles alone (used by tests and fsck)."""
    rows: dict[TileKey, ExpandedTile] = {}

    def expand(key: TileKey) -> ExpandedTile:
        if key not in rows:
            rows[key] = expand_tile(tiles[key])
        return rows[key]

    return root_from_hashes(hashes_for_nodes(root_nodes(tree_size), expand))
