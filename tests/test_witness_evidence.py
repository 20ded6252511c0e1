"""Evidence documents: what :func:`witness.evidence.verify_evidence` accepts, and refuses.

Documents are built by :func:`witness.evidence.make_record` from checkpoints of a
:class:`~tests.witness_support.FakeLog` and a fork of it, then checked with nothing but the
log's vkey. Every way of tampering with a document must be refused.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from merkle.checkpoint import parse_checkpoint
from merkle.note import Ed25519Signer, open_note
from tests.witness_support import FakeLog
from witness.errors import EvidenceError
from witness.evidence import (
    EVIDENCE_FORMAT,
    KIND_PROOF_FAILED,
    KIND_PROOF_UNOBTAINABLE,
    KIND_SAME_SIZE,
    KIND_SUBMITTED_PROOF_FAILED,
    MAX_EVIDENCE_BYTES,
    Observation,
    make_record,
    verify_evidence,
)


@pytest.fixture(scope="module")
def logs() -> tuple[FakeLog, FakeLog]:
    honest = FakeLog()
    honest.append(20)
    forked = honest.fork(12)
    forked.append(8, tag=b" fork")
    return honest, forked


def observe(log: FakeLog, size: int, source: str = "test") -> Observation:
    note = log.checkpoint(size)
    return Observation(
        note, parse_checkpoint(open_note(note, [log.signer.verifier()])[0].text), source
    )


def document(
    kind: str, first: Observation, second: Observation, proof: list[bytes] | None = None
) -> bytes:
    record = make_record(
        kind=kind,
        first=first,
        second=second,
        proof=proof or [],
        reason="test",
        now_ms=1_767_225_600_123,
        witness="witness.example/w1",
    )
    return record.document


def edit(data: bytes, change: Any) -> bytes:
    parsed = json.loads(data)
    change(parsed)
    return json.dumps(parsed).encode()


# -- what each kind proves -----------------------------------------------------------------


def test_same_size_is_definitive(logs: tuple[FakeLog, FakeLog]) -> None:
    honest, forked = logs
    data = document(KIND_SAME_SIZE, observe(honest, 20), observe(forked, 20))
    report = verify_evidence(data, honest.vkey)
    assert report.definitive
    assert report.kind == KIND_SAME_SIZE
    assert report.origin == honest.origin
    assert report.first.tree_size == report.second.tree_size == 20
    assert "two different root hashes" in report.summary


def test_document_shape(logs: tuple[FakeLog, FakeLog]) -> None:
    honest, forked = logs
    data = document(KIND_SAME_SIZE, observe(honest, 20, "stored"), observe(forked, 20, "peer x"))
    parsed = json.loads(data)
    assert parsed["format"] == EVIDENCE_FORMAT
    assert set(parsed) == {
        "format",
        "kind",
        "origin",
        "first",
        "second",
        "proof",
        "reason",
        "observed_at",
        "witness",
    }
    assert parsed["observed_at"] == 1_767_225_600
    assert parsed["witness"] == "witness.example/w1"
    assert parsed["first"]["checkpoint"].startswith("example.com/log\n20\n")
    assert data.endswith(b"\n")


def test_order_and_fingerprint_do_not_depend_on_argument_order(
    logs: tuple[FakeLog, FakeLog],
) -> None:
    honest, forked = logs
    one = make_record(
        kind=KIND_SAME_SIZE,
        first=observe(honest, 20),
        second=observe(forked, 20),
        proof=[],
        reason="r",
        now_ms=1,
        witness="w",
    )
    two = make_record(
        kind=KIND_SAME_SIZE,
        first=observe(forked, 20),
        second=observe(honest, 20),
        proof=[],
        reason="r",
        now_ms=1,
        witness="w",
    )
    assert one.fingerprint == two.fingerprint
    assert one.document == two.document
    other_kind = make_record(
        kind=KIND_PROOF_UNOBTAINABLE,
        first=observe(honest, 13),
        second=observe(forked, 20),
        proof=[],
        reason="r",
        now_ms=1,
        witness="w",
    )
    assert other_kind.fingerprint != one.fingerprint


def test_proof_failed_is_reported_not_definitive(logs: tuple[FakeLog, FakeLog]) -> None:
    honest, forked = logs
    # The fork's own tiles give a proof from 15 to 20 that fails against the honest size 15.
    proof = forked.consistency_proof(15, 20)
    data = document(KIND_PROOF_FAILED, observe(honest, 15), observe(forked, 20), proof)
    report = verify_evidence(data, honest.vkey)
    assert not report.definitive
    assert report.kind == KIND_PROOF_FAILED
    assert "does not prove" in report.summary
    submitted = document(
        KIND_SUBMITTED_PROOF_FAILED, observe(honest, 15), observe(forked, 20), proof
    )
    assert not verify_evidence(submitted, honest.vkey).definitive


def test_proof_that_verifies_shows_nothing(logs: tuple[FakeLog, FakeLog]) -> None:
    honest, _ = logs
    proof = honest.consistency_proof(15, 20)
    data = document(KIND_PROOF_FAILED, observe(honest, 15), observe(honest, 20), proof)
    with pytest.raises(EvidenceError, match="verifies"):
        verify_evidence(data, honest.vkey)


def test_proof_unobtainable_is_reported_not_definitive(logs: tuple[FakeLog, FakeLog]) -> None:
    honest, forked = logs
    data = document(KIND_PROOF_UNOBTAINABLE, observe(honest, 14), observe(forked, 20))
    report = verify_evidence(data, honest.vkey)
    assert not report.definitive
    assert "did not serve" in report.summary


# -- refusals -------------------------------------------------------------------------------


def test_same_roots_are_not_evidence(logs: tuple[FakeLog, FakeLog]) -> None:
    honest, _ = logs
    data = document(KIND_SAME_SIZE, observe(honest, 20, "a"), observe(honest, 20, "b"))
    with pytest.raises(EvidenceError, match="different roots"):
        verify_evidence(data, honest.vkey)


def test_another_log_key_is_refused(logs: tuple[FakeLog, FakeLog]) -> None:
    honest, forked = logs
    data = document(KIND_SAME_SIZE, observe(honest, 20), observe(forked, 20))
    other = Ed25519Signer.generate(honest.origin).vkey
    with pytest.raises(EvidenceError, match="not validly signed"):
        verify_evidence(data, other)
    with pytest.raises(EvidenceError, match="vkey"):
        verify_evidence(data, "not a vkey")


def test_a_note_signed_by_someone_else_is_refused(logs: tuple[FakeLog, FakeLog]) -> None:
    honest, _ = logs
    impostor = FakeLog(honest.origin)
    impostor.append(20, tag=b" impostor")
    data = document(KIND_SAME_SIZE, observe(honest, 20), observe(impostor, 20))
    with pytest.raises(EvidenceError, match="not validly signed"):
        verify_evidence(data, honest.vkey)


def _flip_root(side: dict[str, Any]) -> None:
    lines = side["checkpoint"].split("\n")
    root = bytearray(base64.b64decode(lines[2]))
    root[0] ^= 1
    lines[2] = base64.b64encode(bytes(root)).decode()
    side["checkpoint"] = "\n".join(lines)


TAMPERINGS = {
    "changed root (signature breaks)": lambda d: _flip_root(d["second"]),
    "tree_size differs from note": lambda d: d["first"].update(tree_size=19),
    "tree_size is a bool": lambda d: d["first"].update(tree_size=True),
    "wrong origin": lambda d: d.update(origin="example.com/other"),
    "wrong format": lambda d: d.update(format="etch-witness-evidence/v2"),
    "unknown kind": lambda d: d.update(kind="suspicious"),
    "extra key": lambda d: d.update(extra=1),
    "missing key": lambda d: d.pop("reason"),
    "side extra key": lambda d: d["first"].update(note="x"),
    "proof on same-size": lambda d: d.update(proof=[base64.b64encode(b"\x00" * 32).decode()]),
    "proof not base64": lambda d: d.update(proof=["!!"]),
    "observed_at negative": lambda d: d.update(observed_at=-1),
    "observed_at float": lambda d: d.update(observed_at=1.5),
    "sides swapped": lambda d: d.update(first=d["second"], second=d["first"]),
    "checkpoint not a string": lambda d: d["first"].update(checkpoint=5),
}


@pytest.mark.parametrize("name", sorted(TAMPERINGS))
def test_tampering_is_refused(logs: tuple[FakeLog, FakeLog], name: str) -> None:
    honest, forked = logs
    data = document(KIND_SAME_SIZE, observe(honest, 20), observe(forked, 20))
    with pytest.raises(EvidenceError):
        verify_evidence(edit(data, TAMPERINGS[name]), honest.vkey)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"[]",
        b"\xff\xfe",
        b'{"format": NaN}',
        b'{"format": "a", "format": "b"}',
        b"x" * (MAX_EVIDENCE_BYTES + 1),
    ],
)
def test_malformed_json_is_refused(logs: tuple[FakeLog, FakeLog], data: bytes) -> None:
    with pytest.raises(EvidenceError):
        verify_evidence(data, logs[0].vkey)


def test_unobtainable_needs_two_sizes(logs: tuple[FakeLog, FakeLog]) -> None:
    honest, forked = logs
    data = document(KIND_PROOF_UNOBTAINABLE, observe(honest, 20), observe(forked, 20))
    with pytest.raises(EvidenceError, match="two sizes"):
        verify_evidence(data, honest.vkey)


def test_failed_proof_needs_growth_from_a_non_empty_tree(logs: tuple[FakeLog, FakeLog]) -> None:
    honest, forked = logs
    data = document(KIND_PROOF_FAILED, observe(honest, 0), observe(forked, 20))
    with pytest.raises(EvidenceError, match="0 < first size"):
        verify_evidence(data, honest.vkey)


def test_make_record_refuses_mixed_origins(logs: tuple[FakeLog, FakeLog]) -> None:
    honest, _ = logs
    other = FakeLog("example.org/other")
    other.append(3)
    with pytest.raises(EvidenceError):
        document(KIND_SAME_SIZE, observe(honest, 3), observe(other, 3))
    with pytest.raises(EvidenceError):
        document("bogus", observe(honest, 3), observe(honest, 4))
