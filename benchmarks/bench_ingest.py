"""Benchmark of the OAuth layer: signed ingestion against bare Ed25519, lookups against empty GET.

Run from the project root::

    .venv/bin/python -m benchmarks.bench_ingest [--batches 12] [--batch-size 1000]
        [--concurrency 2] [--backend sqlite|postgres] [--rounds 3] [--lookup-size 1000000]
        [--lookup-seconds 30] [--lookup-concurrency 16] [--lookup-dir DIR]
        [--baseline-tree DIR] [--skip-ingest] [--skip-lookup]
        [--design per-event|batch-root|batch-root-whole|all]

The machine is shared, so every comparison is made in ``--rounds`` interleaved rounds (a
measurement of each side per round) and the median of the per-round ratios is reported, with
every round's figures.

**Ingestion.** ``--batches`` request bodies of ``--batch-size`` signed ``token-issued`` events
each (every event distinct, signed by a registered submitter; built before the clock starts)
are posted to ``POST /v1/events/batch`` of the real app (:func:`server.ingest.
create_oauth_app`: authentication, rate limit, bounded JSON decoding, secret scan, validation,
Ed25519 verification, sequencing, durable commit, receipts), ``--concurrency`` requests in
flight, in process through a minimal ASGI call (no HTTP client, whose CPU would be counted
against the server). Every answer is checked: 200, one result per event, each with an index.
Bare verification is ``Ed25519PublicKey.verify`` of the same signatures over the same messages
in a plain loop, measured right before each round's ingestion. Rates are given per second of
wall-clock time and per second of this process's CPU time (all its threads). Target: at least
70%.

Three variants are measured (``--design all``, the default), each against its own bare
verification rounds in the same run: ``per-event`` (one Ed25519 signature per event, ``POST
/v1/events/batch``); ``batch-root`` (:mod:`client.batchsig`: the submitter signs the RFC 6962
root of each 1,000-event batch once and every event carries its index and path, ``POST
/v1/events/signed-batch``; one verification per request, each event's path decoded and folded);
``batch-root-whole`` (the same signed batches with the paths left out, as a request holding a
whole batch may: the log rebuilds the tree, about two hashes per event, and logs the paths it
computed; what the emitter sends). The baseline stays bare per-event verification of the same
events: what ingestion would cost if verification were all it did.

**Lookups.** A log of ``--lookup-size`` entries is built directly through the sequencer (the
same leaves ingestion writes, each with its own token reference; the HTTP path is not needed to
fill a tree), then served by ``python -m server`` on uvicorn, and ``GET /v1/lookup?token_ref=``
(random existing references, every answer checked to hold the right entry) is driven over HTTP
by a lean keep-alive client (:mod:`benchmarks.http11`), and so is ``GET /get`` of the empty
baseline app (:mod:`benchmarks.baseline_app`, uvicorn with the same options) with the same
client and concurrency, alternating for ``--lookup-seconds`` in all. Two kinds of lookups
alternate with the baseline: *distinct* references (up to 400,000 picked at random, each asked
once: every answer is read from storage) and *repeated* ones (5,000 references asked over and
over: the log keeps public token-reference answers while the tree size stays the same).
Rates are given per second of wall-clock time and per CPU-second of the serving process
(``/proc/<pid>/stat``: what one answer costs the server, less sensitive to other load on the
machine). Target: at least 60% of the empty GET's rate.

``--baseline-tree DIR`` also serves the same log with the code in ``DIR`` (an export of an
earlier commit: ``git archive <commit> | tar -x -C DIR``), at the same time, and measures its
distinct lookups in each round too (with references of their own): a before/after comparison
under the same load.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from benchmarks.http11 import Http11Client
from client.batchsig import build_batch
from client.tokens import token_ref
from merkle.hashing import leaf_hash
from server.codec import encode_deterministic
from server.events import event_lookup_keys
from server.ingest import SIGNED_BATCH_PATH, OAuthLayer, OAuthSettings
from server.keys import load_or_create_log_key
from server.leaves import encode_event_leaf, event_signing_message
from server.log import LogService
from server.principals import event_key_id, new_principal
from server.sequencer import Submission
from server.storage import PostgresStorage, SQLiteStorage, open_storage
from server.storage.base import Principal, PrincipalKey

ORIGIN = "bench.example/etch/ingest"
PROJECT_ROOT = Path(__file__).resolve().parents[1]


# -- a minimal in-process ASGI call ----------------------------------------------------------------


async def asgi_request(
    app: Any, method: str, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, bytes]:
    """Call an ASGI app once and return (status, body): the least a client can cost."""
    path_only, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path_only,
        "raw_path": path_only.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        + [(b"content-length", str(len(body)).encode())],
        "server": ("bench", 80),
        "client": ("127.0.0.1", 1),
    }
    sent = False
    status = 0
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)


# -- events ----------------------------------------------------------------------------------------

NOW = int(time.time())


def make_event(tag: str, i: int) -> dict[str, Any]:
    """A realistic ``token-issued`` event; ``tag`` and ``i`` make it unique."""
    return {
        "iss": "https://as.example.com",
        "jti": f"{tag}-{i:09d}",
        "iat": NOW,
        "type": "token-issued",
        "client_id": f"client-{i % 97}",
        "sub": f"pseudonym-{i % 10007}",
        "token_type": "access_token",
        "grant_type": "authorization_code",
        "scope": ["openid", "profile", "email"],
        "exp": NOW + 3600,
        "token_ref": token_ref(f"{tag}-access-{i}".encode()),
        "parent_token_ref": token_ref(f"{tag}-code-{i}".encode()),
    }


@dataclass
class Prepared:
    """Request bodies and the (signature, message) pairs of every event in them."""

    bodies: list[bytes]
    pairs: list[tuple[bytes, bytes]]


def prepare(
    key: Ed25519PrivateKey, tag: str, batches: int, size: int, design: str, submitter: str
) -> Prepared:
    """Sign ``batches * size`` distinct events and build the batch bodies of ``design``.

    ``pairs`` always holds every event's own (signature, message): the bare baseline.
    """
    bodies: list[bytes] = []
    pairs: list[tuple[bytes, bytes]] = []
    b64 = base64.b64encode
    for b in range(batches):
        events = [make_event(tag, i) for i in range(b * size, (b + 1) * size)]
        encodings = [encode_deterministic(event) for event in events]
        envelopes = []
        for event, encoded in zip(events, encodings, strict=True):
            message = event_signing_message(encoded)
            signature = key.sign(message)
            pairs.append((signature, message))
            envelopes.append({"event": event, "signature": b64(signature).decode()})
        if design == "per-event":
            bodies.append(json.dumps(envelopes).encode())
            continue
        signed = build_batch(submitter, key, encodings)
        items: list[dict[str, Any]] = [
            {"index": p.index, "path": [b64(h).decode() for h in p.path], "event": event}
            for p, event in zip(signed.proofs, events, strict=True)
        ]
        if design == "batch-root-whole":
            items = [{"index": item["index"], "event": item["event"]} for item in items]
        body = {
            "size": size,
            "root": b64(signed.root).decode(),
            "signature": b64(signed.signature).decode(),
            "events": items,
        }
        bodies.append(json.dumps(body).encode())
    return Prepared(bodies, pairs)


@dataclass(frozen=True, slots=True)
class Rate:
    """Events per second of wall-clock time and per second of this process's CPU time."""

    wall: float
    cpu: float


def bare_verify_rate(public: Ed25519PublicKey, pairs: Sequence[tuple[bytes, bytes]]) -> Rate:
    """Ed25519 verifications per second over ``pairs``, in a plain loop."""
    start, cpu = time.perf_counter(), time.process_time()
    for signature, message in pairs:
        public.verify(signature, message)
    return Rate(
        len(pairs) / (time.perf_counter() - start), len(pairs) / (time.process_time() - cpu)
    )


# -- ingestion ------------------------------------------------------------------------------


def check_answers(answers: Sequence[tuple[int, bytes]], batch_size: int) -> None:
    """Check every batch answer (after the clock stopped): 200, all new, distinct indexes."""
    seen: set[int] = set()
    for status, answer in answers:
        if status != 200:
            raise RuntimeError(f"batch answered {status}: {answer[:300]!r}")
        results = json.loads(answer)["results"]
        if len(results) != batch_size or not all(r.get("duplicate") is False for r in results):
            raise RuntimeError("a batch result is not a new entry")
        seen.update(r["index"] for r in results)
    if len(seen) != len(answers) * batch_size:
        raise RuntimeError("an index was handed out twice")


@contextlib.asynccontextmanager
async def database(backend: str, directory: Path) -> AsyncIterator[str]:
    """Yield a database URL: an SQLite file, or a throwaway PostgreSQL database."""
    if backend == "sqlite":
        yield str(directory / "log.db")
        return
    from tests.pg import PgServer

    server = PgServer.create()
    try:
        yield server.create_database("bench_ingest")
    finally:
        server.destroy()


async def bench_ingest(args: argparse.Namespace, design: str) -> dict[str, Any]:
    """Run the ingestion benchmark of one design and return its figures."""
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    tag = f"run{random.randrange(10**9)}"
    prepared = prepare(key, tag, args.batches + 1, args.batch_size, design, "bench")
    path = "/v1/events/batch" if design == "per-event" else SIGNED_BATCH_PATH
    warmup, bodies = prepared.bodies[0], prepared.bodies[1:]
    measured_pairs = prepared.pairs[args.batch_size :]
    with tempfile.TemporaryDirectory(prefix="etch-bench-ingest-") as tmp:
        async with database(args.backend, Path(tmp)) as url:
            storage = open_storage(url)
            assert isinstance(storage, SQLiteStorage | PostgresStorage)
            signer = load_or_create_log_key(Path(tmp) / "keys", ORIGIN).signer
            service = LogService(
                storage, signer, ORIGIN, batch_size=args.batch_size, batch_period=0.005
            )
            layer = OAuthLayer(
                service,
                storage,
                OAuthSettings(submitter_rate=10_000_000, submitter_burst=100_000_000),
            )
            from server.app import create_app

            app = create_app(
                service,
                intake=layer,
                read_guard=layer.read_guard,
                extra_routes=layer.routes(),
                manage_service=False,
            )
            await service.start()
            try:
                created = new_principal("submitter", "bench", now_ms=0)
                raw = public.public_bytes_raw()
                principal = Principal(
                    "submitter",
                    "bench",
                    created.principal.credential_hash,
                    "active",
                    0,
                    (PrincipalKey(event_key_id(raw), "event", "Ed25519", raw, 0),),
                )
                await storage.add_principal(principal)
                headers = {
                    "authorization": f"Bearer {created.credential}",
                    "content-type": "application/json",
                }

                answers: list[tuple[int, bytes]] = []

                async def post(body: bytes) -> None:
                    answers.append(await asgi_request(app, "POST", path, body, headers))

                await post(warmup)
                rounds: list[tuple[Rate, Rate]] = []
                per_round = max(1, len(bodies) // args.rounds)
                for first in range(0, len(bodies), per_round):
                    chunk = bodies[first : first + per_round]
                    pairs = measured_pairs[
                        first * args.batch_size : (first + len(chunk)) * args.batch_size
                    ]
                    bare = bare_verify_rate(public, pairs)
                    queue = list(reversed(chunk))

                    async def worker(queue: list[bytes] = queue) -> None:
                        while queue:
                            await post(queue.pop())

                    start, cpu = time.perf_counter(), time.process_time()
                    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
                    elapsed, cpu_used = time.perf_counter() - start, time.process_time() - cpu
                    count = len(chunk) * args.batch_size
                    rounds.append((Rate(count / elapsed, count / cpu_used), bare))
                check_answers(answers, args.batch_size)
            finally:
                await service.stop()
    wall = [ingest.wall / bare.wall for ingest, bare in rounds]
    cpu_ratios = [ingest.cpu / bare.cpu for ingest, bare in rounds]
    return {
        "design": design,
        "events": args.batches * args.batch_size,
        "batch_size": args.batch_size,
        "concurrency": args.concurrency,
        "backend": args.backend,
        "rounds": [
            {
                "ingest_per_s": round(ingest.wall),
                "bare_verify_per_s": round(bare.wall),
                "ingest_per_cpu_s": round(ingest.cpu),
                "bare_verify_per_cpu_s": round(bare.cpu),
            }
            for ingest, bare in rounds
        ],
        "ratio_median": round(statistics.median(wall), 3),
        "cpu_ratio_median": round(statistics.median(cpu_ratios), 3),
    }


# -- lookups --------------------------------------------------------------------------------


def sample_refs(size: int) -> list[str]:
    """Return the token reference of every 97th event of a log built by :func:`build_log`."""
    return [str(make_event("lookup", i)["token_ref"]) for i in range(0, size, 97)]


async def build_log(data_dir: Path, size: int, batch: int = 1000) -> None:
    """Fill a log up to ``size`` event leaves through the sequencer (resuming a partial one)."""
    key = load_or_create_log_key(data_dir, ORIGIN)
    storage = open_storage(str(data_dir / "log.db"))
    service = LogService(
        storage, key.signer, ORIGIN, batch_size=batch, batch_period=0.0, full_check=False
    )
    await service.start()
    signature = bytes(64)
    try:
        start = service.tree_size
        pending: list[asyncio.Task[Any]] = []
        for first in range(start, size, batch):
            submissions = []
            for i in range(first, min(size, first + batch)):
                event = make_event("lookup", i)
                log_time = (NOW - 86_400) * 1000 + i  # a day ago, one millisecond apart
                data = encode_event_leaf("bench", encode_deterministic(event), signature, log_time)
                submissions.append(
                    Submission(
                        data,
                        leaf_hash(data),
                        idempotency_key=f"bench\x00{event['jti']}",
                        lookup_keys=event_lookup_keys(event),
                        log_time=log_time,
                    )
                )
            pending.append(asyncio.create_task(service.submit(submissions)))
            if len(pending) >= 3:
                await pending.pop(0)
        for task in pending:
            await task
    finally:
        await service.stop()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def running(
    command: list[str], ready: str | None, url: str | None, cwd: Path = PROJECT_ROOT
) -> Any:
    """Run a server process (in ``cwd``) until the block ends; wait for its ready line or its
    /healthz.

    Yields ``(url, pid)``.
    """
    process = subprocess.Popen(
        command,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if not k.startswith("ETCH_")},
        text=True,
    )
    try:
        found = url
        if ready is not None:
            assert process.stdout is not None
            for line in process.stdout:
                if line.startswith(ready):
                    found = line.split()[1]
                    break
        else:
            import urllib.request

            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                with (
                    contextlib.suppress(OSError),
                    urllib.request.urlopen(f"{url}/healthz", timeout=2) as answer,
                ):
                    if answer.status == 200:
                        break
                time.sleep(0.2)
        yield found, process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def cpu_seconds(pid: int) -> float:
    """Return the user + system CPU seconds a process has used (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Served:
    """Answers per second of wall-clock time and per CPU-second of the serving process."""

    wall: float
    cpu: float


def measure(
    url: str, pid: int, paths: Sequence[str], seconds: float, concurrency: int, check: Any
) -> Served:
    """Run :func:`drive` and also count the server process's CPU time over it."""
    before = cpu_seconds(pid)
    started = time.perf_counter()
    rate = asyncio.run(drive(url, paths, seconds, concurrency, check))
    elapsed = time.perf_counter() - started
    used = cpu_seconds(pid) - before
    # drive() warms up for about a second first: take the measured share of the CPU time.
    measured_cpu = used * seconds / elapsed
    return Served(rate, rate * seconds / measured_cpu if measured_cpu else 0.0)


async def drive(
    url: str, paths: Sequence[str], seconds: float, concurrency: int, check: Any
) -> float:
    """Send GETs of ``paths`` (round robin) for ``seconds``; return answers per second."""
    client = Http11Client(url, max_connections=concurrency, timeout=30)
    done = 0
    deadline = 0.0
    sent = 0  # one sequence over warm-up and measurement: each path once before any repeat

    async def worker() -> None:
        nonlocal done, sent
        while time.perf_counter() < deadline:
            path = paths[sent % len(paths)]
            sent += 1
            answer = await client.request("GET", path)
            if answer.status != 200:
                raise RuntimeError(f"{path} answered {answer.status}")
            check(path, answer.body)
            done += 1

    # Warm up the connections, then measure.
    deadline = time.perf_counter() + 1.0
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    rate = done / (time.perf_counter() - start)
    await client.aclose()
    return rate


def bench_lookup(args: argparse.Namespace) -> dict[str, Any]:
    """Build the large log, serve it, and compare token-ref lookups with the empty GET."""
    with tempfile.TemporaryDirectory(prefix="etch-bench-lookup-") as tmp:
        data_dir = args.lookup_dir or Path(tmp) / "data"
        started = time.perf_counter()
        asyncio.run(build_log(data_dir, args.lookup_size))
        build_seconds = time.perf_counter() - started
        refs = sample_refs(args.lookup_size)
        random.shuffle(refs)
        repeated = [f"/v1/lookup?token_ref={ref}" for ref in refs[:5000]]
        # Distinct references, a fresh slice per round: no answer is ever asked twice.
        picked = random.sample(range(args.lookup_size), min(args.lookup_size, 400_000))
        distinct = [
            f"/v1/lookup?token_ref={token_ref(f'lookup-access-{i}'.encode())}" for i in picked
        ]

        def check_lookup(path: str, body: bytes) -> None:
            results = json.loads(body)["results"]
            if len(results) != 1:
                raise RuntimeError(f"{path} found {len(results)} entries")

        def check_empty(path: str, body: bytes) -> None:
            if body != b"ok":
                raise RuntimeError("the baseline answered something else")

        def server(port: int) -> list[str]:
            return [
                sys.executable, "-m", "server", "--data-dir", str(data_dir), "--origin", ORIGIN,
                "--port", str(port), "--log-level", "warning",
            ]  # fmt: skip

        port, before_port = _free_port(), _free_port()
        baseline = [sys.executable, "-m", "benchmarks.baseline_app", "--port", "0"]
        seconds = args.lookup_seconds / args.rounds
        rounds: list[tuple[Served, Served, Served]] = []
        earlier: list[Served] = []
        share = len(distinct) // (2 * args.rounds)
        concurrency = args.lookup_concurrency
        with contextlib.ExitStack() as stack:
            log_url, log_pid = stack.enter_context(
                running(server(port), None, f"http://127.0.0.1:{port}")
            )
            empty_url, empty_pid = stack.enter_context(running(baseline, "ready", None))
            if args.baseline_tree is not None:
                before_url, before_pid = stack.enter_context(
                    running(
                        server(before_port),
                        None,
                        f"http://127.0.0.1:{before_port}",
                        cwd=args.baseline_tree,
                    )
                )
            for number in range(args.rounds):
                fresh = distinct[2 * number * share : (2 * number + 1) * share]
                uncached = measure(log_url, log_pid, fresh, seconds, concurrency, check_lookup)
                if args.baseline_tree is not None:
                    other = distinct[(2 * number + 1) * share : (2 * number + 2) * share]
                    earlier.append(
                        measure(before_url, before_pid, other, seconds, concurrency, check_lookup)
                    )
                again = measure(log_url, log_pid, repeated, seconds, concurrency, check_lookup)
                empty = measure(empty_url, empty_pid, ["/get"], seconds, concurrency, check_empty)
                rounds.append((uncached, again, empty))
    compared: dict[str, Any] = {}
    if earlier:
        empties = [empty for _, _, empty in rounds]
        compared = {
            "baseline_tree": str(args.baseline_tree),
            "baseline_tree_distinct_refs_per_s": [round(b.wall) for b in earlier],
            "baseline_tree_distinct_refs_per_server_cpu_s": [round(b.cpu) for b in earlier],
            "baseline_tree_distinct_ratio_median": round(
                statistics.median(b.wall / c.wall for b, c in zip(earlier, empties, strict=True)),
                3,
            ),
            "baseline_tree_distinct_cpu_ratio_median": round(
                statistics.median(b.cpu / c.cpu for b, c in zip(earlier, empties, strict=True)), 3
            ),
        }
    return {
        "entries": args.lookup_size,
        "build_seconds": round(build_seconds, 1),
        "concurrency": args.lookup_concurrency,
        "rounds": [
            {
                "distinct_refs_per_s": round(uncached.wall),
                "repeated_refs_per_s": round(again.wall),
                "empty_get_per_s": round(empty.wall),
                "distinct_refs_per_server_cpu_s": round(uncached.cpu),
                "repeated_refs_per_server_cpu_s": round(again.cpu),
                "empty_get_per_server_cpu_s": round(empty.cpu),
            }
            for uncached, again, empty in rounds
        ],
        "distinct_ratio_median": round(statistics.median(a.wall / c.wall for a, _, c in rounds), 3),
        "repeated_ratio_median": round(statistics.median(b.wall / c.wall for _, b, c in rounds), 3),
        "distinct_cpu_ratio_median": round(
            statistics.median(a.cpu / c.cpu for a, _, c in rounds), 3
        ),
        "repeated_cpu_ratio_median": round(
            statistics.median(b.cpu / c.cpu for _, b, c in rounds), 3
        ),
        "server_cpu_us_per_distinct_lookup_median": round(
            statistics.median(1e6 / a.cpu for a, _, _ in rounds if a.cpu), 1
        ),
        "server_cpu_us_per_empty_get_median": round(
            statistics.median(1e6 / c.cpu for _, _, c in rounds if c.cpu), 1
        ),
        **compared,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks and print their figures as JSON lines."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_ingest")
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--lookup-size", type=int, default=1_000_000)
    parser.add_argument("--lookup-seconds", type=float, default=30.0, help="over all rounds")
    parser.add_argument("--lookup-concurrency", type=int, default=16)
    parser.add_argument(
        "--lookup-dir", type=Path, help="keep the large log here and reuse it on later runs"
    )
    parser.add_argument(
        "--baseline-tree",
        type=Path,
        help="also serve the log with the code in this directory (an earlier commit) and compare",
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds")
    parser.add_argument(
        "--design", choices=("per-event", "batch-root", "batch-root-whole", "all"), default="all"
    )
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--skip-lookup", action="store_true")
    args = parser.parse_args(argv)
    if not args.skip_ingest:
        every = ("per-event", "batch-root", "batch-root-whole")
        designs = every if args.design == "all" else (args.design,)
        for design in designs:
            print(json.dumps({"ingest": asyncio.run(bench_ingest(args, design))}), flush=True)
    if not args.skip_lookup:
        print(json.dumps({"lookup": bench_lookup(args)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
