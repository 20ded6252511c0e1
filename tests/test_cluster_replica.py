"""Reads from a PostgreSQL streaming replica while the primary takes writes.

The replica is a real hot standby of the session's throwaway server (``pg_basebackup -R`` and
a second ``pg_ctl``, :meth:`tests.pg.PgServer.create_replica`). A cluster front end reads from
it (:class:`server.replica.ReplicaRoutedStorage`) and sequences on the primary. Pausing the
standby's WAL replay shows that what it serves comes from the replica, and that a served
checkpoint always has its tiles: the served tree stays at the replica's size while the primary
grows, and catches up once replay resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Iterator

import asyncpg
import httpx
import pytest

from merkle.checkpoint import Checkpoint
from merkle.note import Ed25519Signer, Ed25519Verifier
from merkle.tree import verify_consistency, verify_inclusion
from server.app import create_app
from server.cluster import ClusterLog
from server.replica import ReplicaRoutedStorage, ReplicaStorage
from server.storage import PostgresStorage
from tests.pg import PgServer, PgUnavailable, unavailable
from tests.server_helpers import b64d, check_submit_result, entry_bytes, make_signer, open_note
from tests.server_helpers import pg_schema as make_schema

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def replica(pg_server: PgServer) -> Iterator[PgServer]:
    """A streaming replica of the session's server, for this module."""
    pg_server.ensure_running()
    try:
        standby = pg_server.create_replica()
    except PgUnavailable as exc:
        unavailable(str(exc))
    try:
        yield standby
    finally:
        standby.destroy()


def on_replica(dsn: str, replica: PgServer) -> str:
    """Return ``dsn`` (a database and search path on the primary) pointed at ``replica``."""
    query = dsn.partition("?")[2]
    options = [part for part in query.split("&") if not part.startswith("host=")]
    return replica.dsn + "".join(f"&{part}" for part in options)


@contextlib.asynccontextmanager
async def replica_front_end(
    dsn: str, replica_dsn: str, signer: Ed25519Signer
) -> AsyncIterator[tuple[ClusterLog, httpx.AsyncClient]]:
    """A cluster front end (and sequencer) that reads from the replica."""
    primary = PostgresStorage(dsn)
    read = ReplicaRoutedStorage(primary, ReplicaStorage(replica_dsn))
    service = ClusterLog(
        primary, signer, signer.name, dsn=dsn, read_storage=read, batch_period=0.002
    )
    app = create_app(service)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://etch.test", timeout=30
        ) as client:
            yield service, client


async def replay(replica: PgServer, *, paused: bool) -> None:
    """Pause or resume WAL replay on the standby."""
    conn = await asyncpg.connect(replica.dsn)
    try:
        name = "pg_wal_replay_pause" if paused else "pg_wal_replay_resume"
        await conn.execute(f"SELECT {name}()")
    finally:
        await conn.close()


async def served(client: httpx.AsyncClient, verifier: Ed25519Verifier) -> Checkpoint:
    """GET /checkpoint, verified."""
    response = await client.get("/checkpoint")
    assert response.status_code == 200, response.text
    return open_note(response.content, verifier)


async def check_reads(
    client: httpx.AsyncClient, checkpoint: Checkpoint, rng: random.Random
) -> None:
    """The served tree is readable at the served size: a proof, its tiles, an entry."""
    size = checkpoint.tree_size
    index = rng.randrange(size)
    response = await client.get("/v1/proof/inclusion", params={"index": index, "tree_size": size})
    assert response.status_code == 200, response.text
    body = response.json()
    proof = [b64d(h) for h in body["proof"]]
    verify_inclusion(b64d(body["leaf_hash"]), index, size, proof, checkpoint.root_hash)
    width = size % 256 or 256
    tile = f"/tile/0/{(size - 1) // 256:03d}" + ("" if width == 256 else f".p/{width}")
    assert (await client.get(tile)).status_code == 200
    assert (await client.get(f"/v1/entries/{index}")).status_code == 200


async def test_replica_serves_consistent_reads_while_the_primary_writes(
    pg_dsn: str, replica: PgServer
) -> None:
    signer = make_signer("example.com/etch/replica-test")
    verifier = Ed25519Verifier.from_vkey(signer.vkey)
    rng = random.Random(7)
    async with (
        make_schema(pg_dsn) as dsn,
        replica_front_end(dsn, on_replica(dsn, replica), signer) as (service, client),
    ):
        stop = asyncio.Event()
        seen: list[Checkpoint] = []

        async def writer(worker: int) -> None:
            n = 0
            while not stop.is_set():
                event = {"w": worker, "n": n}
                response = await client.post("/v1/events", json=event)
                assert response.status_code == 201, response.text
                check_submit_result(response.json(), entry_bytes(event), verifier, vkey=signer.vkey)
                n += 1

        async def reader() -> None:
            while not stop.is_set():
                checkpoint = await served(client, verifier)
                if seen:
                    assert checkpoint.tree_size >= seen[-1].tree_size
                if checkpoint.tree_size:
                    await check_reads(client, checkpoint, rng)
                seen.append(checkpoint)
                await asyncio.sleep(0.01)

        for _ in range(600):  # the replica serves the empty tree once it has replayed it
            if service.published is not None:
                break
            await asyncio.sleep(0.05)
        writers = [asyncio.create_task(writer(w)) for w in range(8)]
        readers = [asyncio.create_task(reader()) for _ in range(2)]
        try:
            await asyncio.sleep(1.5)
            # Replay paused: the primary grows, the served tree stays the replica's.
            await replay(replica, paused=True)
            await asyncio.sleep(0.3)
            frozen = await served(client, verifier)
            await asyncio.sleep(1.0)
            assert (await served(client, verifier)) == frozen
            primary_state = await service.primary.load_state()
            assert primary_state is not None
            assert primary_state.tree_size > frozen.tree_size
            await check_reads(client, frozen, rng)
            await replay(replica, paused=False)
            for _ in range(200):
                if (await served(client, verifier)).tree_size > frozen.tree_size:
                    break
                await asyncio.sleep(0.05)
            assert (await served(client, verifier)).tree_size > frozen.tree_size
            await asyncio.sleep(0.5)
        finally:
            stop.set()
            await replay(replica, paused=False)
            await asyncio.gather(*writers, *readers)
        final = await served(client, verifier)
        for checkpoint in {c.tree_size: c for c in seen if c.tree_size}.values():
            response = await client.get(
                "/v1/proof/consistency",
                params={"first": checkpoint.tree_size, "second": final.tree_size},
            )
            proof = [b64d(h) for h in response.json()["proof"]]
            verify_consistency(
                checkpoint.tree_size,
                final.tree_size,
                checkpoint.root_hash,
                final.root_hash,
                proof,
            )
        assert len({c.tree_size for c in seen}) > 3
