"""Valid inputs for every fuzz target, built in code from fixed keys (the seed corpora).

Mutation fuzzers (atheris, and the hypothesis strategy of :mod:`tests.fuzz.mutate`) reach deep
parser paths only from inputs that already get past the first checks: a note whose signature
verifies, a receipt whose proof folds to the checkpoint's root, an event of every type, a SET
signed by a registered key. Everything here is deterministic (fixed seeds, fixed ``jti`` values,
the fixed clock :data:`NOW`), so a corpus, and every crash found from it, is reproducible.
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from client.logclient import client_evidence
from merkle.checkpoint import Checkpoint, format_checkpoint
from merkle.cosignature import CosignatureSigner, CosignatureVerifier
from merkle.note import Ed25519Signer, Ed25519Verifier, add_signatures, sign_note
from merkle.policy import Policy, parse_policy
from merkle.receipt import Receipt, format_receipt
from merkle.tiles import Tile, format_entry_bundle, format_tile_path
from server.codec import encode_deterministic
from server.leaves import encode_event_leaf, encode_set_leaf, event_signing_message
from server.storage.base import PrincipalKey
from tests import naive
from tests.oauth_support import NOW, sample_event, sample_types, set_claims
from witness.evidence import KIND_PROOF_FAILED, KIND_SAME_SIZE, Observation, make_record

__all__ = ["ENTRIES", "NOW", "ORIGIN", "SUBMITTER", "Material", "material"]

ORIGIN = "fuzz.example/log"
WITNESS = "fuzz.example/witness"
SUBMITTER = "submitter-1"
ENTRIES = tuple(f"entry {i}".encode() for i in range(13))
"""The leaves of the seed tree; checkpoints are taken at sizes 5 and 13."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True, slots=True)
class Material:
    """Keys, verifiers and the seed inputs of each target (by target name)."""

    log_signer: Ed25519Signer
    log_verifier: Ed25519Verifier
    cosigner: CosignatureSigner
    cosigner_verifier: CosignatureVerifier
    policy: Policy
    policy_text: str
    set_key: PrincipalKey
    set_key_raw: bytes
    """The raw Ed25519 public key of :attr:`set_key` (it also signs the seed envelope)."""
    old_root: bytes
    """Root of the seed tree at size 5 (the witness's known checkpoint)."""
    seeds: Mapping[str, tuple[bytes, ...]]


def _tree_proof_material(
    signer: Ed25519Signer, cosigner: CosignatureSigner
) -> tuple[bytes, bytes, bytes, list[bytes]]:
    """(old root, note at 5, note at 13 cosigned, inclusion proof of entry 3 at 13)."""
    old_root = naive.mth(list(ENTRIES[:5]))
    new_root = naive.mth(list(ENTRIES))
    old_text = format_checkpoint(Checkpoint(ORIGIN, 5, old_root))
    new_text = format_checkpoint(Checkpoint(ORIGIN, 13, new_root, ("extension line",)))
    old_note = sign_note(old_text, [signer])
    new_note = add_signatures(sign_note(new_text, [signer]), [cosigner.signer_at(NOW)])
    inclusion = naive.path(3, list(ENTRIES))
    return old_root, old_note, new_note, inclusion


def _tiles_paths() -> tuple[bytes, ...]:
    tiles = [
        Tile(0, 0),
        Tile(0, 1234067, 5),
        Tile(2, 5),
        Tile(-1, 0),
        Tile(-1, 1234, 17),
        Tile(3, 256**3 + 7),
    ]
    return tuple(format_tile_path(t).encode("ascii") for t in tiles)


def _events() -> tuple[bytes, ...]:
    events = [sample_event(kind, jti=f"jti-{kind}") for kind in sample_types()]
    return tuple(json.dumps(e, separators=(",", ":")).encode() for e in events)


def _set_material() -> tuple[PrincipalKey, ed25519.Ed25519PrivateKey]:
    private = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
    der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return PrincipalKey("set-key-1", "set", "EdDSA", der, 0), private


def _set_token(private: ed25519.Ed25519PrivateKey, claims: Mapping[str, Any], kid: str) -> bytes:
    header = {"alg": "EdDSA", "typ": "secevent+jwt", "kid": kid}
    first = (
        _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(dict(claims)).encode())
    )
    return (first + "." + _b64url(private.sign(first.encode("ascii")))).encode("ascii")


def _public_keys(private: ed25519.Ed25519PrivateKey) -> tuple[bytes, ...]:
    public = private.public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw), "kid": "k1", "use": "sig"}
    return (pem, json.dumps(jwk).encode(), _b64(raw).encode(), _b64url(raw).encode())


def _evidence(
    signer: Ed25519Signer, old_note: bytes, new_note: bytes, proof: list[bytes]
) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """(witness evidence documents, client evidence documents) about the seed checkpoints."""
    fork_text = format_checkpoint(Checkpoint(ORIGIN, 5, naive.mth([b"fork", *ENTRIES[1:5]])))
    fork_note = sign_note(fork_text, [signer])
    old = Observation(old_note, Checkpoint(ORIGIN, 5, naive.mth(list(ENTRIES[:5]))), "log")
    fork = Observation(fork_note, Checkpoint(ORIGIN, 5, naive.mth([b"fork", *ENTRIES[1:5]])), "p")
    new = Observation(new_note, Checkpoint(ORIGIN, 13, naive.mth(list(ENTRIES))), "log")
    same, failed = (
        make_record(
            kind=kind,
            first=first,
            second=second,
            proof=nodes,
            reason="seed",
            now_ms=NOW * 1000,
            witness=WITNESS,
        )
        for kind, first, second, nodes in (
            (KIND_SAME_SIZE, old, fork, []),
            (KIND_PROOF_FAILED, fork, new, proof),
        )
    )
    rollback = client_evidence(
        kind="rollback",
        origin=ORIGIN,
        log="https://fuzz.example/log/",
        trusted=(new_note, 13),
        presented=(old_note, 5),
        proof=proof,
        checked="consistency",
        reason="seed",
        details={},
        observed_at=NOW,
    )
    client = (json.dumps(rollback, indent=2).encode(),)
    return (same.document, failed.document), client


@functools.cache
def material() -> Material:
    """Build the keys and every target's seed corpus (once per process)."""
    signer = Ed25519Signer(ORIGIN, bytes(range(32)))
    cosigner = CosignatureSigner(WITNESS, bytes(range(100, 132)))
    policy_text = (
        f"log {signer.vkey} https://fuzz.example/log/\n"
        "# a comment line\n"
        f"witness W1 {cosigner.vkey} https://fuzz.example/witness\n"
        "group G any W1\n"
        "quorum G\n"
    )
    policy = parse_policy(policy_text)
    old_root, old_note, new_note, inclusion = _tree_proof_material(signer, cosigner)
    consistency = naive.proof(5, list(ENTRIES))
    receipt = format_receipt(Receipt(3, tuple(inclusion), new_note, ENTRIES[3]))
    receipt_bare = format_receipt(Receipt(3, tuple(inclusion), new_note))
    add_checkpoint = (
        b"old 5\n" + b"".join(_b64(h).encode() + b"\n" for h in consistency) + b"\n" + new_note
    )
    add_checkpoint_first = b"old 0\n\n" + old_note
    set_key, set_private = _set_material()
    claims = set_claims(jti="jti-set-1")
    set_token = _set_token(set_private, claims, set_key.key_id)
    set_claims_json = json.dumps(claims).encode()
    events = _events()
    event = json.loads(events[0])
    event_bytes = encode_deterministic(event)
    signature = set_private.sign(event_signing_message(event_bytes))
    envelope = json.dumps({"event": event, "signature": _b64(signature)}).encode()
    cbor_events = tuple(encode_deterministic(json.loads(e)) for e in events[:6])
    leaves = (
        encode_event_leaf(SUBMITTER, event_bytes, signature, NOW * 1000),
        encode_set_leaf(SUBMITTER, set_token.decode("ascii"), claims, NOW * 1000),
    )
    new_text_bytes = new_note.split(b"\n\n", 1)[0] + b"\n"
    cosigned = cosigner.sign_at(new_text_bytes.decode(), NOW)
    cosignature_split = new_text_bytes + b"\n" + cosigned.signature
    witness_evidence, client_evidence_documents = _evidence(
        signer, old_note, new_note, consistency
    )
    seeds: dict[str, tuple[bytes, ...]] = {
        "note": (old_note, new_note),
        "open_note": (old_note, new_note),
        "vkey": (signer.vkey.encode(), cosigner.vkey.encode()),
        "checkpoint": (old_note.split(b"\n\n")[0] + b"\n", new_note.split(b"\n\n")[0] + b"\n"),
        "open_checkpoint": (old_note, new_note),
        "cosignature": (new_note, cosignature_split),
        "tile_path": _tiles_paths(),
        "entry_bundle": (format_entry_bundle(ENTRIES), format_entry_bundle([b""])),
        "decimal": (b"0", b"5", b"9223372036854775807", b"20852014"),
        "receipt": (receipt, receipt_bare),
        "verify_receipt": (receipt, receipt_bare),
        "policy": (policy_text.encode(), b"log " + signer.vkey.encode() + b"\nquorum none\n"),
        "witness_request": (add_checkpoint, add_checkpoint_first),
        "json_event": events,
        "json_batch": (b"[" + b",".join(events[:4]) + b"]",),
        "cbor_event": cbor_events,
        "cbor_batch": (bytes([0x80 | len(cbor_events)]) + b"".join(cbor_events),),
        "deterministic_cbor": (*cbor_events, *leaves),
        "client_cbor": (*cbor_events, *leaves),
        "event": events,
        "envelope": (envelope,),
        "set_claims": (set_claims_json,),
        "set_jws": (set_token,),
        "public_key": _public_keys(set_private),
        "leaf": leaves,
        "client_receipt": (receipt,),
        "witness_evidence": witness_evidence,
        "client_evidence": client_evidence_documents,
    }
    return Material(
        log_signer=signer,
        log_verifier=signer.verifier(),
        cosigner=cosigner,
        cosigner_verifier=cosigner.verifier(),
        policy=policy,
        policy_text=policy_text,
        set_key=set_key,
        set_key_raw=set_private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        ),
        old_root=old_root,
        seeds=seeds,
    )

