"""RFC 9457 problem details: the one place where Etch's errors become HTTP answers.

Every error the JSON API returns is an ``application/problem+json`` document whose ``type`` is a
stable URN, ``urn:etch:error:<slug>``, drawn from :data:`PROBLEM_TYPES`. Clients branch on the
slug, never on ``title`` or ``detail`` (RFC 9457 §3.1). A 4xx answer means "do not retry
unchanged"; 503 and 429 carry ``Retry-After`` (RFC 9110 §10.2.3): retry later.

======================  ======  =========================================================
slug                    status  meaning
======================  ======  =========================================================
bad-json                400     the body is not UTF-8 JSON
bad-cbor                400     the body is not well-formed (or not accepted) CBOR
bad-parameter           400     a path or query parameter is malformed
index-out-of-range      400     a leaf index is not below the tree size
tree-size-unknown       400     no checkpoint of that tree size was ever signed
consistency-range       400     consistency sizes are not 0 < first <= second <= size
unauthorized            401     no or bad submitter credential (``WWW-Authenticate``)
forbidden               403     the credential does not allow this
not-found               404     no such resource
method-not-allowed      405     wrong method (``Allow``)
conflict                409     the request conflicts with the log's state
jti-conflict            409     the submitter's jti was already logged with another event
log-frozen              409     the log is frozen: it serves reads, its successor takes entries
payload-too-large       413     body, string or item count over a limit
entry-too-large         413     the encoded entry would exceed 65,535 bytes
unsupported-media-type  415     neither ``application/json`` nor ``application/cbor``
bad-event               422     not an event (not a map, missing or wrong fields)
float-not-allowed       422     a float, NaN or Infinity (also JSON ``1.0``, ``1e3``)
too-deep                422     nesting beyond the depth limit
duplicate-key           422     a map key appears twice
unsupported-type        422     a tag, simple value, non-text key or out-of-range integer
forbidden-field         422     a field that must never be logged (raw token, secret, ...)
bad-signature           422     the submitter's event signature is missing or does not verify
rate-limited            429     too many requests (``Retry-After``)
internal                500     a bug; nothing about it is disclosed
unavailable             503     temporarily unable to serve (``Retry-After``)
======================  ======  =========================================================

Details name fields and rules, never input values: secrets submitted by mistake must not come
back in an error body or a log line. As a safety net :class:`Problem` replaces long token-like
runs in ``detail`` with ``[redacted]`` and caps its length.

Example body::

    {"type": "urn:etch:error:float-not-allowed", "title": "Floats are not allowed",
     "status": 422, "detail": "floats, NaN and Infinity are not allowed", "pointer": "/iat"}
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ExceptionHandler

from server.codec import CodecError, JSONValue

__all__ = [
    "PROBLEM_MEDIA_TYPE",
    "PROBLEM_TYPES",
    "PROBLEM_TYPE_PREFIX",
    "Problem",
    "ProblemType",
    "exception_handlers",
    "handle_exception",
    "problem_from_codec_error",
    "problem_from_http_exception",
]

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE: Final = "application/problem+json"
"""RFC 9457 §3 media type of every error body."""
PROBLEM_TYPE_PREFIX: Final = "urn:etch:error:"
"""Prefix of every problem ``type`` URN; the slug follows."""

_MAX_DETAIL: Final = 500
_RESERVED_MEMBERS: Final = frozenset({"type", "title", "status", "detail", "instance"})
_SLUG: Final = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*\Z")
# A run that may be a credential: 32+ characters of the base64 / base64url / hex / JWT alphabet
# (redacted when it holds both a letter and a digit).
_TOKEN_RUN: Final = re.compile(r"[A-Za-z0-9+/=_.~-]{32,}")
_DIGIT: Final = re.compile(r"[0-9]")
_LETTER: Final = re.compile(r"[A-Za-z]")


@dataclass(frozen=True, slots=True)
class ProblemType:
    """One stable problem type: its slug, HTTP status, title and default headers.

    ``retry_after`` is the default ``Retry-After`` in seconds (``None``: none is sent by default).
    """

    slug: str
    status: int
    title: str
    retry_after: int | None = None
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def uri(self) -> str:
        """Return the ``type`` member, e.g. ``urn:etch:error:bad-json``."""
        return PROBLEM_TYPE_PREFIX + self.slug


def _table(*types: ProblemType) -> Mapping[str, ProblemType]:
    """Index problem types by slug, refusing malformed or repeated slugs."""
    table: dict[str, ProblemType] = {}
    for problem_type in types:
        if not _SLUG.match(problem_type.slug) or problem_type.slug in table:
            raise ValueError(f"bad or repeated problem slug {problem_type.slug!r}")
        table[problem_type.slug] = problem_type
    return MappingProxyType(table)


PROBLEM_TYPES: Final = _table(
    ProblemType("bad-json", 400, "Body is not valid JSON"),
    ProblemType("bad-cbor", 400, "Body is not valid CBOR"),
    ProblemType("bad-parameter", 400, "Malformed parameter"),
    ProblemType("index-out-of-range", 400, "Index is not below the tree size"),
    ProblemType("tree-size-unknown", 400, "Tree size not known to this log"),
    ProblemType("consistency-range", 400, "Invalid consistency proof range"),
    ProblemType(
        "unauthorized", 401, "Authentication required", headers=(("WWW-Authenticate", "Bearer"),)
    ),
    ProblemType("forbidden", 403, "Not allowed"),
    ProblemType("not-found", 404, "Not found"),
    ProblemType("method-not-allowed", 405, "Method not allowed"),
    ProblemType("conflict", 409, "Conflict with the log's state"),
    ProblemType("jti-conflict", 409, "The jti was already used for a different event"),
    ProblemType("log-frozen", 409, "The log is frozen and takes no more entries"),
    ProblemType("payload-too-large", 413, "Request is too large"),
    ProblemType("entry-too-large", 413, "Encoded entry is too large"),
    ProblemType("unsupported-media-type", 415, "Unsupported media type"),
    ProblemType("bad-event", 422, "Not a valid event"),
    ProblemType("float-not-allowed", 422, "Floats are not allowed"),
    ProblemType("too-deep", 422, "Nesting is too deep"),
    ProblemType("duplicate-key", 422, "Duplicate map key"),
    ProblemType("unsupported-type", 422, "Unsupported value type"),
    ProblemType("forbidden-field", 422, "Field must never be logged"),
    ProblemType("bad-signature", 422, "Event signature missing or invalid"),
    ProblemType("rate-limited", 429, "Too many requests", retry_after=1),
    ProblemType("internal", 500, "Internal error"),
    ProblemType("unavailable", 503, "Temporarily unavailable", retry_after=1),
)
"""Every problem type the log answers with, by slug (read-only)."""

_CODEC_SLUGS: Final = MappingProxyType(
    {"too-large": "payload-too-large", "not-deterministic": "bad-cbor"}
)
_STATUS_SLUGS: Final = MappingProxyType(
    {
        400: "bad-parameter",
        401: "unauthorized",
        403: "forbidden",
        404: "not-found",
        405: "method-not-allowed",
        409: "conflict",
        413: "payload-too-large",
        415: "unsupported-media-type",
        422: "bad-event",
        429: "rate-limited",
        503: "unavailable",
    }
)


def _redact_run(match: re.Match[str]) -> str:
    """Return ``[redacted]`` for a run holding a letter and a digit, else the run itself."""
    run = match.group()
    return "[redacted]" if _DIGIT.search(run) and _LETTER.search(run) else run


def _safe_detail(detail: str) -> str:
    """Replace token-like runs and control characters in ``detail`` and cap its length."""
    cleaned = _TOKEN_RUN.sub(_redact_run, detail)
    cleaned = "".join(c if c.isprintable() else " " for c in cleaned)
    if len(cleaned) > _MAX_DETAIL:
        cleaned = cleaned[: _MAX_DETAIL - 1] + "…"
    return cleaned


class Problem(Exception):  # noqa: N818 (the contract names it Problem: it is an answer)
    """An RFC 9457 problem: raise it anywhere below a route to answer with it.

    ``slug`` selects a row of :data:`PROBLEM_TYPES` (status and title come from it). ``detail``
    explains this occurrence: name fields and rules, never echo input values (long token-like
    runs are redacted anyway). ``extra`` adds extension members (RFC 9457 §3.2), e.g.
    ``{"pointer": "/iat"}``; ``headers`` adds response headers; ``retry_after`` (seconds) sets
    ``Retry-After``, defaulting to the type's own for ``unavailable`` and ``rate-limited``.
    Example: ``raise Problem("tree-size-unknown", "tree size 12 was never signed")``.

    Raises ValueError for an unknown slug, an extension member that shadows a standard member,
    or a negative ``retry_after``.
    """

    def __init__(
        self,
        slug: str,
        detail: str | None = None,
        *,
        extra: Mapping[str, JSONValue] | None = None,
        headers: Mapping[str, str] | None = None,
        retry_after: int | None = None,
        instance: str | None = None,
    ) -> None:
        try:
            problem_type = PROBLEM_TYPES[slug]
        except KeyError:
            raise ValueError(f"unknown problem type {slug!r}") from None
        reserved = _RESERVED_MEMBERS.intersection(extra or {})
        if reserved:
            raise ValueError(f"extension members shadow standard ones: {sorted(reserved)}")
        if retry_after is not None and retry_after < 0:
            raise ValueError("retry_after must not be negative")
        self.problem_type = problem_type
        self.detail = None if detail is None else _safe_detail(detail)
        self.extra: Mapping[str, JSONValue] = dict(extra or {})
        self.instance = instance
        merged = dict(problem_type.headers)
        seconds = problem_type.retry_after if retry_after is None else retry_after
        if seconds is not None:
            merged["Retry-After"] = str(seconds)
        merged.update(headers or {})
        self.headers: Mapping[str, str] = merged
        super().__init__(f"{slug}: {self.detail}" if self.detail else slug)

    @property
    def slug(self) -> str:
        """Return the problem type's slug, e.g. ``bad-json``."""
        return self.problem_type.slug

    @property
    def status(self) -> int:
        """Return the HTTP status code of this problem type."""
        return self.problem_type.status

    @property
    def type(self) -> str:
        """Return the ``type`` URN, e.g. ``urn:etch:error:bad-json``."""
        return self.problem_type.uri

    @property
    def title(self) -> str:
        """Return the short human summary of this problem type."""
        return self.problem_type.title

    def to_dict(self) -> dict[str, JSONValue]:
        """Return the RFC 9457 §3.1 members (type, title, status, detail, instance) and extras."""
        body: dict[str, JSONValue] = {"type": self.type, "title": self.title, "status": self.status}
        if self.detail is not None:
            body["detail"] = self.detail
        if self.instance is not None:
            body["instance"] = self.instance
        body.update(self.extra)
        return body

    def to_response(self) -> Response:
        """Return the Starlette response: ``application/problem+json`` body, status, headers."""
        content = json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))
        return Response(
            content.encode("utf-8"),
            status_code=self.status,
            headers=self.headers,
            media_type=PROBLEM_MEDIA_TYPE,
        )


def problem_from_codec_error(error: CodecError) -> Problem:
    """Return the Problem that answers a refused submission.

    The slug is the codec's ``problem_type`` except ``too-large`` -> ``payload-too-large`` and
    ``not-deterministic`` -> ``bad-cbor``; the JSON pointer, when known, becomes the ``pointer``
    extension member. Unknown codec slugs become ``bad-event``.
    """
    slug = _CODEC_SLUGS.get(error.problem_type, error.problem_type)
    if slug not in PROBLEM_TYPES:
        slug = "bad-event"
    extra: dict[str, JSONValue] = {}
    if error.pointer is not None:
        extra["pointer"] = error.pointer
    return Problem(slug, error.detail, extra=extra)


def problem_from_http_exception(error: HTTPException) -> Problem:
    """Return the Problem for a Starlette ``HTTPException`` (routing 404 and 405 among others).

    Known statuses map to their slug (keeping headers such as ``Allow``); other 4xx statuses
    become ``bad-parameter`` and 5xx ``internal``.
    """
    slug = _STATUS_SLUGS.get(error.status_code)
    if slug is None:
        slug = "internal" if error.status_code >= 500 else "bad-parameter"
    detail = None if slug == "internal" else error.detail
    return Problem(slug, detail, headers=error.headers)


async def handle_exception(request: Request, error: Exception) -> Response:
    """Starlette exception handler: answer any exception with a problem document.

    ``Problem`` answers as itself, ``CodecError`` and ``HTTPException`` are translated, and
    anything else is a 500 ``internal`` problem that discloses nothing: it is logged here by
    type and path only (exception messages may hold input), and Starlette's server-error
    middleware then re-raises it to the server.
    """
    if isinstance(error, Problem):
        return error.to_response()
    if isinstance(error, CodecError):
        return problem_from_codec_error(error).to_response()
    if isinstance(error, HTTPException):
        return problem_from_http_exception(error).to_response()
    logger.error(
        "unhandled %s on %s %s", type(error).__name__, request.method, request.url.path
    )
    return Problem("internal").to_response()


def exception_handlers() -> dict[type[Exception] | int, ExceptionHandler]:
    """Return the ``exception_handlers`` mapping for ``Starlette(...)``.

    Registers :func:`handle_exception` for Problem, CodecError, HTTPException and Exception
    (Starlette routes the last one through its server-error middleware).
    """
    return {
        Problem: handle_exception,
        CodecError: handle_exception,
        HTTPException: handle_exception,
        Exception: handle_exception,
    }
