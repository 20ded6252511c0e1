"""The log's in-memory caches stay within their bounds while the tree grows and is read.

The soak benchmark (``benchmarks/soak.py``) showed the log's resident memory rising with the tree
size under verified reads; these tests pin down that the tree reader's structures
(:class:`server.treeview.TreeReader`: expanded full tiles, full tiles kept raw, edge-tile
expansions, right-edge folds) and the tile server's byte-bounded cache
(:class:`server.app.ImmutableCache`) are caches filling up to a bound, not growth with the tree:
a log grows leaf batch by leaf batch while proofs are read at random positions of every size, and
the memory the reader holds (measured with :mod:`tracemalloc`, attributed to
``server/treeview.py``) never exceeds what its bounds allow.
"""

from __future__ import annotations

import gc
import hashlib
import random
import tracemalloc
from collections.abc import Sequence
from typing import cast

import pytest

from merkle.hashing import leaf_hash
from merkle.tiles import TILE_WIDTH, extend_tiles
from merkle.tree import (
    root_from_hashes,
    root_nodes,
    verify_inclusion,
)
from server.app import ImmutableCache
from server.storage.base import Storage
from server.treeview import (
    _EDGE_CACHE_LIMIT,
    _FOLD_CACHE_LIMIT,
    EdgeTiles,
    TreeReader,
    expand_tile,
    hashes_for_nodes,
)

TileKey = tuple[int, int]
FULL_TILE = TILE_WIDTH * 32
CACHE_TILES = 6
FINAL_SIZE = 150 * TILE_WIDTH + 77  # 150 full level-0 tiles: far more than the cache holds
BATCH = 1_009  # leaves appended at a time: the right edge moves through tile positions


class _GrowingStore:
    """The part of Storage a TreeReader uses (``read_tiles``) over a log that grows."""

    def __init__(self) -> None:
        self.tiles: dict[TileKey, bytes] = {}
        self.size = 0
        self.leaves: list[bytes] = []

    def append(self, count: int) -> EdgeTiles:
        """Append ``count`` leaves; return the partial tiles of the new size (the edge)."""
        new = [
            leaf_hash(hashlib.sha256(i.to_bytes(8, "big")).digest())
            for i in range(self.size, self.size + count)
        ]
        edge = {level: data for (level, _), data in self._partial().items()}
        self.tiles.update(extend_tiles(self.size, edge, new))
        self.leaves += new
        self.size += count
        return EdgeTiles(self.size, self._partial())

    def _partial(self) -> dict[TileKey, bytes]:
        partial: dict[TileKey, bytes] = {}
        level = 0
        while (self.size >> (8 * level)) > 0:
            width = (self.size >> (8 * level)) % TILE_WIDTH
            if width:
                key = (level, (self.size >> (8 * level)) // TILE_WIDTH)
                partial[key] = self.tiles[key]
            level += 1
        return partial

    async def read_tiles(self, keys: Sequence[TileKey]) -> dict[TileKey, bytes]:
        """Return the stored tiles among ``keys``."""
        return {key: self.tiles[key] for key in keys if key in self.tiles}


def _root(store: _GrowingStore, size: int) -> bytes:
    """The root of the first ``size`` leaves, from tiles built afresh (the reference)."""
    tiles = extend_tiles(0, {}, store.leaves[:size])
    return root_from_hashes(hashes_for_nodes(root_nodes(size), lambda key: expand_tile(tiles[key])))


def _treeview_bytes() -> int:
    """Bytes currently traced whose allocation went through server/treeview.py."""
    gc.collect()
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(True, "*server/treeview.py", all_frames=True)]
    )
    return sum(trace.size for trace in snapshot.traces)


def _expanded_full_tile_bytes() -> int:
    """Traced bytes held by one expanded full tile (its 511 hashes and the row tuples)."""
    data = bytes(range(256)) * (FULL_TILE // 256)
    before = tracemalloc.get_traced_memory()[0]
    rows = expand_tile(data)
    held = tracemalloc.get_traced_memory()[0] - before
    assert len(rows) == 9
    assert len(rows[0]) == TILE_WIDTH
    return held


@pytest.mark.anyio
async def test_tree_reader_memory_stays_within_its_bounds_as_the_log_grows() -> None:
    store = _GrowingStore()
    edge = store.append(1)
    reader = TreeReader(cast(Storage, store), cache_tiles=CACHE_TILES, edge=lambda: edge)
    rng = random.Random(7)
    tracemalloc.start(4)
    try:
        per_tile = _expanded_full_tile_bytes()
        baseline = _treeview_bytes()
        peak = 0
        steps = 0
        while store.size < FINAL_SIZE:
            edge = store.append(min(BATCH, FINAL_SIZE - store.size))
            size = store.size
            for _ in range(4):  # proofs at the current size, and at an older size (folds)
                for tree_size in (size, rng.randrange(1, size + 1)):
                    await reader.inclusion_proof(rng.randrange(tree_size), tree_size)
            assert len(reader._cache) <= CACHE_TILES
            assert len(reader._raw) <= CACHE_TILES
            assert len(reader._edge_rows) <= _EDGE_CACHE_LIMIT
            assert len(reader._folds) <= _FOLD_CACHE_LIMIT
            steps += 1
            if steps % 10 == 0:
                peak = max(peak, _treeview_bytes() - baseline)
        peak = max(peak, _treeview_bytes() - baseline)
    finally:
        tracemalloc.stop()
    # The documented ceiling: expanded full tiles, full tiles kept raw (the bytes objects are
    # the store's, so they cost nothing here), edge expansions (a partial tile expands to at
    # most what a full one does), and folds (a 32-byte hash under a two-int key each).
    ceiling = (CACHE_TILES + _EDGE_CACHE_LIMIT) * per_tile + _FOLD_CACHE_LIMIT * 256
    unbounded = (FINAL_SIZE // TILE_WIDTH) * per_tile  # every full tile kept expanded
    assert ceiling < unbounded  # the check below can tell a bound from growth with the tree
    assert 0 < peak <= ceiling
    # The cached proofs are still right: they verify against the reference root.
    root = _root(store, store.size)
    for index in (0, rng.randrange(store.size), store.size - 1):
        proof = await reader.inclusion_proof(index, store.size)
        verify_inclusion(store.leaves[index], index, store.size, proof, root)


def test_immutable_cache_holds_at_most_its_limit_in_bytes() -> None:
    limit = 10 * FULL_TILE
    cache = ImmutableCache(limit)
    for index in range(1_000):  # tiles and bundles of varying sizes, far more than fit
        cache.put((0, index), bytes(FULL_TILE // (1 + index % 7)))
        assert cache.size <= limit
    assert cache.size == sum(len(cache.get((0, i)) or b"") for i in range(1_000))
    assert cache.get((0, 0)) is None  # the oldest are gone
    assert cache.get((0, 999)) is not None
