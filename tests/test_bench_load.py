"""The load tool's own checks: receipts, proofs and tiles verify, and every tampering is caught.

Answers come from a real log in process (:func:`tests.server_helpers.open_log`, SQLite); the
checks of :mod:`benchmarks.load` must accept them as they are and refuse each mutation. The lean
HTTP/1.1 client of :mod:`benchmarks.http11` is checked against a scripted asyncio server
(Content-Length and chunked bodies, a server that closes the connection).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from benchmarks.http11 import Answer, Http11Client, HttpError
from benchmarks.load import (
    LoadConfig,
    Prepared,
    ReceiptChecker,
    TileChecker,
    VerificationError,
    _IndexSet,
    _reused_indexes,
    _Worker,
    percentile,
    upper_tiles_for_size,
)
from client.cbor import encode_deterministic
from merkle.checkpoint import Checkpoint
from merkle.note import generate_key
from merkle.tiles import Tile, format_tile_path
from tests.server_helpers import InProcessLog, open_log

pytestmark = pytest.mark.anyio


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[InProcessLog]:
    async with open_log(str(tmp_path / "log.db")) as opened:
        yield opened


def _event(n: int) -> dict[str, Any]:
    return {"type": "token-issued", "jti": f"load-test-{n}", "pad": "x" * 40}


def _flip_b64(text: str) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[0] ^= 1
    return base64.b64encode(bytes(raw)).decode()


Mutation = Callable[[dict[str, Any]], None]


def _set(name: str, value: object) -> Mutation:
    def mutate(answer: dict[str, Any]) -> None:
        answer[name] = value

    return mutate


def _flip_proof(answer: dict[str, Any]) -> None:
    answer["inclusion_proof"][0] = _flip_b64(answer["inclusion_proof"][0])


def _flip_receipt_proof(answer: dict[str, Any]) -> None:
    lines = answer["receipt"].split("\n")
    lines[2] = _flip_b64(lines[2])  # header, index, first proof hash
    answer["receipt"] = "\n".join(lines)


def _flip_both_proofs(answer: dict[str, Any]) -> None:
    _flip_proof(answer)
    _flip_receipt_proof(answer)


def _receipt_index(answer: dict[str, Any]) -> None:
    answer["receipt"] = answer["receipt"].replace(
        f"index {answer['index']}\n", f"index {answer['index'] + 1}\n"
    )


async def test_receipts_of_the_log_verify(log: InProcessLog) -> None:
    checker = ReceiptChecker(log.vkey)
    indexes = set()
    for n in range(5):
        answer = await log.submit_ok(_event(n))
        indexes.add(checker.check_receipt(encode_deterministic(_event(n)), answer))
    assert indexes == set(range(5))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_set("index", 0), "receipt index"),
        (_set("leaf_hash", base64.b64encode(bytes(32)).decode()), "not that of the event"),
        (_set("duplicate", True), "duplicate"),
        (_set("tree_size", 999), "tree size"),
        (_set("checkpoint", "other\n"), "checkpoint is not the answer's"),
        (_flip_proof, "proof is not the answer's"),
        (_flip_receipt_proof, "proof is not the answer's"),
        (_flip_both_proofs, "inclusion proof fails"),
        (_receipt_index, "receipt index"),
        (_set("receipt", "c2sp.org/tlog-proof@v1\nindex x\n"), "does not parse"),
        (_set("inclusion_proof", ["AA=="]), "proof is not the answer's"),
        (_set("index", True), "not a int"),
    ],
)
async def test_every_tampered_receipt_is_refused(
    log: InProcessLog, mutate: Mutation, message: str
) -> None:
    await log.submit_ok(_event(100))
    answer = await log.submit_ok(_event(101))
    assert answer["tree_size"] == 2
    checker = ReceiptChecker(log.vkey)
    checker.check_receipt(encode_deterministic(_event(101)), answer)
    tampered = copy.deepcopy(answer)
    mutate(tampered)
    with pytest.raises(VerificationError, match=message):
        ReceiptChecker(log.vkey).check_receipt(encode_deterministic(_event(101)), tampered)


async def test_a_receipt_for_other_bytes_or_another_key_is_refused(log: InProcessLog) -> None:
    answer = await log.submit_ok(_event(7))
    with pytest.raises(VerificationError, match="not that of the event"):
        ReceiptChecker(log.vkey).check_receipt(encode_deterministic(_event(8)), answer)
    _, other_vkey = generate_key(log.service.origin)
    with pytest.raises(VerificationError, match="checkpoint does not verify"):
        ReceiptChecker(other_vkey).check_receipt(encode_deterministic(_event(7)), answer)


async def test_proofs_and_tiles_of_the_log_verify_and_tampering_is_caught(
    log: InProcessLog,
) -> None:
    await log.fill(700)
    note, _ = await log.checkpoint()
    checker = ReceiptChecker(log.vkey)
    checkpoint = checker.checkpoint(note)
    assert checkpoint.tree_size == 700

    for index in (0, 255, 256, 511, 699):
        answer = (await log.client.get(f"/v1/proof/inclusion?index={index}&tree_size=700")).json()
        checker.check_proof(index, checkpoint, answer)
        with pytest.raises(VerificationError, match="another index"):
            checker.check_proof(index + 1 if index < 699 else 0, checkpoint, answer)
        answer["proof"][-1] = _flip_b64(answer["proof"][-1])
        with pytest.raises(VerificationError, match="inclusion proof fails"):
            checker.check_proof(index, checkpoint, answer)

    tiles = {}
    for tile in upper_tiles_for_size(700):
        tiles[(tile.level, tile.index)] = (
            await log.client.get("/" + format_tile_path(tile))
        ).content
    tile_checker = TileChecker(checkpoint, tiles)
    first = (await log.client.get("/" + format_tile_path(Tile(0, 1)))).content
    tile_checker.check_level0(1, first)
    tile_checker.check_level0(1, first)  # the verified copy is reused
    with pytest.raises(VerificationError, match="changed since it was verified"):
        tile_checker.check_level0(1, first[:-1] + bytes([first[-1] ^ 1]))
    zero = (await log.client.get("/" + format_tile_path(Tile(0, 0)))).content
    with pytest.raises(VerificationError, match="does not match its parent"):
        TileChecker(checkpoint, tiles).check_level0(0, zero[:-1] + bytes([zero[-1] ^ 1]))
    with pytest.raises(VerificationError, match="bytes, not"):
        TileChecker(checkpoint, tiles).check_level0(0, zero[:-32])
    wrong_root = Checkpoint(checkpoint.origin, 700, bytes(32))
    with pytest.raises(VerificationError, match="checkpoint's root"):
        TileChecker(wrong_root, tiles)


class _Through:
    """The load tool's HTTP client, answered by the in-process log; answer ``spoil_at`` (1-based)
    is replaced by ``spoil(body)``."""

    def __init__(
        self, log: InProcessLog, spoil_at: int = 0, spoil: Callable[[bytes], bytes] = bytes
    ) -> None:
        self.log = log
        self.spoil_at = spoil_at
        self.spoil = spoil
        self.count = 0

    async def request(
        self, method: str, path: str, body: bytes = b"", content_type: str | None = None
    ) -> Answer:
        headers = {"content-type": content_type} if content_type else {}
        response = await self.log.client.request(method, path, content=body, headers=headers)
        self.count += 1
        content = response.content
        if self.count == self.spoil_at:
            content = self.spoil(content)
        return Answer(response.status_code, dict(response.headers), content)

    async def aclose(self) -> None:
        """Nothing to close."""


def _flip_answer_proof(body: bytes) -> bytes:
    answer = json.loads(body)
    key = "inclusion_proof" if "inclusion_proof" in answer else "proof"
    answer[key][0] = _flip_b64(answer[key][0])
    if key == "inclusion_proof":
        _flip_receipt_proof(answer)
    return json.dumps(answer).encode()


@pytest.mark.parametrize(
    ("spoil_at", "spoil", "failure"),
    [
        (0, bytes, None),
        (3, _flip_answer_proof, "inclusion proof fails"),
        (2, lambda body: body[:-1], "not JSON"),
        (4, lambda body: b"[1]", "not a JSON object"),
    ],
)
@pytest.mark.parametrize("kind", ["submit", "proof"])
async def test_verify_after_checks_every_kept_answer_once_the_run_is_over(
    log: InProcessLog,
    kind: str,
    spoil_at: int,
    spoil: Callable[[bytes], bytes],
    failure: str | None,
) -> None:
    await log.fill(300)
    note, _ = await log.checkpoint()
    config = LoadConfig(
        url="http://log.invalid",
        mode=kind,
        concurrency=1,
        duration=1,
        verify=True,
        verify_after=True,
        vkey=log.vkey,
    )
    worker = _Worker(config, Prepared(checkpoint_note=note), 0)
    client = _Through(log, spoil_at, spoil)
    for _ in range(5):
        outcome = await worker._one(client, 0, kind)
        assert outcome.failure is None
    tally = worker.tallies[kind]
    assert (tally.verified, tally.verification_failures, worker.kept) == (0, 0, 5)

    worker.verify_kept()

    assert worker.kept == 0
    bad = 0 if failure is None else 1
    assert (tally.verified, tally.verification_failures) == (5 - bad, bad)
    if failure is None:
        assert tally.first_verification_failure is None
    else:
        assert failure in (tally.first_verification_failure or "")
    if kind == "submit":  # the index of every receipt that verified is recorded
        assert int.from_bytes(worker.indexes.bits, "little").bit_count() == 5 - bad


def test_verify_after_needs_verify() -> None:
    with pytest.raises(ValueError, match="--verify-after needs --verify"):
        LoadConfig(url="http://x", mode="submit", concurrency=1, duration=1, verify_after=True)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) == 0.0


def test_reused_indexes_are_counted_within_and_across_processes() -> None:
    first, second = _IndexSet(), _IndexSet()
    for index in (0, 5, 70_000):
        first.add(index)
    first.add(5)
    for index in (5, 6, 70_000):
        second.add(index)
    assert first.reused == 1
    assert _reused_indexes([bytes(first.bits), bytes(second.bits)]) == 2
    assert _reused_indexes([bytes(first.bits)]) == 0


async def _scripted_server(answers: list[bytes]) -> tuple[asyncio.Server, int, list[bytes]]:
    """A server that answers each request with the next scripted bytes (then closes if told)."""
    requests: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while answers:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            requests.append(head + await reader.readexactly(length))
            answer = answers.pop(0)
            writer.write(answer)
            await writer.drain()
            if b"Connection: close" in answer:
                break
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, port, requests


async def test_http11_client_reads_lengths_chunks_and_reconnects() -> None:
    answers = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        b'HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n{"a":1}',
    ]
    server, port, requests = await _scripted_server(answers)
    client = Http11Client(f"http://127.0.0.1:{port}", max_connections=1, timeout=5)
    try:
        first = await client.request("GET", "/one")
        assert (first.status, first.body) == (200, b"hello")
        second = await client.request("POST", "/two", b'{"k":2}', "application/json")
        assert (second.status, second.body) == (201, b"abcde")
        third = await client.request("GET", "/three")
        assert (third.status, third.body) == (404, b"")
        fourth = await client.request("GET", "/four")  # on a new connection
        assert fourth.json() == {"a": 1}
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()
    assert requests[0].startswith(b"GET /one HTTP/1.1\r\nHost: 127.0.0.1:")
    assert requests[1].endswith(
        b'Content-Type: application/json\r\nContent-Length: 7\r\n\r\n{"k":2}'
    )


async def test_http11_client_reports_a_malformed_answer_and_a_refused_connection() -> None:
    server, port, _ = await _scripted_server([b"HTTP/1.1 2x0 OK\r\n\r\n"])
    client = Http11Client(f"http://127.0.0.1:{port}", max_connections=1, timeout=5)
    try:
        with pytest.raises(HttpError, match="status"):
            await client.request("GET", "/")
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()
    refused = Http11Client(f"http://127.0.0.1:{port}", max_connections=1, timeout=5)
    with pytest.raises(HttpError):
        await refused.request("GET", "/")
