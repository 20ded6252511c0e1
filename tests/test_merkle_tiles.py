"""merkle.tiles: C2SP tlog-tiles paths (examples and strictness tables), which tiles a tree has
(against a brute-force reading of the spec), tile contents built incrementally (against contents
computed from scratch with the naive RFC 6962 reference), node hashes read from tiles, and entry
bundles."""

from __future__ import annotations

import random
from functools import cache

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from merkle.errors import MalformedError
from merkle.tiles import (
    ENTRIES_LEVEL,
    MAX_ENTRY_SIZE,
    TILE_WIDTH,
    Tile,
    edge_tiles,
    extend_tiles,
    format_entry_bundle,
    format_tile_path,
    new_tiles,
    node_hashes_from_tiles,
    node_tile,
    parse_entry_bundle,
    parse_tile_path,
    tiles_for_size,
)
from merkle.tree import MAX_TREE_SIZE, Node
from tests import naive

SETTINGS = settings(max_examples=50, deadline=None)

SMALL = 3000
"""Sizes of the property tests: level-0 and level-1 tiles."""

LARGE = 70_000
"""The spec's example size: level-0, level-1 and level-2 tiles."""

ENTRY_DATA = [i.to_bytes(4, "big") for i in range(LARGE)]
LEAVES = [naive.leaf(e) for e in ENTRY_DATA]


@cache
def _level_hashes(level: int) -> tuple[bytes, ...]:
    """Every complete level-``level`` tile hash of the LARGE tree, per the spec's formula:
    hash ``j`` of level ``l`` is MTH(D[j * 256**l : (j + 1) * 256**l]) (naive reference)."""
    span = TILE_WIDTH**level
    if level == 0:
        return tuple(LEAVES)
    return tuple(naive.mth(ENTRY_DATA[j * span : (j + 1) * span]) for j in range(LARGE // span))


def _brute_tiles(tree_size: int) -> list[Tile]:
    """Every hash tile of a tree, read off the spec: tile n of level l exists while it starts
    below floor(s / 256**l) hashes, and holds up to 256 of them."""
    tiles = []
    level = 0
    while tree_size // TILE_WIDTH**level > 0:
        count = tree_size // TILE_WIDTH**level
        n = 0
        while n * TILE_WIDTH < count:
            tiles.append(Tile(level, n, min(TILE_WIDTH, count - n * TILE_WIDTH)))
            n += 1
        level += 1
    return tiles


def _scratch_contents(tree_size: int) -> dict[tuple[int, int], bytes]:
    """The contents of every tile of a tree of ``tree_size`` leaves, computed from scratch."""
    return {
        (t.level, t.index): b"".join(
            _level_hashes(t.level)[t.index * TILE_WIDTH : t.index * TILE_WIDTH + t.width]
        )
        for t in _brute_tiles(tree_size)
    }


def _grow(sizes: list[int]) -> dict[tuple[int, int], bytes]:
    """Build the tiles with extend_tiles, one batch per step from size to size."""
    tiles: dict[tuple[int, int], bytes] = {}
    size = 0
    for new_size in sizes:
        edge = {t.level: tiles[(t.level, t.index)] for t in edge_tiles(size)}
        changed = extend_tiles(size, edge, LEAVES[size:new_size])
        assert sorted(changed) == [(t.level, t.index) for t in new_tiles(size, new_size)]
        for t in new_tiles(size, new_size):
            assert len(changed[(t.level, t.index)]) == t.width * 32
        tiles.update(changed)
        size = new_size
    return tiles


# --- paths ------------------------------------------------------------------------------------

KNOWN_PATHS = [
    (Tile(0, 1234067, 5), "tile/0/x001/x234/067.p/5"),
    (Tile(0, 1234067), "tile/0/x001/x234/067"),
    (Tile(ENTRIES_LEVEL, 0), "tile/entries/000"),
    (Tile(ENTRIES_LEVEL, 1000, 255), "tile/entries/x001/000.p/255"),
    (Tile(1, 3), "tile/1/003"),
    (Tile(2, 999, 1), "tile/2/999.p/1"),
    (Tile(0, 2**55 - 1, 255), "tile/0/x036/x028/x797/x018/x963/967.p/255"),
    (Tile(7, 0, 127), "tile/7/000.p/127"),
]


@pytest.mark.parametrize(("tile", "path"), KNOWN_PATHS)
def test_known_paths(tile: Tile, path: str) -> None:
    assert format_tile_path(tile) == path
    assert parse_tile_path(path) == tile
    assert tile.is_partial == (tile.width < TILE_WIDTH)


BAD_PATHS = [
    "",
    "/tile/0/000",
    "tile/0/000/",
    "tile//000",
    "tile/0/",
    "tile/00/000",
    "tile/01/000",
    "tile/+0/000",
    "tile/-1/000",
    "tile/64/000",
    "tile/8/000.p/1",  # a level-8 hash needs 2**64 leaves
    "tile/7/000",  # a full level-7 tile needs 2**64 leaves
    "tile/7/000.p/128",  # 128 * 2**56 = 2**63 leaves
    "tile/0/x036/x028/x797/x018/x963/967",  # full tile ending at 2**63
    "tile/0/x036/x028/x797/x018/x963/968.p/1",
    "tile/0/00",
    "tile/0/0000",
    "tile/0/0",
    "tile/0/x000/005",  # redundant leading group
    "tile/0/x000/x001/005",
    "tile/0/x001",  # x on the last group
    "tile/0/001/002",  # missing x
    "tile/0/x001/x002",
    "tile/0/X001/002",
    "tile/0/x01/002",
    "tile/0/000.p/0",
    "tile/0/000.p/256",
    "tile/0/000.p/1000",
    "tile/0/000.p/05",
    "tile/0/000.p/",
    "tile/0/000.p/+5",
    "tile/0/000.p/ 5",
    "tile/0/000.p/5 ",
    "tile/0/000.p/5\n",
    "tile/0/000\n",
    "tile/0/000.P/5",
    "tile/0/000.p5",
    "tile/0/000p/5",
    "tile/0/000.p/-1",
    "tile/0/000.p/5/",
    "tile/entries/000.p/256",
    "tile/entries/x000/001",
    "tile/data/000",
    "tile/Entries/000",
    "tile/entries",
    "tile/0/\u0660\u0660\u0660",  # Arabic-Indic digits
    "tile/\uff10/000",  # full-width zero
    "tile/0/0_0",
    "tile/0/+00",
    "tile/0/ 00",
    "tile/ 0/000",
    "tile/0/000.p/\u0665",
    "tile/1/" + "x999/" * 20 + "999",  # longer than any valid path
]


@pytest.mark.parametrize("path", BAD_PATHS)
def test_bad_paths_are_rejected(path: str) -> None:
    with pytest.raises(MalformedError):
        parse_tile_path(path)


def test_non_str_path_is_rejected() -> None:
    with pytest.raises(MalformedError):
        parse_tile_path(b"tile/0/000")  # type: ignore[arg-type]


BAD_TILES: list[tuple[object, object, object]] = [
    (-2, 0, 256),
    (64, 0, 1),
    (8, 0, 1),
    (0, -1, 256),
    (0, 0, 0),
    (0, 0, 257),
    (0, 0, -5),
    (True, 0, 256),
    (0, 1.0, 256),
    (0, "1", 256),
    (0, 2**55, 1),
    (0, 2**55 - 1, 256),
    (ENTRIES_LEVEL, 2**55 - 1, 256),
]


@pytest.mark.parametrize(("level", "index", "width"), BAD_TILES)
def test_bad_tiles_are_rejected(level: object, index: object, width: object) -> None:
    with pytest.raises(MalformedError):
        Tile(level, index, width)  # type: ignore[arg-type]


@st.composite
def tiles(draw: st.DrawFn) -> Tile:
    level = draw(st.integers(ENTRIES_LEVEL, 7))
    span = TILE_WIDTH ** max(level, 0)
    width = draw(st.integers(1, min(TILE_WIDTH, MAX_TREE_SIZE // span)))
    index = draw(st.integers(0, (MAX_TREE_SIZE // span - width) // TILE_WIDTH))
    return Tile(level, index, width)


@SETTINGS
@given(tiles())
def test_paths_round_trip(tile: Tile) -> None:
    path = format_tile_path(tile)
    assert parse_tile_path(path) == tile
    assert len(path) <= 64


# --- which tiles a tree has -------------------------------------------------------------------


def test_spec_examples() -> None:
    tiles_70000 = tiles_for_size(70_000)
    assert tiles_70000 == [Tile(0, i) for i in range(273)] + [
        Tile(0, 273, 112),
        Tile(1, 0),
        Tile(1, 1, 17),
        Tile(2, 0, 1),
    ]
    assert edge_tiles(70_000) == [Tile(0, 273, 112), Tile(1, 1, 17), Tile(2, 0, 1)]
    assert tiles_for_size(256) == [Tile(0, 0), Tile(1, 0, 1)]
    assert tiles_for_size(0) == edge_tiles(0) == []
    assert edge_tiles(256 * 256) == [Tile(2, 0, 1)]
    assert new_tiles(255, 256) == [Tile(0, 0), Tile(1, 0, 1)]
    assert new_tiles(256, 257) == [Tile(0, 1, 1)]
    assert new_tiles(70_000, 70_000) == []


@SETTINGS
@given(st.integers(0, 200_000))
def test_tiles_for_size_matches_brute_force(tree_size: int) -> None:
    assert tiles_for_size(tree_size) == _brute_tiles(tree_size)
    assert edge_tiles(tree_size) == [t for t in _brute_tiles(tree_size) if t.is_partial]


@SETTINGS
@given(st.integers(0, 200_000), st.integers(0, 5_000))
def test_new_tiles_matches_brute_force(old_size: int, grow: int) -> None:
    new_size = old_size + grow
    brute = sorted(set(_brute_tiles(new_size)) - set(_brute_tiles(old_size)))
    assert new_tiles(old_size, new_size) == brute


@pytest.mark.parametrize("size", [MAX_TREE_SIZE, MAX_TREE_SIZE - 1, 2**56, 2**63 - 2**56])
def test_edge_of_huge_trees(size: int) -> None:
    edge = edge_tiles(size)
    for t in edge:
        assert t.width == (size >> (8 * t.level)) % TILE_WIDTH
        assert parse_tile_path(format_tile_path(t)) == t
    assert {t.level for t in edge} == {
        level for level in range(8) if (size >> (8 * level)) % TILE_WIDTH
    }
    assert new_tiles(size, size) == []
    assert new_tiles(size - 1, size)[0] == Tile(0, (size - 1) // 256, (size - 1) % 256 + 1)


def test_size_arguments_are_strict() -> None:
    for bad in [-1, MAX_TREE_SIZE + 1, True, 1.5, "5"]:
        with pytest.raises(MalformedError):
            tiles_for_size(bad)  # type: ignore[arg-type]
        with pytest.raises(MalformedError):
            edge_tiles(bad)  # type: ignore[arg-type]
        with pytest.raises(MalformedError):
            new_tiles(0, bad)  # type: ignore[arg-type]
        with pytest.raises(MalformedError):
            new_tiles(bad, MAX_TREE_SIZE)  # type: ignore[arg-type]
    with pytest.raises(MalformedError):
        new_tiles(10, 9)


# --- node hashes from tiles -------------------------------------------------------------------


def test_node_tile_examples() -> None:
    assert node_tile(Node(0, 0)) == (Tile(0, 0, 1), 0, 1)
    assert node_tile(Node(0, 300)) == (Tile(0, 1, 45), 44, 1)
    assert node_tile(Node(3, 31)) == (Tile(0, 0), 248, 8)
    assert node_tile(Node(8, 0)) == (Tile(1, 0, 1), 0, 1)
    assert node_tile(Node(9, 3)) == (Tile(1, 0, 8), 6, 2)
    assert node_tile(Node(16, 1)) == (Tile(2, 0, 2), 1, 1)
    assert node_tile(Node(62, 0)) == (Tile(7, 0, 64), 0, 64)


@SETTINGS
@given(st.integers(0, 62).flatmap(lambda lv: st.tuples(st.just(lv), st.integers(0, 2**20))))
def test_node_tile_is_a_tile_of_the_tree_that_ends_with_the_node(case: tuple[int, int]) -> None:
    level, index = case
    assume((index + 1) << level <= MAX_TREE_SIZE)
    node = Node(level, index)
    tile, start, count = node_tile(node)
    assert tile in edge_tiles(node.end) or tile in new_tiles(node.end - 1, node.end)
    assert count == 1 << (level % 8)
    assert tile.width == start + count


@pytest.fixture(scope="module")
def large_tiles() -> dict[tuple[int, int], bytes]:
    return _scratch_contents(LARGE)


def test_node_hashes_from_tiles_of_the_large_tree(
    large_tiles: dict[tuple[int, int], bytes],
) -> None:
    rng = random.Random(6962)
    nodes = [Node(level, rng.randrange(LARGE >> level)) for level in range(17) for _ in range(4)]
    nodes.append(Node(16, 0))
    assert node_hashes_from_tiles(nodes, large_tiles) == [
        naive.node(n.level, n.index, ENTRY_DATA) for n in nodes
    ]


@SETTINGS
@given(st.integers(1, SMALL), st.data())
def test_node_hashes_from_tiles_match_naive(tree_size: int, data: st.DataObject) -> None:
    contents = _scratch_contents(tree_size)
    level = data.draw(st.integers(0, tree_size.bit_length() - 1))
    index = data.draw(st.integers(0, (tree_size >> level) - 1))
    node = Node(level, index)
    assert node_hashes_from_tiles([node], contents) == [naive.node(level, index, ENTRY_DATA)]


def test_node_hashes_need_their_tiles() -> None:
    contents = _scratch_contents(300)
    with pytest.raises(MalformedError):
        node_hashes_from_tiles([Node(0, 300)], contents)  # tile 0/1 has 44 hashes, not 45
    with pytest.raises(MalformedError):
        node_hashes_from_tiles([Node(8, 1)], contents)  # no tile 1/0 of width 2
    with pytest.raises(MalformedError):
        node_hashes_from_tiles([Node(0, 0)], {(0, 0): contents[(0, 0)][:-1]})
    with pytest.raises(MalformedError):
        node_hashes_from_tiles([Node(0, 0)], {(0, 0): contents[(0, 0)] + bytes(32)})
    assert node_hashes_from_tiles([Node(0, 5)], {(0, 0): contents[(0, 0)]}) == [LEAVES[5]]


# --- building tiles batch by batch ------------------------------------------------------------


@SETTINGS
@given(st.lists(st.integers(0, 700), max_size=10))
def test_extend_tiles_matches_scratch(batches: list[int]) -> None:
    sizes = []
    size = 0
    for count in batches:
        size = min(size + count, SMALL)
        sizes.append(size)
    assert _grow(sizes) == _scratch_contents(size)


@pytest.mark.parametrize(
    "step", [[1000], [65_535, 1, 1], [256 * 256, 256, 1], [255, 257, 3, 4093], [7_000]]
)
def test_extend_tiles_large_tree(
    step: list[int], large_tiles: dict[tuple[int, int], bytes]
) -> None:
    sizes = []
    size = 0
    i = 0
    while size < LARGE:
        size = min(size + step[i % len(step)], LARGE)
        sizes.append(size)
        i += 1
    assert _grow(sizes) == large_tiles


def test_extend_tiles_arguments() -> None:
    tiles = _grow([300])
    edge = {0: tiles[(0, 1)], 1: tiles[(1, 0)]}
    assert extend_tiles(300, edge, []) == {}
    assert extend_tiles(300, {**edge, 2: b""}, LEAVES[300:301]) == {
        (0, 1): tiles[(0, 1)] + LEAVES[300]
    }
    with pytest.raises(MalformedError):
        extend_tiles(300, {1: tiles[(1, 0)]}, LEAVES[300:301])  # level-0 edge missing
    with pytest.raises(MalformedError):
        extend_tiles(300, {0: tiles[(0, 1)][:-32], 1: tiles[(1, 0)]}, LEAVES[300:301])
    with pytest.raises(MalformedError):
        extend_tiles(300, {**edge, 2: LEAVES[0]}, LEAVES[300:301])  # level 2 has no partial
    with pytest.raises(MalformedError):
        extend_tiles(300, {**edge, -1: b""}, LEAVES[300:301])
    with pytest.raises(MalformedError):
        extend_tiles(300, edge, [b"\x00" * 31])
    with pytest.raises(MalformedError):
        extend_tiles(-1, {}, LEAVES[:1])
    with pytest.raises(MalformedError):
        extend_tiles(MAX_TREE_SIZE, {}, LEAVES[:1])
    with pytest.raises(MalformedError):
        extend_tiles(True, {}, LEAVES[:1])


# --- entry bundles ----------------------------------------------------------------------------


def test_entry_bundle_example() -> None:
    assert format_entry_bundle([b"ab", b""]) == bytes.fromhex("0002616200 00".replace(" ", ""))
    assert parse_entry_bundle(bytes.fromhex("000261620000")) == [b"ab", b""]


@SETTINGS
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=TILE_WIDTH))
def test_entry_bundles_round_trip(entries: list[bytes]) -> None:
    data = format_entry_bundle(entries)
    assert parse_entry_bundle(data) == entries
    assert len(data) == sum(2 + len(e) for e in entries)


def test_entry_bundle_limits() -> None:
    biggest = b"\xab" * MAX_ENTRY_SIZE
    assert parse_entry_bundle(format_entry_bundle([biggest])) == [biggest]
    assert len(parse_entry_bundle(format_entry_bundle([b""] * TILE_WIDTH))) == TILE_WIDTH
    bad_lists: list[list[object]] = [
        [],
        [b"\x00" * (MAX_ENTRY_SIZE + 1)],
        [b""] * (TILE_WIDTH + 1),
        ["text"],
    ]
    for bad in bad_lists:
        with pytest.raises(MalformedError):
            format_entry_bundle(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        b"\x00\x02a",
        b"\x00\x01ab",  # trailing byte: a length cut short
        b"\x00\x00\x00",
        b"\xff\xff" + b"\x00" * 100,
        b"\x00\x00" * (TILE_WIDTH + 1),
    ],
)
def test_bad_entry_bundles(data: bytes) -> None:
    with pytest.raises(MalformedError):
        parse_entry_bundle(data)


def test_entry_bundle_type() -> None:
    with pytest.raises(MalformedError):
        parse_entry_bundle(bytearray(b"\x00\x00"))  # type: ignore[arg-type]
