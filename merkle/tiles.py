"""C2SP tlog-tiles: tile coordinates and paths, which tiles a tree has, and tile contents.

The tree is published as tiles of up to 256 consecutive hashes. A level-0 tile holds leaf hashes;
a hash in a level-L tile (L >= 1) is the root of a *full* level-(L-1) tile, i.e. a node at tree
level 8L. The ``n``-th tile of level ``l`` is, for ``i`` from 0 to 255::

    MTH(D[(n * 256 + i) * 256**l : (n * 256 + i + 1) * 256**l])

The partial tile at level ``l`` of a tree of size ``s`` holds ``floor(s / 256**l) mod 256``
hashes (1..255; none when that is 0). Paths::

    tile/<L>/<N>[.p/<W>]          tile/0/x001/x234/067.p/5    (N = 1234067, W = 5)
    tile/entries/<N>[.p/<W>]      tile/entries/000

``N`` is written in groups of three digits, all but the last prefixed with ``x``. Entry bundles
(level :data:`ENTRIES_LEVEL`) hold the entries of the matching level-0 tile, each as
``uint16 big-endian length || bytes``.

Tiles are limited to trees of at most :data:`merkle.tree.MAX_TREE_SIZE` leaves, so only levels
-1..7 exist. Everything here is pure: contents are passed in as ``bytes``. Errors raise
:class:`~merkle.errors.MalformedError`.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain

from merkle.errors import MalformedError
from merkle.hashing import HASH_SIZE
from merkle.tree import (
    MAX_TREE_SIZE,
    Node,
    _require_hashes,
    _require_int,
    _subtree_root,
)

__all__ = [
    "ENTRIES_LEVEL",
    "MAX_ENTRY_SIZE",
    "TILE_HEIGHT",
    "TILE_WIDTH",
    "Tile",
    "edge_tiles",
    "extend_tiles",
    "format_entry_bundle",
    "format_tile_path",
    "new_tiles",
    "node_hashes_from_tiles",
    "node_tile",
    "parse_entry_bundle",
    "parse_tile_path",
    "tiles_for_size",
]

TILE_HEIGHT = 8
"""Tree levels spanned by one tile: a level-L tile holds nodes of tree level 8L."""

TILE_WIDTH = 256
"""Hashes in a full tile (8,192 bytes)."""

ENTRIES_LEVEL = -1
"""The level of entry bundles (``tile/entries/...``)."""

MAX_ENTRY_SIZE = 65535
"""The largest entry an entry bundle can hold (its length is a uint16)."""

_MAX_LEVEL = 63
"""The largest ``<L>`` the path grammar allows; trees up to MAX_TREE_SIZE use levels 0..7."""

_TILE_BYTES = TILE_WIDTH * HASH_SIZE
_ONLY_BYTES = {bytes}
_u16 = struct.Struct(">H").pack

_TILE_PATH = re.compile(
    r"tile/(entries|0|[1-9][0-9]?)/((?:x[0-9]{3}/)*[0-9]{3})(?:\.p/([1-9][0-9]{0,2}))?"
)
_MAX_PATH_LENGTH = 64
"""Longer than any canonical path of a tile within MAX_TREE_SIZE (bounds the parser's work)."""


@dataclass(frozen=True, slots=True, order=True)
class Tile:
    """A tile: ``width`` consecutive hashes of tile level ``level``, tile number ``index``.

    Level :data:`ENTRIES_LEVEL` (-1) is the entry bundle of the level-0 tile with the same
    index and width. ``width`` is 256 for a full tile, 1..255 for a partial one.
    Example: ``Tile(0, 1234067, 5)`` is ``tile/0/x001/x234/067.p/5``.

    Requires ints, ``-1 <= level``, ``index >= 0``, ``1 <= width <= 256``, and the tile to lie
    within a tree of at most MAX_TREE_SIZE leaves (so levels above 7 never exist).
    Raises MalformedError.
    """

    level: int
    index: int
    width: int = TILE_WIDTH

    def __post_init__(self) -> None:
        _require_int("level", self.level, ENTRIES_LEVEL, _MAX_LEVEL)
        _require_int("index", self.index, 0, MAX_TREE_SIZE)
        _require_int("width", self.width, 1, TILE_WIDTH)
        hash_level = max(self.level, 0)
        if (self.index * TILE_WIDTH + self.width) << (TILE_HEIGHT * hash_level) > MAX_TREE_SIZE:
            raise MalformedError(f"tile {self} lies beyond tree size {MAX_TREE_SIZE}")

    @property
    def is_partial(self) -> bool:
        """True for a tile of fewer than 256 hashes (the ``.p/<W>`` form)."""
        return self.width < TILE_WIDTH


def _format_index(index: int) -> str:
    """Return ``index`` as three-digit groups, all but the last prefixed ``x``.

    Example: 1234067 -> ``x001/x234/067``, 5 -> ``005``.
    """
    digits = str(index)
    digits = "0" * (-len(digits) % 3) + digits
    groups = [digits[i : i + 3] for i in range(0, len(digits), 3)]
    return "/".join(["x" + group for group in groups[:-1]] + groups[-1:])


def format_tile_path(tile: Tile) -> str:
    """Return the C2SP tlog-tiles path of ``tile``, without a leading slash.

    Examples: ``Tile(0, 1234067, 5)`` -> ``tile/0/x001/x234/067.p/5``, ``Tile(-1, 0)`` ->
    ``tile/entries/000``, ``Tile(1, 3)`` -> ``tile/1/003``.
    """
    level = "entries" if tile.level == ENTRIES_LEVEL else str(tile.level)
    suffix = f".p/{tile.width}" if tile.is_partial else ""
    return f"tile/{level}/{_format_index(tile.index)}{suffix}"


def parse_tile_path(path: str) -> Tile:
    """Parse a C2SP tlog-tiles path (``tile/<L>/<N>[.p/<W>]`` or ``tile/entries/<N>[.p/<W>]``).

    Strict: only the canonical form :func:`format_tile_path` writes is accepted. Rejected,
    among others: a leading slash, leading zeros in ``<L>`` or ``<W>``, an ``x`` on the last
    group or a missing one on the others, a redundant leading ``x000/`` group, ``.p/0``,
    ``.p/256`` and up, non-ASCII digits, and tiles beyond a tree of MAX_TREE_SIZE leaves.
    Raises MalformedError.
    """
    if not isinstance(path, str) or len(path) > _MAX_PATH_LENGTH:
        raise MalformedError("not a tile path")
    match = _TILE_PATH.fullmatch(path)
    if match is None:
        raise MalformedError(f"not a tile path: {path!r}")
    level_text, index_text, width_text = match.groups()
    level = ENTRIES_LEVEL if level_text == "entries" else int(level_text)
    index = int(index_text.replace("x", "").replace("/", ""))
    width = TILE_WIDTH
    if width_text is not None:
        width = int(width_text)
        if width >= TILE_WIDTH:
            raise MalformedError(f"partial tile width {width} is not 1..255: {path!r}")
    tile = Tile(level, index, width)
    if format_tile_path(tile) != path:
        raise MalformedError(f"non-canonical tile path: {path!r}")
    return tile


def _level_tiles(level: int, old_count: int, new_count: int) -> list[Tile]:
    """Return the level's tiles whose contents differ between ``old_count`` and ``new_count``
    hashes at that level (all tiles when ``old_count`` is 0)."""
    if new_count == old_count:
        return []
    full = new_count // TILE_WIDTH
    tiles = [Tile(level, i) for i in range(old_count // TILE_WIDTH, full)]
    if new_count % TILE_WIDTH:
        tiles.append(Tile(level, full, new_count % TILE_WIDTH))
    return tiles


def tiles_for_size(tree_size: int) -> list[Tile]:
    """Return every hash tile (levels >= 0) of a tree of ``tree_size`` leaves.

    Level by level, then by index; partial tiles with their width (C2SP tlog-tiles, "Partial
    Tiles"). Example: size 70,000 gives 273 full level-0 tiles, ``Tile(0, 273, 112)``,
    ``Tile(1, 0)``, ``Tile(1, 1, 17)`` and ``Tile(2, 0, 1)``. The list grows as
    ``tree_size / 256``; use :func:`edge_tiles` or :func:`new_tiles` for the right edge only.

    Requires ``0 <= tree_size <= MAX_TREE_SIZE``. Raises MalformedError.
    """
    _require_int("tree_size", tree_size, 0, MAX_TREE_SIZE)
    return new_tiles(0, tree_size)


def new_tiles(old_size: int, new_size: int) -> list[Tile]:
    """Return the hash tiles whose contents differ between trees of ``old_size`` and ``new_size``.

    These are the tiles of ``new_size`` that ``old_size`` does not have (with that width):
    every level-L tile from the one holding hash ``old_size >> 8L`` onwards, at the levels
    where the hash count changed. Level by level, then by index.

    Requires ``0 <= old_size <= new_size <= MAX_TREE_SIZE``. Raises MalformedError.
    """
    _require_int("old_size", old_size, 0, MAX_TREE_SIZE)
    _require_int("new_size", new_size, 0, MAX_TREE_SIZE)
    if old_size > new_size:
        raise MalformedError(f"old_size {old_size} is above new_size {new_size}")
    tiles: list[Tile] = []
    level = 0
    while new_size >> (TILE_HEIGHT * level):
        shift = TILE_HEIGHT * level
        tiles += _level_tiles(level, old_size >> shift, new_size >> shift)
        level += 1
    return tiles


def edge_tiles(tree_size: int) -> list[Tile]:
    """Return the partial hash tiles of a tree of ``tree_size`` leaves, lowest level first.

    At most one per level (C2SP tlog-tiles, "Partial Tiles"): these are the tiles the
    ``edge`` argument of :func:`extend_tiles` holds. Example: size 70,000 gives
    ``[Tile(0, 273, 112), Tile(1, 1, 17), Tile(2, 0, 1)]``.

    Requires ``0 <= tree_size <= MAX_TREE_SIZE``. Raises MalformedError.
    """
    _require_int("tree_size", tree_size, 0, MAX_TREE_SIZE)
    tiles = []
    level = 0
    while count := tree_size >> (TILE_HEIGHT * level):
        if count % TILE_WIDTH:
            tiles.append(Tile(level, count // TILE_WIDTH, count % TILE_WIDTH))
        level += 1
    return tiles


def node_tile(node: Node) -> tuple[Tile, int, int]:
    """Return ``(tile, start, count)``: the node hash is the root of ``tile[start:start+count]``.

    ``tile`` is the narrowest tile that holds the node: level ``node.level // 8``, width
    ``start + count``. ``count = 2**(node.level % 8)`` is a power of two, so the root is that
    of a complete subtree. Example: ``Node(9, 3)`` -> ``(Tile(1, 0, 8), 6, 2)``.

    Raises MalformedError if the tile would lie beyond MAX_TREE_SIZE (never for a valid Node).
    """
    tile_level, below = divmod(node.level, TILE_HEIGHT)
    first = node.index << below  # index of the node's first hash at tree level 8 * tile_level
    count = 1 << below
    tile_index, start = divmod(first, TILE_WIDTH)
    return Tile(tile_level, tile_index, start + count), start, count


def _split_hashes(data: bytes) -> list[bytes]:
    """Return the 32-byte hashes of ``data`` (whose length is a multiple of 32)."""
    return [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)]


def node_hashes_from_tiles(
    nodes: Sequence[Node], tiles: Mapping[tuple[int, int], bytes]
) -> list[bytes]:
    """Return the hashes of ``nodes`` computed from tile contents, in order.

    ``tiles`` maps ``(level, index)`` to the concatenated 32-byte hashes of that tile, any width
    at least the one :func:`node_tile` names (a wider or the full tile works too).
    Raises MalformedError if a needed tile is missing, too narrow, or not a whole number of
    hashes up to 256.
    """
    hashes = []
    for node in nodes:
        tile, start, count = node_tile(node)
        data = tiles.get((tile.level, tile.index))
        if data is None:
            raise MalformedError(f"tile {format_tile_path(tile)} is needed for {node}")
        if len(data) % HASH_SIZE or not tile.width * HASH_SIZE <= len(data) <= _TILE_BYTES:
            raise MalformedError(
                f"tile {tile.level}/{tile.index} has {len(data)} bytes, "
                f"not a multiple of {HASH_SIZE} from {tile.width * HASH_SIZE} to {_TILE_BYTES}"
            )
        lo = start * HASH_SIZE
        hashes.append(_subtree_root(_split_hashes(data[lo : lo + count * HASH_SIZE])))
    return hashes


def extend_tiles(
    tree_size: int, edge: Mapping[int, bytes], leaf_hashes: Sequence[bytes]
) -> dict[tuple[int, int], bytes]:
    """Return the new contents of every tile that changes when ``leaf_hashes`` are appended.

    ``edge[level]`` is the current content of the rightmost partial tile of that level for
    ``tree_size`` (see :func:`edge_tiles`); a missing key or ``b""`` means the level has none.
    The result maps ``(level, index)`` to the tile's full new content (its width is
    ``len // 32``): the extended partial tiles, the new full tiles, the new partial tiles.
    Each level-L tile that becomes full adds its root as a hash to level L+1. An empty
    ``leaf_hashes`` changes nothing and gives ``{}``. Work is proportional to the new hashes
    plus one partial tile per level touched.

    Requires ``0 <= tree_size`` and ``tree_size + len(leaf_hashes) <= MAX_TREE_SIZE``, 32-byte
    leaf hashes, and every given edge tile to have exactly the width ``tree_size`` implies
    (``(tree_size >> 8L) % 256`` hashes). Raises MalformedError.
    """
    _require_int("tree_size", tree_size, 0, MAX_TREE_SIZE)
    if len(leaf_hashes) > MAX_TREE_SIZE - tree_size:
        raise MalformedError(f"tree size would exceed {MAX_TREE_SIZE}")
    _require_hashes("leaf_hashes", leaf_hashes, MalformedError)
    for level, data in edge.items():
        _require_int("edge level", level, 0, _MAX_LEVEL)
        want = (tree_size >> (TILE_HEIGHT * level)) % TILE_WIDTH
        if not isinstance(data, bytes) or (data and len(data) != want * HASH_SIZE):
            raise MalformedError(
                f"edge tile of level {level} must have {want} hashes for tree size {tree_size}"
            )
    changed: dict[tuple[int, int], bytes] = {}
    level = 0
    added = list(leaf_hashes)
    while added:
        count = tree_size >> (TILE_HEIGHT * level)
        index, width = divmod(count, TILE_WIDTH)
        old = edge.get(level, b"")
        if len(old) != width * HASH_SIZE:
            raise MalformedError(f"edge tile of level {level} ({width} hashes) is missing")
        data = old + b"".join(added)
        full_roots = []
        for at in range(0, len(data), _TILE_BYTES):
            content = data[at : at + _TILE_BYTES]
            changed[(level, index)] = content
            if len(content) == _TILE_BYTES:
                full_roots.append(_subtree_root(_split_hashes(content)))
            index += 1
        added = full_roots
        level += 1
    return changed


def format_entry_bundle(entries: Iterable[bytes]) -> bytes:
    """Return an entry bundle: each entry as ``uint16 big-endian length || bytes``.

    C2SP tlog-tiles, "Log entries". Example: ``[b"ab", b""]`` -> ``00 02 61 62 00 00``.
    Requires 1..256 entries, each ``bytes`` of at most 65,535 bytes. Raises MalformedError.
    """
    # The common case, checked and encoded in C-level passes: 1..256 entries, all bytes and
    # short enough (else the loop below names the first bad one).
    if (
        isinstance(entries, list | tuple)
        and 1 <= len(entries) <= TILE_WIDTH
        and set(map(type, entries)) == _ONLY_BYTES
        and max(map(len, entries)) <= MAX_ENTRY_SIZE
    ):
        lengths = map(_u16, map(len, entries))
        return b"".join(chain.from_iterable(zip(lengths, entries, strict=True)))
    parts = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, bytes):
            raise MalformedError(f"entry {i} is not bytes")
        if len(entry) > MAX_ENTRY_SIZE:
            raise MalformedError(f"entry {i} is {len(entry)} bytes, over {MAX_ENTRY_SIZE}")
        parts.append(len(entry).to_bytes(2, "big"))
        parts.append(entry)
    if not 1 <= len(parts) // 2 <= TILE_WIDTH:
        raise MalformedError(
            f"an entry bundle holds 1..{TILE_WIDTH} entries, not {len(parts) // 2}"
        )
    return b"".join(parts)


def parse_entry_bundle(data: bytes) -> list[bytes]:
    """Parse an entry bundle (see :func:`format_entry_bundle`) strictly.

    Rejects an empty bundle, more than 256 entries, and a truncated length or entry.
    Raises MalformedError.
    """
    if not isinstance(data, bytes):
        raise MalformedError("an entry bundle is bytes")
    entries: list[bytes] = []
    at = 0
    while at < len(data):
        if len(entries) == TILE_WIDTH:
            raise MalformedError(f"entry bundle holds more than {TILE_WIDTH} entries")
        if at + 2 > len(data):
            raise MalformedError(f"entry bundle ends inside the length of entry {len(entries)}")
        length = int.from_bytes(data[at : at + 2], "big")
        at += 2
        if at + length > len(data):
            raise MalformedError(f"entry bundle ends inside entry {len(entries)}")
        entries.append(data[at : at + length])
        at += length
    if not entries:
        raise MalformedError("an entry bundle holds at least one entry")
    return entries
