"""The emitter an OAuth server embeds: never-blocking ``emit``, durable spool, verified delivery.

Use from synchronous code (Flask, Django, a worker) or from asyncio::

    emitter = Emitter("https://log.example.com", credential, signing_key, "/var/lib/oauth/etch.db",
                      log_vkey="log.example.com/oauth/2026+1a2b3c4d+ARf...")
    emitter.emit({"type": "token-issued", "client_id": "app", "sub": "p-81f2", ...})
    jti = emitter.emit_durable(event)          # returns once the event is on disk
    jti = await emitter.aemit_durable(event)   # the same, for async callers
    emitter.close()                            # commit what is queued, deliver what it can

How an event travels:

1. :meth:`Emitter.emit` copies and checks the event (a map of text, integers, booleans, null,
   lists and maps), fills ``iss`` (the emitter's issuer), ``jti`` (128 random bits, hex) and
   ``iat`` (now, POSIX seconds) when missing, appends it to an in-memory queue and returns the
   ``jti``. It takes no lock, does no I/O and never raises for log trouble.
2. A writer thread wakes at most every ``commit_interval`` (the **group-commit window**, 5 ms
   by default), encodes each queued event as deterministic CBOR, signs
   ``b"etch/event/v1\\x00" + cbor`` with the submitter's Ed25519 key and writes the whole group
   to the spool (:mod:`client.spool`, SQLite WAL, ``synchronous=FULL``) in one transaction.
3. A delivery thread posts spooled events to ``POST /v1/events/batch`` in batches of up to
   ``batch_size``, as ``[{"event": {...}, "signature": "<base64>"}, ...]`` with
   ``Authorization: Bearer <credential>``. An event leaves the spool only when the log's answer
   verifies (:func:`verify_result`): the checkpoint carries a valid signature by the log key
   (``log_vkey``), the inclusion proof leads from ``leaf_hash`` to its root, the returned entry
   hashes to ``leaf_hash`` and holds exactly the event and signature sent. The verified receipt
   is then kept in the spool (:meth:`Emitter.receipt`) and passed to ``on_receipt``.

Batch-root signing (``batch_signing``, on by default when ``submitter`` is given, the name the
signed message must carry): the writer spools events unsigned, and the delivery thread signs
each batch it sends once (:mod:`client.batchsig`): the RFC 6962 root of the batch's event
encodings, with the submitter's name and the batch size, one Ed25519 signature per request
instead of one per event. The batch goes to ``POST /v1/events/signed-batch`` as ``{"size",
"root", "signature", "events": [{"index", "event"}, ...]}`` (a whole batch: the log rebuilds the
tree and logs each event with its path, so every entry stays attributable to this submitter on
its own). Answers are verified by :func:`verify_batch_result`: the emitter rebuilds the leaf the
log must have written (the event, its index, path and the batch signature, the log's
``log_time``) and checks it against ``leaf_hash``, then the checkpoint and inclusion proof as
above. A log that does not know the route (404, 405) turns batch signing off for this emitter:
events are then signed one by one at delivery. Retries form new batches (a new signature each).

Failures and retries:

* transport errors, timeouts, 429, 5xx, 401/403 (a credential problem the operator can fix)
  and malformed answers: the whole batch is tried again after an exponential backoff with
  jitter (``backoff_base`` doubling up to ``backoff_max``, at least the ``Retry-After`` the log
  asked for, capped at ``retry_after_max``). There is no retry limit: a log that is down for
  hours finds every event waiting in the spool when it returns.
* a per-event problem with status 429 or 5xx, or a receipt that does not verify: that event is
  tried again later on its own schedule (a resubmission is idempotent: the log answers it with
  the original index and receipt).
* a per-event 4xx problem (bad event, refused signature, ``409`` for a ``jti`` reused with
  other content, ...): the event is kept in the spool as *failed* with the problem, never sent
  again unchanged (:meth:`Emitter.failed_events`, :meth:`Emitter.discard_failed`).
* ``413`` or another 4xx for the whole batch: the batch is halved until the culprit stands
  alone, which is then recorded as failed.

Bounds and what happens at them (all in :class:`EmitterConfig`):

* memory: at most ``max_queue`` events wait for the writer. Plain :meth:`~Emitter.emit` then
  **drops** the event, counts it (``dropped_queue_full``) and returns ``None``; the durable
  variants do not count against this bound (each waits for its own commit).
* disk: the spool's outbox holds at most ``max_spool_events`` rows and ``max_spool_bytes``
  bytes (event, signature, jti and a fixed overhead per row; failed rows count too). Beyond
  that, plain events are **dropped** and counted (``dropped_spool_full``), and the durable
  variants raise :class:`SpoolFullError` (before queueing when the spool is known to be full).
  At most ``max_receipts`` verified receipts are kept; the oldest are pruned.

Crash guarantees: an event passed to :meth:`~Emitter.emit_durable` /
:meth:`~Emitter.aemit_durable` that returned is on disk and survives ``SIGKILL`` and power loss
(the commit is fsynced). A plain :meth:`~Emitter.emit` is on disk within the group-commit window
plus the duration of one commit; a ``SIGKILL`` loses at most the events emitted in that last
window. Nothing on disk is lost: the next emitter opened on the same spool delivers it.
:meth:`~Emitter.close` (also run at interpreter exit) commits everything queued.

One emitter per spool file (an exclusive lock, :class:`~client.spool.SpoolLockedError`); in a
pre-forking server give each worker its own spool path and create the emitter after the fork.

Errors (:class:`EmitterError`)::

    EmitterError
    ├── EmitterClosedError    emit after close()
    ├── SpoolFullError        durable emit while the spool is at its bound
    ├── SpoolWriteError       durable emit whose commit failed (disk full, I/O error)
    ├── DurableTimeoutError   durable emit not committed within its timeout (also a TimeoutError)
    └── ReceiptError          an answer of the log that does not verify (verify_result)

``emit`` and the durable variants raise ``TypeError`` / ``ValueError`` for a malformed event
(not a map, a float, an out-of-range integer, a non-text key, ...): those are programming
errors, raised at once on the caller's thread. :class:`client.spool.SpoolError` comes only from
the constructor (the spool cannot be opened or is locked) and the inspection methods.

Metrics: counters and gauges are registered in the ``registry`` passed in (a private
``CollectorRegistry`` when none is), under ``etch_emitter_*``; :meth:`Emitter.stats` returns the
same figures as a value.
"""

from __future__ import annotations

import abc
import asyncio
import atexit
import collections
import contextlib
import email.utils
import json
import logging
import os
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Final

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from client.batchsig import BatchProof, batch_paths, encode_batch_leaf, sign_batch
from client.cbor import CBORError, decode_deterministic, encode_deterministic
from client.spool import (
    Deferral,
    FailedEvent,
    NewEvent,
    Refusal,
    Spool,
    SpooledEvent,
    SpoolError,
    SpoolLock,
    StoredReceipt,
)
from merkle.checkpoint import Checkpoint, open_checkpoint
from merkle.errors import MalformedError, MerkleError
from merkle.hashing import HASH_SIZE, leaf_hash
from merkle.note import (
    KEY_TYPE_ED25519,
    Ed25519Verifier,
    Verifier,
    decode_base64,
    encode_base64,
    parse_private_key,
)
from merkle.receipt import Receipt, format_receipt, parse_receipt
from merkle.tree import verify_inclusion

__all__ = [
    "BATCH_PATH",
    "EVENT_SIGNATURE_CONTEXT",
    "SIGNED_BATCH_PATH",
    "DurableTimeoutError",
    "Emitter",
    "EmitterClosedError",
    "EmitterConfig",
    "EmitterError",
    "EmitterStats",
    "ReceiptError",
    "SpoolFullError",
    "SpoolWriteError",
    "event_signature_message",
    "load_signing_key",
    "parse_retry_after",
    "sign_event",
    "verify_batch_result",
    "verify_result",
]

log = logging.getLogger(__name__)

EVENT_SIGNATURE_CONTEXT: Final = b"etch/event/v1\x00"
"""Domain prefix of the submitter's signature: it signs this followed by the event's CBOR."""
BATCH_PATH: Final = "/v1/events/batch"
"""Where the delivery thread posts batches of signed events, relative to the log URL."""
SIGNED_BATCH_PATH: Final = "/v1/events/signed-batch"
"""Where the delivery thread posts batch-root signed batches, relative to the log URL."""
MAX_EVENT_NESTING: Final = 32
"""Deepest nesting of lists and maps :meth:`Emitter.emit` accepts in an event."""

_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1
_TRANSIENT_EVENT_STATUSES: Final = frozenset({408, 425, 429})


# --------------------------------------------------------------------------- errors


class EmitterError(Exception):
    """Base of the emitter's own errors (see the module docstring for the hierarchy)."""


class EmitterClosedError(EmitterError):
    """The emitter was closed: it accepts no more events."""


class SpoolFullError(EmitterError):
    """A durable emit found the spool at its row or byte bound; the event was not stored."""


class SpoolWriteError(EmitterError):
    """A durable emit's commit to the spool failed (disk full, I/O error); not stored."""


class DurableTimeoutError(EmitterError, TimeoutError):
    """A durable emit was not committed within its timeout (it may still be committed later)."""


class ReceiptError(EmitterError):
    """An answer of the log does not verify: wrong signature, proof, entry or shape."""


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class EmitterConfig:
    """Tuning of an :class:`Emitter`; every default is safe for a production OAuth server.

    Times are in seconds, sizes in bytes. ``commit_interval`` is the group-commit window (the
    most a plain ``emit`` waits in memory); ``commit_batch`` the most events written in one
    transaction; ``batch_size`` / ``max_batch_bytes`` bound one delivery request (the log
    accepts at most 1,000 events and 1 MiB by default); ``max_response_bytes`` bounds the
    answer read. Raises ``ValueError`` for a non-positive value or ``backoff_max <
    backoff_base``.
    """

    commit_interval: float = 0.005
    commit_batch: int = 1000
    max_queue: int = 10_000
    max_spool_events: int = 1_000_000
    max_spool_bytes: int = 512 * 1024 * 1024
    max_receipts: int = 100_000
    batch_size: int = 500
    max_batch_bytes: int = 768 * 1024
    max_response_bytes: int = 64 * 1024 * 1024
    request_timeout: float = 30.0
    backoff_base: float = 0.1
    backoff_max: float = 30.0
    retry_after_max: float = 300.0
    durable_timeout: float = 30.0

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"EmitterConfig.{field.name} must be a positive number")
        if self.backoff_max < self.backoff_base:
            raise ValueError("EmitterConfig.backoff_max must be at least backoff_base")


@dataclass(frozen=True, slots=True)
class EmitterStats:
    """Counters since this emitter started, and the current queue and spool figures.

    ``accepted`` events were taken by ``emit``/``emit_durable``; each then ends as one of
    ``dropped_queue_full`` (never queued), ``dropped_spool_full`` or ``spooled``; spooled ones
    (from this or an earlier run) end as ``delivered`` or ``failed``. ``queued`` are in memory,
    ``pending``/``failed_in_spool`` rows and ``spool_bytes`` bytes on disk. ``requests`` counts
    delivery requests, ``retries`` the transient failures among them, ``receipt_errors`` the
    answers that did not verify. ``last_commit_seconds`` is the duration of the newest spool
    commit; ``last_error`` the newest delivery problem (no secrets, no event contents).
    """

    accepted: int
    dropped_queue_full: int
    dropped_spool_full: int
    spooled: int
    delivered: int
    failed: int
    queued: int
    pending: int
    failed_in_spool: int
    spool_bytes: int
    requests: int
    retries: int
    receipt_errors: int
    last_commit_seconds: float
    last_error: str | None


# --------------------------------------------------------------------------- pure helpers


def event_signature_message(event_cbor: bytes) -> bytes:
    """Return what the submitter signs for an event: ``b"etch/event/v1\\x00" + event_cbor``.

    Requires ``event_cbor`` to be the event's RFC 8949 §4.2.1 deterministic CBOR encoding.
    """
    return EVENT_SIGNATURE_CONTEXT + event_cbor


def sign_event(event: Mapping[str, Any], key: Ed25519PrivateKey) -> tuple[bytes, bytes]:
    """Return ``(deterministic CBOR of event, Ed25519 signature over the signing message)``.

    See :func:`event_signature_message`. Raises client.cbor.CBORError for a value that has no
    deterministic CBOR form.
    """
    data = encode_deterministic(event)
    return data, key.sign(event_signature_message(data))


def load_signing_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Load the submitter's Ed25519 signing key from a file.

    Accepts the signed-note private key line (``PRIVATE+KEY+<name>+<hex id>+<base64>``, as
    ``etch`` writes keys) or a PKCS#8 PEM Ed25519 key. Raises ValueError (never quoting the
    file's contents) if the file holds neither, OSError if it cannot be read.
    """
    raw = Path(path).read_bytes()
    if len(raw) > 16 * 1024:
        raise ValueError(f"{path}: too large to be a signing key")
    text = raw.decode("ascii", errors="replace").strip()
    if text.startswith("PRIVATE+KEY+"):
        try:
            _, seed = parse_private_key(text, KEY_TYPE_ED25519)
        except MalformedError as exc:
            raise ValueError(f"{path}: not a valid Ed25519 private key: {exc}") from None
        return Ed25519PrivateKey.from_private_bytes(seed)
    try:
        key = serialization.load_pem_private_key(raw, password=None)
    except (ValueError, TypeError):
        raise ValueError(f"{path}: neither a PRIVATE+KEY line nor a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: the PEM key is not an Ed25519 key")
    return key


def parse_retry_after(value: str, now: float) -> float | None:
    """Return the delay in seconds a ``Retry-After`` header asks for, or None if it is invalid.

    RFC 9110 §10.2.3: ``delay-seconds`` (ASCII digits only: no sign, no spaces) or an HTTP-date
    (``now`` is the current POSIX time). A date in the past gives 0.
    """
    if value.isascii() and value.isdigit():
        return float(min(int(value), 10**9)) if len(value) <= 12 else 1e9
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def _take(mapping: Mapping[str, Any], name: str, kind: type) -> Any:
    """Return ``mapping[name]`` if it has exactly type ``kind``; raises ReceiptError."""
    value = mapping.get(name)
    if type(value) is not kind:
        raise ReceiptError(f"the log's answer has no valid {name!r}")
    return value


def _b64(mapping: Mapping[str, Any], name: str) -> bytes:
    """Return the strict standard-base64 member ``name`` decoded; raises ReceiptError."""
    try:
        return decode_base64(_take(mapping, name, str), what=name)
    except MalformedError as exc:
        raise ReceiptError(str(exc)) from None


def _check_inclusion(
    value: bytes,
    index: int,
    tree_size: int,
    proof: list[bytes],
    checkpoint: bytes,
    log_verifier: Verifier,
    verified: dict[bytes, Checkpoint] | None,
) -> None:
    """Open ``checkpoint`` with the log's key (once per note when ``verified`` caches them),
    check it is for ``tree_size`` and that ``proof`` includes leaf hash ``value`` at ``index``.

    Raises ReceiptError when any of it fails.
    """
    try:
        parsed = verified.get(checkpoint) if verified is not None else None
        if parsed is None:
            parsed, _, _ = open_checkpoint(checkpoint, log_verifier)
            if verified is not None:
                verified[checkpoint] = parsed
        if parsed.tree_size != tree_size:
            raise ReceiptError(
                f"the checkpoint is for size {parsed.tree_size}, the answer says {tree_size}"
            )
        verify_inclusion(value, index, tree_size, proof, parsed.root_hash)
    except MerkleError as exc:
        raise ReceiptError(f"{type(exc).__name__}: {exc}") from None


def verify_result(
    result: Mapping[str, Any],
    event: bytes,
    signature: bytes,
    log_verifier: Verifier,
    *,
    submitter: str | None = None,
    verified: dict[bytes, Checkpoint] | None = None,
) -> tuple[int, bytes, int, bytes, bytes, bytes, bool]:
    """Verify one result of ``POST /v1/events/batch`` for the event sent; return its parts.

    ``event`` is the deterministic CBOR sent and ``signature`` the raw Ed25519 signature. The
    result must be ``{"index", "leaf_hash", "duplicate", "tree_size", "checkpoint",
    "inclusion_proof", "receipt", "entry"}`` with hashes and the entry in standard base64, and:

    * ``checkpoint`` is a checkpoint note with a valid signature by ``log_verifier`` whose size
      is ``tree_size`` (C2SP tlog-checkpoint, signed-note);
    * ``inclusion_proof`` leads from ``leaf_hash`` at ``index`` to its root (RFC 9162
      §2.1.3.2);
    * ``entry`` hashes to ``leaf_hash`` (RFC 6962 §2.1) and is the deterministic CBOR of a map
      of exactly ``v`` (1), ``event`` (equal to the event sent), ``signature`` (the raw bytes
      sent), ``submitter`` (equal to ``submitter`` when given) and an integer ``log_time``;
    * ``receipt`` is the C2SP tlog-proof of the same index, proof and checkpoint.

    ``verified`` caches checkpoint notes whose signature already verified (one per batch:
    every result of a batch usually shares its checkpoint); pass the same dict for one
    ``log_verifier`` only.

    Returns ``(index, leaf_hash, tree_size, checkpoint note, receipt text, entry, duplicate)``.
    Raises ReceiptError naming the first check that failed.
    """
    index = _take(result, "index", int)
    tree_size = _take(result, "tree_size", int)
    duplicate = _take(result, "duplicate", bool)
    value = _b64(result, "leaf_hash")
    entry = _b64(result, "entry")
    checkpoint = _take(result, "checkpoint", str).encode("utf-8")
    receipt_text = _take(result, "receipt", str).encode("utf-8")
    raw_proof = _take(result, "inclusion_proof", list)
    if len(value) != HASH_SIZE or not 0 <= index < tree_size:
        raise ReceiptError("the log's answer has an invalid leaf hash, index or tree size")
    proof: list[bytes] = []
    for item in raw_proof:
        if type(item) is not str:
            raise ReceiptError("the inclusion proof holds a value that is not a hash")
        try:
            proof.append(decode_base64(item, what="inclusion proof hash"))
        except MalformedError as exc:
            raise ReceiptError(str(exc)) from None
    if leaf_hash(entry) != value:
        raise ReceiptError("the entry does not hash to the leaf hash")
    _check_entry(entry, event, signature, submitter)
    _check_inclusion(value, index, tree_size, proof, checkpoint, log_verifier, verified)
    try:
        receipt = parse_receipt(receipt_text)
    except MerkleError as exc:
        raise ReceiptError(f"{type(exc).__name__}: {exc}") from None
    if (receipt.index, receipt.proof, receipt.checkpoint) != (index, tuple(proof), checkpoint):
        raise ReceiptError("the receipt does not match the index, proof and checkpoint")
    return index, value, tree_size, checkpoint, receipt_text, entry, duplicate


_LEAF_KEYS: Final = frozenset({"v", "submitter", "event", "signature", "log_time"})


def _check_entry(entry: bytes, event: bytes, signature: bytes, submitter: str | None) -> None:
    """Check that the event leaf ``entry`` wraps exactly ``event`` and ``signature``.

    The leaf is ``{"v": 1, "submitter", "event", "signature", "log_time"}`` (server.leaves).
    """
    try:
        leaf = decode_deterministic(entry)
    except CBORError as exc:
        raise ReceiptError(f"the entry is not deterministic CBOR: {exc}") from None
    if not isinstance(leaf, dict) or frozenset(leaf) != _LEAF_KEYS:
        raise ReceiptError("the entry is not an event leaf")
    if type(leaf["v"]) is not int or leaf["v"] != 1:
        raise ReceiptError("the entry is not a version 1 leaf")
    if type(leaf["log_time"]) is not int or type(leaf["submitter"]) is not str:
        raise ReceiptError("the entry has no valid log time or submitter")
    if submitter is not None and leaf["submitter"] != submitter:
        raise ReceiptError("the entry names another submitter")
    if encode_deterministic(leaf["event"]) != event:
        raise ReceiptError("the entry holds another event than the one sent")
    if leaf["signature"] != signature:
        raise ReceiptError("the entry holds another signature than the one sent")


def verify_batch_result(
    result: Mapping[str, Any],
    checkpoints: Sequence[Any],
    event: bytes,
    proof: BatchProof,
    submitter: str,
    log_verifier: Verifier,
    *,
    verified: dict[bytes, Checkpoint] | None = None,
) -> tuple[int, bytes, int, bytes, bytes, bytes, bool]:
    """Verify one result of ``POST /v1/events/signed-batch`` for an event sent; return its parts.

    ``event`` is the deterministic CBOR sent, ``proof`` its index, path and batch signature,
    ``submitter`` the name the batch signature carries, ``checkpoints`` the answer's list of
    checkpoint notes. The result must be ``{"index", "leaf_hash", "duplicate", "tree_size",
    "checkpoint" (a position in checkpoints), "inclusion_proof"}`` plus ``log_time`` for a new
    entry or ``entry`` (standard base64) for a duplicate, and:

    * a new entry: the batch event leaf rebuilt from ``submitter``, ``event``, ``proof`` and
      ``log_time`` (:func:`client.batchsig.encode_batch_leaf`) hashes to ``leaf_hash``;
    * a duplicate: ``entry`` hashes to ``leaf_hash`` and is an event leaf (either kind) of
      ``submitter`` holding exactly ``event``;
    * the checkpoint carries a valid signature by ``log_verifier`` for ``tree_size``, and the
      inclusion proof leads from ``leaf_hash`` at ``index`` to its root (RFC 9162 §2.1.3.2).

    Returns ``(index, leaf_hash, tree_size, checkpoint note, receipt text, entry, duplicate)``,
    the receipt being the C2SP tlog-proof of the index, proof and checkpoint.
    Raises ReceiptError naming the first check that failed.
    """
    index = _take(result, "index", int)
    tree_size = _take(result, "tree_size", int)
    duplicate = _take(result, "duplicate", bool)
    position = _take(result, "checkpoint", int)
    value = _b64(result, "leaf_hash")
    raw_proof = _take(result, "inclusion_proof", list)
    if not 0 <= position < len(checkpoints) or type(checkpoints[position]) is not str:
        raise ReceiptError("the result names no checkpoint of the answer")
    checkpoint = checkpoints[position].encode("utf-8")
    if len(value) != HASH_SIZE or not 0 <= index < tree_size:
        raise ReceiptError("the log's answer has an invalid leaf hash, index or tree size")
    hashes: list[bytes] = []
    for item in raw_proof:
        if type(item) is not str:
            raise ReceiptError("the inclusion proof holds a value that is not a hash")
        try:
            hashes.append(decode_base64(item, what="inclusion proof hash"))
        except MalformedError as exc:
            raise ReceiptError(str(exc)) from None
    if duplicate:
        entry = _b64(result, "entry")
        if leaf_hash(entry) != value:
            raise ReceiptError("the entry does not hash to the leaf hash")
        _check_stored(entry, event, submitter)
    else:
        log_time = _take(result, "log_time", int)
        if not 0 <= log_time <= _INT_MAX:
            raise ReceiptError("the log's answer has an invalid log time")
        entry = encode_batch_leaf(submitter, event, proof, log_time)
        if leaf_hash(entry) != value:
            raise ReceiptError("the logged leaf is not the event, index, path and signature sent")
    _check_inclusion(value, index, tree_size, hashes, checkpoint, log_verifier, verified)
    receipt = format_receipt(Receipt(index, tuple(hashes), checkpoint))
    return index, value, tree_size, checkpoint, receipt, entry, duplicate


_BATCH_LEAF_KEYS: Final = frozenset({"v", "submitter", "event", "batch", "log_time"})


def _check_stored(entry: bytes, event: bytes, submitter: str) -> None:
    """Check that a stored event leaf (per-event or batch) of ``submitter`` holds ``event``."""
    try:
        leaf = decode_deterministic(entry)
    except CBORError as exc:
        raise ReceiptError(f"the entry is not deterministic CBOR: {exc}") from None
    if not isinstance(leaf, dict) or frozenset(leaf) not in (_LEAF_KEYS, _BATCH_LEAF_KEYS):
        raise ReceiptError("the entry is not an event leaf")
    if type(leaf["v"]) is not int or leaf["v"] != 1:
        raise ReceiptError("the entry is not a version 1 leaf")
    if leaf["submitter"] != submitter:
        raise ReceiptError("the entry names another submitter")
    if encode_deterministic(leaf["event"]) != event:
        raise ReceiptError("the entry holds another event than the one sent")


def _snapshot(value: object, depth: int) -> object:
    """Return a private deep copy of an event value, checking its types and ranges.

    Plain ``str``, ``int``, ``bool`` and ``None`` inside maps and lists take the fast path in
    :func:`_copy_map` / :func:`_copy_list`; this handles containers and subclasses.

    Raises TypeError for a type an event cannot hold (floats, bytes, objects, non-text keys),
    ValueError for integers outside ``[-2**63, 2**64 - 1]``, lone surrogates and nesting
    deeper than :data:`MAX_EVENT_NESTING`.
    """
    kind = type(value)
    if kind is list or kind is tuple or kind is dict:
        if depth >= MAX_EVENT_NESTING:
            raise ValueError(f"an event is nested deeper than {MAX_EVENT_NESTING} levels")
        if kind is dict:
            return _copy_map(value, depth)  # type: ignore[arg-type]
        return _copy_list(value, depth)  # type: ignore[arg-type]
    if isinstance(value, str):
        if not value.isascii():
            _check_unicode(value)
        return value[:]  # a plain str for a subclass (StrEnum)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        _check_int(value)
        return int(value)
    if isinstance(value, Mapping):
        return _snapshot(dict(value), depth)
    if isinstance(value, list | tuple):
        return _snapshot(list(value), depth)
    raise TypeError(f"an event cannot hold a value of type {kind.__name__}")


def _check_int(value: int) -> None:
    """Raise ValueError for an integer outside the event range ``[-2**63, 2**64 - 1]``."""
    if not _INT_MIN <= value <= _INT_MAX:
        raise ValueError("an event integer is outside [-2**63, 2**64 - 1]")


def _copy_map(value: Mapping[Any, Any], depth: int) -> dict[str, object]:
    """Copy one map of an event at nesting ``depth`` (see :func:`_snapshot`)."""
    copy: dict[str, object] = {}
    for key, item in value.items():
        if type(key) is not str:
            if not isinstance(key, str):
                raise TypeError("event map keys must be text strings")
            key = key[:]
        kind = type(item)
        if kind is str:
            if not item.isascii():
                _check_unicode(item)
        elif kind is int:
            if not _INT_MIN <= item <= _INT_MAX:
                _check_int(item)
        elif kind is not bool and item is not None:
            item = _snapshot(item, depth + 1)
        copy[key] = item
    return copy


def _copy_list(value: Sequence[Any], depth: int) -> list[object]:
    """Copy one list of an event at nesting ``depth`` (see :func:`_snapshot`)."""
    copy: list[object] = []
    for item in value:
        kind = type(item)
        if kind is str:
            if not item.isascii():
                _check_unicode(item)
        elif kind is int:
            if not _INT_MIN <= item <= _INT_MAX:
                _check_int(item)
        elif kind is not bool and item is not None:
            item = _snapshot(item, depth + 1)
        copy.append(item)
    return copy


def _check_unicode(text: str) -> None:
    """Raise ValueError if ``text`` holds a lone surrogate (it has no UTF-8 form)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("an event text string holds a lone surrogate") from None


def _now_ms() -> int:
    """Return the current POSIX time in milliseconds."""
    return time.time_ns() // 1_000_000


# --------------------------------------------------------------------------- waiters


class _Waiter(abc.ABC):
    """Completion of one durable emit: resolved by the writer thread exactly once."""

    __slots__ = ()

    @abc.abstractmethod
    def resolve(self, error: EmitterError | None) -> None:
        """Report the commit (``error`` None) or why the event was not stored."""


class _ThreadWaiter(_Waiter):
    """A waiter for a thread blocked in :meth:`Emitter.emit_durable`."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: EmitterError | None = None

    def resolve(self, error: EmitterError | None) -> None:
        self.error = error
        self.done.set()


class _LoopWaiter(_Waiter):
    """A waiter for a coroutine awaiting :meth:`Emitter.aemit_durable` on ``loop``."""

    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> None:
        self.loop = loop
        self.future = future

    def resolve(self, error: EmitterError | None) -> None:
        # A closed loop raises RuntimeError: nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(_settle_future, self.future, error)


def _settle_future(future: asyncio.Future[None], error: EmitterError | None) -> None:
    """Complete ``future`` on its own loop unless it was cancelled (timed out)."""
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


# --------------------------------------------------------------------------- metrics


class _StatsCollector(Collector):
    """Exposes :meth:`Emitter.stats` as ``etch_emitter_*`` Prometheus metrics at scrape time."""

    def __init__(self, emitter: Emitter) -> None:
        self._emitter = emitter

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stats = self._emitter.stats()
        events = CounterMetricFamily(
            "etch_emitter_events",
            "Events by outcome since the emitter started.",
            labels=["outcome"],
        )
        for outcome in (
            "accepted", "dropped_queue_full", "dropped_spool_full", "spooled", "delivered",
            "failed",
        ):
            events.add_metric([outcome], getattr(stats, outcome))
        yield events
        yield CounterMetricFamily(
            "etch_emitter_requests", "Delivery requests sent to the log.", value=stats.requests
        )
        yield CounterMetricFamily(
            "etch_emitter_retries",
            "Delivery requests that failed transiently and will be retried.",
            value=stats.retries,
        )
        yield CounterMetricFamily(
            "etch_emitter_receipt_errors",
            "Answers of the log that did not verify.",
            value=stats.receipt_errors,
        )
        yield GaugeMetricFamily(
            "etch_emitter_queue_events", "Events in memory waiting for the writer.",
            value=stats.queued,
        )
        spool = GaugeMetricFamily(
            "etch_emitter_spool_events", "Events in the spool by state.", labels=["state"]
        )
        spool.add_metric(["pending"], stats.pending)
        spool.add_metric(["failed"], stats.failed_in_spool)
        yield spool
        yield GaugeMetricFamily(
            "etch_emitter_spool_bytes", "Bytes counted against the spool bound.",
            value=stats.spool_bytes,
        )

    def describe(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        return iter(())


# --------------------------------------------------------------------------- the emitter

_QueueItem = tuple[dict[str, object], str, _Waiter | None]
"""A queued event: the private copy, its jti, and the durable caller's waiter (or None)."""


class Emitter:
    """Queue, sign, spool and deliver Etch events; see the module docstring.

    ``log_url`` is the log's base URL (``http`` or ``https``), ``credential`` the submitter's
    bearer credential (never logged), ``signing_key`` its Ed25519 key (registered with the log),
    ``spool_path`` the SQLite file (created if new; its directory must exist), ``log_vkey`` the
    log's signed-note verifier key that receipts must verify under. ``issuer`` fills ``iss``
    when an event has none; ``submitter`` (optional) is the name the log must record.
    ``on_receipt`` is called on the delivery thread with each verified receipt (exceptions are
    logged and ignored). ``batch_signing`` (default: on when ``submitter`` is given) signs one
    batch root per delivery request instead of every event (see the module docstring).
    ``transport`` replaces the HTTP transport (tests); ``registry`` receives the metrics.

    Raises SpoolError / SpoolLockedError when the spool cannot be opened or is in use,
    ValueError for a malformed ``log_url`` or ``log_vkey``, or when ``registry`` already holds
    another emitter's metrics (give each emitter its own registry), or for ``batch_signing``
    without ``submitter``.
    """

    def __init__(
        self,
        log_url: str,
        credential: str,
        signing_key: Ed25519PrivateKey,
        spool_path: str | os.PathLike[str],
        *,
        log_vkey: str,
        issuer: str | None = None,
        submitter: str | None = None,
        config: EmitterConfig | None = None,
        registry: CollectorRegistry | None = None,
        on_receipt: Callable[[StoredReceipt], None] | None = None,
        transport: httpx.BaseTransport | None = None,
        batch_signing: bool | None = None,
    ) -> None:
        if batch_signing is None:
            batch_signing = submitter is not None
        if batch_signing and submitter is None:
            raise ValueError("batch signing needs the submitter name the log registered")
        parsed = httpx.URL(log_url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError("log_url must be an http or https URL")
        try:
            self._verifier = Ed25519Verifier.from_vkey(log_vkey)
        except MerkleError as exc:
            raise ValueError(f"log_vkey is not an Ed25519 verifier key: {exc}") from None
        if not isinstance(signing_key, Ed25519PrivateKey):
            raise TypeError("signing_key must be an Ed25519PrivateKey")
        self.config = config or EmitterConfig()
        self._log_url = str(log_url).rstrip("/")
        self._credential = credential
        self._key = signing_key
        self._issuer = issuer
        self._submitter = submitter
        self._batch_signing = batch_signing
        self._on_receipt = on_receipt
        self._transport = transport
        self._path = Path(spool_path)

        self._lock_file = SpoolLock(self._path)
        write_lock = threading.Lock()
        try:
            self._writer_spool = Spool(self._path, write_lock)
            self._delivery_spool = Spool(self._path, write_lock)
            self._reader_spool = Spool(self._path, write_lock)
            usage = self._reader_spool.usage()
        except SpoolError:
            self._lock_file.release()
            raise

        self._queue: collections.deque[_QueueItem] = collections.deque()
        self._state = threading.Condition()
        self._reader_lock = threading.Lock()
        self._wake = threading.Event()
        self._deliver_wake = threading.Event()
        self._halt = threading.Event()
        self._writer_idle = False
        self._urgent = False
        self._streak = 0
        self._last_checkpoint = 0.0
        self._closing = False
        self._closed = False

        # Guarded by self._state.
        self._in_writer = 0
        self._taken = 0
        self._dropped_queue_full = 0
        self._dropped_spool_full = 0
        self._spooled = 0
        self._delivered = 0
        self._failed = 0
        self._rows_pending = usage.pending
        self._rows_failed = usage.failed
        self._spool_bytes = usage.size
        self._requests = 0
        self._retries = 0
        self._receipt_errors = 0
        self._last_commit = 0.0
        self._last_error: str | None = None
        self._full_warned = False
        self._queue_full_warned = False

        self.registry = registry if registry is not None else CollectorRegistry()
        self._latency = Histogram(
            "etch_emitter_delivery_seconds",
            "Time from spooling an event to holding its verified receipt.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
            registry=None,
        )
        self._commit_seconds = Histogram(
            "etch_emitter_commit_seconds",
            "Duration of one group commit to the spool.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1),
            registry=None,
        )
        registered: list[Collector] = []
        try:
            collectors: tuple[Collector, ...] = (
                _StatsCollector(self), self._latency, self._commit_seconds
            )
            for collector in collectors:
                self.registry.register(collector)
                registered.append(collector)
        except ValueError:
            # Another emitter's metrics are in this registry: undo, release the spool.
            for collector in registered:
                self.registry.unregister(collector)
            for spool in (self._writer_spool, self._delivery_spool, self._reader_spool):
                spool.close()
            self._lock_file.release()
            raise

        self._writer = threading.Thread(
            target=self._writer_main, name="etch-emitter-writer", daemon=True
        )
        self._delivery = threading.Thread(
            target=self._delivery_main, name="etch-emitter-delivery", daemon=True
        )
        self._writer.start()
        self._delivery.start()
        atexit.register(self._close_at_exit)

    # -- producing -------------------------------------------------------------------------

    def _prepare(self, event: Mapping[str, Any]) -> tuple[dict[str, object], str]:
        """Copy and check ``event``, fill ``iss``, ``jti`` and ``iat`` when missing.

        Returns the copy and its jti.
        """
        if not isinstance(event, Mapping):
            raise TypeError("an event must be a mapping with text keys")
        copy = _copy_map(event, 1)
        jti = copy.get("jti")
        if jti is None:
            jti = copy["jti"] = os.urandom(16).hex()
        elif type(jti) is not str or not jti:
            raise ValueError("an event's jti must be a non-empty text string")
        if "iat" not in copy:
            copy["iat"] = int(time.time())
        if "iss" not in copy:
            if self._issuer is None:
                raise ValueError("the event has no iss and the emitter has no issuer")
            copy["iss"] = self._issuer
        return copy, jti

    def emit(self, event: Mapping[str, Any]) -> str | None:
        """Queue ``event`` for signing, spooling and delivery; return its ``jti``.

        Returns within microseconds: no lock, no I/O. Returns None, counting the drop, when
        ``max_queue`` events are already waiting for the writer. The event is copied; later
        changes to the caller's map do not affect it.

        Raises TypeError / ValueError for a malformed event (a programming error, see the
        module docstring) and EmitterClosedError after :meth:`close`; never for log trouble.
        """
        item, jti = self._prepare(event)
        if self._closing:
            raise EmitterClosedError("the emitter is closed")
        if len(self._queue) >= self.config.max_queue:
            self._drop_queue_full()
            return None
        self._queue.append((item, jti, None))
        if self._writer_idle:
            self._wake.set()
        return jti

    def _drop_queue_full(self) -> None:
        """Count an event dropped because the queue is full; warn once per episode."""
        with self._state:
            self._dropped_queue_full += 1
            first = not self._queue_full_warned
            self._queue_full_warned = True
        if first:
            log.warning("emitter queue full (%d events): dropping events", self.config.max_queue)

    def _enqueue_durable(self, event: Mapping[str, Any], waiter: _Waiter) -> str:
        """Check, queue ``event`` with ``waiter`` and wake the writer; return the jti."""
        item, jti = self._prepare(event)
        if self._closing:
            raise EmitterClosedError("the emitter is closed")
        with self._state:
            full = (
                self._rows_pending + self._rows_failed >= self.config.max_spool_events
                or self._spool_bytes >= self.config.max_spool_bytes
            )
        if full:
            raise SpoolFullError("the spool is at its bound; the event was not stored")
        self._queue.append((item, jti, waiter))
        self._urgent = True
        self._wake.set()
        return jti

    def emit_durable(self, event: Mapping[str, Any], timeout: float | None = None) -> str:
        """Queue ``event`` and return its ``jti`` once it is committed to the spool.

        Waits at most ``timeout`` seconds (default ``config.durable_timeout``). Raises
        TypeError / ValueError for a malformed event, EmitterClosedError, SpoolFullError,
        SpoolWriteError, or DurableTimeoutError (the event may still be committed later).
        """
        waiter = _ThreadWaiter()
        jti = self._enqueue_durable(event, waiter)
        wait = self.config.durable_timeout if timeout is None else timeout
        if not waiter.done.wait(wait):
            raise DurableTimeoutError(f"the event was not committed within {wait} s")
        if waiter.error is not None:
            raise waiter.error
        return jti

    async def aemit_durable(self, event: Mapping[str, Any]) -> str:
        """Async :meth:`emit_durable`: return the ``jti`` once the event is in the spool.

        Does not block the event loop. Waits at most ``config.durable_timeout`` (bound it
        further with ``asyncio.timeout``). Raises what :meth:`emit_durable` raises.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        jti = self._enqueue_durable(event, _LoopWaiter(loop, future))
        wait = self.config.durable_timeout
        try:
            await asyncio.wait_for(future, wait)
        except TimeoutError:
            raise DurableTimeoutError(f"the event was not committed within {wait} s") from None
        return jti

    # -- the writer thread -----------------------------------------------------------------

    def _writer_main(self) -> None:
        """Group-commit queued events to the spool until closed and drained."""
        queue = self._queue
        carry: list[tuple[NewEvent, _Waiter | None]] = []
        while True:
            if not queue and not carry:
                if self._closing:
                    break
                self._writer_idle = True
                if not queue and not self._closing:
                    self._wake.wait(1.0)
                self._writer_idle = False
                self._wake.clear()
                continue
            if not self._urgent and not self._closing and len(queue) < self.config.commit_batch:
                self._wake.wait(self.config.commit_interval)
                self._wake.clear()
            self._urgent = False
            try:
                carry = self._commit_group(carry)
            except Exception:
                # A bug must not stop the writer: later events still need it.
                log.exception("emitter writer: unexpected error; the group in hand is lost")
                carry = []
                with self._state:
                    self._in_writer = 0
                    self._state.notify_all()
            if carry:
                if self._closing and self._halt.is_set():
                    log.error("emitter closing: %d events could not be written", len(carry))
                    break
                self._halt.wait(min(1.0, self.config.backoff_base * 4))

    def _commit_group(
        self, carry: list[tuple[NewEvent, _Waiter | None]]
    ) -> list[tuple[NewEvent, _Waiter | None]]:
        """Sign and write one group (``carry`` first); return what must be written again."""
        queue = self._queue
        count = min(len(queue), self.config.commit_batch)
        with self._state:
            self._in_writer = count + len(carry)
        now_ms = _now_ms()
        rows = list(carry)
        dropped: list[_Waiter | None] = []
        with self._state:
            space_rows = self.config.max_spool_events - self._rows_pending - self._rows_failed
            space_bytes = self.config.max_spool_bytes - self._spool_bytes
        space_rows -= len(carry)
        space_bytes -= sum(row.size for row, _ in carry)
        for _ in range(count):
            event, jti, waiter = queue.popleft()
            if self._batch_signing:
                # Signed at delivery, one signature per batch (client.batchsig).
                data, signature = encode_deterministic(event), b""  # type: ignore[arg-type]
            else:
                data, signature = sign_event(event, self._key)
            row = NewEvent(jti, data, signature, now_ms)
            if space_rows < 1 or space_bytes < row.size:
                dropped.append(waiter)
                continue
            space_rows -= 1
            space_bytes -= row.size
            rows.append((row, waiter))
        with self._state:
            self._taken += count
            if not queue:
                self._queue_full_warned = False
        if dropped:
            self._refuse_full(dropped)
        if not rows:
            with self._state:
                self._in_writer = 0
                self._state.notify_all()
            return []
        start = time.perf_counter()
        try:
            self._writer_spool.append([row for row, _ in rows])
        except SpoolError as exc:
            return self._commit_failed(rows, exc)
        elapsed = time.perf_counter() - start
        self._commit_seconds.observe(elapsed)
        with self._state:
            self._in_writer = 0
            self._spooled += len(rows)
            self._rows_pending += len(rows)
            self._spool_bytes += sum(row.size for row, _ in rows)
            self._last_commit = elapsed
            if self._spool_bytes < self.config.max_spool_bytes:
                self._full_warned = False
            self._state.notify_all()
        for _, waiter in rows:
            if waiter is not None:
                waiter.resolve(None)
        self._deliver_wake.set()
        return []

    def _refuse_full(self, waiters: Sequence[_Waiter | None]) -> None:
        """Drop events that do not fit in the spool: count them, fail durable waiters."""
        with self._state:
            self._dropped_spool_full += len(waiters)
            warn = not self._full_warned
            self._full_warned = True
        if warn:
            log.warning("emitter spool full: dropping events until the log takes some")
        for waiter in waiters:
            if waiter is not None:
                waiter.resolve(SpoolFullError("the spool is at its bound; event not stored"))

    def _commit_failed(
        self, rows: list[tuple[NewEvent, _Waiter | None]], exc: SpoolError
    ) -> list[tuple[NewEvent, _Waiter | None]]:
        """Handle a failed commit: fail durable waiters, keep plain events to write again."""
        log.error("emitter spool commit failed: %s", exc)
        keep: list[tuple[NewEvent, _Waiter | None]] = [
            (row, None) for row, waiter in rows if waiter is None
        ]
        limit = self.config.max_queue
        lost = len(keep) - limit if len(keep) > limit else 0
        with self._state:
            self._last_error = f"spool commit failed: {exc}"
            self._dropped_spool_full += lost
            self._in_writer = len(keep) - lost
        for _, waiter in rows:
            if waiter is not None:
                waiter.resolve(SpoolWriteError(f"the spool commit failed: {exc}"))
        return keep[lost:]

    # -- the delivery thread -----------------------------------------------------------------

    def _delivery_main(self) -> None:
        """Send spooled events to the log and settle their outcomes until halted."""
        rng = random.Random(secrets.randbits(64))
        failures = 0
        batch_limit = self.config.batch_size
        headers = {
            "Authorization": f"Bearer {self._credential}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": "etch-emitter/1",
        }
        client = httpx.Client(
            base_url=self._log_url,
            headers=headers,
            timeout=self.config.request_timeout,
            transport=self._transport,
            follow_redirects=False,
        )
        spool = self._delivery_spool
        try:
            while not self._halt.is_set():
                try:
                    rows = spool.due(batch_limit, _now_ms())
                except SpoolError as exc:
                    self._note_error(f"spool read failed: {exc}")
                    self._halt.wait(1.0)
                    continue
                self._checkpoint(spool)
                if not rows:
                    self._idle_wait(spool)
                    continue
                try:
                    delay, batch_limit = self._deliver(client, spool, rows, batch_limit)
                except Exception:
                    # A bug must not stop delivery: the events stay spooled; try again later.
                    log.exception("emitter delivery: unexpected error")
                    delay = 0.0
                if delay is None:
                    failures = self._streak = 0
                    continue
                failures = self._streak = failures + 1
                backoff = min(
                    self.config.backoff_max, self.config.backoff_base * 2 ** min(failures - 1, 30)
                )
                asked = min(delay, self.config.retry_after_max)
                self._halt.wait(max(rng.uniform(backoff / 2, backoff), asked))
        finally:
            client.close()
            spool.close()

    def _checkpoint(self, spool: Spool) -> None:
        """Checkpoint the spool's WAL at most once a second (off the writer's commit path)."""
        now = time.monotonic()
        if now - self._last_checkpoint < 1.0:
            return
        self._last_checkpoint = now
        try:
            spool.checkpoint()
        except SpoolError as exc:
            log.debug("emitter: %s", exc)

    def _idle_wait(self, spool: Spool) -> None:
        """Sleep until the writer commits something or the next deferred row is due."""
        try:
            due = spool.next_due_ms()
        except SpoolError:
            due = None
        timeout = 1.0 if due is None else min(1.0, max(0.001, (due - _now_ms()) / 1000))
        self._deliver_wake.wait(timeout)
        self._deliver_wake.clear()

    def _note_error(self, message: str, level: int = logging.WARNING) -> None:
        """Remember the newest delivery problem and log it at ``level``."""
        with self._state:
            self._last_error = message
        log.log(level, "emitter: %s", message)

    def _body(self, rows: Sequence[SpooledEvent]) -> tuple[bytes, int]:
        """Return the JSON batch body for a prefix of ``rows`` and how many it holds."""
        parts: list[bytes] = []
        size = 2
        for row in rows:
            envelope = {
                "event": decode_deterministic(row.event),
                "signature": encode_base64(row.signature),
            }
            part = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
            if parts and size + len(part) + 1 > self.config.max_batch_bytes:
                break
            parts.append(part)
            size += len(part) + 1
        return b"[" + b",".join(parts) + b"]", len(parts)

    def _signed_body(
        self, rows: Sequence[SpooledEvent]
    ) -> tuple[bytes, int, list[BatchProof]]:
        """Return the signed-batch body for a prefix of ``rows``, how many it holds, and each
        event's proof (one signature over the batch root, :mod:`client.batchsig`)."""
        assert self._submitter is not None
        parts: list[bytes] = []
        size = 256  # size, root, signature and the brackets
        for index, row in enumerate(rows):
            event = json.dumps(
                decode_deterministic(row.event), separators=(",", ":"), ensure_ascii=False
            ).encode("utf-8")
            part = b'{"index":%d,"event":%s}' % (index, event)
            if parts and size + len(part) + 1 > self.config.max_batch_bytes:
                break
            parts.append(part)
            size += len(part) + 1
        encodings = [row.event for row in rows[: len(parts)]]
        root, paths = batch_paths(encodings)
        signature = sign_batch(self._submitter, self._key, root, len(parts))
        proofs = [BatchProof(len(parts), i, path, signature) for i, path in enumerate(paths)]
        head = b'{"size":%d,"root":"%s","signature":"%s","events":[' % (
            len(parts),
            encode_base64(root).encode("ascii"),
            encode_base64(signature).encode("ascii"),
        )
        return head + b",".join(parts) + b"]}", len(parts), proofs

    def _with_signatures(self, rows: list[SpooledEvent]) -> list[SpooledEvent]:
        """Sign the rows spooled unsigned (for batch signing) one by one, for BATCH_PATH."""
        return [
            row if row.signature else replace(
                row, signature=self._key.sign(event_signature_message(row.event))
            )
            for row in rows
        ]

    def _post(
        self, client: httpx.Client, body: bytes, path: str = BATCH_PATH
    ) -> tuple[int, httpx.Headers, bytes]:
        """POST one batch; return status, headers and body (bounded). Raises httpx errors."""
        with client.stream("POST", path, content=body) as response:
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > self.config.max_response_bytes:
                    raise httpx.DecodingError("the log's answer is larger than the limit")
                chunks.append(chunk)
            return response.status_code, response.headers, b"".join(chunks)

    def _deliver(
        self, client: httpx.Client, spool: Spool, rows: list[SpooledEvent], batch_limit: int
    ) -> tuple[float | None, int]:
        """Send one batch and settle it; return (retry delay or None, next batch limit)."""
        proofs: list[BatchProof] | None = None
        if self._batch_signing:
            body, count, proofs = self._signed_body(rows)
            path = SIGNED_BATCH_PATH
        else:
            rows = self._with_signatures(rows)
            body, count = self._body(rows)
            path = BATCH_PATH
        rows = rows[:count]
        with self._state:
            self._requests += 1
        try:
            status, headers, content = self._post(client, body, path)
        except httpx.HTTPError as exc:
            self._transient(f"cannot reach the log: {type(exc).__name__}")
            return 0.0, batch_limit
        if status == 200:
            if self._streak:
                log.info("emitter: the log takes events again after %d failures", self._streak)
            try:
                answer = json.loads(content)
                results = answer["results"]
                checkpoints = answer["checkpoints"] if proofs is not None else []
            except (ValueError, KeyError, TypeError):
                results = checkpoints = None
            if (
                not isinstance(results, list)
                or len(results) != len(rows)
                or not isinstance(checkpoints, list)
            ):
                self._transient("the log's answer is not a results list for the batch")
                return 0.0, batch_limit
            self._settle(spool, rows, results, proofs, checkpoints)
            return None, min(self.config.batch_size, batch_limit * 2)
        if proofs is not None and status in (404, 405):
            self._batch_signing = False
            self._note_error(
                f"the log answered {status} to {SIGNED_BATCH_PATH}: signing events one by one"
            )
            return 0.0, batch_limit
        retry_after = parse_retry_after(headers.get("retry-after", ""), time.time())
        if status in (408, 425, 429) or status >= 500 or status in (401, 403, 404, 405):
            self._transient(f"the log answered {status} to a batch")
            return retry_after or 0.0, batch_limit
        if len(rows) > 1:
            self._note_error(f"the log answered {status} to a batch of {len(rows)}; splitting it")
            return None, max(1, len(rows) // 2)
        self._settle_refused(spool, rows[0], status, content)
        return None, batch_limit

    def _transient(self, message: str) -> None:
        """Count a transient delivery failure (the batch will be retried)."""
        with self._state:
            self._retries += 1
        # The first failure of a streak is a warning; the retries that follow are debug noise.
        self._note_error(message, logging.WARNING if self._streak == 0 else logging.DEBUG)

    def _settle_refused(self, spool: Spool, row: SpooledEvent, status: int, content: bytes) -> None:
        """Record a single event refused as a whole request (e.g. 413) as failed."""
        problem: object
        try:
            problem = json.loads(content)
        except ValueError:
            problem = {}
        refusal = _refusal(row.seq, status, problem if isinstance(problem, dict) else {})
        self._apply(spool, [], [refusal], [], [row])

    def _settle(
        self,
        spool: Spool,
        rows: Sequence[SpooledEvent],
        results: Sequence[Any],
        proofs: Sequence[BatchProof] | None = None,
        checkpoints: Sequence[Any] = (),
    ) -> None:
        """Verify each result, then record deliveries, refusals and deferrals at once.

        ``proofs`` (each row's batch proof) and ``checkpoints`` are given for a signed batch.
        """
        now = _now_ms()
        verified: dict[bytes, Checkpoint] = {}
        delivered: list[StoredReceipt] = []
        refused: list[Refusal] = []
        deferred: list[Deferral] = []
        for position, (row, result) in enumerate(zip(rows, results, strict=True)):
            if isinstance(result, dict) and "leaf_hash" not in result and "status" in result:
                status = result.get("status")
                if type(status) is int and (status in _TRANSIENT_EVENT_STATUSES or status >= 500):
                    deferred.append(Deferral(row.seq, now + self._row_backoff(row), f"{status}"))
                elif type(status) is int and 400 <= status < 500:
                    refused.append(_refusal(row.seq, status, result))
                else:
                    deferred.append(Deferral(row.seq, now + self._row_backoff(row), "bad status"))
                continue
            try:
                if not isinstance(result, dict):
                    raise ReceiptError("a result is not a JSON object")
                if proofs is not None:
                    assert self._submitter is not None
                    index, value, size, note, receipt, entry, duplicate = verify_batch_result(
                        result, checkpoints, row.event, proofs[position], self._submitter,
                        self._verifier, verified=verified,
                    )
                else:
                    index, value, size, note, receipt, entry, duplicate = verify_result(
                        result, row.event, row.signature, self._verifier,
                        submitter=self._submitter, verified=verified,
                    )
            except ReceiptError as exc:
                with self._state:
                    self._receipt_errors += 1
                self._note_error(f"receipt for event {row.jti} did not verify: {exc}")
                deferred.append(
                    Deferral(row.seq, now + self._row_backoff(row), f"receipt error: {exc}")
                )
                continue
            delivered.append(
                StoredReceipt(row.seq, row.jti, index, value, size, note, receipt, entry,
                              duplicate, now)
            )
        self._apply(spool, delivered, refused, deferred, rows)

    def _row_backoff(self, row: SpooledEvent) -> int:
        """Return the delay in ms before retrying one event that failed ``attempts`` times."""
        delay = min(self.config.backoff_max, self.config.backoff_base * 2 ** min(row.attempts, 30))
        return int(random.uniform(delay / 2, delay) * 1000)

    def _apply(
        self,
        spool: Spool,
        delivered: list[StoredReceipt],
        refused: list[Refusal],
        deferred: list[Deferral],
        rows: Sequence[SpooledEvent],
    ) -> None:
        """Write one round's outcomes to the spool, then update counters and callbacks."""
        try:
            spool.settle(delivered, refused, deferred, max_receipts=self.config.max_receipts)
        except SpoolError as exc:
            self._note_error(f"cannot record deliveries in the spool: {exc}")
            return
        by_seq = {row.seq: row for row in rows}
        freed = sum(by_seq[r.seq].size for r in delivered)
        for refusal in refused:
            log.warning(
                "the log refused event %s for good (%d %s)",
                by_seq[refusal.seq].jti, refusal.status, refusal.problem_type,
            )
        with self._state:
            self._delivered += len(delivered)
            self._failed += len(refused)
            self._rows_pending -= len(delivered) + len(refused)
            self._rows_failed += len(refused)
            self._spool_bytes -= freed
            if delivered and self._spool_bytes < self.config.max_spool_bytes:
                self._full_warned = False
            self._state.notify_all()
        for receipt in delivered:
            waited = receipt.delivered_ms - by_seq[receipt.seq].created_ms
            self._latency.observe(max(0.0, waited / 1000))
            if self._on_receipt is not None:
                try:
                    self._on_receipt(receipt)
                except Exception:
                    log.exception("emitter on_receipt callback failed for event %s", receipt.jti)

    # -- flush, close, inspection ----------------------------------------------------------

    def _settled(self) -> bool:
        """Tell whether nothing is queued, being written, or pending delivery (holds _state)."""
        return not self._queue and self._in_writer == 0 and self._rows_pending == 0

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every accepted event is delivered or failed for good; True if so.

        Returns False after ``timeout`` seconds with events still queued or pending (they stay
        in the spool and are delivered later).
        """
        deadline = time.monotonic() + timeout
        self._urgent = True
        self._wake.set()
        self._deliver_wake.set()
        with self._state:
            while not self._settled():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._state.wait(min(remaining, 0.05))
            return True

    async def aflush(self, seconds: float = 10.0) -> bool:
        """Async :meth:`flush` waiting at most ``seconds`` (runs it on a worker thread)."""
        return await asyncio.to_thread(self.flush, seconds)

    def close(self, timeout: float = 10.0) -> bool:
        """Stop accepting events, commit the queue, try to deliver for ``timeout`` seconds.

        Everything queued is written to the spool before this returns (unless the disk fails);
        whatever is not delivered in time stays there for the next emitter on the same spool.
        Returns True if nothing was left undelivered. Idempotent.
        """
        if self._closed:
            return self.stats().pending == 0
        self._closing = True
        self._wake.set()
        deadline = time.monotonic() + timeout
        self._writer.join(max(0.1, timeout))
        if not self._writer.is_alive() and self._queue:
            # Events that raced with close() after the writer's last look: write them here.
            self._commit_group([])
        delivered = self.flush(max(0.0, deadline - time.monotonic()))
        self._halt.set()
        self._deliver_wake.set()
        self._writer.join(1.0)
        self._delivery.join(self.config.request_timeout + 1.0)
        self._closed = True
        if not self._writer.is_alive():
            self._writer_spool.close()
        with self._reader_lock:
            self._reader_spool.close()
        self._lock_file.release()
        atexit.unregister(self._close_at_exit)
        return delivered

    async def aclose(self, seconds: float = 10.0) -> bool:
        """Async :meth:`close` delivering for at most ``seconds`` (runs on a worker thread)."""
        return await asyncio.to_thread(self.close, seconds)

    def _close_at_exit(self) -> None:
        """At interpreter exit: commit the queue and deliver briefly."""
        self.close(timeout=2.0)

    def __enter__(self) -> Emitter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def stats(self) -> EmitterStats:
        """Return the current counters and queue/spool figures (see :class:`EmitterStats`)."""
        queued = len(self._queue)
        with self._state:
            return EmitterStats(
                accepted=self._taken + queued + self._dropped_queue_full,
                dropped_queue_full=self._dropped_queue_full,
                dropped_spool_full=self._dropped_spool_full,
                spooled=self._spooled,
                delivered=self._delivered,
                failed=self._failed,
                queued=queued,
                pending=self._rows_pending,
                failed_in_spool=self._rows_failed,
                spool_bytes=self._spool_bytes,
                requests=self._requests,
                retries=self._retries,
                receipt_errors=self._receipt_errors,
                last_commit_seconds=self._last_commit,
                last_error=self._last_error,
            )

    def _reader(self) -> Spool:
        """Return the inspection connection; raises EmitterClosedError after close."""
        if self._closed:
            raise EmitterClosedError("the emitter is closed")
        return self._reader_spool

    def receipt(self, jti: str) -> StoredReceipt | None:
        """Return the kept verified receipt of the event ``jti``, or None (not yet, or pruned).

        Raises SpoolError, EmitterClosedError.
        """
        with self._reader_lock:
            return self._reader().receipt(jti)

    def receipts(self, after_seq: int = 0, limit: int = 100) -> list[StoredReceipt]:
        """Return up to ``limit`` kept receipts after spool sequence ``after_seq``, in order."""
        with self._reader_lock:
            return self._reader().receipts(after_seq, limit)

    def failed_events(self, limit: int = 100) -> list[FailedEvent]:
        """Return up to ``limit`` events the log refused for good, oldest first."""
        with self._reader_lock:
            return list(self._reader().failed(limit))

    def discard_failed(self, seqs: Sequence[int]) -> int:
        """Delete failed events by spool sequence number; return how many were deleted."""
        with self._reader_lock:
            reader = self._reader()
            deleted = reader.discard_failed(seqs)
            usage = reader.usage()
        with self._state:
            self._rows_failed = usage.failed
            self._spool_bytes = usage.size
        return deleted


def _refusal(seq: int, status: int, problem: Mapping[str, Any]) -> Refusal:
    """Build a Refusal from an RFC 9457 problem object (missing members become empty)."""
    kind = problem.get("type")
    detail = problem.get("detail") or problem.get("title")
    return Refusal(
        seq,
        status,
        kind[:200] if isinstance(kind, str) else "",
        detail[:500] if isinstance(detail, str) else "",
    )
