"""client.tlogtiles against an in-memory tlog-tiles log: proofs from tiles, fallbacks, errors.

Proofs built from fetched tiles must equal the ones built from the log's own tiles and must
verify against its checkpoints, across tile boundaries and levels (sizes up to 66,000 touch
level-2 tiles). Every failure mode maps onto its documented error class.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from client.tlogtiles import (
    TileFetchError,
    TileNotFoundError,
    TileResponseError,
    TlogTilesClient,
    tile_for_size,
)
from merkle.errors import MalformedError
from merkle.hashing import leaf_hash
from merkle.tiles import Tile
from merkle.tree import verify_consistency, verify_inclusion
from tests.witness_support import FakeLog, RoutingTransport, log_app

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def big() -> FakeLog:
    log = FakeLog()
    log.append(66_000)
    log.publish()
    return log


@pytest.fixture
async def http(big: FakeLog) -> AsyncIterator[httpx.AsyncClient]:
    transport = RoutingTransport({"log": log_app({"v": big})})
    async with httpx.AsyncClient(transport=transport) as client:
        yield client


@pytest.mark.parametrize(
    ("first", "second"),
    [(1, 2), (3, 7), (255, 256), (256, 257), (300, 700), (1000, 65_536), (65_535, 66_000)],
)
async def test_consistency_proofs_from_tiles(
    http: httpx.AsyncClient, big: FakeLog, first: int, second: int
) -> None:
    tiles = TlogTilesClient("http://log/v/", http)
    proof = await tiles.consistency_proof(first, second)
    assert proof == big.consistency_proof(first, second)
    verify_consistency(first, second, big.root(first), big.root(second), proof)


@pytest.mark.parametrize(("index", "size"), [(0, 1), (5, 6), (255, 300), (65_999, 66_000)])
async def test_inclusion_proofs_from_tiles(
    http: httpx.AsyncClient, big: FakeLog, index: int, size: int
) -> None:
    tiles = TlogTilesClient("http://log/v", http)
    proof = await tiles.inclusion_proof(index, size)
    verify_inclusion(leaf_hash(big.entries[index]), index, size, proof, big.root(size))


async def test_checkpoint_and_entry_bundles(http: httpx.AsyncClient, big: FakeLog) -> None:
    tiles = TlogTilesClient("http://log/v", http)
    assert await tiles.fetch_checkpoint() == big.published
    assert await tiles.fetch_entry_bundle(1, 300) == big.entries[256:300]
    assert await tiles.fetch_entry_bundle(0, 66_000) == big.entries[:256]


def test_tile_for_size() -> None:
    assert tile_for_size(0, 273, 70_000) == Tile(0, 273, 112)
    assert tile_for_size(1, 1, 70_000) == Tile(1, 1, 17)
    assert tile_for_size(2, 0, 70_000) == Tile(2, 0, 1)
    assert tile_for_size(0, 3, 70_000) == Tile(0, 3)
    assert tile_for_size(-1, 273, 70_000) == Tile(-1, 273, 112)
    with pytest.raises(MalformedError):
        tile_for_size(0, 274, 70_000)


async def test_partial_tile_falls_back_to_full() -> None:
    log = FakeLog()
    log.append(600)
    log.missing_partials = True
    transport = RoutingTransport({"log": log_app({"v": log})})
    async with httpx.AsyncClient(transport=transport) as http:
        tiles = TlogTilesClient("http://log/v", http)
        data = await tiles.fetch_tile(tile_for_size(0, 1, 300))
        assert len(data) == 256 * 32
        assert log.requests == ["tile/0/001.p/44", "tile/0/001"]
        assert await tiles.consistency_proof(100, 200) == log.consistency_proof(100, 200)
        assert log.requests[-2:] == ["tile/0/000.p/200", "tile/0/000"]
        bundle = await tiles.fetch_entry_bundle(1, 300)
        assert bundle == log.entries[256:300]


async def test_tiles_are_cached(http: httpx.AsyncClient, big: FakeLog) -> None:
    tiles = TlogTilesClient("http://log/v", http)
    before = len(big.requests)
    await tiles.consistency_proof(300, 700)
    fetched = len(big.requests) - before
    await tiles.consistency_proof(300, 700)
    assert len(big.requests) - before == fetched


async def test_missing_tile_is_not_found() -> None:
    log = FakeLog()
    log.append(10)
    transport = RoutingTransport({"log": log_app({"v": log})})
    async with httpx.AsyncClient(transport=transport) as http:
        tiles = TlogTilesClient("http://log/v", http)
        with pytest.raises(TileNotFoundError):
            await tiles.consistency_proof(5, 20)
        with pytest.raises(TileNotFoundError):
            await tiles.fetch_checkpoint()


def _app(handler: Response | None = None, delay: float = 0.0) -> Starlette:
    async def respond(request: Request) -> Response:
        await asyncio.sleep(delay)
        assert handler is not None
        return handler

    return Starlette(routes=[Route("/{path:path}", respond)])


@pytest.mark.parametrize(
    ("response", "error"),
    [
        (Response(b"x", 503), TileFetchError),
        (Response(b"x", 429), TileFetchError),
        (Response(b"x", 410), TileNotFoundError),
        (Response(b"x", 403), TileResponseError),
        (Response(b"\x00" * 31, 200), TileResponseError),
        (Response(b"\x00" * (256 * 32 + 1), 200), TileResponseError),
    ],
)
async def test_error_mapping(response: Response, error: type[Exception]) -> None:
    transport = RoutingTransport({"log": _app(response)})
    async with httpx.AsyncClient(transport=transport) as http:
        tiles = TlogTilesClient("http://log", http)
        with pytest.raises(error):
            await tiles.fetch_tile(Tile(0, 0, 1))


async def test_size_limit_on_checkpoint() -> None:
    transport = RoutingTransport({"log": _app(Response(b"x" * 2000, 200))})
    async with httpx.AsyncClient(transport=transport) as http:
        tiles = TlogTilesClient("http://log", http, max_checkpoint_bytes=1000)
        with pytest.raises(TileResponseError, match="larger"):
            await tiles.fetch_checkpoint()


async def test_timeout_and_unreachable() -> None:
    transport = RoutingTransport({"slow": _app(Response(b"x"), delay=5.0)})
    async with httpx.AsyncClient(transport=transport) as http:
        slow = TlogTilesClient("http://slow", http, timeout=0.2)
        with pytest.raises(TileFetchError, match="no answer"):
            await slow.fetch_checkpoint()
        nowhere = TlogTilesClient("http://nowhere", http)
        with pytest.raises(TileFetchError):
            await nowhere.fetch_checkpoint()
