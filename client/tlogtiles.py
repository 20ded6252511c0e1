"""An async reader of any C2SP tlog-tiles log over :mod:`httpx`: checkpoint, tiles, proofs.

Proofs are built the golang/mod ``sumdb/tlog`` way, in three steps: compute which stored
hashes are needed (:func:`merkle.tree.consistency_nodes` / :func:`~merkle.tree.inclusion_nodes`,
pure), fetch the tiles that hold them (one request per tile, in parallel), and combine
(:func:`merkle.tiles.node_hashes_from_tiles` then :func:`~merkle.tree.build_consistency_proof`
/ :func:`~merkle.tree.build_inclusion_proof`, pure).

Which tile to fetch. tlog-tiles only promises partial tiles for tree sizes the log checkpointed,
so every read names the tree size it is for: a tile ``(L, N)`` of a tree of size ``s`` is read
at the width it has in that tree (``min(256, (s >> 8L) - 256N)`` hashes). A partial tile that
answers 404 is fetched again as the full tile (the log may have completed it and deleted the
partial one, as the specification allows). Nothing here verifies a proof: callers check proofs
against signed checkpoints.

Errors (all :class:`TlogTilesError`)::

    TlogTilesError
    ├── TileFetchError       transport failure, timeout, 429 or 5xx: try again later
    ├── TileNotFoundError    the log answered 404/410 for a resource (after the full-tile fallback)
    └── TileResponseError    the answer is malformed: wrong length, over the size limit, other 4xx

Full and partial tiles are immutable, so fetched tiles are kept in a small LRU cache.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence

import httpx

from merkle.errors import MalformedError
from merkle.hashing import HASH_SIZE
from merkle.tiles import (
    ENTRIES_LEVEL,
    MAX_ENTRY_SIZE,
    TILE_HEIGHT,
    TILE_WIDTH,
    Tile,
    format_tile_path,
    node_hashes_from_tiles,
    node_tile,
    parse_entry_bundle,
)
from merkle.tree import (
    Node,
    build_consistency_proof,
    build_inclusion_proof,
    consistency_nodes,
    inclusion_nodes,
)

__all__ = [
    "MAX_BUNDLE_BYTES",
    "MAX_CHECKPOINT_BYTES",
    "TileFetchError",
    "TileNotFoundError",
    "TileResponseError",
    "TlogTilesClient",
    "TlogTilesError",
    "tile_for_size",
]

MAX_CHECKPOINT_BYTES = 64 * 1024
"""Default limit on a checkpoint response (a note with many cosignatures fits easily)."""

MAX_BUNDLE_BYTES = TILE_WIDTH * (2 + MAX_ENTRY_SIZE)
"""Largest possible entry bundle: 256 entries of 65,535 bytes with their length prefixes."""

_TILE_BYTES = TILE_WIDTH * HASH_SIZE


class TlogTilesError(Exception):
    """Base of the errors of :class:`TlogTilesClient`; ``url`` is the resource involved."""

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(f"{message} ({url})")
        self.url = url


class TileFetchError(TlogTilesError):
    """The resource could not be fetched now (network, timeout, 429, 5xx); retry later."""


class TileNotFoundError(TlogTilesError):
    """The log answered 404 or 410: it does not serve the resource."""


class TileResponseError(TlogTilesError):
    """The log answered, but with something unusable (size, length, unexpected status)."""


def tile_for_size(tile_level: int, tile_index: int, tree_size: int) -> Tile:
    """Return the tile ``(tile_level, tile_index)`` at the width it has in a tree of ``tree_size``.

    C2SP tlog-tiles "Partial Tiles": ``min(256, (tree_size >> 8 * tile_level) - 256 *
    tile_index)`` hashes. Level -1 (entry bundles) uses level 0's width. Raises MalformedError
    if the tree has no hash in that tile.
    """
    count = tree_size >> (TILE_HEIGHT * max(tile_level, 0))
    width = min(TILE_WIDTH, count - TILE_WIDTH * tile_index)
    if width < 1:
        raise MalformedError(f"a tree of size {tree_size} has no tile {tile_level}/{tile_index}")
    return Tile(tile_level, tile_index, width)


class TlogTilesClient:
    """Reads one log's ``<prefix>/checkpoint`` and ``<prefix>/tile/...`` resources.

    ``http`` is a shared client (keep-alive); ``timeout`` bounds each whole request, body
    included; ``concurrency`` bounds parallel tile requests; ``cache_tiles`` is the LRU size.
    """

    def __init__(
        self,
        prefix: str,
        http: httpx.AsyncClient,
        *,
        timeout: float = 10.0,
        max_checkpoint_bytes: int = MAX_CHECKPOINT_BYTES,
        concurrency: int = 8,
        cache_tiles: int = 256,
    ) -> None:
        """Prepare a reader for the log at ``prefix`` (trailing slashes are ignored)."""
        self.prefix = prefix.rstrip("/")
        self._http = http
        self._timeout = timeout
        self._max_checkpoint = max_checkpoint_bytes
        self._semaphore = asyncio.Semaphore(concurrency)
        self._cache: collections.OrderedDict[Tile, bytes] = collections.OrderedDict()
        self._cache_size = cache_tiles

    async def _get(self, path: str, limit: int) -> bytes:
        url = f"{self.prefix}/{path}"
        try:
            async with asyncio.timeout(self._timeout):
                async with self._http.stream("GET", url, timeout=self._timeout) as response:
                    status = response.status_code
                    if status in (404, 410):
                        raise TileNotFoundError(f"log answered {status}", url=url)
                    if status == 429 or status >= 500:
                        raise TileFetchError(f"log answered {status}", url=url)
                    if status != 200:
                        raise TileResponseError(f"log answered {status}", url=url)
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > limit:
                            raise TileResponseError(
                                f"response is larger than {limit} bytes", url=url
                            )
                    return bytes(body)
        except TimeoutError:
            raise TileFetchError(f"no answer within {self._timeout} s", url=url) from None
        except httpx.HTTPError as exc:
            raise TileFetchError(f"{type(exc).__name__}", url=url) from None

    async def fetch_bytes(self, path: str, limit: int) -> bytes:
        """Return the body of ``<prefix>/<path>``, at most ``limit`` bytes, unparsed.

        For callers that parse a resource themselves (a fused parse-and-hash loop). Raises
        TileNotFoundError, TileFetchError, TileResponseError.
        """
        async with self._semaphore:
            return await self._get(path, limit)

    async def fetch_checkpoint(self) -> bytes:
        """Return the bytes of ``<prefix>/checkpoint`` (unverified). Raises TlogTilesError."""
        return await self._get("checkpoint", self._max_checkpoint)

    async def fetch_tile(self, tile: Tile) -> bytes:
        """Return a hash tile's contents: exactly ``width`` hashes, or 256 after a fallback.

        Requires a hash tile (level >= 0) whose existence a verified checkpoint implies. A
        partial tile answering 404 is retried as the full tile. Raises TileResponseError for a
        body of the wrong length, TileNotFoundError, TileFetchError.
        """
        if tile.level == ENTRIES_LEVEL:
            raise MalformedError("fetch_tile reads hash tiles; use fetch_entry_bundle")
        cached = self._cache_get(tile)
        if cached is not None:
            return cached
        try:
            data = await self._fetch_exact(tile)
        except TileNotFoundError:
            if not tile.is_partial:
                raise
            full = Tile(tile.level, tile.index)
            data = self._cache_get(full) or await self._fetch_exact(full)
            self._cache_put(full, data)
        self._cache_put(tile, data)
        return data

    async def _fetch_exact(self, tile: Tile) -> bytes:
        async with self._semaphore:
            data = await self._get(format_tile_path(tile), _TILE_BYTES)
        if len(data) != tile.width * HASH_SIZE:
            raise TileResponseError(
                f"tile has {len(data)} bytes, expected {tile.width * HASH_SIZE}",
                url=f"{self.prefix}/{format_tile_path(tile)}",
            )
        return data

    def _cache_get(self, tile: Tile) -> bytes | None:
        data = self._cache.get(tile)
        if data is not None:
            self._cache.move_to_end(tile)
        return data

    def _cache_put(self, tile: Tile, data: bytes) -> None:
        self._cache[tile] = data
        self._cache.move_to_end(tile)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def read_node_hashes(self, nodes: Sequence[Node], tree_size: int) -> list[bytes]:
        """Return the hashes of ``nodes``, complete subtrees of the tree of ``tree_size``.

        Fetches each needed tile once, in parallel, at its width in that tree. Requires every
        node to lie within the tree. Raises TlogTilesError, or MalformedError for a node
        outside the tree.
        """
        wanted: dict[tuple[int, int], Tile] = {}
        for node in nodes:
            tile, _, _ = node_tile(node)
            key = (tile.level, tile.index)
            if key not in wanted:
                wanted[key] = tile_for_size(tile.level, tile.index, tree_size)
        keys = list(wanted)
        contents = await asyncio.gather(*(self.fetch_tile(wanted[key]) for key in keys))
        return node_hashes_from_tiles(nodes, dict(zip(keys, contents, strict=True)))

    async def consistency_proof(self, first_size: int, second_size: int) -> list[bytes]:
        """Return PROOF(first_size, D[second_size]) built from the log's tiles (RFC 6962 §2.1.2).

        Requires ``0 <= first_size <= second_size`` and ``second_size`` a checkpointed size.
        The proof is not verified here. Raises TlogTilesError or MalformedError.
        """
        nodes = consistency_nodes(first_size, second_size)
        hashes = await self.read_node_hashes(nodes, second_size)
        return build_consistency_proof(first_size, second_size, hashes)

    async def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]:
        """Return PATH(index, D[tree_size]) built from the log's tiles (RFC 6962 §2.1.1).

        Requires ``0 <= index < tree_size`` and ``tree_size`` a checkpointed size. The proof is
        not verified here. Raises TlogTilesError or MalformedError.
        """
        nodes = inclusion_nodes(index, tree_size)
        hashes = await self.read_node_hashes(nodes, tree_size)
        return build_inclusion_proof(index, tree_size, hashes)

    async def fetch_entry_bundle(self, bundle_index: int, tree_size: int) -> list[bytes]:
        """Return the entries of bundle ``bundle_index`` as they are in a tree of ``tree_size``.

        Reads ``tile/entries/<N>[.p/<W>]`` (falling back to the full bundle when a partial one
        answers 404, then keeping its first W entries). Entries are not checked against leaf
        hashes here. Raises TileResponseError for a malformed bundle or a wrong entry count,
        TileNotFoundError, TileFetchError, or MalformedError if the tree has no such bundle.
        """
        tile = tile_for_size(ENTRIES_LEVEL, bundle_index, tree_size)
        try:
            entries = await self._bundle(tile)
        except TileNotFoundError:
            if not tile.is_partial:
                raise
            entries = (await self._bundle(Tile(ENTRIES_LEVEL, bundle_index)))[: tile.width]
        return entries

    async def _bundle(self, tile: Tile) -> list[bytes]:
        path = format_tile_path(tile)
        async with self._semaphore:
            data = await self._get(path, MAX_BUNDLE_BYTES)
        try:
            entries = parse_entry_bundle(data)
        except MalformedError as exc:
            raise TileResponseError(f"malformed entry bundle: {exc}", url=path) from None
        if len(entries) != tile.width:
            raise TileResponseError(
                f"bundle has {len(entries)} entries, expected {tile.width}", url=path
            )
        return entries
