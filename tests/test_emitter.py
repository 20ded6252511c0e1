"""client.emitter against an in-process fake log: delivery, verification, retries, bounds.

The fake log (tests/emitter_fakelog.py) checks credentials, signatures (with server.codec) and
jti idempotency like the real one and can be made to fail in every way the emitter must survive.
End-to-end runs against the real server live in tests/test_example_authlib.py, crash tests with
SIGKILL in tests/test_emitter_crash.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry

from client.emitter import (
    EVENT_SIGNATURE_CONTEXT,
    Emitter,
    EmitterClosedError,
    EmitterConfig,
    ReceiptError,
    SpoolFullError,
    load_signing_key,
    parse_retry_after,
    sign_event,
    verify_result,
)
from client.spool import Spool, SpoolLockedError, StoredReceipt
from merkle.note import Ed25519Signer, Ed25519Verifier, encode_base64, sign_note
from merkle.policy import parse_policy
from merkle.receipt import parse_receipt, verify_receipt
from server.codec import encode_deterministic
from server.leaves import event_signing_message, parse_leaf
from tests.emitter_fakelog import FakeLog, problem

FAST = EmitterConfig(
    commit_interval=0.002,
    backoff_base=0.01,
    backoff_max=0.05,
    request_timeout=5.0,
    durable_timeout=10.0,
)
ISSUER = "https://as.example.test"
REF = "-bfU429PR50gUa3RLbpGgosKKPkwMRgFyt9OMlQb4OQ"


def event(number: int = 0, **extra: Any) -> dict[str, Any]:
    """A token-issued event like an OAuth server emits."""
    return {
        "type": "token-issued",
        "client_id": "app-1",
        "sub": f"pseudonym-{number}",
        "token_type": "access_token",
        "grant_type": "client_credentials",
        "scope": ["read", "write"],
        "exp": 1_900_000_000,
        "token_ref": REF,
        **extra,
    }


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def fake(key: Ed25519PrivateKey) -> FakeLog:
    return FakeLog(key.public_key())


@pytest.fixture
def make(
    tmp_path: Path, key: Ed25519PrivateKey, fake: FakeLog
) -> Iterator[Callable[..., Emitter]]:
    made: list[Emitter] = []

    def factory(**overrides: Any) -> Emitter:
        options: dict[str, Any] = {
            "log_vkey": fake.vkey,
            "issuer": ISSUER,
            "submitter": fake.submitter,
            "config": FAST,
            "transport": fake.transport(),
            # These tests cover per-event signatures; tests/test_emitter_batchsig.py the default.
            "batch_signing": False,
        }
        options.update(overrides)
        emitter = Emitter(
            "http://log.test",
            options.pop("credential", fake.credential),
            options.pop("signing_key", key),
            options.pop("spool_path", tmp_path / "spool.db"),
            **options,
        )
        made.append(emitter)
        return emitter

    yield factory
    for emitter in made:
        emitter.close(timeout=0.5)


def spool_rows(path: Path) -> list[tuple[str, str]]:
    """(jti, state) of every outbox row, read with a separate connection."""
    with sqlite3.connect(path) as db:
        return [(str(j), str(s)) for j, s in db.execute("SELECT jti, state FROM outbox")]


# -- delivery and verification ---------------------------------------------------------------


def test_emitted_events_are_delivered_with_verified_receipts(
    make: Callable[..., Emitter], fake: FakeLog
) -> None:
    seen: list[StoredReceipt] = []
    emitter = make(on_receipt=seen.append)
    jtis = [emitter.emit(event(i)) for i in range(50)]
    assert all(isinstance(j, str) for j in jtis)
    assert emitter.flush(10.0)
    stats = emitter.stats()
    assert (stats.accepted, stats.spooled, stats.delivered, stats.pending) == (50, 50, 50, 0)
    assert len(fake.entries) == 50
    assert len(seen) == 50
    policy = parse_policy(f"log {fake.vkey}\nquorum none\n")
    for jti in jtis:
        assert jti is not None
        receipt = emitter.receipt(jti)
        assert receipt is not None
        assert not receipt.duplicate
        # Verify again from the stored bytes alone, with the merkle library.
        verify_receipt(parse_receipt(receipt.receipt), receipt.entry, policy)
        leaf = parse_leaf(receipt.entry)
        assert leaf.event["jti"] == jti
        assert leaf.submitter == fake.submitter
    logged = fake.events[0]
    assert logged["iss"] == ISSUER
    assert isinstance(logged["iat"], int)
    assert len(str(logged["jti"])) == 32


def test_signature_is_over_the_domain_prefix_and_the_servers_encoding(
    key: Ed25519PrivateKey,
) -> None:
    value = event(1, iss=ISSUER, jti="j-1", iat=1_800_000_000)
    data, signature = sign_event(value, key)
    assert data == encode_deterministic(value)
    assert event_signing_message(data) == EVENT_SIGNATURE_CONTEXT + data
    key.public_key().verify(signature, b"etch/event/v1\x00" + data)


def test_event_is_copied_at_emit_and_defaults_are_kept_when_given(
    make: Callable[..., Emitter], fake: FakeLog
) -> None:
    emitter = make()
    value = event(2, jti="fixed-jti", iat=1_700_000_000, iss="https://other.test")
    assert emitter.emit(value) == "fixed-jti"
    value["scope"].append("admin")
    value["client_id"] = "changed"
    assert emitter.flush(10.0)
    assert fake.events[0]["scope"] == ["read", "write"]
    assert fake.events[0]["client_id"] == "app-1"
    assert (fake.events[0]["iat"], fake.events[0]["iss"]) == (1_700_000_000, "https://other.test")


class _Weird(str):
    pass


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ([("type", "x")], TypeError),
        ("not a map", TypeError),
        ({"type": "x", "n": 1.5}, TypeError),
        ({"type": "x", "n": b"bytes"}, TypeError),
        ({"type": "x", "n": [1, {"deep": 0.5}]}, TypeError),
        ({"type": "x", 3: "int key"}, TypeError),
        ({"type": "x", "n": {1, 2}}, TypeError),
        ({"type": "x", "n": 2**64}, ValueError),
        ({"type": "x", "n": [-(2**63) - 1]}, ValueError),
        ({"type": "x", "n": "\ud800"}, ValueError),
        ({"type": "x", "jti": 5}, ValueError),
        ({"type": "x", "jti": ""}, ValueError),
    ],
)
def test_malformed_events_raise_at_once(
    make: Callable[..., Emitter], value: Any, error: type[Exception]
) -> None:
    emitter = make()
    with pytest.raises(error):
        emitter.emit(value)
    with pytest.raises(error):
        emitter.emit_durable(value)
    assert emitter.stats().accepted == 0


def test_nesting_is_bounded_and_subclasses_are_normalised(
    make: Callable[..., Emitter], fake: FakeLog
) -> None:
    emitter = make()
    deep: dict[str, Any] = {"type": "x"}
    node = deep
    for _ in range(40):
        node["n"] = {}
        node = node["n"]
    with pytest.raises(ValueError, match="nested"):
        emitter.emit(deep)
    emitter.emit({"type": "x", _Weird("k"): _Weird("v"), "t": (1, True, None)})
    assert emitter.flush(10.0)
    assert fake.events[0]["k"] == "v"
    assert fake.events[0]["t"] == [1, True, None]


def test_missing_issuer_is_a_programming_error(make: Callable[..., Emitter]) -> None:
    emitter = make(issuer=None)
    with pytest.raises(ValueError, match="iss"):
        emitter.emit({"type": "x"})
    assert emitter.emit({"type": "x", "iss": ISSUER}) is not None


def test_emit_after_close_raises_and_close_is_idempotent(make: Callable[..., Emitter]) -> None:
    emitter = make()
    emitter.emit(event())
    assert emitter.close(5.0)
    assert emitter.close(5.0)
    with pytest.raises(EmitterClosedError):
        emitter.emit(event())
    with pytest.raises(EmitterClosedError):
        emitter.emit_durable(event())
    with pytest.raises(EmitterClosedError):
        emitter.receipt("x")


def test_second_emitter_on_the_same_spool_is_refused(make: Callable[..., Emitter]) -> None:
    make()
    with pytest.raises(SpoolLockedError):
        make()


# -- durability ----------------------------------------------------------------------------


def test_emit_durable_returns_once_the_row_is_on_disk(
    make: Callable[..., Emitter], fake: FakeLog, tmp_path: Path
) -> None:
    fake.down = True
    emitter = make(config=EmitterConfig(commit_interval=5.0, backoff_base=0.05, backoff_max=0.1))
    jti = emitter.emit_durable(event())
    assert (jti, "pending") in spool_rows(tmp_path / "spool.db")


def test_aemit_durable_returns_once_the_row_is_on_disk(
    make: Callable[..., Emitter], fake: FakeLog, tmp_path: Path
) -> None:
    fake.down = True
    emitter = make(config=EmitterConfig(commit_interval=5.0, backoff_base=0.05, backoff_max=0.1))

    async def main() -> list[str]:
        return list(await asyncio.gather(*(emitter.aemit_durable(event(i)) for i in range(20))))

    jtis = asyncio.run(main())
    rows = spool_rows(tmp_path / "spool.db")
    assert {(j, "pending") for j in jtis} <= set(rows)


def test_plain_emit_reaches_the_spool_within_the_commit_window(
    make: Callable[..., Emitter], fake: FakeLog, tmp_path: Path
) -> None:
    fake.down = True
    emitter = make(config=EmitterConfig(commit_interval=0.005, backoff_base=0.05, backoff_max=0.1))
    jti = emitter.emit(event())
    wait_for(lambda: (jti, "pending") in spool_rows(tmp_path / "spool.db"), timeout=5.0)
    assert emitter.stats().last_commit_seconds > 0


def test_close_commits_the_queue_and_a_new_emitter_delivers_it(
    make: Callable[..., Emitter], fake: FakeLog
) -> None:
    fake.down = True
    first = make(config=EmitterConfig(commit_interval=5.0, backoff_base=0.05, backoff_max=0.1))
    jtis = [first.emit(event(i)) for i in range(30)]
    assert not first.close(timeout=0.2)  # the log is down: not delivered, but committed
    fake.down = False
    second = make()
    assert second.stats().pending == 30
    assert second.flush(10.0)
    assert {e["jti"] for e in fake.events} == set(jtis)


def test_resubmission_after_lost_receipts_is_answered_as_duplicate(
    make: Callable[..., Emitter], fake: FakeLog
) -> None:
    # The log logs the events but its answers are lost (here: they do not verify): the
    # events stay pending; a later emitter resubmits and gets the original indexes back.
    fake.tamper = lambda result: {**result, "tree_size": result["tree_size"] + 1}
    first = make()
    for i in range(5):
        first.emit(event(i))
    wait_for(lambda: first.stats().receipt_errors >= 5)
    assert not first.close(timeout=0.1)
    assert len(fake.entries) == 5
    fake.tamper = None
    second = make()
    assert second.flush(10.0)
    receipts = second.receipts()
    assert len(receipts) == 5
    assert all(r.duplicate for r in receipts)
    assert len(fake.entries) == 5


# -- the log in trouble --------------------------------------------------------------------


def test_log_down_for_many_retries_loses_nothing(
    make: Callable[..., Emitter], fake: FakeLog, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="client.emitter")
    fake.down = True
    emitter = make()
    jtis = {emitter.emit(event(i)) for i in range(200)}
    wait_for(lambda: emitter.stats().retries >= 20, timeout=20.0)
    stats = emitter.stats()
    assert stats.pending == 200
    assert stats.delivered == 0
    assert stats.failed == 0
    assert stats.last_error is not None
    assert "cannot reach the log" in stats.last_error
    fake.down = False
    assert emitter.flush(20.0)
    assert {e["jti"] for e in fake.events} == jtis
    assert emitter.stats().delivered == 200
    # One warning for the outage, one line when it ends; the retries in between are debug.
    emitter_records = [r for r in caplog.records if r.name == "client.emitter"]
    assert [r.levelno for r in emitter_records].count(logging.WARNING) == 1
    assert any("takes events again" in r.getMessage() for r in emitter_records)


@pytest.mark.parametrize("status", [429, 500, 502, 503, 401, 403, 404])
def test_transient_batch_answers_are_retried(
    make: Callable[..., Emitter], fake: FakeLog, status: int
) -> None:
    fake.status = status
    emitter = make()
    emitter.emit(event())
    wait_for(lambda: emitter.stats().retries >= 3)
    assert emitter.stats().failed == 0
    fake.status = None
    assert emitter.flush(10.0)
    assert emitter.stats().delivered == 1


def test_retry_after_is_honoured(make: Callable[..., Emitter], fake: FakeLog) -> None:
    fake.status, fake.retry_after = 503, "1"
    emitter = make()
    emitter.emit(event())
    wait_for(lambda: fake.requests >= 1)
    time.sleep(0.5)
    assert fake.requests == 1  # backoff alone would have retried several times by now
    fake.status = None
    assert emitter.flush(10.0)


def test_wrong_credential_is_retried_and_never_logged(
    make: Callable[..., Emitter], fake: FakeLog, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "s3cr3t-credential-value"
    emitter = make(credential=secret)
    emitter.emit(event())
    wait_for(lambda: emitter.stats().retries >= 2)
    assert emitter.stats().failed == 0
    fake.credential = secret
    assert emitter.flush(10.0)
    assert all(secret not in record.getMessage() for record in caplog.records)


def test_per_event_problems_fail_for_good_and_are_kept(
    make: Callable[..., Emitter], fake: FakeLog
) -> None:
    fake.event_problem = lambda e: (
        problem(422, "bad-event", "sub is not allowed here") if e.get("sub") == "bad" else None
    )
    emitter = make()
    emitter.emit({**event(), "sub": "bad"})
    good = [emitter.emit(event(i)) for i in range(3)]
    assert emitter.flush(10.0)
    stats = emitter.stats()
    assert (stats.delivered, stats.failed, stats.failed_in_spool) == (3, 1, 1)
    (failed,) = emitter.failed_events()
    assert (failed.status, failed.problem_type) == (422, "urn:etch:error:bad-event")
    assert "sub" in failed.detail
    requests = fake.requests
    time.sleep(0.2)
    assert fake.requests == requests  # never sent again
    assert {e["jti"] for e in fake.events} == set(good)
    assert emitter.discard_failed([failed.seq]) == 1
    assert emitter.failed_events() == []
    assert emitter.stats().failed_in_spool == 0


def test_jti_reused_with_other_content_fails_with_409(
    make: Callable[..., Emitter], fake: FakeLog
) -> None:
    emitter = make()
    emitter.emit(event(1, jti="same"))
    assert emitter.flush(10.0)
    emitter.emit(event(2, jti="same"))
    assert emitter.flush(10.0)
    (failed,) = emitter.failed_events()
    assert failed.status == 409
    assert len(fake.entries) == 1


def test_per_event_unavailable_is_retried(make: Callable[..., Emitter], fake: FakeLog) -> None:
    answers = iter([problem(503, "unavailable", "busy")] * 3)
    fake.event_problem = lambda e: next(answers, None)
    emitter = make()
    emitter.emit(event())
    assert emitter.flush(10.0)
    assert emitter.stats().delivered == 1
    assert len(fake.entries) == 1


def test_oversize_batches_are_split_down_to_the_culprit(
    make: Callable[..., Emitter], fake: FakeLog
) -> None:
    handle = fake.handle

    def limited(method: str, path: str, headers: httpx.Headers, body: bytes) -> httpx.Response:
        batch = httpx.Response(200, content=body).json()
        if len(batch) > 4 or any(e["event"].get("sub") == "huge" for e in batch):
            return httpx.Response(413, json=problem(413, "payload-too-large", "too large"))
        return handle(method, path, headers, body)

    fake.handle = limited  # type: ignore[method-assign]
    emitter = make(config=EmitterConfig(commit_interval=0.05, backoff_base=0.01, backoff_max=0.05))
    for i in range(20):
        emitter.emit(event(i))
    emitter.emit({**event(), "sub": "huge"})
    assert emitter.flush(10.0)
    stats = emitter.stats()
    assert (stats.delivered, stats.failed) == (20, 1)
    assert emitter.failed_events()[0].status == 413


def _tamper_signature(result: dict[str, Any]) -> dict[str, Any]:
    """Re-sign the checkpoint text with another key of the same name."""
    other = Ed25519Signer.generate("fake.test/log")
    text = result["checkpoint"].split("\n\n")[0] + "\n"
    return {**result, "checkpoint": sign_note(text, [other]).decode()}


TAMPERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "checkpoint signed by another key": _tamper_signature,
    "wrong tree size": lambda r: {**r, "tree_size": r["tree_size"] + 1},
    "wrong index": lambda r: {**r, "index": (r["index"] + 1) % r["tree_size"]}
    if r["tree_size"] > 1 else {**r, "index": 1},
    "proof hash flipped": lambda r: {
        **r,
        "inclusion_proof": [encode_base64(bytes(32)), *r["inclusion_proof"][1:]]
        if r["inclusion_proof"] else [encode_base64(bytes(32))],
    },
    "leaf hash of another entry": lambda r: {**r, "leaf_hash": encode_base64(bytes(32))},
    "entry changed": lambda r: {
        **r, "entry": base64.b64encode(base64.b64decode(r["entry"]) + b"\x00").decode()
    },
    "receipt of another index": lambda r: {
        **r, "receipt": r["receipt"].replace("index ", "index 9", 1)
    },
    "not base64": lambda r: {**r, "leaf_hash": r["leaf_hash"][:-1] + "!"},
    "index is a string": lambda r: {**r, "index": str(r["index"])},
    "duplicate missing": lambda r: {k: v for k, v in r.items() if k != "duplicate"},
}


@pytest.mark.parametrize("name", sorted(TAMPERS))
def test_answers_that_do_not_verify_keep_the_event_pending(
    make: Callable[..., Emitter], fake: FakeLog, name: str
) -> None:
    fake.tamper = TAMPERS[name]
    emitter = make()
    emitter.emit(event())
    wait_for(lambda: emitter.stats().receipt_errors >= 2)
    stats = emitter.stats()
    assert (stats.delivered, stats.failed, stats.pending) == (0, 0, 1)
    assert emitter.receipts() == []
    fake.tamper = None
    assert emitter.flush(10.0)
    (receipt,) = emitter.receipts()
    assert receipt.duplicate


def _batch(key: Ed25519PrivateKey, value: dict[str, Any]) -> bytes:
    _, signature = sign_event(value, key)
    envelope = {"event": value, "signature": encode_base64(signature)}
    return json.dumps([envelope]).encode()


def _submit(fake: FakeLog, key: Ed25519PrivateKey, value: dict[str, Any]) -> dict[str, Any]:
    headers = httpx.Headers({"authorization": f"Bearer {fake.credential}"})
    response = fake.handle("POST", "/v1/events/batch", headers, _batch(key, value))
    (result,) = response.json()["results"]
    return dict(result)


def test_verify_result_mutation_table(fake: FakeLog, key: Ed25519PrivateKey) -> None:
    value = event(0, iss=ISSUER, jti="j-0", iat=1_800_000_000)
    for i in range(3):  # a tree of several leaves, so that the proof is not empty
        _submit(fake, key, value if i == 0 else event(i, iss=ISSUER, jti=f"j-{i}", iat=1))
    result = _submit(fake, key, value)  # a duplicate: index 0 in a tree of 3
    data, signature = sign_event(value, key)
    log_verifier = Ed25519Verifier.from_vkey(fake.vkey)
    index, _, size, _, _, entry, duplicate = verify_result(
        result, data, signature, log_verifier, submitter=fake.submitter
    )
    assert (index, size, duplicate) == (0, 3, True)
    assert parse_leaf(entry).signature == signature
    stranger = Ed25519Signer.generate("fake.test/log").verifier()
    with pytest.raises(ReceiptError):
        verify_result(result, data, signature, stranger)
    with pytest.raises(ReceiptError):
        verify_result(result, data, signature, log_verifier, submitter="someone-else")
    with pytest.raises(ReceiptError):
        verify_result(result, data + b"\x00", signature, log_verifier)
    with pytest.raises(ReceiptError):
        verify_result(result, data, bytes(64), log_verifier)
    for _name, tamper in TAMPERS.items():
        with pytest.raises(ReceiptError):
            verify_result(tamper(dict(result)), data, signature, log_verifier)
    proof = result["inclusion_proof"]
    assert proof
    for mutated in (proof[:-1], [*proof, proof[0]], proof[::-1], [None]):
        with pytest.raises(ReceiptError):
            verify_result({**result, "inclusion_proof": mutated}, data, signature, log_verifier)


# -- bounds ----------------------------------------------------------------------------------


def test_full_queue_drops_plain_emits_and_counts_them(
    make: Callable[..., Emitter], fake: FakeLog
) -> None:
    emitter = make(
        config=EmitterConfig(commit_interval=30.0, max_queue=5, backoff_base=0.01,
                             backoff_max=0.05)
    )
    # The writer waits out its long commit window, so the queue fills up.
    results = [emitter.emit(event(i)) for i in range(8)]
    accepted = [r for r in results if r is not None]
    assert len(accepted) >= 5
    assert results.count(None) == 8 - len(accepted)
    assert emitter.stats().dropped_queue_full == results.count(None)
    assert emitter.flush(10.0)
    assert {e["jti"] for e in fake.events} == set(accepted)


def test_full_spool_drops_plain_emits_and_refuses_durable_ones(
    make: Callable[..., Emitter], fake: FakeLog
) -> None:
    fake.down = True
    emitter = make(
        config=EmitterConfig(commit_interval=0.002, max_spool_events=3, backoff_base=0.01,
                             backoff_max=0.05)
    )
    for i in range(5):
        emitter.emit(event(i))
    wait_for(lambda: emitter.stats().spooled + emitter.stats().dropped_spool_full == 5)
    stats = emitter.stats()
    assert (stats.spooled, stats.dropped_spool_full, stats.pending) == (3, 2, 3)
    with pytest.raises(SpoolFullError):
        emitter.emit_durable(event(9))
    fake.down = False
    assert emitter.flush(10.0)
    emitter.emit_durable(event(10))  # room again once the log took the events
    assert emitter.flush(10.0)
    assert len(fake.entries) == 4


def test_spool_byte_bound(make: Callable[..., Emitter], fake: FakeLog, tmp_path: Path) -> None:
    fake.down = True
    emitter = make(
        config=EmitterConfig(commit_interval=0.002, max_spool_bytes=2000, backoff_base=0.01,
                             backoff_max=0.05)
    )
    for i in range(20):
        emitter.emit(event(i))
    wait_for(lambda: emitter.stats().spooled + emitter.stats().dropped_spool_full == 20)
    stats = emitter.stats()
    assert 0 < stats.spooled < 20
    assert stats.spool_bytes <= 2000
    reader = Spool(tmp_path / "spool.db")
    try:
        assert reader.usage().size == stats.spool_bytes
    finally:
        reader.close()


# -- metrics, configuration, helpers ---------------------------------------------------------


def test_metrics_are_registered_in_the_callers_registry(
    make: Callable[..., Emitter], fake: FakeLog
) -> None:
    registry = CollectorRegistry()
    emitter = make(registry=registry)
    for i in range(7):
        emitter.emit(event(i))
    assert emitter.flush(10.0)

    def sample(name: str, labels: dict[str, str] | None = None) -> float | None:
        return registry.get_sample_value(name, labels or {})

    assert sample("etch_emitter_events_total", {"outcome": "delivered"}) == 7
    assert sample("etch_emitter_events_total", {"outcome": "accepted"}) == 7
    assert sample("etch_emitter_spool_events", {"state": "pending"}) == 0
    assert sample("etch_emitter_requests_total") == emitter.stats().requests
    assert sample("etch_emitter_delivery_seconds_count") == 7
    assert (sample("etch_emitter_commit_seconds_count") or 0) >= 1


def test_on_receipt_failures_do_not_stop_delivery(make: Callable[..., Emitter]) -> None:
    def explode(receipt: StoredReceipt) -> None:
        raise RuntimeError("callback bug")

    emitter = make(on_receipt=explode)
    for i in range(3):
        emitter.emit(event(i))
    assert emitter.flush(10.0)
    assert emitter.stats().delivered == 3


@pytest.mark.parametrize(
    "change",
    [
        {"commit_interval": 0},
        {"max_queue": -1},
        {"batch_size": True},
        {"backoff_base": 2.0, "backoff_max": 1.0},
    ],
)
def test_config_refuses_bad_values(change: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="EmitterConfig"):
        EmitterConfig(**change)


def test_constructor_refuses_bad_arguments(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    vkey = Ed25519Signer.generate("log.test").vkey
    with pytest.raises(ValueError, match="log_url"):
        Emitter("ftp://log.test", "c", key, tmp_path / "a.db", log_vkey=vkey)
    with pytest.raises(ValueError, match="log_vkey"):
        Emitter("http://log.test", "c", key, tmp_path / "a.db", log_vkey="not a vkey")
    with pytest.raises(TypeError):
        Emitter("http://log.test", "c", b"seed", tmp_path / "a.db", log_vkey=vkey)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("0", 0.0),
        ("120", 120.0),
        ("+5", None),
        (" 5", None),
        ("5 ", None),
        ("1.5", None),
        ("-1", None),
        ("\u0665", None),
        ("", None),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
        ("Wed, 21 Oct 2015 07:30:00 GMT", 120.0),
        ("99999999999999999999", 1e9),
    ],
)
def test_parse_retry_after(header: str, expected: float | None) -> None:
    now = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert parse_retry_after(header, now) == expected


def test_load_signing_key_formats(tmp_path: Path) -> None:
    signer = Ed25519Signer.generate("oauth-test")
    note_file = tmp_path / "note.key"
    note_file.write_text(signer.private_key + "\n")
    loaded = load_signing_key(note_file)
    assert loaded.public_key().public_bytes_raw() == signer.verifier().public_key
    pem_key = Ed25519PrivateKey.generate()
    pem_file = tmp_path / "key.pem"
    pem_file.write_bytes(
        pem_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert load_signing_key(pem_file).public_key() == pem_key.public_key()
    bad = tmp_path / "bad.key"
    for content in (signer.private_key[:-2] + "AA", "garbage", ""):
        bad.write_text(content)
        with pytest.raises(ValueError, match=r"bad\.key") as info:
            load_signing_key(bad)
        assert signer.private_key not in str(info.value)


def test_one_registry_per_emitter(
    make: Callable[..., Emitter], tmp_path: Path
) -> None:
    registry = CollectorRegistry()
    make(registry=registry)
    with pytest.raises(ValueError, match="Duplicated"):
        make(registry=registry, spool_path=tmp_path / "other.db")
    # The refused emitter released its spool: another one can take it.
    make(spool_path=tmp_path / "other.db")


def test_threads_survive_unexpected_errors(
    make: Callable[..., Emitter], fake: FakeLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    import client.emitter as module

    real_sign = module.sign_event
    real_settle = module.Emitter._settle
    failures = {"sign": 1, "settle": 1}

    def flaky_sign(event: Any, key: Ed25519PrivateKey) -> tuple[bytes, bytes]:
        if failures["sign"]:
            failures["sign"] -= 1
            raise RuntimeError("bug in the writer")
        return real_sign(event, key)

    def flaky_settle(self: Emitter, *args: Any) -> None:
        if failures["settle"]:
            failures["settle"] -= 1
            raise RuntimeError("bug in delivery")
        real_settle(self, *args)

    monkeypatch.setattr(module, "sign_event", flaky_sign)
    monkeypatch.setattr(module.Emitter, "_settle", flaky_settle)
    emitter = make()
    emitter.emit(event(1))  # lost with the writer's bug (and logged)
    wait_for(lambda: failures["sign"] == 0)
    jti = emitter.emit_durable(event(2))
    assert emitter.flush(10.0)
    assert failures["settle"] == 0
    assert [e["jti"] for e in fake.events] == [jti]
    assert emitter.receipt(jti) is not None


def test_only_the_newest_receipts_are_kept(make: Callable[..., Emitter]) -> None:
    emitter = make(
        config=EmitterConfig(commit_interval=0.002, max_receipts=5, backoff_base=0.01,
                             backoff_max=0.05)
    )
    jtis = []
    for i in range(12):
        jtis.append(emitter.emit_durable(event(i)))
        assert emitter.flush(10.0)
    kept = emitter.receipts(limit=100)
    assert [r.jti for r in kept] == jtis[-5:]
    assert emitter.receipt(jtis[0]) is None
