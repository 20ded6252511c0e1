"""End-to-end tests of the OAuth layer over HTTP (in process, httpx.ASGITransport).

Signed submissions, duplicates and conflicts, refusals that leave the log unchanged, secrets
that never reach storage, logs or answers, authentication, rate limits, lookups, reader access,
SET intake, idempotency across restarts and concurrent resubmission on PostgreSQL. Tests that
store anything run on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import cbor2
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.tokens import token_ref
from merkle.hashing import leaf_hash
from merkle.policy import parse_policy
from merkle.receipt import format_receipt, parse_receipt, verify_receipt
from server.event_schema import event_schema
from server.ingest import OAuthSettings
from tests.oauth_support import (
    NOW,
    OAuthLog,
    SetSigner,
    Submitter,
    canonical,
    envelope,
    make_set,
    open_oauth_log,
    sample_event,
    sample_types,
    set_claims,
    signed_message,
)
from tests.server_helpers import BACKENDS, database, make_signer, pg_schema
from tests.test_events import valid_events

pytestmark = pytest.mark.anyio

PROBLEM = "application/problem+json"


@pytest.fixture(params=BACKENDS)
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with database(str(request.param), request, tmp_path) as value:
        yield value


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return str(tmp_path / "log.db")


@pytest.fixture
async def log(url: str) -> AsyncIterator[OAuthLog]:
    async with open_oauth_log(url) as opened:
        yield opened


@pytest.fixture
async def slog(sqlite_url: str) -> AsyncIterator[OAuthLog]:
    async with open_oauth_log(sqlite_url) as opened:
        yield opened


def b64d(text: str) -> bytes:
    raw = base64.b64decode(text, validate=True)
    assert base64.b64encode(raw).decode() == text
    return raw


def problem(response: httpx.Response, slug: str, status: int) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text[:400])
    assert response.headers["content-type"].split(";")[0] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["type"] == f"urn:etch:error:{slug}", body
    return body


def check_result(log: OAuthLog, body: dict[str, Any], submitter: Submitter, event: Any) -> bytes:
    """Verify a submission answer independently: entry, leaf hash, signature, receipt."""
    entry = b64d(body["entry"])
    assert b64d(body["leaf_hash"]) == leaf_hash(entry)
    leaf = cbor2.loads(entry)
    assert cbor2.dumps(leaf, canonical=True) == entry
    assert set(leaf) == {"v", "submitter", "event", "signature", "log_time"}
    assert (leaf["v"], leaf["submitter"], leaf["event"]) == (1, submitter.name, event)
    submitter.key.public_key().verify(leaf["signature"], signed_message(event))
    assert canonical(event) in entry
    receipt = parse_receipt(body["receipt"].encode())
    assert receipt.index == body["index"]
    assert format_receipt(receipt) == body["receipt"].encode()
    assert receipt.checkpoint == body["checkpoint"].encode()
    assert [b64d(h) for h in body["inclusion_proof"]] == list(receipt.proof)
    policy = parse_policy(f"log {log.service.vkey}\nquorum none\n")
    checkpoint = verify_receipt(receipt, entry, policy)
    assert checkpoint.tree_size == body["tree_size"]
    return entry


# -- submissions ---------------------------------------------------------------------------------


async def test_every_type_is_logged_with_a_verifiable_receipt(log: OAuthLog) -> None:
    alice = await log.add_submitter("as-prod")
    events = [sample_event(kind) for kind in sample_types()]
    first = await log.submit(alice, events[0])
    assert first.status_code == 201, first.text
    check_result(log, first.json(), alice, events[0])
    response = await log.client.post(
        "/v1/events/batch", json=[envelope(alice, e) for e in events[1:]], headers=alice.headers
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == len(events) - 1
    for body, event in zip(results, events[1:], strict=True):
        assert body["duplicate"] is False
        check_result(log, body, alice, event)
    assert [r["index"] for r in results] == list(range(1, len(events)))


async def test_cbor_and_json_log_the_same_event(slog: OAuthLog) -> None:
    alice = await slog.add_submitter("as-prod")
    event = sample_event("token-issued")
    signature = alice.key.sign(signed_message(event))
    response = await slog.client.post(
        "/v1/events",
        content=cbor2.dumps({"event": event, "signature": signature}),
        headers={**alice.headers, "content-type": "application/cbor"},
    )
    assert response.status_code == 201, response.text
    entry = check_result(slog, response.json(), alice, event)
    again = await slog.submit(alice, event)  # the same event as JSON is a duplicate
    assert again.status_code == 200
    assert b64d(again.json()["entry"]) == entry


async def test_duplicates_return_the_original_and_conflicts_log_nothing(log: OAuthLog) -> None:
    alice = await log.add_submitter("as-prod")
    event = sample_event("token-revoked")
    first = (await log.submit(alice, event)).json()
    log.clock.seconds += 5  # a later log time would make a different leaf
    again = await log.submit(alice, event)
    assert again.status_code == 200
    body = again.json()
    assert body["duplicate"] is True
    assert (body["index"], body["entry"], body["leaf_hash"]) == (
        first["index"],
        first["entry"],
        first["leaf_hash"],
    )
    check_result(log, body, alice, event)
    before = await log.size()
    changed = {**event, "reason": "user"}
    conflict = await log.submit(alice, changed)
    assert problem(conflict, "jti-conflict", 409)["index"] == first["index"]
    assert await log.size() == before
    # Another submitter may use the same jti: idempotency keys are per submitter.
    bob = await log.add_submitter("as-other")
    assert (await log.submit(bob, changed)).status_code == 201
    # In one batch: the second copy is a duplicate of the first, the third a conflict.
    fresh = sample_event("consent-granted")
    response = await log.client.post(
        "/v1/events/batch",
        json=[
            envelope(alice, fresh),
            envelope(alice, fresh),
            envelope(alice, {**fresh, "scope": ["other"]}),
        ],
        headers=alice.headers,
    )
    one, two, three = response.json()["results"]
    assert (one["duplicate"], two["duplicate"], two["index"]) == (False, True, one["index"])
    assert three["type"] == "urn:etch:error:jti-conflict"


# -- refusals --------------------------------------------------------------------------------


async def test_refused_submissions_leave_the_log_unchanged(log: OAuthLog) -> None:
    alice = await log.add_submitter("as-prod")
    bob = await log.add_submitter("as-other")
    await log.submit(alice, sample_event("token-issued"))
    event = sample_event("token-issued")
    good = envelope(alice, event)
    cases: list[tuple[str, Any, str, int]] = [
        ("missing signature", {"event": event}, "bad-signature", 422),
        ("signature null", {**good, "signature": None}, "bad-signature", 422),
        (
            "forged signature",
            {**good, "signature": base64.b64encode(bytes(64)).decode()},
            "bad-signature",
            422,
        ),
        ("signed by another submitter", envelope(bob, event), "bad-signature", 422),
        (
            "signature over other content",
            {**good, "event": {**event, "txn": "t2"}},
            "bad-signature",
            422,
        ),
        (
            "short signature",
            {**good, "signature": base64.b64encode(bytes(63)).decode()},
            "bad-signature",
            422,
        ),
        (
            "non-canonical base64",
            {**good, "signature": good["signature"][:-2] + "B="},
            "bad-signature",
            422,
        ),
        ("signature as a number", {**good, "signature": 7}, "bad-signature", 422),
        ("no event", {"signature": good["signature"]}, "bad-event", 422),
        ("extra envelope member", {**good, "note": "x"}, "bad-event", 422),
        ("unknown type", envelope(alice, {**event, "type": "token-minted"}), "bad-event", 422),
        ("extra field", envelope(alice, {**event, "colour": "red"}), "bad-event", 422),
        ("wrong type", envelope(alice, {**event, "iat": str(NOW)}), "bad-event", 422),
        ("far future", envelope(alice, {**event, "iat": NOW + 3600}), "bad-event", 422),
        ("negative time", envelope(alice, {**event, "iat": -5}), "bad-event", 422),
        ("oversize string", envelope(alice, {**event, "client_id": "c" * 300}), "bad-event", 422),
        (
            "oversize list",
            envelope(alice, {**event, "scope": [f"s{i}" for i in range(101)]}),
            "bad-event",
            422,
        ),
        ("secret field", envelope(alice, {**event, "access_token": "abc"}), "forbidden-field", 422),
        ("float", {**good, "event": {**event, "iat": 1.5}}, "float-not-allowed", 422),
        ("not a map", [1, 2], "bad-event", 422),
    ]
    before = await log.size()
    for case, body, slug, status in cases:
        response = await log.client.post("/v1/events", json=body, headers=alice.headers)
        problem(response, slug, status)
        assert await log.size() == before, case
    batch = await log.client.post(
        "/v1/events/batch", json=[body for _, body, _, _ in cases], headers=alice.headers
    )
    assert batch.status_code == 200
    slugs = [r["type"].rsplit(":", 1)[1] for r in batch.json()["results"]]
    assert slugs == [slug for _, _, slug, _ in cases]
    assert await log.size() == before


async def test_expired_event_keys_do_not_verify(slog: OAuthLog) -> None:
    old = await slog.add_submitter("as-old", expired=True)
    problem(await slog.submit(old, sample_event("token-issued")), "bad-signature", 422)


async def test_authentication(log: OAuthLog) -> None:
    alice = await log.add_submitter("as-prod")
    reader = await log.add_reader("auditor")
    body = envelope(alice, sample_event("token-issued"))
    no_header = await log.client.post("/v1/events", json=body)
    problem(no_header, "unauthorized", 401)
    assert no_header.headers["www-authenticate"].startswith("Bearer")
    for header in (
        "Bearer",
        "Bearer ",
        f"Basic {alice.credential}",
        f"Bearer {alice.credential} x",
        f"Bearer  {alice.credential}",
        f"Bearer {alice.credential[:-1]}",
        f"Bearer {token_ref(b'unknown credential')}",
    ):
        response = await log.client.post("/v1/events", json=body, headers={"authorization": header})
        text = problem(response, "unauthorized", 401)
        assert alice.credential not in json.dumps(text)
    problem(
        await log.client.post(
            "/v1/events", json=body, headers={"authorization": f"Bearer {reader}"}
        ),
        "forbidden",
        403,
    )
    lower = await log.client.post(
        "/v1/events", json=body, headers={"authorization": f"bearer {alice.credential}"}
    )
    assert lower.status_code == 201
    # Revocation takes effect at once, also for a log that is running.
    assert await log.storage.set_principal_status("submitter", "as-prod", "revoked")
    before = await log.size()
    problem(await log.submit(alice, sample_event("token-issued")), "forbidden", 403)
    problem(
        await log.client.post("/v1/events/batch", json=[body], headers=alice.headers),
        "forbidden",
        403,
    )
    assert await log.size() == before


async def test_rate_limit(sqlite_url: str) -> None:
    settings_ = OAuthSettings(submitter_rate=1, submitter_burst=3)
    async with open_oauth_log(sqlite_url, settings_) as log:
        alice = await log.add_submitter("as-prod")
        bob = await log.add_submitter("as-other")
        batch = [envelope(alice, sample_event("token-issued")) for _ in range(3)]
        ok = await log.client.post("/v1/events/batch", json=batch, headers=alice.headers)
        assert ok.status_code == 200
        before = await log.size()
        limited = await log.submit(alice, sample_event("token-issued"))
        problem(limited, "rate-limited", 429)
        assert int(limited.headers["retry-after"]) >= 1
        too_big = [envelope(bob, sample_event("token-issued")) for _ in range(4)]
        response = await log.client.post("/v1/events/batch", json=too_big, headers=bob.headers)
        problem(response, "rate-limited", 429)
        assert await log.size() == before
        # Buckets are per submitter.
        assert (await log.submit(bob, sample_event("token-issued"))).status_code == 201


# -- secrets -------------------------------------------------------------------------------------


def _jwt(secret: str) -> str:
    def part(data: dict[str, str]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256', 'typ': 'at+jwt'})}.{part({'jti': secret})}.c2lnbmF0dXJl"


async def test_secrets_never_reach_storage_logs_or_answers(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "S3cr3t-" + "Qx9" * 12  # an opaque token: mixed case and digits, 43 characters
    jwt = _jwt(secret)
    async with open_oauth_log(sqlite_url) as log:
        alice = await log.add_submitter("as-prod")
        signer = SetSigner.generate("EdDSA")
        await log.storage.add_principal_key("submitter", "as-prod", signer.principal_key())
        event = sample_event("token-issued")
        attempts = [
            {**event, "access_token": secret},
            {**event, "client_secret": secret},
            {**event, "client_id": secret},
            {**event, "scope": ["openid", jwt]},
            {**event, "sub": {"format": "opaque", "id": "p", "password": secret}},
            {**event, "resource": [{"code_verifier": secret}]},
            {**event, "token_ref": jwt},
            {**event, "txn": f"Bearer {secret}"},
        ]
        bodies = []
        for attempt in attempts:
            response = await log.submit(alice, attempt)
            assert response.status_code == 422, response.text
            bodies.append(response.text)
        batch = await log.client.post(
            "/v1/events/batch", json=[envelope(alice, a) for a in attempts], headers=alice.headers
        )
        bodies.append(batch.text)
        claims = set_claims(
            events={"https://example.com/event": {"refresh_token": secret, "jwt": jwt}}
        )
        sets = await log.client.post(
            "/v1/sets",
            content=make_set(signer, claims),
            headers={**alice.headers, "content-type": "application/secevent+jwt"},
        )
        assert sets.status_code == 400
        assert sets.json()["err"] == "invalid_request"
        bodies.append(sets.text)
        raw_body = json.dumps(envelope(alice, {**event, "id_token": jwt})).encode()
        cbor_event: dict[str, Any] = {**event, "refresh_token": secret}
        cbor_body = cbor2.dumps({"event": cbor_event, "signature": bytes(64)})
        for content, media in ((raw_body, "application/json"), (cbor_body, "application/cbor")):
            response = await log.client.post(
                "/v1/events", content=content, headers={**alice.headers, "content-type": media}
            )
            assert response.status_code == 422
            bodies.append(response.text)
        assert (await log.size())[0] == 0
    for text in bodies:
        assert secret not in text
        assert jwt not in text
    assert secret not in caplog.text
    assert jwt not in caplog.text
    for path in Path(sqlite_url).parent.glob("log.db*"):
        data = path.read_bytes()
        assert secret.encode() not in data, path
        assert jwt.encode() not in data, path


# -- lookups ---------------------------------------------------------------------------------------


async def test_lookups_pagination_time_range_and_access(log: OAuthLog) -> None:
    alice = await log.add_submitter("as-prod")
    reader = await log.add_reader("auditor")
    tokens = [token_ref(f"token-{i}".encode()) for i in range(3)]
    submitted: list[dict[str, Any]] = []
    for i in range(12):
        log.clock.seconds = NOW + i  # log times NOW+i seconds
        event = sample_event(
            "token-issued",
            iat=NOW + i,
            token_ref=tokens[i % 3],
            client_id=f"client-{i % 2}",
            sub=f"subject-{i % 4}",
            parent_token_ref=None,
        )
        body = (await log.submit(alice, event)).json()
        submitted.append(body)
    base_ms = NOW * 1000

    async def look(params: dict[str, str], **headers: str) -> httpx.Response:
        return await log.client.get("/v1/lookup", params=params, headers=headers)

    public = await look({"token_ref": tokens[1]})
    assert public.status_code == 200
    results = public.json()["results"]
    assert [r["index"] for r in results] == [1, 4, 7, 10]
    assert public.json()["next"] is None
    for r in results:
        assert set(r) == {"index", "leaf_hash", "log_time"}
        assert r["leaf_hash"] == submitted[r["index"]]["leaf_hash"]
        assert r["log_time"] == base_ms + r["index"] * 1000
    # Pages of two, following the cursor.
    pages: list[list[int]] = []
    params = {"token_ref": tokens[1], "limit": "2"}
    while True:
        page = (await look(params)).json()
        pages.append([r["index"] for r in page["results"]])
        if page["next"] is None:
            break
        params["after"] = str(page["next"])
    assert [i for p in pages for i in p] == [1, 4, 7, 10]
    assert pages[0] == [1, 4]
    # Time range: since inclusive, until exclusive (POSIX milliseconds).
    since, until = str(base_ms + 4000), str(base_ms + 10_000)
    ranged = await look({"token_ref": tokens[1], "since": since, "until": until})
    assert [r["index"] for r in ranged.json()["results"]] == [4, 7]
    # Other kinds need a reader; readers also get the contents.
    problem(await look({"client_id": "client-0"}), "unauthorized", 401)
    auth = {"authorization": f"Bearer {reader}"}
    by_client = await look({"client_id": "client-0"}, **auth)
    assert [r["index"] for r in by_client.json()["results"]] == [0, 2, 4, 6, 8, 10]
    first = by_client.json()["results"][0]
    assert b64d(first["entry"]) == b64d(submitted[0]["entry"])
    assert first["event"]["event"]["client_id"] == "client-0"
    by_subject = await look({"subject": "subject-3"}, **auth)
    assert [r["index"] for r in by_subject.json()["results"]] == [3, 7, 11]
    by_type = await look({"type": "token-issued", "limit": "5"}, **auth)
    assert [r["index"] for r in by_type.json()["results"]] == [0, 1, 2, 3, 4]
    assert by_type.json()["next"] == 4
    with_contents = await look({"token_ref": tokens[0]}, **auth)
    assert "entry" in with_contents.json()["results"][0]
    # A submitter's credential is not a reader's.
    problem(await look({"client_id": "client-0"}, **alice.headers), "unauthorized", 401)


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"token_ref": token_ref(b"a"), "client_id": "c"},
        {"token_ref": "short"},
        {"token_ref": token_ref(b"a") + "="},
        {"token_ref": token_ref(b"a"), "limit": "0"},
        {"token_ref": token_ref(b"a"), "limit": "1001"},
        {"token_ref": token_ref(b"a"), "limit": "+5"},
        {"token_ref": token_ref(b"a"), "limit": " 5"},
        {"token_ref": token_ref(b"a"), "limit": "05"},
        {"token_ref": token_ref(b"a"), "limit": "5_0"},
        {"token_ref": token_ref(b"a"), "limit": "\u0665"},
        {"token_ref": token_ref(b"a"), "since": "2026-01-01T00:00:00Z"},
        {"token_ref": token_ref(b"a"), "until": "-1"},
        {"token_ref": token_ref(b"a"), "after": "x"},
        {"token_ref": token_ref(b"a"), "colour": "red"},
        {"client_id": ""},
    ],
)
async def test_bad_lookup_parameters(slog: OAuthLog, params: dict[str, str]) -> None:
    response = await slog.client.get("/v1/lookup", params=params)
    problem(response, "bad-parameter", 400)


async def test_repeated_lookup_parameter_is_refused(slog: OAuthLog) -> None:
    ref = token_ref(b"a")
    response = await slog.client.get(f"/v1/lookup?token_ref={ref}&token_ref={ref}")
    problem(response, "bad-parameter", 400)


async def test_token_ref_lookups_can_be_closed(sqlite_url: str) -> None:
    async with open_oauth_log(sqlite_url, OAuthSettings(public_token_ref_lookup=False)) as log:
        reader = await log.add_reader("auditor")
        params = {"token_ref": token_ref(b"x")}
        problem(await log.client.get("/v1/lookup", params=params), "unauthorized", 401)
        allowed = await log.client.get(
            "/v1/lookup", params=params, headers={"authorization": f"Bearer {reader}"}
        )
        assert allowed.json() == {"results": [], "next": None}


# -- read access -----------------------------------------------------------------------------------


async def test_entry_contents_need_a_reader(log: OAuthLog) -> None:
    alice = await log.add_submitter("as-prod")
    reader = await log.add_reader("auditor")
    await log.submit(alice, sample_event("token-issued"))
    auth = {"authorization": f"Bearer {reader}"}
    for path in ("/v1/entries/0", "/tile/entries/000.p/1"):
        problem(await log.client.get(path), "unauthorized", 401)
        problem(await log.client.get(path, headers=alice.headers), "unauthorized", 401)
        assert (await log.client.get(path, headers=auth)).status_code == 200
    # Hashes, checkpoints, proofs and receipts stay public.
    for path in ("/checkpoint", "/tile/0/000.p/1", "/v1/receipt/0", "/v1/schema/events"):
        assert (await log.client.get(path)).status_code == 200, path
    inclusion = await log.client.get("/v1/proof/inclusion", params={"index": "0"})
    assert inclusion.status_code == 200
    assert await log.storage.set_principal_status("reader", "auditor", "revoked")
    problem(await log.client.get("/v1/entries/0", headers=auth), "forbidden", 403)


async def fill_first_bundle(log: OAuthLog) -> Submitter:
    """Log 256 distinct events from a new submitter (returned): the first bundle is full."""
    alice = await log.add_submitter("as-prod")
    events = []
    for n in range(256):
        event = sample_event("token-issued")
        event["jti"] = f"bundle-{n}"
        events.append(event)
    answers = await asyncio.gather(*(log.submit(alice, e) for e in events))
    assert all(a.status_code == 201 for a in answers)
    return alice


async def test_full_entry_bundles_stay_guarded_once_cached(log: OAuthLog) -> None:
    reader = await log.add_reader("auditor")
    alice = await fill_first_bundle(log)
    auth = {"authorization": f"Bearer {reader}", "accept-encoding": "identity"}
    assert (await log.client.get("/tile/entries/000", headers=auth)).status_code == 200
    plain = {"accept-encoding": "identity"}
    for _ in range(2):  # the bundle is cached now; it is still not answered without a reader
        problem(await log.client.get("/tile/entries/000", headers=plain), "unauthorized", 401)
        problem(
            await log.client.get("/tile/entries/000", headers={**alice.headers, **plain}),
            "unauthorized",
            401,
        )
    assert (await log.client.get("/tile/entries/000", headers=auth)).status_code == 200
    # Never answered before routing, where no credential is checked.
    assert early_answer(log)("/tile/entries/000", plain_headers(plain)) is None


def early_answer(log: OAuthLog) -> Any:
    transport = log.client._transport
    assert isinstance(transport, httpx.ASGITransport)
    return transport.app.state.cached_tile_answer  # type: ignore[attr-defined]


def plain_headers(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode(), v.encode()) for k, v in headers.items()]


async def test_public_entry_bundles_answered_early(url: str) -> None:
    async with open_oauth_log(url, OAuthSettings(public_entries=True)) as log:
        await fill_first_bundle(log)
        plain = {"accept-encoding": "identity"}
        routed = await log.client.get("/tile/entries/000", headers=plain)
        assert routed.status_code == 200
        early = early_answer(log)("/tile/entries/000", plain_headers(plain))
        assert early is not None, "a public log's full bundle is answered before routing"
        body, headers = early
        assert body == routed.content
        assert dict(headers)[b"content-type"] == routed.headers["content-type"].encode()
        # gzip still goes to the route, which compresses.
        assert early_answer(log)("/tile/entries/000", [(b"accept-encoding", b"gzip")]) is None


async def test_public_entries(sqlite_url: str) -> None:
    async with open_oauth_log(sqlite_url, OAuthSettings(public_entries=True)) as log:
        alice = await log.add_submitter("as-prod")
        event = sample_event("client-registered")
        await log.submit(alice, event)
        entry = await log.client.get("/v1/entries/0")
        assert entry.status_code == 200
        assert entry.json()["event"]["event"] == event
        found = await log.client.get("/v1/lookup", params={"client_id": "client-2"})
        assert found.json()["results"][0]["event"]["event"] == event


# -- SET intake ----------------------------------------------------------------------------------


async def post_set(log: OAuthLog, submitter: Submitter | None, token: str, **headers: str) -> Any:
    sent = {"content-type": "application/secevent+jwt", **headers}
    if submitter is not None:
        sent.update(submitter.headers)
    return await log.client.post("/v1/sets", content=token, headers=sent)


def set_error(response: httpx.Response, err: str) -> None:
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["err"] == err, body
    assert isinstance(body["description"], str)


@pytest.mark.parametrize("alg", ["EdDSA", "ES256", "RS256"])
async def test_sets_are_logged_verbatim(log: OAuthLog, alg: str) -> None:
    signer = SetSigner.generate(alg)
    alice = await log.add_submitter(
        "as-prod", set_keys=(signer.principal_key(issuer="https://as.example.com"),)
    )
    claims = set_claims()
    token = make_set(signer, claims)
    response = await post_set(log, alice, token)
    assert response.status_code == 202, response.text
    body = response.json()
    entry = b64d(body["entry"])
    assert b64d(body["leaf_hash"]) == leaf_hash(entry)
    leaf = cbor2.loads(entry)
    assert leaf == {
        "v": 1,
        "submitter": "as-prod",
        "set": token,
        "event": claims,
        "log_time": leaf["log_time"],
    }
    receipt = parse_receipt(body["receipt"].encode())
    verify_receipt(receipt, entry, parse_policy(f"log {log.service.vkey}\nquorum none\n"))
    # Retransmission: accepted again, nothing new logged; a changed SET with that jti is not.
    again = await post_set(log, alice, make_set(signer, claims))
    assert again.status_code == 202
    assert (again.json()["index"], again.json()["duplicate"]) == (body["index"], True)
    before = await log.size()
    set_error(
        await post_set(log, alice, make_set(signer, {**claims, "txn": "t"})), "invalid_request"
    )
    assert await log.size() == before
    # Lookups find it by the SET's subject, types and token references.
    found = await log.client.get(
        "/v1/lookup",
        params={
            "token_ref": claims["events"][
                "https://schemas.openid.net/secevent/oauth/event-type/token-revoked"
            ]["token_ref"]
        },
    )
    assert [r["index"] for r in found.json()["results"]] == [body["index"]]


async def test_set_retransmission_compares_exact_values(slog: OAuthLog) -> None:
    signer = SetSigner.generate("EdDSA")
    alice = await slog.add_submitter("as-prod", set_keys=(signer.principal_key(),))
    uri = "https://example.com/event-type/flag"
    claims = set_claims(events={uri: {"flag": True}})
    assert (await post_set(slog, alice, make_set(signer, claims))).status_code == 202
    before = await slog.size()
    # true and 1 are equal in Python, not in the log: this is another SET with the same jti.
    changed = {**claims, "events": {uri: {"flag": 1}}}
    set_error(await post_set(slog, alice, make_set(signer, changed)), "invalid_request")
    assert await slog.size() == before


async def test_set_refusals_leave_the_log_unchanged(log: OAuthLog) -> None:
    signer = SetSigner.generate("ES256")
    other = SetSigner.generate("ES256", kid="other")
    expiring = SetSigner.generate("EdDSA", kid="expiring")
    alice = await log.add_submitter(
        "as-prod",
        set_keys=(
            signer.principal_key(issuer="https://as.example.com"),
            expiring.principal_key(not_after_ms=NOW * 1000 - 1),
        ),
    )
    reader = await log.add_reader("auditor")
    revoked = await log.add_submitter("as-gone", set_keys=(other.principal_key(),))
    await log.storage.set_principal_status("submitter", "as-gone", "revoked")
    claims = set_claims()
    good = make_set(signer, claims)
    head, body, _ = good.split(".")
    none_head = (
        base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "secevent+jwt"}).encode())
        .rstrip(b"=")
        .decode()
    )
    cases: list[tuple[str, Any, str, dict[str, str], str]] = [
        ("alg none", alice, f"{none_head}.{body}.", {}, "invalid_request"),
        (
            "wrong typ",
            alice,
            make_set(signer, claims, header={"typ": "JWT"}),
            {},
            "invalid_request",
        ),
        ("unknown kid", alice, make_set(other, claims), {}, "invalid_key"),
        ("expired key", alice, make_set(expiring, claims), {}, "invalid_key"),
        ("forged", alice, make_set(signer, claims, signature=bytes(64)), {}, "invalid_key"),
        ("not a JWS", alice, "hello", {}, "invalid_request"),
        ("wrong media type", alice, good, {"content-type": "application/jwt"}, "invalid_request"),
        ("no credential", None, good, {}, "authentication_failed"),
        (
            "unknown credential",
            None,
            good,
            {"authorization": f"Bearer {token_ref(b'nobody')}"},
            "authentication_failed",
        ),
        ("reader credential", None, good, {"authorization": f"Bearer {reader}"}, "access_denied"),
        ("revoked submitter", revoked, make_set(other, claims), {}, "access_denied"),
        (
            "issuer not registered",
            alice,
            make_set(signer, {**claims, "iss": "https://x.example"}),
            {},
            "invalid_issuer",
        ),
        (
            "audience",
            alice,
            make_set(signer, {**claims, "aud": "https://elsewhere"}),
            {},
            "invalid_audience",
        ),
        (
            "future iat",
            alice,
            make_set(signer, {**claims, "iat": NOW + 3600}),
            {},
            "invalid_request",
        ),
        (
            "no events",
            alice,
            make_set(signer, {k: v for k, v in claims.items() if k != "events"}),
            {},
            "invalid_request",
        ),
        ("float claim", alice, make_set(signer, {**claims, "iat": 1.5}), {}, "invalid_request"),
        ("bad signature encoding", alice, f"{head}.{body}.x", {}, "invalid_request"),
    ]
    before = await log.size()
    for case, who, token, headers, err in cases:
        set_error(await post_set(log, who, token, **headers), err)
        assert await log.size() == before, case


async def test_set_audience_setting(sqlite_url: str) -> None:
    settings_ = OAuthSettings(set_audience="https://log.example.com/sets")
    async with open_oauth_log(sqlite_url, settings_) as log:
        signer = SetSigner.generate("EdDSA")
        alice = await log.add_submitter("as-prod", set_keys=(signer.principal_key(),))
        for aud in (["https://log.example.com/sets", "x"], "https://log.example.com/sets", None):
            claims = set_claims(aud=aud)
            response = await post_set(log, alice, make_set(signer, claims))
            assert response.status_code == 202, (aud, response.text)


# -- durability and concurrency ------------------------------------------------------------------


async def test_idempotency_across_restart(url: str) -> None:
    event = sample_event("token-issued")
    signer = make_signer()
    async with open_oauth_log(url, signer=signer) as log:
        alice = await log.add_submitter("as-prod")
        first = (await log.submit(alice, event)).json()
    async with open_oauth_log(url, signer=signer) as log:
        # The same process would hold the same key: reuse the credential and signing key.
        again = await log.client.post(
            "/v1/events", json=envelope(alice, event), headers=alice.headers
        )
        assert again.status_code == 200, again.text
        assert (again.json()["index"], again.json()["entry"]) == (first["index"], first["entry"])
        conflict = await log.submit(alice, {**event, "scope": ["changed"]})
        problem(conflict, "jti-conflict", 409)
        assert (await log.size())[0] == 1


async def test_concurrent_resubmission_on_postgres(pg_dsn: str) -> None:
    async with pg_schema(pg_dsn) as url, open_oauth_log(url) as log:
        alice = await log.add_submitter("as-prod")
        event = sample_event("token-issued")
        changed = {**event, "client_id": "someone-else"}
        bodies = [envelope(alice, event)] * 40 + [envelope(alice, changed)] * 10
        responses = await asyncio.gather(
            *(log.client.post("/v1/events", json=b, headers=alice.headers) for b in bodies)
        )
        statuses = [r.status_code for r in responses]
        same = [r for r, b in zip(responses, bodies, strict=True) if b["event"] == event]
        other = [r for r, b in zip(responses, bodies, strict=True) if b["event"] == changed]
        assert (await log.size())[0] == 1
        winner = [r for r in responses if r.status_code == 201]
        assert len(winner) == 1, statuses
        index = winner[0].json()["index"]
        winning_event = event if winner[0] in same else changed
        for r in same if winning_event == event else other:
            assert r.status_code in (200, 201)
            assert r.json()["index"] == index
        for r in other if winning_event == event else same:
            assert r.status_code == 409


# -- documents -----------------------------------------------------------------------------------


async def test_schema_and_openapi(slog: OAuthLog) -> None:
    schema = await slog.client.get("/v1/schema/events")
    assert schema.headers["content-type"] == "application/schema+json"
    assert schema.json() == event_schema()
    document = (await slog.client.get("/openapi.json")).json()
    for path in ("/v1/sets", "/v1/lookup", "/v1/schema/events", "/v1/events"):
        assert path in document["paths"]
    assert document["components"]["schemas"]["Event"]["required"] == ["event", "signature"]
    assert document["components"]["schemas"]["OAuthEvent"] == event_schema()


# -- hypothesis: generated events over HTTP ----------------------------------------------------


@st.composite
def broken_envelopes(draw: st.DrawFn, good: dict[str, Any]) -> Any:
    how = draw(st.sampled_from(["drop", "extra", "retype", "secret", "signature", "shape"]))
    event = dict(good["event"])
    if how == "drop":
        event.pop(draw(st.sampled_from(sorted(event))))
    elif how == "extra":
        event[draw(st.sampled_from(["x", "colour", "Jti"]))] = draw(st.integers())
    elif how == "retype":
        name = draw(st.sampled_from(sorted(event)))
        event[name] = draw(st.sampled_from([[event[name]], {"v": 1}, True, None]))
    elif how == "secret":
        event[draw(st.sampled_from(["access_token", "password", "code", "client_secret"]))] = "x"
    elif how == "signature":
        return {
            "event": event,
            "signature": base64.b64encode(draw(st.binary(min_size=64, max_size=64))).decode(),
        }
    else:
        return draw(st.sampled_from([[], "text", {"event": event}, {"signature": "x"}]))
    return {"event": event, "signature": good["signature"]}


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(valid_events(), min_size=1, max_size=4), st.data())
def test_generated_batches_log_the_valid_and_refuse_the_rest(
    events: list[dict[str, Any]], data: st.DataObject
) -> None:
    """Generated valid events are logged exactly (canonical bytes); broken copies change nothing.

    Every broken copy is refused: changing a signed event breaks its signature even when the
    change alone would be valid.
    """

    async def scenario() -> None:
        with tempfile.TemporaryDirectory() as directory:
            async with open_oauth_log(str(Path(directory) / "log.db")) as log:
                alice = await log.add_submitter("as-prod")
                good = [
                    envelope(alice, {**event, "jti": f"jti-{i}"}) for i, event in enumerate(events)
                ]
                broken = [data.draw(broken_envelopes(body)) for body in good]
                before = await log.size()
                refused = await log.client.post(
                    "/v1/events/batch", json=broken, headers=alice.headers
                )
                assert all("type" in r for r in refused.json()["results"]), refused.text
                assert await log.size() == before
                accepted = await log.client.post(
                    "/v1/events/batch", json=good, headers=alice.headers
                )
                results = accepted.json()["results"]
                for body, result in zip(good, results, strict=True):
                    assert "index" in result, result
                    entry = b64d(result["entry"])
                    assert cbor2.loads(entry)["event"] == body["event"]
                    assert canonical(body["event"]) in entry
                assert (await log.size())[0] == len(good)

    asyncio.run(scenario())
