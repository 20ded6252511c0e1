"""The server's cache of full tiles and entry bundles: byte bound, block reads, shared reads.

Full tiles and full entry bundles are immutable, so the server keeps their encoded bytes in a
byte-bounded LRU (:class:`server.app.ImmutableCache`) and fills it by aligned blocks of
:data:`server.app.READ_AHEAD` (one storage call per block, shared by concurrent requests).
Everything served is checked against hashes recomputed from the entries.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from merkle.checkpoint import Checkpoint, format_checkpoint
from merkle.compact import CompactRange
from merkle.hashing import leaf_hash
from merkle.note import Ed25519Signer, sign_note
from merkle.tiles import Tile, extend_tiles, format_entry_bundle, format_tile_path
from server.app import READ_AHEAD, ImmutableCache
from server.storage import open_storage
from server.storage.base import Batch, NewEntry
from tests.server_helpers import make_signer, open_log

pytestmark = pytest.mark.anyio


def test_cache_is_bounded_in_bytes_and_drops_the_least_recently_used() -> None:
    cache = ImmutableCache(10)
    cache.put((0, 0), b"aaaa")
    cache.put((0, 1), b"bbbb")
    assert cache.get((0, 0)) == b"aaaa"  # now the most recently used
    cache.put((0, 2), b"cccc")
    assert cache.size == 8
    assert cache.get((0, 1)) is None
    assert cache.get((0, 0)) == b"aaaa"
    assert cache.get((0, 2)) == b"cccc"
    cache.put((0, 0), b"dddddd")  # replacing a value counts its new size only
    assert cache.size == 10
    assert cache.get((0, 0)) == b"dddddd"
    cache.put((0, 3), b"x" * 11)  # larger than the whole cache: not kept, nothing dropped
    assert cache.get((0, 3)) is None
    assert cache.size == 10


async def _store(url: str, size: int) -> tuple[Ed25519Signer, list[bytes], list[bytes]]:
    signer = make_signer()
    entries = [b"cached %d" % i for i in range(size)]
    leaves = [leaf_hash(e) for e in entries]
    compact = CompactRange()
    compact.extend(leaves)
    note = sign_note(format_checkpoint(Checkpoint(signer.name, size, compact.root())), [signer])
    storage = open_storage(url)
    await storage.open()
    try:
        await storage.commit(
            None,
            Batch(
                [NewEntry(i, leaves[i], entries[i]) for i in range(size)],
                extend_tiles(0, {}, leaves),
                note,
                size,
                compact.to_bytes(),
            ),
        )
    finally:
        await storage.close()
    return signer, entries, leaves


async def test_concurrent_reads_of_a_block_share_one_storage_read(tmp_path: Path) -> None:
    """Every full bundle and tile of two blocks, asked all at once: right bytes, one read each."""
    size = 256 * (2 * READ_AHEAD) + 77
    url = str(tmp_path / "log.db")
    signer, entries, leaves = await _store(url, size)
    async with open_log(url, signer=signer) as log:
        storage = log.service.storage
        calls: list[tuple[str, object]] = []
        read_entries, read_tiles = storage.read_entries, storage.read_tiles

        async def counted_entries(start: int, end: int) -> list[bytes]:
            calls.append(("entries", (start, end)))
            return await read_entries(start, end)

        async def counted_tiles(coords: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
            calls.append(("tiles", tuple(coords)))
            return await read_tiles(coords)

        storage.read_entries = counted_entries  # type: ignore[method-assign]
        storage.read_tiles = counted_tiles  # type: ignore[method-assign]
        count = 2 * READ_AHEAD
        paths = [format_tile_path(Tile(-1, i)) for i in range(count)]
        paths += [format_tile_path(Tile(0, i)) for i in range(count)]
        answers = await asyncio.gather(*(log.client.get("/" + p) for p in paths))
        for i in range(count):
            bundle, tile = answers[i], answers[count + i]
            assert bundle.status_code == tile.status_code == 200
            assert bundle.content == format_entry_bundle(entries[256 * i : 256 * (i + 1)])
            assert tile.content == b"".join(leaves[256 * i : 256 * (i + 1)])
        assert sorted(c for c in calls if c[0] == "entries") == [
            ("entries", (0, 256 * READ_AHEAD)),
            ("entries", (256 * READ_AHEAD, 256 * count)),
        ]
        assert len([c for c in calls if c[0] == "tiles"]) == 2
        # Served again from memory: no storage call at all.
        calls.clear()
        again = await log.client.get("/" + paths[1])
        assert again.content == answers[1].content
        assert calls == []
        # The partial bundle at the end is not cached and still right.
        tail = await log.client.get("/" + format_tile_path(Tile(-1, count, 77)))
        assert tail.content == format_entry_bundle(entries[256 * count :])
