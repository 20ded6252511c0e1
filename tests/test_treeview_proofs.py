"""Inclusion proofs from tiles (server.treeview) against merkle.tree, batched and by the reader.

The reference is the three-step path of :mod:`merkle.tree` (``inclusion_nodes``, the node
hashes read from the same tiles, ``build_inclusion_proof``); every proof is also verified with
``merkle.tree.verify_inclusion`` against the root computed from the leaves, so both sides are
tied to RFC 6962 and not only to each other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from merkle.errors import MalformedError
from merkle.hashing import leaf_hash
from merkle.tiles import extend_tiles
from merkle.tree import (
    build_inclusion_proof,
    inclusion_nodes,
    root_from_hashes,
    root_nodes,
    verify_inclusion,
)
from server.storage.base import Storage
from server.treeview import (
    EdgeTiles,
    ExpandedTile,
    TreeReader,
    expand_tile,
    extend_expanded,
    hashes_for_nodes,
    inclusion_path,
    inclusion_proofs,
)

TileKey = tuple[int, int]
MAX_SIZE = 70_000  # beyond 65,536 leaves, so level-2 tiles and level-16 nodes take part


def _leaves(count: int) -> list[bytes]:
    return [leaf_hash(hashlib.sha256(i.to_bytes(4, "big")).digest()) for i in range(count)]


LEAVES = _leaves(MAX_SIZE)


class _Tree:
    """Every tile of a tree of ``size`` leaves, built once, with memoized expansion."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.tiles = extend_tiles(0, {}, LEAVES[:size])
        self._rows: dict[TileKey, ExpandedTile] = {}

    def expanded(self, key: TileKey) -> ExpandedTile:
        rows = self._rows.get(key)
        if rows is None:
            rows = self._rows[key] = expand_tile(self.tiles[key])
        return rows

    def reference(self, index: int) -> tuple[bytes, ...]:
        nodes = inclusion_nodes(index, self.size)
        return tuple(
            build_inclusion_proof(index, self.size, hashes_for_nodes(nodes, self.expanded))
        )

    def root(self) -> bytes:
        return root_from_hashes(hashes_for_nodes(root_nodes(self.size), self.expanded))


_TREES: dict[int, _Tree] = {}


def _tree(size: int) -> _Tree:
    tree = _TREES.get(size)
    if tree is None:
        tree = _TREES[size] = _Tree(size)
    return tree


FOLDS: dict[tuple[int, int], bytes] = {}  # shared by every check: keys carry the tree size


def _check(size: int, first: int, count: int) -> None:
    tree = _tree(size)
    proofs = inclusion_proofs(first, count, size, tree.expanded)
    assert len(proofs) == count
    assert inclusion_proofs(first, count, size, tree.expanded, FOLDS) == proofs
    root = tree.root()
    for offset, proof in enumerate(proofs):
        index = first + offset
        assert proof == tree.reference(index), (size, index)
        assert inclusion_path(index, size, tree.expanded, FOLDS) == list(proof)
        verify_inclusion(LEAVES[index], index, size, proof, root)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 8, 9, 255, 256, 257, 511, 512, 513, 1000])
def test_every_leaf_of_small_trees(size: int) -> None:
    _check(size, 0, size)


@pytest.mark.parametrize(
    ("size", "first", "count"),
    [
        (65_536, 65_000, 536),  # the last leaves of a complete 2**16 tree
        (65_537, 65_280, 257),  # the new leaf is carried up 16 levels alone
        (70_000, 69_000, 1_000),  # a sequencer batch on the right edge
        (70_000, 0, 300),  # the far left against a large right edge
        (69_999, 65_535, 2),  # straddling the 2**16 boundary
    ],
)
def test_ranges_at_tile_and_power_of_two_boundaries(size: int, first: int, count: int) -> None:
    _check(size, first, count)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_random_ranges_match_the_reference(data: st.DataObject) -> None:
    size = data.draw(st.sampled_from([3_000, 33_333, 65_537, MAX_SIZE]), label="size")
    first = data.draw(st.integers(0, size - 1), label="first")
    count = data.draw(st.integers(0, min(300, size - first)), label="count")
    _check(size, first, count)


def test_an_empty_range_gives_no_proof() -> None:
    assert inclusion_proofs(5, 0, 5, _tree(5).expanded) == []


@pytest.mark.parametrize(("first", "count"), [(-1, 1), (0, 6), (5, 1), (3, -1)])
def test_a_range_outside_the_tree_is_refused(first: int, count: int) -> None:
    with pytest.raises(ValueError, match="not inside a tree"):
        inclusion_proofs(first, count, 5, _tree(5).expanded)


@pytest.mark.parametrize("index", [-1, 5, 6])
def test_a_leaf_outside_the_tree_is_refused(index: int) -> None:
    with pytest.raises(ValueError, match="not inside a tree"):
        inclusion_path(index, 5, _tree(5).expanded)


def _naive_rows(hashes: Sequence[bytes]) -> list[list[bytes]]:
    """Every complete node of a tile by RFC 6962 from scratch: row ``s`` holds the root of
    each aligned run of ``2**s`` hashes (taken as level-0 nodes)."""

    def balanced(run: Sequence[bytes]) -> bytes:  # a power-of-two run, split in halves
        if len(run) == 1:
            return run[0]
        half = len(run) // 2
        return hashlib.sha256(b"\x01" + balanced(run[:half]) + balanced(run[half:])).digest()

    rows = []
    span = 1
    while span == 1 or span <= len(hashes):
        rows.append(
            [balanced(hashes[j : j + span]) for j in range(0, len(hashes) - span + 1, span)]
        )
        span *= 2
    return rows


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 256), min_size=1, max_size=5))
def test_extending_an_expansion_step_by_step_matches_a_fresh_one(cuts: list[int]) -> None:
    hashes = LEAVES[:256]
    widths = sorted(cuts)
    rows = expand_tile(b"".join(hashes[: widths[0]]))
    for width in widths:
        data = b"".join(hashes[:width])
        rows = extend_expanded(rows, data)
        assert rows == expand_tile(data)
        assert [list(row) for row in rows] == _naive_rows(hashes[:width])


@pytest.mark.parametrize(
    ("before", "after"), [(0, 1), (0, 2), (1, 2), (3, 4), (4, 5), (5, 8), (127, 256), (255, 256)]
)
def test_extending_an_expansion_at_known_widths(before: int, after: int) -> None:
    hashes = LEAVES[:after]
    prefix = b"".join(hashes[:before])
    for start in (expand_tile(prefix), () if before == 0 else expand_tile(prefix)):
        rows = extend_expanded(start, b"".join(hashes))
        assert [list(row) for row in rows] == _naive_rows(hashes)
    same = expand_tile(b"".join(hashes))
    assert extend_expanded(same, b"".join(hashes)) is same  # nothing new: nothing computed


def test_a_missing_node_raises_lookup_error() -> None:
    tree = _tree(1000)

    def truncated(key: TileKey) -> ExpandedTile:
        rows = tree.expanded(key)
        return (rows[0][:100],) if key == (0, 3) else rows

    with pytest.raises(LookupError, match="not in stored tile"):
        inclusion_proofs(900, 10, 1000, truncated)
    with pytest.raises(LookupError, match="not in stored tile"):
        inclusion_path(899, 1000, truncated)


class _TileStore:
    """The part of Storage a TreeReader uses: ``read_tiles``, counting the calls."""

    def __init__(self, tiles: dict[TileKey, bytes]) -> None:
        self.tiles = tiles
        self.reads = 0

    async def read_tiles(self, keys: Sequence[TileKey]) -> dict[TileKey, bytes]:
        self.reads += 1
        return {key: self.tiles[key] for key in keys if key in self.tiles}


def _reader(store: _TileStore, edge: EdgeTiles | None = None) -> TreeReader:
    return TreeReader(cast(Storage, store), edge=lambda: edge)


def _edge_of(tree: _Tree) -> EdgeTiles:
    partial = {key: data for key, data in tree.tiles.items() if len(data) < 256 * 32}
    return EdgeTiles(tree.size, partial)


@pytest.mark.anyio
@pytest.mark.parametrize("with_edge", [False, True])
async def test_reader_proofs_match_the_reference_cold_and_cached(with_edge: bool) -> None:
    tree = _tree(70_000)
    store = _TileStore(tree.tiles)
    reader = _reader(store, _edge_of(tree) if with_edge else None)
    indexes = [0, 1, 255, 256, 65_535, 65_536, 69_999, 12_345]
    for index in indexes:
        assert await reader.inclusion_proof(index, 70_000) == list(tree.reference(index))
    reads = store.reads
    for index in indexes:  # the full tiles are cached now
        assert await reader.inclusion_proof(index, 70_000) == list(tree.reference(index))
    if with_edge:
        assert store.reads == reads  # everything came from the cache and the edge
    for index in (0, 40_000):  # a smaller tree of the same log
        assert await reader.inclusion_proof(index, 65_537) == list(_tree(65_537).reference(index))


@pytest.mark.anyio
async def test_reader_follows_a_changed_edge() -> None:
    small, large = _tree(3_000), _tree(3_300)
    store = _TileStore(small.tiles)
    edge = _edge_of(small)
    reader = TreeReader(cast(Storage, store), edge=lambda: edge)
    assert await reader.inclusion_proof(2_999, 3_000) == list(small.reference(2_999))
    store.tiles = large.tiles
    edge = _edge_of(large)
    for index in (2_999, 3_299):
        assert await reader.inclusion_proof(index, 3_300) == list(large.reference(index))


@pytest.mark.anyio
async def test_reader_refuses_a_bad_index_as_merkle_does() -> None:
    reader = _reader(_TileStore(_tree(5).tiles))
    with pytest.raises(MalformedError):
        await reader.inclusion_proof(5, 5)
