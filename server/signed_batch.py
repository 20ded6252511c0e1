"""The request body of ``POST /v1/events/signed-batch``: events attributed by one batch signature.

The submitter builds the RFC 6962 tree over the deterministic CBOR encodings of a batch of
events and signs its root once (:mod:`client.batchsig`: message, tree, bounds). It then sends
any subset of that batch (all of it normally; single events again on a retry) as one JSON
object (RFC 8259, UTF-8)::

    {"size": 1000,                        events in the signed batch, 1..MAX_BATCH_SIZE
     "root": "<base64, 32 bytes>",        the batch's RFC 6962 root
     "signature": "<base64, 64 bytes>",   Ed25519 over the batch message (client.batchsig)
     "events": [                          1..max_batch_events items, each index at most once
        {"index": 0,                      position in the batch, 0 <= index < size
         "path": ["<base64, 32 bytes>", ...],   PATH(index, D[size]), exactly its length
         "event": {...}},                 the event whose CBOR is leaf ``index``
        ...]}

A request that holds the *whole* batch (``size`` items, so every index once) may omit
``path`` from every item: the log then rebuilds the tree itself (about two hashes per event
instead of a path to decode and fold per event) and logs each event with the path it computed.
Either every item has a path or none has; a partial batch must carry them.

Exactly these members, nowhere more; base64 is canonical standard base64 with padding; numbers
are integers (no fractions, exponents, NaN); no member name appears twice in an object.
:func:`parse_signed_batch` checks the shape and the bounds; whether the event is valid and the
path leads to the signed root is checked by the OAuth layer (:mod:`server.ingest`).

A malformed body raises :class:`SignedBatchError` (the whole request is refused); a malformed
item is returned in its place as a :class:`SignedBatchError` (that event only is refused).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Final

from client.batchsig import MAX_BATCH_SIZE, path_length
from server.codec import Value

__all__ = [
    "BatchHeader",
    "BatchItem",
    "SignedBatchError",
    "parse_signed_batch",
]

_BODY_KEYS: Final = frozenset({"size", "root", "signature", "events"})
_ITEM_KEYS: Final = frozenset({"index", "path", "event"})
_ITEM_KEYS_NO_PATH: Final = frozenset({"index", "event"})
_HASH_B64_SIZE: Final = 44
_SIGNATURE_B64_SIZE: Final = 88


class SignedBatchError(ValueError):
    """A signed batch (or one of its items) was refused: problem slug, detail, JSON pointer."""

    def __init__(self, slug: str, detail: str, pointer: str) -> None:
        super().__init__(f"{detail} (at {pointer!r})")
        self.slug = slug
        self.detail = detail
        self.pointer = pointer


@dataclass(frozen=True, slots=True)
class BatchHeader:
    """The signed part of a batch: its size, root and the submitter's signature."""

    size: int
    root: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One event of the request: its index in the batch, its path, and the decoded event."""

    index: int
    path: tuple[bytes, ...] | None
    event: dict[str, Value]


class _Duplicate(Exception):  # noqa: N818 (a parse signal, caught below)
    """A JSON object repeats a member name."""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _Duplicate
    return result


def _no_float(text: str) -> Any:
    raise ValueError("float")


_DECODER: Final = json.JSONDecoder(
    object_pairs_hook=_object, parse_float=_no_float, parse_constant=_no_float
)


def _b64(value: object, size: int, encoded: int, what: str, pointer: str, slug: str) -> bytes:
    """Decode canonical standard base64 of exactly ``size`` bytes. Raises SignedBatchError."""
    if type(value) is not str or len(value) != encoded:
        raise SignedBatchError(slug, f"{what} must be {size} bytes in standard base64", pointer)
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != size or base64.b64encode(raw).decode("ascii") != value:
        raise SignedBatchError(slug, f"{what} must be {size} bytes in canonical base64", pointer)
    return raw


_CANONICAL_LAST: Final = frozenset("AEIMQUYcgkosw048")
"""Characters that may stand before the ``=`` of canonical base64 of 32 bytes (low bits 0)."""


def _hash(value: object, pointer: str) -> bytes:
    """Decode one path hash: canonical standard base64 of 32 bytes. Raises SignedBatchError.

    The fast form of :func:`_b64`: 44 characters ending in one ``=``, the one before it
    leaving no unused bits set (so the text is the only encoding of its bytes), then a strict
    C-level decode.
    """
    if (
        type(value) is str
        and len(value) == _HASH_B64_SIZE
        and value[43] == "="
        and value[42] in _CANONICAL_LAST
    ):
        try:
            raw = binascii.a2b_base64(value, strict_mode=True)
        except binascii.Error:
            raw = b""
        if len(raw) == 32:
            return raw
    raise SignedBatchError(
        "bad-signature", "a path hash must be 32 bytes in canonical base64", pointer
    )


def _item(
    value: object, size: int, position: int, seen: set[int], with_path: bool
) -> BatchItem:
    """Check one element of ``events``. Raises SignedBatchError (pointer into the request)."""
    at = f"/events/{position}"
    if not isinstance(value, dict) or frozenset(value) != (
        _ITEM_KEYS if with_path else _ITEM_KEYS_NO_PATH
    ):
        raise SignedBatchError(
            "bad-event",
            "an item holds exactly index, path and event (path only may be left out, from"
            " every item of a request holding the whole batch)",
            at,
        )
    index = value["index"]
    if type(index) is not int or not 0 <= index < size:
        raise SignedBatchError(
            "bad-signature", "index must be an integer in [0, size)", f"{at}/index"
        )
    if index in seen:
        raise SignedBatchError("bad-event", "this index appears twice in this request", at)
    event = value["event"]
    if not isinstance(event, dict):
        raise SignedBatchError("bad-event", "the event must be a map", f"{at}/event")
    if not with_path:
        seen.add(index)
        return BatchItem(index, None, event)
    raw_path = value["path"]
    want = path_length(index, size)
    if not isinstance(raw_path, list) or len(raw_path) != want:
        raise SignedBatchError(
            "bad-signature",
            f"path must be a list of exactly {want} hashes for this index and size",
            f"{at}/path",
        )
    path = tuple([_hash(node, f"{at}/path") for node in raw_path])
    seen.add(index)
    return BatchItem(index, path, event)


def parse_signed_batch(
    body: bytes, max_events: int
) -> tuple[BatchHeader, list[BatchItem | SignedBatchError]]:
    """Parse a signed batch request body (see the module docstring).

    Requires the body to be bounded already (the caller reads at most the batch byte limit).
    Returns the header and, in request order, each item or the error refusing it; items have
    ``path`` None exactly when the request holds the whole batch and no item has a path.
    Raises SignedBatchError for the whole body: bad-json (not UTF-8 JSON, floats, repeated
    members, nesting too deep), bad-event (not the object of the module docstring, no or too
    many events), bad-signature (size, root or signature malformed).
    """
    try:
        value = _DECODER.decode(body.decode("utf-8"))
    except _Duplicate:
        raise SignedBatchError("bad-json", "an object repeats a member name", "/") from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise SignedBatchError(
            "bad-json", "the body is not UTF-8 JSON with integer numbers only", "/"
        ) from None
    if not isinstance(value, dict) or frozenset(value) != _BODY_KEYS:
        raise SignedBatchError(
            "bad-event", "a signed batch holds exactly size, root, signature and events", "/"
        )
    size = value["size"]
    if type(size) is not int or not 1 <= size <= MAX_BATCH_SIZE:
        raise SignedBatchError(
            "bad-signature", f"size must be an integer in [1, {MAX_BATCH_SIZE}]", "/size"
        )
    root = _b64(value["root"], 32, _HASH_B64_SIZE, "root", "/root", "bad-signature")
    signature = _b64(
        value["signature"], 64, _SIGNATURE_B64_SIZE, "signature", "/signature", "bad-signature"
    )
    events = value["events"]
    if not isinstance(events, list) or not 1 <= len(events) <= min(max_events, size):
        raise SignedBatchError(
            "bad-event",
            f"events must hold 1 to min(size, {max_events}) items",
            "/events",
        )
    with_path = not (
        len(events) == size and all(isinstance(e, dict) and "path" not in e for e in events)
    )
    seen: set[int] = set()
    items: list[BatchItem | SignedBatchError] = []
    for position, element in enumerate(events):
        try:
            items.append(_item(element, size, position, seen, with_path))
        except SignedBatchError as error:
            items.append(error)
    return BatchHeader(size, root, signature), items
