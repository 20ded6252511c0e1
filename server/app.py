"""The log's HTTP surface: C2SP tlog-tiles reads, the JSON API, health, metrics and OpenAPI.

A thin layer: each handler checks its input strictly, calls :class:`server.log.LogService`, and
formats the answer. Every refusal is an RFC 9457 problem (:mod:`server.problems`); every body is
read with a size limit before it is parsed.

=========================================  =====================================================
route                                      answer
=========================================  =====================================================
GET  /checkpoint                           the newest published signed checkpoint (text)
GET  /tile/<L>/<N>[.p/<W>]                 tree hashes (C2SP tlog-tiles)
GET  /tile/entries/<N>[.p/<W>]             entry bundle (gzip when asked)
POST /v1/events                            one entry (JSON or CBOR map) -> receipt
POST /v1/events/batch                      an array of entries -> results in request order
GET  /v1/proof/inclusion                   ?index=I&tree_size=N or ?leaf_hash=<hex>&tree_size=N
GET  /v1/proof/consistency                 ?first=M&second=N
GET  /v1/entries/<index>                   one entry, its leaf hash and decoded content
GET  /v1/receipt/<index>                   tlog-proof receipt against the published checkpoint
GET  /healthz, /metrics, /openapi.json
=========================================  =====================================================

What a submission becomes is the job of an :class:`Intake`: it authenticates the request,
admits (rate-limits) its events, turns each decoded event into a :class:`Submission`, and adds
to each answer after sequencing (where it may still refuse, e.g. a reused idempotency key with
different content). The engine's default intake logs any bounded map as its deterministic CBOR
encoding, with no authentication; the OAuth layer (:mod:`server.ingest`) is the other one. A
``read_guard`` may restrict who reads entry contents (``GET /v1/entries/<index>`` and
``GET /tile/entries/...``); hashes, checkpoints, proofs and receipts stay public.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import gzip
import json
import logging
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from merkle.checkpoint import parse_decimal
from merkle.errors import MalformedError
from merkle.hashing import HASH_SIZE, leaf_hash
from merkle.receipt import RECEIPT_HEADER
from merkle.tiles import ENTRIES_LEVEL, TILE_WIDTH, Tile, format_entry_bundle, parse_tile_path
from merkle.tree import MAX_TREE_SIZE, Node
from server.codec import (
    CodecError,
    Limits,
    Value,
    decode_cbor,
    decode_cbor_batch,
    decode_deterministic,
    decode_json,
    decode_json_batch,
    encode_entry,
    to_json_compatible,
)
from server.log import LogService
from server.metrics import CONTENT_TYPE_LATEST
from server.openapi import openapi_document
from server.problems import (
    Problem,
    exception_handlers,
    problem_from_codec_error,
    problem_from_http_exception,
)
from server.sequencer import Sequenced, SequencerStopped, Submission
from server.storage.base import StorageError

__all__ = [
    "EventPreparer",
    "Intake",
    "PreparerIntake",
    "RawMapPreparer",
    "ReadGuard",
    "ResultWriter",
    "create_app",
    "inclusion_answer",
    "read_body",
    "result_body",
    "unavailable_problem",
]

log = logging.getLogger(__name__)

JSON_TYPE = "application/json"
CBOR_TYPE = "application/cbor"
CACHE_IMMUTABLE = "public, max-age=31536000, immutable"
CACHE_SHORT = "public, max-age=2"
CACHE_NONE = "no-store"

EventPreparer = Callable[[Request, dict[str, Value]], Awaitable[Submission]]
"""Turns one decoded event into a submission (the OAuth layer validates and signs here)."""

ReadGuard = Callable[[Request], Awaitable[None]]
"""Raises a Problem (401/403) when the request may not read entry contents."""

_YIELD_EVERY = 64
"""Batch events prepared between two yields to the event loop."""


class Intake(Protocol):
    """The submission path of an app: who may submit, and what a submission becomes.

    For ``POST /v1/events`` and ``POST /v1/events/batch`` the app calls, in this order:
    :meth:`authenticate` (before the body is read), :meth:`admit` (once, with the number of
    events decoded), :meth:`prepare` (per event), then, after sequencing, :meth:`finish` (per
    result). Each may raise :class:`server.problems.Problem`; in a batch a problem raised by
    :meth:`prepare` or :meth:`finish` answers that event only.
    """

    async def authenticate(self, request: Request) -> None:
        """Check the request's credentials. Raises Problem (401, 403)."""
        ...

    async def admit(self, request: Request, count: int) -> None:
        """Admit ``count`` events of an authenticated request. Raises Problem (429)."""
        ...

    async def prepare(self, request: Request, event: dict[str, Value]) -> Submission:
        """Validate one decoded event and return its submission. Raises Problem, CodecError."""
        ...

    async def finish(
        self, request: Request, submission: Submission, result: Sequenced
    ) -> Mapping[str, Any]:
        """Return members to add to (or replace in) the event's answer. Raises Problem.

        Called after the sequencer answered; for a duplicate (``result.duplicate``) this is
        where a reused idempotency key with different content is refused (409).
        """
        ...


class PreparerIntake:
    """An :class:`Intake` made of one :data:`EventPreparer`: no authentication, no limits."""

    def __init__(self, prepare: EventPreparer) -> None:
        self._prepare = prepare

    async def authenticate(self, request: Request) -> None:
        """Accept every request."""

    async def admit(self, request: Request, count: int) -> None:
        """Admit every event."""

    async def prepare(self, request: Request, event: dict[str, Value]) -> Submission:
        """Call the preparer."""
        return await self._prepare(request, event)

    async def finish(
        self, request: Request, submission: Submission, result: Sequenced
    ) -> Mapping[str, Any]:
        """Add nothing."""
        return {}


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_dumps(body), status_code=status, media_type=JSON_TYPE, headers=headers)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def inclusion_answer(index: int, tree_size: int, leaf: bytes, proof: list[bytes]) -> bytes:
    """Return the body of a ``GET /v1/proof/inclusion`` answer.

    The bytes ``json.dumps`` writes for ``{"index", "tree_size", "leaf_hash", "proof"}`` with
    compact separators (integers and base64 text need no escaping), assembled directly: this
    is the hottest read of the JSON API, e.g.
    ``{"index":5,"tree_size":8,"leaf_hash":"<base64>","proof":["<base64>",...]}``.
    """
    b64 = binascii.b2a_base64
    hashes = b'","'.join([b64(h, newline=False) for h in proof])
    listed = b'"' + hashes + b'"' if proof else b""
    return b'{"index":%d,"tree_size":%d,"leaf_hash":"%s","proof":[%s]}' % (
        index,
        tree_size,
        b64(leaf, newline=False),
        listed,
    )


async def read_body(request: Request, limit: int) -> bytes:
    """Read the request body, refusing more than ``limit`` bytes without reading further.

    Raises Problem(payload-too-large) when the declared or actual length exceeds the limit.
    """
    declared = _header(request, b"content-length")
    if declared is not None:
        if not declared.isascii() or not declared.isdigit():
            raise Problem("bad-parameter", "Content-Length is not a decimal number")
        if int(declared) > limit:
            raise Problem("payload-too-large", f"the body may be at most {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Problem("payload-too-large", f"the body may be at most {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _header(request: Request, name: bytes) -> str | None:
    """Return the first value of header ``name`` (lower case), or ``None``.

    ``request.headers.get`` without building Starlette's ``Headers`` view: ASGI gives header
    names in lower case, and this runs twice per submission.
    """
    headers: list[tuple[bytes, bytes]] = request.scope["headers"]
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


def _media_type(request: Request) -> str:
    raw = _header(request, b"content-type") or ""
    media = raw.split(";", 1)[0].strip().lower()
    if media not in (JSON_TYPE, CBOR_TYPE):
        raise Problem(
            "unsupported-media-type",
            f"send {JSON_TYPE} or {CBOR_TYPE}",
            headers={"Accept-Post": f"{JSON_TYPE}, {CBOR_TYPE}"},
        )
    return media


def _query_int(request: Request, name: str, *, required: bool = True) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        if required:
            raise Problem("bad-parameter", f"query parameter {name!r} is required")
        return None
    try:
        return parse_decimal(raw, what=name, maximum=MAX_TREE_SIZE)
    except MalformedError:
        raise Problem(
            "bad-parameter", f"{name} must be a canonical decimal in [0, 2^63-1]"
        ) from None


def _path_int(request: Request, name: str) -> int:
    raw = request.path_params[name]
    try:
        return parse_decimal(raw, what=name, maximum=MAX_TREE_SIZE)
    except MalformedError:
        raise Problem(
            "bad-parameter", f"{name} must be a canonical decimal in [0, 2^63-1]"
        ) from None


def unavailable_problem(exc: Exception) -> Problem:
    """Return the 503 problem for a stopped sequencer or unavailable storage."""
    return _unavailable(exc)


def _unavailable(exc: Exception) -> Problem:
    if isinstance(exc, SequencerStopped):
        return Problem("unavailable", str(exc), retry_after=exc.retry_after or 5)
    return Problem("unavailable", "storage is unavailable", retry_after=1)


def result_body(service: LogService, result: Sequenced) -> dict[str, Any]:
    """Return the JSON answer to one sequenced submission (ARCHITECTURE.md "HTTP API").

    Members: ``index``, ``leaf_hash``, ``duplicate``, ``tree_size``, ``checkpoint`` (the signed
    note the proof is against), ``inclusion_proof`` and ``receipt`` (C2SP tlog-proof text).
    """
    del service
    return _result_dict(result)


class ResultWriter:
    """Writes the JSON of sequenced results, sharing what the results of one batch have in common.

    :meth:`write` returns exactly the bytes of ``json.dumps(answer, separators=(",", ":"),
    ensure_ascii=False)`` for ``answer = result_body(service, result)`` updated with ``extra``
    (the intake's additions), assembled directly: the results of a batch are signed by one or
    two checkpoints, whose JSON-escaped text is made once, and consecutive leaves share most of
    their proof hashes, whose base64 text is made once. Use one writer per answer (the caches
    grow with the hashes seen).
    """

    __slots__ = ("_hashes", "_notes")

    def __init__(self) -> None:
        """Make a writer with empty caches."""
        self._hashes: dict[bytes, bytes] = {}
        self._notes: dict[bytes, bytes] = {}

    def _note(self, checkpoint: bytes) -> bytes:
        """Return the JSON-escaped text of a checkpoint note, without quotes."""
        text = self._notes.get(checkpoint)
        if text is None:
            quoted = json.dumps(checkpoint.decode("utf-8"), ensure_ascii=False)
            text = self._notes[checkpoint] = quoted[1:-1].encode("utf-8")
        return text

    def _base64(self, proof: tuple[bytes, ...]) -> list[bytes]:
        """Return the base64 text of each proof hash (no escaping needed in JSON)."""
        known = self._hashes
        out = []
        for value in proof:
            text = known.get(value)
            if text is None:
                text = known[value] = binascii.b2a_base64(value, newline=False)
            out.append(text)
        return out

    def write(self, result: Sequenced, extra: Mapping[str, Any] | None = None) -> bytes:
        """Return the compact JSON of ``result_body(result)`` updated with ``extra``.

        Members of ``extra`` that are new are appended in order (as ``dict.update`` does);
        when one replaces a member of the answer, the answer is built as a dict instead.
        """
        if extra and not _RESULT_MEMBERS.isdisjoint(extra):
            answer = _result_dict(result)
            answer.update(extra)
            return _dumps(answer)
        proof = self._base64(result.proof)
        note = self._note(result.checkpoint)
        index = result.index
        body = (
            b'{"index":%d,"leaf_hash":"%s","duplicate":%s,"tree_size":%d,"checkpoint":"%s",'
            b'"inclusion_proof":[%s],"receipt":"%s\\nindex %d\\n%s\\n%s"'
            % (
                index,
                binascii.b2a_base64(result.leaf_hash, newline=False),
                b"true" if result.duplicate else b"false",
                result.tree_size,
                note,
                b'"' + b'","'.join(proof) + b'"' if proof else b"",
                _RECEIPT_HEADER_JSON,
                index,
                b"\\n".join(proof) + b"\\n" if proof else b"",
                note,
            )
        )
        if extra:
            return body + b"," + _dumps(dict(extra))[1:]
        return body + b"}"


_RESULT_MEMBERS = frozenset(
    ("index", "leaf_hash", "duplicate", "tree_size", "checkpoint", "inclusion_proof", "receipt")
)
_RECEIPT_HEADER_JSON = json.dumps(RECEIPT_HEADER, ensure_ascii=False)[1:-1].encode("utf-8")


def _dumps(body: Any) -> bytes:
    """Return the compact JSON bytes :func:`_json` answers with."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _result_dict(result: Sequenced) -> dict[str, Any]:
    """Return :func:`result_body` of ``result`` (which does not depend on the service)."""
    proof = [_b64(h) for h in result.proof]
    checkpoint = result.checkpoint.decode("utf-8")
    return {
        "index": result.index,
        "leaf_hash": _b64(result.leaf_hash),
        "duplicate": result.duplicate,
        "tree_size": result.tree_size,
        "checkpoint": checkpoint,
        "inclusion_proof": proof,
        "receipt": _receipt_text(result.index, proof, checkpoint),
    }


def _receipt_text(index: int, proof: list[str], checkpoint: str) -> str:
    """Return the C2SP tlog-proof text of a fresh result (what ``format_receipt`` writes).

    The sequencer made the proof and signed the checkpoint moments ago, so nothing needs
    re-parsing here: header line, ``index`` line, one base64 line per proof hash, an empty
    line, then the signed checkpoint note (tlog-proof "Format"; tests compare it with
    :func:`merkle.receipt.format_receipt`).
    """
    lines = "".join(f"{node}\n" for node in proof)
    return f"{RECEIPT_HEADER}\nindex {index}\n{lines}\n{checkpoint}"


class RawMapPreparer:
    """The engine's default :data:`EventPreparer`: a bounded map logged as its deterministic
    CBOR encoding, stamped with the sequencer's clock."""

    def __init__(self, service: LogService, limits: Limits) -> None:
        self._clock = service.sequencer.clock
        self._limits = limits

    async def __call__(self, request: Request, event: dict[str, Value]) -> Submission:
        """Return the submission of ``event``. Raises CodecError for an event over the limits."""
        data = encode_entry(event, self._limits)
        return Submission(data, leaf_hash(data), log_time=self._clock.now_ms())


TileKey = tuple[int, int]

IMMUTABLE_CACHE_BYTES = 64 * 1024 * 1024
"""Most bytes of full tiles and full entry bundles the server keeps encoded in memory."""

READ_AHEAD = 8
"""Full tiles (or entry bundles) read from storage together, as aligned blocks."""

FULL_TILE_BYTES = TILE_WIDTH * HASH_SIZE

_TILE_HEADERS: list[tuple[bytes, bytes]] = [
    (b"cache-control", CACHE_IMMUTABLE.encode("ascii")),
    (b"content-type", b"application/octet-stream"),
]
_JSON_TYPE_BYTES = JSON_TYPE.encode("ascii")
_JSON_HEADERS: list[tuple[bytes, bytes]] = [(b"content-type", _JSON_TYPE_BYTES)]
_BUNDLE_HEADERS: list[tuple[bytes, bytes]] = [
    (b"cache-control", CACHE_IMMUTABLE.encode("ascii")),
    (b"vary", b"Accept-Encoding"),
    (b"content-type", b"application/octet-stream"),
]


def _with_length(
    body: bytes, headers: list[tuple[bytes, bytes]]
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """Return ``body`` with ``headers`` and its ``content-length`` (an ASGI answer's parts)."""
    return body, [*headers, (b"content-length", str(len(body)).encode("ascii"))]


_ProblemHandler = Callable[[Request, Exception], Awaitable[Response]]


class _EarlyAnswers:
    """ASGI middleware: the busiest requests answered before routing, with the route's answer.

    * ``GET`` of a full tile or entry bundle (from the cache of immutable tiles, which a miss
      fills with the tile's block; the bulk of an audit's or a mirror's requests), and of an
      inclusion proof ``?index=I&tree_size=N`` whose tiles are all in memory;
    * ``POST /v1/events``, through the route's own code (:meth:`_Handlers.submit_answer`):
      its answer is written directly, and a refusal goes to the app's exception handler for
      it, as behind the router. Anything no handler takes (a bug) is raised to Starlette's
      server-error middleware, which answers 500 as it does for the route.

    Everything else goes on to the app. Starlette places this middleware inside its
    server-error middleware, so ``scope["app"]`` is set.
    """

    def __init__(
        self, app: ASGIApp, handlers: _Handlers, errors: Mapping[Any, _ProblemHandler]
    ) -> None:
        self.app = app
        self.handlers = handlers
        # What the router's exception middleware would answer with: all but 500/Exception.
        self.errors = {
            key: handler
            for key, handler in errors.items()
            if isinstance(key, type) and key is not Exception
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer early, or pass the request on."""
        if scope["type"] == "http" and not scope.get("root_path"):
            method = scope["method"]
            path = scope["path"]
            if method == "POST" and path == "/v1/events":
                await self._submit(scope, receive, send)
                return
            if method == "GET":
                answer = None
                if path.startswith("/tile/"):
                    answer = await self.handlers.tile_answer(path, scope["headers"])
                elif path == "/v1/proof/inclusion":
                    answer = self.handlers.cached_inclusion_answer(scope["query_string"])
                if answer is not None:
                    body, headers = answer
                    await send({"type": "http.response.start", "status": 200, "headers": headers})
                    await send({"type": "http.response.body", "body": body})
                    return
        await self.app(scope, receive, send)

    async def _submit(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        try:
            status, content = await self.handlers.submit_answer(request)
        except Exception as exc:
            handler: _ProblemHandler | None = None
            for kind in type(exc).__mro__:
                handler = self.errors.get(kind)
                if handler is not None:
                    break
            else:
                raise
            response = await handler(request, exc)
            await response(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-length", b"%d" % len(content)),
                    (b"content-type", _JSON_TYPE_BYTES),
                ],
            }
        )
        await send({"type": "http.response.body", "body": content})


class ImmutableCache:
    """A least-recently-used map of immutable encoded resources, bounded in total bytes.

    ``limit`` is the most bytes of values kept; a value larger than it is not kept.
    """

    def __init__(self, limit: int) -> None:
        """Make an empty cache of at most ``limit`` bytes."""
        self._items: OrderedDict[TileKey, bytes] = OrderedDict()
        self._limit = limit
        self._size = 0

    @property
    def size(self) -> int:
        """Bytes of the values held."""
        return self._size

    def get(self, key: TileKey) -> bytes | None:
        """Return the value of ``key`` (now the most recently used), or ``None``."""
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: TileKey, value: bytes) -> None:
        """Keep ``value`` under ``key``, dropping the least recently used to stay in bounds."""
        if len(value) > self._limit:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self._size -= len(old)
        self._items[key] = value
        self._size += len(value)
        while self._size > self._limit:
            _, dropped = self._items.popitem(last=False)
            self._size -= len(dropped)


class _Handlers:
    """Route handlers bound to one log service."""

    def __init__(
        self,
        service: LogService,
        limits: Limits,
        intake: Intake,
        read_guard: ReadGuard | None,
        openapi: Callable[[str], dict[str, Any]],
    ) -> None:
        self.service = service
        self.limits = limits
        self.intake = intake
        self.read_guard = read_guard
        self.openapi_builder = openapi
        # Full tiles and full entry bundles never change: their encoded bytes are kept, and a
        # miss reads its whole aligned block of READ_AHEAD neighbours in one storage call
        # (readers such as audits go through them in order), shared by concurrent requests.
        self._immutable = ImmutableCache(IMMUTABLE_CACHE_BYTES)
        self._single_writer: ResultWriter | None = None
        self._single_note = b""
        self._loading: dict[TileKey, asyncio.Future[None]] = {}

    # -- tlog-tiles ------------------------------------------------------------------------

    async def checkpoint(self, request: Request) -> Response:
        published = self.service.published
        if published is None:
            raise Problem("unavailable", "no checkpoint has been published yet")
        return Response(
            published.note,
            media_type="text/plain; charset=utf-8",
            headers={"Cache-Control": CACHE_SHORT},
        )

    async def tile(self, request: Request) -> Response:
        try:
            tile = parse_tile_path("tile/" + request.path_params["path"])
        except MalformedError as exc:
            raise Problem("not-found", f"not a tile path: {exc}") from None
        size = self.service.tree_size
        if tile.level == ENTRIES_LEVEL:
            return await self._entry_bundle(request, tile, size)
        available = size // (TILE_WIDTH**tile.level) - tile.index * TILE_WIDTH
        if available < tile.width:
            raise Problem("not-found", "the tile is beyond the tree")
        full = tile.width == TILE_WIDTH
        data = await self._immutable_bytes(tile, size) if full else None
        if data is None:
            # A partial tile (the right edge, from the sequencer's memory when it has it), or
            # a full one storage does not hold yet.
            tiles = await self.service.reader.expanded_tiles([(tile.level, tile.index)])
            rows = tiles.get((tile.level, tile.index))
            if rows is None or len(rows[0]) < tile.width:
                raise Problem("unavailable", "the tile is not readable yet", retry_after=1)
            data = b"".join(rows[0][: tile.width])
        cache = CACHE_IMMUTABLE if full else CACHE_SHORT
        return Response(
            data, media_type="application/octet-stream", headers={"Cache-Control": cache}
        )

    def _full_tile_request(
        self, path: str, headers: list[tuple[bytes, bytes]]
    ) -> tuple[Tile, list[tuple[bytes, bytes]]] | None:
        """Return the full tile (or entry bundle) ``GET <path>`` asks for and the headers of
        its answer but the length, when the answer may skip the route; else ``None`` (the
        route answers: partial tiles, malformed paths, tiles beyond the tree, entry bundles
        behind a read guard or asked for gzip).
        """
        try:
            tile = parse_tile_path(path[1:])
        except MalformedError:
            return None
        if tile.width != TILE_WIDTH:
            return None
        if tile.level == ENTRIES_LEVEL:
            if self.read_guard is not None or any(
                name == b"accept-encoding" and b"gzip" in value.lower() for name, value in headers
            ):
                return None
            covered, answer_headers = self.service.tree_size // TILE_WIDTH, _BUNDLE_HEADERS
        else:
            covered = self.service.tree_size // TILE_WIDTH ** (tile.level + 1)
            answer_headers = _TILE_HEADERS
        return (tile, answer_headers) if tile.index < covered else None

    def cached_tile_answer(
        self, path: str, headers: list[tuple[bytes, bytes]]
    ) -> tuple[bytes, list[tuple[bytes, bytes]]] | None:
        """Return the body and headers of ``GET <path>`` for a full tile or entry bundle already
        in the cache, exactly as :meth:`tile` answers it; ``None`` for anything else.
        """
        request = self._full_tile_request(path, headers)
        if request is None:
            return None
        tile, answer_headers = request
        data = self._immutable.get((tile.level, tile.index))
        return None if data is None else _with_length(data, answer_headers)

    async def tile_answer(
        self, path: str, headers: list[tuple[bytes, bytes]]
    ) -> tuple[bytes, list[tuple[bytes, bytes]]] | None:
        """Like :meth:`cached_tile_answer`, reading the tile's block into the cache on a miss
        (or waiting for the read in flight). ``None`` when the route must answer, storage
        failures included (the route then gives the problem answer).
        """
        request = self._full_tile_request(path, headers)
        if request is None:
            return None
        try:
            data = await self._immutable_bytes(request[0], self.service.tree_size)
        except StorageError:
            return None
        return None if data is None else _with_length(data, request[1])

    def cached_inclusion_answer(
        self, query: bytes
    ) -> tuple[bytes, list[tuple[bytes, bytes]]] | None:
        """Return the body and headers of ``GET /v1/proof/inclusion?<query>`` when the query is
        the plain ``index=I&tree_size=N`` (``I < N <=`` the log's size) and every tile of the
        proof is in memory, exactly as :meth:`inclusion` answers it; ``None`` otherwise.
        """
        plain = _INDEX_AND_SIZE.fullmatch(query)
        if plain is None:
            return None
        index, tree_size = int(plain[1]), int(plain[2])
        if not index < tree_size <= min(self.service.tree_size, MAX_TREE_SIZE):
            return None
        cached = self.service.reader.cached_leaf_and_inclusion_proof(index, tree_size)
        if cached is None:
            return None
        return _with_length(inclusion_answer(index, tree_size, *cached), _JSON_HEADERS)

    async def _immutable_bytes(self, tile: Tile, size: int) -> bytes | None:
        """Return the encoded bytes of a full hash tile or entry bundle of the tree of ``size``.

        From the cache, else from the tree reader's cache of expanded tiles (a hash tile a proof
        read), else by reading the aligned block of :data:`READ_AHEAD` tiles (or bundles) holding
        it, the full ones of the tree only, in one storage call; concurrent requests for the same
        block wait for that one read. Returns ``None`` when storage does
        not hold the tile (yet). Raises StorageError.
        """
        key = (tile.level, tile.index)
        data = self._immutable.get(key)
        if data is not None:
            return data
        if tile.level != ENTRIES_LEVEL:
            # Proofs keep the full tiles they read, expanded: no storage read for those.
            data = self.service.reader.cached_full_tile(key)
            if data is not None:
                self._immutable.put(key, data)
                return data
        first = tile.index - tile.index % READ_AHEAD
        block = (tile.level, first)
        loading = self._loading.get(block)
        if loading is None:
            loading = asyncio.ensure_future(self._load_block(tile.level, first, size))
            self._loading[block] = loading
            loading.add_done_callback(lambda done: self._loaded(block, done))
        # Shielded: a request that goes away does not cancel the read the others wait for.
        await asyncio.shield(loading)
        return self._immutable.get(key)

    def _loaded(self, block: TileKey, done: asyncio.Future[None]) -> None:
        """Forget a finished block read; its error, if any, went to the requests awaiting it."""
        self._loading.pop(block, None)
        if not done.cancelled():
            done.exception()

    async def _load_block(self, level: int, first: int, size: int) -> None:
        """Read the full tiles (or bundles) ``first`` to ``first + READ_AHEAD - 1`` of
        ``level`` that the tree of ``size`` has, and cache their encoded bytes."""
        full_count = size // TILE_WIDTH ** (level + 1) if level >= 0 else size // TILE_WIDTH
        last = min(first + READ_AHEAD, full_count)
        if last <= first:
            return
        if level == ENTRIES_LEVEL:
            start = first * TILE_WIDTH
            entries = await self.service.storage.read_entries(start, last * TILE_WIDTH)
            for at in range(0, len(entries) - TILE_WIDTH + 1, TILE_WIDTH):
                bundle = format_entry_bundle(entries[at : at + TILE_WIDTH])
                self._immutable.put((level, first + at // TILE_WIDTH), bundle)
            return
        stored = await self.service.storage.read_tiles([(level, i) for i in range(first, last)])
        for key, data in stored.items():
            if len(data) == FULL_TILE_BYTES:
                self._immutable.put(key, data)

    async def _entry_bundle(self, request: Request, tile: Tile, size: int) -> Response:
        if self.read_guard is not None:
            await self.read_guard(request)
        start = tile.index * TILE_WIDTH
        if size - start < tile.width:
            raise Problem("not-found", "the entry bundle is beyond the tree")
        full = tile.width == TILE_WIDTH
        data = await self._immutable_bytes(tile, size) if full else None
        if data is None:
            entries = await self.service.storage.read_entries(start, start + tile.width)
            if len(entries) != tile.width:
                raise Problem("unavailable", "entries are not readable yet", retry_after=1)
            data = format_entry_bundle(entries)
        headers = {
            "Cache-Control": CACHE_IMMUTABLE if full else CACHE_SHORT,
            "Vary": "Accept-Encoding",
        }
        if "gzip" in request.headers.get("accept-encoding", "").lower():
            data = gzip.compress(data, compresslevel=5, mtime=0)
            headers["Content-Encoding"] = "gzip"
        return Response(data, media_type="application/octet-stream", headers=headers)

    # -- submissions ---------------------------------------------------------------------------

    def _result(self, result: Sequenced) -> dict[str, Any]:
        return result_body(self.service, result)

    def _writer_for(self, checkpoint: bytes) -> ResultWriter:
        """Return the writer of single-event answers against ``checkpoint``.

        The answers of one commit share their note's JSON text and most proof hashes' base64:
        one writer serves them all, and a new one starts with the next checkpoint.
        """
        writer = self._single_writer
        if writer is None or self._single_note != checkpoint:
            writer = self._single_writer = ResultWriter()
            self._single_note = checkpoint
        return writer

    async def submit(self, request: Request) -> Response:
        status, content = await self.submit_answer(request)
        return Response(content, status, media_type=JSON_TYPE)

    async def submit_answer(self, request: Request) -> tuple[int, bytes]:
        """Sequence the one event of ``POST /v1/events``; return the status and JSON body.

        Raises what the route answers as a problem (Problem, CodecError, LogFrozen).
        """
        self.service.check_accepting()  # a frozen log refuses before reading anything
        await self.intake.authenticate(request)
        media = _media_type(request)
        body = await read_body(request, self.limits.max_body_bytes)
        try:
            event = (
                decode_json(body, self.limits)
                if media == JSON_TYPE
                else decode_cbor(body, self.limits)
            )
            await self.intake.admit(request, 1)
            submission = await self.intake.prepare(request, event)
        except CodecError as exc:
            self.service.metrics.submissions.labels("refused").inc()
            raise problem_from_codec_error(exc) from None
        except Problem:
            self.service.metrics.submissions.labels("refused").inc()
            raise
        try:
            (result,) = await self.service.submit([submission])
            extra = await self.intake.finish(request, submission, result)
        except (SequencerStopped, StorageError) as exc:
            raise _unavailable(exc) from None
        content = self._writer_for(result.checkpoint).write(result, extra)
        return 200 if result.duplicate else 201, content

    async def submit_batch(self, request: Request) -> Response:
        self.service.check_accepting()
        await self.intake.authenticate(request)
        media = _media_type(request)
        body = await read_body(request, self.limits.max_batch_bytes)
        decoded = (
            decode_json_batch(body, self.limits)
            if media == JSON_TYPE
            else decode_cbor_batch(body, self.limits)
        )
        await self.intake.admit(request, len(decoded))
        slots: list[dict[str, Any] | int] = []
        submissions: list[Submission] = []
        for position, item in enumerate(decoded):
            if position % _YIELD_EVERY == _YIELD_EVERY - 1:
                await asyncio.sleep(0)  # let other requests run during a long batch
            try:
                if isinstance(item, CodecError):
                    raise problem_from_codec_error(item)
                submissions.append(await self.intake.prepare(request, item))
                slots.append(len(submissions) - 1)
            except CodecError as exc:
                slots.append(problem_from_codec_error(exc).to_dict())
            except Problem as problem:
                slots.append(problem.to_dict())
        refused = sum(1 for s in slots if not isinstance(s, int))
        if refused:
            self.service.metrics.submissions.labels("refused").inc(refused)
        try:
            results = await self.service.submit(submissions) if submissions else []
            writer = ResultWriter()
            out: list[bytes] = []
            for slot in slots:
                if isinstance(slot, int):
                    out.append(
                        await self._finished(request, writer, submissions[slot], results[slot])
                    )
                else:
                    out.append(_dumps(slot))
        except (SequencerStopped, StorageError) as exc:
            raise _unavailable(exc) from None
        # The same bytes as _json({"results": [...]}), written result by result.
        return Response(b'{"results":[' + b",".join(out) + b"]}", media_type=JSON_TYPE)

    async def _finished(
        self, request: Request, writer: ResultWriter, submission: Submission, result: Sequenced
    ) -> bytes:
        """Return one batch result as JSON: the receipt with the intake's additions, or its
        problem."""
        try:
            extra = await self.intake.finish(request, submission, result)
        except Problem as problem:
            return _dumps(problem.to_dict())
        return writer.write(result, extra)

    # -- proofs and entries --------------------------------------------------------------------

    def _tree_size_param(self, request: Request) -> int:
        size = _query_int(request, "tree_size", required=False)
        current = self.service.tree_size
        if size is None:
            published = self.service.published
            return published.checkpoint.tree_size if published else current
        if size > current:
            raise Problem(
                "tree-size-unknown", f"tree size {size} is larger than the log ({current})"
            )
        return size

    async def _leaf_hash_at(self, index: int) -> bytes:
        (value,) = await self.service.reader.node_hashes([Node(0, index)])
        return value

    async def inclusion(self, request: Request) -> Response:
        # The common request, ``?index=I&tree_size=N`` with canonical decimals and I < N <= the
        # log's size, read straight from the raw query; anything else (other forms, errors)
        # takes the general path below, which answers it exactly as before.
        plain = _INDEX_AND_SIZE.fullmatch(request.scope["query_string"])
        if plain is not None:
            plain_index, plain_size = int(plain[1]), int(plain[2])
            if plain_index < plain_size <= min(self.service.tree_size, MAX_TREE_SIZE):
                return await self._inclusion_answer(plain_index, plain_size)
        tree_size = self._tree_size_param(request)
        raw_hash = request.query_params.get("leaf_hash")
        index = _query_int(request, "index", required=raw_hash is None)
        if raw_hash is not None:
            if index is not None:
                raise Problem("bad-parameter", "give index or leaf_hash, not both")
            wanted = _parse_hex_hash(raw_hash)
            found = await self.service.storage.find_leaf_hashes([wanted])
            if wanted not in found:
                raise Problem("not-found", "no entry has this leaf hash")
            index = found[wanted]
        assert index is not None
        if index >= tree_size:
            raise Problem("index-out-of-range", f"index {index} is not below tree size {tree_size}")
        return await self._inclusion_answer(index, tree_size)

    async def _inclusion_answer(self, index: int, tree_size: int) -> Response:
        """Answer an inclusion proof request. Requires ``index < tree_size <= tree size``."""
        try:
            value, proof = await self.service.reader.leaf_and_inclusion_proof(index, tree_size)
        except LookupError:
            raise Problem("unavailable", "tiles are not readable yet", retry_after=1) from None
        return Response(inclusion_answer(index, tree_size, value, proof), media_type=JSON_TYPE)

    async def consistency(self, request: Request) -> Response:
        first = _query_int(request, "first")
        second = _query_int(request, "second")
        assert first is not None
        assert second is not None
        if first > second:
            raise Problem("consistency-range", f"first ({first}) is larger than second ({second})")
        current = self.service.tree_size
        if second > current:
            raise Problem(
                "tree-size-unknown", f"tree size {second} is larger than the log ({current})"
            )
        try:
            proof = await self.service.reader.consistency_proof(first, second)
        except LookupError:
            raise Problem("unavailable", "tiles are not readable yet", retry_after=1) from None
        return _json({"first": first, "second": second, "proof": [_b64(h) for h in proof]})

    async def entry(self, request: Request) -> Response:
        if self.read_guard is not None:
            await self.read_guard(request)
        index = _path_int(request, "index")
        if index >= self.service.tree_size:
            raise Problem("not-found", f"no entry at index {index}")
        meta = await self.service.storage.read_entry_meta(index)
        if meta is None:
            raise Problem("not-found", f"no entry at index {index}")
        data, log_time = meta
        value = await self._leaf_hash_at(index)
        body: dict[str, Any] = {
            "index": index,
            "leaf_hash": _b64(value),
            "log_time": log_time,
            "entry": _b64(data),
        }
        try:
            body["event"] = to_json_compatible(decode_deterministic(data))
        except CodecError:
            body["event"] = None
        return _json(body)

    async def receipt(self, request: Request) -> Response:
        index = _path_int(request, "index")
        try:
            text = await self.service.receipt_for(index)
        except LookupError:
            if index < self.service.tree_size:
                raise Problem(
                    "unavailable",
                    "the entry is not yet covered by a published checkpoint",
                    retry_after=1,
                ) from None
            raise Problem("not-found", f"no entry at index {index}") from None
        return Response(
            text,
            media_type="text/plain; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{index}.tlog-proof"'},
        )

    # -- operations ------------------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        ok, reason = self.service.healthy
        published = self.service.published
        body = {
            "status": "ok" if ok else "failing",
            "reason": reason,
            "origin": self.service.origin,
            "state": self.service.state,
            "tree_size": self.service.tree_size,
            "published_size": published.checkpoint.tree_size if published else None,
            "warnings": self.service.warnings,
        }
        return _json(body, 200 if ok else 503, headers={"Cache-Control": CACHE_NONE})

    async def metrics(self, request: Request) -> Response:
        return Response(self.service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def openapi(self, request: Request) -> Response:
        return _json(self.openapi_builder(self.service.origin))


_INDEX_AND_SIZE = re.compile(rb"index=(0|[1-9][0-9]{0,18})&tree_size=(0|[1-9][0-9]{0,18})")
"""The raw query of a plain inclusion proof request (canonical decimals, nothing else)."""


def _parse_hex_hash(raw: str) -> bytes:
    if len(raw) != 2 * HASH_SIZE or not all(c in "0123456789abcdef" for c in raw):
        raise Problem("bad-parameter", "leaf_hash must be 64 lowercase hex digits")
    return bytes.fromhex(raw)


async def _storage_failed(request: Request, error: Exception) -> Response:
    """Answer a request that storage could not serve (database down, disk full or failing)
    with the 503 ``unavailable`` problem and ``Retry-After``; the cause is not disclosed."""
    del request
    return _unavailable(error).to_response()


def _counting(handlers: dict[Any, Any], service: LogService) -> dict[Any, Any]:
    """Wrap the problem handlers so every problem answer is counted by its type."""

    def wrap(handler: Callable[[Request, Exception], Awaitable[Response]]) -> Any:
        async def counted(request: Request, error: Exception) -> Response:
            response = await handler(request, error)
            slug = "internal"
            if isinstance(error, Problem):
                slug = error.slug
            elif isinstance(error, CodecError):
                slug = problem_from_codec_error(error).slug
            elif isinstance(error, HTTPException):
                slug = problem_from_http_exception(error).slug
            elif isinstance(error, StorageError):
                slug = "unavailable"
            service.metrics.errors.labels(slug).inc()
            return response

        return counted

    return {key: wrap(handler) for key, handler in handlers.items()}


def create_app(
    service: LogService,
    *,
    limits: Limits | None = None,
    prepare: EventPreparer | None = None,
    intake: Intake | None = None,
    read_guard: ReadGuard | None = None,
    extra_routes: list[Route] | None = None,
    openapi: Callable[[str], dict[str, Any]] | None = None,
    manage_service: bool = True,
) -> Starlette:
    """Return the Starlette application serving ``service``.

    With ``manage_service`` the app's lifespan starts and stops the service. ``prepare`` turns a
    decoded event into a submission (default: the map's deterministic CBOR encoding);
    ``intake`` replaces the whole submission path instead (give one of the two).
    ``read_guard`` restricts reading entry contents (default: public). ``extra_routes`` are
    added after the engine's; ``openapi`` builds the document of ``GET /openapi.json`` from the
    origin (default :func:`server.openapi.openapi_document`).

    Raises ValueError when both ``prepare`` and ``intake`` are given.
    """
    if prepare is not None and intake is not None:
        raise ValueError("give prepare or intake, not both")
    limits = limits or Limits()
    handlers = _Handlers(
        service,
        limits,
        intake or PreparerIntake(prepare or RawMapPreparer(service, limits)),
        read_guard,
        openapi or openapi_document,
    )
    routes = [
        Route("/checkpoint", handlers.checkpoint, methods=["GET"]),
        Route("/tile/{path:path}", handlers.tile, methods=["GET"]),
        Route("/v1/events", handlers.submit, methods=["POST"]),
        Route("/v1/events/batch", handlers.submit_batch, methods=["POST"]),
        Route("/v1/proof/inclusion", handlers.inclusion, methods=["GET"]),
        Route("/v1/proof/consistency", handlers.consistency, methods=["GET"]),
        Route("/v1/entries/{index}", handlers.entry, methods=["GET"]),
        Route("/v1/receipt/{index}", handlers.receipt, methods=["GET"]),
        Route("/healthz", handlers.healthz, methods=["GET"]),
        Route("/metrics", handlers.metrics, methods=["GET"]),
        Route("/openapi.json", handlers.openapi, methods=["GET"]),
        *(extra_routes or []),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if manage_service:
            await service.start()
        try:
            yield
        finally:
            if manage_service:
                await service.stop()

    errors = _counting({**exception_handlers(), StorageError: _storage_failed}, service)
    app = Starlette(routes=routes, exception_handlers=errors, lifespan=lifespan)
    app.add_middleware(_EarlyAnswers, handlers=handlers, errors=errors)
    app.state.cached_tile_answer = handlers.cached_tile_answer
    app.state.cached_inclusion_answer = handlers.cached_inclusion_answer
    app.state.log = service
    app.state.limits = limits
    return app
