"""Read fast paths: plain inclusion proof queries, and full tiles from the proof reader's cache.

``GET /v1/proof/inclusion?index=I&tree_size=N`` with canonical decimals is answered from the raw
query string; every other form (and every error) takes the general path. These tests check that
both give the same bytes for the same proof and that the refusals are unchanged at the edges of
the fast path. A full tile that proofs already read (kept expanded by the tree reader) is served
without a storage read, with the stored bytes; a cold tree reader reads each aligned block of
level-0 tiles once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import pytest

from merkle.hashing import HASH_SIZE, leaf_hash
from merkle.tiles import Tile, format_tile_path
from merkle.tree import verify_inclusion
from server.storage.base import Storage
from server.treeview import READ_BLOCK, TreeReader
from tests.server_helpers import open_log

pytestmark = pytest.mark.anyio


async def test_plain_and_general_queries_give_the_same_answers(tmp_path: Path) -> None:
    async with open_log(str(tmp_path / "log.db")) as log:
        await log.fill(300)
        for index, size in ((0, 1), (5, 300), (299, 300), (256, 257)):
            plain = await log.client.get(f"/v1/proof/inclusion?index={index}&tree_size={size}")
            other = await log.client.get(f"/v1/proof/inclusion?tree_size={size}&index={index}")
            encoded = await log.client.get(
                f"/v1/proof/inclusion?index=%3{str(index)[0]}{str(index)[1:]}&tree_size={size}"
            )
            assert plain.status_code == other.status_code == encoded.status_code == 200
            assert plain.content == other.content == encoded.content


@pytest.mark.parametrize(
    ("query", "status", "slug"),
    [
        ("index=300&tree_size=300", 400, "index-out-of-range"),
        ("index=0&tree_size=301", 400, "tree-size-unknown"),
        ("index=0&tree_size=0", 400, "index-out-of-range"),
        ("index=05&tree_size=300", 400, "bad-parameter"),
        ("index=5&tree_size=9223372036854775808", 400, "bad-parameter"),
        # Not plain: the general path decides (the last value of a repeated parameter).
        ("index=5&tree_size=300&index=6", 200, None),
    ],
)
async def test_refusals_at_the_edges_of_the_plain_form(
    tmp_path: Path, query: str, status: int, slug: str | None
) -> None:
    async with open_log(str(tmp_path / "log.db")) as log:
        await log.fill(300)
        response = await log.client.get(f"/v1/proof/inclusion?{query}")
        assert response.status_code == status
        if slug is None:
            assert response.json()["index"] == 6
        else:
            assert response.json()["type"] == f"urn:etch:error:{slug}"


async def test_full_tiles_read_by_proofs_are_served_without_storage(tmp_path: Path) -> None:
    async with open_log(str(tmp_path / "log.db")) as log:
        entries = await log.fill(600)
        storage = log.service.storage
        assert len(entries) == 600
        # A proof for index 10 at size 600 reads level-0 tile 0 (full) into the reader's cache.
        proof = await log.client.get("/v1/proof/inclusion?index=10&tree_size=600")
        assert proof.status_code == 200
        stored = await storage.read_tiles([(0, 0)])
        reads: list[Sequence[tuple[int, int]]] = []
        read_tiles = storage.read_tiles

        async def counted(coords: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
            reads.append(coords)
            return await read_tiles(coords)

        storage.read_tiles = counted  # type: ignore[method-assign]
        tile = await log.client.get("/" + format_tile_path(Tile(0, 0)))
        assert tile.status_code == 200
        assert tile.content == stored[(0, 0)]
        assert len(tile.content) == 256 * HASH_SIZE
        assert reads == []
        # A full tile no proof has read comes from storage, with the same bytes.
        other = await log.client.get("/" + format_tile_path(Tile(0, 1)))
        assert other.status_code == 200
        assert reads
        assert other.content == (await read_tiles([(0, 1)]))[(0, 1)]


async def test_a_cold_reader_reads_a_block_of_tiles_once(tmp_path: Path) -> None:
    size = READ_BLOCK * 256 + 5
    async with open_log(str(tmp_path / "log.db")) as log:
        entries = await log.fill(size)
        published = log.service.published
        assert published is not None
        root = published.checkpoint.root_hash
        storage = log.service.storage
        reads: list[Sequence[tuple[int, int]]] = []

        class Counting:
            async def read_tiles(
                self, coords: Sequence[tuple[int, int]]
            ) -> dict[tuple[int, int], bytes]:
                reads.append(list(coords))
                return await storage.read_tiles(coords)

        reader = TreeReader(cast(Storage, Counting()))
        for index in (3, 256 * 5 + 7, 256 * (READ_BLOCK - 1), size - 1):
            proof = await reader.inclusion_proof(index, size)
            verify_inclusion(leaf_hash(entries[index]), index, size, proof, root)
        # The first proof read block 0 of level 0 along with tile 0; the later ones found their
        # full level-0 tiles kept raw from it. (Without the sequencer's edge, each proof reads
        # the partial tile (0, READ_BLOCK) again, with its block's keys beyond the tree.)
        full = [key for call in reads for key in call if key[0] == 0 and key[1] < READ_BLOCK]
        assert sorted(full) == [(0, i) for i in range(READ_BLOCK)]
        assert all((0, READ_BLOCK) in call for call in reads)


async def test_concurrent_proofs_share_tiles_kept_raw(tmp_path: Path) -> None:
    """Two proofs needing the same raw-kept tile while both wait for storage: both answer."""
    size = READ_BLOCK * 256 + 5
    async with open_log(str(tmp_path / "log.db")) as log:
        entries = await log.fill(size)
        published = log.service.published
        assert published is not None
        storage = log.service.storage

        class Yielding:
            async def read_tiles(
                self, coords: Sequence[tuple[int, int]]
            ) -> dict[tuple[int, int], bytes]:
                await asyncio.sleep(0.01)  # let the other proof run up to its own read
                return await storage.read_tiles(coords)

        reader = TreeReader(cast(Storage, Yielding()))
        await reader.inclusion_proof(3, size)  # keeps tiles 1..15 of level 0 raw
        for first in (256 * 5, 256 * 6 + 9):
            proofs = await asyncio.gather(
                reader.inclusion_proof(first, size), reader.inclusion_proof(first + 1, size)
            )
            for index, proof in zip((first, first + 1), proofs, strict=True):
                verify_inclusion(
                    leaf_hash(entries[index]), index, size, proof, published.checkpoint.root_hash
                )
