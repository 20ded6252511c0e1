"""Pipelined GETs (client.transport.PipelinedGet) and the audit that reads a log with them.

The reader is checked against a raw server that answers pipelined requests one after the other
with scripted bytes (answers in order, servers that close connections, every body framing,
malformed answers, timeouts), then the whole audit runs against a real uvicorn serving a log.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from client.audit import Auditor
from client.errors import EntryMismatchError, LogUnavailableError, TileMismatchError
from client.logclient import LogClient
from client.transport import PipelinedGet
from merkle.policy import parse_policy
from merkle.tiles import Tile, format_tile_path
from tests.server_helpers import free_port
from tests.tampering import ServedApp, TamperingLog

pytestmark = pytest.mark.anyio

Answer = Callable[[bytes, int], bytes | None]


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def body_for(target: bytes) -> bytes:
    """A body that names its target and is large for every seventh one (several reads)."""
    number = int(target.rsplit(b"/", 1)[1])
    return target * (3000 if number % 7 == 0 else 3)


class PipeServer:
    """Reads requests one after the other on each connection and writes ``answer(target, n)``
    for the n-th request of the connection (``None``: close without answering). Closes each
    connection after ``close_every`` answers when given; ``silent`` never answers."""

    def __init__(
        self, answer: Answer, *, close_every: int | None = None, silent: bool = False
    ) -> None:
        self.answer = answer
        self.close_every = close_every
        self.silent = silent
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        count = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if self.silent:
                    continue
                data = self.answer(head.split(b" ", 2)[1], count)
                if data is None:
                    break
                writer.write(data)
                await writer.drain()
                count += 1
                if self.close_every is not None and count >= self.close_every:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def pipe_server(answer: Answer, **options: object) -> AsyncIterator[tuple[PipeServer, int]]:
    script = PipeServer(answer, **options)  # type: ignore[arg-type]
    server = await asyncio.start_server(script._handle, "127.0.0.1", 0)
    try:
        yield script, server.sockets[0].getsockname()[1]
    finally:
        server.close()


def targets(count: int) -> list[bytes]:
    return [b"/r/%d" % i for i in range(count)]


async def read_all(port: int, wanted: list[bytes], **options: object) -> list[bytes]:
    get = PipelinedGet(
        ("http", "127.0.0.1", port),
        wanted,
        [(b"Host", b"127.0.0.1")],
        read_timeout=5,
        **options,  # type: ignore[arg-type]
    )
    async with get:
        return [(await get.next()).body for _ in wanted]


@pytest.mark.parametrize(("connections", "depth", "window"), [(2, 8, 16), (1, 1, 1), (3, 4, 64)])
async def test_answers_come_back_in_request_order(
    connections: int, depth: int, window: int
) -> None:
    async with pipe_server(lambda target, n: ok(body_for(target))) as (script, port):
        wanted = targets(150)
        bodies = await read_all(
            port, wanted, connections=connections, depth=depth, window=window
        )
    assert bodies == [body_for(t) for t in wanted]
    assert script.connections == connections


@pytest.mark.parametrize("close_every", [1, 5, 7])
async def test_requests_a_closing_server_left_unanswered_are_sent_again(
    close_every: int,
) -> None:
    async with pipe_server(
        lambda target, n: ok(body_for(target)), close_every=close_every
    ) as (script, port):
        wanted = targets(60)
        bodies = await read_all(port, wanted, connections=2, depth=8)
    assert bodies == [body_for(t) for t in wanted]
    assert script.connections >= 60 // close_every


async def test_connection_close_header_ends_a_connection() -> None:
    def answer(target: bytes, n: int) -> bytes:
        return ok(body_for(target), b"Connection: close\r\n" if n == 3 else b"")

    async with pipe_server(answer, close_every=4) as (script, port):
        wanted = targets(40)
        assert await read_all(port, wanted, depth=6) == [body_for(t) for t in wanted]
    assert script.connections >= 10


async def test_chunked_interim_empty_and_end_of_connection_bodies() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2;x=1\r\nab\r\n3\r\ncde\r\n0\r\nTrailer: t\r\n\r\n"
    )
    scripted = {
        b"/r/0": chunked,
        b"/r/1": b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"after interim"),
        b"/r/2": b"HTTP/1.1 204 No Content\r\n\r\n",
        b"/r/3": ok(b""),
        b"/r/4": b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",
    }
    async with pipe_server(lambda target, n: scripted[target], close_every=5) as (_, port):
        bodies = await read_all(port, targets(5), connections=1, depth=5)
    assert bodies == [b"abcde", b"after interim", b"", b"", b"until the end"]


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/2 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nBad Header: 1\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX: a\x01b\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok",
        # An answer without length inside a pipeline cannot be told from the next one.
        b"HTTP/1.1 200 OK\r\n\r\nno length",
    ],
)
async def test_a_malformed_answer_is_a_protocol_error(answer: bytes) -> None:
    async with pipe_server(lambda target, n: answer if n == 1 else ok(b"fine")) as (_, port):
        with pytest.raises(httpx.RemoteProtocolError):
            await read_all(port, targets(4), connections=1, depth=4)


async def test_bodies_are_bounded() -> None:
    async with pipe_server(lambda target, n: ok(b"x" * 100)) as (_, port):
        with pytest.raises(httpx.RemoteProtocolError, match="too large"):
            await read_all(port, targets(3), max_response_bytes=50)
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n" + b"y" * 64
    async with pipe_server(lambda target, n: chunked + b"\r\n0\r\n\r\n") as (_, port):
        with pytest.raises(httpx.RemoteProtocolError, match="too large"):
            await read_all(port, targets(1), max_response_bytes=50)


async def test_silence_times_out_and_closing_without_answers_fails() -> None:
    async with pipe_server(lambda target, n: None, silent=True) as (_, port):
        get = PipelinedGet(("http", "127.0.0.1", port), targets(2), [], read_timeout=0.2)
        async with get:
            with pytest.raises(httpx.ReadTimeout):
                await get.next()
    async with pipe_server(lambda target, n: None) as (_, port):
        with pytest.raises(httpx.ReadError, match="closed"):
            await read_all(port, targets(3), connections=1)
    with pytest.raises(httpx.ConnectError):
        await read_all(free_port(), targets(1))


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PipelinedGet(("http", "h", 80), [], [], depth=0)
    with pytest.raises(httpx.UnsupportedProtocol):
        PipelinedGet(("ftp", "h", 21), [], [])
    with pytest.raises(httpx.LocalProtocolError):
        PipelinedGet(("http", "h", 80), [], [(b"X", b"a\r\nInjected: 1")])


# -- the audit over real HTTP ------------------------------------------------------------------


@pytest.fixture
def served_log() -> Iterator[tuple[TamperingLog, ServedApp]]:
    log = TamperingLog()
    server = ServedApp(log.app())
    server.start()
    try:
        yield log, server
    finally:
        server.stop()


async def lean_audit(
    log: TamperingLog, server: ServedApp, tmp_path: Path, **options: object
) -> object:
    client = LogClient(
        server.url,
        parse_policy(log.policy()),
        state_dir=tmp_path / "state",
        compress=False,
        lean_http=True,
    )
    async with client:
        auditor = Auditor(client, tmp_path / "audit.json", witnesses=False, **options)  # type: ignore[arg-type]
        return await auditor.run()


@pytest.mark.parametrize(
    ("size", "options"),
    [
        (0, {}),
        (255, {}),
        (256, {}),
        (257 + 256 * 20, {}),
        (256 * 9, {"pipeline": 1, "connections": 1, "window": 1}),
        (256 * 30 + 3, {"pipeline": 3, "connections": 3, "window": 2}),
    ],
)
async def test_a_pipelined_audit_reads_and_recomputes_everything(
    served_log: tuple[TamperingLog, ServedApp],
    tmp_path: Path,
    size: int,
    options: dict[str, int],
) -> None:
    log, server = served_log
    log.append([f"entry {i}".encode() for i in range(size)])
    log.publish()
    report = await lean_audit(log, server, tmp_path, **options)
    assert report.entries == size  # type: ignore[attr-defined]
    assert report.checkpoint.root_hash == log.root()  # type: ignore[attr-defined]
    bundles = [p for p in log.requests if p.startswith("tile/entries/")]
    assert sorted(bundles) == sorted(
        format_tile_path(Tile(-1, i, min(256, size - 256 * i))) for i in range(-(-size // 256))
    )


async def test_a_pipelined_audit_finds_a_modified_entry_and_a_modified_tile(
    served_log: tuple[TamperingLog, ServedApp], tmp_path: Path
) -> None:
    log, server = served_log
    log.append([f"entry {i}".encode() for i in range(256 * 6 + 1)])
    log.publish()
    log.entry_overrides[700] = b"not what was logged"
    with pytest.raises(EntryMismatchError):
        await lean_audit(log, server, tmp_path / "a")
    log.entry_overrides.clear()
    path = format_tile_path(Tile(0, 4))
    data = bytearray(log.tile_bytes(path) or b"")
    data[5] ^= 1
    log.tile_overrides[path] = bytes(data)
    with pytest.raises(TileMismatchError, match="tile/0/004"):
        await lean_audit(log, server, tmp_path / "b")


async def test_a_pipelined_audit_stops_at_an_outage_and_resumes(
    served_log: tuple[TamperingLog, ServedApp], tmp_path: Path
) -> None:
    log, server = served_log
    log.append([f"entry {i}".encode() for i in range(256 * 12 + 9)])
    log.publish()
    log.unavailable.add("tile/entries/008")
    with pytest.raises(LogUnavailableError, match="503"):
        await lean_audit(log, server, tmp_path, save_every=0.0)
    log.unavailable.clear()
    log.requests.clear()
    report = await lean_audit(log, server, tmp_path)
    assert 0 < report.resumed_from <= 8 * 256  # type: ignore[attr-defined]
    assert "tile/entries/000" not in log.requests
