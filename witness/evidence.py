"""Self-verifying evidence that a log signed checkpoints which cannot all be honest.

A witness records evidence when it holds two checkpoints of one origin, both carrying a valid
signature of the log, that it cannot reconcile. The record is a JSON document that anyone can
check with nothing but the log's vkey (:func:`verify_evidence`; the CLI's
``etch evidence verify FILE`` calls it)::

    {
      "format": "etch-witness-evidence/v1",
      "kind": "same-size",
      "origin": "example.com/log",
      "first":  {"tree_size": 5, "source": "stored", "checkpoint": "example.com/log\\n5\\n..."},
      "second": {"tree_size": 5, "source": "peer https://w2.example", "checkpoint": "..."},
      "proof": [],
      "reason": "two checkpoints of size 5 with different root hashes",
      "observed_at": 1767225600,
      "witness": "witness.example/w1"
    }

``checkpoint`` values are the complete signed notes as the witness saw them (log signature,
possibly cosignatures); ``first`` is the smaller tree (for equal sizes, the smaller root hash);
``proof`` holds standard base64 hashes; ``observed_at`` is POSIX seconds; ``source`` says where
the note came from (``stored``, ``add-checkpoint``, ``pull <url>``, ``peer <url>``, ``check``).
All nine keys are required and no other key is allowed.

What each ``kind`` proves, and what :func:`verify_evidence` reports:

``same-size`` (definitive)
    Two log-signed checkpoints of one size with different root hashes. A log can only do this
    by showing two histories: this alone convicts it.
``proof-failed`` (not definitive)
    The consistency proof the witness fetched from the log's own tiles, from the smaller
    checkpoint to the larger, does not verify. The verifier re-runs it and confirms it fails.
    Tiles are not signed, so this shows that the log (or something between it and the witness)
    served data contradicting its signed checkpoints, not that no valid proof exists.
``proof-unobtainable`` (not definitive)
    The log answered but did not serve the tiles needed to prove consistency between two sizes
    it signed (which tlog-tiles requires it to). Only the two signatures can be checked.
``submitted-proof-failed`` (not definitive; a refused-checkpoint record, never blocking)
    The proof a client sent with ``add-checkpoint`` does not verify. Anyone can send a bad
    proof, so this only documents the refusal.

The witness stops cosigning an origin once it holds ``same-size``, ``proof-failed`` or
``proof-unobtainable`` evidence against it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from merkle.checkpoint import Checkpoint, parse_checkpoint
from merkle.errors import MalformedError, NoteError, ProofError
from merkle.note import decode_base64, encode_base64, open_note, parse_verifier
from merkle.tree import verify_consistency
from witness.errors import EvidenceError
from witness.storage.base import Record

__all__ = [
    "BLOCKING_KINDS",
    "EVIDENCE_FORMAT",
    "KIND_PROOF_FAILED",
    "KIND_PROOF_UNOBTAINABLE",
    "KIND_SAME_SIZE",
    "KIND_SUBMITTED_PROOF_FAILED",
    "MAX_EVIDENCE_BYTES",
    "EvidenceReport",
    "Observation",
    "make_record",
    "verify_evidence",
]

EVIDENCE_FORMAT = "etch-witness-evidence/v1"
"""Value of the ``format`` key of every evidence document."""

KIND_SAME_SIZE = "same-size"
KIND_PROOF_FAILED = "proof-failed"
KIND_PROOF_UNOBTAINABLE = "proof-unobtainable"
KIND_SUBMITTED_PROOF_FAILED = "submitted-proof-failed"

BLOCKING_KINDS = frozenset({KIND_SAME_SIZE, KIND_PROOF_FAILED, KIND_PROOF_UNOBTAINABLE})
"""Kinds stored as evidence; holding any of them stops cosigning for the origin."""

_KINDS = BLOCKING_KINDS | {KIND_SUBMITTED_PROOF_FAILED}

MAX_EVIDENCE_BYTES = 1 << 20
"""Largest evidence document :func:`verify_evidence` reads (1 MiB)."""

_MAX_PROOF = 64
_KEYS = frozenset(
    {"format", "kind", "origin", "first", "second", "proof", "reason", "observed_at", "witness"}
)
_SIDE_KEYS = frozenset({"tree_size", "source", "checkpoint"})


@dataclass(frozen=True, slots=True)
class Observation:
    """One side of a record: a log-signed note, its parsed checkpoint, where it came from."""

    note: bytes
    checkpoint: Checkpoint
    source: str


@dataclass(frozen=True, slots=True)
class EvidenceReport:
    """What :func:`verify_evidence` established.

    ``definitive`` is true only when the document alone proves the log signed two
    inconsistent checkpoints (kind ``same-size``); ``summary`` says in one sentence what was
    shown and what was not.
    """

    origin: str
    kind: str
    definitive: bool
    first: Checkpoint
    second: Checkpoint
    summary: str


def _fingerprint(kind: str, first: Checkpoint, second: Checkpoint) -> bytes:
    digest = hashlib.sha256()
    for part in (EVIDENCE_FORMAT, kind, first.origin):
        digest.update(part.encode("utf-8") + b"\x00")
    for checkpoint in (first, second):
        digest.update(checkpoint.tree_size.to_bytes(8, "big") + checkpoint.root_hash)
    return digest.digest()


def _ordered(first: Observation, second: Observation) -> tuple[Observation, Observation]:
    def key(side: Observation) -> tuple[int, bytes]:
        return (side.checkpoint.tree_size, side.checkpoint.root_hash)

    return (first, second) if key(first) <= key(second) else (second, first)


def make_record(
    *,
    kind: str,
    first: Observation,
    second: Observation,
    proof: Sequence[bytes],
    reason: str,
    now_ms: int,
    witness: str,
) -> Record:
    """Build the storage record (JSON document and fingerprint) for one inconsistency.

    The two observations are put in canonical order (smaller tree first). The fingerprint
    depends on the kind, the origin and both (size, root) pairs, so seeing the same conflict
    again does not add a record. Requires both checkpoints to have one origin and a known
    ``kind``; raises EvidenceError otherwise.
    """
    if kind not in _KINDS:
        raise EvidenceError(f"unknown evidence kind {kind!r}")
    if first.checkpoint.origin != second.checkpoint.origin:
        raise EvidenceError("evidence checkpoints have different origins")
    first, second = _ordered(first, second)
    document = {
        "format": EVIDENCE_FORMAT,
        "kind": kind,
        "origin": first.checkpoint.origin,
        "first": _side(first),
        "second": _side(second),
        "proof": [encode_base64(node) for node in proof],
        "reason": reason,
        "observed_at": now_ms // 1000,
        "witness": witness,
    }
    encoded = json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    return Record(
        origin=first.checkpoint.origin,
        kind=kind,
        fingerprint=_fingerprint(kind, first.checkpoint, second.checkpoint),
        document=encoded.encode("utf-8"),
        recorded_at=now_ms,
    )


def _side(observation: Observation) -> dict[str, Any]:
    return {
        "tree_size": observation.checkpoint.tree_size,
        "source": observation.source,
        "checkpoint": observation.note.decode("utf-8"),
    }


# --------------------------------------------------------------------------- verification


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise EvidenceError(f"evidence repeats the key {key!r}")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise EvidenceError(f"evidence contains the non-JSON number {name}")


def _load(data: bytes) -> dict[str, Any]:
    if len(data) > MAX_EVIDENCE_BYTES:
        raise EvidenceError(f"evidence is larger than {MAX_EVIDENCE_BYTES} bytes")
    try:
        document = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_reject_duplicates,
            parse_constant=_reject_constant,
        )
        # A "\ud800" escape decodes to a lone surrogate, which no UTF-8 text can hold.
        json.dumps(document, ensure_ascii=False).encode("utf-8")
    except (UnicodeError, json.JSONDecodeError) as exc:
        raise EvidenceError(f"evidence is not UTF-8 JSON: {exc}") from None
    if not isinstance(document, dict) or set(document) != _KEYS:
        raise EvidenceError(f"evidence must be a JSON object with exactly the keys {sorted(_KEYS)}")
    if document["format"] != EVIDENCE_FORMAT:
        raise EvidenceError(f"evidence format is not {EVIDENCE_FORMAT!r}")
    for key in ("kind", "origin", "reason", "witness"):
        if not isinstance(document[key], str):
            raise EvidenceError(f"evidence {key!r} must be a string")
    if type(document["observed_at"]) is not int or document["observed_at"] < 0:
        raise EvidenceError("evidence 'observed_at' must be a non-negative integer")
    if document["kind"] not in _KINDS:
        raise EvidenceError(f"unknown evidence kind {document['kind']!r}")
    return document


def _open_side(side: Any, what: str, origin: str, log_vkey: str) -> Checkpoint:
    if not isinstance(side, dict) or set(side) != _SIDE_KEYS:
        raise EvidenceError(f"evidence {what!r} must have exactly the keys {sorted(_SIDE_KEYS)}")
    if not isinstance(side["checkpoint"], str) or not isinstance(side["source"], str):
        raise EvidenceError(f"evidence {what!r} checkpoint and source must be strings")
    try:
        note, _ = open_note(side["checkpoint"].encode("utf-8"), [parse_verifier(log_vkey)])
        checkpoint = parse_checkpoint(note.text)
    except NoteError as exc:
        raise EvidenceError(f"{what} checkpoint is not validly signed by the log: {exc}") from None
    except MalformedError as exc:
        raise EvidenceError(f"{what} checkpoint is malformed: {exc}") from None
    if checkpoint.origin != origin:
        raise EvidenceError(
            f"{what} checkpoint is for origin {checkpoint.origin!r}, not {origin!r}"
        )
    if type(side["tree_size"]) is not int or side["tree_size"] != checkpoint.tree_size:
        raise EvidenceError(f"{what} tree_size does not match its checkpoint")
    return checkpoint


def _proof(value: Any) -> list[bytes]:
    if not isinstance(value, list) or len(value) > _MAX_PROOF:
        raise EvidenceError(f"evidence 'proof' must be a list of at most {_MAX_PROOF} hashes")
    proof = []
    for number, item in enumerate(value, 1):
        if not isinstance(item, str):
            raise EvidenceError(f"proof hash {number} is not a string")
        try:
            node = decode_base64(item, what=f"proof hash {number}")
        except MalformedError as exc:
            raise EvidenceError(str(exc)) from None
        if len(node) != 32:
            raise EvidenceError(f"proof hash {number} is not 32 bytes")
        proof.append(node)
    return proof


def verify_evidence(data: bytes, log_vkey: str) -> EvidenceReport:
    """Check an evidence document with nothing but the log's vkey; say what it proves.

    Checks the document shape (module docstring), that both checkpoints carry a valid
    signature by ``log_vkey`` and belong to the document's origin, and the claim of its kind:
    ``same-size`` needs equal sizes and different roots; ``proof-failed`` and
    ``submitted-proof-failed`` need ``0 < first size < second size`` and a proof that fails
    RFC 9162 §2.1.4.2 verification; ``proof-unobtainable`` needs different sizes and an empty
    proof. Returns the report; ``definitive`` is true only for ``same-size``.

    Raises EvidenceError if ``log_vkey`` is not a valid vkey, the document is malformed, a
    checkpoint is not validly signed by the log, or the claim does not hold (for instance the
    recorded proof verifies, so nothing is shown).
    """
    try:
        parse_verifier(log_vkey)
    except MalformedError as exc:
        raise EvidenceError(f"invalid log vkey: {exc}") from None
    document = _load(data)
    origin, kind = document["origin"], document["kind"]
    first = _open_side(document["first"], "first", origin, log_vkey)
    second = _open_side(document["second"], "second", origin, log_vkey)
    proof = _proof(document["proof"])
    if (first.tree_size, first.root_hash) > (second.tree_size, second.root_hash):
        raise EvidenceError("evidence sides are not in order (smaller tree first)")
    if kind == KIND_SAME_SIZE:
        return _same_size(origin, first, second, proof)
    if kind == KIND_PROOF_UNOBTAINABLE:
        if first.tree_size == second.tree_size or proof:
            raise EvidenceError("proof-unobtainable evidence needs two sizes and no proof")
        return EvidenceReport(
            origin,
            kind,
            False,
            first,
            second,
            f"the log signed sizes {first.tree_size} and {second.tree_size}, and the witness "
            "reports the log did not serve a consistency proof between them; this does not "
            "prove the checkpoints inconsistent",
        )
    return _failed_proof(origin, kind, first, second, proof)


def _same_size(
    origin: str, first: Checkpoint, second: Checkpoint, proof: list[bytes]
) -> EvidenceReport:
    if first.tree_size != second.tree_size or first.root_hash == second.root_hash or proof:
        raise EvidenceError(
            "same-size evidence needs two checkpoints of one size with different roots and no proof"
        )
    return EvidenceReport(
        origin,
        KIND_SAME_SIZE,
        True,
        first,
        second,
        f"the log signed two different root hashes for tree size {first.tree_size}: "
        "it showed two histories",
    )


def _failed_proof(
    origin: str, kind: str, first: Checkpoint, second: Checkpoint, proof: list[bytes]
) -> EvidenceReport:
    if not 0 < first.tree_size < second.tree_size:
        raise EvidenceError(f"{kind} evidence needs 0 < first size < second size")
    try:
        verify_consistency(
            first.tree_size, second.tree_size, first.root_hash, second.root_hash, proof
        )
    except ProofError:
        pass
    else:
        raise EvidenceError("the recorded consistency proof verifies: nothing is shown")
    where = "the log's tiles" if kind == KIND_PROOF_FAILED else "an add-checkpoint request"
    return EvidenceReport(
        origin,
        kind,
        False,
        first,
        second,
        f"the log signed sizes {first.tree_size} and {second.tree_size}, and the consistency "
        f"proof taken from {where} fails; proof hashes are unsigned, so this does not prove "
        "that no valid proof exists",
    )
