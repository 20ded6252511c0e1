"""A lean HTTP/1.1 client for load generation: keep-alive connections on asyncio streams.

The load tool's client shares the machine's cores with the server it measures, so every
microsecond it spends per request is taken from the server. On the 2-core benchmark machine
``httpx`` (0.28) costs about 1.7 ms of CPU per request (about 530 requests/s from one saturated
core against the empty baseline endpoint), this client 0.08-0.16 ms (about 12,000 requests/s
from one core), so with httpx the client, not the server, sets the figures.
This module does only what the benchmarks need: ``http://`` URLs, one request at a time per
connection (no pipelining), bodies framed by ``Content-Length`` or chunked transfer coding,
persistent connections reopened when the server closes them. It is not a general HTTP client
(no TLS, redirects, proxies, compression or ``1xx`` answers other than ``100 Continue``).

Both clients used by :mod:`benchmarks.load` satisfy :class:`HttpClient`; :class:`HttpxClient`
wraps ``httpx.AsyncClient`` for cross-checks. Errors are :class:`HttpError` (transport failure,
timeout, malformed answer); an HTTP error status is an answer, not an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

import httpx

__all__ = ["Answer", "Http11Client", "HttpClient", "HttpError", "HttpxClient", "open_client"]

_MAX_HEAD: Final = 64 * 1024
_MAX_BODY: Final = 256 * 1024 * 1024


class HttpError(Exception):
    """The request got no usable answer: connection failure, timeout or malformed answer."""


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer: status, headers (names lowercased) and the whole body."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """Return the body parsed as JSON. Raises ValueError when it is not JSON."""
        return json.loads(self.body)


class HttpClient(Protocol):
    """What the load tool needs of a client: one request, one whole answer."""

    async def request(
        self, method: str, path: str, body: bytes = b"", content_type: str | None = None
    ) -> Answer:
        """Send one request (``path`` with its query) and return the answer. Raises HttpError."""
        ...

    async def aclose(self) -> None:
        """Close every connection."""
        ...


class _Connection:
    """One persistent connection; used by one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.reusable = True

    async def exchange(self, request: bytes, head_only: bool) -> Answer:
        self.writer.write(request)
        await self.writer.drain()
        while True:
            try:
                head = await self.reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                raise HttpError("answer head too long") from None
            status, headers = _parse_head(head)
            if status != 100:
                break
        if head_only or status in (204, 304):
            body = b""
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = await self._chunked()
        elif "content-length" in headers:
            length = _decimal(headers["content-length"], "Content-Length")
            if length > _MAX_BODY:
                raise HttpError("answer body too large")
            body = await self.reader.readexactly(length)
        else:
            body = await self.reader.read(_MAX_BODY)
            self.reusable = False
        if headers.get("connection", "").lower() == "close":
            self.reusable = False
        return Answer(status, headers, body)

    async def _chunked(self) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = await self.reader.readuntil(b"\r\n")
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while await self.reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailer fields
                return b"".join(parts)
            total += size
            if total > _MAX_BODY:
                raise HttpError("answer body too large")
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)

    def close(self) -> None:
        self.reusable = False
        self.writer.close()


def _decimal(text: str, what: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise HttpError(f"{what} is not a decimal number")
    return int(text)


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Parse a status line and header fields. Raises HttpError."""
    try:
        lines = head.decode("latin-1").split("\r\n")
        version, code, *_ = lines[0].split(" ", 2)
    except ValueError:
        raise HttpError("malformed status line") from None
    if not version.startswith("HTTP/1.") or len(code) != 3:
        raise HttpError("malformed status line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise HttpError("malformed header line")
        headers[name.strip().lower()] = value.strip()
    return _decimal(code, "status"), headers


class Http11Client:
    """Keep-alive HTTP/1.1 over asyncio streams, at most ``max_connections`` connections.

    ``base_url`` is ``http://host[:port]``. Each request takes an idle connection (or opens one),
    and gives it back unless the server closed it or the exchange failed.
    """

    def __init__(self, base_url: str, *, max_connections: int, timeout: float) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError("only http://host[:port] URLs are supported")
        self._host = parts.hostname
        self._port = parts.port or 80
        self._authority = parts.netloc.encode("ascii")
        self._prefix = parts.path.rstrip("/")
        self._timeout = timeout
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)

    async def request(
        self, method: str, path: str, body: bytes = b"", content_type: str | None = None
    ) -> Answer:
        """Send one request and return the whole answer. Raises HttpError."""
        lines = [
            f"{method} {self._prefix}{path} HTTP/1.1".encode("ascii"),
            b"Host: " + self._authority,
        ]
        if content_type is not None:
            lines.append(b"Content-Type: " + content_type.encode("ascii"))
        if body or method in ("POST", "PUT"):
            lines.append(b"Content-Length: " + str(len(body)).encode("ascii"))
        request = b"\r\n".join(lines) + b"\r\n\r\n" + body
        async with self._slots:
            connection = self._idle.pop() if self._idle else None
            try:
                async with asyncio.timeout(self._timeout):
                    if connection is None:
                        reader, writer = await asyncio.open_connection(
                            self._host, self._port, limit=_MAX_HEAD
                        )
                        connection = _Connection(reader, writer)
                    answer = await connection.exchange(request, method == "HEAD")
            except (OSError, EOFError, asyncio.IncompleteReadError, ValueError) as exc:
                if connection is not None:
                    connection.close()
                raise HttpError(f"{type(exc).__name__}: {exc}") from None
            except TimeoutError:
                if connection is not None:
                    connection.close()
                raise HttpError("timeout") from None
            except BaseException:
                if connection is not None:
                    connection.close()
                raise
            if connection.reusable:
                self._idle.append(connection)
            else:
                connection.close()
            return answer

    async def aclose(self) -> None:
        """Close every idle connection."""
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
            with contextlib.suppress(OSError, ConnectionError):
                await connection.writer.wait_closed()


class HttpxClient:
    """:class:`HttpClient` over ``httpx.AsyncClient`` (keep-alive, ``max_connections``)."""

    def __init__(self, base_url: str, *, max_connections: int, timeout: float) -> None:
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._client = httpx.AsyncClient(
            base_url=base_url, limits=limits, timeout=httpx.Timeout(timeout)
        )

    async def request(
        self, method: str, path: str, body: bytes = b"", content_type: str | None = None
    ) -> Answer:
        """Send one request and return the whole answer. Raises HttpError."""
        headers = {"content-type": content_type} if content_type is not None else None
        try:
            response = await self._client.request(method, path, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise HttpError(f"{type(exc).__name__}: {exc}") from None
        return Answer(response.status_code, dict(response.headers), response.content)

    async def aclose(self) -> None:
        """Close the httpx client."""
        await self._client.aclose()


def open_client(kind: str, base_url: str, *, max_connections: int, timeout: float) -> HttpClient:
    """Return a client: ``kind`` is ``"raw"`` (:class:`Http11Client`) or ``"httpx"``.

    Raises ValueError for another kind or an unsupported URL.
    """
    if kind == "raw":
        return Http11Client(base_url, max_connections=max_connections, timeout=timeout)
    if kind == "httpx":
        return HttpxClient(base_url, max_connections=max_connections, timeout=timeout)
    raise ValueError(f"unknown client {kind!r}: raw or httpx")
