"""``POST /v1/events/signed-batch`` end to end through the HTTP API (in process).

Batches are built here with ``cbor2`` and ``cryptography`` and the naive RFC 6962 definitions
(:mod:`tests.naive`), not with :mod:`client.batchsig`, so the server is checked against an
independent reading of the format; logged entries are then checked offline with
:func:`client.batchsig.verify_leaf_attribution`.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import cbor2
import httpx
import pytest

from client.batchsig import AttributionError, verify_leaf_attribution
from client.tokens import token_ref
from merkle.checkpoint import open_checkpoint
from merkle.hashing import leaf_hash
from merkle.note import Ed25519Verifier
from merkle.tree import verify_inclusion
from server.ingest import SIGNED_BATCH_PATH
from tests import naive
from tests.oauth_support import OAuthLog, Submitter, canonical, open_oauth_log, sample_event
from tests.server_helpers import BACKENDS, database

PROBLEM = "application/problem+json"
pytestmark = pytest.mark.anyio


@pytest.fixture(params=BACKENDS)
async def log(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OAuthLog]:
    async with (
        database(str(request.param), request, tmp_path) as url,
        open_oauth_log(url) as opened,
    ):
        yield opened


@pytest.fixture
async def slog(tmp_path: Path) -> AsyncIterator[OAuthLog]:
    async with open_oauth_log(str(tmp_path / "log.db")) as opened:
        yield opened


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def signed_batch(
    submitter: Submitter, events: list[dict[str, Any]], *, name: str | None = None
) -> dict[str, Any]:
    """The request body for the whole batch, built from the naive definitions."""
    encodings = [canonical(e) for e in events]
    root = naive.mth(encodings)
    message = (
        b"etch/event-batch/v1\x00"
        + bytes([len(name or submitter.name)])
        + (name or submitter.name).encode()
        + struct.pack(">Q", len(events))
        + root
    )
    return {
        "size": len(events),
        "root": b64(root),
        "signature": b64(submitter.key.sign(message)),
        "events": [
            {"index": i, "path": [b64(h) for h in naive.path(i, encodings)], "event": e}
            for i, e in enumerate(events)
        ],
    }


async def post(log: OAuthLog, submitter: Submitter, body: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await log.client.post(
        SIGNED_BATCH_PATH,
        content=content,
        headers={**submitter.headers, "content-type": "application/json"},
    )


def expected_leaf(name: str, body: dict[str, Any], item: dict[str, Any], log_time: int) -> bytes:
    return cbor2.dumps(
        {
            "v": 1,
            "batch": {
                "size": body["size"],
                "index": item["index"],
                "path": [base64.b64decode(h) for h in item["path"]],
                "signature": base64.b64decode(body["signature"]),
            },
            "event": item["event"],
            "log_time": log_time,
            "submitter": name,
        },
        canonical=True,
    )


def check_answer(
    log: OAuthLog, submitter: Submitter, body: dict[str, Any], answer: dict[str, Any]
) -> list[int]:
    """Verify every result independently: rebuilt leaf, leaf hash, checkpoint, inclusion."""
    verifier = Ed25519Verifier.from_vkey(log.service.vkey)
    indexes = []
    for item, result in zip(body["events"], answer["results"], strict=True):
        assert result["duplicate"] is False, result
        leaf = expected_leaf(submitter.name, body, item, result["log_time"])
        assert base64.b64decode(result["leaf_hash"]) == leaf_hash(leaf)
        note = answer["checkpoints"][result["checkpoint"]].encode()
        checkpoint, _, _ = open_checkpoint(note, verifier)
        assert checkpoint.tree_size == result["tree_size"]
        proof = [base64.b64decode(h) for h in result["inclusion_proof"]]
        verify_inclusion(leaf_hash(leaf), result["index"], checkpoint.tree_size, proof,
                         checkpoint.root_hash)  # fmt: skip
        indexes.append(result["index"])
    return indexes


async def test_a_signed_batch_is_logged_and_each_entry_is_attributable(log: OAuthLog) -> None:
    submitter = await log.add_submitter("as-prod")
    reader = await log.add_reader("auditor")
    events = [sample_event("token-issued", token_ref=token_ref(b"t%d" % i)) for i in range(7)]
    body = signed_batch(submitter, events)
    response = await post(log, submitter, body)
    assert response.status_code == 200, response.text[:400]
    # The answer is written directly: the same bytes json.dumps writes.
    compact = json.dumps(response.json(), separators=(",", ":"), ensure_ascii=False)
    assert response.content == compact.encode()
    indexes = check_answer(log, submitter, body, response.json())
    raw = submitter.key.public_key().public_bytes_raw()
    other = (await log.add_submitter("as-other")).key.public_key().public_bytes_raw()
    for index, event in zip(indexes, events, strict=True):
        served = await log.client.get(
            f"/v1/entries/{index}", headers={"authorization": f"Bearer {reader}"}
        )
        entry = base64.b64decode(served.json()["entry"])
        assert served.json()["event"]["event"] == event
        assert verify_leaf_attribution(entry, [raw]) == "as-prod"
        with pytest.raises(AttributionError):
            verify_leaf_attribution(entry, [other])
    found = await log.client.get("/v1/lookup", params={"token_ref": events[3]["token_ref"]})
    assert [r["index"] for r in found.json()["results"]] == [indexes[3]]


async def test_subsets_retries_duplicates_and_conflicts(slog: OAuthLog) -> None:
    submitter = await slog.add_submitter("as-prod")
    events = [sample_event("token-revoked") for _ in range(5)]
    body = signed_batch(submitter, events)
    subset = {**body, "events": [body["events"][3], body["events"][1]]}
    first = await post(slog, submitter, subset)
    assert first.status_code == 200
    check_answer(slog, submitter, subset, first.json())
    replay = await post(slog, submitter, body)
    compact = json.dumps(replay.json(), separators=(",", ":"), ensure_ascii=False)
    assert replay.content == compact.encode()
    again = replay.json()
    assert [r["duplicate"] for r in again["results"]] == [False, True, False, True, False]
    duplicate = again["results"][1]
    assert "log_time" not in duplicate
    assert base64.b64decode(duplicate["leaf_hash"]) == leaf_hash(
        base64.b64decode(duplicate["entry"])
    )
    assert duplicate["index"] == first.json()["results"][1]["index"]
    size, _ = await slog.size()
    assert size == 5
    changed = dict(events[0], txn="txn-2")
    conflict = (await post(slog, submitter, signed_batch(submitter, [changed]))).json()
    assert conflict["results"][0]["type"] == "urn:etch:error:jti-conflict"
    assert (await slog.size())[0] == 5


def _mutate(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(body: dict[str, Any]) -> None:
        parts = path.split("/")
        target: Any = body
        for part in parts[:-1]:
            target = target[int(part)] if isinstance(target, list) else target[part]
        last = parts[-1]
        if isinstance(target, list):
            target[int(last)] = value
        elif value is _DELETE:
            del target[last]
        else:
            target[last] = value

    return change


_DELETE = object()
_H = base64.b64encode(bytes(32)).decode()

# (name, change, whole-request problem or None, per-item problem at item 2 or None)
WHOLE: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("signature flipped", _mutate("signature", b64(bytes(64))), "bad-signature"),
    ("size changed", _mutate("size", 5), "bad-signature"),
    ("root changed", _mutate("root", _H), "bad-signature"),
    ("size zero", _mutate("size", 0), "bad-signature"),
    ("size too large", _mutate("size", 65537), "bad-signature"),
    ("size as text", _mutate("size", "4"), "bad-signature"),
    ("size boolean", _mutate("size", True), "bad-signature"),
    ("root not base64", _mutate("root", "!" * 44), "bad-signature"),
    ("root non-canonical", _mutate("root", _H[:-2] + "B="), "bad-signature"),
    ("signature short", _mutate("signature", b64(bytes(63))), "bad-signature"),
    ("unknown member", _mutate("extra", 1), "bad-event"),
    ("missing events", _mutate("events", _DELETE), "bad-event"),
    ("no events", _mutate("events", []), "bad-event"),
    ("events not a list", _mutate("events", {}), "bad-event"),
]
PER_ITEM: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("index out of range", _mutate("events/2/index", 4), "bad-signature"),
    ("index negative", _mutate("events/2/index", -1), "bad-signature"),
    ("index of another event", _mutate("events/2/index", 1), "bad-event"),
    ("index boolean", _mutate("events/2/index", True), "bad-signature"),
    ("path too short", _mutate("events/2/path", [_H]), "bad-signature"),
    ("path too long", _mutate("events/2/path", [_H, _H, _H]), "bad-signature"),
    ("path hash changed", _mutate("events/2/path/0", _H), "bad-signature"),
    ("path hash not base64", _mutate("events/2/path/0", "*" * 44), "bad-signature"),
    ("path not a list", _mutate("events/2/path", _H), "bad-signature"),
    ("event changed", _mutate("events/2/event/client_id", "other"), "bad-signature"),
    ("event invalid", _mutate("events/2/event/iat", -5), "bad-event"),
    ("event holds a secret", _mutate("events/2/event/access_token", "x"), "forbidden-field"),
    ("item member unknown", _mutate("events/2/extra", 1), "bad-event"),
    ("item member missing", _mutate("events/2/path", _DELETE), "bad-event"),
]


@pytest.mark.parametrize(("name", "change", "slug"), WHOLE, ids=[w[0] for w in WHOLE])
async def test_malformed_batches_are_refused_whole(
    slog: OAuthLog, name: str, change: Callable[[dict[str, Any]], None], slug: str
) -> None:
    submitter = await slog.add_submitter("as-prod")
    body = signed_batch(submitter, [sample_event("token-issued") for _ in range(4)])
    change(body)
    response = await post(slog, submitter, body)
    assert response.status_code in (400, 422), response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    assert response.json()["type"] == f"urn:etch:error:{slug}"
    assert (await slog.size())[0] == 0


@pytest.mark.parametrize(("name", "change", "slug"), PER_ITEM, ids=[p[0] for p in PER_ITEM])
async def test_malformed_items_are_refused_alone(
    slog: OAuthLog, name: str, change: Callable[[dict[str, Any]], None], slug: str
) -> None:
    submitter = await slog.add_submitter("as-prod")
    body = signed_batch(submitter, [sample_event("token-issued") for _ in range(4)])
    change(body)
    response = await post(slog, submitter, body)
    assert response.status_code == 200, response.text[:300]
    results = response.json()["results"]
    assert results[2]["type"] == f"urn:etch:error:{slug}", results[2]
    assert "index" not in results[2] or "leaf_hash" not in results[2]
    kept = [r for n, r in enumerate(results) if n != 2]
    assert all("leaf_hash" in r for r in kept)
    assert (await slog.size())[0] == 3


async def test_bad_json_and_foreign_signatures(slog: OAuthLog) -> None:
    submitter = await slog.add_submitter("as-prod")
    other = await slog.add_submitter("as-other")
    events = [sample_event("token-issued") for _ in range(2)]
    body = signed_batch(submitter, events)
    text = json.dumps(body)
    for raw in (
        text.replace('"size": 2', '"size": 2.0').encode(),
        text.replace('"size": 2', '"size": 2, "size": 2').encode(),
        b"[" + text.encode() + b"]",
        b"\xff",
    ):
        response = await post(slog, submitter, raw)
        assert response.status_code in (400, 422)
        assert response.json()["type"] in ("urn:etch:error:bad-json", "urn:etch:error:bad-event")
    # Signed by another submitter's key, or naming another submitter: not attributable.
    for forged in (signed_batch(other, events), signed_batch(submitter, events, name="as-other")):
        response = await post(slog, submitter, forged)
        assert response.json()["type"] == "urn:etch:error:bad-signature"
    response = await slog.client.post(
        SIGNED_BATCH_PATH, content=text, headers={**submitter.headers, "content-type": "text/plain"}
    )
    assert response.status_code == 415
    response = await slog.client.post(SIGNED_BATCH_PATH, content=text)
    assert response.status_code == 401
    assert (await slog.size())[0] == 0


def without_paths(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "events": [{k: v for k, v in i.items() if k != "path"} for i in body["events"]]}


async def test_a_whole_batch_may_leave_the_paths_out(log: OAuthLog) -> None:
    """The log rebuilds the tree; each logged leaf carries the path it computed."""
    submitter = await log.add_submitter("as-prod")
    reader = await log.add_reader("auditor")
    events = [sample_event("token-issued") for _ in range(6)]
    body = signed_batch(submitter, events)
    shuffled = without_paths({**body, "events": body["events"][::-1]})
    response = await post(log, submitter, shuffled)
    assert response.status_code == 200, response.text[:300]
    answer = response.json()
    indexes = check_answer(log, submitter, {**body, "events": body["events"][::-1]}, answer)
    raw = submitter.key.public_key().public_bytes_raw()
    for index in indexes:
        served = await log.client.get(
            f"/v1/entries/{index}", headers={"authorization": f"Bearer {reader}"}
        )
        assert verify_leaf_attribution(base64.b64decode(served.json()["entry"]), [raw])


async def test_paths_left_out_wrongly(slog: OAuthLog) -> None:
    submitter = await slog.add_submitter("as-prod")
    events = [sample_event("token-issued") for _ in range(4)]
    body = signed_batch(submitter, events)
    # A partial batch needs its paths: each pathless item is refused alone.
    partial = without_paths({**body, "events": body["events"][:3]})
    results = (await post(slog, submitter, partial)).json()["results"]
    assert [r["type"] for r in results] == ["urn:etch:error:bad-event"] * 3
    # Paths on some items only: the pathless ones are refused, the others logged.
    mixed = {**body, "events": [*without_paths(body)["events"][:1], *body["events"][1:]]}
    results = (await post(slog, submitter, mixed)).json()["results"]
    assert results[0]["type"] == "urn:etch:error:bad-event"
    assert all("leaf_hash" in r for r in results[1:])
    assert (await slog.size())[0] == 3
    # A whole batch whose events do not make the signed root: nothing is logged.
    other = signed_batch(submitter, [sample_event("token-issued") for _ in range(4)])
    forged = without_paths({**other, "events": body["events"]})
    response = await post(slog, submitter, forged)
    assert response.status_code == 422
    assert response.json()["type"] == "urn:etch:error:bad-signature"
    # A whole batch with an invalid event: that event alone is refused.
    broken = [dict(e) for e in events]
    broken[2]["iat"] = -1
    body = without_paths(signed_batch(submitter, broken))
    results = (await post(slog, submitter, body)).json()["results"]
    assert results[2]["type"] == "urn:etch:error:bad-event"
    # Event 0 was refused above (no path), so it is new now; 1 and 3 were logged.
    assert [r.get("duplicate") for r in results] == [False, True, None, True]
    assert (await slog.size())[0] == 4
