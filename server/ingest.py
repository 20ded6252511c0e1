"""The OAuth layer: authenticated, signed event submissions, SET intake, lookups, read access.

This turns the log engine (:mod:`server.app`, which logs any bounded map) into an OAuth audit
log. :func:`create_oauth_app` is what ``etch serve`` runs.

Submissions (``POST /v1/events``, ``POST /v1/events/batch``)
    ``Authorization: Bearer <credential>`` of an active submitter (401 without or unknown, 403
    for a revoked submitter or a reader's credential); then the per-submitter rate limit (429
    with ``Retry-After``). The body is ``{"event": {...}, "signature": "<base64>"}`` (CBOR: the
    signature as 64 bytes); a batch is an array of those. Each event is checked for secrets
    (422 ``forbidden-field``), validated (422 ``bad-event``), and its signature verified with
    the submitter's unexpired Ed25519 keys (422 ``bad-signature``: missing, malformed or not
    verifying; the request is authenticated, the event just cannot be attributed, so this is
    not a 401/403). Only then is it logged (:mod:`server.leaves`), with idempotency key
    ``<submitter> 0x00 <jti>``. The answer adds ``entry``, the exact leaf bytes in base64, so
    the submitter can check that its event is the one logged. Resubmitting the same event
    answers 200 with the original index and receipt; the same ``jti`` with another event
    answers 409 ``jti-conflict`` and logs nothing. This check runs after the sequencer has
    answered (comparing with the stored entry), so it holds for concurrent submissions too.

Batch-signed submissions (``POST /v1/events/signed-batch``)
    The same authentication, rate limit, secret scan and validation, but the events are
    attributed by one signature per batch (:mod:`client.batchsig`, body format in
    :mod:`server.signed_batch`): the submitter signed the RFC 6962 root of its batch of event
    encodings, and each event carries its index and inclusion path. The signature is verified
    once per request with the submitter's unexpired Ed25519 keys (422 ``bad-signature`` for the
    whole request otherwise); each event's path must lead to the signed root (422
    ``bad-signature`` for that event). A request holding the whole batch may leave the paths
    out: the log rebuilds the tree (the whole request is refused if the events do not make the
    signed root) and logs each event with its computed path. Each event is logged as a batch
    event leaf (:mod:`server.leaves`: the event with its index, path and the batch signature),
    so it stays individually attributable offline
    (:func:`client.batchsig.verify_leaf_attribution`). The answer is ``{"checkpoints": [note,
    ...], "results": [...]}``, each result either a problem or ``{"index", "leaf_hash",
    "duplicate", "tree_size", "checkpoint": <position in checkpoints>, "inclusion_proof",
    "log_time"}``; a duplicate carries ``entry`` (the stored leaf, which may attribute the event
    through an earlier signature) instead of ``log_time``. A new entry's leaf is not echoed: the
    submitter rebuilds it from what it sent and ``log_time`` and checks it against
    ``leaf_hash``.

SET intake (``POST /v1/sets``, RFC 8935)
    ``Content-Type: application/secevent+jwt``, the submitter's bearer credential, a compact JWS
    verified with the submitter's registered SET keys (:mod:`server.jose`). 202 Accepted on
    success (also for a retransmission; the body carries the same receipt as a submission);
    otherwise 400 with ``{"err": ..., "description": ...}``: ``authentication_failed`` (no or
    unknown credential), ``access_denied`` (revoked submitter, or not a submitter),
    ``invalid_request`` (not a valid SET: format, header, claims, secrets, a reused ``jti``),
    ``invalid_key`` (unknown, expired or non-matching key), ``invalid_issuer`` (``iss`` not the
    one registered with the key), ``invalid_audience`` (``aud`` names neither this log's origin
    nor its configured SET audience). Rate limiting answers 429, an unavailable log 503.

Lookups (``GET /v1/lookup``)
    Exactly one of ``token_ref``, ``client_id``, ``subject``, ``type``; optional ``since`` and
    ``until`` (log time in POSIX milliseconds, canonical decimal, ``since <= t < until``),
    ``after`` (an index: results come after it, the cursor of the previous page) and ``limit``
    (1 to 1000, default 100). Answers ``{"results": [{"index", "leaf_hash", "log_time"}, ...],
    "next": <cursor or null>}``; with read access each result also has ``entry`` (the leaf
    bytes, base64) and ``event`` (the decoded leaf, as ``GET /v1/entries/<index>`` shows it).
    Token-reference lookups are answered to anyone (only a token's holders can compute its
    reference) unless ``public_token_ref_lookup`` is off; the other kinds need read access.

Read access
    Entry contents (``GET /v1/entries/<index>``, ``GET /tile/entries/...``, lookup contents)
    need a reader's credential unless ``public_entries`` is on. Hashes, checkpoints, proofs and
    receipts are always public.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from client.batchsig import (
    BatchError,
    BatchProof,
    batch_paths,
    root_from_path,
    verify_batch_signature,
)
from client.tokens import is_token_ref
from merkle.checkpoint import parse_decimal
from merkle.errors import MalformedError
from merkle.hashing import leaf_hash
from merkle.tree import MAX_TREE_SIZE
from server.app import create_app, read_body, result_body, unavailable_problem
from server.codec import (
    CodecError,
    Limits,
    Value,
    decode_deterministic,
    decode_json,
    encode_deterministic,
    to_json_compatible,
)
from server.event_schema import envelope_schema, event_schema
from server.events import (
    EventError,
    check_no_secrets,
    event_lookup_keys,
    set_lookup_keys,
    validate_event,
    validate_set_claims,
)
from server.jose import JoseError, verify_compact_jws
from server.leaves import (
    LeafError,
    encode_batch_event_leaf,
    encode_event_leaf,
    encode_set_leaf,
    event_signing_message,
    parse_leaf,
)
from server.log import LogService
from server.openapi import openapi_document
from server.principals import RateLimiter, credential_hash, credential_matches, parse_bearer
from server.problems import Problem
from server.sequencer import Sequenced, SequencerStopped, Submission
from server.signed_batch import BatchHeader, BatchItem, SignedBatchError, parse_signed_batch
from server.storage.base import MAX_TIME_MS, OAuthStorage, Principal, StorageError

__all__ = [
    "MAX_LOOKUP_LIMIT",
    "REF_ANSWERS_MAX",
    "SET_MEDIA_TYPE",
    "SIGNED_BATCH_PATH",
    "OAuthLayer",
    "OAuthSettings",
    "create_oauth_app",
]

log = logging.getLogger(__name__)

SET_MEDIA_TYPE: Final = "application/secevent+jwt"
"""Content type of ``POST /v1/sets`` (RFC 8417 §2.3, RFC 8935 §2.1)."""

SIGNED_BATCH_PATH: Final = "/v1/events/signed-batch"
"""Where batch-signed submissions are posted."""

MAX_LOOKUP_LIMIT: Final = 1000
"""Most results of one lookup page."""

DEFAULT_LOOKUP_LIMIT: Final = 100
"""Results of a lookup page when ``limit`` is not given."""

REF_ANSWERS_MAX: Final = 16384
"""Public token-reference lookup answers kept for the current tree size."""

_REF_QUERY_SIZE: Final = len("token_ref=") + 43

_LOOKUP_KINDS: Final = ("token_ref", "client_id", "subject", "type")
_LOOKUP_PARAMS: Final = frozenset({*_LOOKUP_KINDS, "since", "until", "after", "limit"})
_ENVELOPE_KEYS: Final = frozenset({"event", "signature"})
_SIGNATURE_SIZE: Final = 64
_STATE_KEY: Final = "etch_principal"


@dataclass(frozen=True, slots=True)
class OAuthSettings:
    """What the operator chooses for the OAuth layer (see :mod:`server.config`).

    ``public_entries``: anyone may read entry contents (default: readers only).
    ``public_token_ref_lookup``: anyone may look up by token reference (default: yes).
    ``submitter_rate`` / ``submitter_burst``: each submitter's token bucket, events per second
    and bucket size. ``set_audience``: an ``aud`` value SETs may carry beside the log's origin.
    """

    public_entries: bool = False
    public_token_ref_lookup: bool = True
    submitter_rate: int = 10_000
    submitter_burst: int = 20_000
    set_audience: str | None = None


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return Response(content, status_code=status, media_type="application/json", headers=headers)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class _RefAnswer(Response):
    """A ``200`` public token-reference lookup answer: JSON, not to be stored.

    The same status, headers (in the same order) and body as
    ``Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})``,
    without building the header list from a mapping for each answer.
    """

    media_type = "application/json"

    def __init__(self, body: bytes) -> None:
        self.status_code = 200
        self.background = None
        self.body = body
        self.raw_headers = [
            (b"cache-control", b"no-store"),
            (b"content-length", b"%d" % len(body)),
            (b"content-type", b"application/json"),
        ]


class _PublicRefLookups:
    """ASGI middleware: ``GET /v1/lookup?token_ref=<ref>`` alone, without ``Authorization``,
    answered before routing (the busiest lookup; see ``OAuthLayer._public_ref_answer``).

    The same status, headers and body as the route gives. Everything else, and any such
    lookup that is refused (a malformed reference, storage unavailable), goes on to the app,
    whose route gives the usual answer.
    """

    def __init__(self, app: ASGIApp, layer: OAuthLayer) -> None:
        self.app = app
        self.layer = layer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a public token-reference lookup, or pass the request on."""
        if (
            scope["type"] == "http"
            and scope["method"] == "GET"
            and scope["path"] == "/v1/lookup"
            and not scope.get("root_path")
            and self.layer._public_ref_query(scope["query_string"])
            and all(name != b"authorization" for name, _ in scope["headers"])
        ):
            try:
                body = await self.layer._public_ref_answer(scope["query_string"])
            except Problem:
                pass
            else:
                await _RefAnswer(body)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _SetRefused(Exception):  # noqa: N818 (an answer, like Problem)
    """A SET was refused: RFC 8935 §2.3 error code and description."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description

    def response(self) -> Response:
        return _json({"err": self.code, "description": self.description}, 400)


def _event_submission(
    submitter: str, data: bytes, event: Mapping[str, Any], log_time: int
) -> Submission:
    """The sequencer's submission for an event leaf: deduplicated by (submitter, jti), found
    by the event's lookup keys. Precondition: ``event`` is validated (``jti`` is a string)."""
    jti = event["jti"]
    assert isinstance(jti, str)
    return Submission(
        data,
        leaf_hash(data),
        idempotency_key=f"{submitter}\x00{jti}",
        lookup_keys=event_lookup_keys(event),
        log_time=log_time,
    )


class OAuthLayer:
    """The OAuth layer of one log: an :class:`server.app.Intake` plus its routes and guards."""

    def __init__(
        self,
        service: LogService,
        storage: OAuthStorage,
        settings: OAuthSettings | None = None,
        *,
        limits: Limits | None = None,
    ) -> None:
        self.service = service
        self.storage = storage
        self.settings = settings or OAuthSettings()
        self.limits = limits or Limits()
        self.rate_limiter = RateLimiter(self.settings.submitter_rate, self.settings.submitter_burst)
        # Public answers of plain token-reference lookups, valid for one tree size.
        self._ref_answers: OrderedDict[bytes, bytes] = OrderedDict()
        self._ref_answers_size = -1

    # -- clocks ----------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return self.service.sequencer.clock.now_ms()

    # -- authentication ----------------------------------------------------------------------

    async def _principal(self, request: Request) -> Principal | None:
        """Return the principal of the request's bearer credential, or ``None`` if unknown."""
        credential = parse_bearer(request.headers.get("authorization"))
        if credential is None:
            return None
        found = await self.storage.find_principal(credential_hash(credential))
        if found is None or not credential_matches(credential, found.credential_hash):
            return None
        return found

    async def authenticate(self, request: Request) -> None:
        """Require an active submitter's credential. Raises Problem 401 or 403 (or 503)."""
        try:
            principal = await self._principal(request)
        except StorageError as exc:
            raise unavailable_problem(exc) from None
        if principal is None:
            raise Problem(
                "unauthorized",
                "send Authorization: Bearer <credential> of a registered submitter",
                headers={"WWW-Authenticate": 'Bearer realm="etch", error="invalid_token"'},
            )
        if principal.role != "submitter":
            raise Problem("forbidden", "this credential may not submit events")
        if principal.status != "active":
            raise Problem("forbidden", "this submitter has been revoked")
        request.state.etch_principal = principal

    def _submitter(self, request: Request) -> Principal:
        principal: Principal = getattr(request.state, _STATE_KEY)
        return principal

    async def admit(self, request: Request, count: int) -> None:
        """Take ``count`` events from the submitter's bucket. Raises Problem(rate-limited)."""
        wait = self.rate_limiter.take(self._submitter(request).name, count)
        if wait:
            raise Problem(
                "rate-limited",
                f"this submitter may send {self.settings.submitter_rate} events per second",
                retry_after=wait,
            )

    # -- events ----------------------------------------------------------------------------

    async def prepare(self, request: Request, event: dict[str, Value]) -> Submission:
        """Check one envelope and return its submission (see the module docstring).

        Raises Problem: forbidden-field, bad-event, bad-signature, entry-too-large.
        """
        submitter = self._submitter(request)
        envelope = event
        unknown = [k for k in envelope if k not in _ENVELOPE_KEYS]
        if unknown:
            raise Problem(
                "bad-event",
                "a submission holds exactly event and signature",
                extra={"pointer": "/"},
            )
        body = envelope.get("event")
        if body is None:
            raise Problem("bad-event", "the event is missing", extra={"pointer": "/event"})
        log_time = self._now_ms()
        try:
            check_no_secrets(body, "/event")
            validate_event(body, now=log_time // 1000, pointer="/event")
        except EventError as exc:
            raise Problem(exc.slug, exc.detail, extra={"pointer": exc.pointer}) from None
        assert isinstance(body, dict)
        signature = _signature(envelope.get("signature"))
        event_bytes = encode_deterministic(body)
        _verify_event(submitter, signature, event_signing_message(event_bytes), log_time)
        try:
            data = encode_event_leaf(submitter.name, event_bytes, signature, log_time, self.limits)
        except LeafError as exc:
            raise Problem("entry-too-large", str(exc)) from None
        return _event_submission(submitter.name, data, body, log_time)

    async def finish(
        self, request: Request, submission: Submission, result: Sequenced
    ) -> Mapping[str, Any]:
        """Add the leaf bytes; for a duplicate, refuse a different event (409 jti-conflict)."""
        if not result.duplicate:
            return {"entry": _b64(submission.data)}
        stored = await self._same_event(submission, result)
        if stored is None:
            raise Problem(
                "jti-conflict",
                "this jti was already logged for this submitter with a different event;"
                " nothing was logged",
                extra={"index": result.index},
            )
        return {"entry": _b64(stored), "leaf_hash": _b64(leaf_hash(stored))}

    async def _same_event(self, submission: Submission, result: Sequenced) -> bytes | None:
        """Return the stored leaf if it holds the same event as ``submission``, else ``None``.

        Same event: same submitter, same kind of leaf (event or SET) and equal event maps; the
        log time, and for SETs the JWS (a new signature over the same claims), may differ.
        Raises Problem(unavailable) if the entry cannot be read yet, StorageError.
        """
        meta = await self.service.storage.read_entry_meta(result.index)
        if meta is None:
            raise Problem("unavailable", "the original entry is not readable yet", retry_after=1)
        stored = meta[0]
        if stored == submission.data:
            return stored
        try:
            old, new = parse_leaf(stored), parse_leaf(submission.data)
        except LeafError:
            return None
        # Compared as canonical bytes: Python's == would take true for 1.
        same = (
            old.submitter == new.submitter
            and (old.set is None) == (new.set is None)
            and encode_deterministic(old.event) == encode_deterministic(new.event)
        )
        return stored if same else None

    # -- batch-signed events -----------------------------------------------------------------

    def _event_keys(self, submitter: Principal, now_ms: int) -> list[bytes]:
        """Return the raw Ed25519 event keys of ``submitter`` that have not expired."""
        return [
            key.public_key
            for key in submitter.keys
            if key.usage == "event" and (key.not_after_ms is None or key.not_after_ms >= now_ms)
        ]

    async def submit_signed_batch(self, request: Request) -> Response:
        """``POST /v1/events/signed-batch`` (see the module docstring and
        :mod:`server.signed_batch`).

        Raises Problem for the whole request: 401/403, 415, 413, bad-json, bad-event,
        bad-signature (the batch signature), 429, 503.
        """
        await self.authenticate(request)
        media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media != "application/json":
            raise Problem(
                "unsupported-media-type",
                "send application/json",
                headers={"Accept-Post": "application/json"},
            )
        body = await read_body(request, self.limits.max_batch_bytes)
        metrics = self.service.metrics.submissions
        try:
            header, items = parse_signed_batch(body, self.limits.max_batch_events)
        except SignedBatchError as exc:
            metrics.labels("refused").inc()
            raise Problem(exc.slug, exc.detail, extra={"pointer": exc.pointer}) from None
        await self.admit(request, len(items))
        submitter = self._submitter(request)
        log_time = self._now_ms()
        try:
            verify_batch_signature(
                submitter.name,
                header.size,
                header.root,
                header.signature,
                self._event_keys(submitter, log_time),
            )
        except BatchError:
            metrics.labels("refused").inc(len(items))
            raise Problem(
                "bad-signature",
                "the batch signature does not verify with any current key of this submitter;"
                " nothing was logged",
                extra={"pointer": "/signature"},
            ) from None
        slots: list[int | dict[str, Any]] = []
        submissions: list[Submission] = []
        now = log_time // 1000
        whole = self._whole_batch(header, items)
        for position, item in enumerate(items):
            try:
                if isinstance(item, SignedBatchError):
                    raise Problem(item.slug, item.detail, extra={"pointer": item.pointer})
                computed = None if whole is None else whole[item.index]
                submissions.append(
                    self._batch_submission(
                        submitter, header, item, computed, position, log_time, now
                    )
                )
                slots.append(len(submissions) - 1)
            except Problem as problem:
                slots.append(problem.to_dict())
        refused = len(slots) - len(submissions)
        if refused:
            metrics.labels("refused").inc(refused)
        try:
            results = await self.service.submit(submissions) if submissions else []
            answer = await self._signed_batch_answer(slots, submissions, results)
        except (SequencerStopped, StorageError) as exc:
            raise unavailable_problem(exc) from None
        return Response(answer, media_type="application/json")

    def _whole_batch(
        self, header: BatchHeader, items: list[BatchItem | SignedBatchError]
    ) -> list[tuple[bytes, tuple[bytes, ...]]] | None:
        """For a request holding a whole batch without paths, rebuild the tree.

        Returns each index's (event encoding, path), or ``None`` when the items carry their
        own paths. Raises Problem for the whole request: an item that cannot be read or
        encoded (the tree cannot be rebuilt without it), bad-signature when the events do not
        make the signed root.
        """
        if not any(isinstance(item, BatchItem) and item.path is None for item in items):
            return None
        encodings = [b""] * header.size
        for position, item in enumerate(items):
            if isinstance(item, SignedBatchError):
                raise Problem(item.slug, item.detail, extra={"pointer": item.pointer})
            try:
                encodings[item.index] = encode_deterministic(item.event)
            except (UnicodeError, CodecError, RecursionError):
                raise Problem(
                    "bad-event",
                    "the event cannot be encoded, so the batch tree cannot be rebuilt",
                    extra={"pointer": f"/events/{position}/event"},
                ) from None
        root, paths = batch_paths(encodings)
        if root != header.root:
            raise Problem(
                "bad-signature",
                "these events do not make the signed batch root; nothing was logged",
                extra={"pointer": "/root"},
            )
        return list(zip(encodings, paths, strict=True))

    def _batch_submission(
        self,
        submitter: Principal,
        header: BatchHeader,
        item: BatchItem,
        computed: tuple[bytes, tuple[bytes, ...]] | None,
        position: int,
        log_time: int,
        now: int,
    ) -> Submission:
        """Check one batch item and return its submission.

        ``computed`` is the event's encoding and path when the log rebuilt the batch tree
        (:meth:`_whole_batch`); otherwise the item's own path must lead to the signed root.
        Raises Problem: forbidden-field, bad-event, bad-signature (the path does not lead to
        the signed root), entry-too-large.
        """
        pointer = f"/events/{position}/event"
        event = item.event
        try:
            check_no_secrets(event, pointer)
            validate_event(event, now=now, pointer=pointer)
            event_bytes = encode_deterministic(event) if computed is None else computed[0]
        except EventError as exc:
            raise Problem(exc.slug, exc.detail, extra={"pointer": exc.pointer}) from None
        except (UnicodeError, CodecError, RecursionError):
            raise Problem(
                "bad-event", "the event cannot be encoded", extra={"pointer": pointer}
            ) from None
        if computed is not None:
            path = computed[1]
        else:
            assert item.path is not None
            path = item.path
            try:
                root = root_from_path(event_bytes, item.index, header.size, path)
            except BatchError:
                root = b""
            if root != header.root:
                raise Problem(
                    "bad-signature",
                    "the path does not lead from this event to the signed batch root;"
                    " nothing was logged",
                    extra={"pointer": f"/events/{position}/path"},
                )
        proof = BatchProof(header.size, item.index, path, header.signature)
        try:
            data = encode_batch_event_leaf(
                submitter.name, event_bytes, proof, log_time, self.limits
            )
        except LeafError as exc:
            raise Problem("entry-too-large", str(exc)) from None
        return _event_submission(submitter.name, data, event, log_time)

    async def _signed_batch_answer(
        self,
        slots: list[int | dict[str, Any]],
        submissions: list[Submission],
        results: list[Sequenced],
    ) -> bytes:
        """Return the JSON answer of a signed batch (see the module docstring).

        Duplicates are compared with their stored entry (409 jti-conflict when the event
        differs). Raises StorageError.
        """
        notes: dict[bytes, int] = {}
        out: list[bytes] = []
        b64 = binascii.b2a_base64

        def dump(value: Any) -> bytes:
            text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
            return text.encode("utf-8")

        for slot in slots:
            if not isinstance(slot, int):
                out.append(dump(slot))
                continue
            submission, result = submissions[slot], results[slot]
            position = notes.setdefault(result.checkpoint, len(notes))
            proof = b",".join([b'"%s"' % b64(h, newline=False) for h in result.proof])
            if not result.duplicate:
                # What json.dumps writes for these members (integers and base64 need no
                # escaping), assembled directly: one such result per event.
                out.append(
                    b'{"index":%d,"leaf_hash":"%s","duplicate":false,"tree_size":%d,'
                    b'"checkpoint":%d,"inclusion_proof":[%s],"log_time":%d}'
                    % (
                        result.index,
                        b64(result.leaf_hash, newline=False),
                        result.tree_size,
                        position,
                        proof,
                        submission.log_time,
                    )
                )
                continue
            item: dict[str, Any] = {
                "index": result.index,
                "leaf_hash": _b64(result.leaf_hash),
                "duplicate": True,
                "tree_size": result.tree_size,
                "checkpoint": position,
                "inclusion_proof": [_b64(h) for h in result.proof],
            }
            try:
                item.update(await self.finish_duplicate(submission, result))
            except Problem as problem:
                out.append(dump(problem.to_dict()))
                continue
            out.append(dump(item))
        checkpoints = dump([note.decode("utf-8") for note in notes])
        return b'{"checkpoints":%s,"results":[%s]}' % (checkpoints, b",".join(out))

    async def finish_duplicate(self, submission: Submission, result: Sequenced) -> dict[str, Any]:
        """Return the stored entry of a duplicate; Problem(jti-conflict) if it holds another
        event (see :meth:`finish`). Raises StorageError."""
        stored = await self._same_event(submission, result)
        if stored is None:
            raise Problem(
                "jti-conflict",
                "this jti was already logged for this submitter with a different event;"
                " nothing was logged",
                extra={"index": result.index},
            )
        return {"entry": _b64(stored), "leaf_hash": _b64(leaf_hash(stored))}

    # -- read access -------------------------------------------------------------------------

    async def _can_read(self, request: Request) -> bool:
        """Tell whether the request may read entry contents.

        Raises Problem 401 for a credential that is not a reader's, 403 for a revoked reader.
        """
        if self.settings.public_entries:
            return True
        if request.headers.get("authorization") is None:
            return False
        try:
            principal = await self._principal(request)
        except StorageError as exc:
            raise unavailable_problem(exc) from None
        if principal is None or principal.role != "reader":
            raise Problem(
                "unauthorized",
                "entry contents need the Bearer credential of a registered reader",
                headers={"WWW-Authenticate": 'Bearer realm="etch", error="invalid_token"'},
            )
        if principal.status != "active":
            raise Problem("forbidden", "this reader has been revoked")
        return True

    async def read_guard(self, request: Request) -> None:
        """Allow readers (or everyone on a public log). Raises Problem 401 or 403."""
        if not await self._can_read(request):
            raise Problem(
                "unauthorized",
                "entry contents need the Bearer credential of a registered reader",
                headers={"WWW-Authenticate": 'Bearer realm="etch"'},
            )

    # -- lookups -------------------------------------------------------------------------------

    async def lookup(self, request: Request) -> Response:
        """``GET /v1/lookup``: find entries by token reference, client, subject or type."""
        query: bytes = request.scope.get("query_string", b"")
        if self._public_ref_query(query) and "authorization" not in request.headers:
            return _RefAnswer(await self._public_ref_answer(query))
        return await self._lookup(request)

    def _public_ref_query(self, query: bytes) -> bool:
        """Tell whether a raw query string is ``token_ref=<43 characters>`` alone and such a
        lookup is answered to anyone with the same answer (no entry contents for anyone)."""
        return (
            len(query) == _REF_QUERY_SIZE
            and query.startswith(b"token_ref=")
            and self.settings.public_token_ref_lookup
            and not self.settings.public_entries
        )

    async def _public_ref_answer(self, query: bytes) -> bytes:
        """Answer ``?token_ref=<ref>`` alone, without read access: the busiest lookup.

        The same answer as the general path (index, leaf hash and log time of the first 100
        hits, the cursor), written directly, and kept for repeated questions while the tree
        size stays the same: entries are only ever added, and the answer is read after the
        size is noted, so a kept answer holds every entry of that size. At most
        :data:`REF_ANSWERS_MAX` answers are kept (the oldest go first).
        Raises Problem(bad-parameter) for a malformed reference, Problem(unavailable).
        """
        size = self.service.tree_size
        if size != self._ref_answers_size:
            self._ref_answers.clear()
            self._ref_answers_size = size
        else:
            kept = self._ref_answers.get(query)
            if kept is not None:
                return kept
        value = query[10:].decode("ascii", "replace")
        if not is_token_ref(value):
            raise Problem("bad-parameter", "token_ref must be 43 canonical base64url characters")
        try:
            hits = await self.storage.lookup_entries(
                "token_ref", value, after=-1, limit=DEFAULT_LOOKUP_LIMIT
            )
        except StorageError as exc:
            raise unavailable_problem(exc) from None
        b64 = binascii.b2a_base64
        items = b",".join(
            b'{"index":%d,"leaf_hash":"%s","log_time":%d}'
            % (hit.index, b64(leaf_hash(hit.data), newline=False), hit.log_time)
            for hit in hits
        )
        cursor = b"%d" % hits[-1].index if len(hits) == DEFAULT_LOOKUP_LIMIT else b"null"
        answer = b'{"results":[%s],"next":%s}' % (items, cursor)
        if self._ref_answers_size == size:
            if len(self._ref_answers) >= REF_ANSWERS_MAX:
                self._ref_answers.popitem(last=False)
            self._ref_answers[query] = answer
        return answer

    async def _lookup(self, request: Request) -> Response:
        """The general lookup: every parameter, read access checked (see :meth:`lookup`)."""
        params = request.query_params
        for name in params:
            if name not in _LOOKUP_PARAMS:
                raise Problem("bad-parameter", f"unknown query parameter {name!r}")
        if any(len(params.getlist(name)) > 1 for name in params):
            raise Problem("bad-parameter", "each query parameter may be given once")
        kinds = [kind for kind in _LOOKUP_KINDS if kind in params]
        if len(kinds) != 1:
            raise Problem(
                "bad-parameter", "give exactly one of token_ref, client_id, subject, type"
            )
        kind = kinds[0]
        value = params[kind]
        if kind == "token_ref":
            if not is_token_ref(value):
                raise Problem(
                    "bad-parameter", "token_ref must be 43 canonical base64url characters"
                )
        elif not value or len(value.encode("utf-8")) > 512:
            raise Problem("bad-parameter", f"{kind} must be 1 to 512 bytes")
        since = _decimal(params.get("since"), "since", MAX_TIME_MS)
        until = _decimal(params.get("until"), "until", MAX_TIME_MS)
        after = _decimal(params.get("after"), "after", MAX_TREE_SIZE)
        limit = _decimal(params.get("limit"), "limit", MAX_LOOKUP_LIMIT)
        if limit == 0:
            raise Problem("bad-parameter", f"limit must be 1 to {MAX_LOOKUP_LIMIT}")
        limit = DEFAULT_LOOKUP_LIMIT if limit is None else limit
        readable = await self._can_read(request)
        if not readable and not (kind == "token_ref" and self.settings.public_token_ref_lookup):
            raise Problem(
                "unauthorized",
                f"lookups by {kind} need the Bearer credential of a registered reader",
                headers={"WWW-Authenticate": 'Bearer realm="etch"'},
            )
        try:
            hits = await self.storage.lookup_entries(
                kind,
                value,
                after=-1 if after is None else after,
                limit=limit,
                since_ms=since,
                until_ms=until,
            )
        except StorageError as exc:
            raise unavailable_problem(exc) from None
        results: list[dict[str, Any]] = []
        for hit in hits:
            item: dict[str, Any] = {
                "index": hit.index,
                "leaf_hash": _b64(leaf_hash(hit.data)),
                "log_time": hit.log_time,
            }
            if readable:
                item["entry"] = _b64(hit.data)
                try:
                    item["event"] = to_json_compatible(decode_deterministic(hit.data))
                except CodecError:
                    item["event"] = None
            results.append(item)
        cursor = hits[-1].index if len(hits) == limit else None
        return _json(
            {"results": results, "next": cursor},
            headers={"Cache-Control": "no-store"},
        )

    # -- SET intake ----------------------------------------------------------------------------

    async def receive_set(self, request: Request) -> Response:
        """``POST /v1/sets``: RFC 8935 push delivery of one SET (see the module docstring)."""
        try:
            return await self._receive_set(request)
        except _SetRefused as refused:
            self.service.metrics.submissions.labels("refused").inc()
            return refused.response()

    async def _set_submitter(self, request: Request) -> Principal:
        try:
            principal = await self._principal(request)
        except StorageError as exc:
            raise unavailable_problem(exc) from None
        if principal is None:
            raise _SetRefused(
                "authentication_failed",
                "send Authorization: Bearer <credential> of a registered submitter",
            )
        if principal.role != "submitter" or principal.status != "active":
            raise _SetRefused("access_denied", "this credential may not transmit SETs")
        return principal

    async def _receive_set(self, request: Request) -> Response:
        submitter = await self._set_submitter(request)
        request.state.etch_principal = submitter
        media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media != SET_MEDIA_TYPE:
            raise _SetRefused("invalid_request", f"Content-Type must be {SET_MEDIA_TYPE}")
        await self.admit(request, 1)
        body = await read_body(request, self.limits.max_body_bytes)
        try:
            token = body.decode("ascii").strip()
        except UnicodeDecodeError:
            raise _SetRefused("invalid_request", "a SET is ASCII text (compact JWS)") from None
        now_ms = self._now_ms()
        try:
            verified = verify_compact_jws(token, submitter.keys, now_ms=now_ms)
        except JoseError as exc:
            raise _SetRefused(exc.code, exc.description) from None
        try:
            claims = decode_json(verified.payload, self.limits)
        except CodecError as exc:
            raise _SetRefused("invalid_request", f"the SET payload: {exc.detail}") from None
        try:
            check_no_secrets(claims)
            validate_set_claims(claims, now=now_ms // 1000)
        except EventError as exc:
            raise _SetRefused("invalid_request", f"{exc.detail} (at {exc.pointer})") from None
        key = verified.key
        if key.issuer is not None and claims.get("iss") != key.issuer:
            raise _SetRefused("invalid_issuer", "iss is not the issuer registered with the key")
        self._check_audience(claims.get("aud"))
        try:
            data = encode_set_leaf(submitter.name, token, claims, now_ms, self.limits)
        except (LeafError, CodecError) as exc:
            raise _SetRefused("invalid_request", str(exc)) from None
        jti = claims["jti"]
        assert isinstance(jti, str)
        submission = Submission(
            data,
            leaf_hash(data),
            idempotency_key=f"{submitter.name}\x00{jti}",
            lookup_keys=set_lookup_keys(claims),
            log_time=now_ms,
        )
        try:
            (result,) = await self.service.submit([submission])
            answer = result_body(self.service, result)
            if result.duplicate:
                stored = await self._same_event(submission, result)
                if stored is None:
                    raise _SetRefused(
                        "invalid_request",
                        "this jti was already logged for this submitter with a different SET",
                    )
                answer.update(entry=_b64(stored), leaf_hash=_b64(leaf_hash(stored)))
            else:
                answer["entry"] = _b64(data)
        except (SequencerStopped, StorageError) as exc:
            raise unavailable_problem(exc) from None
        return _json(answer, 202)

    def _check_audience(self, audience: Value) -> None:
        if audience is None:
            return
        accepted = {self.service.origin}
        if self.settings.set_audience is not None:
            accepted.add(self.settings.set_audience)
        values = audience if isinstance(audience, list) else [audience]
        if not any(isinstance(v, str) and v in accepted for v in values):
            raise _SetRefused("invalid_audience", "aud does not name this log")

    # -- documents -------------------------------------------------------------------------------

    async def schema(self, request: Request) -> Response:
        """``GET /v1/schema/events``: the JSON Schema of events."""
        content = json.dumps(event_schema(), separators=(",", ":")).encode("utf-8")
        return Response(
            content,
            media_type="application/schema+json",
            headers={"Cache-Control": "public, max-age=3600"},
        )

    def openapi(self, origin: str) -> dict[str, Any]:
        """Return the OpenAPI document of the log with the OAuth layer's routes and schemas."""
        return oauth_openapi(openapi_document(origin))

    def routes(self) -> list[Route]:
        """Return the routes the OAuth layer adds to the engine's."""
        return [
            Route("/v1/lookup", self.lookup, methods=["GET"]),
            Route("/v1/sets", self.receive_set, methods=["POST"]),
            Route(SIGNED_BATCH_PATH, self.submit_signed_batch, methods=["POST"]),
            Route("/v1/schema/events", self.schema, methods=["GET"]),
        ]


def _signature(value: Value) -> bytes:
    """Return the 64 signature bytes of an envelope. Raises Problem(bad-signature)."""
    if isinstance(value, bytes):
        raw = value
    elif isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if base64.b64encode(raw).decode("ascii") != value:
            raw = b""
    else:
        raise Problem(
            "bad-signature",
            "signature is missing: the submitter's Ed25519 signature over the event is required",
            extra={"pointer": "/signature"},
        )
    if len(raw) != _SIGNATURE_SIZE:
        raise Problem(
            "bad-signature",
            "signature must be 64 bytes (canonical standard base64 in JSON)",
            extra={"pointer": "/signature"},
        )
    return raw


_PUBLIC_KEYS: dict[bytes, Ed25519PublicKey] = {}
"""Loaded event keys by their raw bytes (public data; bounded by :data:`_PUBLIC_KEYS_MAX`)."""
_PUBLIC_KEYS_MAX: Final = 1024


def _ed25519_key(raw: bytes) -> Ed25519PublicKey:
    """Return the Ed25519 public key object of ``raw``, loading each key once.

    Raises ValueError for bytes that are not a public key.
    """
    key = _PUBLIC_KEYS.get(raw)
    if key is None:
        key = Ed25519PublicKey.from_public_bytes(raw)
        if len(_PUBLIC_KEYS) < _PUBLIC_KEYS_MAX:
            _PUBLIC_KEYS[raw] = key
    return key


def _verify_event(submitter: Principal, signature: bytes, message: bytes, now_ms: int) -> None:
    """Verify an event signature with the submitter's unexpired Ed25519 keys.

    Raises Problem(bad-signature) when none verifies.
    """
    for key in submitter.keys:
        if key.usage != "event" or (key.not_after_ms is not None and key.not_after_ms < now_ms):
            continue
        try:
            _ed25519_key(key.public_key).verify(signature, message)
        except (InvalidSignature, ValueError):
            continue
        return
    raise Problem(
        "bad-signature",
        "the signature does not verify with any current key of this submitter; nothing was logged",
        extra={"pointer": "/signature"},
    )


def _decimal(raw: str | None, name: str, maximum: int) -> int | None:
    if raw is None:
        return None
    try:
        return parse_decimal(raw, what=name, maximum=maximum)
    except MalformedError:
        raise Problem(
            "bad-parameter", f"{name} must be a canonical decimal in [0, {maximum}]"
        ) from None


def oauth_openapi(document: dict[str, Any]) -> dict[str, Any]:
    """Add the OAuth layer's routes, schemas and security scheme to an engine document."""
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["Event"] = envelope_schema()
    schemas["OAuthEvent"] = event_schema()
    result = schemas.get("SubmitResult", {})
    result.setdefault("properties", {})["entry"] = {
        "type": "string",
        "contentEncoding": "base64",
        "description": "the exact leaf bytes logged (deterministic CBOR), standard base64",
    }
    components["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "submitter or reader"}
    }
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    lookup_params = [
        {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
        for name in (*_LOOKUP_KINDS, "since", "until", "after", "limit")
    ]
    paths = document.setdefault("paths", {})
    paths["/v1/sets"] = {
        "post": {
            "summary": "Push one Security Event Token (RFC 8935); logged verbatim",
            "security": [{"bearer": []}],
            "requestBody": {
                "required": True,
                "content": {SET_MEDIA_TYPE: {"schema": {"type": "string"}}},
            },
            "responses": {
                "202": {
                    "description": "accepted and logged (receipt in the body)",
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/SubmitResult"}
                        }
                    },
                },
                "400": {
                    "description": "RFC 8935 error",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["err", "description"],
                                "properties": {
                                    "err": {
                                        "enum": [
                                            "invalid_request",
                                            "invalid_key",
                                            "invalid_issuer",
                                            "invalid_audience",
                                            "authentication_failed",
                                            "access_denied",
                                        ]
                                    },
                                    "description": {"type": "string"},
                                },
                            }
                        }
                    },
                },
                "429": {"description": "rate-limited", "content": problem},
                "503": {"description": "unavailable", "content": problem},
            },
        }
    }
    paths["/v1/lookup"] = {
        "get": {
            "summary": "Find entries by token_ref, client_id, subject or type (one of them)",
            "description": "since/until: log time, POSIX ms, canonical decimal, since <= t < "
            "until; after: index cursor (the previous page's next); limit: 1..1000",
            "security": [{}, {"bearer": []}],
            "parameters": lookup_params,
            "responses": {
                "200": {
                    "description": "results and the next cursor (null on the last page)",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "results": {"type": "array", "items": {"type": "object"}},
                                    "next": {"type": ["integer", "null"]},
                                },
                            }
                        }
                    },
                },
                "400": {"description": "bad-parameter", "content": problem},
                "401": {"description": "unauthorized", "content": problem},
                "403": {"description": "forbidden", "content": problem},
            },
        }
    }
    paths[SIGNED_BATCH_PATH] = {
        "post": {
            "summary": "Submit events attributed by one Ed25519 signature over their batch's"
            " RFC 6962 root (client.batchsig)",
            "security": [{"bearer": []}],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["size", "root", "signature", "events"],
                            "additionalProperties": False,
                            "properties": {
                                "size": {"type": "integer", "minimum": 1, "maximum": 65536},
                                "root": {"type": "string", "contentEncoding": "base64"},
                                "signature": {"type": "string", "contentEncoding": "base64"},
                                "events": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["index", "event"],
                                        "additionalProperties": False,
                                        "properties": {
                                            "index": {"type": "integer", "minimum": 0},
                                            "path": {
                                                "type": "array",
                                                "items": {"type": "string"},
                                                "description": "PATH(index, D[size]); may be"
                                                " left out of every item of a whole batch",
                                            },
                                            "event": {"$ref": "#/components/schemas/OAuthEvent"},
                                        },
                                    },
                                },
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": {"description": "{checkpoints, results}: one result or problem per event"},
                "401": {"description": "unauthorized", "content": problem},
                "403": {"description": "forbidden", "content": problem},
                "422": {"description": "bad-signature, bad-event", "content": problem},
                "429": {"description": "rate-limited", "content": problem},
            },
        }
    }
    paths["/v1/schema/events"] = {
        "get": {
            "summary": "JSON Schema of events",
            "responses": {"200": {"description": "JSON Schema draft 2020-12"}},
        }
    }
    for path in ("/v1/events", "/v1/events/batch"):
        operation = paths.get(path, {}).get("post")
        if operation is not None:
            operation["security"] = [{"bearer": []}]
    return document


def create_oauth_app(
    service: LogService,
    storage: OAuthStorage,
    settings: OAuthSettings | None = None,
    *,
    limits: Limits | None = None,
    manage_service: bool = True,
) -> Starlette:
    """Return the log's app with the OAuth layer: what ``etch serve`` runs.

    ``storage`` is the log's own storage seen as :class:`OAuthStorage` (both backends are).
    """
    layer = OAuthLayer(service, storage, settings, limits=limits)
    app = create_app(
        service,
        limits=limits,
        intake=layer,
        # A public log guards nothing: its entry bundles take the early answer too.
        read_guard=None if layer.settings.public_entries else layer.read_guard,
        openapi=layer.openapi,
        manage_service=manage_service,
    )
    # Matched first: lookups are the busiest of these reads, and no engine path is reused.
    app.router.routes[:0] = layer.routes()
    app.add_middleware(_PublicRefLookups, layer=layer)
    app.state.oauth = layer
    return app
