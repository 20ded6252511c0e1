"""One conformance suite for the witness storage, run against SQLite and PostgreSQL.

Every test runs twice: on a SQLite file in ``tmp_path`` and on a fresh PostgreSQL database of
the throwaway server in ``tests/pg.py``. Storage treats notes and documents as opaque bytes, so
the values here are small stand-ins.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from witness.errors import StorageError
from witness.storage import (
    Decision,
    LogState,
    Record,
    StoredCheckpoint,
    WitnessStorage,
    open_storage,
)

pytestmark = pytest.mark.anyio

ORIGIN = "example.com/log"
OTHER = "example.org/other"


@dataclass(frozen=True, slots=True)
class Place:
    """Where a backend keeps its data."""

    kind: str
    url: str


@pytest.fixture(params=["sqlite", "postgres"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Place:
    if request.param == "sqlite":
        return Place("sqlite", str(tmp_path / "witness.sqlite3"))
    return Place("postgres", request.getfixturevalue("pg_database"))


@pytest.fixture
async def storage(place: Place) -> AsyncIterator[WitnessStorage]:
    opened = await open_storage(place.url)
    try:
        yield opened
    finally:
        await opened.close()


def checkpoint(size: int, origin: str = ORIGIN, variant: bytes = b"") -> StoredCheckpoint:
    root = hashlib.sha256(b"root %d" % size + variant).digest()
    note = b"%s\n%d\nroot%s\n\n\xe2\x80\x94 sig\n" % (origin.encode(), size, variant)
    return StoredCheckpoint(origin, size, root, note, 1_700_000_000_000 + size)


def record(n: int, origin: str = ORIGIN, kind: str = "same-size") -> Record:
    return Record(
        origin=origin,
        kind=kind,
        fingerprint=hashlib.sha256(b"record %d" % n).digest(),
        document=b'{"n": %d}\n' % n,
        recorded_at=1_700_000_000_000 + n,
    )


async def put(storage: WitnessStorage, new: StoredCheckpoint) -> LogState:
    def decide(state: LogState) -> Decision[LogState]:
        return Decision(state, checkpoint=new)

    return (await storage.update(new.origin, decide)).result


async def append_evidence(storage: WitnessStorage, new: Record) -> None:
    def decide(state: LogState) -> Decision[None]:
        return Decision(None, evidence=(new,))

    await storage.update(new.origin, decide)


# -- reads on an empty store --------------------------------------------------------------


async def test_empty(storage: WitnessStorage) -> None:
    assert await storage.latest(ORIGIN) is None
    assert await storage.latest_all() == []
    assert await storage.evidence_counts() == {}
    assert await storage.list_evidence() == []
    assert await storage.list_refused(ORIGIN) == []
    assert await storage.get_evidence(1) is None
    assert await storage.get_evidence(0) is None


# -- update: the atomic check-and-persist -------------------------------------------------


async def test_update_shows_state_and_stores(storage: WitnessStorage) -> None:
    seen = await put(storage, checkpoint(5))
    assert seen == LogState(ORIGIN, None, 0)
    assert seen.tree_size == 0
    assert not seen.blocked
    assert await storage.latest(ORIGIN) == checkpoint(5)
    seen = await put(storage, checkpoint(9))
    assert seen.checkpoint == checkpoint(5)
    assert seen.tree_size == 5
    assert await storage.latest(ORIGIN) == checkpoint(9)


async def test_same_size_replaces_note(storage: WitnessStorage) -> None:
    await put(storage, checkpoint(5))
    again = StoredCheckpoint(ORIGIN, 5, checkpoint(5).root_hash, b"newer note\n", 99)
    await put(storage, again)
    assert await storage.latest(ORIGIN) == again


async def test_decision_without_writes_changes_nothing(storage: WitnessStorage) -> None:
    await put(storage, checkpoint(3))
    applied = await storage.update(ORIGIN, lambda state: Decision("refused"))
    assert applied.result == "refused"
    assert applied.evidence_ids == applied.refused_ids == ()
    assert await storage.latest(ORIGIN) == checkpoint(3)


async def test_decide_raising_writes_nothing(storage: WitnessStorage) -> None:
    await put(storage, checkpoint(3))

    def decide(state: LogState) -> Decision[None]:
        raise ValueError("decided to fail")

    with pytest.raises(ValueError, match="decided to fail"):
        await storage.update(ORIGIN, decide)
    assert await storage.latest(ORIGIN) == checkpoint(3)
    assert await storage.list_evidence() == []


async def test_never_rolls_back(storage: WitnessStorage) -> None:
    await put(storage, checkpoint(10))
    with pytest.raises(StorageError, match="roll back"):
        await put(storage, checkpoint(9))
    assert await storage.latest(ORIGIN) == checkpoint(10)


async def test_refuses_other_origin(storage: WitnessStorage) -> None:
    with pytest.raises(StorageError):
        await storage.update(ORIGIN, lambda state: Decision(None, checkpoint=checkpoint(1, OTHER)))
    with pytest.raises(StorageError):
        await storage.update(ORIGIN, lambda state: Decision(None, evidence=(record(1, OTHER),)))
    assert await storage.latest_all() == []
    assert await storage.list_evidence() == []


async def test_origins_are_independent(storage: WitnessStorage) -> None:
    await put(storage, checkpoint(7))
    await put(storage, checkpoint(2, OTHER))
    assert [c.origin for c in await storage.latest_all()] == [ORIGIN, OTHER]
    assert (await storage.latest(OTHER)) == checkpoint(2, OTHER)


async def test_concurrent_updates_serialize(storage: WitnessStorage) -> None:
    """20 read-modify-write updates at once: none lost, each saw a distinct size."""
    seen: list[int] = []

    def grow(state: LogState) -> Decision[int]:
        size = state.tree_size + 1
        seen.append(state.tree_size)
        return Decision(size, checkpoint=checkpoint(size))

    results = await asyncio.gather(*(storage.update(ORIGIN, grow) for _ in range(20)))
    assert sorted(a.result for a in results) == list(range(1, 21))
    assert sorted(seen) == list(range(20))
    latest = await storage.latest(ORIGIN)
    assert latest is not None
    assert latest.tree_size == 20


async def test_concurrent_updates_across_instances(storage: WitnessStorage, place: Place) -> None:
    """Two storage objects on one database (two processes' worth) still serialize."""
    second = await open_storage(place.url)

    def grow(state: LogState) -> Decision[int]:
        size = state.tree_size + 1
        return Decision(size, checkpoint=checkpoint(size))

    try:
        results = await asyncio.gather(
            *(s.update(ORIGIN, grow) for _ in range(10) for s in (storage, second))
        )
    finally:
        await second.close()
    assert sorted(a.result for a in results) == list(range(1, 21))


async def test_a_failing_update_among_concurrent_ones(storage: WitnessStorage) -> None:
    """Updates committed together (SQLite group commit) fail or succeed one by one."""

    def grow(state: LogState) -> Decision[int]:
        size = state.tree_size + 1
        return Decision(size, checkpoint=checkpoint(size))

    def fail(state: LogState) -> Decision[int]:
        raise ValueError("this one fails")

    def write_then_fail(state: LogState) -> Decision[int]:
        return Decision(0, checkpoint=checkpoint(state.tree_size - 1 if state.tree_size else 0))

    jobs = [grow] * 4 + [fail] + [grow] * 4 + [write_then_fail] + [grow] * 2
    results = await asyncio.gather(
        *(storage.update(ORIGIN, job) for job in jobs), return_exceptions=True
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    assert len(failures) in (1, 2)  # write_then_fail only fails once the size is above 0
    assert any(isinstance(f, ValueError) for f in failures)
    latest = await storage.latest(ORIGIN)
    assert latest is not None
    assert latest.tree_size == 10


# -- records ------------------------------------------------------------------------------


async def test_evidence_blocks_and_dedups(storage: WitnessStorage) -> None:
    await put(storage, checkpoint(4))
    applied = await storage.update(
        ORIGIN, lambda state: Decision(state.blocked, evidence=(record(1),))
    )
    assert applied.result is False
    assert len(applied.evidence_ids) == 1
    again = await storage.update(
        ORIGIN, lambda state: Decision(state.blocked, evidence=(record(1),))
    )
    assert again.result is True
    assert again.evidence_ids == ()
    assert await storage.evidence_counts() == {ORIGIN: 1}
    stored = await storage.get_evidence(applied.evidence_ids[0])
    assert stored is not None
    assert (stored.origin, stored.kind, stored.document) == (ORIGIN, "same-size", b'{"n": 1}\n')
    assert stored.fingerprint == record(1).fingerprint
    assert stored.recorded_at == record(1).recorded_at


async def test_evidence_listing_and_paging(storage: WitnessStorage) -> None:
    for n in range(5):
        origin = ORIGIN if n % 2 == 0 else OTHER
        await append_evidence(storage, record(n, origin))
    everything = await storage.list_evidence()
    assert [r.document for r in everything] == [b'{"n": %d}\n' % n for n in range(5)]
    ids = [r.id for r in everything]
    assert ids == sorted(ids)
    page = await storage.list_evidence(after=ids[1], limit=2)
    assert [r.id for r in page] == ids[2:4]
    mine = await storage.list_evidence(ORIGIN)
    assert [r.document for r in mine] == [b'{"n": %d}\n' % n for n in (0, 2, 4)]
    assert await storage.evidence_counts() == {ORIGIN: 3, OTHER: 2}
    with pytest.raises(StorageError):
        await storage.list_evidence(limit=0)
    with pytest.raises(StorageError):
        await storage.list_evidence(limit=1001)


async def test_refused_records_do_not_block(storage: WitnessStorage) -> None:
    applied = await storage.update(
        ORIGIN,
        lambda state: Decision(None, refused=(record(7, kind="submitted-proof-failed"),)),
    )
    assert len(applied.refused_ids) == 1
    assert applied.evidence_ids == ()
    state = (await storage.update(ORIGIN, lambda state: Decision(state))).result
    assert not state.blocked
    refused = await storage.list_refused()
    assert [r.kind for r in refused] == ["submitted-proof-failed"]
    assert await storage.list_evidence() == []
    again = await storage.update(
        ORIGIN,
        lambda state: Decision(None, refused=(record(7, kind="submitted-proof-failed"),)),
    )
    assert again.refused_ids == ()


async def test_checkpoint_and_records_commit_together(storage: WitnessStorage) -> None:
    applied = await storage.update(
        ORIGIN,
        lambda state: Decision(
            "both", checkpoint=checkpoint(3), evidence=(record(1),), refused=(record(2),)
        ),
    )
    assert applied.result == "both"
    assert await storage.latest(ORIGIN) == checkpoint(3)
    assert len(await storage.list_evidence()) == len(await storage.list_refused()) == 1


# -- durability, schema, lifecycle --------------------------------------------------------


async def test_reopen_keeps_everything(storage: WitnessStorage, place: Place) -> None:
    await put(storage, checkpoint(12))
    await storage.update(ORIGIN, lambda state: Decision(None, evidence=(record(3),)))
    await storage.close()
    reopened = await open_storage(place.url)
    try:
        assert await reopened.latest(ORIGIN) == checkpoint(12)
        assert await reopened.evidence_counts() == {ORIGIN: 1}
    finally:
        await reopened.close()


async def test_closed_storage_refuses(place: Place) -> None:
    opened = await open_storage(place.url)
    await opened.close()
    await opened.close()
    with pytest.raises(StorageError):
        await opened.latest(ORIGIN)
    with pytest.raises(StorageError):
        await opened.update(ORIGIN, lambda state: Decision(None))


async def test_records_are_append_only_in_the_database(
    storage: WitnessStorage, place: Place
) -> None:
    """Triggers refuse UPDATE/DELETE of records and lowering a size, even by hand."""
    await put(storage, checkpoint(8))
    await storage.update(ORIGIN, lambda state: Decision(None, evidence=(record(1),)))
    if place.kind == "sqlite":
        connection = sqlite3.connect(place.url)
        try:
            for statement in (
                "UPDATE evidence SET kind = 'x'",
                "DELETE FROM evidence",
                "UPDATE checkpoints SET tree_size = 1",
                "DELETE FROM checkpoints",
            ):
                with pytest.raises(sqlite3.DatabaseError):
                    connection.execute(statement)
        finally:
            connection.close()
    else:
        connection = await asyncpg.connect(place.url)
        try:
            for statement in (
                "UPDATE witness_evidence SET kind = 'x'",
                "DELETE FROM witness_evidence",
                "UPDATE witness_checkpoints SET tree_size = 1",
                "DELETE FROM witness_checkpoints",
            ):
                with pytest.raises(asyncpg.PostgresError):
                    await connection.execute(statement)
        finally:
            await connection.close()
    assert await storage.latest(ORIGIN) == checkpoint(8)
    assert await storage.evidence_counts() == {ORIGIN: 1}


async def test_newer_schema_is_refused(storage: WitnessStorage, place: Place) -> None:
    await storage.close()
    if place.kind == "sqlite":
        connection = sqlite3.connect(place.url)
        connection.execute("PRAGMA user_version = 99")
        connection.commit()
        connection.close()
    else:
        connection = await asyncpg.connect(place.url)
        await connection.execute("UPDATE witness_schema SET version = 99")
        await connection.close()
    with pytest.raises(StorageError, match="newer"):
        await open_storage(place.url)


async def test_open_storage_locations(tmp_path: Path) -> None:
    opened = await open_storage(f"sqlite://{tmp_path}/by-url.sqlite3")
    await opened.close()
    assert (tmp_path / "by-url.sqlite3").exists()
    with pytest.raises(StorageError, match="postgresql"):
        await open_storage("mysql://localhost/witness")
