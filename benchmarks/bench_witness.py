"""Benchmark of the witness: durable add-checkpoint with a 30-hash consistency proof.

Run from the project root::

    .venv/bin/python -m benchmarks.bench_witness [--requests 2000] [--clients 8] [--http]

What is measured, in one run:

1. **The unavoidable work** of one add-checkpoint: one Ed25519 verification (the log's
   signature), one Ed25519 signature (the cosignature) and one durable SQLite write
   (``BEGIN IMMEDIATE``, one-row upsert of a checkpoint note, ``COMMIT`` in WAL mode with
   ``synchronous=FULL``), each timed alone, in the same directory. The rate it allows is
   ``1 / (verify + sign + write)`` requests per second.
2. **The witness, sequential**: ``--requests`` add-checkpoint requests one after the other,
   each with a consistency proof of exactly 30 hashes, through the whole Starlette application
   in process (``httpx.ASGITransport``, no sockets): parse, verify, proof check, cosign,
   durable commit, answer.
3. **The witness, concurrent**: the same requests from ``--clients`` clients at once (each
   pushing whole logs in order), as a witness serving many logs sees them.
4. With ``--http``: 2 and 3 against a real ``python -m witness`` process over loopback with
   keep-alive. This adds uvicorn's HTTP handling and the load generator, on the same cores.
   ``--client raw`` (the default) sends with the lean HTTP/1.1 client of
   :mod:`benchmarks.http11`; ``--client httpx`` with httpx, whose own CPU time per request is
   several times the witness's on a two-core machine.

Checkpoints come from a virtual tree of identical leaves (every complete subtree of one height
has the same hash), so trees of 2**40 entries cost nothing to describe; the witness cannot tell
and verifies every proof in full. A chain of sizes whose consecutive proofs all have 30 hashes
lasts only so long (see :func:`size_chain`), so the requests are spread over logs of
``--steps`` checkpoints each; every log's first checkpoint (``old 0``, no proof) is sent
before the clock starts. Every request must answer 200.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import os
import random
import socket
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, MutableMapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.applications import Starlette

from benchmarks.http11 import Http11Client
from merkle.checkpoint import Checkpoint, format_checkpoint
from merkle.cosignature import CosignatureSigner, cosignature_message
from merkle.hashing import leaf_hash, node_hash
from merkle.note import Ed25519Signer, parse_note, sign_note
from merkle.tree import build_consistency_proof, consistency_nodes, root_from_hashes, root_nodes
from witness.config import LogConfig
from witness.core import Witness
from witness.gossip import Gossip
from witness.http import Components, create_app
from witness.metrics import WitnessMetrics
from witness.storage import open_storage

PROOF_HASHES = 30


_SHARED_TREE: VirtualTree | None = None


class VirtualTree:
    """A tree whose leaves are all equal: subtree hashes depend only on their height."""

    def __init__(self) -> None:
        self.heights = [leaf_hash(b"benchmark entry")]
        for _ in range(63):
            self.heights.append(node_hash(self.heights[-1], self.heights[-1]))

    @classmethod
    def shared(cls) -> VirtualTree:
        """One instance for length computations."""
        global _SHARED_TREE
        if _SHARED_TREE is None:
            _SHARED_TREE = cls()
        return _SHARED_TREE

    def root(self, size: int) -> bytes:
        return root_from_hashes([self.heights[n.level] for n in root_nodes(size)])

    def proof(self, first: int, second: int) -> list[bytes]:
        nodes = consistency_nodes(first, second)
        return build_consistency_proof(first, second, [self.heights[n.level] for n in nodes])


def consistency_proof_length(first: int, second: int) -> int:
    """Number of hashes in PROOF(first, D[second]) for ``0 < first < second``."""
    return len(VirtualTree.shared().proof(first, second))


def size_chain(count: int, rng: random.Random) -> list[int]:
    """``count + 1`` increasing odd sizes whose consecutive consistency proofs have 30 hashes.

    For odd ``m`` and ``a = m - 1``, PROOF(m, D[n]) has ``p + popcount(a >> p) + 1`` hashes,
    where ``p`` is the bit length of ``(m - 1) XOR (n - 1)`` (RFC 9162 §2.1.4.2 path shape).
    That count grows by one at each zero bit of ``a``, so the smallest ``p`` giving 30 has bit
    ``p - 1`` of ``a`` clear: ``n - 1`` keeps the bits of ``a`` above ``p - 1``, sets that bit
    and takes random even low bits. Each step adds a set bit above the random part, so one
    chain lasts a few dozen steps at most: callers use short chains on many logs. A start that
    cannot make ``count`` steps is replaced.
    """
    while True:
        sizes = [(1 << 40) | rng.getrandbits(24) | 1]
        while len(sizes) <= count:
            a = sizes[-1] - 1
            p = next(
                (p for p in range(2, a.bit_length() + 2) if p + (a >> p).bit_count() + 1 == 30),
                None,
            )
            if p is None or (a >> (p - 1)) & 1:
                break
            low = rng.getrandbits(p - 1) & ~1
            grown = ((a >> p) << p | 1 << (p - 1) | low) + 1
            if consistency_proof_length(sizes[-1], grown) != PROOF_HASHES:
                raise AssertionError("proof length formula disagrees with merkle.tree")
            sizes.append(grown)
        if len(sizes) > count:
            return sizes


@dataclass(frozen=True, slots=True)
class LogRun:
    """One log's pre-built requests: its configuration, the first body, then timed bodies."""

    config: LogConfig
    first: bytes
    bodies: list[bytes]


def build_log(origin: str, steps: int, rng: random.Random) -> LogRun:
    """Build a log of ``steps`` timed checkpoints after a first one, all signed."""
    signer = Ed25519Signer.generate(origin)
    tree = VirtualTree.shared()
    sizes = size_chain(steps, rng)

    def note(size: int) -> bytes:
        return sign_note(format_checkpoint(Checkpoint(origin, size, tree.root(size))), [signer])

    bodies = []
    for old, new in itertools.pairwise(sizes):
        proof = tree.proof(old, new)
        lines = b"".join(base64.b64encode(h) + b"\n" for h in proof)
        bodies.append(b"old %d\n" % old + lines + b"\n" + note(new))
    return LogRun(LogConfig(origin, (signer.vkey,)), b"old 0\n\n" + note(sizes[0]), bodies)


# --------------------------------------------------------------------------- unavoidable work


def time_per_op(fn: Callable[[], object], repeat: int) -> float:
    """Mean seconds per call of ``fn`` over ``repeat`` calls."""
    started = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - started) / repeat


def unavoidable(directory: Path, sample: LogRun, repeat: int) -> dict[str, float]:
    """Time one Ed25519 verify, one Ed25519 sign and one durable SQLite write, each alone."""
    bodies = sample.bodies
    note_bytes = bodies[0].split(b"\n\n", 1)[1]
    note = parse_note(note_bytes)
    verifier = sample.config.verifiers[0]
    message = note.text.encode()
    signature = note.signatures[0].signature
    if not verifier.verify(message, signature):
        raise AssertionError("sample note does not verify")
    key = Ed25519PrivateKey.generate()
    to_sign = cosignature_message(note.text, 1_767_225_600)
    verify = time_per_op(lambda: verifier.verify(message, signature), repeat)
    sign = time_per_op(lambda: key.sign(to_sign), repeat)

    connection = sqlite3.connect(directory / "unavoidable.sqlite3", isolation_level=None)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = FULL")
    connection.execute(
        "CREATE TABLE IF NOT EXISTS checkpoints (origin TEXT PRIMARY KEY, note BLOB) STRICT"
    )
    # Every write stores another note, as the witness does: SQLite skips the disk entirely
    # for an update that changes nothing, which would make the write look free.
    notes = itertools.cycle(
        [body.split(b"\n\n", 1)[1] + b"\xe2\x80\x94 w " + b"x" * 100 + b"\n" for body in bodies]
    )

    def write() -> None:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute(
            "INSERT INTO checkpoints VALUES ('o', ?) ON CONFLICT (origin) DO UPDATE "
            "SET note = excluded.note",
            (next(notes),),
        )
        connection.execute("COMMIT")

    durable = time_per_op(write, repeat)
    connection.close()
    return {"verify": verify, "sign": sign, "write": durable}


# --------------------------------------------------------------------------- the witness


class Poster(Protocol):
    """Something that POSTs a body to /add-checkpoint and returns (status, answer)."""

    async def __call__(self, body: bytes) -> tuple[int, bytes]: ...


Witnessing = Callable[[Path, Sequence[LogRun]], AbstractAsyncContextManager[Poster]]
"""Starts a witness for the given logs and yields a :class:`Poster` to it."""


def asgi_poster(app: Starlette) -> Poster:
    """Drive the ASGI application directly: the whole witness app, no client library."""

    async def post(body: bytes) -> tuple[int, bytes]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/add-checkpoint",
            "raw_path": b"/add-checkpoint",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 8380),
        }
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        status = 0
        answer = bytearray()

        async def receive() -> dict[str, object]:
            return messages.pop() if messages else {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                answer.extend(message.get("body", b""))

        await app(scope, receive, send)
        return status, bytes(answer)

    return post


def http11_poster(client: Http11Client) -> Poster:
    """POST with the lean HTTP/1.1 client of :mod:`benchmarks.http11` (over a real socket)."""

    async def post(body: bytes) -> tuple[int, bytes]:
        answer = await client.request("POST", "/add-checkpoint", body)
        return answer.status, answer.body

    return post


def httpx_poster(client: httpx.AsyncClient) -> Poster:
    """POST with an httpx client (over a real socket)."""

    async def post(body: bytes) -> tuple[int, bytes]:
        response = await client.post("/add-checkpoint", content=body)
        return response.status_code, response.content

    return post


@contextlib.asynccontextmanager
async def in_process(directory: Path, logs: Sequence[LogRun]) -> AsyncIterator[Poster]:
    """A witness app on SQLite in ``directory``, driven through ASGI calls."""
    storage = await open_storage(directory / "witness.sqlite3")
    witness = Witness(
        logs=[log.config for log in logs],
        signer=CosignatureSigner.generate("bench.example/witness"),
        storage=storage,
        metrics=WitnessMetrics(),
        rate_per_second=1e9,
        rate_burst=10**9,
    )
    http = httpx.AsyncClient()
    gossip = Gossip(witness, http)

    @contextlib.asynccontextmanager
    async def components() -> AsyncIterator[Components]:
        yield Components(witness, gossip, 64 * 1024, False)

    app = create_app(components)
    try:
        async with app.router.lifespan_context(app):
            yield asgi_poster(app)
    finally:
        await http.aclose()
        await storage.close()


def write_log_list(directory: Path, logs: Sequence[LogRun]) -> Path:
    """Write the TOML log list of ``logs`` into ``directory``; return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "logs.toml"
    path.write_text("".join(f'[[log]]\nvkey = "{log.config.vkeys[0]}"\n' for log in logs))
    return path


@contextlib.asynccontextmanager
async def over_http(
    directory: Path, logs: Sequence[LogRun], kind: str = "raw"
) -> AsyncIterator[Poster]:
    """A ``python -m witness`` process on a free loopback port, and a keep-alive client.

    ``kind`` is the client that sends the timed requests: ``"raw"``
    (:class:`benchmarks.http11.Http11Client`) or ``"httpx"``.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    logs_file = write_log_list(directory, logs)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "witness", "--data-dir", str(directory / "data"),
        "--logs", str(logs_file), "--listen", f"127.0.0.1:{port}",
        "--name", "bench.example/http", "--rate", "1000000000", "--burst", "1000000000",
        "--log-level", "WARNING",
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits) as client:
            for _ in range(400):
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get("/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
            if kind == "httpx":
                yield httpx_poster(client)
            else:
                lean = Http11Client(str(client.base_url), max_connections=64, timeout=30.0)
                try:
                    yield http11_poster(lean)
                finally:
                    await lean.aclose()
    finally:
        process.terminate()
        await process.wait()


async def send(post: Poster, body: bytes) -> None:
    status, answer = await post(body)
    if status != 200:
        raise RuntimeError(f"witness answered {status}: {answer!r}")


async def run_witness(
    client: Poster, logs: Sequence[LogRun], clients: int
) -> tuple[float, list[float]]:
    """Send every log's first body, then time all other bodies from ``clients`` clients."""
    for log in logs:
        await send(client, log.first)
    queue: asyncio.Queue[LogRun] = asyncio.Queue()
    for log in logs:
        queue.put_nowait(log)
    latencies: list[float] = []

    async def worker() -> None:
        while not queue.empty():
            log = queue.get_nowait()
            for body in log.bodies:
                started = time.perf_counter()
                await send(client, body)
                latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return len(latencies) / (time.perf_counter() - started), latencies


def report(name: str, rate: float, latencies: list[float], allowed: float) -> None:
    ordered = sorted(latencies)
    p50 = statistics.median(ordered) * 1e3
    p99 = ordered[max(0, int(len(ordered) * 0.99) - 1)] * 1e3
    print(
        f"{name:<44} {rate:7.0f} req/s  {rate / allowed:6.1%} of the unavoidable rate  "
        f"(p50 {p50:.2f} ms, p99 {p99:.2f} ms)"
    )


async def main_async(args: argparse.Namespace) -> None:
    rng = random.Random(7)
    count = max(1, args.requests // args.steps)
    logs = [build_log(f"bench.example/log{i}", args.steps, rng) for i in range(count)]
    with tempfile.TemporaryDirectory(dir=args.dir) as raw:
        directory = Path(raw)
        print(
            f"add-checkpoint, {PROOF_HASHES}-hash proofs, durable SQLite; "
            f"{count * args.steps} requests over {count} logs; {os.cpu_count()} CPUs"
        )

        def http(directory: Path, logs: Sequence[LogRun]) -> AbstractAsyncContextManager[Poster]:
            return over_http(directory, logs, args.client)

        runs: list[tuple[str, Witnessing, int]] = [
            ("in process", in_process, 1),
            ("in process", in_process, args.clients),
        ]
        if args.http:
            where = f"uvicorn + loopback, {args.client}"
            runs += [(where, http, 1), (where, http, args.clients)]
        for number, (where, make, clients) in enumerate(runs):
            # The unavoidable work is timed right before each run, under the same load.
            work = unavoidable(directory, logs[number % len(logs)], args.repeat)
            total = sum(work.values())
            print(
                f"  unavoidable: verify {work['verify'] * 1e6:.0f} us + sign "
                f"{work['sign'] * 1e6:.0f} us + durable write {work['write'] * 1e6:.0f} us = "
                f"{total * 1e6:.0f} us -> {1 / total:.0f} req/s"
            )
            async with make(directory / f"run{number}", logs) as client:
                rate, latencies = await run_witness(client, logs, clients)
            label = "sequential" if clients == 1 else f"{clients} clients"
            report(f"witness, {where}, {label}", rate, latencies, 1 / total)


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark the witness's add-checkpoint.")
    parser.add_argument("--requests", type=int, default=2000, help="timed requests")
    parser.add_argument("--steps", type=int, default=10, help="timed checkpoints per log")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--repeat", type=int, default=2000, help="samples per unit of work")
    parser.add_argument("--http", action="store_true", help="also measure a real process")
    parser.add_argument(
        "--client", choices=("raw", "httpx"), default="raw", help="HTTP client of --http"
    )
    parser.add_argument("--dir", default=None, help="directory for the databases")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
