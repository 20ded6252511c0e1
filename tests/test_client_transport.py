"""The lean HTTP/1.1 transport: what httpx users rely on, against uvicorn and against a raw
server that answers exactly the bytes a test scripts (malformed ones included)."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from client.transport import Http11Pool, Http11Transport
from tests.server_helpers import free_port
from tests.tampering import ServedApp

pytestmark = pytest.mark.anyio


async def _plain(request: Request) -> Response:
    return Response(b"x" * 8192, media_type="application/octet-stream")


async def _chunks(request: Request) -> StreamingResponse:
    async def parts() -> AsyncIterator[bytes]:
        for i in range(5):
            yield f"part {i};".encode()

    return StreamingResponse(parts(), media_type="text/plain")


async def _echo(request: Request) -> JSONResponse:
    return JSONResponse({"got": await request.json(), "auth": request.headers.get("authorization")})


async def _gzip(request: Request) -> Response:
    return Response(gzip.compress(b"hello " * 100), headers={"Content-Encoding": "gzip"})


async def _slow(request: Request) -> Response:
    await asyncio.sleep(2)
    return Response(b"late")


async def _missing(request: Request) -> Response:
    return Response(b"nope", status_code=404)


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    app = Starlette(
        routes=[
            Route("/plain", _plain, methods=["GET", "HEAD"]),
            Route("/chunks", _chunks),
            Route("/echo", _echo, methods=["POST"]),
            Route("/gzip", _gzip),
            Route("/slow", _slow),
            Route("/missing", _missing),
        ]
    )
    server = ServedApp(app)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def client(transport: Http11Transport, timeout: float = 10) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=transport, timeout=timeout)


async def test_bodies_statuses_and_keep_alive(served: str) -> None:
    transport = Http11Transport(max_connections=2)
    async with client(transport) as http:
        for _ in range(5):
            response = await http.get(f"{served}/plain")
            assert response.status_code == 200
            assert response.content == b"x" * 8192
        assert transport.pool.opened == 1
        assert (await http.get(f"{served}/chunks")).text == "part 0;part 1;part 2;part 3;part 4;"
        assert (await http.get(f"{served}/missing")).status_code == 404
        head = await http.head(f"{served}/plain")
        assert head.status_code == 200
        assert head.content == b""
        assert head.headers["content-length"] == "8192"
        echo = await http.post(
            f"{served}/echo", json={"a": [1, 2]}, headers={"Authorization": "Bearer t"}
        )
        assert echo.json() == {"got": {"a": [1, 2]}, "auth": "Bearer t"}
        assert (await http.get(f"{served}/gzip")).text == "hello " * 100
        assert transport.pool.opened == 1


async def test_concurrent_requests_share_a_bounded_pool(served: str) -> None:
    transport = Http11Transport(max_connections=3)
    async with client(transport) as http:
        answers = await asyncio.gather(*(http.get(f"{served}/plain") for _ in range(20)))
    assert all(a.status_code == 200 and len(a.content) == 8192 for a in answers)
    assert transport.pool.opened <= 3


async def test_timeouts_and_refused_connections(served: str) -> None:
    async with client(Http11Transport(), timeout=0.3) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.get(f"{served}/slow")
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://127.0.0.1:{free_port()}/plain")
        with pytest.raises(httpx.UnsupportedProtocol):
            await http.get("ftp://127.0.0.1/x")


# -- a server that answers scripted bytes ----------------------------------------------------------


class Scripted:
    """A raw TCP server: the n-th request on any connection gets ``answers[n]``; a ``None``
    answer closes the connection without answering."""

    def __init__(self, answers: list[bytes | None], *, close_after: bool = False) -> None:
        self.answers = answers
        self.close_after = close_after
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.answers:
                await reader.readuntil(b"\r\n\r\n")
                answer = self.answers.pop(0)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def _get(
    answers: list[bytes | None], max_response_bytes: int = 1 << 20
) -> httpx.Response:
    scripted = Scripted(answers)
    await scripted.start()
    try:
        pool = Http11Pool(max_response_bytes=max_response_bytes)
        async with client(Http11Transport(pool)) as http:
            return await http.get(scripted.url)
    finally:
        await scripted.stop()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/2 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 20 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 02\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nBad Header: 1\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\n folded\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX: a\x01b\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Len",
    ],
)
async def test_malformed_answers_are_protocol_errors(answer: bytes) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        await _get([answer])


async def test_well_formed_variants() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;ext=1\r\nok\r\n0\r\nT: 1\r\n\r\n"
    )
    assert (await _get([chunked])).content == b"ok"
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" + OK
    assert (await _get([interim])).content == b"ok"
    to_eof = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end"
    assert (await _get([to_eof])).content == b"until the end"
    repeated = b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok"
    assert (await _get([repeated])).content == b"ok"


async def test_body_size_is_bounded() -> None:
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100
    with pytest.raises(httpx.RemoteProtocolError, match="too large"):
        await _get([big], max_response_bytes=50)


async def test_a_stale_keep_alive_connection_is_retried_once() -> None:
    scripted = Scripted([OK, OK], close_after=True)
    await scripted.start()
    try:
        transport = Http11Transport()
        async with client(transport) as http:
            assert (await http.get(scripted.url)).content == b"ok"
            await asyncio.sleep(0.05)
            assert (await http.get(scripted.url)).content == b"ok"
        assert transport.pool.opened == 2
    finally:
        await scripted.stop()


async def test_a_connection_closed_without_answer_fails() -> None:
    with pytest.raises(httpx.RemoteProtocolError, match="closed"):
        await _get([None])
