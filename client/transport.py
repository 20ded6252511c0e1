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

:class:`PipelinedGet` reads many resources of one origin for bulk readers (the audit): requests
pipelined on a few keep-alive connections (RFC 9112 §9.3.2), answers parsed as bytes arrive in a
buffered protocol and returned in request order, unanswered requests sent again when a server
closes a connection.

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
import collections
import contextlib
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import httpx

__all__ = ["Http11Pool", "Http11Transport", "PipelinedGet", "RawAnswer", "origin_of"]

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


# --------------------------------------------------------------------------- pipelined GETs

_READ_SIZE: Final = 256 * 1024


class _PipeProtocol(asyncio.BufferedProtocol):
    """One keep-alive connection of a :class:`PipelinedGet`: parses answers as bytes arrive.

    Bytes are received into a fixed scratch buffer and appended to ``pending`` (never exported,
    so it can shrink from the front in O(1)); each complete answer goes to the owner with the
    sequence number of the oldest request in flight on this connection.
    """

    def __init__(self, owner: PipelinedGet) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.inflight: collections.deque[int] = collections.deque()
        self.answered = 0
        self.closed = False
        self.draining = False  # no more requests: the answer being read ends the connection
        self._scratch = bytearray(_READ_SIZE)
        self._view = memoryview(self._scratch)
        self._pending = bytearray()
        # The head of the answer being read: (status, headers, closing), then its framing.
        self._head: tuple[int, list[tuple[bytes, bytes]], bool] | None = None
        self._length: int | None = None  # Content-Length of the answer being read
        self._chunked = False
        self._chunks: list[bytes] = []
        self._chunk_total = 0

    # -- asyncio callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self._pending += self._view[:nbytes]
        try:
            self._parse()
        except httpx.HTTPError as exc:
            self.owner._fail(exc)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._head is not None and self._length is None and not self._chunked:
            # A body delimited by the end of the connection: it is complete now.
            status, headers, _ = self._head
            self._head = None
            if len(self.inflight) == 1:
                self._deliver(RawAnswer(status, headers, bytes(self._pending)))
            else:
                self.owner._fail(
                    httpx.RemoteProtocolError("an answer without length inside a pipeline")
                )
                return
        self.owner._lost(self, exc)

    # -- parsing ----------------------------------------------------------------------------

    def _parse(self) -> None:
        pending = self._pending
        max_body = self.owner.max_response_bytes
        while pending:
            if not self.inflight:
                raise httpx.RemoteProtocolError("an answer that no request asked for")
            if self._head is None:
                end = pending.find(b"\r\n\r\n")
                if end < 0:
                    if len(pending) > MAX_HEAD_BYTES:
                        raise httpx.RemoteProtocolError("response head too large")
                    return
                minor, status, headers = _parse_head(bytes(pending[:end]))
                del pending[: end + 4]
                if 100 <= status < 200 and status != 101:
                    continue
                tokens = [
                    v.strip().lower() for value in _header(headers, b"connection")
                    for v in value.split(b",")
                ]
                closing = b"close" in tokens or (minor == 0 and b"keep-alive" not in tokens)
                self._head = (status, headers, closing)
                encodings = [
                    v.strip().lower() for value in _header(headers, b"transfer-encoding")
                    for v in value.split(b",")
                ]
                if status in (204, 304):
                    self._length = 0
                elif encodings:
                    if encodings[-1] != b"chunked":
                        raise httpx.RemoteProtocolError("unsupported transfer coding")
                    self._chunked = True
                else:
                    self._length = _content_length(headers)
                    if self._length is None:
                        # Read to the end of the connection (connection_lost); no request
                        # after this one can be answered on it.
                        if len(self.inflight) > 1:
                            raise httpx.RemoteProtocolError(
                                "an answer without length inside a pipeline"
                            )
                        self.draining = True
                        continue
                    if self._length > max_body:
                        raise httpx.RemoteProtocolError("response body too large")
            if self._chunked:
                body = self._parse_chunks(max_body)
                if body is None:
                    return
            else:
                length = self._length
                if length is None:
                    if len(pending) > max_body:
                        raise httpx.RemoteProtocolError("response body too large")
                    return
                if len(pending) < length:
                    return
                body = bytes(pending[:length])
                del pending[:length]
            status, headers, closing = self._head
            self._head, self._length, self._chunked = None, None, False
            self._deliver(RawAnswer(status, headers, body))
            if closing:
                self.owner._retire(self)
                return

    def _parse_chunks(self, max_body: int) -> bytes | None:
        """Consume complete chunks from ``pending``; return the body after the last one."""
        pending = self._pending
        while True:
            end = pending.find(b"\r\n")
            if end < 0:
                if len(pending) > MAX_HEAD_BYTES:
                    raise httpx.RemoteProtocolError("malformed chunk size")
                return None
            match = _CHUNK_SIZE.match(bytes(pending[:end]))
            if match is None:
                raise httpx.RemoteProtocolError("malformed chunk size")
            size = int(match.group(1), 16)
            if size == 0:
                # Trailer fields (ignored) up to an empty line.
                at = end + 2
                while True:
                    stop = pending.find(b"\r\n", at)
                    if stop < 0:
                        if len(pending) > MAX_HEAD_BYTES:
                            raise httpx.RemoteProtocolError("trailer too large")
                        return None
                    if stop == at:
                        del pending[: stop + 2]
                        body = b"".join(self._chunks)
                        self._chunks, self._chunk_total = [], 0
                        return body
                    at = stop + 2
            if self._chunk_total + size > max_body:
                raise httpx.RemoteProtocolError("response body too large")
            start = end + 2
            if len(pending) < start + size + 2:
                return None
            if pending[start + size : start + size + 2] != b"\r\n":
                raise httpx.RemoteProtocolError("malformed chunk end")
            self._chunks.append(bytes(pending[start : start + size]))
            self._chunk_total += size
            del pending[: start + size + 2]

    def _deliver(self, answer: RawAnswer) -> None:
        self.answered += 1
        self.owner._deliver(self.inflight.popleft(), answer, self)

    def send(self, requests: list[bytes]) -> None:
        assert self.transport is not None
        self.transport.write(b"".join(requests))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class PipelinedGet:
    """GETs many resources of one origin, pipelined on a few keep-alive connections.

    For bulk readers (the audit): ``targets`` are request targets (``/path``), sent as GET
    with ``headers`` (``Host`` included). Each of at most ``connections`` connections keeps up
    to ``depth`` requests in flight (HTTP/1.1 pipelining, RFC 9112 §9.3.2: answers come in
    request order), and no request is sent more than ``window`` ahead of the answer the caller
    reads next. :meth:`next` returns the answers in the order of ``targets``. ``depth=1``
    turns pipelining off (one request at a time per connection).

    Requests left unanswered when a server closes a connection (``Connection: close``, end of
    connection between answers, a reset) are sent again on a new connection (they are GETs);
    a connection that closes before its first answer twice in a row is an error. Parsing is
    as strict as :class:`Http11Pool`'s. Errors, raised by :meth:`next`: ``httpx.ConnectError``
    / ``httpx.ConnectTimeout`` (opening), ``httpx.ReadTimeout`` (no next answer within
    ``read_timeout``), ``httpx.ReadError`` (a connection failed), ``httpx.RemoteProtocolError``
    (a malformed answer, a body over ``max_response_bytes``).
    """

    def __init__(
        self,
        origin: Origin,
        targets: Sequence[bytes],
        headers: list[tuple[bytes, bytes]],
        *,
        connections: int = 2,
        depth: int = 8,
        window: int = 64,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        max_response_bytes: int = 64 * 1024 * 1024,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """Prepare the reads; nothing is sent before :meth:`start` (or ``async with``).

        Raises ValueError for a non-positive ``connections``, ``depth`` or ``window``, and
        httpx.UnsupportedProtocol for a scheme other than http or https.
        """
        if connections < 1 or depth < 1 or window < 1:
            raise ValueError("connections, depth and window must be at least 1")
        if origin[0] not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported scheme {origin[0]!r}")
        self.origin = origin
        self.max_response_bytes = max_response_bytes
        self.opened = 0
        self._targets = targets
        for name, value in headers:
            if any(c in value or c in name for c in (b"\r", b"\n")):
                raise httpx.LocalProtocolError("line break in a header")
        self._head = b"".join(b"\r\n" + n + b": " + v for n, v in headers) + b"\r\n\r\n"
        self._connections = connections
        self._depth = depth
        self._window = window
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._ssl = ssl_context
        self._pipes: list[_PipeProtocol] = []
        self._opening = 0
        self._next = 0  # next target never sent
        self._retry: list[int] = []  # targets to send again (ascending)
        self._consumed = 0  # next answer the caller reads
        self._results: dict[int, RawAnswer] = {}
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._fruitless = 0  # connections in a row lost before their first answer
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> PipelinedGet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Open the connections and send the first requests. Raises as :meth:`next`."""
        wanted = min(self._connections, max(1, len(self._targets)))
        pipes = await asyncio.gather(
            *(self._connect() for _ in range(wanted)), return_exceptions=True
        )
        for pipe in pipes:
            if isinstance(pipe, BaseException):
                for other in pipes:
                    if isinstance(other, _PipeProtocol):
                        other.close()
                raise pipe
            self._pipes.append(pipe)
        self._fill()

    async def aclose(self) -> None:
        """Close every connection (unread answers are dropped)."""
        for task in self._tasks:
            task.cancel()
        for pipe in self._pipes:
            pipe.close()
        self._pipes = []

    async def next(self) -> RawAnswer:
        """Return the answer to the next target, in order. Raises as the class says."""
        seq = self._consumed
        if seq >= len(self._targets):
            raise IndexError("every answer has been read")
        answer = self._results.pop(seq, None)
        while answer is None:
            if self._error is not None:
                raise self._error
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(self._read_timeout):
                    await waiter
            except TimeoutError:
                raise httpx.ReadTimeout(f"no answer within {self._read_timeout} s") from None
            finally:
                self._waiter = None
            answer = self._results.pop(seq, None)
        self._consumed = seq + 1
        self._fill()
        return answer

    # -- connections ----------------------------------------------------------------------------

    async def _connect(self) -> _PipeProtocol:
        scheme, host, port = self.origin
        context: ssl.SSLContext | None = None
        if scheme == "https":
            context = self._ssl or ssl.create_default_context()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, pipe = await loop.create_connection(
                    lambda: _PipeProtocol(self), host, port, ssl=context
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(
                f"no connection within {self._connect_timeout} s"
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(f"{type(exc).__name__}: {exc}") from None
        self.opened += 1
        return pipe

    def _fill(self) -> None:
        """Send requests on every connection at most half full, within the window."""
        limit = min(len(self._targets), self._consumed + self._window)
        targets, head, depth = self._targets, self._head, self._depth
        low = self._depth // 2
        for pipe in self._pipes:
            inflight = pipe.inflight
            # Refill a connection once half its requests are answered: one write per batch.
            if pipe.closed or pipe.draining or len(inflight) > low:
                continue
            batch: list[bytes] = []
            while len(inflight) < depth:
                if self._retry:
                    seq = self._retry.pop(0)
                elif self._next < limit:
                    seq = self._next
                    self._next += 1
                else:
                    break
                inflight.append(seq)
                batch.append(b"GET " + (targets[seq] or b"/") + b" HTTP/1.1" + head)
            if batch:
                pipe.send(batch)

    def _deliver(self, seq: int, answer: RawAnswer, pipe: _PipeProtocol) -> None:
        self._fruitless = 0
        self._results[seq] = answer
        if seq == self._consumed and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if not pipe.closed:
            self._fill()

    def _retire(self, pipe: _PipeProtocol) -> None:
        """The server said it closes ``pipe``: send what it still owes elsewhere."""
        pipe.close()

    def _lost(self, pipe: _PipeProtocol, exc: Exception | None) -> None:
        if pipe in self._pipes:
            self._pipes.remove(pipe)
        if self._error is not None:
            return
        if not pipe.inflight:
            if not self._pipes and self._opening == 0 and self._outstanding():
                self._replace()
            return
        if pipe.answered == 0:
            self._fruitless += 1
            if self._fruitless >= 2:
                why = f": {exc}" if exc is not None else ""
                self._fail(httpx.ReadError(f"the server closed the connection{why}"))
                return
        self._retry = sorted([*self._retry, *pipe.inflight])
        pipe.inflight.clear()
        self._replace()

    def _outstanding(self) -> bool:
        return bool(self._retry) or self._next < len(self._targets)

    def _replace(self) -> None:
        """Open a connection in place of a lost one."""
        self._opening += 1
        task = asyncio.ensure_future(self._reopen())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reopen(self) -> None:
        try:
            pipe = await self._connect()
        except httpx.HTTPError as exc:
            self._fail(exc)
            return
        finally:
            self._opening -= 1
        if self._error is not None:
            pipe.close()
            return
        self._pipes.append(pipe)
        self._fill()

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        for pipe in self._pipes:
            pipe.close()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
