"""Gossip and fork detection: a split-view log caught by two witnesses, pull mode, POST /check.

The split-view harness: a malicious log (:func:`tests.witness_support.log_app`) serves view
``a`` to witness A and a forked view ``b`` to witness B (each witness is configured with its
view's URL), and pushes each view's checkpoints to its witness. The witnesses gossip with each
other every ``POLL`` seconds. They must both hold evidence that :func:`verify_evidence`
accepts within two polling periods, and neither may cosign the log afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from merkle.checkpoint import parse_checkpoint
from merkle.note import Ed25519Signer, open_note, sign_note
from tests.witness_support import (
    FakeLog,
    InProcessWitness,
    RoutingTransport,
    add_checkpoint_body,
    in_process_witness,
    log_app,
    origin_hash,
)
from witness.evidence import verify_evidence
from witness.storage import WitnessStorage, open_storage

pytestmark = pytest.mark.anyio

POLL = 1.0


@dataclass
class Pair:
    """Two witnesses that gossip, a malicious log with two views, and the router."""

    a: InProcessWitness
    b: InProcessWitness
    view_a: FakeLog
    view_b: FakeLog
    router: RoutingTransport


@contextlib.asynccontextmanager
async def witness_pair(tmp_path: Path, *, run_gossip: bool) -> AsyncIterator[Pair]:
    honest = FakeLog()
    honest.append(10)
    view_a, view_b = honest.fork(10), honest.fork(10)
    router = RoutingTransport({"log": log_app({"a": view_a, "b": view_b})})
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(httpx.AsyncClient(transport=router))
        stores: list[WitnessStorage] = []
        for name in ("a", "b"):
            store = await open_storage(tmp_path / f"{name}.sqlite3")
            stack.push_async_callback(store.close)
            stores.append(store)
        a = await stack.enter_async_context(
            in_process_witness(
                stores[0],
                [view_a.config("http://log/a")],
                name="witness.example/a",
                http=http,
                peers=("http://wb",),
                poll_interval=POLL,
                run_gossip=run_gossip,
            )
        )
        b = await stack.enter_async_context(
            in_process_witness(
                stores[1],
                [view_b.config("http://log/b")],
                name="witness.example/b",
                http=http,
                peers=("http://wa",),
                poll_interval=POLL,
                run_gossip=run_gossip,
            )
        )
        router.add("wa", a.app)
        router.add("wb", b.app)
        yield Pair(a, b, view_a, view_b, router)


async def push(w: InProcessWitness, log: FakeLog, old: int) -> httpx.Response:
    proof = [] if old == 0 else log.consistency_proof(old)
    return await w.client.post(
        "/add-checkpoint", content=add_checkpoint_body(old, proof, log.checkpoint())
    )


async def evidence(w: InProcessWitness) -> list[dict[str, object]]:
    records: list[dict[str, object]] = (await w.client.get("/evidence")).json()["evidence"]
    return records


async def document(w: InProcessWitness, record: dict[str, object]) -> bytes:
    path = f"/evidence/{record['origin_hash']}/{record['id']}"
    return (await w.client.get(path)).content


# -- the split view ---------------------------------------------------------------------------


async def test_split_view_same_size_caught_within_two_polls(tmp_path: Path) -> None:
    async with witness_pair(tmp_path, run_gossip=True) as pair:
        view_a, view_b = pair.view_a, pair.view_b
        for w, view in ((pair.a, view_a), (pair.b, view_b)):
            view.publish()
            assert (await push(w, view, 0)).status_code == 200
        await asyncio.sleep(POLL * 1.5)
        assert await evidence(pair.a) == await evidence(pair.b) == []

        view_a.append(5, tag=b" shown to A")
        view_b.append(5, tag=b" shown to B")
        view_a.publish()
        view_b.publish()
        started = time.monotonic()
        assert (await push(pair.a, view_a, 10)).status_code == 200
        assert (await push(pair.b, view_b, 10)).status_code == 200
        while not (await evidence(pair.a) and await evidence(pair.b)):
            assert time.monotonic() - started < 2 * POLL, "fork not detected in two polls"
            await asyncio.sleep(0.02)

        for w in (pair.a, pair.b):
            (record,) = await evidence(w)
            assert record["kind"] == "same-size"
            report = verify_evidence(await document(w, record), view_a.vkey)
            assert report.definitive
            assert report.first.tree_size == 15

        # Neither witness cosigns the log again, whichever view is offered.
        for w, view in ((pair.a, view_a), (pair.b, view_b)):
            view.append(1)
            refused = await push(w, view, 15)
            assert refused.status_code == 403
            stored = await w.witness.storage.latest(view.origin)
            assert stored is not None
            assert stored.tree_size == 15
        text = (await pair.a.client.get("/metrics")).text
        assert 'witness_evidence_records{origin="example.com/log"} 1.0' in text


async def test_split_view_different_sizes(tmp_path: Path) -> None:
    """A at 14 (view a), B at 12 (view b): A's proof from its tiles fails, B's is missing."""
    async with witness_pair(tmp_path, run_gossip=False) as pair:
        view_a, view_b = pair.view_a, pair.view_b
        for w, view in ((pair.a, view_a), (pair.b, view_b)):
            assert (await push(w, view, 0)).status_code == 200
        view_a.append(4, tag=b" a")
        view_b.append(2, tag=b" b")
        view_a.publish()
        view_b.publish()
        assert (await push(pair.a, view_a, 10)).status_code == 200
        assert (await push(pair.b, view_b, 10)).status_code == 200

        await asyncio.gather(pair.a.gossip.poll_once(), pair.b.gossip.poll_once())
        (at_a,) = await evidence(pair.a)
        assert at_a["kind"] == "proof-failed"
        # B needs tiles of size 14 from view b, which has 12 entries: one strike, no evidence.
        assert await evidence(pair.b) == []
        await pair.b.gossip.poll_once()
        (at_b,) = await evidence(pair.b)
        assert at_b["kind"] == "proof-unobtainable"

        for w, record in ((pair.a, at_a), (pair.b, at_b)):
            report = verify_evidence(await document(w, record), view_a.vkey)
            assert not report.definitive
            assert (report.first.tree_size, report.second.tree_size) == (12, 14)
        view_a.append(1)
        assert (await push(pair.a, view_a, 14)).status_code == 403


# -- pull mode --------------------------------------------------------------------------------


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[WitnessStorage]:
    opened = await open_storage(tmp_path / "witness.sqlite3")
    try:
        yield opened
    finally:
        await opened.close()


@contextlib.asynccontextmanager
async def pulling(
    storage: WitnessStorage, log: FakeLog, *, run_gossip: bool = False
) -> AsyncIterator[InProcessWitness]:
    router = RoutingTransport({"log": log_app({"v": log})})
    async with (
        httpx.AsyncClient(transport=router) as http,
        in_process_witness(
            storage,
            [log.config("http://log/v")],
            http=http,
            poll_interval=POLL,
            run_gossip=run_gossip,
        ) as w,
    ):
        yield w


async def stored_size(w: InProcessWitness, origin: str) -> int | None:
    stored = await w.witness.storage.latest(origin)
    return None if stored is None else stored.tree_size


async def test_pull_mode_follows_a_log_that_never_pushes(storage: WitnessStorage) -> None:
    log = FakeLog()
    log.append(5)
    log.publish()
    async with pulling(storage, log, run_gossip=True) as w:
        deadline = time.monotonic() + 2 * POLL
        while await stored_size(w, log.origin) != 5:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        log.append(700)
        log.publish()
        deadline = time.monotonic() + 2 * POLL
        while await stored_size(w, log.origin) != 705:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert any(path.startswith("tile/1/") for path in log.requests)
        response = await w.client.get(f"/{origin_hash(log.origin)}/checkpoint")
        note, verified = open_note(
            response.content, [log.signer.verifier(), w.witness.signer.verifier()]
        )
        assert parse_checkpoint(note.text).tree_size == 705
        assert len(verified) == 2
        assert await evidence(w) == []


async def test_pull_mode_catches_a_rewritten_history(storage: WitnessStorage) -> None:
    log = FakeLog()
    log.append(40)
    log.publish()
    async with pulling(storage, log) as w:
        await w.gossip.poll_once()
        assert await stored_size(w, log.origin) == 40
        rewritten = log.fork(30)
        rewritten.append(20, tag=b" rewritten")
        log.entries, log.tiles = rewritten.entries, rewritten.tiles
        log.publish()
        await w.gossip.poll_once()
        (record,) = await evidence(w)
        assert record["kind"] == "proof-failed"
        assert await stored_size(w, log.origin) == 40
        report = verify_evidence(await document(w, record), log.vkey)
        assert (report.first.tree_size, report.second.tree_size) == (40, 50)


async def test_pull_mode_outage_is_not_evidence(storage: WitnessStorage) -> None:
    log = FakeLog()
    log.append(3)
    log.publish()
    async with pulling(storage, log) as w:
        await w.gossip.poll_once()
        log.unavailable = True
        log.append(3)
        log.publish()
        await w.gossip.poll_once()
        await w.gossip.poll_once()
        assert await evidence(w) == []
        assert await stored_size(w, log.origin) == 3
        log.unavailable = False
        await w.gossip.poll_once()
        assert await stored_size(w, log.origin) == 6
        text = (await w.client.get("/metrics")).text
        assert 'witness_gossip_fetches_total{result="error",target="log"}' in text


async def test_pull_mode_ignores_a_badly_signed_checkpoint(storage: WitnessStorage) -> None:
    log = FakeLog()
    log.append(3)
    text = open_note(log.checkpoint(), [log.signer.verifier()])[0].text
    log.published = sign_note(text, [Ed25519Signer.generate(log.origin)])
    async with pulling(storage, log) as w:
        await w.gossip.poll_once()
        assert await stored_size(w, log.origin) is None
        assert await evidence(w) == []


# -- POST /check ----------------------------------------------------------------------------------


async def test_check_endpoint(storage: WitnessStorage) -> None:
    log = FakeLog()
    log.append(20)
    log.publish()
    async with pulling(storage, log) as w:
        unknown = await w.client.post("/check", content=log.checkpoint())
        assert unknown.json()["consistent"] is None
        await w.gossip.poll_once()

        same = (await w.client.post("/check", content=log.checkpoint())).json()
        assert same["consistent"] is True
        assert same["witness_tree_size"] == 20
        older = (await w.client.post("/check", content=log.checkpoint(7))).json()
        assert older["consistent"] is True
        log.append(30)
        newer = (await w.client.post("/check", content=log.checkpoint())).json()
        assert newer["consistent"] is True
        assert newer["tree_size"] == 50

        forked = log.fork(19)
        forked.append(1, tag=b" forked")
        shown = (await w.client.post("/check", content=forked.checkpoint())).json()
        assert shown["consistent"] is False
        assert shown["evidence_id"] is not None
        assert (await evidence(w))[0]["kind"] == "same-size"

        stranger = FakeLog("example.net/unknown")
        stranger.append(1)
        missing = await w.client.post("/check", content=stranger.checkpoint())
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        assert missing.json()["type"] == "urn:etch:error:witness-unknown-log"
        impostor = sign_note(
            open_note(log.checkpoint(), [log.signer.verifier()])[0].text,
            [Ed25519Signer.generate(log.origin)],
        )
        assert (await w.client.post("/check", content=impostor)).status_code == 403
        assert (await w.client.post("/check", content=b"garbage")).status_code in (400, 404)


async def test_check_push_only_log_cannot_tell_other_sizes(storage: WitnessStorage) -> None:
    log = FakeLog()
    log.append(9)
    async with in_process_witness(storage, [log.config()]) as w:
        await push(w, log, 0)
        log.append(2)
        result = (await w.client.post("/check", content=log.checkpoint())).json()
        assert result["consistent"] is None
        assert "no tiles URL" in result["reason"]


async def test_refused_checkpoint_is_rechecked_against_the_log(storage: WitnessStorage) -> None:
    log = FakeLog()
    log.append(10)
    log.publish()
    async with pulling(storage, log) as w:
        await w.gossip.poll_once()
        honest_size = 10
        # A client sends the honest next checkpoint with a broken proof: refused, then
        # re-checked against the log's tiles, which prove it consistent: no evidence.
        log.append(6)
        bad_proof = [bytes(32)] * len(log.consistency_proof(honest_size))
        body = add_checkpoint_body(honest_size, bad_proof, log.checkpoint())
        assert (await w.client.post("/add-checkpoint", content=body)).status_code == 422
        assert len(w.witness.pending_checks) == 1
        await w.gossip.poll_once()
        assert await evidence(w) == []

        # The same with a checkpoint of a fork that the log signed: the log's own tiles do
        # not prove it consistent, so the re-check turns the refusal into evidence.
        forked = log.fork(12)
        forked.append(8, tag=b" fork")
        body = add_checkpoint_body(honest_size, bad_proof, forked.checkpoint(16))
        assert (await w.client.post("/add-checkpoint", content=body)).status_code == 422
        await w.gossip.poll_once()
        (record,) = await evidence(w)
        assert record["kind"] == "proof-failed"


def peer_app(notes: dict[str, bytes]) -> Starlette:
    """A peer witness that serves fixed notes at ``/<origin hash>/checkpoint``."""

    async def checkpoint(request: Request) -> Response:
        note = notes.get(request.path_params["origin_hash"])
        if note is None:
            return Response(b"not found\n", 404)
        return Response(note, media_type="text/plain; charset=utf-8")

    return Starlette(routes=[Route("/{origin_hash}/checkpoint", checkpoint)])


async def test_peer_with_bad_signature_is_ignored(
    storage: WitnessStorage, caplog: pytest.LogCaptureFixture
) -> None:
    log = FakeLog()
    log.append(10)
    impostor = FakeLog(log.origin)  # same origin, another key, another tree of the same size
    impostor.append(10, tag=b" impostor")
    router = RoutingTransport({"peer": peer_app({origin_hash(log.origin): impostor.checkpoint()})})
    async with (
        httpx.AsyncClient(transport=router) as http,
        in_process_witness(storage, [log.config()], http=http, peers=("http://peer",)) as w,
    ):
        await push(w, log, 0)
        await w.gossip.poll_once()
        assert await evidence(w) == []
        assert "without a valid log signature" in caplog.text
        router.add("peer", peer_app({}))
        await w.gossip.poll_once()
        router.add("peer", peer_app({origin_hash(log.origin): log.checkpoint()}))
        await w.gossip.poll_once()
        assert await evidence(w) == []
        text = (await w.client.get("/metrics")).text
        for result in ("absent", "ok"):
            assert f'witness_gossip_fetches_total{{result="{result}",target="peer"}}' in text


async def test_unreachable_peer_is_not_evidence(storage: WitnessStorage) -> None:
    log = FakeLog()
    log.append(4)
    async with in_process_witness(storage, [log.config()], peers=("http://nowhere",)) as w:
        await push(w, log, 0)
        await w.gossip.poll_once()
        assert await evidence(w) == []
        text = (await w.client.get("/metrics")).text
        assert 'witness_gossip_fetches_total{result="error",target="peer"} 1.0' in text
