"""The sequencer's per-step fault table (issue 8 item 1), on SQLite and PostgreSQL.

Every step of a round (:class:`server.faults.Step`) fails once, in two modes: just before the
step ("fails and did not persist") and just after it ("fails after it persisted"), on each
backend. What the log must do in each cell is written down in :data:`EXPECTED` (data, not
inferred from a run); each cell runs the log, injects its fault into one round, checks that the
log did what the table says, and then checks the whole log: every acknowledged event has a
valid inclusion proof against the final checkpoint and is stored at its index, no index holds
two events and no event two indexes, every checkpoint seen is consistent with the final one,
the final checkpoint is published and recorded in the high-water mark, and ``etch fsck``
reports the database clean.

How each fault is made (:class:`FaultPlan`):

* the sequencer's own steps (assign indexes, sign, answer submitters, publish) raise
  :class:`server.faults.InjectedFault`, standing for a bug or an exhausted resource;
* recording the high-water mark raises ``OSError(ENOSPC)``;
* storage steps on SQLite raise ``sqlite3.OperationalError`` with ``SQLITE_IOERR`` inside the
  commit transaction, on the storage thread ("after commit": the transaction has committed);
* storage steps on PostgreSQL close the connection's socket (``terminate()``): the backend ends
  its session and the next statement on the connection fails with the driver's own error; right
  after ``COMMIT`` nothing else runs on the connection, so the hook also raises the error asyncpg
  gives for a connection lost mid-operation, though the transaction committed;
* a push to a witness raises ``httpx.ConnectError`` before the request ("did not persist") or
  ``httpx.ReadError`` after the witness cosigned (the answer was lost);
* storing the cosigned checkpoint raises ``StorageUnavailable``; after it is stored and
  published, :class:`server.faults.InjectedFault` stands for a failing publication listener.

The outcomes (:class:`Outcome`): the round's submitters are answered as if nothing happened
(``ANSWERED``: the fault was absorbed, e.g. by the PostgreSQL backend's one retry of an
idempotent commit on a new connection), or they get a retryable refusal (503 with Retry-After)
and their resubmission is appended as new (``RETRY_NEW``: nothing was stored) or answered as a
duplicate with the index the round stored it at (``RETRY_DUPLICATE``). No cell of this table
makes the log stop signing: none of these faults leaves a database that disagrees with itself.

Rerun: ``.venv/bin/python -m pytest -q tests/test_reliability_faults.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import pytest

from merkle.checkpoint import Checkpoint, open_checkpoint
from merkle.hashing import leaf_hash
from merkle.note import Verifier
from merkle.policy import Policy, parse_policy, verify_checkpoint
from merkle.tree import verify_consistency, verify_inclusion
from server.faults import FaultPoint, InjectedFault, Phase, Step, fault_point, install, installed
from server.fsck import fsck
from server.highwater import HighWaterMark
from server.log import LogService
from server.sequencer import Sequenced, SequencerStopped, Submission
from server.storage import open_storage
from server.storage.base import Storage, StorageUnavailable
from server.treeview import TreeReader
from server.witnessing import WitnessCollector
from tests.server_helpers import BACKENDS, ORIGIN, database, make_signer
from tests.test_witnessing import FakeWitness

pytestmark = pytest.mark.anyio


class Mode(enum.Enum):
    """When the fault strikes: before the step took effect, or after."""

    NOT_PERSISTED = "fails and did not persist"
    PERSISTED = "fails after it persisted"

    @property
    def phase(self) -> Phase:
        """The injection point's phase for this mode."""
        return Phase.BEFORE if self is Mode.NOT_PERSISTED else Phase.AFTER


class Outcome(enum.Enum):
    """What the submitters of the faulted round see, and what their resubmission gets."""

    ANSWERED = "carry on: the round's submitters get their indexes and proofs"
    RETRY_NEW = "retry: 503 with Retry-After, nothing stored; resubmitted events get new indexes"
    RETRY_DUPLICATE = (
        "retry: 503 with Retry-After, the round is stored; resubmitted events are answered as "
        "duplicates with the index they were stored at"
    )


A, N, R, D = Outcome.ANSWERED, Mode.NOT_PERSISTED, Outcome.RETRY_NEW, Outcome.RETRY_DUPLICATE
P = Mode.PERSISTED

EXPECTED: dict[tuple[Step, Mode], tuple[Outcome, Outcome]] = {
    # (step, mode): (outcome on SQLite, outcome on PostgreSQL), the fault striking once.
    (Step.ASSIGN_INDEXES, N): (R, R),
    (Step.ASSIGN_INDEXES, P): (R, R),
    (Step.SIGN, N): (R, R),
    (Step.SIGN, P): (R, R),
    # Inside the commit transaction: SQLite rolls back and the round fails; PostgreSQL's
    # backend retries the idempotent commit once on a new connection and the round succeeds.
    (Step.STORE_ENTRIES, N): (R, A),
    (Step.STORE_ENTRIES, P): (R, A),
    (Step.STORE_HASHES_AND_TILES, N): (R, A),
    (Step.STORE_HASHES_AND_TILES, P): (R, A),
    (Step.SWAP_CHECKPOINT, N): (R, A),
    (Step.SWAP_CHECKPOINT, P): (R, A),
    (Step.COMMIT, N): (R, A),
    # Committed, answer lost: SQLite's round fails and the log reloads the stored state;
    # PostgreSQL's retried commit finds its own checkpoint stored and returns.
    (Step.COMMIT, P): (D, A),
    (Step.RECORD_HIGH_WATER, N): (D, D),
    (Step.RECORD_HIGH_WATER, P): (D, D),
    (Step.ANSWER_SUBMITTERS, N): (D, D),
    (Step.ANSWER_SUBMITTERS, P): (A, A),
    (Step.PUBLISH, N): (A, A),
    (Step.PUBLISH, P): (A, A),
    (Step.PUSH_TO_WITNESS, N): (A, A),
    (Step.PUSH_TO_WITNESS, P): (A, A),
    (Step.PUBLISH_COSIGNED, N): (A, A),
    (Step.PUBLISH_COSIGNED, P): (A, A),
}
"""The table: every step in both modes, one outcome per backend."""

EXPECTED_TWICE: dict[tuple[Step, Mode], Outcome] = {
    # PostgreSQL only: the connection also drops during the backend's own retry.
    (Step.COMMIT, N): R,
    (Step.COMMIT, P): D,
}
"""PostgreSQL cells where the fault strikes twice, so the sequencer sees the failure."""

WITNESS_STEPS = frozenset({Step.PUSH_TO_WITNESS, Step.PUBLISH_COSIGNED})
STORAGE_STEPS = frozenset(
    {Step.STORE_ENTRIES, Step.STORE_HASHES_AND_TILES, Step.SWAP_CHECKPOINT, Step.COMMIT}
)


@dataclass(frozen=True, slots=True)
class Cell:
    """One cell of the table: where the fault strikes, how often, and what must happen."""

    step: Step
    mode: Mode
    backend: str
    outcome: Outcome
    fires: int = 1

    @property
    def point(self) -> FaultPoint:
        """The injection point."""
        return FaultPoint(self.step, self.mode.phase)

    @property
    def id(self) -> str:
        """The pytest id, e.g. ``commit-after-sqlite``."""
        twice = "-twice" if self.fires > 1 else ""
        words = self.step.value.replace(" ", "_")
        return f"{words}-{self.mode.phase.value}-{self.backend}{twice}"


def cells() -> Iterator[Cell]:
    """Every cell of :data:`EXPECTED` on both backends, then those of :data:`EXPECTED_TWICE`."""
    for (step, mode), outcomes in EXPECTED.items():
        for backend, outcome in zip(BACKENDS, outcomes, strict=True):
            yield Cell(step, mode, backend, outcome)
    for (step, mode), outcome in EXPECTED_TWICE.items():
        yield Cell(step, mode, "postgres", outcome, fires=2)


CELLS = list(cells())


# -- injecting one fault ------------------------------------------------------------------------


def sqlite_io_error() -> sqlite3.OperationalError:
    """The error SQLite gives when a write reaches a failing disk."""
    error = sqlite3.OperationalError("disk I/O error")
    error.sqlite_errorcode = sqlite3.SQLITE_IOERR
    error.sqlite_errorname = "SQLITE_IOERR"
    return error


@dataclass
class FaultPlan:
    """A :class:`server.faults.FaultHook` that makes one point fail ``fires`` times once armed."""

    cell: Cell
    armed: bool = False
    fired: int = 0
    reached: list[FaultPoint] = field(default_factory=list)

    def __call__(self, point: FaultPoint, context: object) -> None:
        if not self.armed or point != self.cell.point or self.fired >= self.cell.fires:
            return
        self.fired += 1
        self.reached.append(point)
        self.strike(point, context)

    def strike(self, point: FaultPoint, context: object) -> None:
        """Make the step fail the way this kind of step fails in production."""
        step = point.step
        if step in STORAGE_STEPS:
            if isinstance(context, sqlite3.Connection):
                raise sqlite_io_error()
            assert isinstance(context, asyncpg.Connection | asyncpg.pool.PoolConnectionProxy)
            context.terminate()  # close the socket: the server ends the session
            if point == FaultPoint(Step.COMMIT, Phase.AFTER):
                raise asyncpg.ConnectionDoesNotExistError(
                    "connection was closed in the middle of operation"
                )
            return  # the next statement on the closed connection fails by itself
        if step is Step.RECORD_HIGH_WATER:
            raise OSError(errno.ENOSPC, "No space left on device")
        if step is Step.PUSH_TO_WITNESS:
            request = httpx.Request("POST", "http://w1.example/add-checkpoint")
            if point.phase is Phase.BEFORE:
                raise httpx.ConnectError("injected: witness unreachable", request=request)
            raise httpx.ReadError("injected: answer lost after the witness cosigned")
        if step is Step.PUBLISH_COSIGNED and point.phase is Phase.BEFORE:
            raise StorageUnavailable("injected: cannot store the cosigned checkpoint")
        raise InjectedFault(f"injected {point}")


# -- the log under test ---------------------------------------------------------------------------


@dataclass
class Running:
    """A running log (with one fake witness when witnessed) and what its clients saw."""

    service: LogService
    verifier: Verifier
    mark: HighWaterMark
    collector: WitnessCollector | None = None
    witness: FakeWitness | None = None
    policy: Policy | None = None
    acks: list[tuple[bytes, Sequenced]] = field(default_factory=list)

    async def submit(self, events: Sequence[bytes]) -> list[Sequenced]:
        """Submit ``events`` in one call (one round), record and return the answers."""
        results = await self.service.submit([submission(e) for e in events])
        self.acks += list(zip(events, results, strict=True))
        return results


def submission(data: bytes) -> Submission:
    """A submission of raw leaf bytes with an idempotency key derived from them."""
    return Submission(data, leaf_hash(data), idempotency_key="client\x00" + data.decode())


async def eventually(condition: Callable[[], bool], what: str) -> None:
    """Wait up to 10 s for ``condition()`` to hold."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def published_size(log: Running) -> int:
    """The size of the published checkpoint (-1 before one)."""
    published = log.service.published
    return -1 if published is None else published.checkpoint.tree_size


@pytest.fixture(params=CELLS, ids=[c.id for c in CELLS])
def cell(request: pytest.FixtureRequest) -> Cell:
    cell: Cell = request.param
    return cell


@pytest.fixture
async def url(cell: Cell, request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with database(cell.backend, request, tmp_path) as opened:
        yield opened


@pytest.fixture
async def running(cell: Cell, url: str, tmp_path: Path) -> AsyncIterator[Running]:
    """The log of one cell, witnessed for the witness steps."""
    async with start_log(url, tmp_path, witnessed=cell.step in WITNESS_STEPS) as log:
        yield log


@contextlib.asynccontextmanager
async def start_log(url: str, tmp_path: Path, *, witnessed: bool) -> AsyncIterator[Running]:
    """Run a log with a high-water mark on ``url``; witnessed: one fake witness, quorum 1."""
    signer = make_signer()
    mark = HighWaterMark(tmp_path / "checkpoint.hwm")
    service = LogService(
        open_storage(url),
        signer,
        ORIGIN,
        batch_period=0.001,
        witnessed=witnessed,
        high_water=mark,
    )
    await service.start()
    log = Running(service, signer.verifier(), mark)
    client: httpx.AsyncClient | None = None
    try:
        if witnessed:
            witness = FakeWitness("w1", signer.verifier())
            text = f"log {signer.vkey}\nwitness w1 {witness.signer.vkey} http://w1.example\n"
            policy = parse_policy(text + "group all 1 w1\nquorum all\n")
            client = httpx.AsyncClient(transport=httpx.MockTransport(witness.handle))
            collector = WitnessCollector(service, policy, client=client, retry_limit=0.1)
            service.collector = collector
            await collector.start()
            log.collector, log.witness, log.policy = collector, witness, policy
        yield log
    finally:
        if log.collector is not None:
            await log.collector.stop()
        if client is not None:
            await client.aclose()
        await service.stop()


# -- the table ------------------------------------------------------------------------------------


ROUND_A = [b"a-%d" % i for i in range(3)]
ROUND_B = [b"b-%d" % i for i in range(3)]
ROUND_C = [b"c-%d" % i for i in range(2)]


async def test_fault_cell(
    cell: Cell, running: Running, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Inject the cell's fault into round B; the log does what the table says, and stays whole."""
    caplog.set_level(logging.INFO, logger="server.storage.postgres")
    log = running
    plan = FaultPlan(cell)
    with installed(plan):
        first = await log.submit(ROUND_A)
        assert [r.index for r in first] == [0, 1, 2]
        await eventually(lambda: published_size(log) == 3, "round A published")

        plan.armed = True
        try:
            outcome: list[Sequenced] | SequencerStopped = await log.submit(ROUND_B)
        except SequencerStopped as exc:
            outcome = exc
        await eventually(lambda: plan.fired == cell.fires, f"the fault {cell.point} to strike")
        plan.armed = False

        stored = await log.service.storage.load_state()
        assert stored is not None
        if cell.outcome is Outcome.ANSWERED:
            assert isinstance(outcome, list), f"expected the round answered, got {outcome}"
            assert stored.tree_size == 6
        else:
            assert isinstance(outcome, SequencerStopped), "expected a refusal, got answers"
            assert outcome.retry_after is not None, f"not retryable: {outcome}"
            # Nothing stored when the round is retried as new; all of it when as duplicates.
            assert stored.tree_size == (3 if cell.outcome is Outcome.RETRY_NEW else 6)
            if cell.outcome is Outcome.RETRY_DUPLICATE:
                # The log settles the failed round and publishes what it stored by itself,
                # without waiting for the clients to come back.
                await eventually(lambda: published_size(log) == 6, "the stored round published")
            outcome = await log.submit(ROUND_B)  # the clients resubmit after the 503
        duplicate = cell.outcome is Outcome.RETRY_DUPLICATE
        assert [(r.index, r.duplicate) for r in outcome] == [(i, duplicate) for i in (3, 4, 5)]
        await eventually(lambda: published_size(log) == 6, "round B published")
        check_where_it_struck(cell, log, caplog.messages)
        assert log.service.sequencer.failure is None
        assert log.service.healthy == (True, "ok")

        last = await log.submit(ROUND_C)
        assert [(r.index, r.duplicate) for r in last] == [(6, False), (7, False)]
        # Publication catches up with the committed tree, also after a failed publication.
        await eventually(lambda: published_size(log) == 8, "the final checkpoint published")
    await check_whole_log(log)
    await check_offline(url, log.verifier)


def check_where_it_struck(cell: Cell, log: Running, messages: list[str]) -> None:
    """The fault really was what the cell says: a lost connection, a witness that cosigned."""
    if cell.backend == "postgres" and cell.step in STORAGE_STEPS:
        lost = [m for m in messages if m.startswith("PostgreSQL connection lost")]
        assert len(lost) == 1, messages  # the backend retried once on a new connection
    if cell.step is Step.PUSH_TO_WITNESS:
        assert log.witness is not None
        seen = log.witness.seen
        if cell.mode is Mode.NOT_PERSISTED:  # the first push never reached the witness
            assert seen.count((3, 6)) == 1, seen
        else:  # it cosigned, the answer was lost: the next push learns its size from a 409
            assert seen.count((3, 6)) == 2, seen
            assert (6, 6) in seen, seen


# -- the integrity check --------------------------------------------------------------------------


async def check_whole_log(log: Running) -> None:
    """Every acknowledgement holds against the final checkpoint; storage is one history."""
    storage: Storage = log.service.storage
    state = await storage.load_state()
    assert state is not None
    final, _, _ = open_checkpoint(state.checkpoint, log.verifier)
    assert log.service.sequencer.checkpoint == state.checkpoint
    size = final.tree_size

    stored: list[bytes] = []
    while len(stored) < size:
        chunk = await storage.read_entries(len(stored), min(size, len(stored) + 256))
        assert chunk, f"entries stop at {len(stored)} of {size}"
        stored += chunk
    assert await storage.read_entries(size, size + 1) == [], "an entry beyond the tree size"
    assert len({leaf_hash(e) for e in stored}) == size, "an event is stored twice"

    reader = TreeReader(storage, cache_tiles=0)  # proofs from the stored tiles only
    index_of: dict[bytes, int] = {}
    seen: dict[int, Checkpoint] = {}
    for data, result in log.acks:
        assert index_of.setdefault(data, result.index) == result.index, "two indexes for one event"
        assert result.leaf_hash == leaf_hash(data)
        own, _, _ = open_checkpoint(result.checkpoint, log.verifier)
        assert own.tree_size == result.tree_size
        verify_inclusion(leaf_hash(data), result.index, own.tree_size, result.proof, own.root_hash)
        seen.setdefault(own.tree_size, own)
        assert seen[own.tree_size] == own, f"two checkpoints at size {own.tree_size}"
        proof = await reader.inclusion_proof(result.index, size)
        verify_inclusion(leaf_hash(data), result.index, size, proof, final.root_hash)
        assert stored[result.index] == data
    assert len(set(index_of.values())) == len(index_of), "one index for two events"
    assert set(index_of) == set(stored), "stored events and acknowledged events differ"

    history = await storage.checkpoint_history(limit=1000)
    sizes = []
    for note in history:
        checkpoint, _, _ = open_checkpoint(note, log.verifier)
        sizes.append(checkpoint.tree_size)
        assert seen.setdefault(checkpoint.tree_size, checkpoint) == checkpoint
    assert sizes == sorted(set(sizes)), sizes
    assert history[-1] == state.checkpoint
    for checkpoint in seen.values():
        proof = await reader.consistency_proof(checkpoint.tree_size, size)
        verify_consistency(checkpoint.tree_size, size, checkpoint.root_hash, final.root_hash, proof)

    published = log.service.published
    assert published is not None
    assert published.checkpoint == final
    if log.policy is not None:
        verify_checkpoint(log.policy, published.note)
        assert await storage.latest_cosigned_checkpoint() == published.note
    assert await asyncio.to_thread(log.mark.read) == state.checkpoint


async def check_offline(url: str, verifier: Verifier) -> None:
    """``etch fsck`` on a fresh connection to the database reports it clean."""
    storage = open_storage(url)
    await storage.open()
    try:
        report = await fsck(storage, verifier)
    finally:
        await storage.close()
    assert report.ok, [str(p) for p in report.problems]
    assert report.tree_size == 8


# -- the hooks themselves -------------------------------------------------------------------------


def test_table_covers_every_point() -> None:
    """Each step appears in the table in both modes; the table is data, not a run's record."""
    assert set(EXPECTED) == {(step, mode) for step in Step for mode in Mode}
    assert len(CELLS) == 2 * len(EXPECTED) + len(EXPECTED_TWICE)
    assert len({c.id for c in CELLS}) == len(CELLS)


def test_no_hook_is_a_no_op_and_installed_restores() -> None:
    """Without a hook the points do nothing; ``installed`` nests and restores."""
    fault_point(Step.COMMIT, Phase.AFTER, object())
    calls: list[tuple[FaultPoint, object]] = []

    def outer(point: FaultPoint, context: object) -> None:
        calls.append((point, context))

    def inner(point: FaultPoint, context: object) -> None:
        raise InjectedFault(str(point))

    with installed(outer):
        fault_point(Step.SIGN, Phase.BEFORE, "ctx")
        with installed(inner), pytest.raises(InjectedFault, match="after commit"):
            fault_point(Step.COMMIT, Phase.AFTER)
        fault_point(Step.PUBLISH, Phase.AFTER)
    fault_point(Step.PUBLISH, Phase.BEFORE)
    assert calls == [
        (FaultPoint(Step.SIGN, Phase.BEFORE), "ctx"),
        (FaultPoint(Step.PUBLISH, Phase.AFTER), None),
    ]
    assert install(None) is None


ROUND_ORDER = {
    "sqlite": [
        Step.ASSIGN_INDEXES,
        Step.SIGN,
        Step.STORE_ENTRIES,
        Step.STORE_HASHES_AND_TILES,
        Step.SWAP_CHECKPOINT,
        Step.COMMIT,
        Step.RECORD_HIGH_WATER,
        Step.ANSWER_SUBMITTERS,
        Step.PUBLISH,
    ],
    "postgres": [
        Step.ASSIGN_INDEXES,
        Step.SIGN,
        Step.SWAP_CHECKPOINT,
        Step.STORE_ENTRIES,
        Step.STORE_HASHES_AND_TILES,
        Step.COMMIT,
        Step.RECORD_HIGH_WATER,
        Step.ANSWER_SUBMITTERS,
        Step.PUBLISH,
    ],
}
"""The order in which one healthy round reaches the points (the module docstring's order)."""


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_round_reaches_every_point_in_order(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A healthy witnessed round passes each point once, before then after, in round order."""
    reached: list[FaultPoint] = []

    def record(point: FaultPoint, context: object) -> None:
        reached.append(point)

    async with (
        database(backend, request, tmp_path) as url,
        start_log(url, tmp_path, witnessed=True) as log,
    ):
        await eventually(lambda: published_size(log) == 0, "the empty tree published")
        with installed(record):
            await log.submit([b"one"])
            await eventually(lambda: published_size(log) == 1, "size 1 published")
    expected = [
        FaultPoint(step, phase)
        for step in [*ROUND_ORDER[backend], Step.PUSH_TO_WITNESS, Step.PUBLISH_COSIGNED]
        for phase in Phase
    ]
    assert reached == expected
