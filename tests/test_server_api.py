"""The log's HTTP API on its happy paths, in process, on SQLite and PostgreSQL.

Every answer is checked with ``merkle``'s verifiers and the log's public key only: receipts and
proofs verify against signed checkpoints, tiles and entry bundles agree with hashes recomputed
from the entries (RFC 6962 §2.1 from scratch, :func:`tests.server_helpers.subtree_root`), and
every pair of checkpoints seen is consistent.
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import cbor2
import httpx
import pytest
from starlette.routing import Router

from merkle.checkpoint import Checkpoint, format_checkpoint
from merkle.compact import CompactRange
from merkle.hashing import leaf_hash
from merkle.note import sign_note
from merkle.policy import parse_policy
from merkle.receipt import parse_receipt, verify_receipt
from merkle.tiles import Tile, extend_tiles, format_tile_path, parse_entry_bundle
from merkle.tree import verify_inclusion
from server.storage import open_storage
from server.storage.base import Batch, NewEntry
from tests.server_helpers import (
    BACKENDS,
    InProcessLog,
    RootTracker,
    b64d,
    check_consistency,
    check_problem,
    check_submit_result,
    database,
    entry_bytes,
    make_signer,
    open_log,
    open_note,
    read_tree,
    subtree_root,
)

pytestmark = pytest.mark.anyio


@pytest.fixture(params=BACKENDS)
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with database(request.param, request, tmp_path) as opened:
        yield opened


@pytest.fixture
async def log(url: str) -> AsyncIterator[InProcessLog]:
    async with open_log(url) as opened:
        yield opened


# -- submissions -------------------------------------------------------------------------------


async def test_submit_json_then_identical_resubmission(log: InProcessLog) -> None:
    event = {"iss": "https://as.example", "jti": "j-1", "iat": 1_700_000_000, "ok": True}
    first = await log.submit(event)
    assert first.status_code == 201, first.text
    assert first.headers["content-type"] == "application/json"
    body = first.json()
    assert body["duplicate"] is False
    assert body["index"] == 0
    checkpoint = check_submit_result(body, entry_bytes(event), log.verifier, vkey=log.vkey)
    assert checkpoint.origin == log.service.origin
    assert checkpoint.tree_size == 1

    again = await log.submit_ok(event)
    assert again["duplicate"] is True
    assert again["index"] == 0
    # The same event as CBOR is the same entry: deterministic encoding makes them identical.
    as_cbor = await log.submit_ok(event, cbor=True)
    assert (as_cbor["index"], as_cbor["duplicate"]) == (0, True)
    _, checkpoint = await log.checkpoint()
    assert checkpoint.tree_size == 1


async def test_submit_cbor_in_any_key_order_is_logged_deterministically(log: InProcessLog) -> None:
    await log.submit_ok({"a": 0})
    event = {"zz": [1, -2, "x", b"\x00\x01"], "a": {"b": None, "aa": False}, "m": 2**64 - 1}
    body = cbor2.dumps(dict(reversed(list(event.items()))))  # keys not in canonical order
    response = await log.client.post(
        "/v1/events", content=body, headers={"content-type": "application/cbor"}
    )
    assert response.status_code == 201, response.text
    result = response.json()
    assert result["index"] == 1
    entry = entry_bytes(event)
    assert entry != body
    again = await log.submit_ok(event, cbor=True)  # another encoding of the same event
    assert (again["index"], again["duplicate"]) == (1, True)

    stored = (await log.client.get("/v1/entries/1")).json()
    assert b64d(stored["entry"]) == entry
    assert b64d(stored["leaf_hash"]) == leaf_hash(entry)
    assert stored["index"] == 1
    assert isinstance(stored["log_time"], int)
    assert stored["event"]["a"] == {"b": None, "aa": False}
    assert stored["event"]["m"] == 2**64 - 1


async def test_receipt_endpoint_verifies_against_published_checkpoint(log: InProcessLog) -> None:
    events = [{"n": i, "kind": "receipt"} for i in range(5)]
    for event in events:
        await log.submit_ok(event)
    note, checkpoint = await log.checkpoint()
    policy = parse_policy(f"log {log.vkey}\nquorum none\n")
    for index, event in enumerate(events):
        response = await log.client.get(f"/v1/receipt/{index}")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        receipt = parse_receipt(response.content)
        assert receipt.index == index
        assert receipt.checkpoint == note
        assert verify_receipt(receipt, entry_bytes(event), policy) == checkpoint
    check_problem(await log.client.get("/v1/receipt/5"), "not-found", 404)


async def test_batch_submission_results_in_request_order(log: InProcessLog) -> None:
    await log.submit_ok({"n": 1})
    events = [{"n": 2}, {"n": 1}, {"n": 3}, {"n": 2}]
    response = await log.client.post("/v1/events/batch", json=events)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["index"] for r in results] == [1, 0, 2, 1]
    assert [r["duplicate"] for r in results] == [False, True, False, True]
    for result, event in zip(results, events, strict=True):
        check_submit_result(result, entry_bytes(event), log.verifier, vkey=log.vkey)


# -- proofs --------------------------------------------------------------------------------------


async def _grow(log: InProcessLog, steps: list[int]) -> tuple[list[bytes], list[Checkpoint]]:
    """Append batches of the given sizes; return all entries and the checkpoint after each."""
    entries: list[bytes] = []
    checkpoints = [(await log.checkpoint())[1]]
    for step, count in enumerate(steps):
        entries += await log.fill(count, tag=f"grow{step}")
        checkpoints.append((await log.checkpoint())[1])
    return entries, checkpoints


async def test_inclusion_proofs_by_index_and_by_leaf_hash(log: InProcessLog) -> None:
    entries, checkpoints = await _grow(log, [1, 2, 5, 300])
    size = len(entries)
    assert checkpoints[-1].tree_size == size == 308
    leaves = [leaf_hash(e) for e in entries]
    tracker = RootTracker()
    roots = {}
    for value in leaves:
        tracker.append(value)
        roots[tracker.size] = tracker.root()
    assert all(roots[c.tree_size] == c.root_hash for c in checkpoints[1:])

    rng = random.Random(6962)
    cases = [(0, 1), (0, size), (size - 1, size), (255, 256), (256, 257), (255, 308)]
    cases += [(i, n) for n in rng.sample(range(1, size + 1), 12) for i in [rng.randrange(n)]]
    for index, tree_size in cases:
        response = await log.client.get(
            "/v1/proof/inclusion", params={"index": str(index), "tree_size": str(tree_size)}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["index"], body["tree_size"]) == (index, tree_size)
        assert b64d(body["leaf_hash"]) == leaves[index]
        proof = [b64d(h) for h in body["proof"]]
        verify_inclusion(leaves[index], index, tree_size, proof, roots[tree_size])

    for index in (0, 7, 300, size - 1):
        response = await log.client.get(
            "/v1/proof/inclusion", params={"leaf_hash": leaves[index].hex()}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["index"] == index
        assert body["tree_size"] == size  # defaults to the published checkpoint
        proof = [b64d(h) for h in body["proof"]]
        verify_inclusion(leaves[index], index, size, proof, checkpoints[-1].root_hash)

    absent = leaf_hash(b"never logged").hex()
    check_problem(
        await log.client.get("/v1/proof/inclusion", params={"leaf_hash": absent}),
        "not-found",
        404,
    )


async def test_consistency_between_every_pair_of_checkpoints(log: InProcessLog) -> None:
    _, checkpoints = await _grow(log, [1, 1, 2, 3, 249, 1, 255, 1])
    sizes = [c.tree_size for c in checkpoints]
    assert sizes == [0, 1, 2, 4, 7, 256, 257, 512, 513]
    for i, older in enumerate(checkpoints):
        for newer in checkpoints[i:]:
            await check_consistency(log.client, older, newer)


# -- tiles and entry bundles ---------------------------------------------------------------------


async def test_tiles_and_bundles_match_the_entries(log: InProcessLog) -> None:
    entries, checkpoints = await _grow(log, [3, 250, 5, 342])
    size = len(entries)
    assert size == 600
    snapshot = await read_tree(log.client, size)
    assert list(snapshot.entries) == entries
    assert subtree_root(snapshot.leaf_hashes) == checkpoints[-1].root_hash
    # A smaller partial width is the prefix of what is stored (C2SP tlog-tiles "Partial Tiles").
    for tile, start in ((Tile(0, 2, 10), 512), (Tile(0, 0, 100), 0)):
        response = await log.client.get("/" + format_tile_path(tile))
        assert response.status_code == 200
        assert response.content == b"".join(snapshot.leaf_hashes[start : start + tile.width])
    level1 = (await log.client.get("/tile/1/000.p/2")).content
    assert level1[:32] == subtree_root(snapshot.leaf_hashes[:256])
    assert level1[32:] == subtree_root(snapshot.leaf_hashes[256:512])
    # Each commit kept the stored prefix: the checkpoints of every step match the tiles.
    tracker = RootTracker()
    roots = {0: tracker.root()}
    for value in snapshot.leaf_hashes:
        tracker.append(value)
        roots[tracker.size] = tracker.root()
    assert all(roots[c.tree_size] == c.root_hash for c in checkpoints)


async def test_tile_cache_headers_and_content_types(log: InProcessLog) -> None:
    await log.fill(300)
    full = await log.client.get("/tile/0/000")
    assert full.status_code == 200
    assert full.headers["content-type"] == "application/octet-stream"
    assert "immutable" in full.headers["cache-control"]
    partial = await log.client.get("/tile/0/001.p/44")
    assert partial.status_code == 200
    assert "immutable" not in partial.headers["cache-control"]
    assert _max_age(partial) <= 60
    bundle = await log.client.get("/tile/entries/000", headers={"accept-encoding": "identity"})
    assert "immutable" in bundle.headers["cache-control"]
    assert "content-encoding" not in bundle.headers
    assert len(parse_entry_bundle(bundle.content)) == 256
    partial_bundle = await log.client.get("/tile/entries/001.p/44")
    assert "immutable" not in partial_bundle.headers["cache-control"]
    checkpoint = await log.client.get("/checkpoint")
    assert checkpoint.headers["content-type"].startswith("text/plain")
    assert "immutable" not in checkpoint.headers["cache-control"]
    assert _max_age(checkpoint) <= 60


async def test_cached_full_tiles_are_answered_before_routing_with_the_same_answer(
    log: InProcessLog,
) -> None:
    answer, routes = await _early_path(log, "cached_tile_answer")
    plain = [(b"accept-encoding", b"identity")]
    for path in ("/tile/0/001", "/tile/entries/001"):
        assert answer(path, plain) is None  # not read yet
        routed = await routes.get(path, headers={"accept-encoding": "identity"})
        assert routed.status_code == 200
        cached = answer(path, plain)
        assert cached is not None
        body, headers = cached
        assert body == routed.content
        assert {k.decode(): v.decode() for k, v in headers} == {
            k: v
            for k, v in routed.headers.items()
            if k in {"cache-control", "content-type", "content-length", "vary"}
        }
        early = await log.client.get(path, headers={"accept-encoding": "identity"})
        assert (early.status_code, early.content) == (200, routed.content)
        assert early.headers == routed.headers
    # Not answered early: gzip asked, partial tiles, beyond the tree, not canonical, level 1.
    assert answer("/tile/entries/001", [(b"accept-encoding", b"gzip, br")]) is None
    for path in ("/tile/0/002.p/88", "/tile/0/002", "/tile/0/3", "/tile/1/000", "/tile/0/001/"):
        assert answer(path, plain) is None, path
    gzipped = await log.client.get("/tile/entries/001", headers={"accept-encoding": "gzip"})
    assert gzipped.headers["content-encoding"] == "gzip"
    # A miss is read into the cache by the early path itself, with the same answer.
    fresh = await log.client.get("/tile/entries/000", headers={"accept-encoding": "identity"})
    assert fresh.content == (await routes.get("/tile/entries/000")).content
    await routes.aclose()


async def test_inclusion_proofs_from_memory_are_answered_before_routing(
    log: InProcessLog,
) -> None:
    answer, routes = await _early_path(log, "cached_inclusion_answer")
    for index, size in ((0, 1), (5, 600), (599, 600), (300, 513)):
        query = f"index={index}&tree_size={size}"
        routed = await routes.get(f"/v1/proof/inclusion?{query}")
        assert routed.status_code == 200
        cached = answer(query.encode())
        assert cached is not None, query
        body, headers = cached
        assert body == routed.content
        assert {k.decode(): v for k, v in headers} == {
            "content-type": routed.headers["content-type"].encode(),
            "content-length": routed.headers["content-length"].encode(),
        }
        again = await log.client.get(f"/v1/proof/inclusion?{query}")
        assert (again.status_code, again.content, again.headers) == (200, body, routed.headers)
    for query in (
        "index=600&tree_size=600",
        "index=0&tree_size=601",
        "index=00&tree_size=5",
        "tree_size=5&index=0",
        "index=0&tree_size=5&x=1",
        "index=-1&tree_size=5",
        "leaf_hash=00&tree_size=5",
    ):
        assert answer(query.encode()) is None, query
    await routes.aclose()


async def test_single_submissions_are_answered_before_routing_as_the_route_answers(
    log: InProcessLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``POST /v1/events`` skips the router (``_EarlyAnswers``); the same app mounted under a
    root path takes the route. Both give the same answers, refusals and 500s included."""
    app = log.client._transport.app  # type: ignore[attr-defined]

    def client(base: str) -> httpx.AsyncClient:
        root = base.removeprefix("http://etch.test")
        transport = httpx.ASGITransport(app=app, root_path=root, raise_app_exceptions=False)
        return httpx.AsyncClient(transport=transport, base_url=base)

    early, routed = client("http://etch.test"), client("http://etch.test/mounted")
    routed_paths: list[str] = []
    route_app = Router.__call__

    async def spy(self: Router, scope: Any, receive: Any, send: Any) -> None:
        routed_paths.append(scope["path"])
        await route_app(self, scope, receive, send)

    monkeypatch.setattr(Router, "__call__", spy)

    async def both(content: bytes, content_type: str) -> tuple[httpx.Response, httpx.Response]:
        headers = {"content-type": content_type}
        first = await early.post("/v1/events", content=content, headers=headers)
        second = await routed.post("/v1/events", content=content, headers=headers)
        return first, second

    fresh_early, fresh_routed = (
        await early.post("/v1/events", json={"n": 1}),
        await routed.post("/v1/events", json={"n": 2}),
    )
    for response, n in ((fresh_early, 1), (fresh_routed, 2)):
        assert response.status_code == 201, response.text
        check_submit_result(response.json(), entry_bytes({"n": n}), log.verifier, vkey=log.vkey)
    assert routed_paths == ["/mounted/v1/events"]  # the early answer never reached the router
    assert list(fresh_early.headers) == list(fresh_routed.headers)
    assert fresh_early.headers["content-type"] == "application/json"
    # Resubmissions against the same checkpoint: byte for byte the same answer.
    again = await both(json.dumps({"n": 1}).encode(), "application/json")
    assert again[0].status_code == again[1].status_code == 200
    assert (again[0].headers, again[0].content) == (again[1].headers, again[1].content)
    assert again[0].json()["index"] == fresh_early.json()["index"]

    errors_before = _samples((await log.client.get("/metrics")).text)
    refusals = [
        (b"{", "application/json", "bad-json", 400),
        (b'{"a": 1.5}', "application/json", "float-not-allowed", 422),
        (b"[1]", "application/json", "bad-event", 422),
        (cbor2.dumps({"a": 1}), "text/plain", "unsupported-media-type", 415),
        (
            b" " * (app.state.limits.max_body_bytes + 1),
            "application/json",
            "payload-too-large",
            413,
        ),
    ]
    for content, content_type, slug, status in refusals:
        first, second = await both(content, content_type)
        check_problem(first, slug, status)
        assert (first.status_code, first.headers, first.content) == (
            second.status_code,
            second.headers,
            second.content,
        ), slug
    errors = _samples((await log.client.get("/metrics")).text)
    for _, _, slug, _ in refusals:
        key = f'etch_errors_total{{type="{slug}"}}'
        assert errors[key] - errors_before.get(key, 0) == 2, slug

    async def broken(submissions: object) -> object:
        raise RuntimeError("a bug")

    monkeypatch.setattr(log.service, "submit", broken)
    first, second = await both(b'{"n": 3}', "application/json")
    check_problem(first, "internal", 500)
    assert (first.status_code, first.content) == (second.status_code, second.content)
    assert log.service.tree_size == 2
    await early.aclose()
    await routed.aclose()


async def _early_path(log: InProcessLog, name: str) -> tuple[Any, httpx.AsyncClient]:
    """Fill the log with 600 entries; return the app's early-answer function ``name`` and a
    client of the app's routes alone (no middleware): the answers early paths must equal."""
    await log.fill(600)
    app = log.client._transport.app  # type: ignore[attr-defined]
    routes = httpx.AsyncClient(transport=httpx.ASGITransport(app=app.router), base_url="http://x")
    return getattr(app.state, name), routes


def _max_age(response: httpx.Response) -> int:
    for part in response.headers["cache-control"].split(","):
        name, _, value = part.strip().partition("=")
        if name == "max-age":
            return int(value)
    raise AssertionError(f"no max-age in {response.headers['cache-control']!r}")


async def test_entry_bundles_are_gzipped_when_asked(log: InProcessLog) -> None:
    entries = await log.fill(260)
    for path, expected in (
        ("/tile/entries/000", entries[:256]),
        ("/tile/entries/001.p/4", entries[256:]),
    ):
        async with log.client.stream("GET", path, headers={"accept-encoding": "gzip"}) as response:
            assert response.status_code == 200
            assert response.headers["content-encoding"] == "gzip"
            assert "accept-encoding" in response.headers["vary"].lower()
            raw = b"".join([chunk async for chunk in response.aiter_raw()])
        assert parse_entry_bundle(gzip.decompress(raw)) == expected
        plain = await log.client.get(path, headers={"accept-encoding": "identity"})
        assert "content-encoding" not in plain.headers
        assert parse_entry_bundle(plain.content) == expected


async def test_tiles_beyond_the_tree_are_not_found(log: InProcessLog) -> None:
    for path in ("tile/0/000.p/1", "tile/entries/000.p/1", "tile/0/000"):
        check_problem(await log.client.get("/" + path), "not-found", 404)
    await log.fill(300)
    assert (await log.client.get("/tile/0/001.p/44")).status_code == 200
    assert (await log.client.get("/tile/1/000.p/1")).status_code == 200
    beyond = [
        "tile/0/001",
        "tile/0/001.p/45",
        "tile/0/002.p/1",
        "tile/0/x001/000",
        "tile/1/000",
        "tile/1/000.p/2",
        "tile/2/000.p/1",
        "tile/entries/001",
        "tile/entries/001.p/45",
        "tile/entries/002.p/1",
    ]
    for path in beyond:
        check_problem(await log.client.get("/" + path), "not-found", 404)


@pytest.mark.slow
async def test_big_tree_level_one_full_tile(url: str) -> None:
    """A log of 65,836 entries (stored directly, then served): level-1 full, level-2 partial."""
    signer = make_signer()
    size = 256 * 256 + 300
    entries = [b"big %d" % i for i in range(size)]
    leaves = [leaf_hash(e) for e in entries]
    compact = CompactRange()
    compact.extend(leaves)
    note = sign_note(format_checkpoint(Checkpoint(signer.name, size, compact.root())), [signer])
    batch = Batch(
        entries=[NewEntry(i, leaves[i], entries[i]) for i in range(size)],
        tiles=extend_tiles(0, {}, leaves),
        checkpoint=note,
        tree_size=size,
        compact_range=compact.to_bytes(),
    )
    storage = open_storage(url)
    await storage.open()
    try:
        await storage.commit(None, batch)
    finally:
        await storage.close()

    async with open_log(url, signer=signer) as log:
        _, checkpoint = await log.checkpoint()
        assert checkpoint.tree_size == size
        level1 = await log.client.get("/tile/1/000")
        assert level1.status_code == 200
        assert "immutable" in level1.headers["cache-control"]
        assert len(level1.content) == 256 * 32
        for j in (0, 1, 137, 255):
            tile = await log.client.get("/" + format_tile_path(Tile(0, j)))
            assert tile.content == b"".join(leaves[256 * j : 256 * (j + 1)])
            assert level1.content[32 * j : 32 * (j + 1)] == subtree_root(
                leaves[256 * j : 256 * (j + 1)]
            )
        level2 = (await log.client.get("/tile/2/000.p/1")).content
        assert level2 == subtree_root(leaves[: 256 * 256])
        assert (await log.client.get("/tile/1/001.p/1")).content == subtree_root(
            leaves[256 * 256 : 256 * 257]
        )
        check_problem(await log.client.get("/tile/1/001"), "not-found", 404)
        bundle = await log.client.get("/" + format_tile_path(Tile(-1, 257, 44)))
        assert parse_entry_bundle(bundle.content) == entries[256 * 257 :]
        # The sequencer continues from the stored state.
        result = await log.submit_ok({"after": "big"})
        assert result["index"] == size
        newer = open_note(result["checkpoint"].encode(), log.verifier)
        await check_consistency(log.client, checkpoint, newer)
        for index in (0, 65_535, 65_536, size - 1):
            response = await log.client.get(
                "/v1/proof/inclusion", params={"index": str(index), "tree_size": str(size)}
            )
            proof = [b64d(h) for h in response.json()["proof"]]
            verify_inclusion(leaves[index], index, size, proof, checkpoint.root_hash)


# -- operations ----------------------------------------------------------------------------------


async def test_healthz(log: InProcessLog) -> None:
    response = await log.client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["origin"] == log.service.origin
    assert body["tree_size"] == 0
    assert "no-store" in response.headers["cache-control"]
    await log.submit_ok({"n": 1})
    assert (await log.client.get("/healthz")).json()["tree_size"] == 1


async def test_metrics(log: InProcessLog) -> None:
    await log.fill(3)
    await log.submit_ok({"n": 0, "k": "e"})  # a duplicate
    check_problem(
        await log.client.post(
            "/v1/events", content=b"{", headers={"content-type": "application/json"}
        ),
        "bad-json",
        400,
    )
    response = await log.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = _samples(response.text)
    assert samples['etch_submissions_total{outcome="new"}'] == 3
    assert samples['etch_submissions_total{outcome="duplicate"}'] == 1
    assert samples['etch_submissions_total{outcome="refused"}'] == 1
    assert samples['etch_errors_total{type="bad-json"}'] == 1
    assert samples["etch_tree_size"] == 3
    assert samples["etch_sequencing_seconds_count"] == 2
    assert samples["etch_batch_entries_count"] >= 1
    assert samples["etch_batch_entries_sum"] == 3


def _samples(text: str) -> dict[str, float]:
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


async def test_openapi_document(log: InProcessLog) -> None:
    response = await log.client.get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = json.loads(response.content)
    assert document["openapi"].startswith("3.")
    paths = set(document["paths"])
    for path in (
        "/checkpoint",
        "/v1/events",
        "/v1/events/batch",
        "/v1/proof/inclusion",
        "/v1/proof/consistency",
        "/v1/entries/{index}",
        "/v1/receipt/{index}",
        "/healthz",
        "/metrics",
        "/openapi.json",
    ):
        assert path in paths, path
    assert any(p.startswith("/tile/") for p in paths)
