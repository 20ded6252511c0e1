"""One running log: its storage, key, sequencer, tree reader, publication state and metrics.

The HTTP layer (:mod:`server.app`) is a thin translation of requests into calls on
:class:`LogService`; everything a request may do to the log goes through here.

Publication: without a witness policy every committed checkpoint is published at once. With a
policy, the witness collector (:mod:`server.witnessing`) publishes a checkpoint once its quorum of
cosignatures is met; until then the last published one keeps serving ``GET /checkpoint`` and
receipts.

Freezing (:meth:`LogService.freeze`): the log stops taking submissions (:class:`LogFrozen`, a
``409 log-frozen`` problem naming the successor log when there is one), lets the submissions
already in flight finish, and takes the checkpoint of its final tree (cosigned by its quorum
when it has witnesses, which may take until they answer) as its *final checkpoint*: stored in the
log's own storage (metadata ``frozen_checkpoint``) and from then on the only one it serves.
At start-up a stored final checkpoint is checked against the stored tree (same origin, key,
size and root, else :class:`server.sequencer.IntegrityFailure`) and the log starts frozen.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from merkle.checkpoint import Checkpoint, open_checkpoint, parse_checkpoint
from merkle.errors import MerkleError
from merkle.note import Ed25519Signer, parse_note
from merkle.receipt import Receipt, format_receipt
from server.highwater import HighWaterMark
from server.metrics import LogMetrics
from server.problems import Problem
from server.sequencer import IntegrityFailure, MonotonicClock, Sequenced, Sequencer, Submission
from server.storage.base import Storage
from server.treeview import TreeReader

if TYPE_CHECKING:
    from server.witnessing import WitnessCollector

__all__ = ["FROZEN_META_KEY", "InFlight", "LogFrozen", "LogService", "Published", "Successor"]

log = logging.getLogger(__name__)

FROZEN_META_KEY = "frozen_checkpoint"
"""Storage metadata key of a frozen log's final checkpoint note."""


class InFlight:
    """Counts the submissions being sequenced, so that a freeze can wait until none is left.

    ``with in_flight:`` around each; ``await in_flight.drained()`` returns once none is.
    """

    def __init__(self) -> None:
        """Start with none in flight."""
        self._count = 0
        self._none = asyncio.Event()
        self._none.set()

    def __enter__(self) -> None:
        self._count += 1
        self._none.clear()

    def __exit__(self, *exc: object) -> None:
        self._count -= 1
        if not self._count:
            self._none.set()

    async def drained(self) -> None:
        """Return once nothing is in flight."""
        while self._count:
            await self._none.wait()


@dataclass(frozen=True, slots=True)
class Successor:
    """The log that takes the entries of a frozen one: its name, origin and URL path."""

    name: str
    origin: str
    path: str


class LogFrozen(Problem):
    """A submission to a frozen log: ``409 log-frozen``, naming the successor if there is one.

    Extension members: ``origin`` (this log), ``successor`` (name), ``successor_origin`` and
    ``successor_path`` (where to submit instead), the last three only with a successor.
    """

    def __init__(self, origin: str, successor: Successor | None) -> None:
        extra: dict[str, str] = {"origin": origin}
        detail = f"the log {origin} is frozen: it takes no more entries"
        if successor is not None:
            detail += f"; submit to {successor.origin} at {successor.path}/"
            extra.update(
                successor=successor.name,
                successor_origin=successor.origin,
                successor_path=successor.path + "/",
            )
        super().__init__("log-frozen", detail, extra=extra)


@dataclass(frozen=True, slots=True)
class Published:
    """The newest published checkpoint: the signed note and its parsed body."""

    note: bytes
    checkpoint: Checkpoint


class LogService:
    """A log: sequencing, reading and publishing, over one storage backend."""

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
        witnessed: bool = False,
        high_water: HighWaterMark | None = None,
    ) -> None:
        self.storage = storage
        self.signer = signer
        self.origin = origin
        self.vkey = signer.vkey
        self.metrics = LogMetrics()
        # The children of the per-submission counters, looked up once (``labels`` takes a lock).
        self._counted_new = self.metrics.submissions.labels("new")
        self._counted_duplicate = self.metrics.submissions.labels("duplicate")
        self.sequencer = Sequencer(
            storage,
            signer,
            origin,
            batch_size=batch_size,
            batch_period=batch_period,
            clock=clock,
            full_check=full_check,
            high_water=high_water,
        )
        self.reader: TreeReader = self.sequencer.reader
        self.witnessed = witnessed
        self._published: Published | None = None
        self._verifier = signer.verifier()
        self._publish_listeners: list[Callable[[Published], None]] = []
        self._changed = asyncio.Event()
        self._committed_size = 0
        self.sequencer.subscribe(self._on_commit)
        self.collector: WitnessCollector | None = None
        self.successor: Successor | None = None
        """Where submissions go once this log is frozen (named in :class:`LogFrozen`)."""
        self._accepting = True
        self._in_flight = InFlight()
        self._publication = asyncio.Event()
        self._final: Published | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open storage, verify the stored log, and start sequencing.

        Raises IntegrityFailure (refuse to run) when the stored log does not reproduce its
        checkpoint, and StorageError when the database cannot be opened.
        """
        await self.storage.open()
        await self.sequencer.start()
        note = self.sequencer.checkpoint
        assert note is not None
        self._committed_size = self.sequencer.tree_size
        self.metrics.tree_size.set(self._committed_size)
        published: bytes | None = note
        if self.witnessed:
            published = await self.storage.latest_cosigned_checkpoint()
        if published is not None:
            self._set_published(published)
            self._check_future_cosignatures(published)
        await self._restore_final(note)

    def _check_future_cosignatures(self, note: bytes) -> None:
        """Warn when a stored cosignature is timestamped ahead of the system clock."""
        now = self.sequencer.clock.wall_ms() // 1000
        for signature in parse_note(note).signatures:
            if len(signature.signature) != 72:  # 8-byte timestamp + Ed25519 (tlog-cosignature)
                continue
            timestamp = int.from_bytes(signature.signature[:8], "big")
            if timestamp - now > 60:
                warning = (
                    f"the stored cosigned checkpoint carries a cosignature by {signature.name} "
                    f"timestamped {timestamp - now} s ahead of the system clock"
                )
                self.sequencer.warnings.append(warning)
                log.warning("%s", warning)

    @property
    def warnings(self) -> list[str]:
        """Conditions found at start-up that do not stop the log (times in the future)."""
        return list(self.sequencer.warnings)

    async def stop(self) -> None:
        """Stop sequencing and close storage."""
        await self.sequencer.stop()
        await self.storage.close()

    # -- publication -------------------------------------------------------------------------

    def _on_commit(self, note: bytes) -> None:
        size = self.sequencer.tree_size
        self.metrics.batch_size.observe(size - self._committed_size)
        self._committed_size = size
        self.metrics.tree_size.set(size)
        if not self.witnessed:
            # The sequencer signed this note with the log's key a moment ago: parsing it is
            # enough (notes handed to publish() from elsewhere are verified).
            self._set_published(note, parse_checkpoint(parse_note(note).text))
        self._changed.set()
        self._changed = asyncio.Event()

    def _set_published(self, note: bytes, checkpoint: Checkpoint | None = None) -> None:
        """Publish ``note``; ``checkpoint`` is its body when already known (else verified)."""
        if self._final is not None:
            return  # a frozen log serves its final checkpoint only
        if checkpoint is None:
            checkpoint, _, _ = open_checkpoint(note, self._verifier)
        current = self._published
        if current is not None and checkpoint.tree_size < current.checkpoint.tree_size:
            return
        self._published = Published(note, checkpoint)
        self.metrics.published_size.set(checkpoint.tree_size)
        for listener in self._publish_listeners:
            listener(self._published)
        self._publication.set()
        self._publication = asyncio.Event()

    def publish(self, note: bytes) -> None:
        """Publish a (cosigned) checkpoint note; an older one than the current is ignored."""
        self._set_published(note)

    def on_publish(self, listener: Callable[[Published], None]) -> None:
        """Call ``listener`` with every newly published checkpoint."""
        self._publish_listeners.append(listener)

    async def wait_for_commit(self) -> None:
        """Wait until the next commit (bound it with ``asyncio.timeout``)."""
        await self._changed.wait()

    @property
    def published(self) -> Published | None:
        """The newest published checkpoint, or ``None`` before one exists."""
        return self._published

    @property
    def latest(self) -> tuple[bytes, int] | None:
        """The newest committed signed checkpoint note and its size (may be unpublished)."""
        note = self.sequencer.checkpoint
        if note is None:
            return None
        return note, self.sequencer.tree_size

    @property
    def healthy(self) -> tuple[bool, str]:
        """Whether the log can sign and serve, and why not when it cannot."""
        if self.sequencer.failure is not None:
            return False, self.sequencer.failure
        if self.sequencer.checkpoint is None:
            return False, "no verified checkpoint yet"
        if self.collector is not None and self.collector.ahead:
            ahead = ", ".join(f"{n} at {s}" for n, s in sorted(self.collector.ahead.items()))
            return False, f"witnesses have seen a larger tree than this log's ({ahead})"
        return True, "ok"

    # -- freezing ------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """``active``, ``freezing`` (refusing, final checkpoint not yet taken) or ``frozen``."""
        if self._final is not None:
            return "frozen"
        return "active" if self._accepting else "freezing"

    @property
    def final(self) -> Published | None:
        """The final checkpoint of a frozen log, or ``None`` while it is not frozen."""
        return self._final

    def check_accepting(self) -> None:
        """Raise LogFrozen when the log is frozen or freezing (it takes no more entries)."""
        if not self._accepting:
            raise LogFrozen(self.origin, self.successor)

    async def freeze(self) -> Published:
        """Freeze the log and return its final checkpoint (at once if already frozen).

        Requires a started service. Refuses new submissions from the first moment, waits for
        those in flight, then takes the checkpoint of the final tree: the committed one, or with
        witnesses the published (cosigned) one once it covers the final tree, waiting for the
        witnesses' quorum as long as that takes. Stores it (so the log starts frozen from then
        on) and serves it from then on. Raises StorageError when it cannot be stored (freezing
        may be retried).
        """
        self._accepting = False
        if self._final is not None:
            return self._final
        await self._in_flight.drained()
        size = self.sequencer.tree_size
        if not self.witnessed:
            latest = self.latest
            assert latest is not None, "freeze() requires a started service"
            self._set_published(latest[0])
        while True:
            published = self._published
            if published is not None and published.checkpoint.tree_size >= size:
                break
            await self._publication.wait()
        await self.storage.put_meta(FROZEN_META_KEY, published.note)
        self._final = published
        log.info("log %s frozen at tree size %d", self.origin, size)
        return published

    async def _restore_final(self, committed: bytes) -> None:
        """Start frozen when storage holds a final checkpoint that matches the stored tree,
        whose (verified) checkpoint note is ``committed``.

        Raises IntegrityFailure when the final checkpoint does not verify or does not match.
        """
        note = await self.storage.get_meta(FROZEN_META_KEY)
        if note is None:
            return
        try:
            checkpoint, _, _ = open_checkpoint(note, self._verifier)
        except MerkleError as exc:
            raise IntegrityFailure(f"the stored final checkpoint does not verify: {exc}") from None
        tree = parse_checkpoint(parse_note(committed).text)
        if (checkpoint.tree_size, checkpoint.root_hash) != (tree.tree_size, tree.root_hash):
            raise IntegrityFailure(
                f"the log was frozen at tree size {checkpoint.tree_size}, but the stored tree"
                f" has size {tree.tree_size} or another root"
            )
        self._accepting = False
        self._published = None
        self._set_published(note)
        self._final = self._published

    # -- writes --------------------------------------------------------------------------------

    async def submit(self, submissions: Sequence[Submission]) -> list[Sequenced]:
        """Append entries and wait for their commit; see :meth:`Sequencer.submit`.

        Raises LogFrozen when the log is frozen or freezing.
        """
        self.check_accepting()
        start = time.perf_counter()
        with self._in_flight:
            results = await self.sequencer.submit(submissions)
        elapsed = time.perf_counter() - start
        new = sum(1 for r in results if not r.duplicate)
        if new:
            self._counted_new.inc(new)
        if len(results) - new:
            self._counted_duplicate.inc(len(results) - new)
        self.metrics.sequencing_latency.observe(elapsed)
        return results

    # -- reads ---------------------------------------------------------------------------------

    @property
    def tree_size(self) -> int:
        """The size of the newest committed tree: tiles and entries exist up to it."""
        return self.sequencer.tree_size

    async def receipt_for(self, index: int) -> bytes:
        """Return a C2SP tlog-proof receipt for ``index`` against the newest published checkpoint.

        Requires ``index`` below the published size. Raises LookupError otherwise.
        """
        published = self._published
        if published is None or index >= published.checkpoint.tree_size:
            raise LookupError("the entry is not yet covered by a published checkpoint")
        proof = await self.reader.inclusion_proof(index, published.checkpoint.tree_size)
        return format_receipt(Receipt(index, tuple(proof), published.note))

    def receipt_text(self, result: Sequenced) -> bytes:
        """Return the tlog-proof receipt of a submission result against its own checkpoint."""
        return format_receipt(Receipt(result.index, result.proof, result.checkpoint))

    def checkpoint_text(self, note: bytes) -> str:
        """Return the checkpoint body (no signatures) of a signed note."""
        return parse_note(note).text
