"""One conformance suite for every storage backend (ARCHITECTURE.md "Storage").

Every test runs against SQLite (a file in ``tmp_path``) and PostgreSQL (a fresh database on the
throwaway server of ``tests/pg.py``). Storage treats checkpoints, compact ranges and tile
contents as opaque bytes, so the batches here are built by :class:`LogModel`, a small model of
the sequencer: leaf hashes are RFC 6962 leaf hashes of the entry bytes, level-0 tiles the
concatenated leaf hashes, checkpoints distinct byte strings per tree size.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from merkle.hashing import leaf_hash
from server.storage import (
    Batch,
    CheckpointConflict,
    IntegrityError,
    LookupHit,
    NewEntry,
    OAuthStorage,
    PostgresStorage,
    Principal,
    PrincipalKey,
    SQLiteStorage,
    Storage,
    StorageError,
    open_storage,
)
from server.storage.base import leading_entries

pytestmark = pytest.mark.anyio


@given(
    start=st.integers(0, 2**40),
    offsets=st.sets(st.integers(0, 40), max_size=40),
)
def test_leading_entries_match_a_naive_scan(start: int, offsets: set[int]) -> None:
    rows = [(start + k, k.to_bytes(2, "big")) for k in sorted(offsets)]
    naive: list[bytes] = []
    expected = start
    for index, data in rows:
        if index != expected:
            break
        naive.append(data)
        expected += 1
    assert leading_entries(rows, start) == naive


def test_leading_entries_known_answers() -> None:
    assert leading_entries([(5, b"a"), (6, b"b"), (8, b"c")], 5) == [b"a", b"b"]
    assert leading_entries([(5, b"a"), (6, b"b")], 5) == [b"a", b"b"]
    assert leading_entries([(6, b"b"), (7, b"c")], 5) == []
    assert leading_entries([], 5) == []


TILE_WIDTH = 256
HASH = 32


@dataclass(frozen=True, slots=True)
class Place:
    """Where a backend keeps its data; :meth:`make` returns a new, unopened storage there."""

    kind: str
    url: str

    def make(self) -> Storage:
        return open_storage(self.url)


@dataclass
class LogModel:
    """What the sequencer would hold: committed entries, tiles and the latest checkpoint."""

    tag: str = "log"
    entries: list[bytes] = field(default_factory=list)
    checkpoint: bytes | None = None

    @property
    def size(self) -> int:
        return len(self.entries)

    def note(self, size: int, variant: str = "") -> bytes:
        """A stand-in for a signed checkpoint note: distinct per tag, size and variant."""
        text = f"example.com/{self.tag}\n{size}\n{variant}\n\n\u2014 sig {self.tag}{size}\n"
        return text.encode()

    def batch(
        self,
        datas: Sequence[bytes],
        *,
        keys: Sequence[str | None] | None = None,
        lookups: Sequence[tuple[tuple[str, str], ...]] | None = None,
        times: Sequence[int] | None = None,
        variant: str = "",
    ) -> Batch:
        """Build the batch appending ``datas`` to this model (the model itself is unchanged)."""
        start = self.size
        new = [
            NewEntry(
                index=start + i,
                leaf_hash=leaf_hash(data),
                data=data,
                idempotency_key=keys[i] if keys else None,
                lookup_keys=lookups[i] if lookups else (),
                log_time=times[i] if times else 1_700_000_000_000 + start + i,
            )
            for i, data in enumerate(datas)
        ]
        every = [leaf_hash(d) for d in [*self.entries, *datas]]
        size = len(every)
        tiles = {
            (0, n): b"".join(every[n * TILE_WIDTH : min(size, (n + 1) * TILE_WIDTH)])
            for n in range(start // TILE_WIDTH, (size + TILE_WIDTH - 1) // TILE_WIDTH)
        }
        return Batch(
            entries=new,
            tiles=tiles,
            checkpoint=self.note(size, variant),
            tree_size=size,
            compact_range=f"range {size}".encode(),
        )

    def adopt(self, batch: Batch) -> None:
        """Record a batch as committed."""
        self.entries.extend(e.data for e in batch.entries)
        self.checkpoint = batch.checkpoint

    async def commit(self, storage: Storage, batch: Batch) -> None:
        """Commit ``batch`` on top of this model's checkpoint and adopt it."""
        await storage.commit(self.checkpoint, batch)
        self.adopt(batch)


def tile_bytes(*hashes: int) -> bytes:
    """Tile contents made of 32-byte hashes filled with the given byte values."""
    return b"".join(bytes([h]) * HASH for h in hashes)


@pytest.fixture(params=["sqlite", "postgres"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Place:
    if request.param == "sqlite":
        return Place("sqlite", str(tmp_path / "log.db"))
    return Place("postgres", request.getfixturevalue("pg_database"))


@pytest.fixture
async def storage(place: Place) -> AsyncIterator[Storage]:
    opened = place.make()
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


async def snapshot(storage: Storage, size_hint: int = 600) -> tuple[object, ...]:
    """Everything observable about a storage, for "nothing changed" assertions."""
    return (
        await storage.load_state(),
        await storage.read_entries(0, size_hint),
        await storage.read_tiles([(0, n) for n in range(4)]),
        await storage.checkpoint_history(),
        await storage.latest_cosigned_checkpoint(),
    )


# -- state and commit ----------------------------------------------------------------------


async def test_empty_storage(storage: Storage) -> None:
    assert await storage.load_state() is None
    assert await storage.read_entries(0, 10) == []
    assert await storage.read_entry_meta(0) is None
    assert await storage.read_tiles([(0, 0), (1, 0), (-1, 0)]) == {}
    assert await storage.find_leaf_hashes([leaf_hash(b"x")]) == {}
    assert await storage.find_idempotency_keys(["k"]) == {}
    assert await storage.lookup("client_id", "c") == []
    assert await storage.checkpoint_history() == []
    assert await storage.latest_cosigned_checkpoint() is None
    assert await storage.get_meta("origin") is None


async def test_commit_and_load(storage: Storage) -> None:
    model = LogModel()
    empty = model.batch([])
    await model.commit(storage, empty)
    state = await storage.load_state()
    assert state is not None
    assert (state.checkpoint, state.tree_size, state.compact_range) == (
        empty.checkpoint,
        0,
        b"range 0",
    )

    batch = model.batch([b"a", b"b", b"c"], keys=["s\x00j1", None, "s\x00j3"])
    await model.commit(storage, batch)
    state = await storage.load_state()
    assert state is not None
    assert (state.checkpoint, state.tree_size, state.compact_range) == (
        batch.checkpoint,
        3,
        b"range 3",
    )
    assert await storage.read_entries(0, 3) == [b"a", b"b", b"c"]
    tile = b"".join(map(leaf_hash, [b"a", b"b", b"c"]))
    assert await storage.read_tiles([(0, 0)]) == {(0, 0): tile}
    found = await storage.find_leaf_hashes([leaf_hash(b"c"), leaf_hash(b"a"), leaf_hash(b"zz")])
    assert found == {leaf_hash(b"c"): 2, leaf_hash(b"a"): 0}
    assert await storage.find_idempotency_keys(["s\x00j3", "s\x00j2", "s\x00j1"]) == {
        "s\x00j3": 2,
        "s\x00j1": 0,
    }


async def test_commit_across_tile_boundary(storage: Storage) -> None:
    model = LogModel()
    await model.commit(storage, model.batch([f"e{i}".encode() for i in range(250)]))
    batch = model.batch([f"e{i}".encode() for i in range(250, 600)])
    assert set(batch.tiles) == {(0, 0), (0, 1), (0, 2)}
    await model.commit(storage, batch)
    tiles = await storage.read_tiles([(0, 0), (0, 1), (0, 2), (0, 3)])
    assert tiles == batch.tiles
    assert len(tiles[(0, 2)]) == (600 - 512) * HASH
    assert await storage.read_entries(0, 600) == model.entries
    assert await storage.read_entries(590, 700) == model.entries[590:]


async def test_stale_previous_conflicts_and_stores_nothing(storage: Storage) -> None:
    model = LogModel()
    await model.commit(storage, model.batch([b"first"], keys=["k1"]))
    before = await snapshot(storage)

    rival = LogModel(tag="rival")
    for previous in (None, b"not the stored checkpoint", rival.note(0)):
        with pytest.raises(CheckpointConflict) as caught:
            await storage.commit(previous, rival.batch([b"rival"], keys=["k2"]))
        assert caught.value.stored == model.checkpoint
    assert await snapshot(storage) == before
    assert await storage.find_idempotency_keys(["k2"]) == {}
    assert await storage.find_leaf_hashes([leaf_hash(b"rival")]) == {}

    # A conflicting batch that also starts at the right index leaves no trace either.
    stale = LogModel(entries=list(model.entries), checkpoint=b"stale")
    with pytest.raises(CheckpointConflict):
        await stale.commit(storage, stale.batch([b"second"], lookups=[(("client_id", "c"),)]))
    assert await snapshot(storage) == before
    assert await storage.lookup("client_id", "c") == []


async def test_retried_commit_is_idempotent(storage: Storage) -> None:
    model = LogModel()
    previous = model.checkpoint
    batch = model.batch([b"x", b"y"], keys=["kx", "ky"])
    await storage.commit(previous, batch)
    before = await snapshot(storage)
    await storage.commit(previous, batch)  # e.g. after a connection lost during COMMIT
    assert await snapshot(storage) == before


async def run_rivals(stores: Sequence[Storage], rivals: int) -> tuple[Storage, LogModel]:
    """Commit ``rivals`` different batches with the same previous checkpoint, concurrently.

    Asserts that exactly one wins and returns a storage and the winning model.
    """
    base = LogModel()
    await base.commit(stores[0], base.batch([b"base"]))
    models = [
        LogModel(tag=f"rival{i}", entries=list(base.entries), checkpoint=base.checkpoint)
        for i in range(rivals)
    ]
    batches = [m.batch([f"r{i}-{j}".encode() for j in range(20)]) for i, m in enumerate(models)]
    results = await asyncio.gather(
        *(
            stores[i % len(stores)].commit(base.checkpoint, batch)
            for i, batch in enumerate(batches)
        ),
        return_exceptions=True,
    )
    winners = [i for i, r in enumerate(results) if r is None]
    assert len(winners) == 1, results
    assert all(isinstance(r, CheckpointConflict) for r in results if r is not None), results
    winner = models[winners[0]]
    winner.adopt(batches[winners[0]])
    return stores[0], winner


async def check_winner(storage: Storage, winner: LogModel) -> None:
    state = await storage.load_state()
    assert state is not None
    assert (state.checkpoint, state.tree_size) == (winner.checkpoint, 21)
    assert await storage.read_entries(0, 100) == winner.entries
    assert await storage.read_tiles([(0, 0)]) == {(0, 0): b"".join(map(leaf_hash, winner.entries))}
    assert len(await storage.checkpoint_history()) == 2


async def test_concurrent_commits_exactly_one_wins(storage: Storage) -> None:
    found, winner = await run_rivals([storage], rivals=8)
    await check_winner(found, winner)


async def test_concurrent_commits_from_two_storages(storage: Storage, place: Place) -> None:
    other = place.make()
    await other.open()
    try:
        found, winner = await run_rivals([storage, other], rivals=8)
        await check_winner(found, winner)
        await check_winner(other, winner)
    finally:
        await other.close()


# -- uniqueness and batch shape ------------------------------------------------------------


async def test_duplicate_leaf_hash_is_rejected(storage: Storage) -> None:
    model = LogModel()
    await model.commit(storage, model.batch([b"one"]))
    before = await snapshot(storage)
    with pytest.raises(IntegrityError):
        await storage.commit(model.checkpoint, model.batch([b"two", b"one"]))
    with pytest.raises(IntegrityError):
        await storage.commit(model.checkpoint, model.batch([b"two", b"two"]))
    assert await snapshot(storage) == before
    assert await storage.find_leaf_hashes([leaf_hash(b"two")]) == {}


async def test_duplicate_idempotency_key_is_rejected(storage: Storage) -> None:
    model = LogModel()
    await model.commit(storage, model.batch([b"one"], keys=["sub\x00jti"]))
    before = await snapshot(storage)
    with pytest.raises(IntegrityError):
        await storage.commit(model.checkpoint, model.batch([b"two"], keys=["sub\x00jti"]))
    with pytest.raises(IntegrityError):
        await storage.commit(model.checkpoint, model.batch([b"a", b"b"], keys=["k", "k"]))
    assert await snapshot(storage) == before
    assert await storage.find_idempotency_keys(["k"]) == {}
    # Keys differing only after the separator, or by Unicode normalization, are distinct.
    await model.commit(storage, model.batch([b"2", b"3"], keys=["sub\x00jti2", "caf\u00e9"]))
    await model.commit(storage, model.batch([b"4"], keys=["cafe\u0301"]))
    assert await storage.find_idempotency_keys(["sub\x00jti2", "caf\u00e9", "cafe\u0301"]) == {
        "sub\x00jti2": 1,
        "caf\u00e9": 2,
        "cafe\u0301": 3,
    }


async def test_batch_must_continue_the_stored_tree(storage: Storage) -> None:
    model = LogModel()
    await model.commit(storage, model.batch([b"a", b"b"]))
    before = await snapshot(storage)
    good = model.batch([b"c", b"d"])

    def misnumbered(entries: Sequence[NewEntry], tree_size: int) -> Batch:
        return Batch(entries, good.tiles, good.checkpoint, tree_size, good.compact_range)

    shifted = [NewEntry(e.index + 1, e.leaf_hash, e.data) for e in good.entries]
    gap = [good.entries[0], NewEntry(4, good.entries[1].leaf_hash, good.entries[1].data)]
    short_hash = [NewEntry(2, b"\x01" * 31, b"c")]
    cases = [
        misnumbered(shifted, 5),  # starts after the stored size
        misnumbered(good.entries, 5),  # size does not match the entries
        misnumbered(gap, 4),  # not consecutive
        misnumbered(short_hash, 3),  # not a 32-byte hash
        misnumbered([], 3),  # an empty batch cannot grow the tree
        misnumbered(good.entries[:1], 2),  # nor shrink it
    ]
    for batch in cases:
        with pytest.raises(IntegrityError):
            await storage.commit(model.checkpoint, batch)
    assert await snapshot(storage) == before
    await model.commit(storage, good)
    assert await storage.read_entries(0, 10) == [b"a", b"b", b"c", b"d"]


# -- lookups -------------------------------------------------------------------------------


async def test_lookup_pagination_and_time_range(storage: Storage) -> None:
    model = LogModel()
    datas = [f"event {i}".encode() for i in range(12)]
    lookups = [
        (
            ("client_id", "app-a" if i % 2 == 0 else "app-b"),
            ("token_ref", f"tr{i // 3}"),
            ("client_id", "app-a" if i % 2 == 0 else "app-b"),  # repeated pair: stored once
        )
        for i in range(12)
    ]
    times = [1000 + 10 * i for i in range(12)]
    await model.commit(storage, model.batch(datas[:5], lookups=lookups[:5], times=times[:5]))
    await model.commit(storage, model.batch(datas[5:], lookups=lookups[5:], times=times[5:]))

    assert await storage.lookup("client_id", "app-a") == [0, 2, 4, 6, 8, 10]
    assert await storage.lookup("token_ref", "tr1") == [3, 4, 5]
    pages: list[list[int]] = []
    after = -1
    while page := await storage.lookup("client_id", "app-b", after=after, limit=2):
        pages.append(page)
        after = page[-1]
    assert pages == [[1, 3], [5, 7], [9, 11]]
    # since_ms is inclusive, until_ms exclusive.
    assert await storage.lookup("client_id", "app-a", since_ms=1020, until_ms=1080) == [2, 4, 6]
    assert await storage.lookup("client_id", "app-a", since_ms=1021) == [4, 6, 8, 10]
    assert await storage.lookup("client_id", "app-a", until_ms=1000) == []
    assert await storage.lookup("client_id", "app-a", until_ms=1001) == [0]
    assert await storage.lookup("client_id", "app-a", after=4, limit=2, since_ms=1000) == [6, 8]
    assert await storage.lookup("client_id", "app-a", since_ms=-(2**70), until_ms=2**70) == [
        0, 2, 4, 6, 8, 10,
    ]  # fmt: skip
    assert await storage.lookup("client_id", "app-a", after=2**70) == []
    # Kind and value must both match; text is compared exactly.
    assert await storage.lookup("token_ref", "app-a") == []
    assert await storage.lookup("client_id", "APP-A") == []
    with pytest.raises(ValueError, match="limit"):
        await storage.lookup("client_id", "app-a", limit=0)


async def test_lookup_values_with_any_text(storage: Storage) -> None:
    model = LogModel()
    values = ["sub\x00ject", "\u00fcser", "\U0001f600", "", "a" * 1000]
    await model.commit(
        storage,
        model.batch(
            [f"{i}".encode() for i in range(len(values))],
            lookups=[(("subject", v),) for v in values],
        ),
    )
    for i, value in enumerate(values):
        assert await storage.lookup("subject", value) == [i]
    assert await storage.lookup("subject", "sub") == []
    assert await storage.lookup("subject", "\ud800") == []  # unencodable: never stored


# -- tiles ---------------------------------------------------------------------------------


async def test_tiles_grow_and_keep_their_hashes(storage: Storage) -> None:
    model = LogModel()

    async def commit_tiles(tiles: dict[tuple[int, int], bytes]) -> None:
        batch = model.batch([f"t{model.size}".encode()])
        await model.commit(
            storage,
            Batch(batch.entries, tiles, batch.checkpoint, batch.tree_size, batch.compact_range),
        )

    await commit_tiles({(1, 0): tile_bytes(1, 2), (-1, 0): b"\x00\x01a"})
    await commit_tiles({(1, 0): tile_bytes(1, 2, 3, 4, 5), (2, 7): tile_bytes(9)})
    await commit_tiles({(1, 0): tile_bytes(1, 2, 3, 4, 5)})  # same width again: allowed
    assert await storage.read_tiles([(1, 0), (2, 7), (-1, 0), (1, 1), (3, 0)]) == {
        (1, 0): tile_bytes(1, 2, 3, 4, 5),
        (2, 7): tile_bytes(9),
        (-1, 0): b"\x00\x01a",
    }
    assert await storage.read_tiles([(1, 0), (1, 0)]) == {(1, 0): tile_bytes(1, 2, 3, 4, 5)}
    assert await storage.read_tiles([]) == {}
    assert await storage.read_tiles([(0, 2**70), (99, 0)]) == {}

    before = await snapshot(storage)
    history = await storage.checkpoint_history()
    for bad in (
        {(1, 0): tile_bytes(1, 2, 3)},  # narrower
        {(1, 0): tile_bytes(1, 2, 3, 4, 6, 7)},  # a stored hash changed
        {(2, 7): tile_bytes(9, 9), (1, 0): tile_bytes(7)},  # one good, one bad
        {(-2, 0): tile_bytes(1)},  # no such level
        {(0, -1): tile_bytes(1)},  # no such index
    ):
        batch = model.batch([b"never"])
        with pytest.raises(IntegrityError):
            await storage.commit(
                model.checkpoint,
                Batch(batch.entries, bad, batch.checkpoint, batch.tree_size, batch.compact_range),
            )
    assert await snapshot(storage) == before
    assert await storage.read_tiles([(2, 7), (1, 0)]) == {
        (2, 7): tile_bytes(9),
        (1, 0): tile_bytes(1, 2, 3, 4, 5),
    }
    assert await storage.checkpoint_history() == history


# -- checkpoints ---------------------------------------------------------------------------


async def test_checkpoint_history(storage: Storage) -> None:
    model = LogModel()
    notes = []
    for size in (0, 1, 3, 6, 10):
        batch = model.batch([f"h{i}".encode() for i in range(model.size, size)])
        await model.commit(storage, batch)
        notes.append(batch.checkpoint)
    assert await storage.checkpoint_history() == notes
    assert await storage.checkpoint_history(after_size=0) == notes[1:]
    assert await storage.checkpoint_history(after_size=2, limit=2) == notes[2:4]
    assert await storage.checkpoint_history(after_size=6) == notes[4:]
    assert await storage.checkpoint_history(after_size=10) == []
    assert await storage.checkpoint_history(limit=1) == notes[:1]
    with pytest.raises(ValueError, match="limit"):
        await storage.checkpoint_history(limit=0)

    # A new checkpoint at an unchanged size becomes the latest; the history keeps the first.
    same = model.batch([], variant="re-signed")
    await model.commit(storage, same)
    state = await storage.load_state()
    assert state is not None
    assert (state.checkpoint, state.tree_size) == (same.checkpoint, 10)
    assert await storage.checkpoint_history(after_size=6) == notes[4:]


async def test_cosigned_checkpoint_only_moves_forward(storage: Storage) -> None:
    assert await storage.latest_cosigned_checkpoint() is None
    await storage.put_cosigned_checkpoint(5, b"five, one cosignature")
    await storage.put_cosigned_checkpoint(3, b"three")
    assert await storage.latest_cosigned_checkpoint() == b"five, one cosignature"
    await storage.put_cosigned_checkpoint(5, b"five, two cosignatures")
    assert await storage.latest_cosigned_checkpoint() == b"five, two cosignatures"
    await storage.put_cosigned_checkpoint(8, b"eight")
    await storage.put_cosigned_checkpoint(0, b"zero")
    assert await storage.latest_cosigned_checkpoint() == b"eight"
    with pytest.raises(ValueError, match="tree size"):
        await storage.put_cosigned_checkpoint(-1, b"negative")


# -- entries and metadata ------------------------------------------------------------------


async def test_entries_round_trip_exact_bytes(storage: Storage) -> None:
    model = LogModel()
    datas = [
        bytes(range(256)),
        b"",
        b"\x00" * 10,
        b"\xff" * 65535,
        "caf\u00e9 \u2014 \U0001f600".encode(),
        b"\r\n\t trailing space ",
    ]
    times = [0, 1, 2**40, 1_700_000_000_123, 2**62, 5]
    await model.commit(storage, model.batch(datas, times=times))
    assert await storage.read_entries(0, len(datas)) == datas
    assert await storage.read_entries(2, 4) == datas[2:4]
    assert await storage.read_entries(4, 100) == datas[4:]
    assert await storage.read_entries(3, 3) == []
    assert await storage.read_entries(100, 200) == []
    for i, (data, time) in enumerate(zip(datas, times, strict=True)):
        assert await storage.read_entry_meta(i) == (data, time)
    assert await storage.read_entry_meta(len(datas)) is None
    assert await storage.read_entry_meta(-1) is None
    with pytest.raises(ValueError, match="range"):
        await storage.read_entries(5, 4)
    with pytest.raises(ValueError, match="range"):
        await storage.read_entries(-1, 4)
    with pytest.raises(IntegrityError):
        await storage.commit(model.checkpoint, model.batch([b"late"], times=[-1]))


async def test_meta(storage: Storage) -> None:
    await storage.put_meta("origin", b"example.com/log")
    await storage.put_meta("key\x00id", b"\x00\x01\x02")
    await storage.put_meta("empty", b"")
    assert await storage.get_meta("origin") == b"example.com/log"
    assert await storage.get_meta("key\x00id") == b"\x00\x01\x02"
    assert await storage.get_meta("empty") == b""
    assert await storage.get_meta("key") is None
    await storage.put_meta("origin", b"example.com/other")
    assert await storage.get_meta("origin") == b"example.com/other"
    with pytest.raises(IntegrityError):
        await storage.put_meta("\udc00", b"unencodable")


# -- lifecycle -----------------------------------------------------------------------------


async def test_reopen_keeps_everything(place: Place) -> None:
    first = place.make()
    await first.open()
    model = LogModel()
    await model.commit(first, model.batch([]))
    await model.commit(
        first,
        model.batch(
            [b"a", b"b", b"c"],
            keys=["k0", None, "k2"],
            lookups=[(("client_id", "x"),), (), (("client_id", "x"), ("type", "revoke"))],
        ),
    )
    await first.put_cosigned_checkpoint(3, b"cosigned 3")
    await first.put_meta("origin", b"example.com/log")
    before = await snapshot(first)
    await first.close()
    await first.close()  # closing twice is harmless

    second = place.make()
    await second.open()
    await second.open()  # opening twice is harmless
    try:
        assert await snapshot(second) == before
        assert await second.find_idempotency_keys(["k0", "k2"]) == {"k0": 0, "k2": 2}
        assert await second.find_leaf_hashes([leaf_hash(b"b")]) == {leaf_hash(b"b"): 1}
        assert await second.lookup("client_id", "x") == [0, 2]
        assert await second.lookup("type", "revoke") == [2]
        assert await second.get_meta("origin") == b"example.com/log"
        await model.commit(second, model.batch([b"d"]))  # the sequencer resumes
        assert await second.read_entries(0, 10) == [b"a", b"b", b"c", b"d"]
    finally:
        await second.close()

    # The first object can be opened again too.
    await first.open()
    try:
        assert await first.read_entries(3, 4) == [b"d"]
    finally:
        await first.close()


async def test_closed_storage_raises(place: Place) -> None:
    storage = place.make()
    with pytest.raises(StorageError, match="not open"):
        await storage.load_state()
    await storage.open()
    await storage.close()
    with pytest.raises(StorageError, match="not open"):
        await storage.read_entries(0, 1)
    with pytest.raises(StorageError, match="not open"):
        await storage.commit(None, LogModel().batch([]))


async def test_newer_schema_is_refused(place: Place) -> None:
    storage = place.make()
    await storage.open()
    await storage.close()
    statement = "UPDATE schema_version SET version = 999"
    if place.kind == "sqlite":
        with sqlite3.connect(place.url) as conn:
            conn.execute(statement)
        conn.close()
    else:
        conn_pg = await asyncpg.connect(place.url)
        try:
            await conn_pg.execute(statement)
        finally:
            await conn_pg.close()
    with pytest.raises(StorageError, match="newer"):
        await storage.open()


def test_open_storage_chooses_the_backend(tmp_path: Path) -> None:
    assert isinstance(open_storage("postgresql://u@/db?host=/tmp"), PostgresStorage)
    assert isinstance(open_storage("postgres://u@localhost/db"), PostgresStorage)
    by_url = open_storage(f"sqlite://{tmp_path}/log.db")
    assert isinstance(by_url, SQLiteStorage)
    assert by_url.path == f"{tmp_path}/log.db"
    by_path = open_storage("relative/log.db")
    assert isinstance(by_path, SQLiteStorage)
    assert by_path.path == "relative/log.db"
    for bad in ("mysql://u@h/db", "sqlite://", "", ":memory:", "sqlite://:memory:"):
        with pytest.raises(ValueError, match=r"storage|SQLite"):
            open_storage(bad)


# -- principals and entry lookups (OAuthStorage) -------------------------------------------


def oauth(storage: Storage) -> SQLiteStorage | PostgresStorage:
    """The same backend, whose type also implements the OAuth layer's protocol."""
    assert isinstance(storage, SQLiteStorage | PostgresStorage)
    return storage


def as_oauth_storage(storage: SQLiteStorage | PostgresStorage) -> OAuthStorage:
    """Both backends satisfy OAuthStorage (checked by mypy here)."""
    return storage


def principal(role: str, name: str, fill: int, *keys: PrincipalKey) -> Principal:
    return Principal(role, name, bytes([fill]) * HASH, "active", 1_000 + fill, tuple(keys))


EVENT_KEY = PrincipalKey("k-event", "event", "Ed25519", b"\x01" * 32, 5, None, None)
SET_KEY = PrincipalKey("k-set", "set", "ES256", b"\x30" * 91, 6, 2**40, "https://as.example")


async def test_principals_round_trip(storage: Storage) -> None:
    store = as_oauth_storage(oauth(storage))
    alice = principal("submitter", "as-prod", 1, EVENT_KEY, SET_KEY)
    reader = principal("reader", "auditor", 2)
    await store.add_principal(alice)
    await store.add_principal(reader)
    assert await store.get_principal("submitter", "as-prod") == alice
    assert await store.get_principal("reader", "as-prod") is None
    assert await store.find_principal(bytes([2]) * HASH) == reader
    assert await store.find_principal(bytes([9]) * HASH) is None
    assert await store.list_principals("submitter") == [alice]
    assert await store.list_principals("reader") == [reader]
    # Same name in another role is another principal.
    other = principal("reader", "as-prod", 3)
    await store.add_principal(other)
    assert await store.list_principals("reader") == [other, reader]  # ordered by name


async def test_principal_uniqueness_and_validation(storage: Storage) -> None:
    store = oauth(storage)
    await store.add_principal(principal("submitter", "as-prod", 1, EVENT_KEY))
    with pytest.raises(IntegrityError):
        await store.add_principal(principal("submitter", "as-prod", 2))  # name taken
    with pytest.raises(IntegrityError):
        await store.add_principal(principal("reader", "someone", 1))  # credential hash taken
    bad = [
        principal("admin", "x", 4),
        principal("submitter", "", 4),
        principal("submitter", "-x", 4),
        principal("submitter", "x y", 4),
        principal("submitter", "x" * 65, 4),
        principal("submitter", "\u00e9", 4),
        Principal("submitter", "x", b"\x04" * 31, "active", 0),
        Principal("submitter", "x", b"\x04" * 32, "paused", 0),
        Principal("submitter", "x", b"\x04" * 32, "active", -1),
        principal("submitter", "x", 4, EVENT_KEY, EVENT_KEY),
        principal("submitter", "x", 4, PrincipalKey("k", "event", "RS256", b"k", 0)),
        principal("submitter", "x", 4, PrincipalKey("k", "set", "none", b"k", 0)),
        principal("submitter", "x", 4, PrincipalKey("k", "set", "ES256", b"", 0)),
        principal("submitter", "x", 4, PrincipalKey("k y", "set", "ES256", b"k", 0)),
    ]
    for item in bad:
        with pytest.raises(IntegrityError):
            await store.add_principal(item)
    assert [p.name for p in await store.list_principals("submitter")] == ["as-prod"]
    assert await store.list_principals("reader") == []


async def test_principal_keys_and_status(storage: Storage) -> None:
    store = oauth(storage)
    await store.add_principal(principal("submitter", "as-prod", 1, EVENT_KEY))
    await store.add_principal_key("submitter", "as-prod", SET_KEY)
    found = await store.get_principal("submitter", "as-prod")
    assert found is not None
    assert found.keys == (EVENT_KEY, SET_KEY)
    with pytest.raises(IntegrityError):
        await store.add_principal_key("submitter", "as-prod", SET_KEY)  # id taken
    with pytest.raises(IntegrityError):
        await store.add_principal_key("submitter", "nobody", SET_KEY)
    assert await store.set_principal_status("submitter", "as-prod", "revoked")
    revoked = await store.find_principal(bytes([1]) * HASH)
    assert revoked is not None
    assert revoked.status == "revoked"
    assert not await store.set_principal_status("submitter", "nobody", "revoked")
    with pytest.raises(IntegrityError):
        await store.set_principal_status("submitter", "as-prod", "deleted")


async def test_principals_survive_reopen(place: Place) -> None:
    first = oauth(place.make())
    await first.open()
    try:
        await first.add_principal(principal("submitter", "as-prod", 1, EVENT_KEY, SET_KEY))
    finally:
        await first.close()
    second = oauth(place.make())
    await second.open()
    try:
        assert await second.get_principal("submitter", "as-prod") == principal(
            "submitter", "as-prod", 1, EVENT_KEY, SET_KEY
        )
    finally:
        await second.close()


async def test_lookup_entries_returns_times_and_bytes(storage: Storage) -> None:
    store = oauth(storage)
    model = LogModel()
    datas = [f"entry {i}".encode() for i in range(6)]
    lookups = [(("token_ref", "tr-a" if i % 2 else "tr-b"),) for i in range(6)]
    times = [500 + i for i in range(6)]
    await model.commit(storage, model.batch(datas, lookups=lookups, times=times))
    hits = await store.lookup_entries("token_ref", "tr-a")
    assert hits == [LookupHit(i, 500 + i, datas[i]) for i in (1, 3, 5)]
    assert [h.index for h in await store.lookup_entries("token_ref", "tr-a", after=1, limit=1)] == [
        3
    ]
    assert [h.index for h in await store.lookup_entries("token_ref", "tr-b", since_ms=502)] == [
        2,
        4,
    ]
    assert await store.lookup_entries("token_ref", "tr-b", until_ms=500) == []
    assert await store.lookup_entries("token_ref", "\ud800") == []
    for kind, value in [("token_ref", "tr-a"), ("token_ref", "tr-b")]:
        assert [h.index for h in await store.lookup_entries(kind, value)] == await storage.lookup(
            kind, value
        )
    with pytest.raises(ValueError, match="limit"):
        await store.lookup_entries("token_ref", "tr-a", limit=0)
