"""One fuzz target per parser an attacker can reach, shared by atheris and hypothesis.

A target takes arbitrary bytes, feeds them to a parser (and, when they parse, to what the
service does next with the result), and lets through only the errors the parser documents.
Anything else escaping a target is a crash: ``IndexError``, ``KeyError``, ``TypeError``,
``RecursionError``, ``UnicodeDecodeError``, ``OverflowError``, ``MemoryError``... and
:class:`PropertyViolationError`, raised when an accepted input breaks a documented property (a
canonical parser must round-trip what it accepts byte for byte; the client's and the server's
readers of one format must agree).

Text parsers receive the bytes decoded as UTF-8 with ``surrogateescape``, so undecodable bytes
arrive as lone surrogates, which every text parser must refuse with its own error.

Targets (name: parser; allowed errors):

=================  ==============================================================================
note               merkle.note.parse_note; MalformedError; round-trips
open_note          merkle.note.open_note with a log and a witness key; MerkleError
vkey               merkle.note.parse_verifier / parse_vkey; MalformedError; round-trips
checkpoint         merkle.checkpoint.parse_checkpoint; MalformedError; round-trips
open_checkpoint    merkle.checkpoint.open_checkpoint; MerkleError
cosignature        cosigned note, cosignature_timestamp, CosignatureVerifier.verify; MerkleError
tile_path          merkle.tiles.parse_tile_path; MalformedError; round-trips
entry_bundle       merkle.tiles.parse_entry_bundle; MalformedError; round-trips
decimal            merkle.checkpoint.parse_decimal (query parameters); MalformedError; round-trips
receipt            merkle.receipt.parse_receipt; MalformedError; round-trips
verify_receipt     parse_receipt then verify_receipt under a policy; MerkleError
policy             merkle.policy.parse_policy; MalformedError; format/parse is the identity
witness_request    witness.core.parse_add_checkpoint, then the note and the consistency proof;
                   MalformedRequestError, MerkleError
json_event         server.codec.decode_json; CodecError; decoded values re-encode and decode back
json_batch         server.codec.decode_json_batch; CodecError
cbor_event         server.codec.decode_cbor; CodecError; as json_event
cbor_batch         server.codec.decode_cbor_batch; CodecError
deterministic_cbor server.codec.decode_deterministic; CodecError; round-trips; the client agrees
client_cbor        client.cbor.decode_deterministic; CBORError; round-trips
event              decode_json, check_no_secrets, validate_event, event_lookup_keys; CodecError,
                   EventError
envelope           the POST /v1/events pipeline without HTTP: envelope, event, signature, leaf;
                   CodecError, EventError, Problem, LeafError; the leaf parses back
set_claims         decode_json, check_no_secrets, validate_set_claims, set_lookup_keys, leaf;
                   CodecError, EventError, LeafError
set_jws            the POST /v1/sets pipeline: ASCII, verify_compact_jws, payload, claims, leaf;
                   JoseError, CodecError, EventError, LeafError
public_key         server.jose.load_public_key and load_ed25519_key; JoseError
leaf               server.leaves.parse_leaf; LeafError; client.logclient.parse_leaf_view agrees
client_receipt     client.logclient.verify_receipt_file; ReceiptVerificationError
witness_evidence   witness.evidence.verify_evidence; EvidenceError
client_evidence    client.logclient.verify_client_evidence; VerificationError
=================  ==============================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from client.cbor import CBORError
from client.cbor import decode_deterministic as client_decode
from client.cbor import encode_deterministic as client_encode
from client.errors import ReceiptVerificationError, VerificationError
from client.logclient import parse_leaf_view, verify_client_evidence, verify_receipt_file
from merkle.checkpoint import format_checkpoint, open_checkpoint, parse_checkpoint, parse_decimal
from merkle.cosignature import cosignature_timestamp
from merkle.errors import MalformedError, MerkleError
from merkle.note import format_note, format_vkey, open_note, parse_note, parse_verifier, parse_vkey
from merkle.policy import format_policy, parse_policy
from merkle.receipt import format_receipt, parse_receipt, verify_receipt
from merkle.tiles import format_entry_bundle, format_tile_path, parse_entry_bundle, parse_tile_path
from merkle.tree import verify_consistency
from server.codec import (
    CodecError,
    decode_cbor,
    decode_cbor_batch,
    decode_deterministic,
    decode_json,
    decode_json_batch,
    encode_deterministic,
)
from server.events import (
    EventError,
    check_no_secrets,
    event_lookup_keys,
    set_lookup_keys,
    validate_event,
    validate_set_claims,
)
from server.ingest import _signature as envelope_signature
from server.jose import JoseError, load_ed25519_key, load_public_key, verify_compact_jws
from server.leaves import (
    LeafError,
    encode_event_leaf,
    encode_set_leaf,
    event_signing_message,
    parse_leaf,
)
from server.problems import Problem
from tests.fuzz.seeds import ENTRIES, NOW, SUBMITTER, material
from witness.core import parse_add_checkpoint
from witness.errors import EvidenceError, MalformedRequestError
from witness.evidence import verify_evidence

__all__ = ["TARGETS", "PropertyViolationError", "Target", "run_target"]


class PropertyViolationError(AssertionError):
    """An accepted input broke a documented property of its parser (a crash, like any other)."""


def _require(condition: bool, what: str) -> None:
    """Raise PropertyViolationError naming ``what`` unless ``condition`` holds."""
    if not condition:
        raise PropertyViolationError(what)


def _text(data: bytes) -> str:
    """The bytes as text: UTF-8, undecodable bytes as lone surrogates."""
    return data.decode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class Target:
    """A fuzz target: ``body`` runs the parser; ``allowed`` are its documented errors."""

    name: str
    body: Callable[[bytes], None]
    allowed: tuple[type[BaseException], ...]

    def __call__(self, data: bytes) -> None:
        """Run the target on ``data``; documented errors are swallowed, anything else escapes."""
        try:
            self.body(data)
        except self.allowed:
            return

    @property
    def seeds(self) -> tuple[bytes, ...]:
        """The target's seed corpus: valid inputs built by :mod:`tests.fuzz.seeds`."""
        return material().seeds[self.name]


# --- merkle -------------------------------------------------------------------------------


def _note(data: bytes) -> None:
    note = parse_note(data)
    _require(format_note(note) == data, "parse_note accepted a non-canonical note")


def _open_note(data: bytes) -> None:
    m = material()
    note, verified = open_note(data, [m.log_verifier, m.cosigner_verifier])
    _require(bool(verified) and set(verified) <= set(note.signatures), "verified foreign lines")


def _vkey(data: bytes) -> None:
    text = _text(data)
    parsed = parse_vkey(text)
    _require(format_vkey(parsed) == text, "parse_vkey accepted a non-canonical vkey")
    parse_verifier(text)


def _checkpoint(data: bytes) -> None:
    text = _text(data)
    checkpoint = parse_checkpoint(text)
    _require(format_checkpoint(checkpoint) == text, "parse_checkpoint is not canonical")


def _open_checkpoint(data: bytes) -> None:
    m = material()
    checkpoint, note, _ = open_checkpoint(data, m.log_verifier, [m.cosigner_verifier])
    _require(checkpoint.origin == m.log_verifier.name, "a checkpoint of another origin opened")
    _require(format_checkpoint(checkpoint) == note.text, "checkpoint text differs from the note")


def _cosignature(data: bytes) -> None:
    m = material()
    verifier = m.cosigner_verifier
    split = data.find(b"\n\n")
    if split >= 0:
        # Message (through the first newline of a blank line), then the signature bytes: the
        # verifier answers True or False for any pair, and never raises.
        _require(
            verifier.verify(data[: split + 1], data[split + 2 :]) in (True, False), "verify raised"
        )
    _, verified = open_note(data, [verifier])
    for signature in verified:
        cosignature_timestamp(signature)


def _tile_path(data: bytes) -> None:
    text = _text(data)
    tile = parse_tile_path(text)
    _require(format_tile_path(tile) == text, "parse_tile_path accepted a non-canonical path")


def _entry_bundle(data: bytes) -> None:
    entries = parse_entry_bundle(data)
    _require(format_entry_bundle(entries) == data, "parse_entry_bundle is not canonical")


def _decimal(data: bytes) -> None:
    text = _text(data)
    value = parse_decimal(text, what="fuzz")
    _require(str(value) == text, "parse_decimal accepted a non-canonical decimal")


def _receipt(data: bytes) -> None:
    receipt = parse_receipt(data)
    _require(format_receipt(receipt) == data, "parse_receipt is not canonical")


def _verify_receipt(data: bytes) -> None:
    receipt = parse_receipt(data)
    entry = receipt.extra if receipt.extra is not None else ENTRIES[3]
    checkpoint = verify_receipt(receipt, entry, material().policy)
    _require(receipt.index < checkpoint.tree_size, "a receipt verified beyond its tree")


def _policy(data: bytes) -> None:
    policy = parse_policy(_text(data))
    _require(parse_policy(format_policy(policy)) == policy, "format_policy does not round-trip")


def _witness_request(data: bytes) -> None:
    m = material()
    request = parse_add_checkpoint(data)
    checkpoint, _, _ = open_checkpoint(request.note, m.log_verifier)
    _require(request.origin == checkpoint.origin, "the request's origin is not its note's")
    if request.old_size == 5 and checkpoint.tree_size >= 5:
        verify_consistency(5, checkpoint.tree_size, m.old_root, checkpoint.root_hash, request.proof)


# --- server: events, SETs, leaves --------------------------------------------------------------


def _same_value(value: object) -> None:
    """Check that a decoded event encodes deterministically and reads back equal, both sides."""
    encoded = encode_deterministic(value)  # type: ignore[arg-type]
    _require(decode_deterministic(encoded) == value, "the server's CBOR does not round-trip")
    _require(client_decode(encoded) == value, "the client reads the server's CBOR differently")


def _json_event(data: bytes) -> None:
    _same_value(decode_json(data))


def _json_batch(data: bytes) -> None:
    for item in decode_json_batch(data):
        if not isinstance(item, CodecError):
            _same_value(item)


def _cbor_event(data: bytes) -> None:
    _same_value(decode_cbor(data))


def _cbor_batch(data: bytes) -> None:
    for item in decode_cbor_batch(data):
        if not isinstance(item, CodecError):
            _same_value(item)


def _deterministic_cbor(data: bytes) -> None:
    value = decode_deterministic(data)
    _require(encode_deterministic(value) == data, "decode_deterministic accepted another form")
    try:
        client_value = client_decode(data)
    except CBORError:
        return  # the client reads only what events hold; the log's reader may read more
    _require(client_value == value, "client and server read the same CBOR differently")


def _client_cbor(data: bytes) -> None:
    value = client_decode(data)
    _require(client_encode(value) == data, "the client's decoder accepted another form")  # type: ignore[arg-type]


def _event(data: bytes) -> None:
    value = decode_json(data)
    check_no_secrets(value)
    validate_event(value, now=NOW)
    event_lookup_keys(value)


def _envelope(data: bytes) -> None:
    envelope = decode_json(data)
    if set(envelope) - {"event", "signature"} or "event" not in envelope:
        return
    body = envelope["event"]
    check_no_secrets(body, "/event")
    validate_event(body, now=NOW, pointer="/event")
    if not isinstance(body, dict):
        raise PropertyViolationError("validate_event accepted a value that is not a map")
    signature = envelope_signature(envelope.get("signature"))
    event_bytes = encode_deterministic(body)
    public = ed25519.Ed25519PublicKey.from_public_bytes(material().set_key_raw)
    try:
        public.verify(signature, event_signing_message(event_bytes))
    except InvalidSignature:
        return
    leaf = encode_event_leaf(SUBMITTER, event_bytes, signature, NOW * 1000)
    parsed = parse_leaf(leaf)
    _require(parsed.event == body, "an event leaf does not read back")


def _claims_to_leaf(claims: object, token: str) -> None:
    check_no_secrets(claims)  # type: ignore[arg-type]
    validate_set_claims(claims, now=NOW)  # type: ignore[arg-type]
    if not isinstance(claims, dict):
        raise PropertyViolationError("validate_set_claims accepted a value that is not a map")
    set_lookup_keys(claims)
    leaf = encode_set_leaf(SUBMITTER, token, claims, NOW * 1000)
    _require(parse_leaf(leaf).event == claims, "a SET leaf does not read back")


def _set_claims(data: bytes) -> None:
    _claims_to_leaf(decode_json(data), "a.b.c")


def _set_jws(data: bytes) -> None:
    try:
        token = data.decode("ascii").strip()
    except UnicodeDecodeError:
        return  # refused before parsing, as POST /v1/sets does
    verified = verify_compact_jws(token, [material().set_key], now_ms=NOW * 1000)
    _claims_to_leaf(decode_json(verified.payload), token)


def _public_key(data: bytes) -> None:
    for load in (load_public_key, load_ed25519_key):
        try:
            load(data)
        except JoseError:
            continue


def _leaf(data: bytes) -> None:
    view = parse_leaf_view(data)
    leaf = parse_leaf(data)
    _require(view is not None and view.event == leaf.event, "the client cannot read a leaf")


# --- client and witness documents -------------------------------------------------------------


def _client_receipt(data: bytes) -> None:
    report = verify_receipt_file(data, material().policy)
    _require(report.index < report.checkpoint.tree_size, "a receipt verified beyond its tree")


def _witness_evidence(data: bytes) -> None:
    verify_evidence(data, material().log_verifier.vkey)


def _client_evidence(data: bytes) -> None:
    verify_client_evidence(data, material().log_verifier.vkey)


_EVENT_ERRORS = (CodecError, EventError)

TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("note", _note, (MalformedError,)),
        Target("open_note", _open_note, (MerkleError,)),
        Target("vkey", _vkey, (MalformedError,)),
        Target("checkpoint", _checkpoint, (MalformedError,)),
        Target("open_checkpoint", _open_checkpoint, (MerkleError,)),
        Target("cosignature", _cosignature, (MerkleError,)),
        Target("tile_path", _tile_path, (MalformedError,)),
        Target("entry_bundle", _entry_bundle, (MalformedError,)),
        Target("decimal", _decimal, (MalformedError,)),
        Target("receipt", _receipt, (MalformedError,)),
        Target("verify_receipt", _verify_receipt, (MerkleError,)),
        Target("policy", _policy, (MalformedError,)),
        Target("witness_request", _witness_request, (MalformedRequestError, MerkleError)),
        Target("json_event", _json_event, (CodecError,)),
        Target("json_batch", _json_batch, (CodecError,)),
        Target("cbor_event", _cbor_event, (CodecError,)),
        Target("cbor_batch", _cbor_batch, (CodecError,)),
        Target("deterministic_cbor", _deterministic_cbor, (CodecError,)),
        Target("client_cbor", _client_cbor, (CBORError,)),
        Target("event", _event, _EVENT_ERRORS),
        Target("envelope", _envelope, (*_EVENT_ERRORS, Problem, LeafError)),
        Target("set_claims", _set_claims, (*_EVENT_ERRORS, LeafError)),
        Target("set_jws", _set_jws, (JoseError, *_EVENT_ERRORS, LeafError)),
        Target("public_key", _public_key, (JoseError,)),
        Target("leaf", _leaf, (LeafError,)),
        Target("client_receipt", _client_receipt, (ReceiptVerificationError,)),
        Target("witness_evidence", _witness_evidence, (EvidenceError,)),
        Target("client_evidence", _client_evidence, (VerificationError,)),
    )
}
"""Every target by name."""


def run_target(name: str, data: bytes) -> None:
    """Run target ``name`` on ``data`` (raises whatever crash it finds). KeyError: no target."""
    TARGETS[name](data)
