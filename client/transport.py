"""A small HTTP/1.1 transport for :mod:`httpx`, for clients that read many small resources.

An audit reads two resources per 256 entries (an entry bundle and a tile) and recomputes about
2.5 ms of hashes for them; ``httpx``'s default transport (``httpcore``) spends several times
that in CPU per request on a busy machine, so it, not the hashing, would set the pace. This
transport does only what reading a log needs, on asyncio streams:

* ``http://`` and ``https://`` (TLS with the default verifying context), HTTP/1.1 only;
* keep-alive connections per origin, at most ``max_connections`` at a time in all;
* request bodies given whole (``Content-Length``); response bodies framed by
  ``Content-Length`` or ``chunked``, or read to the end of the connection, each at most
  ``max_response_bytes``; ``1xx`` interim answers skipped; ``HEAD``, ``204`` and ``304`` have
  none;
* a request on a reused connection that the server had already closed is sent once more on a
  new connection, for ``GET`` and ``HEAD`` only;
* the ``connect`` timeout of the request (``httpx.Timeout``) bounds opening a connection, its
  ``read`` timeout the whole exchange (sending the request and reading the answer).

Parsing is strict: a status line must be ``HTTP/1.x <3 digits> ...``, header lines
``name: value`` (no folding), ``Content-Length`` a canonical decimal (repeated values must agree),
chunk sizes hexadecimal digits. Anything else is an ``httpx.RemoteProtocolError``. Transport
failures are ``httpx.ConnectError`` / ``httpx.ReadError`` / ``httpx.WriteError``, timeouts
``httpx.ConnectTimeout`` / ``httpx.ReadTimeout``: the exceptions callers of ``httpx`` expect.
Proxies are not supported (use ``httpx``'s own transport behind one). Content codings are
left to ``httpx`` (the response carries the body as received, with its headers).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from dataclasses import dataclass, field
from typing import Final

import httpx

__all__ = ["Http11Pool", "Http11Transport", "RawAnswer", "origin_of"]

MAX_HEAD_BYTES: Final = 64 * 1024
"""Largest status line plus headers accepted."""

_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: [^\r\n]*)?\Z")
_HEADER_NAME = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_DECIMAL = re.compile(rb"(?:0|[1-9][0-9]{0,15})\Z")
# Octets not allowed in a header value: controls other than tab, and DEL.
_CONTROL_BYTES = bytes([*range(0x09), *range(0x0A, 0x20), 0x7F])
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})(?:;[^\r\n]*)?\Z")


class _ClosedError(Exception):
    """The server closed a reused connection before answering (safe to retry idempotent)."""


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    used: int = 0

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


@dataclass
class _Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    reusable: bool
    extra: dict[str, object] = field(default_factory=dict)


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [value for key, value in headers if key.lower() == name]


def _parse_head(head: bytes) -> tuple[int, int, list[tuple[bytes, bytes]]]:
    """Return (minor version, status, headers) of a response head (CRLF lines, no blank line)."""
    lines = head.split(b"\r\n")
    match = _STATUS_LINE.match(lines[0])
    if match is None:
        raise httpx.RemoteProtocolError("malformed status line")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _HEADER_NAME.match(name):
            raise httpx.RemoteProtocolError("malformed header line")
        value = value.strip(b" \t")
        if len(value.translate(None, _CONTROL_BYTES)) != len(value):
            raise httpx.RemoteProtocolError("control character in a header value")
        headers.append((name, value))
    return int(match.group(1)), int(match.group(2)), headers


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    values = _header(headers, b"content-length")
    if not values:
        return None
    parts = {part.strip() for value in values for part in value.split(b",")}
    if len(parts) != 1:
        raise httpx.RemoteProtocolError("conflicting Content-Length values")
    (text,) = parts
    if not _DECIMAL.match(text):
        raise httpx.RemoteProtocolError("Content-Length is not a canonical decimal")
    return int(text)


@dataclass(frozen=True, slots=True)
class RawAnswer:
    """A whole response: status, header fields in order, body as received."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


Origin = tuple[str, str, int]
"""``(scheme, host, port)`` of a server."""


class Http11Pool:
    """Keep-alive HTTP/1.1 connections, at most ``max_connections`` open at once in all.

    :meth:`request` sends one request and returns the whole answer; it raises the ``httpx``
    exceptions described in the module docstring (with ``request`` set when one is given).
    """

    def __init__(
        self,
        *,
        max_connections: int = 8,
        max_response_bytes: int = 64 * 1024 * 1024,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """Prepare the pool; connections are opened on demand."""
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: dict[Origin, list[_Connection]] = {}
        self._max_body = max_response_bytes
        self._ssl = ssl_context
        self.opened = 0

    async def aclose(self) -> None:
        """Close every idle connection."""
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()

    async def request(
        self,
        method: str,
        origin: Origin,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes = b"",
        *,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        request: httpx.Request | None = None,
    ) -> RawAnswer:
        """Send ``method target`` to ``origin`` with ``headers`` (``Host`` included) and body.

        Raises httpx.TransportError subclasses (module docstring).
        """
        if origin[0] not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported scheme {origin[0]!r}", request=request)
        data = _serialize(method, target, headers, body, request)
        idempotent = method in ("GET", "HEAD")
        async with self._slots:
            for attempt in range(2):
                connection = self._take(origin)
                reused = connection is not None
                if connection is None:
                    connection = await self._connect(request, origin, connect_timeout)
                try:
                    answer = await self._exchange(request, method, connection, data, read_timeout)
                except _ClosedError:
                    connection.close()
                    if reused and idempotent and attempt == 0:
                        continue
                    raise httpx.RemoteProtocolError(
                        "the server closed the connection without answering", request=request
                    ) from None
                except BaseException:
                    connection.close()
                    raise
                connection.used += 1
                if answer.reusable:
                    self._idle.setdefault(origin, []).append(connection)
                else:
                    connection.close()
                return RawAnswer(answer.status, answer.headers, answer.body)
        raise httpx.RemoteProtocolError("no answer", request=request)  # pragma: no cover

    def _take(self, origin: Origin) -> _Connection | None:
        pool = self._idle.get(origin)
        while pool:
            connection = pool.pop()
            if not connection.reader.at_eof():
                return connection
            connection.close()
        return None

    async def _connect(
        self, request: httpx.Request | None, origin: Origin, limit: float | None
    ) -> _Connection:
        scheme, host, port = origin
        context: ssl.SSLContext | None = None
        if scheme == "https":
            context = self._ssl or ssl.create_default_context()
        try:
            async with asyncio.timeout(limit):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=context, limit=MAX_HEAD_BYTES
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"no connection within {limit} s", request=request) from None
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(f"{type(exc).__name__}: {exc}", request=request) from None
        self.opened += 1
        return _Connection(reader, writer)

    async def _exchange(
        self,
        request: httpx.Request | None,
        method: str,
        connection: _Connection,
        data: bytes,
        limit: float | None,
    ) -> _Answer:
        try:
            async with asyncio.timeout(limit):
                connection.writer.write(data)
                await connection.writer.drain()
                return await self._read_answer(request, method, connection)
        except TimeoutError:
            raise httpx.ReadTimeout(f"no answer within {limit} s", request=request) from None
        except asyncio.LimitOverrunError:
            raise httpx.RemoteProtocolError("response head too large", request=request) from None
        except httpx.HTTPError:
            raise
        except (ConnectionError, OSError) as exc:
            if connection.used and isinstance(exc, ConnectionResetError | BrokenPipeError):
                raise _ClosedError from None
            raise httpx.ReadError(f"{type(exc).__name__}: {exc}", request=request) from None

    async def _read_answer(
        self, request: httpx.Request | None, method: str, connection: _Connection
    ) -> _Answer:
        reader = connection.reader
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                if not exc.partial and connection.used:
                    raise _ClosedError from None
                raise httpx.RemoteProtocolError(
                    "the connection closed inside the response head", request=request
                ) from None
            minor, status, headers = _parse_head(head[:-4])
            if 100 <= status < 200 and status != 101:
                continue
            break
        tokens = [v.lower() for value in _header(headers, b"connection") for v in value.split(b",")]
        options = {token.strip() for token in tokens}
        closing = b"close" in options or (minor == 0 and b"keep-alive" not in options)
        if method == "HEAD" or status in (204, 304):
            return _Answer(status, headers, b"", not closing)
        encodings = [
            v.strip().lower() for value in _header(headers, b"transfer-encoding")
            for v in value.split(b",")
        ]
        if encodings:
            if encodings[-1] != b"chunked":
                raise httpx.RemoteProtocolError("unsupported transfer coding", request=request)
            return _Answer(status, headers, await self._chunked(request, reader), not closing)
        length = _content_length(headers)
        if length is None:
            body = await self._until_eof(request, reader)
            return _Answer(status, headers, body, False)
        if length > self._max_body:
            raise httpx.RemoteProtocolError("response body too large", request=request)
        try:
            body = await reader.readexactly(length)
        except asyncio.IncompleteReadError:
            raise httpx.RemoteProtocolError(
                "the connection closed inside the response body", request=request
            ) from None
        return _Answer(status, headers, body, not closing)

    async def _chunked(
        self, request: httpx.Request | None, reader: asyncio.StreamReader
    ) -> bytes:
        parts: list[bytes] = []
        total = 0
        try:
            while True:
                line = (await reader.readuntil(b"\r\n"))[:-2]
                match = _CHUNK_SIZE.match(line)
                if match is None:
                    raise httpx.RemoteProtocolError("malformed chunk size", request=request)
                size = int(match.group(1), 16)
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass  # trailer fields are ignored
                    return b"".join(parts)
                total += size
                if total > self._max_body:
                    raise httpx.RemoteProtocolError("response body too large", request=request)
                parts.append(await reader.readexactly(size))
                if await reader.readexactly(2) != b"\r\n":
                    raise httpx.RemoteProtocolError("malformed chunk end", request=request)
        except asyncio.IncompleteReadError:
            raise httpx.RemoteProtocolError(
                "the connection closed inside a chunked body", request=request
            ) from None

    async def _until_eof(
        self, request: httpx.Request | None, reader: asyncio.StreamReader
    ) -> bytes:
        parts: list[bytes] = []
        total = 0
        while chunk := await reader.read(65536):
            total += len(chunk)
            if total > self._max_body:
                raise httpx.RemoteProtocolError("response body too large", request=request)
            parts.append(chunk)
        return b"".join(parts)


def _serialize(
    method: str,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    request: httpx.Request | None,
) -> bytes:
    lines = [method.encode("ascii") + b" " + (target or b"/") + b" HTTP/1.1"]
    has_length = False
    for name, value in headers:
        if any(c in value or c in name for c in (b"\r", b"\n")):
            raise httpx.LocalProtocolError("line break in a header", request=request)
        has_length = has_length or name.lower() == b"content-length"
        lines.append(name + b": " + value)
    if body and not has_length:
        lines.append(b"Content-Length: " + str(len(body)).encode("ascii"))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def origin_of(url: httpx.URL) -> Origin:
    """Return ``(scheme, host, port)`` of a URL (default ports filled in)."""
    return url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80)


class Http11Transport(httpx.AsyncBaseTransport):
    """:class:`Http11Pool` as an ``httpx`` transport: ``httpx.AsyncClient(transport=...)``.

    ``pool`` may be shared with callers that use :meth:`Http11Pool.request` directly.
    """

    def __init__(self, pool: Http11Pool | None = None, *, max_connections: int = 8) -> None:
        """Use ``pool``, or a new :class:`Http11Pool` of ``max_connections``."""
        self.pool = pool or Http11Pool(max_connections=max_connections)

    async def aclose(self) -> None:
        """Close the pool's idle connections."""
        await self.pool.aclose()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and return the whole response (see the module docstring)."""
        timeouts = request.extensions.get("timeout", {})
        body = await request.aread()
        answer = await self.pool.request(
            request.method,
            origin_of(request.url),
            request.url.raw_path,
            list(request.headers.raw),
            body,
            connect_timeout=timeouts.get("connect"),
            read_timeout=timeouts.get("read"),
            request=request,
        )
        return httpx.Response(
            answer.status,
            headers=answer.headers,
            content=answer.body,
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )
