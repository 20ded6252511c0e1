"""The emitter's batch-root signing (the default when the submitter's name is known).

Against :class:`tests.emitter_fakelog.FakeLog`, which recomputes the batch message and tree
from the naive RFC 6962 definitions: batches are signed once and every logged entry stays
attributable; a log without the route makes the emitter fall back to per-event signatures;
answers that do not verify keep the event pending; :func:`client.emitter.verify_batch_result`
refuses every tampered member.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.batchsig import build_batch, verify_leaf_attribution
from client.cbor import encode_deterministic
from client.emitter import Emitter, ReceiptError, verify_batch_result
from merkle.note import Ed25519Signer, Ed25519Verifier, encode_base64, sign_note
from merkle.policy import parse_policy
from merkle.receipt import parse_receipt, verify_receipt
from server.leaves import parse_leaf
from tests.emitter_fakelog import FakeLog
from tests.test_emitter import FAST, ISSUER, event, wait_for


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def fake(key: Ed25519PrivateKey) -> FakeLog:
    return FakeLog(key.public_key())


@pytest.fixture
def make(tmp_path: Path, key: Ed25519PrivateKey, fake: FakeLog) -> Iterator[Callable[..., Emitter]]:
    made: list[Emitter] = []

    def factory(**overrides: Any) -> Emitter:
        options: dict[str, Any] = {
            "log_vkey": fake.vkey,
            "issuer": ISSUER,
            "submitter": fake.submitter,
            "config": FAST,
            "transport": fake.transport(),
        }
        options.update(overrides)
        emitter = Emitter("http://log.test", fake.credential, key, tmp_path / "spool.db", **options)
        made.append(emitter)
        return emitter

    yield factory
    for emitter in made:
        emitter.close(timeout=0.5)


def test_batches_are_signed_once_and_every_entry_is_attributable(
    make: Callable[..., Emitter], fake: FakeLog, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    emitter = make()
    jtis = [emitter.emit(event(i)) for i in range(40)]
    wait_for(lambda: emitter.stats().spooled == 40)
    with sqlite3.connect(tmp_path / "spool.db") as db:
        signatures = {bytes(s) for (s,) in db.execute("SELECT signature FROM outbox")}
    assert signatures <= {b""}  # spooled unsigned: signed per batch at delivery
    assert emitter.flush(10.0)
    assert fake.batch_sizes == []
    assert sum(fake.signed_batch_sizes) == 40
    policy = parse_policy(f"log {fake.vkey}\nquorum none\n")
    public = key.public_key().public_bytes_raw()
    for jti in jtis:
        assert jti is not None
        receipt = emitter.receipt(jti)
        assert receipt is not None
        assert not receipt.duplicate
        verify_receipt(parse_receipt(receipt.receipt), receipt.entry, policy)
        leaf = parse_leaf(receipt.entry)
        assert leaf.batch is not None
        assert leaf.signature is None
        assert leaf.event["jti"] == jti
        assert verify_leaf_attribution(receipt.entry, [public]) == fake.submitter
    assert fake.entries == [r.entry for r in emitter.receipts(limit=100)]


def test_a_log_without_the_route_gets_per_event_signatures(
    make: Callable[..., Emitter], fake: FakeLog, key: Ed25519PrivateKey
) -> None:
    fake.signed_batches = False
    emitter = make()
    jtis = [emitter.emit(event(i)) for i in range(5)]
    assert emitter.flush(10.0)
    assert sum(fake.batch_sizes) == 5
    public = key.public_key().public_bytes_raw()
    for jti in jtis:
        assert jti is not None
        receipt = emitter.receipt(jti)
        assert receipt is not None
        assert parse_leaf(receipt.entry).signature is not None
        assert verify_leaf_attribution(receipt.entry, [public]) == fake.submitter
    assert "signing events one by one" in str(emitter.stats().last_error)


def test_batch_signing_needs_the_submitter_name(
    tmp_path: Path, key: Ed25519PrivateKey, fake: FakeLog
) -> None:
    with pytest.raises(ValueError, match="submitter"):
        Emitter(
            "http://log.test", "c", key, tmp_path / "a.db", log_vkey=fake.vkey, batch_signing=True
        )


def test_without_a_submitter_name_events_are_signed_one_by_one(
    make: Callable[..., Emitter], fake: FakeLog
) -> None:
    emitter = make(submitter=None)
    emitter.emit(event())
    assert emitter.flush(10.0)
    assert (fake.batch_sizes, fake.signed_batch_sizes) == ([1], [])


def _resign(result: dict[str, Any]) -> dict[str, Any]:
    return {**result, "checkpoint": 1}


TAMPERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "log time changed": lambda r: {**r, "log_time": r["log_time"] + 1} if "log_time" in r else r,
    "leaf hash changed": lambda r: {**r, "leaf_hash": encode_base64(bytes(32))},
    "index changed": lambda r: {**r, "index": r["index"] + 1, "tree_size": r["tree_size"] + 1},
    "tree size changed": lambda r: {**r, "tree_size": r["tree_size"] + 1},
    "no such checkpoint": _resign,
    "checkpoint is text": lambda r: {**r, "checkpoint": "0"},
    "proof hash added": lambda r: {
        **r,
        "inclusion_proof": [*r["inclusion_proof"], encode_base64(bytes(32))],
    },
    "log time missing": lambda r: {k: v for k, v in r.items() if k != "log_time"},
    "claims a duplicate": lambda r: {**r, "duplicate": True},
}


# These fail once only: the retry really is a duplicate, answered with the stored entry.
ONCE = {"claims a duplicate", "log time changed", "log time missing"}


@pytest.mark.parametrize("name", sorted(set(TAMPERS) - ONCE))
def test_answers_that_do_not_verify_keep_the_event_pending(
    make: Callable[..., Emitter], fake: FakeLog, name: str
) -> None:
    fake.tamper = TAMPERS[name]
    emitter = make()
    emitter.emit(event())
    wait_for(lambda: emitter.stats().receipt_errors >= 2)
    stats = emitter.stats()
    assert (stats.delivered, stats.failed, stats.pending) == (0, 0, 1)
    fake.tamper = None
    assert emitter.flush(10.0)
    (receipt,) = emitter.receipts()
    assert receipt.duplicate  # the stored entry of the first attempt, verified as such


def _signed_answer(
    fake: FakeLog, key: Ed25519PrivateKey, events: list[dict[str, Any]]
) -> tuple[dict[str, Any], list[bytes], Any]:
    encodings = [encode_deterministic(e) for e in events]
    signed = build_batch(fake.submitter, key, encodings)
    body = {
        "size": len(events),
        "root": encode_base64(signed.root),
        "signature": encode_base64(signed.signature),
        "events": [{"index": i, "event": e} for i, e in enumerate(events)],
    }
    headers = httpx.Headers({"authorization": f"Bearer {fake.credential}"})
    response = fake.handle("POST", "/v1/events/signed-batch", headers, json.dumps(body).encode())
    return response.json(), encodings, signed


def test_verify_batch_result_mutation_table(fake: FakeLog, key: Ed25519PrivateKey) -> None:
    events = [event(i, iss=ISSUER, jti=f"j-{i}", iat=1) for i in range(3)]
    answer, encodings, signed = _signed_answer(fake, key, events)
    verifier = Ed25519Verifier.from_vkey(fake.vkey)
    checkpoints = answer["checkpoints"]
    result = answer["results"][1]
    index, _, size, _, receipt, entry, duplicate = verify_batch_result(
        result, checkpoints, encodings[1], signed.proofs[1], fake.submitter, verifier
    )
    assert (index, size, duplicate) == (1, 3, False)
    assert entry == fake.entries[1]
    assert parse_receipt(receipt).index == 1
    stranger = Ed25519Signer.generate("fake.test/log").verifier()
    cases: list[tuple[str, Any]] = [
        ("another event", (result, checkpoints, encodings[0], signed.proofs[1], fake.submitter)),
        ("another proof", (result, checkpoints, encodings[1], signed.proofs[0], fake.submitter)),
        ("another submitter", (result, checkpoints, encodings[1], signed.proofs[1], "someone")),
        *[(name, (change(result), checkpoints, encodings[1], signed.proofs[1], fake.submitter))
          for name, change in TAMPERS.items()],
        ("checkpoint re-signed", (result, [_foreign(checkpoints[0])], encodings[1],
                                  signed.proofs[1], fake.submitter)),
    ]  # fmt: skip
    for _name, (answer_item, notes, encoded, proof, name) in cases:
        with pytest.raises(ReceiptError):
            verify_batch_result(answer_item, notes, encoded, proof, name, verifier)
    with pytest.raises(ReceiptError):
        verify_batch_result(
            result, checkpoints, encodings[1], signed.proofs[1], fake.submitter, stranger
        )
    # A duplicate carries the stored entry, which must hold the same event of this submitter.
    again, _, _ = _signed_answer(fake, key, events)
    stored = again["results"][1]
    assert stored["duplicate"]
    assert "log_time" not in stored
    verify_batch_result(
        stored, again["checkpoints"], encodings[1], signed.proofs[1], fake.submitter, verifier
    )
    with pytest.raises(ReceiptError):
        verify_batch_result(
            stored, again["checkpoints"], encodings[2], signed.proofs[2], fake.submitter, verifier
        )
    swapped = {**stored, "entry": base64.b64encode(fake.entries[2]).decode()}
    with pytest.raises(ReceiptError):
        verify_batch_result(
            swapped, again["checkpoints"], encodings[1], signed.proofs[1], fake.submitter, verifier
        )


def _foreign(note: str) -> str:
    """The same checkpoint text signed by another key of the same name."""
    other = Ed25519Signer.generate("fake.test/log")
    return sign_note(note.split("\n\n")[0] + "\n", [other]).decode()
