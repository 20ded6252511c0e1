"""The witness's HTTP interface (Starlette): routes, and the one table from errors to statuses.

Routes (the submission and monitoring prefixes of tlog-witness are both the root)::

    POST /add-checkpoint                  C2SP tlog-witness; answers the cosignature line(s)
    GET  /<hex sha256(origin)>/checkpoint latest cosigned checkpoint (log signature + ours), 404
    POST /check                           body: a signed checkpoint; JSON: consistent or not
    GET  /evidence[/<hex origin hash>]    evidence records, JSON, paged with ?after=ID&limit=N
    GET  /evidence/<hex origin hash>/<id> one evidence document, as stored (for verify_evidence)
    GET  /refused[/<hex origin hash>]     refused-checkpoint records, JSON, paged
    GET  /logs                            the followed logs and this witness's name and vkey
    GET  /healthz                         200 when the database answers, 503 otherwise
    GET  /metrics                         Prometheus text format
    GET  /openapi.json                    the OpenAPI 3.1 document (witness.openapi)

Errors become answers in :data:`ERROR_STATUS` only. ``add-checkpoint`` answers errors as
``text/plain`` (a 409 size conflict as ``text/x.tlog.size`` with body ``<size>\\n``, a 429 with
``Retry-After``); the JSON routes answer RFC 9457 problem details. Request bodies above the
configured limit are refused with 413 before they are parsed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from merkle.checkpoint import parse_decimal
from merkle.errors import MalformedError
from witness.core import Witness, origin_hash
from witness.errors import (
    BodyTooLargeError,
    LogBlockedError,
    LogSignatureError,
    MalformedRequestError,
    ProofRefusedError,
    RateLimitedError,
    RootConflictError,
    SizeConflictError,
    StorageError,
    StorageUnavailableError,
    UnknownLogError,
    WitnessError,
)
from witness.explorer import explorer_routes
from witness.gossip import Gossip
from witness.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from witness.openapi import openapi_document
from witness.storage.base import StoredRecord

__all__ = ["ERROR_STATUS", "Components", "create_app"]

logger = logging.getLogger(__name__)

ERROR_STATUS: tuple[tuple[type[WitnessError], int, str], ...] = (
    (MalformedRequestError, 400, "bad-request"),
    (UnknownLogError, 404, "unknown-log"),
    (LogSignatureError, 403, "bad-log-signature"),
    (LogBlockedError, 403, "log-blocked"),
    (SizeConflictError, 409, "size-conflict"),
    (RootConflictError, 409, "root-conflict"),
    (ProofRefusedError, 422, "proof-refused"),
    (BodyTooLargeError, 413, "payload-too-large"),
    (RateLimitedError, 429, "rate-limited"),
    (StorageUnavailableError, 503, "unavailable"),
    (StorageError, 500, "internal"),
)
"""Error class -> (HTTP status, problem type suffix), first match wins."""

TLOG_SIZE_TYPE = "text/x.tlog.size"
_TEXT = "text/plain; charset=utf-8"
_HEX_HASH = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class Components:
    """What the application serves: the witness, its gossip, and the request body limit."""

    witness: Witness
    gossip: Gossip
    max_body_bytes: int = 64 * 1024
    run_gossip: bool = True


def _status(exc: WitnessError) -> tuple[int, str]:
    for cls, status, slug in ERROR_STATUS:
        if isinstance(exc, cls):
            return status, slug
    return 500, "internal"


def _text_error(exc: WitnessError) -> Response:
    status, _ = _status(exc)
    if isinstance(exc, SizeConflictError):
        # Exactly "text/x.tlog.size" (tlog-witness): no charset parameter appended.
        return Response(f"{exc.known_size}\n", status, {"Content-Type": TLOG_SIZE_TYPE})
    headers = _retry_headers(exc)
    return Response(f"{_public_message(exc, status)}\n", status, headers, media_type=_TEXT)


def _problem(exc: WitnessError) -> Response:
    status, slug = _status(exc)
    body = {
        "type": f"urn:etch:error:witness-{slug}",
        "title": slug.replace("-", " "),
        "status": status,
        "detail": _public_message(exc, status),
    }
    return JSONResponse(body, status, _retry_headers(exc), media_type="application/problem+json")


def _public_message(exc: WitnessError, status: int) -> str:
    return "internal error" if status == 500 else str(exc)


def _retry_headers(exc: WitnessError) -> dict[str, str]:
    if isinstance(exc, RateLimitedError):
        return {"Retry-After": str(exc.retry_after)}
    if isinstance(exc, StorageUnavailableError):
        return {"Retry-After": "1"}
    return {}


def _components(request: Request) -> Components:
    components: Components = request.app.state.components
    return components


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise BodyTooLargeError(f"request body is larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLargeError(f"request body is larger than {limit} bytes")
    return bytes(body)


Handler = Callable[[Request], Awaitable[Response]]


def _endpoint(name: str, *, problems: bool) -> Callable[[Handler], Handler]:
    """Wrap a handler: map WitnessError through ERROR_STATUS and count the answer."""

    def wrap(handler: Handler) -> Handler:
        async def run(request: Request) -> Response:
            try:
                response = await handler(request)
            except WitnessError as exc:
                if isinstance(exc, StorageError):
                    logger.error("%s failed: %s", name, exc)
                response = _problem(exc) if problems else _text_error(exc)
            _components(request).witness.metrics.requests.labels(
                name, str(response.status_code)
            ).inc()
            return response

        return run

    return wrap


# --------------------------------------------------------------------------- tlog-witness


@_endpoint("add-checkpoint", problems=False)
async def add_checkpoint(request: Request) -> Response:
    """POST /add-checkpoint: C2SP tlog-witness; the body of a 200 is the cosignature line(s)."""
    components = _components(request)
    body = await _read_body(request, components.max_body_bytes)
    cosignature = await components.witness.add_checkpoint(body)
    return Response(cosignature, 200, media_type=_TEXT)


def _origin(witness: Witness, hex_hash: str) -> str:
    origin = witness.by_hash.get(hex_hash) if _HEX_HASH.fullmatch(hex_hash) else None
    if origin is None:
        raise UnknownLogError("unknown origin")
    return origin


@_endpoint("checkpoint", problems=False)
async def get_checkpoint(request: Request) -> Response:
    """GET /<hex sha256(origin)>/checkpoint: the latest cosigned checkpoint, 404 if none."""
    witness = _components(request).witness
    origin = _origin(witness, request.path_params["origin_hash"])
    stored = await witness.storage.latest(origin)
    if stored is None:
        raise UnknownLogError("no cosigned checkpoint for this origin yet")
    return Response(stored.note, 200, {"Cache-Control": "no-cache, max-age=0"}, media_type=_TEXT)


# --------------------------------------------------------------------------- checks, records


@_endpoint("check", problems=True)
async def check(request: Request) -> Response:
    """POST /check: is this signed checkpoint consistent with what the witness has seen?"""
    components = _components(request)
    body = await _read_body(request, components.max_body_bytes)
    result = await components.gossip.check(body, source="check", rate_limited=True)
    return JSONResponse(
        {
            "origin": result.origin,
            "tree_size": result.tree_size,
            "witness_tree_size": result.witness_tree_size,
            "consistent": result.consistent,
            "reason": result.reason,
            "evidence_id": result.evidence_id,
        }
    )


def _page(request: Request) -> tuple[int, int]:
    try:
        after = parse_decimal(request.query_params.get("after", "0"), what="after")
        limit = parse_decimal(request.query_params.get("limit", "100"), what="limit")
    except MalformedError as exc:
        raise MalformedRequestError(str(exc)) from None
    if not 1 <= limit <= 1000 or after >= 2**63:
        raise MalformedRequestError("limit must be in 1..1000")
    return after, limit


def _record_json(record: StoredRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "origin": record.origin,
        "origin_hash": origin_hash(record.origin),
        "kind": record.kind,
        "recorded_at": record.recorded_at,
        "document": json.loads(record.document),
    }


def _records(records: list[StoredRecord], key: str, limit: int) -> Response:
    next_after = records[-1].id if len(records) == limit else None
    return JSONResponse({key: [_record_json(r) for r in records], "next_after": next_after})


@_endpoint("evidence", problems=True)
async def list_evidence(request: Request) -> Response:
    """GET /evidence[/<hex origin hash>]: evidence records in id order, paged."""
    witness = _components(request).witness
    hex_hash = request.path_params.get("origin_hash")
    origin = None if hex_hash is None else _origin(witness, hex_hash)
    after, limit = _page(request)
    records = await witness.storage.list_evidence(origin, after=after, limit=limit)
    return _records(records, "evidence", limit)


@_endpoint("evidence-document", problems=True)
async def get_evidence(request: Request) -> Response:
    """GET /evidence/<hex origin hash>/<id>: one evidence document exactly as stored."""
    witness = _components(request).witness
    origin = _origin(witness, request.path_params["origin_hash"])
    try:
        record_id = parse_decimal(request.path_params["record_id"], what="evidence id")
    except MalformedError:
        raise UnknownLogError("no such evidence record") from None
    record = await witness.storage.get_evidence(record_id)
    if record is None or record.origin != origin:
        raise UnknownLogError("no such evidence record")
    return Response(record.document, 200, media_type="application/json")


@_endpoint("refused", problems=True)
async def list_refused(request: Request) -> Response:
    """GET /refused[/<hex origin hash>]: refused-checkpoint records in id order, paged."""
    witness = _components(request).witness
    hex_hash = request.path_params.get("origin_hash")
    origin = None if hex_hash is None else _origin(witness, hex_hash)
    after, limit = _page(request)
    records = await witness.storage.list_refused(origin, after=after, limit=limit)
    return _records(records, "refused", limit)


# --------------------------------------------------------------------------- operations


@_endpoint("logs", problems=True)
async def list_logs(request: Request) -> Response:
    """GET /logs: the witness's identity and every followed log with its latest size."""
    witness = _components(request).witness
    latest = {stored.origin: stored.tree_size for stored in await witness.storage.latest_all()}
    evidence = await witness.storage.evidence_counts()
    logs = [
        {
            "origin": log.origin,
            "origin_hash": origin_hash(log.origin),
            "vkeys": list(log.vkeys),
            "url": log.url,
            "qpd": log.qpd,
            "tree_size": latest.get(log.origin),
            "evidence": evidence.get(log.origin, 0),
        }
        for log in witness.logs.values()
    ]
    return JSONResponse({"witness": {"name": witness.name, "vkey": witness.vkey}, "logs": logs})


@_endpoint("healthz", problems=True)
async def healthz(request: Request) -> Response:
    """GET /healthz: 200 ``{"status": "ok"}`` when a database read succeeds."""
    await _components(request).witness.storage.evidence_counts()
    return JSONResponse({"status": "ok"})


@_endpoint("metrics", problems=True)
async def metrics(request: Request) -> Response:
    """GET /metrics: Prometheus text exposition of the witness's registry."""
    rendered = _components(request).witness.metrics.render()
    return Response(rendered, 200, media_type=METRICS_CONTENT_TYPE)


async def openapi(request: Request) -> Response:
    """GET /openapi.json: the OpenAPI 3.1 document of this API (:mod:`witness.openapi`)."""
    return JSONResponse(openapi_document(_components(request).witness.name))


def create_app(
    components: Callable[[], AbstractAsyncContextManager[Components]],
) -> Starlette:
    """Return the witness application.

    ``components`` is entered in the application's lifespan (it typically opens storage and
    the HTTP client, and closes them on exit); when ``run_gossip`` is set, the gossip loop runs
    as a task for the lifetime of the application.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with components() as ready:
            app.state.components = ready
            await ready.witness.load_metrics()
            task = None
            if ready.run_gossip:
                task = asyncio.get_running_loop().create_task(ready.gossip.run())
            try:
                yield
            finally:
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    routes = [
        Route("/add-checkpoint", add_checkpoint, methods=["POST"]),
        Route("/check", check, methods=["POST"]),
        Route("/logs", list_logs, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/evidence", list_evidence, methods=["GET"]),
        Route("/evidence/{origin_hash}", list_evidence, methods=["GET"]),
        Route("/evidence/{origin_hash}/{record_id}", get_evidence, methods=["GET"]),
        Route("/refused", list_refused, methods=["GET"]),
        Route("/refused/{origin_hash}", list_refused, methods=["GET"]),
        Route("/{origin_hash}/checkpoint", get_checkpoint, methods=["GET"]),
        *explorer_routes(),  # GET /explorer: the witness page (witness.explorer)
    ]
    return Starlette(routes=routes, lifespan=lifespan)
