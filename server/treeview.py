"""Reading the stored tree: node hashes, inclusion and consistency proofs, from tiles.

Every proof follows the three steps of ``merkle.tree``: which nodes are needed (pure), read the
tiles that hold them (one storage call), combine (pure). Node hashes below a tile's base level
are roots of runs of that tile's hashes; full tiles are immutable, so their whole internal
subtree (511 hashes) is computed once and kept in a bounded LRU cache, which makes every later
node lookup in them a list index. A miss reads the tile's whole aligned block of
:data:`READ_BLOCK` tiles in the same storage call and keeps the full ones as stored bytes (as
many as the cache holds) until a proof needs them, so a cold cache costs one read per block.

Partial tiles (the right edge of the tree) change with every batch: they are taken from the
sequencer's in-memory edge when this process sequences, else read from storage. The expansion of
an in-memory edge tile is reused until its contents change (compared byte for byte); partial
tiles read from storage are never cached beyond one request.

Memory: every structure a :class:`TreeReader` keeps is bounded by a count, none by the tree
size. An expanded full tile holds 511 hashes as separate ``bytes`` objects in row tuples, about
37 KiB (4.6 times the 8 KiB stored tile), so ``cache_tiles`` (default 4,096) expanded tiles take
up to about 150 MiB, and the full tiles kept raw (at most ``cache_tiles`` more, 8 KiB each) up to
32 MiB; edge-tile expansions (:data:`_EDGE_CACHE_LIMIT`, each at most an expanded tile and its
8 KiB contents: under 3 MiB) and right-edge folds (:data:`_FOLD_CACHE_LIMIT` hashes) are small.
The cache fills as reads reach new full tiles: with every level-0 tile read it is full at about
1.05 million entries (4,096 level-0 tiles plus their 16 level-1 tiles).
``tests/test_memory_bounds.py`` checks the bound with :mod:`tracemalloc`.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from merkle.hashing import HASH_SIZE
from merkle.tiles import TILE_HEIGHT, TILE_WIDTH
from merkle.tree import (
    Node,
    build_consistency_proof,
    build_inclusion_proof,
    consistency_nodes,
    inclusion_nodes,
    root_from_hashes,
    root_nodes,
)
from server.storage.base import Storage

__all__ = [
    "EdgeTiles",
    "ExpandedTile",
    "TreeReader",
    "expand_tile",
    "hashes_for_nodes",
    "inclusion_path",
    "inclusion_proofs",
]

TileKey = tuple[int, int]
FULL_TILE_BYTES = TILE_WIDTH * HASH_SIZE
_NODE_PREFIX = b"\x01"  # RFC 6962 §2.1 interior node hash prefix
_EDGE_CACHE_LIMIT = 64
READ_BLOCK = 16
"""Full tiles a :class:`TreeReader` reads together when a proof misses one (an aligned block)."""
_FOLD_CACHE_LIMIT = 1024


ExpandedTile = tuple[tuple[bytes, ...], ...]
"""A tile's internal subtree: ``rows[s][j]`` is the root of hashes ``[j*2**s, (j+1)*2**s)``."""


@dataclass(frozen=True, slots=True)
class EdgeTiles:
    """The rightmost partial tile of each level at ``tree_size`` (``(level, index) -> bytes``),
    and the expansions (:func:`expand_tile`) the sequencer already holds of some of them."""

    tree_size: int
    tiles: Mapping[TileKey, bytes]
    expanded: Mapping[TileKey, ExpandedTile] = field(default_factory=dict)


def expand_tile(data: bytes) -> ExpandedTile:
    """Return every complete internal node of a tile, bottom row first.

    Requires ``len(data)`` to be a multiple of 32. For a partial tile only the complete
    subtrees are present (row ``s`` has ``width >> s`` entries).
    """
    return extend_expanded((), data)


def extend_expanded(rows: ExpandedTile, data: bytes) -> ExpandedTile:
    """Return ``expand_tile(data)`` from ``rows``, the expansion of a prefix of ``data``.

    A tile only grows at its right end, so its expansion grows the same way: only the nodes
    the new hashes complete are computed (``expand_tile`` computes every node again). Requires
    ``rows == expand_tile(data[:k])`` for some ``k``, ``len(data)`` a multiple of 32; a prefix
    of ``data`` that is not what ``rows`` expanded gives a wrong result, unchecked. ``rows``
    may be ``()``, the expansion of nothing: :func:`expand_tile` is that case.
    """
    known = rows[0] if rows else ()
    start = len(known) * HASH_SIZE
    if rows and start == len(data):
        return rows
    row = known + tuple(data[i : i + HASH_SIZE] for i in range(start, len(data), HASH_SIZE))
    out = [row]
    sha256 = hashlib.sha256
    level = 1
    while len(row) > 1:
        done = rows[level] if level < len(rows) else ()
        row = done + tuple(
            sha256(_NODE_PREFIX + row[i] + row[i + 1]).digest()
            for i in range(2 * len(done), len(row) - 1, 2)
        )
        out.append(row)
        level += 1
    return tuple(out)


def _locate(node: Node) -> tuple[TileKey, int, int]:
    """Return the tile holding ``node``, the row inside the tile, and the position in the row."""
    tile_level, sub = divmod(node.level, TILE_HEIGHT)
    per_tile = TILE_WIDTH >> sub
    tile_index, offset = divmod(node.index, per_tile)
    return (tile_level, tile_index), sub, offset


def tiles_for_nodes(nodes: Iterable[Node]) -> list[TileKey]:
    """Return the tiles (level, index) that hold the given nodes, each once, in order."""
    seen: dict[TileKey, None] = {}
    for node in nodes:
        seen.setdefault(_locate(node)[0], None)
    return list(seen)


def hashes_for_nodes(
    nodes: Sequence[Node], expanded: Callable[[TileKey], ExpandedTile]
) -> list[bytes]:
    """Return the hash of each node, read from expanded tiles.

    Raises ``LookupError`` if a tile does not hold a node (the tree is shorter than asked).
    """
    out = []
    for node in nodes:
        key, sub, offset = _locate(node)
        rows = expanded(key)
        if sub >= len(rows) or offset >= len(rows[sub]):
            raise LookupError(f"node {node} is not in stored tile {key}")
        out.append(rows[sub][offset])
    return out


class _TileNotInMemory(Exception):  # noqa: N818 (internal signal, never escapes this module)
    """A tile a proof needs is neither cached nor on the in-memory edge."""


def _complete_node_hash(
    level: int, index: int, expanded: Callable[[TileKey], ExpandedTile]
) -> bytes:
    """Return the hash of the complete node ``(level, index)`` read from expanded tiles."""
    tile_level, sub = divmod(level, TILE_HEIGHT)
    tile_index, offset = divmod(index, TILE_WIDTH >> sub)
    rows = expanded((tile_level, tile_index))
    if sub >= len(rows) or offset >= len(rows[sub]):
        raise LookupError(
            f"node ({level}, {index}) is not in stored tile {(tile_level, tile_index)}"
        )
    return rows[sub][offset]


def _range_hash(start: int, end: int, expanded: Callable[[TileKey], ExpandedTile]) -> bytes:
    """Return MTH(D[start:end]) from the complete nodes covering it, largest first.

    Requires ``start`` to be a multiple of the largest power of two not above ``end - start``
    (true of every right-edge subtree), so the covering nodes are aligned.
    """
    hashes = []
    while start < end:
        level = (end - start).bit_length() - 1
        hashes.append(_complete_node_hash(level, start >> level, expanded))
        start += 1 << level
    return root_from_hashes(hashes)


Folds = dict[tuple[int, int], bytes]
"""Right-edge subtree hashes already folded: ``(start, tree_size) -> MTH(D[start:tree_size])``.

A value depends only on the log's leaves (immutable), so a reader may keep them across requests.
"""


def _sibling_hash(
    level: int,
    sibling: int,
    tree_size: int,
    expanded: Callable[[TileKey], ExpandedTile],
    folds: Folds | None,
) -> bytes:
    """Return the hash of node ``sibling`` at ``level``: a stored node, or a right-edge fold."""
    if (sibling + 1) << level <= tree_size:
        return _complete_node_hash(level, sibling, expanded)
    start = sibling << level
    if folds is None:
        return _range_hash(start, tree_size, expanded)
    value = folds.get((start, tree_size))
    if value is None:
        value = _range_hash(start, tree_size, expanded)
        if len(folds) >= _FOLD_CACHE_LIMIT:
            folds.clear()
        folds[(start, tree_size)] = value
    return value


def inclusion_path(
    index: int,
    tree_size: int,
    expanded: Callable[[TileKey], ExpandedTile],
    folds: Folds | None = None,
) -> list[bytes]:
    """Return PATH(index, D[tree_size]) (RFC 6962 §2.1.1), read from expanded tiles.

    One leaf's case of :func:`inclusion_proofs` (see there for the level-by-level view), without
    its bookkeeping for ranges. ``folds`` memoizes right-edge subtree hashes across calls.
    Requires ``0 <= index < tree_size``. Raises ValueError otherwise, and LookupError when a
    tile lacks a node.
    """
    if not 0 <= index < tree_size:
        raise ValueError(f"index {index} is not inside a tree of size {tree_size}")
    proof = []
    rows: ExpandedTile = ()
    rows_key: TileKey | None = None
    level = 0
    while (1 << level) < tree_size:
        sibling = (index >> level) ^ 1
        if (sibling + 1) << level <= tree_size:
            # A stored node: eight levels share a tile, so look the tile up once for them.
            tile_level, sub = divmod(level, TILE_HEIGHT)
            tile_index, offset = divmod(sibling, TILE_WIDTH >> sub)
            if rows_key != (tile_level, tile_index):
                rows_key = (tile_level, tile_index)
                rows = expanded(rows_key)
            if sub >= len(rows) or offset >= len(rows[sub]):
                raise LookupError(f"node ({level}, {sibling}) is not in stored tile {rows_key}")
            proof.append(rows[sub][offset])
        elif sibling << level < tree_size:
            proof.append(_sibling_hash(level, sibling, tree_size, expanded, folds))
        level += 1
    return proof


def inclusion_proofs(
    first: int,
    count: int,
    tree_size: int,
    expanded: Callable[[TileKey], ExpandedTile],
    folds: Folds | None = None,
) -> list[tuple[bytes, ...]]:
    """Return PATH(i, D[tree_size]) for every ``i`` in ``[first, first + count)``, in order.

    RFC 6962 §2.1.1. The tree is seen level by level: at level ``l`` node ``j`` covers leaves
    ``[j*2**l, min((j+1)*2**l, tree_size))``, a node without a right sibling is carried up
    unchanged, and PATH(i) is the hash of the sibling of ``i``'s ancestor at each level where
    that sibling exists, from the leaf up. The same result as :func:`merkle.tree.
    build_inclusion_proof` over :func:`merkle.tree.inclusion_nodes`, but each distinct sibling
    is read (or, on the right edge, folded) once for the whole range: consecutive leaves share
    all but their lowest siblings, so a range costs about ``count * log2(tree_size)`` list
    appends instead of that many node computations. ``folds`` memoizes right-edge subtree
    hashes across calls.

    Requires ``0 <= first``, ``count >= 0`` and ``first + count <= tree_size``; ``expanded``
    returns the expanded tile that holds a node (as in :func:`hashes_for_nodes`).
    Raises ValueError for a range outside the tree and LookupError when a tile lacks a node.
    """
    end = first + count
    if first < 0 or count < 0 or end > tree_size:
        raise ValueError(f"range [{first}, {end}) is not inside a tree of size {tree_size}")
    if count == 1:
        return [tuple(inclusion_path(first, tree_size, expanded, folds))]
    proofs: list[list[bytes]] = [[] for _ in range(count)]
    level = 0
    while (1 << level) < tree_size:
        last = (tree_size - 1) >> level  # the rightmost node of this level
        node = first >> level
        position = 0
        while position < count:
            # Leaves [position, run_end) of the range share the ancestor ``node`` at this level.
            run_end = min(((node + 1) << level) - first, count)
            sibling = node ^ 1
            if sibling <= last:
                value = _sibling_hash(level, sibling, tree_size, expanded, folds)
                for proof in proofs[position:run_end]:
                    proof.append(value)
            position = run_end
            node += 1
        level += 1
    return [tuple(proof) for proof in proofs]


class TreeReader:
    """Serves node hashes and proofs of the stored tree, with a cache of full tiles.

    ``edge`` returns the sequencer's in-memory edge tiles (or ``None`` in a process that does not
    sequence); they are used when they are at least as wide as a request needs.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        cache_tiles: int = 4096,
        edge: Callable[[], EdgeTiles | None] | None = None,
    ) -> None:
        self._storage = storage
        self._cache: OrderedDict[TileKey, ExpandedTile] = OrderedDict()
        self._cache_size = cache_tiles
        # Full tiles read along with a missed one (its aligned block), kept as stored bytes
        # until a proof needs them expanded: a cold cache fills with one storage read per block.
        self._raw: OrderedDict[TileKey, bytes] = OrderedDict()
        self._edge = edge or (lambda: None)
        self._edge_rows: dict[TileKey, tuple[bytes, ExpandedTile]] = {}
        self._folds: Folds = {}

    def _cached(self, key: TileKey) -> ExpandedTile | None:
        rows = self._cache.get(key)
        if rows is not None:
            self._cache.move_to_end(key)
        return rows

    def _remember(self, key: TileKey, rows: ExpandedTile) -> None:
        self._cache[key] = rows
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def cached_full_tile(self, key: TileKey) -> bytes | None:
        """Return the contents of a full tile whose expansion is cached, without reading storage.

        ``None`` when the tile is not in the cache (or not full). Full tiles are immutable, so
        the bytes are those storage holds (and the tile server may keep them).
        """
        rows = self._cache.get(key)
        if rows is None or len(rows[0]) != TILE_WIDTH:
            return None
        return b"".join(rows[0])

    def _expand_edge(self, edge: EdgeTiles, key: TileKey) -> ExpandedTile:
        """Return the expansion of the in-memory edge tile ``key``: the sequencer's when it has
        one, else computed here and reused while the tile is unchanged.

        An edge tile changes with every commit that reaches it, but between two commits every
        proof and tile read of the right edge needs the same expansion (up to 255 hashes).
        The cached rows are reused only for byte-identical contents.
        """
        rows = edge.expanded.get(key)
        if rows is not None:
            return rows
        data = edge.tiles[key]
        hit = self._edge_rows.get(key)
        if hit is not None and hit[0] == data:
            return hit[1]
        rows = expand_tile(data)
        if len(self._edge_rows) >= _EDGE_CACHE_LIMIT:
            self._edge_rows.clear()
        self._edge_rows[key] = (data, rows)
        return rows

    async def expanded_tiles(self, keys: Sequence[TileKey]) -> dict[TileKey, ExpandedTile]:
        """Return the expanded contents of tiles, reading what the cache and edge lack at once."""
        found: dict[TileKey, ExpandedTile] = {}
        missing: list[TileKey] = []
        edge = self._edge()
        for key in keys:
            rows = self._cached(key)
            if rows is not None:
                found[key] = rows
            elif edge is not None and key in edge.tiles:
                found[key] = self._expand_edge(edge, key)
            else:
                missing.append(key)
        if missing:
            # Tiles kept raw are taken before the read: another request may take or drop them
            # while this one waits for storage.
            taken = {key: self._raw.pop(key) for key in missing if key in self._raw}
            reads = self._with_blocks([key for key in missing if key not in taken])
            stored = await self._storage.read_tiles(reads) if reads else {}
            for key in missing:
                data = stored.pop(key, None)
                if data is None:
                    data = taken.get(key)
                if data is None:
                    continue
                rows = expand_tile(data)
                if len(data) == FULL_TILE_BYTES:
                    self._remember(key, rows)
                found[key] = rows
            for key, data in stored.items():  # the neighbours read along: full ones are kept
                if len(data) == FULL_TILE_BYTES and key not in self._cache:
                    self._raw[key] = data
                    if len(self._raw) > self._cache_size:
                        self._raw.popitem(last=False)
        return found

    def _with_blocks(self, missing: Sequence[TileKey]) -> list[TileKey]:
        """Return the tiles to read for ``missing``: each with the rest of its aligned block of
        :data:`READ_BLOCK` tiles that is neither cached nor kept raw (none without a cache).

        Storage skips the keys of tiles it does not hold, such as those beyond the tree.
        """
        if self._cache_size <= 0:
            return list(missing)
        wanted: dict[TileKey, None] = {}
        for level, index in missing:
            wanted[(level, index)] = None
            first = index - index % READ_BLOCK
            for neighbour in range(first, first + READ_BLOCK):
                key = (level, neighbour)
                if key not in self._cache and key not in self._raw:
                    wanted[key] = None
        return list(wanted)

    async def node_hashes(self, nodes: Sequence[Node]) -> list[bytes]:
        """Return the hashes of complete nodes of the stored tree. Raises ``LookupError``."""
        tiles = await self.expanded_tiles(tiles_for_nodes(nodes))

        def expanded(key: TileKey) -> ExpandedTile:
            rows = tiles.get(key)
            if rows is None:
                raise LookupError(f"tile {key} is not stored")
            return rows

        return hashes_for_nodes(nodes, expanded)

    async def root(self, tree_size: int) -> bytes:
        """Return the root of the stored tree at ``tree_size`` computed from tiles."""
        return root_from_hashes(await self.node_hashes(root_nodes(tree_size)))

    def _in_memory(self) -> Callable[[TileKey], ExpandedTile]:
        """Return a tile lookup that uses only the cache and the in-memory edge.

        It raises ``_TileNotInMemory`` for any other tile; each tile is looked up once.
        """
        edge = self._edge()
        rows_of: dict[TileKey, ExpandedTile] = {}

        def in_memory(key: TileKey) -> ExpandedTile:
            rows = rows_of.get(key)
            if rows is None:
                rows = self._cached(key)
                if rows is None and edge is not None and key in edge.tiles:
                    rows = self._expand_edge(edge, key)
                if rows is None:
                    raise _TileNotInMemory(key)
                rows_of[key] = rows
            return rows

        return in_memory

    async def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]:
        """Return PATH(index, D[tree_size]). Requires ``0 <= index < tree_size`` <= stored size.

        When every tile the path needs is cached (or on the in-memory edge), the proof is read
        straight from them with :func:`inclusion_path`; otherwise the missing tiles are read
        from storage in one call first. Raises what :func:`merkle.tree.inclusion_nodes` raises
        for a bad index or size, and ``LookupError`` when a tile lacks a node.
        """
        if type(index) is int and type(tree_size) is int and 0 <= index < tree_size:
            try:
                return inclusion_path(index, tree_size, self._in_memory(), self._folds)
            except _TileNotInMemory:
                pass
        nodes = inclusion_nodes(index, tree_size)
        return build_inclusion_proof(index, tree_size, await self.node_hashes(nodes))

    def cached_leaf_and_inclusion_proof(
        self, index: int, tree_size: int
    ) -> tuple[bytes, list[bytes]] | None:
        """Return what :meth:`leaf_and_inclusion_proof` does when every tile it needs is in
        memory (no storage read, no await), else ``None``. Requires ``0 <= index < tree_size``
        and ``tree_size`` at most the stored tree's size (``None`` otherwise).
        """
        if type(index) is int and type(tree_size) is int and 0 <= index < tree_size:
            in_memory = self._in_memory()
            try:
                proof = inclusion_path(index, tree_size, in_memory, self._folds)
                return _complete_node_hash(0, index, in_memory), proof
            except _TileNotInMemory:
                pass
        return None

    async def leaf_and_inclusion_proof(
        self, index: int, tree_size: int
    ) -> tuple[bytes, list[bytes]]:
        """Return the leaf hash at ``index`` and PATH(index, D[tree_size]).

        The leaf hash sits in the level-0 tile the path reads anyway, so in the common case
        (every tile in memory) both come from one pass. Requirements and errors as
        :meth:`inclusion_proof`.
        """
        cached = self.cached_leaf_and_inclusion_proof(index, tree_size)
        if cached is not None:
            return cached
        proof = await self.inclusion_proof(index, tree_size)
        (leaf,) = await self.node_hashes([Node(0, index)])
        return leaf, proof

    async def consistency_proof(self, first_size: int, second_size: int) -> list[bytes]:
        """Return PROOF(first_size, D[second_size]). Requires ``0 <= first <= second``."""
        nodes = consistency_nodes(first_size, second_size)
        return build_consistency_proof(first_size, second_size, await self.node_hashes(nodes))
