"""Batched inclusion proofs from tiles (server.treeview.inclusion_proofs) against merkle.tree.

The reference is the three-step path of :mod:`merkle.tree` (``inclusion_nodes``, the node
hashes read from the same tiles, ``build_inclusion_proof``); every proof is also verified with
``merkle.tree.verify_inclusion`` against the root computed from the leaves, so both sides are
tied to RFC 6962 and not only to each other.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from merkle.hashing import leaf_hash
from merkle.tiles import extend_tiles
from merkle.tree import (
    build_inclusion_proof,
    inclusion_nodes,
    root_from_hashes,
    root_nodes,
    verify_inclusion,
)
from server.treeview import (
    ExpandedTile,
    expand_tile,
    hashes_for_nodes,
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


def _check(size: int, first: int, count: int) -> None:
    tree = _tree(size)
    proofs = inclusion_proofs(first, count, size, tree.expanded)
    assert len(proofs) == count
    root = tree.root()
    for offset, proof in enumerate(proofs):
        index = first + offset
        assert proof == tree.reference(index), (size, index)
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


def test_a_missing_node_raises_lookup_error() -> None:
    tree = _tree(1000)

    def truncated(key: TileKey) -> ExpandedTile:
        rows = tree.expanded(key)
        return (rows[0][:100],) if key == (0, 3) else rows

    with pytest.raises(LookupError, match="not in stored tile"):
        inclusion_proofs(900, 10, 1000, truncated)
