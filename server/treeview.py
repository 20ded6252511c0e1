"""Reading the stored tree: node hashes, inclusion and consistency proofs, from tiles.

Every proof follows the three steps of ``merkle.tree``: which nodes are needed (pure), read the
tiles that hold them (one storage call), combine (pure). Node hashes below a tile's base level
are roots of runs of that tile's hashes; full tiles are immutable, so their whole internal
subtree (511 hashes) is computed once and kept in a bounded LRU cache, which makes every later
node lookup in them a list index.

Partial tiles (the right edge of the tree) change with every batch: they are taken from the
sequencer's in-memory edge when this process sequences, else read from storage, and never cached
beyond one request.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from merkle.hashing import HASH_SIZE, node_hash
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

__all__ = ["EdgeTiles", "ExpandedTile", "TreeReader", "expand_tile", "hashes_for_nodes"]

TileKey = tuple[int, int]
FULL_TILE_BYTES = TILE_WIDTH * HASH_SIZE


@dataclass(frozen=True, slots=True)
class EdgeTiles:
    """The rightmost partial tile of each level at ``tree_size`` (``(level, index) -> bytes``)."""

    tree_size: int
    tiles: Mapping[TileKey, bytes]


ExpandedTile = tuple[tuple[bytes, ...], ...]
"""A tile's internal subtree: ``rows[s][j]`` is the root of hashes ``[j*2**s, (j+1)*2**s)``."""


def expand_tile(data: bytes) -> ExpandedTile:
    """Return every complete internal node of a tile, bottom row first.

    Requires ``len(data)`` to be a multiple of 32. For a partial tile only the complete
    subtrees are present (row ``s`` has ``width >> s`` entries).
    """
    row = tuple(data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE))
    rows = [row]
    while len(row) > 1:
        row = tuple(node_hash(row[i], row[i + 1]) for i in range(0, len(row) - 1, 2))
        rows.append(row)
    return tuple(rows)


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
        self._edge = edge or (lambda: None)

    def _cached(self, key: TileKey) -> ExpandedTile | None:
        rows = self._cache.get(key)
        if rows is not None:
            self._cache.move_to_end(key)
        return rows

    def _remember(self, key: TileKey, rows: ExpandedTile) -> None:
        self._cache[key] = rows
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

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
                found[key] = expand_tile(edge.tiles[key])
            else:
                missing.append(key)
        if missing:
            stored = await self._storage.read_tiles(missing)
            for key in missing:
                data = stored.get(key)
                if data is None:
                    continue
                rows = expand_tile(data)
                if len(data) == FULL_TILE_BYTES:
                    self._remember(key, rows)
                found[key] = rows
        return found

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

    async def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]:
        """Return PATH(index, D[tree_size]). Requires ``0 <= index < tree_size`` <= stored size."""
        nodes = inclusion_nodes(index, tree_size)
        return build_inclusion_proof(index, tree_size, await self.node_hashes(nodes))

    async def consistency_proof(self, first_size: int, second_size: int) -> list[bytes]:
        """Return PROOF(first_size, D[second_size]). Requires ``0 <= first <= second``."""
        nodes = consistency_nodes(first_size, second_size)
        return build_consistency_proof(first_size, second_size, await self.node_hashes(nodes))
