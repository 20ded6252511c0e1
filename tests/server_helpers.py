"""Shared helpers of the log server's tests: logs to test, and checks that trust none of them.

* :func:`open_log` runs a :class:`server.log.LogService` in process, behind the real Starlette app
  (its lifespan starts and stops the service) and an ``httpx`` client on
  ``httpx.ASGITransport``, on SQLite or PostgreSQL (:func:`database_url`).
* :class:`FlakyStorage` wraps a backend to simulate outages and commits whose answer is lost.
* :class:`LogProcess` runs ``python -m server`` (a real uvicorn) on a free 127.0.0.1 port and
  waits for ``/healthz``; it can be killed with SIGKILL and restarted on the same data.
* The checks (:func:`check_submit_result`, :func:`read_tree`, :class:`RootTracker`, ...) use only
  ``merkle``'s verifiers and a from-the-RFC root computation, never the server's own code.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import cbor2
import httpx
import pytest

from merkle.checkpoint import Checkpoint, open_checkpoint
from merkle.hashing import EMPTY_ROOT, leaf_hash
from merkle.note import Ed25519Signer, Ed25519Verifier, Verifier, generate_key
from merkle.policy import parse_policy
from merkle.receipt import parse_receipt, verify_receipt
from merkle.tiles import TILE_WIDTH, Tile, format_tile_path, parse_entry_bundle
from merkle.tree import verify_consistency, verify_inclusion
from server.app import create_app
from server.codec import Limits
from server.log import LogService
from server.storage import open_storage
from server.storage.base import Batch, LogState, Storage, StorageUnavailable, TileKey

__all__ = [
    "BACKENDS",
    "ORIGIN",
    "PROJECT_ROOT",
    "FlakyStorage",
    "InProcessLog",
    "LogProcess",
    "RawConnection",
    "RawResponse",
    "RootTracker",
    "TreeSnapshot",
    "b64d",
    "check_consistency",
    "check_problem",
    "check_submit_result",
    "database",
    "entry_bytes",
    "free_port",
    "make_signer",
    "open_log",
    "open_note",
    "pg_schema",
    "read_tree",
    "subtree_root",
]

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ORIGIN = "example.com/etch/test-log"
BACKENDS = ("sqlite", "postgres")
PROBLEM_JSON = "application/problem+json"


# -- values and encodings --------------------------------------------------------------------


def make_signer(origin: str = ORIGIN) -> Ed25519Signer:
    """Return a new Ed25519 log key named ``origin``."""
    private_key, _ = generate_key(origin)
    return Ed25519Signer.from_private_key(private_key)


def b64d(text: str) -> bytes:
    """Decode strict standard base64 (what the JSON API uses for hashes)."""
    raw = base64.b64decode(text, validate=True)
    assert base64.b64encode(raw).decode("ascii") == text, "non-canonical base64"
    return raw


def entry_bytes(event: Mapping[str, Any]) -> bytes:
    """Return the leaf bytes a log must store for ``event`` (RFC 8949 §4.2.1 deterministic CBOR).

    Computed with ``cbor2`` (independent of the server's encoder); exact for maps whose keys are
    text strings shorter than 24 bytes, where length-first and bytewise key order agree.
    """
    assert all(isinstance(k, str) and len(k.encode()) < 24 for k in event)
    return cbor2.dumps(dict(event), canonical=True)


def subtree_root(hashes: Sequence[bytes]) -> bytes:
    """Return MTH of a run of leaf hashes, straight from RFC 6962 §2.1 (slow, recursive)."""
    n = len(hashes)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return hashes[0]
    k = 1
    while k * 2 < n:
        k *= 2
    left, right = subtree_root(hashes[:k]), subtree_root(hashes[k:])
    return hashlib.sha256(b"\x01" + left + right).digest()


class RootTracker:
    """Roots of every prefix of a growing list of leaf hashes (a stack of perfect subtrees)."""

    def __init__(self) -> None:
        self._stack: list[tuple[int, bytes]] = []  # (leaf count, hash), sizes strictly falling
        self.size = 0

    def append(self, leaf: bytes) -> None:
        """Add the next leaf hash."""
        count, value = 1, leaf
        while self._stack and self._stack[-1][0] == count:
            left_count, left = self._stack.pop()
            count, value = left_count + count, hashlib.sha256(b"\x01" + left + value).digest()
        self._stack.append((count, value))
        self.size += 1

    def root(self) -> bytes:
        """Return MTH of the leaves so far (RFC 6962 §2.1: fold the subtrees right to left)."""
        if not self._stack:
            return EMPTY_ROOT
        value = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):
            value = hashlib.sha256(b"\x01" + left + value).digest()
        return value


# -- checks ----------------------------------------------------------------------------------


def open_note(note: bytes, verifier: Verifier) -> Checkpoint:
    """Return the checkpoint of a note signed by the log (raises if the signature fails)."""
    checkpoint, _, _ = open_checkpoint(note, verifier)
    return checkpoint


def check_submit_result(
    body: Mapping[str, Any], entry: bytes, verifier: Verifier, *, vkey: str
) -> Checkpoint:
    """Verify one submission result: leaf hash, inclusion proof, checkpoint and receipt.

    Returns the checkpoint the result is against. Raises AssertionError or a merkle error.
    """
    index = body["index"]
    assert isinstance(index, int)
    assert b64d(body["leaf_hash"]) == leaf_hash(entry)
    note = body["checkpoint"].encode("utf-8")
    checkpoint = open_note(note, verifier)
    assert body["tree_size"] == checkpoint.tree_size
    proof = [b64d(h) for h in body["inclusion_proof"]]
    verify_inclusion(leaf_hash(entry), index, checkpoint.tree_size, proof, checkpoint.root_hash)
    receipt = parse_receipt(body["receipt"].encode("utf-8"))
    assert receipt.index == index
    assert receipt.checkpoint == note
    assert list(receipt.proof) == proof
    policy = parse_policy(f"log {vkey}\nquorum none\n")
    assert verify_receipt(receipt, entry, policy) == checkpoint
    return checkpoint


def check_problem(response: httpx.Response, slug: str, status: int) -> dict[str, Any]:
    """Assert that ``response`` is the RFC 9457 problem ``slug`` with ``status``; return it."""
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["content-type"].split(";")[0] == PROBLEM_JSON
    body: dict[str, Any] = response.json()
    assert body["type"] == f"urn:etch:error:{slug}", body
    assert body["status"] == status
    assert isinstance(body["title"], str)
    return body


async def check_consistency(
    client: httpx.AsyncClient, older: Checkpoint, newer: Checkpoint
) -> None:
    """Fetch and verify the consistency proof from ``older`` to ``newer`` (same origin)."""
    assert older.origin == newer.origin
    assert older.tree_size <= newer.tree_size
    response = await client.get(
        "/v1/proof/consistency",
        params={"first": str(older.tree_size), "second": str(newer.tree_size)},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["first"], body["second"]) == (older.tree_size, newer.tree_size)
    proof = [b64d(h) for h in body["proof"]]
    verify_consistency(older.tree_size, newer.tree_size, older.root_hash, newer.root_hash, proof)


@dataclass(frozen=True, slots=True)
class TreeSnapshot:
    """What a log serves for one tree size: its entries and the level-0 hashes of its tiles."""

    tree_size: int
    entries: tuple[bytes, ...]
    leaf_hashes: tuple[bytes, ...]


def _tile_widths(count: int) -> list[tuple[int, int]]:
    """``(index, width)`` of the tiles holding ``count`` hashes of one level (last one partial)."""
    widths = [(i, TILE_WIDTH) for i in range(count // TILE_WIDTH)]
    if count % TILE_WIDTH:
        widths.append((count // TILE_WIDTH, count % TILE_WIDTH))
    return widths


async def _get_bytes(client: httpx.AsyncClient, path: str) -> bytes:
    response = await client.get("/" + path)
    assert response.status_code == 200, (path, response.status_code, response.text[:200])
    assert response.headers["content-type"] == "application/octet-stream"
    return response.content


async def read_tree(client: httpx.AsyncClient, tree_size: int) -> TreeSnapshot:
    """Read every tile and entry bundle of ``tree_size`` and cross-check them.

    Checks: every tile has the width the size implies; each entry's leaf hash equals its
    level-0 tile hash; each level-1 tile hash is the root (recomputed here) of the full level-0
    tile below it. Levels above 1 are not read: callers check the root from the leaf hashes.
    """
    level0: list[bytes] = []
    entries: list[bytes] = []
    for index, width in _tile_widths(tree_size):
        data = await _get_bytes(client, format_tile_path(Tile(0, index, width)))
        assert len(data) == 32 * width
        hashes = [data[i : i + 32] for i in range(0, len(data), 32)]
        bundle = await _get_bytes(client, format_tile_path(Tile(-1, index, width)))
        tile_entries = parse_entry_bundle(bundle)
        assert len(tile_entries) == width
        assert [leaf_hash(e) for e in tile_entries] == hashes
        level0 += hashes
        entries += tile_entries
    level1_count = tree_size // TILE_WIDTH
    level1: list[bytes] = []
    for index, width in _tile_widths(level1_count):
        data = await _get_bytes(client, format_tile_path(Tile(1, index, width)))
        assert len(data) == 32 * width
        level1 += [data[i : i + 32] for i in range(0, len(data), 32)]
    for j, value in enumerate(level1):
        assert value == subtree_root(level0[j * TILE_WIDTH : (j + 1) * TILE_WIDTH])
    return TreeSnapshot(tree_size, tuple(entries), tuple(level0))


# -- in-process logs ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def pg_schema(dsn: str) -> AsyncIterator[str]:
    """Create a fresh schema in the database ``dsn``; yield a DSN whose tables live in it.

    asyncpg passes unknown DSN query parameters to the server as settings, so
    ``search_path=<schema>`` puts every unqualified table of the storage there. Much cheaper
    than a database per test (``CREATE DATABASE`` copies a template and syncs it to disk).
    The schema is dropped afterwards.
    """
    name = f"t_{uuid.uuid4().hex[:16]}"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE SCHEMA "{name}"')
    finally:
        await conn.close()
    separator = "&" if "?" in dsn else "?"
    try:
        yield f"{dsn}{separator}search_path={name}"
    finally:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'DROP SCHEMA "{name}" CASCADE')
        finally:
            await conn.close()


@contextlib.asynccontextmanager
async def database(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Yield a fresh, empty database for backend ``kind``: an SQLite file or a PostgreSQL schema.

    PostgreSQL is the session's throwaway server (``pg_dsn``, see tests/conftest.py).
    """
    if kind == "sqlite":
        yield str(tmp_path / "log.db")
        return
    assert kind == "postgres"
    dsn: str = request.getfixturevalue("pg_dsn")
    async with pg_schema(dsn) as url:
        yield url


@dataclass
class InProcessLog:
    """A log service behind its Starlette app, with an httpx client talking to it."""

    service: LogService
    client: httpx.AsyncClient
    signer: Ed25519Signer
    storage: Storage
    verifier: Verifier = field(init=False)

    def __post_init__(self) -> None:
        self.verifier = Ed25519Verifier.from_vkey(self.signer.vkey)

    @property
    def vkey(self) -> str:
        """The log's verifier key."""
        return self.signer.vkey

    async def checkpoint(self) -> tuple[bytes, Checkpoint]:
        """GET /checkpoint, verified with the log's key."""
        response = await self.client.get("/checkpoint")
        assert response.status_code == 200, response.text
        return response.content, open_note(response.content, self.verifier)

    async def submit(self, event: Mapping[str, Any], *, cbor: bool = False) -> httpx.Response:
        """POST one event as JSON or CBOR."""
        if cbor:
            return await self.client.post(
                "/v1/events",
                content=cbor2.dumps(dict(event)),
                headers={"content-type": "application/cbor"},
            )
        return await self.client.post("/v1/events", json=dict(event))

    async def submit_ok(self, event: Mapping[str, Any], *, cbor: bool = False) -> dict[str, Any]:
        """POST one event, require 201 or 200, verify the result and return its body."""
        response = await self.submit(event, cbor=cbor)
        assert response.status_code in (200, 201), response.text
        body: dict[str, Any] = response.json()
        check_submit_result(body, entry_bytes(event), self.verifier, vkey=self.vkey)
        return body

    async def fill(self, count: int, *, tag: str = "e", chunk: int = 500) -> list[bytes]:
        """Append ``count`` new events through the batch endpoint; return their leaf bytes."""
        entries: list[bytes] = []
        for start in range(0, count, chunk):
            events = [{"k": tag, "n": i} for i in range(start, min(count, start + chunk))]
            response = await self.client.post("/v1/events/batch", json=events)
            assert response.status_code == 200, response.text
            results = response.json()["results"]
            assert all(r.get("duplicate") is False for r in results), results[:3]
            entries += [entry_bytes(e) for e in events]
        return entries

    async def state(self) -> tuple[int, bytes, int]:
        """The observable state, for "nothing changed" checks: sizes and the checkpoint."""
        note, checkpoint = await self.checkpoint()
        stored = await self.storage.load_state()
        assert stored is not None
        assert stored.checkpoint == note
        return checkpoint.tree_size, note, self.service.tree_size


@contextlib.asynccontextmanager
async def open_log(
    url: str,
    *,
    signer: Ed25519Signer | None = None,
    limits: Limits | None = None,
    batch_size: int = 1000,
    batch_period: float = 0.002,
    wrap: Callable[[Storage], Storage] | None = None,
    raise_app_exceptions: bool = True,
) -> AsyncIterator[InProcessLog]:
    """Run a log on ``url`` in process (app lifespan included) and yield a client for it."""
    signer = signer or make_signer()
    storage = open_storage(url)
    if wrap is not None:
        storage = wrap(storage)
    service = LogService(storage, signer, ORIGIN, batch_size=batch_size, batch_period=batch_period)
    app = create_app(service, limits=limits)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://etch.test", timeout=30
        ) as client:
            yield InProcessLog(service, client, signer, storage)


class FlakyStorage:
    """A storage that delegates to a real one, but can be made to fail on demand.

    ``down``: every call raises StorageUnavailable (the database is unreachable).
    ``lose_commit_answers``: that many next commits are applied, then raise StorageUnavailable
    (the database committed, the connection dropped before the answer).
    ``fail_commits``: that many next commits raise StorageUnavailable without being applied.
    ``commit_sizes`` records the number of entries of every applied commit, ``loads`` counts
    the calls of ``load_state`` that reached the real storage.
    """

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.down = False
        self.lose_commit_answers = 0
        self.fail_commits = 0
        self.commit_sizes: list[int] = []
        self.loads = 0
        self.calls = 0

    def _check(self) -> None:
        self.calls += 1
        if self.down:
            raise StorageUnavailable("simulated outage")

    async def open(self) -> None:
        self._check()
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def load_state(self) -> LogState | None:
        self._check()
        self.loads += 1
        return await self.inner.load_state()

    async def commit(self, previous: bytes | None, batch: Batch) -> None:
        self._check()
        if self.fail_commits:
            self.fail_commits -= 1
            raise StorageUnavailable("simulated failure before the commit")
        await self.inner.commit(previous, batch)
        self.commit_sizes.append(len(batch.entries))
        if self.lose_commit_answers:
            self.lose_commit_answers -= 1
            raise StorageUnavailable("simulated connection loss after the commit")

    async def find_leaf_hashes(self, leaf_hashes: Sequence[bytes]) -> dict[bytes, int]:
        self._check()
        return await self.inner.find_leaf_hashes(leaf_hashes)

    async def find_idempotency_keys(self, keys: Sequence[str]) -> dict[str, int]:
        self._check()
        return await self.inner.find_idempotency_keys(keys)

    async def read_tiles(self, coords: Sequence[TileKey]) -> dict[TileKey, bytes]:
        self._check()
        return await self.inner.read_tiles(coords)

    async def read_entries(self, start: int, end: int) -> list[bytes]:
        self._check()
        return await self.inner.read_entries(start, end)

    async def read_entry_meta(self, index: int) -> tuple[bytes, int] | None:
        self._check()
        return await self.inner.read_entry_meta(index)

    async def lookup(
        self,
        kind: str,
        value: str,
        *,
        after: int = -1,
        limit: int = 100,
        since_ms: int | None = None,
        until_ms: int | None = None,
    ) -> list[int]:
        self._check()
        return await self.inner.lookup(
            kind, value, after=after, limit=limit, since_ms=since_ms, until_ms=until_ms
        )

    async def checkpoint_history(self, *, after_size: int = -1, limit: int = 100) -> list[bytes]:
        self._check()
        return await self.inner.checkpoint_history(after_size=after_size, limit=limit)

    async def put_cosigned_checkpoint(self, tree_size: int, note: bytes) -> None:
        self._check()
        await self.inner.put_cosigned_checkpoint(tree_size, note)

    async def latest_cosigned_checkpoint(self) -> bytes | None:
        self._check()
        return await self.inner.latest_cosigned_checkpoint()

    async def get_meta(self, key: str) -> bytes | None:
        self._check()
        return await self.inner.get_meta(key)

    async def put_meta(self, key: str, value: bytes) -> None:
        self._check()
        await self.inner.put_meta(key, value)


# -- real processes ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RawResponse:
    """An HTTP response as read off the wire: status, lower-cased headers, body."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


class RawConnection:
    """One keep-alive HTTP/1.1 connection, for load: a request is written at once and the
    response read by its Content-Length.

    Cheap enough that 32 of them keep a log busy on a small machine, where a shared
    ``httpx.AsyncClient`` spends more time in its pool than the server spends answering. A
    lost connection raises ``OSError`` or ``asyncio.IncompleteReadError``: the outcome of that
    request is unknown.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, port: int) -> RawConnection:
        """Connect to ``127.0.0.1:port``."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def post_json(self, path: str, value: Any) -> RawResponse:
        """POST ``value`` as JSON to ``path`` and read the whole response."""
        body = json.dumps(value, separators=(",", ":")).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        self._writer.write(head.encode("ascii") + body)
        await self._writer.drain()
        status_line, *lines = (
            (await self._reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        )
        headers = {}
        for line in lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers["content-length"])
        return RawResponse(
            int(status_line.split(" ")[1]), headers, await self._reader.readexactly(length)
        )

    async def close(self) -> None:
        """Close the connection, ignoring a peer that is already gone."""
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _clean_environ() -> dict[str, str]:
    """The test's environment without ``ETCH_*`` settings (the command line says everything)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ETCH_")}


class LogProcess:
    """``python -m server`` on a free 127.0.0.1 port: start, wait until healthy, kill, restart.

    It runs the bare engine (``--intake raw``: any bounded map is an event), as the in-process
    tests do.

        Output goes to ``<data_dir>-server-<n>.log`` beside the data directory, one file per start.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        database_url: str | None = None,
        batch_period_ms: int = 5,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.data_dir = data_dir
        self.database_url = database_url
        self.batch_period_ms = batch_period_ms
        self.extra_args = tuple(extra_args)
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>`` of the running process."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The running process's id."""
        assert self.process is not None
        return self.process.pid

    def command(self, port: int) -> list[str]:
        """The command line of one start."""
        command = [
            sys.executable,
            "-m",
            "server",
            "--data-dir",
            str(self.data_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--batch-period-ms",
            str(self.batch_period_ms),
            "--log-level",
            "warning",
            "--intake",
            "raw",
            *self.extra_args,
        ]
        if self.database_url is not None:
            command += ["--database-url", self.database_url]
        return command

    def vkey(self) -> str:
        """The log's verifier key, as written to its data directory on first start."""
        return (self.data_dir / "log.vkey").read_text(encoding="ascii").strip()

    def log_path(self, start: int | None = None) -> Path:
        """Where the output of start number ``start`` (default: the latest) goes."""
        number = self.starts if start is None else start
        return self.data_dir.parent / f"{self.data_dir.name}-server-{number}.log"

    def log_text(self) -> str:
        """The output of the latest start."""
        path = self.log_path()
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start the process on a new free port without waiting for it (output to the log)."""
        assert self.process is None or self.process.poll() is not None
        self.port = free_port()
        self.starts += 1
        with self.log_path().open("wb") as out:
            self.process = subprocess.Popen(
                self.command(self.port),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=PROJECT_ROOT,
                env=_clean_environ(),
            )
        return self.process

    async def start(self, within: float = 60.0) -> None:
        """Start the process and wait until ``/healthz`` answers 200 (retrying busy ports)."""
        for _ in range(5):
            self.spawn()
            if await self._wait_healthy(within):
                return
            text = self.log_text()
            if "address already in use" not in text.lower():
                raise AssertionError(f"the log did not start:\n{text[-3000:]}")
        raise AssertionError("no free port found for the log")

    async def _wait_healthy(self, within: float) -> bool:
        """Poll ``/healthz`` until 200 (True) or the process exits (False)."""
        assert self.process is not None
        deadline = time.monotonic() + within
        async with httpx.AsyncClient(base_url=self.base_url, timeout=2) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    return False
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/healthz")).status_code == 200:
                        return True
                await asyncio.sleep(0.05)
        self.kill()
        raise AssertionError(f"the log was not healthy within {within} s")

    def kill(self) -> None:
        """SIGKILL the process (no clean-up of any kind) and reap it."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def terminate(self) -> None:
        """Stop the process cleanly (SIGTERM), killing it if it does not stop in time."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def is_running(self) -> bool:
        """Whether the current process is alive."""
        return self.process is not None and self.process.poll() is None


# -- syscall fault injection -----------------------------------------------------------------

STRACE = Path("/usr/bin/strace")


def require_strace() -> None:
    """Skip the calling test, saying why, when ``strace`` cannot inject faults here.

    Needs ``/usr/bin/strace`` and permission to ptrace this user's processes (root, or
    ``kernel.yama.ptrace_scope`` 0).
    """
    if not STRACE.exists():
        pytest.skip("syscall fault injection needs /usr/bin/strace (apt-get install strace)")
    scope = Path("/proc/sys/kernel/yama/ptrace_scope")
    if os.geteuid() != 0 and scope.exists() and scope.read_text().strip() != "0":
        pytest.skip("strace cannot attach: not root and kernel.yama.ptrace_scope is not 0")


def _tracer_pids(pid: int) -> list[int]:
    """The ``TracerPid`` of every thread of ``pid`` (empty once the process is gone)."""
    tracers: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                for line in (task / "status").read_text().splitlines():
                    if line.startswith("TracerPid:"):
                        tracers.append(int(line.split()[1]))
    return tracers


class StraceInjection:
    """``strace`` attached to every thread of a running process, injecting one fault.

    ``inject`` is strace's ``-e inject=`` expression, e.g. ``fdatasync,fsync:error=EIO`` or
    ``pwrite64:signal=SIGKILL:when=7``; ``trace`` the syscalls traced (they must include the
    injected ones); ``paths`` limits tracing and injection to descriptors of those files
    (``-P``). Counting for ``when=`` is per syscall and per thread (strace(1)). Threads created
    later are followed (``-f``). Every traced call goes to ``output``; injected ones end in
    ``(INJECTED)``.
    """

    def __init__(
        self,
        pid: int,
        inject: str,
        *,
        trace: str,
        output: Path,
        paths: Sequence[Path] = (),
    ) -> None:
        self.pid = pid
        self.output = output
        command = [str(STRACE), "-qq", "-f", "-p", str(pid), "-o", str(output)]
        command += ["-e", f"trace={trace}", "-e", f"inject={inject}"]
        for path in paths:
            command += ["-P", str(path)]
        self.command = command
        self.process: subprocess.Popen[bytes] | None = None

    def attach(self, within: float = 15.0) -> None:
        """Start strace and wait until it traces every thread of the process."""
        self.process = subprocess.Popen(
            self.command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            tracers = _tracer_pids(self.pid)
            if tracers and all(t == self.process.pid for t in tracers):
                return
            if self.process.poll() is not None:
                assert self.process.stderr is not None
                raise AssertionError(f"strace exited: {self.process.stderr.read()!r}")
            time.sleep(0.02)
        self.detach()
        raise AssertionError(f"strace did not attach to {self.pid} within {within} s")

    def detach(self) -> None:
        """Stop strace (SIGTERM detaches it; the process runs on untraced) and reap it."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)
        if process.stderr is not None:
            process.stderr.close()
        self.process = None

    def injected(self) -> list[str]:
        """The traced calls that were injected so far (strace's own lines)."""
        if not self.output.exists():
            return []
        text = self.output.read_text(encoding="utf-8", errors="replace")
        return [line for line in text.splitlines() if line.endswith("(INJECTED)")]
