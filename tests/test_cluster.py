"""Cluster mode in process: several front ends on one PostgreSQL, one elected sequencer.

Each front end is a :class:`server.cluster.ClusterLog` behind the real Starlette app (raw
intake) with its own storage pool and connections, as a separate process would have; the
multi-process tests (``kill -9`` of the sequencer) are in ``tests/test_cluster_processes.py``.
Every answer is checked with ``merkle``'s verifiers only.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from merkle.hashing import leaf_hash
from merkle.note import Ed25519Signer, Ed25519Verifier
from merkle.tree import verify_consistency
from server.app import create_app
from server.cluster import ClusterLog, cluster_names, decode_lookup_keys, encode_lookup_keys
from server.sequencer import Sequencer, Submission
from server.storage import PostgresStorage
from server.storage.base import Batch, CheckpointConflict
from tests.server_helpers import (
    b64d,
    check_submit_result,
    entry_bytes,
    make_signer,
    open_note,
    pg_schema,
)

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def front_ends(
    dsn: str, signer: Ed25519Signer, count: int, **options: Any
) -> AsyncIterator[list[tuple[ClusterLog, httpx.AsyncClient]]]:
    """Start ``count`` cluster front ends of one log on ``dsn``; yield each with a client.

    The front ends use PostgreSQL's queue unless ``local_link=True`` is given (the local link
    has tests of its own in ``tests/test_cluster_link.py``).
    """
    options.setdefault("local_link", False)
    async with contextlib.AsyncExitStack() as stack:
        out = []
        for _ in range(count):
            service = ClusterLog(
                PostgresStorage(dsn, max_size=4),
                signer,
                signer.name,
                dsn=dsn,
                batch_period=0.002,
                lease_interval=0.1,
                **options,
            )
            app = create_app(service)
            await stack.enter_async_context(app.router.lifespan_context(app))
            client = await stack.enter_async_context(
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app), base_url="http://etch.test", timeout=30
                )
            )
            out.append((service, client))
        yield out


async def wait_for(predicate: Any, within: float = 10.0) -> None:
    """Poll ``predicate()`` until true; fail after ``within`` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def leader_first(
    ends: list[tuple[ClusterLog, httpx.AsyncClient]], *, published: bool = False
) -> list[tuple[ClusterLog, httpx.AsyncClient]]:
    """Wait until exactly one front end sequences (with ``published``, also until every one
    serves a checkpoint); return the front ends, the sequencing one first."""
    await wait_for(lambda: sum(s.is_sequencer for s, _ in ends) == 1)
    if published:
        await wait_for(lambda: all(s.published is not None for s, _ in ends))
    return sorted(ends, key=lambda end: not end[0].is_sequencer)


async def submit_and_check(
    client: httpx.AsyncClient, events: list[dict[str, object]], signer: Ed25519Signer
) -> list[int]:
    """POST ``events`` at once; check each is new (201) and its result verifies; return indexes."""
    verifier = Ed25519Verifier.from_vkey(signer.vkey)
    answers = await asyncio.gather(*(client.post("/v1/events", json=e) for e in events))
    for sent, answer in zip(events, answers, strict=True):
        assert answer.status_code == 201, answer.text
        check_submit_result(answer.json(), entry_bytes(sent), verifier, vkey=signer.vkey)
    return [a.json()["index"] for a in answers]


def origin() -> str:
    """A fresh origin: lock keys and channels are derived from it, so tests never share them."""
    return f"example.com/etch/cluster-{uuid.uuid4().hex[:12]}"


def test_names_and_lookup_key_encoding() -> None:
    names = cluster_names("log.example.com/a")
    assert names == cluster_names("log.example.com/a")
    other = cluster_names("log.example.com/b")
    assert names.lock_key != other.lock_key
    assert names.commit_channel != other.commit_channel
    assert -(2**63) <= names.lock_key < 2**63
    assert names.pending_channel.startswith("etch_p_")
    keys = (("client_id", "c\x00 1"), ("token_ref", "\ud800x"), ("é", ""))
    assert decode_lookup_keys(encode_lookup_keys(keys)) == keys
    assert encode_lookup_keys([("client_id", "c1")]) == b'[["client_id","c1"]]'
    for bad in (b"{}", b'[["a"]]', b"[[1,2]]", b'[["a","b","c"]]'):
        with pytest.raises(ValueError, match="lookup key"):
            decode_lookup_keys(bad)


async def test_three_front_ends_32_clients(pg_dsn: str) -> None:
    """Every receipt verifies, no index is used twice, no gap, one sequencer."""
    signer = make_signer(origin())
    verifier = Ed25519Verifier.from_vkey(signer.vkey)
    async with pg_schema(pg_dsn) as dsn, front_ends(dsn, signer, 3) as ends:
        await wait_for(lambda: sum(s.is_sequencer for s, _ in ends) == 1)
        await wait_for(lambda: all(s.published is not None for s, _ in ends))
        indexes: dict[int, bytes] = {}
        checkpoints = []

        async def client_task(worker: int) -> None:
            rng = random.Random(worker)
            for n in range(12):
                _, client = ends[rng.randrange(3)]
                event = {"w": worker, "n": n}
                response = await client.post("/v1/events", json=event)
                assert response.status_code == 201, response.text
                body = response.json()
                checkpoints.append(
                    check_submit_result(body, entry_bytes(event), verifier, vkey=signer.vkey)
                )
                assert body["index"] not in indexes
                indexes[body["index"]] = entry_bytes(event)

        await asyncio.gather(*(client_task(w) for w in range(32)))
        assert sorted(indexes) == list(range(32 * 12))
        # A resubmission answers with the original index, from any front end.
        event = {"w": 3, "n": 5}
        for _, client in ends:
            response = await client.post("/v1/events", json=event)
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["duplicate"] is True
            assert indexes[body["index"]] == entry_bytes(event)
            check_submit_result(body, entry_bytes(event), verifier, vkey=signer.vkey)
        # Every front end serves the same, final tree; every checkpoint seen is consistent.
        await wait_for(lambda: all(s.tree_size == 32 * 12 for s, _ in ends))
        final = open_note((await ends[0][1].get("/checkpoint")).content, verifier)
        assert final.tree_size == 32 * 12
        for _, client in ends:
            assert open_note((await client.get("/checkpoint")).content, verifier) == final
            for index in (0, 17, 383):
                entry = await client.get(f"/v1/entries/{index}")
                assert b64d(entry.json()["entry"]) == indexes[index]
        for checkpoint in checkpoints:
            response = await ends[1][1].get(
                "/v1/proof/consistency",
                params={"first": checkpoint.tree_size, "second": final.tree_size},
            )
            proof = [b64d(h) for h in response.json()["proof"]]
            verify_consistency(
                checkpoint.tree_size, final.tree_size, checkpoint.root_hash, final.root_hash, proof
            )


async def test_takeover_when_the_lock_connection_dies(pg_dsn: str) -> None:
    """Killing the sequencer's lock session stops it at once; another front end takes over."""
    signer = make_signer(origin())
    verifier = Ed25519Verifier.from_vkey(signer.vkey)
    async with pg_schema(pg_dsn) as dsn, front_ends(dsn, signer, 2) as ends:
        await wait_for(lambda: sum(s.is_sequencer for s, _ in ends) == 1)
        await wait_for(lambda: all(s.published is not None for s, _ in ends))
        seen = []
        for round_ in range(3):
            leader = next(s for s, _ in ends if s.is_sequencer)
            takeovers = sum(s.takeovers for s, _ in ends)
            conn = await asyncpg.connect(pg_dsn)
            try:
                killed = await conn.fetchval(
                    "SELECT count(pg_terminate_backend(l.pid)) FROM pg_locks AS l"
                    " WHERE l.locktype = 'advisory' AND l.granted"
                    " AND ((l.classid::bigint << 32) | l.objid::bigint) = $1",
                    leader.names.lock_key,
                )
            finally:
                await conn.close()
            assert killed == 1
            # The holder stops at once; a front end (maybe the same one) takes the lock again.
            await wait_for(
                lambda takeovers=takeovers: sum(s.takeovers for s, _ in ends) > takeovers,
                within=5,
            )
            assert leader.names.lock_key == cluster_names(signer.name).lock_key
            for _, client in ends:
                event = {"round": round_, "via": id(client)}
                response = await client.post("/v1/events", json=event)
                assert response.status_code == 201, response.text
                seen.append(
                    check_submit_result(
                        response.json(), entry_bytes(event), verifier, vkey=signer.vkey
                    )
                )
            assert sum(s.is_sequencer for s, _ in ends) == 1
        assert sorted(c.tree_size for c in seen) == list(range(1, 7))


async def test_two_sequencers_never_both_commit(pg_dsn: str) -> None:
    """Two sequencers started from the same state: the checkpoint CAS refuses the loser."""
    signer = make_signer(origin())
    async with pg_schema(pg_dsn) as dsn:
        first, second = PostgresStorage(dsn), PostgresStorage(dsn)
        await first.open()
        await second.open()
        a = Sequencer(first, signer, signer.name, batch_period=0)
        b = Sequencer(second, signer, signer.name, batch_period=0)
        try:
            await a.start()
            await b.start()

            def sub(tag: str) -> Submission:
                data = tag.encode()
                return Submission(data, leaf_hash(data))

            outcomes = await asyncio.gather(
                a.submit([sub("from a")]), b.submit([sub("from b")]), return_exceptions=True
            )
            winners = [o for o in outcomes if isinstance(o, list)]
            assert len(winners) == 1, outcomes
            loser = b if winners[0] is outcomes[0] else a
            assert loser.failure is not None
            assert "another writer" in loser.failure
            state = await first.load_state()
            assert state is not None
            assert state.tree_size == 1
            # The loser's storage refuses a stale compare-and-swap directly, too.
            stale = Batch(entries=(), tiles={}, checkpoint=b"x", tree_size=0, compact_range=b"")
            with pytest.raises(CheckpointConflict):
                await second.commit(None, stale)
        finally:
            await a.stop()
            await b.stop()
            await first.close()
            await second.close()
