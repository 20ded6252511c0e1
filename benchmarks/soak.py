"""Soak benchmark: the log and three witnesses under steady, verified load for a long time.

Run from the project root::

    .venv/bin/python -m benchmarks.soak --minutes 30 --out benchmarks/soak/
        [--png benchmarks/soak.png] [--interval 10] [--probe-seconds 45]
        [--probe-concurrency 256] [--rate R] [--fraction 0.5] [--read-rate 60]
        [--database postgresql://...] [--batch-period-ms N] [--work-dir DIR]

What it does, in order:

1. In a temporary directory, writes a log key, three witness keys, a C2SP tlog-policy naming the
   log and the three witnesses with a quorum of 2 of 3, and the witnesses' log list; starts three
   witnesses (``python -m witness``, each gossiping with the other two) and the log
   (``python -m server`` with that policy, raw-map intake, public entries; SQLite by default,
   ``--database`` for PostgreSQL) as real processes on free ports, and waits until all are healthy.
2. **Probe**: submits single events flat out from ``--probe-concurrency`` closed-loop clients for
   ``--probe-seconds`` (after a 3 s warm-up), verifying every receipt, and takes the completed
   submissions per second as the maximum sustainable rate (``--rate`` skips the probe).
3. **Soak**: for ``--minutes``, submits single events open-loop at ``--fraction`` (one half) of
   that rate, each latency counted from the request's scheduled time, while readers send
   ``--read-rate`` requests per second (open loop), drawn from: the checkpoint, inclusion proofs,
   consistency proofs, level-0 hash tiles, entry bundles, single entries and receipts.
4. Every ``--interval`` seconds records a sample: resident memory (``VmRSS`` from ``/proc``, the
   process and its children) and CPU share of the log and of each witness, the load average,
   submission and read latency percentiles (p50/p95/p99/max) and throughput of the interval,
   errors by kind, the tree size (largest in a receipt) and the size of the newest cosigned
   checkpoint, and their difference (the cosigning lag).
5. Writes ``series.json`` (configuration, probe, samples, summary) and ``series.csv`` (one row per
   sample) to ``--out``, plots the series to ``--png`` (needs matplotlib, the ``bench`` extra),
   and prints a summary and a Markdown block for ``benchmarks/RESULTS.md``.

Every answer is verified; a verification failure is a hard failure (the run stops at the next
sample and exits 1). The checks:

* a submission: the receipt as :class:`benchmarks.load.ReceiptChecker` checks it (tlog-proof text,
  log signature, leaf hash of the event sent, inclusion proof); no index is handed out twice. The
  leaf hash is then *known* for that index, and readers check answers against known leaf hashes;
* ``GET /checkpoint``: log signature and witness quorum of the policy
  (:func:`merkle.policy.verify_checkpoint`); every verified checkpoint is compared with the newest
  one seen so far: same size, same root; different sizes, a consistency proof fetched from the log
  must verify (RFC 9162 §2.1.4) — so successive checkpoints never fork;
* an inclusion proof for a known index at the size of a verified checkpoint: the answer's leaf
  hash is the known one and the proof leads to that checkpoint's root;
* a consistency proof between two verified checkpoints: it verifies between their roots;
* a level-0 tile (full, or the partial one at the right edge) of a verified checkpoint: it has the
  right length and every hash in it equals the known leaf hash at that position;
* an entry bundle: it parses, has the right count, and each entry hashes to the known leaf hash;
* ``GET /v1/entries/<i>``: the entry hashes to the answer's leaf hash, which is the known one;
* ``GET /v1/receipt/<i>``: the tlog-proof parses, its checkpoint meets the policy, and the proof
  leads from the known leaf hash to its root; its checkpoint then joins the consistency check.

Exit status: 0 when the run had no verification failure and no failed request, 3 when requests
failed (HTTP errors or transport failures, counted by kind), 1 on a verification failure or when
a process died, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime
import functools
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx

from benchmarks.http11 import Http11Client, HttpError
from benchmarks.load import ReceiptChecker, VerificationError, json_object, percentile
from client.cbor import encode_deterministic
from merkle.checkpoint import Checkpoint
from merkle.errors import MerkleError
from merkle.hashing import HASH_SIZE, leaf_hash
from merkle.note import decode_base64
from merkle.policy import Policy, parse_policy, verify_checkpoint
from merkle.receipt import parse_receipt
from merkle.tiles import TILE_WIDTH, Tile, format_tile_path, parse_entry_bundle
from merkle.tree import verify_consistency, verify_inclusion
from server.config import DEFAULT_ORIGIN
from server.keys import load_or_create_log_key
from witness.keys import load_or_create_key

__all__ = [
    "READ_KINDS",
    "Cluster",
    "Knowledge",
    "Sample",
    "SoakConfig",
    "SoakResult",
    "format_markdown",
    "format_summary",
    "main",
    "plot",
    "run_soak",
    "write_series",
]

PROJECT_ROOT: Final = Path(__file__).resolve().parents[1]
HOST: Final = "127.0.0.1"
JSON_TYPE: Final = "application/json"
READ_KINDS: Final = (
    ("checkpoint", 2),
    ("inclusion", 6),
    ("consistency", 2),
    ("tile", 3),
    ("bundle", 2),
    ("entry", 3),
    ("receipt", 2),
)
"""Read kinds and their weights in the read mix."""
_MIB: Final = 1024 * 1024
_PAD_ALPHABET: Final = "abcdefghijklmnopqrstuvwxyz0123456789"
_HISTORY: Final = 64


# -- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SoakConfig:
    """What to run. ``rate`` set skips the probe; ``minutes`` is the soak's length.

    ``database`` is a ``postgresql://`` URL for the log (``None``: SQLite in the work
    directory). ``batch_period_ms`` ``None`` keeps the log's default.
    """

    minutes: float = 30.0
    interval: float = 10.0
    probe_seconds: float = 45.0
    probe_warmup: float = 3.0
    probe_concurrency: int = 256
    rate: float | None = None
    fraction: float = 0.5
    read_rate: float = 60.0
    max_connections: int = 512
    event_bytes: int = 300
    database: str | None = None
    batch_period_ms: int | None = None
    timeout: float = 60.0

    def __post_init__(self) -> None:
        if self.minutes <= 0 or self.interval <= 0 or self.probe_seconds <= 0:
            raise ValueError("minutes, interval and probe seconds must be positive")
        if self.probe_warmup < 0 or self.probe_concurrency < 1 or self.max_connections < 1:
            raise ValueError("warm-up must not be negative, concurrency and connections >= 1")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("rate must be positive")
        if not 0 < self.fraction <= 1:
            raise ValueError("fraction must be in (0, 1]")
        if self.read_rate < 0:
            raise ValueError("read rate must not be negative")
        if not 0 <= self.event_bytes <= 60_000:
            raise ValueError("event bytes must be between 0 and 60000")


# -- the processes ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class _Child:
    name: str
    url: str
    process: subprocess.Popen[bytes]


class Cluster:
    """The log and three witnesses as child processes, with their policy (2 of 3).

    Create with :meth:`start` (inside a ``with`` block, which stops every process on exit).
    """

    def __init__(self, work: Path, children: list[_Child], policy: Policy, vkey: str) -> None:
        self.work = work
        self.children = children
        self.policy = policy
        self.vkey = vkey

    @property
    def log(self) -> _Child:
        """The log process (the last child)."""
        return self.children[-1]

    @property
    def witnesses(self) -> list[_Child]:
        """The three witness processes."""
        return self.children[:-1]

    @classmethod
    @contextmanager
    def start(
        cls, work: Path, *, database: str | None = None, batch_period_ms: int | None = None
    ) -> Iterator[Cluster]:
        """Write keys and configuration under ``work``, start the processes, wait until healthy.

        Stops every process (SIGTERM, then SIGKILL after 10 s) when the block ends. Raises
        RuntimeError when a process exits early or is not healthy within 60 s.
        """
        log_port = _free_port()
        log_url = f"http://{HOST}:{log_port}"
        log_key = load_or_create_log_key(work / "log", DEFAULT_ORIGIN)
        witnesses: list[tuple[str, str, str]] = []
        for number in (1, 2, 3):
            wdir = work / f"witness-{number}"
            wdir.mkdir(parents=True, exist_ok=True)
            signer, _ = load_or_create_key(wdir / "witness.key", f"localhost/soak/witness-{number}")
            witnesses.append((f"witness-{number}", signer.vkey, f"http://{HOST}:{_free_port()}"))
        lines = [f"log {log_key.vkey} {log_url}"]
        lines += [f"witness {name} {vkey} {url}" for name, vkey, url in witnesses]
        lines += ["group local 2 " + " ".join(name for name, _, _ in witnesses), "quorum local"]
        policy_text = "\n".join(lines) + "\n"
        (work / "policy.txt").write_text(policy_text, encoding="utf-8")
        (work / "witness-logs.toml").write_text(
            f'[[log]]\norigin = "{DEFAULT_ORIGIN}"\nvkey = "{log_key.vkey}"\nurl = "{log_url}"\n',
            encoding="utf-8",
        )
        children: list[_Child] = []
        try:
            for number, (name, _, url) in enumerate(witnesses, 1):
                peers = [a for other in witnesses if other[0] != name for a in ("--peer", other[2])]
                args = [
                    "-m", "witness",
                    "--data-dir", str(work / f"witness-{number}"),
                    "--logs", str(work / "witness-logs.toml"),
                    "--listen", url.removeprefix("http://"),
                    "--poll-interval", "10",
                    "--log-level", "WARNING",
                    *peers,
                ]  # fmt: skip
                children.append(_spawn(name, url, args, work / f"{name}.out"))
            args = [
                "-m", "server",
                "--data-dir", str(work / "log"),
                "--host", HOST,
                "--port", str(log_port),
                "--origin", DEFAULT_ORIGIN,
                "--policy-file", str(work / "policy.txt"),
                "--intake", "raw",
                "--public-entries", "true",
                "--log-level", "warning",
            ]  # fmt: skip
            if database is not None:
                args += ["--database-url", database]
            if batch_period_ms is not None:
                args += ["--batch-period-ms", str(batch_period_ms)]
            children.append(_spawn("log", log_url, args, work / "log.out"))
            _wait_healthy(children, 60.0)
            yield cls(work, children, parse_policy(policy_text), log_key.vkey)
        finally:
            _stop(children)

    def dead(self) -> list[str]:
        """Names of the processes that have exited."""
        return [c.name for c in self.children if c.process.poll() is not None]


def _spawn(name: str, url: str, args: Sequence[str], out_path: Path) -> _Child:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCH_")}
    with out_path.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=PROJECT_ROOT,
            env=env,
        )
    return _Child(name, url, process)


def _wait_healthy(children: Sequence[_Child], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = list(children)
    while pending:
        for child in list(pending):
            if child.process.poll() is not None:
                raise RuntimeError(f"{child.name} exited with {child.process.returncode}")
            try:
                if httpx.get(child.url + "/healthz", timeout=1.0).status_code == 200:
                    pending.remove(child)
            except httpx.HTTPError:
                pass
        if pending and time.monotonic() > deadline:
            raise RuntimeError("not healthy in time: " + ", ".join(c.name for c in pending))
        time.sleep(0.1)


def _stop(children: Sequence[_Child]) -> None:
    for child in children:
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.process.wait(10)
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait(10)


# -- /proc readings ----------------------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    """``pid`` and every descendant (from ``/proc/<pid>/task/<tid>/children``)."""
    found = [pid]
    position = 0
    while position < len(found):
        current = found[position]
        position += 1
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                text = Path(f"/proc/{current}/task/{tid}/children").read_text(encoding="ascii")
            except OSError:
                continue
            found += [int(x) for x in text.split()]
    return found


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and its descendants, bytes (``VmRSS``); 0 if it is gone."""
    total = 0
    for one in _descendants(pid):
        try:
            text = Path(f"/proc/{one}/status").read_text(encoding="ascii")
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` and its descendants, seconds; 0 if it is gone."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for one in _descendants(pid):
        try:
            text = Path(f"/proc/{one}/stat").read_text(encoding="ascii")
        except OSError:
            continue
        fields = text.rpartition(")")[2].split()
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


# -- what the readers know -------------------------------------------------------------------


class Knowledge:
    """Leaf hashes learnt from verified receipts, and the verified checkpoints seen.

    Readers check every answer against these. Not thread-safe (one event loop).
    """

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._hashes = bytearray()
        self._known = bytearray()
        self.count = 0
        self.tree_size = 0
        self._notes: dict[bytes, Checkpoint] = {}
        self.newest: Checkpoint | None = None
        self.history: list[Checkpoint] = []

    def learn(self, index: int, value: bytes, tree_size: int) -> None:
        """Record the leaf hash of ``index`` from a verified receipt against ``tree_size``.

        Raises VerificationError when the index was handed out before.
        """
        end = (index + 1) * HASH_SIZE
        if end > len(self._hashes):
            grow = max(end - len(self._hashes), 1 << 20)
            self._hashes.extend(bytes(grow))
            self._known.extend(bytes(grow // HASH_SIZE // 8 + 1))
        byte, bit = divmod(index, 8)
        if self._known[byte] >> bit & 1:
            raise VerificationError(f"index {index} was handed out twice")
        self._known[byte] |= 1 << bit
        self._hashes[index * HASH_SIZE : end] = value
        self.count += 1
        self.tree_size = max(self.tree_size, tree_size)

    def leaf(self, index: int) -> bytes | None:
        """The known leaf hash of ``index``, or ``None``."""
        byte, bit = divmod(index, 8)
        if byte >= len(self._known) or not self._known[byte] >> bit & 1:
            return None
        return bytes(self._hashes[index * HASH_SIZE : (index + 1) * HASH_SIZE])

    def known_index(self, rng: random.Random, below: int) -> int | None:
        """A random known index below ``below`` (``None`` if a few draws find none)."""
        for _ in range(16):
            if below <= 0:
                return None
            index = rng.randrange(below)
            if self.leaf(index) is not None:
                return index
        return None

    def verify_note(self, note: bytes) -> tuple[Checkpoint, bool]:
        """Verify a checkpoint note against the policy; return it and whether it is new.

        Raises VerificationError when the signature or the quorum fails.
        """
        known = self._notes.get(note)
        if known is not None:
            return known, False
        try:
            checkpoint, _ = verify_checkpoint(self.policy, note)
        except MerkleError as exc:
            raise VerificationError(f"checkpoint does not meet the policy: {exc}") from None
        if len(self._notes) > 4096:
            self._notes.clear()
        self._notes[note] = checkpoint
        return checkpoint, True

    def needs_proof(self, checkpoint: Checkpoint) -> Checkpoint | None:
        """The newest checkpoint to prove ``checkpoint`` consistent with (``None``: no proof).

        Raises VerificationError when both have the same size and different roots.
        """
        newest = self.newest
        if newest is None:
            return None
        if newest.tree_size == checkpoint.tree_size:
            if newest.root_hash != checkpoint.root_hash:
                raise VerificationError(f"two roots for tree size {checkpoint.tree_size}")
            return None
        return newest

    def accept(self, checkpoint: Checkpoint) -> None:
        """Record ``checkpoint`` as verified and consistent with every one seen before."""
        if self.history and any(c.tree_size == checkpoint.tree_size for c in self.history):
            return
        self.history.append(checkpoint)
        self.history.sort(key=lambda c: c.tree_size)
        del self.history[:-_HISTORY]
        if self.newest is None or checkpoint.tree_size > self.newest.tree_size:
            self.newest = checkpoint


# -- measurement ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Interval:
    """What happened since the last sample (mutable while the run goes)."""

    submit_latencies: list[float] = field(default_factory=list)
    read_latencies: list[float] = field(default_factory=list)
    reads_by_kind: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    verification_failures: int = 0


@dataclass(frozen=True, slots=True)
class Sample:
    """One point of the time series (latencies in ms, memory in MiB, rates per second)."""

    t: float
    wall: str
    load1: float
    rss_log_mib: float
    rss_witness_mib: tuple[float, ...]
    cpu_log: float
    cpu_witnesses: float
    submitted: int
    submit_per_s: float
    submit_p50_ms: float
    submit_p95_ms: float
    submit_p99_ms: float
    submit_max_ms: float
    reads: int
    read_per_s: float
    read_p50_ms: float
    read_p95_ms: float
    read_p99_ms: float
    read_max_ms: float
    reads_by_kind: Mapping[str, int]
    errors: Mapping[str, int]
    http_errors: int
    transport_errors: int
    verification_failures: int
    tree_size: int
    cosigned_size: int
    cosign_lag: int


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The flat-out phase: completed submissions per second and their latencies."""

    seconds: float
    concurrency: int
    submitted: int
    rate: float
    p50_ms: float
    p99_ms: float
    errors: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class SoakResult:
    """The whole run: its parameters, the probe, the samples and overall figures."""

    config: SoakConfig
    database: str
    started: str
    probe: ProbeResult | None
    rate: float
    samples: tuple[Sample, ...]
    submitted: int
    reads: int
    reads_by_kind: Mapping[str, int]
    errors: Mapping[str, int]
    verification_failures: int
    first_verification_failure: str | None
    submit_p50_ms: float
    submit_p95_ms: float
    submit_p99_ms: float
    submit_max_ms: float
    read_p50_ms: float
    read_p95_ms: float
    read_p99_ms: float
    read_max_ms: float
    dead: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """No verification failure, no failed request, no process died."""
        return not self.verification_failures and not self.errors and not self.dead

    def to_json(self) -> dict[str, Any]:
        """The result as a JSON-compatible dict (with the summary figures)."""
        body = asdict(self)
        body["config"]["database"] = "postgresql" if self.config.database else None
        body["summary"] = summary_figures(self)
        return body


def _ms(values: Sequence[float], p: float) -> float:
    return round(percentile(values, p) * 1000, 2)


def _slope_per_hour(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of ``(seconds, value)`` points, per hour (0 with fewer than 2)."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return cov / var * 3600


def _figure(name: str, sample: Sample) -> float:
    value: float = getattr(sample, name)
    return value


def summary_figures(result: SoakResult) -> dict[str, Any]:
    """Memory at start and end with slopes, and the worst interval of each percentile."""
    samples = result.samples
    figures: dict[str, Any] = {}
    if not samples:
        return figures
    half = samples[len(samples) // 2 :]
    names = ["log"] + [f"witness-{n}" for n in range(1, len(samples[0].rss_witness_mib) + 1)]
    for position, name in enumerate(names):

        def rss(sample: Sample, position: int = position) -> float:
            return sample.rss_log_mib if position == 0 else sample.rss_witness_mib[position - 1]

        figures[f"rss_{name}"] = {
            "start_mib": rss(samples[0]),
            "end_mib": rss(samples[-1]),
            "max_mib": max(rss(s) for s in samples),
            "slope_mib_per_hour": round(_slope_per_hour([(s.t, rss(s)) for s in samples]), 2),
            "slope_second_half_mib_per_hour": round(
                _slope_per_hour([(s.t, rss(s)) for s in half]), 2
            ),
        }
    for what in ("submit", "read"):
        for p in ("p50", "p95", "p99", "max"):
            key = f"{what}_{p}_ms"
            worst = max(samples, key=functools.partial(_figure, key))
            figures[f"worst_interval_{key}"] = {"value": getattr(worst, key), "t": worst.t}
    figures["max_cosign_lag"] = max(s.cosign_lag for s in samples)
    figures["mean_cosign_lag"] = round(sum(s.cosign_lag for s in samples) / len(samples), 1)
    figures["load1_min"] = min(s.load1 for s in samples)
    figures["load1_max"] = max(s.load1 for s in samples)
    figures["final_tree_size"] = samples[-1].tree_size
    figures["mean_cpu_log"] = round(sum(s.cpu_log for s in samples) / len(samples), 3)
    figures["mean_cpu_witnesses"] = round(sum(s.cpu_witnesses for s in samples) / len(samples), 3)
    return figures


# -- the load ---------------------------------------------------------------------------------


class _Runner:
    """Submitters, readers and the sampler of one run, on one event loop."""

    def __init__(self, config: SoakConfig, cluster: Cluster, say: Callable[[str], None]) -> None:
        self.config = config
        self.say = say
        self.cluster = cluster
        self.checker = ReceiptChecker(cluster.vkey)
        self.knowledge = Knowledge(cluster.policy)
        self.rng = random.Random()
        self.run_id = secrets.token_hex(4)
        self.counter = 0
        self.pad = "".join(self.rng.choice(_PAD_ALPHABET) for _ in range(config.event_bytes))
        self.interval = _Interval()
        self.all_submit: list[float] = []
        self.all_read: list[float] = []
        self.errors: dict[str, int] = {}
        self.reads_by_kind: dict[str, int] = {}
        self.verification_failures = 0
        self.first_failure: str | None = None
        self.failed = asyncio.Event()
        self.client = Http11Client(
            cluster.log.url, max_connections=config.max_connections, timeout=config.timeout
        )
        self.tasks: set[asyncio.Task[None]] = set()
        self.kinds = [k for k, _ in READ_KINDS]
        self.weights = [w for _, w in READ_KINDS]

    # -- bookkeeping ---------------------------------------------------------------------

    def _error(self, kind: str) -> None:
        self.interval.errors[kind] = self.interval.errors.get(kind, 0) + 1
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def _verification_failed(self, what: str, exc: Exception) -> None:
        self.interval.verification_failures += 1
        self.verification_failures += 1
        if self.first_failure is None:
            self.first_failure = f"{what}: {exc}"
        self.failed.set()

    def _event(self) -> dict[str, Any]:
        self.counter += 1
        return {
            "type": "token-issued",
            "iss": "https://as.example.com",
            "jti": f"soak-{self.run_id}-{self.counter}",
            "iat": int(time.time()),
            "client_id": f"app-{self.counter % 97}",
            "sub": f"subject-{self.counter % 1013}",
            "scope": "openid profile",
            "pad": self.pad,
        }

    # -- one submission ------------------------------------------------------------------

    async def submit(self) -> bool:
        """Submit one new event and verify its receipt; return whether it succeeded."""
        event = self._event()
        body = json.dumps(event, separators=(",", ":")).encode("utf-8")
        try:
            answer = await self.client.request("POST", "/v1/events", body, JSON_TYPE)
        except HttpError as exc:
            self._error(f"submit transport: {str(exc).partition(':')[0]}")
            return False
        if answer.status not in (200, 201):
            self._error(f"submit HTTP {answer.status}")
            return False
        try:
            parsed = answer.json()
            if not isinstance(parsed, dict):
                raise VerificationError("the answer is not a JSON object")
            entry = encode_deterministic(event)
            index = self.checker.check_receipt(entry, parsed)
            self.knowledge.learn(index, leaf_hash(entry), int(parsed["tree_size"]))
        except (VerificationError, ValueError) as exc:
            self._verification_failed("submit", exc)
            return False
        return True

    async def _timed_submit(self, due: float) -> None:
        if await self.submit():
            latency = asyncio.get_running_loop().time() - due
            self.interval.submit_latencies.append(latency)
            self.all_submit.append(latency)

    # -- one read ------------------------------------------------------------------------

    async def _get(self, kind: str, path: str) -> bytes | None:
        try:
            answer = await self.client.request("GET", path)
        except HttpError as exc:
            self._error(f"{kind} transport: {str(exc).partition(':')[0]}")
            return None
        if answer.status != 200:
            self._error(f"{kind} HTTP {answer.status}")
            return None
        return answer.body

    async def _get_json(self, kind: str, path: str) -> dict[str, Any] | None:
        body = await self._get(kind, path)
        if body is None:
            return None
        return json_object(body)

    async def read(self, kind: str) -> bool:
        """Send one read of ``kind`` and verify the answer; return whether it succeeded."""
        try:
            if kind == "checkpoint":
                return await self._read_checkpoint()
            newest = self.knowledge.newest
            if newest is None or newest.tree_size == 0:
                return await self._read_checkpoint()
            if kind == "inclusion":
                return await self._read_inclusion(newest)
            if kind == "consistency":
                return await self._read_consistency(newest)
            if kind in ("tile", "bundle"):
                return await self._read_tile(newest, kind)
            if kind == "entry":
                return await self._read_entry(newest)
            return await self._read_receipt(newest)
        except (VerificationError, MerkleError, KeyError, TypeError, ValueError) as exc:
            self._verification_failed(kind, exc)
            return False

    async def _timed_read(self, kind: str, due: float) -> None:
        if await self.read(kind):
            latency = asyncio.get_running_loop().time() - due
            self.interval.read_latencies.append(latency)
            self.all_read.append(latency)
            self.interval.reads_by_kind[kind] = self.interval.reads_by_kind.get(kind, 0) + 1
            self.reads_by_kind[kind] = self.reads_by_kind.get(kind, 0) + 1

    async def _check_new_checkpoint(self, checkpoint: Checkpoint, kind: str) -> bool:
        """Prove ``checkpoint`` consistent with the newest seen; record it. Raises on a fork."""
        other = self.knowledge.needs_proof(checkpoint)
        if other is not None:
            first, second = sorted((checkpoint, other), key=lambda c: c.tree_size)
            if not await self._prove(first, second, kind):
                return False
        self.knowledge.accept(checkpoint)
        return True

    async def _prove(self, first: Checkpoint, second: Checkpoint, kind: str) -> bool:
        answer = await self._get_json(
            kind, f"/v1/proof/consistency?first={first.tree_size}&second={second.tree_size}"
        )
        if answer is None:
            return False
        if answer.get("first") != first.tree_size or answer.get("second") != second.tree_size:
            raise VerificationError("the consistency proof is for other sizes")
        proof = [decode_base64(h, what="proof") for h in answer["proof"]]
        verify_consistency(
            first.tree_size, second.tree_size, first.root_hash, second.root_hash, proof
        )
        return True

    async def _read_checkpoint(self) -> bool:
        note = await self._get("checkpoint", "/checkpoint")
        if note is None:
            return False
        checkpoint, _ = self.knowledge.verify_note(note)
        return await self._check_new_checkpoint(checkpoint, "checkpoint")

    async def _read_inclusion(self, newest: Checkpoint) -> bool:
        index = self.knowledge.known_index(self.rng, newest.tree_size)
        if index is None:
            return await self._read_checkpoint()
        answer = await self._get_json(
            "inclusion", f"/v1/proof/inclusion?index={index}&tree_size={newest.tree_size}"
        )
        if answer is None:
            return False
        self.checker.check_proof(index, newest, answer)
        if decode_base64(answer["leaf_hash"], what="leaf_hash") != self.knowledge.leaf(index):
            raise VerificationError(f"the leaf hash at {index} is not the one of its receipt")
        return True

    async def _read_consistency(self, newest: Checkpoint) -> bool:
        older = [c for c in self.knowledge.history if c.tree_size < newest.tree_size]
        if not older:
            return await self._read_checkpoint()
        return await self._prove(self.rng.choice(older), newest, "consistency")

    async def _read_tile(self, newest: Checkpoint, kind: str) -> bool:
        size = newest.tree_size
        index = self.rng.randrange((size + TILE_WIDTH - 1) // TILE_WIDTH)
        width = min(TILE_WIDTH, size - index * TILE_WIDTH)
        level = 0 if kind == "tile" else -1
        data = await self._get(kind, "/" + format_tile_path(Tile(level, index, width)))
        if data is None:
            return False
        if kind == "tile":
            if len(data) != width * HASH_SIZE:
                raise VerificationError(f"tile 0/{index} is {len(data)} bytes for width {width}")
            values = [data[i * HASH_SIZE : (i + 1) * HASH_SIZE] for i in range(width)]
        else:
            values = [leaf_hash(entry) for entry in parse_entry_bundle(data)]
            if len(values) != width:
                raise VerificationError(f"entry bundle {index} has {len(values)} of {width}")
        for position, value in enumerate(values):
            known = self.knowledge.leaf(index * TILE_WIDTH + position)
            if known is not None and known != value:
                raise VerificationError(
                    f"{kind} {index}: hash {position} is not the leaf hash of its receipt"
                )
        return True

    async def _read_entry(self, newest: Checkpoint) -> bool:
        index = self.knowledge.known_index(self.rng, newest.tree_size)
        if index is None:
            return await self._read_checkpoint()
        answer = await self._get_json("entry", f"/v1/entries/{index}")
        if answer is None:
            return False
        entry = decode_base64(answer["entry"], what="entry")
        value = decode_base64(answer["leaf_hash"], what="leaf_hash")
        if answer.get("index") != index or leaf_hash(entry) != value:
            raise VerificationError(f"entry {index} does not hash to the answer's leaf hash")
        if value != self.knowledge.leaf(index):
            raise VerificationError(f"entry {index} is not the event of its receipt")
        return True

    async def _read_receipt(self, newest: Checkpoint) -> bool:
        index = self.knowledge.known_index(self.rng, newest.tree_size)
        if index is None:
            return await self._read_checkpoint()
        body = await self._get("receipt", f"/v1/receipt/{index}")
        if body is None:
            return False
        receipt = parse_receipt(body)
        if receipt.index != index:
            raise VerificationError(f"the receipt is for index {receipt.index}, not {index}")
        checkpoint, _ = self.knowledge.verify_note(receipt.checkpoint)
        known = self.knowledge.leaf(index)
        assert known is not None
        verify_inclusion(known, index, checkpoint.tree_size, receipt.proof, checkpoint.root_hash)
        return await self._check_new_checkpoint(checkpoint, "receipt")

    # -- scheduling ------------------------------------------------------------------------

    def _launch(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _open_loop(self, rate: float, end: float, launch: Callable[[float], None]) -> None:
        """Call ``launch(due)`` at ``rate`` per second until ``end`` (loop time) or a failure."""
        if rate <= 0:
            return
        loop = asyncio.get_running_loop()
        step = 1.0 / rate
        due = loop.time()
        while not self.failed.is_set():
            now = loop.time()
            while due <= now and due < end:
                launch(due)
                due += step
            if due >= end:
                return
            await asyncio.sleep(min(due - now, 0.05))

    async def probe(self) -> ProbeResult:
        """Submit flat out (closed loop) and return the completed rate in the window."""
        config = self.config
        loop = asyncio.get_running_loop()
        start = loop.time()
        window_start = start + config.probe_warmup
        window_end = window_start + config.probe_seconds
        latencies: list[float] = []
        errors_before = dict(self.errors)

        async def worker() -> None:
            while not self.failed.is_set():
                began = loop.time()
                if began >= window_end:
                    return
                ok = await self.submit()
                done = loop.time()
                if ok and window_start <= done <= window_end:
                    latencies.append(done - began)

        await asyncio.gather(*(worker() for _ in range(config.probe_concurrency)))
        await self.client.aclose()
        latencies.sort()
        self.interval = _Interval()
        return ProbeResult(
            seconds=config.probe_seconds,
            concurrency=config.probe_concurrency,
            submitted=len(latencies),
            rate=round(len(latencies) / config.probe_seconds, 1),
            p50_ms=_ms(latencies, 50),
            p99_ms=_ms(latencies, 99),
            errors={k: v - errors_before.get(k, 0) for k, v in self.errors.items()
                    if v != errors_before.get(k, 0)},
        )  # fmt: skip

    async def wait_cosigned(self, within: float) -> None:
        """Read checkpoints until one covering a known entry is published (or time runs out)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while loop.time() < deadline and not self.failed.is_set():
            await self.read("checkpoint")
            newest = self.knowledge.newest
            if newest is not None and newest.tree_size > 0:
                return
            await asyncio.sleep(0.2)
        self.interval = _Interval()

    async def soak(self, rate: float) -> list[Sample]:
        """Run submitters and readers for the configured minutes, sampling; return the samples."""
        config = self.config
        loop = asyncio.get_running_loop()
        begin = loop.time()
        end = begin + config.minutes * 60
        samples: list[Sample] = []
        cpu_before = self._cpu()
        self.interval = _Interval()

        def launch_submit(due: float) -> None:
            self._launch(self._timed_submit(due))

        def launch_read(due: float) -> None:
            kind = self.rng.choices(self.kinds, self.weights)[0]
            self._launch(self._timed_read(kind, due))

        loads = [
            loop.create_task(self._open_loop(rate, end, launch_submit)),
            loop.create_task(self._open_loop(config.read_rate, end, launch_read)),
        ]
        last = begin
        next_sample = begin + config.interval
        while True:
            stop = self.failed.is_set() or bool(self.cluster.dead())
            wait = min(next_sample, end) - loop.time()
            if not stop and wait > 0:
                with_failure = loop.create_task(self.failed.wait())
                await asyncio.wait([with_failure], timeout=wait)
                with_failure.cancel()
                continue
            if loop.time() >= end or stop:
                for task in loads:
                    task.cancel()
                if self.tasks:
                    await asyncio.wait(list(self.tasks), timeout=config.timeout)
            now = loop.time()
            await self.read("checkpoint")  # a fresh cosigned size for the sample
            cpu_now = self._cpu()
            await self.client.aclose()  # idle connections only: none outlives the keep-alive
            sample = self._sample(now - begin, now - last, cpu_before, cpu_now)
            samples.append(sample)
            self.say(_progress(sample))
            cpu_before, last = cpu_now, now
            next_sample = now + config.interval
            if now >= end or stop:
                break
        await self.client.aclose()
        return samples

    def _cpu(self) -> list[float]:
        return [cpu_seconds(c.process.pid) for c in self.cluster.children]

    def _sample(
        self, t: float, span: float, cpu_before: list[float], cpu_now: list[float]
    ) -> Sample:
        interval, self.interval = self.interval, _Interval()
        submits = sorted(interval.submit_latencies)
        reads = sorted(interval.read_latencies)
        span = max(span, 1e-9)
        shares = [(b - a) / span for a, b in zip(cpu_before, cpu_now, strict=True)]
        newest = self.knowledge.newest
        cosigned = newest.tree_size if newest is not None else 0
        tree = max(self.knowledge.tree_size, cosigned)
        errors = dict(sorted(interval.errors.items()))
        return Sample(
            t=round(t, 2),
            wall=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            load1=round(os.getloadavg()[0], 2),
            rss_log_mib=round(rss_bytes(self.cluster.log.process.pid) / _MIB, 1),
            rss_witness_mib=tuple(
                round(rss_bytes(w.process.pid) / _MIB, 1) for w in self.cluster.witnesses
            ),
            cpu_log=round(shares[-1], 3),
            cpu_witnesses=round(sum(shares[:-1]), 3),
            submitted=len(submits),
            submit_per_s=round(len(submits) / span, 1),
            submit_p50_ms=_ms(submits, 50),
            submit_p95_ms=_ms(submits, 95),
            submit_p99_ms=_ms(submits, 99),
            submit_max_ms=round(submits[-1] * 1000, 2) if submits else 0.0,
            reads=len(reads),
            read_per_s=round(len(reads) / span, 1),
            read_p50_ms=_ms(reads, 50),
            read_p95_ms=_ms(reads, 95),
            read_p99_ms=_ms(reads, 99),
            read_max_ms=round(reads[-1] * 1000, 2) if reads else 0.0,
            reads_by_kind=dict(sorted(interval.reads_by_kind.items())),
            errors=errors,
            http_errors=sum(v for k, v in errors.items() if " HTTP " in k),
            transport_errors=sum(v for k, v in errors.items() if " transport" in k),
            verification_failures=interval.verification_failures,
            tree_size=tree,
            cosigned_size=cosigned,
            cosign_lag=tree - cosigned,
        )


def run_soak(
    config: SoakConfig, work: Path, *, echo: Callable[[str], None] | None = None
) -> SoakResult:
    """Start the processes under ``work``, probe, soak, and return the result.

    ``echo`` receives progress lines (one per sample). Raises RuntimeError when a process does
    not start.
    """
    say = echo or (lambda _line: None)
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    with Cluster.start(
        work, database=config.database, batch_period_ms=config.batch_period_ms
    ) as cluster:
        return asyncio.run(_run(config, cluster, started, say))


async def _run(
    config: SoakConfig, cluster: Cluster, started: str, say: Callable[[str], None]
) -> SoakResult:
    runner = _Runner(config, cluster, say)
    probe = None
    rate = config.rate
    if rate is None:
        say(
            f"probe: {config.probe_concurrency} clients flat out for "
            f"{config.probe_warmup:g} + {config.probe_seconds:g} s"
        )
        probe = await runner.probe()
        rate = max(probe.rate * config.fraction, 1.0)
        say(
            f"probe: {probe.rate}/s (p50 {probe.p50_ms} ms, p99 {probe.p99_ms} ms); "
            f"soak at {rate:.1f}/s"
        )
    else:
        for _ in range(4):
            await runner.submit()
    await runner.wait_cosigned(30.0)
    samples: list[Sample] = []
    if not runner.failed.is_set():
        samples = await runner.soak(rate)
    submits = sorted(runner.all_submit)
    reads = sorted(runner.all_read)
    return SoakResult(
        config=config,
        database="postgresql" if config.database else "sqlite",
        started=started,
        probe=probe,
        rate=round(rate, 1),
        samples=tuple(samples),
        submitted=len(submits),
        reads=len(reads),
        reads_by_kind=dict(sorted(runner.reads_by_kind.items())),
        errors=dict(sorted(runner.errors.items())),
        verification_failures=runner.verification_failures,
        first_verification_failure=runner.first_failure,
        submit_p50_ms=_ms(submits, 50),
        submit_p95_ms=_ms(submits, 95),
        submit_p99_ms=_ms(submits, 99),
        submit_max_ms=round(submits[-1] * 1000, 2) if submits else 0.0,
        read_p50_ms=_ms(reads, 50),
        read_p95_ms=_ms(reads, 95),
        read_p99_ms=_ms(reads, 99),
        read_max_ms=round(reads[-1] * 1000, 2) if reads else 0.0,
        dead=tuple(cluster.dead()),
    )


# -- output -----------------------------------------------------------------------------------


def _progress(sample: Sample) -> str:
    errors = sum(sample.errors.values())
    return (
        f"t={sample.t:7.0f}s load {sample.load1:4.1f}  log {sample.rss_log_mib:6.1f} MiB "
        f"witnesses {'/'.join(f'{m:.0f}' for m in sample.rss_witness_mib)} MiB  "
        f"submit {sample.submit_per_s:6.1f}/s p99 {sample.submit_p99_ms:7.1f} ms  "
        f"read {sample.read_per_s:6.1f}/s p99 {sample.read_p99_ms:7.1f} ms  "
        f"tree {sample.tree_size} lag {sample.cosign_lag}  errors {errors} "
        f"bad {sample.verification_failures}"
    )


CSV_COLUMNS: Final = (
    "t", "wall", "load1", "rss_log_mib", "rss_witness_1_mib", "rss_witness_2_mib",
    "rss_witness_3_mib", "cpu_log", "cpu_witnesses", "submitted", "submit_per_s",
    "submit_p50_ms", "submit_p95_ms", "submit_p99_ms", "submit_max_ms", "reads", "read_per_s",
    "read_p50_ms", "read_p95_ms", "read_p99_ms", "read_max_ms", "http_errors",
    "transport_errors", "verification_failures", "tree_size", "cosigned_size", "cosign_lag",
    "errors",
)  # fmt: skip
"""Columns of ``series.csv``; ``errors`` is a JSON object of error kind -> count."""


def write_series(result: SoakResult, out: Path) -> tuple[Path, Path]:
    """Write ``series.json`` and ``series.csv`` into ``out`` (created); return both paths."""
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "series.json"
    json_path.write_text(json.dumps(result.to_json(), indent=1) + "\n", encoding="utf-8")
    csv_path = out / "series.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for s in result.samples:
            witnesses = list(s.rss_witness_mib) + [0.0] * (3 - len(s.rss_witness_mib))
            writer.writerow(
                [
                    s.t, s.wall, s.load1, s.rss_log_mib, *witnesses[:3], s.cpu_log,
                    s.cpu_witnesses, s.submitted, s.submit_per_s, s.submit_p50_ms,
                    s.submit_p95_ms, s.submit_p99_ms, s.submit_max_ms, s.reads, s.read_per_s,
                    s.read_p50_ms, s.read_p95_ms, s.read_p99_ms, s.read_max_ms, s.http_errors,
                    s.transport_errors, s.verification_failures, s.tree_size, s.cosigned_size,
                    s.cosign_lag, json.dumps(dict(s.errors), separators=(",", ":")),
                ]
            )  # fmt: skip
    return json_path, csv_path


def plot(result: SoakResult, path: Path) -> None:
    """Plot memory, latency percentiles, throughput and errors over time to the PNG ``path``.

    Needs matplotlib (the ``bench`` extra). Raises ImportError without it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result.samples
    minutes = [s.t / 60 for s in samples]
    figure, axes = plt.subplots(5, 1, figsize=(11, 15), sharex=True)
    rss, submit, read, throughput, errors = axes
    rss.plot(minutes, [s.rss_log_mib for s in samples], label="log")
    for number in range(len(samples[0].rss_witness_mib) if samples else 0):
        rss.plot(
            minutes, [s.rss_witness_mib[number] for s in samples], label=f"witness {number + 1}"
        )
    rss.set_ylabel("RSS, MiB")
    rss.set_ylim(bottom=0)
    for axis, what in ((submit, "submit"), (read, "read")):
        for p in ("p50", "p95", "p99", "max"):
            axis.plot(minutes, [getattr(s, f"{what}_{p}_ms") for s in samples], label=p)
        axis.set_yscale("log")
        axis.set_ylabel(f"{what} latency, ms")
    throughput.plot(minutes, [s.submit_per_s for s in samples], label="submissions/s")
    throughput.plot(minutes, [s.read_per_s for s in samples], label="reads/s")
    throughput.set_ylabel("per second")
    throughput.set_ylim(bottom=0)
    lag = throughput.twinx()
    lag.plot(minutes, [s.cosign_lag for s in samples], color="grey", linestyle=":",
             label="cosigning lag (entries)")  # fmt: skip
    lag.set_ylabel("cosigning lag, entries")
    lag.set_ylim(bottom=0)
    lag.legend(loc="lower right", fontsize="small")
    errors.plot(minutes, [s.http_errors for s in samples], label="HTTP errors")
    errors.plot(minutes, [s.transport_errors for s in samples], label="transport errors")
    errors.plot(minutes, [s.verification_failures for s in samples], label="verification failures")
    errors.plot(minutes, [s.load1 for s in samples], label="load average (1 min)", linestyle="--")
    errors.set_ylabel("per interval / load")
    errors.set_ylim(bottom=0)
    errors.set_xlabel("minutes into the soak")
    for axis in axes:
        axis.grid(True, alpha=0.3)
        axis.legend(loc="upper left", fontsize="small")
    figure.suptitle(
        f"Soak, {result.database}: {result.rate:g} submissions/s"
        + (f" (half of {result.probe.rate:g}/s flat out)" if result.probe else "")
        + f" and {result.config.read_rate:g} reads/s, every answer verified;"
        + f" started {result.started}"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def format_summary(result: SoakResult) -> str:
    """Return a plain-text summary of the run."""
    figures = summary_figures(result)
    duration = result.samples[-1].t if result.samples else 0.0
    lines = [
        f"soak ({result.database}), started {result.started}, {duration / 60:.1f} min, "
        f"{len(result.samples)} samples every {result.config.interval:g} s",
    ]
    if result.probe is not None:
        p = result.probe
        lines.append(
            f"probe: {p.rate}/s flat out ({p.concurrency} clients, {p.seconds:g} s, "
            f"p50 {p.p50_ms} ms, p99 {p.p99_ms} ms, errors {dict(p.errors) or 'none'})"
        )
    lines += [
        f"rate: {result.rate}/s submissions, {result.config.read_rate:g}/s reads",
        f"totals: {result.submitted} submissions, {result.reads} reads "
        f"({', '.join(f'{k} {v}' for k, v in result.reads_by_kind.items())})",
        f"errors: {dict(result.errors) or 'none'}; verification failures: "
        f"{result.verification_failures}"
        + (
            f" (first: {result.first_verification_failure})"
            if result.first_verification_failure
            else ""
        )
        + (f"; processes died: {', '.join(result.dead)}" if result.dead else ""),
        f"submit latency p50/p95/p99/max: {result.submit_p50_ms} / {result.submit_p95_ms} / "
        f"{result.submit_p99_ms} / {result.submit_max_ms} ms",
        f"read latency p50/p95/p99/max: {result.read_p50_ms} / {result.read_p95_ms} / "
        f"{result.read_p99_ms} / {result.read_max_ms} ms",
    ]
    for key, value in figures.items():
        if key.startswith("rss_"):
            lines.append(
                f"{key[4:]} RSS: {value['start_mib']} -> {value['end_mib']} MiB (max "
                f"{value['max_mib']}), slope {value['slope_mib_per_hour']} MiB/h, second half "
                f"{value['slope_second_half_mib_per_hour']} MiB/h"
            )
    for what in ("submit", "read"):
        worst = [
            f"{p} {figures[f'worst_interval_{what}_{p}_ms']['value']} ms "
            f"(t={figures[f'worst_interval_{what}_{p}_ms']['t']:.0f} s)"
            for p in ("p50", "p95", "p99", "max")
            if f"worst_interval_{what}_{p}_ms" in figures
        ]
        if worst:
            lines.append(f"worst interval, {what}: " + ", ".join(worst))
    if figures:
        lines.append(
            f"cosigning lag: mean {figures['mean_cosign_lag']}, max {figures['max_cosign_lag']} "
            f"entries; final tree size {figures['final_tree_size']}; load average "
            f"{figures['load1_min']}-{figures['load1_max']}; CPU share log "
            f"{figures['mean_cpu_log']}, witnesses {figures['mean_cpu_witnesses']}"
        )
    return "\n".join(lines)


def format_markdown(result: SoakResult) -> str:
    """Return a Markdown section for ``benchmarks/RESULTS.md`` describing the run."""
    f = summary_figures(result)
    duration = result.samples[-1].t / 60 if result.samples else 0.0
    probe = (
        f"half of the {result.probe.rate:g}/s measured flat out ({result.probe.concurrency} "
        f"clients, {result.probe.seconds:g} s, every receipt verified)"
        if result.probe
        else "a set rate"
    )
    rows = [
        "| process | RSS start | RSS end | max | slope (all) | slope (second half) |",
        "|---|---|---|---|---|---|",
    ]
    for key, value in f.items():
        if key.startswith("rss_"):
            rows.append(
                f"| {key[4:]} | {value['start_mib']} MiB | {value['end_mib']} MiB | "
                f"{value['max_mib']} MiB | {value['slope_mib_per_hour']:+} MiB/h | "
                f"{value['slope_second_half_mib_per_hour']:+} MiB/h |"
            )
    latency = [
        "| latency | p50 | p95 | p99 | max |",
        "|---|---|---|---|---|",
        f"| submit, whole run | {result.submit_p50_ms} | {result.submit_p95_ms} | "
        f"{result.submit_p99_ms} | {result.submit_max_ms} |",
    ]
    if f:
        latency.append(
            "| submit, worst interval | "
            + " | ".join(str(f[f"worst_interval_submit_{p}_ms"]["value"])
                         for p in ("p50", "p95", "p99", "max")) + " |"
        )  # fmt: skip
    latency.append(
        f"| read, whole run | {result.read_p50_ms} | {result.read_p95_ms} | "
        f"{result.read_p99_ms} | {result.read_max_ms} |"
    )
    if f:
        latency.append(
            "| read, worst interval | "
            + " | ".join(str(f[f"worst_interval_read_{p}_ms"]["value"])
                         for p in ("p50", "p95", "p99", "max")) + " |"
        )  # fmt: skip
    errors = ", ".join(f"{k}: {v}" for k, v in result.errors.items()) or "none"
    text = [
        "## Soak (issue 8)",
        "",
        "```sh",
        f".venv/bin/python -m benchmarks.soak --minutes {result.config.minutes:g} "
        "--out benchmarks/soak/",
        "```",
        "",
        f"The log ({result.database}) and three witnesses (2-of-3 policy) as real processes; "
        f"{result.rate:g} single-event submissions/s, {probe}, and "
        f"{result.config.read_rate:g} reads/s (checkpoints, inclusion and consistency proofs, "
        "tiles, entry bundles, entries, receipts), every answer verified, for "
        f"{duration:.1f} min from {result.started}. Samples every {result.config.interval:g} s "
        "in `benchmarks/soak/series.json` and `series.csv`, plotted in `benchmarks/soak.png`."
        + (
            f" Load average {f['load1_min']} to {f['load1_max']} from other work on the 2 cores."
            if f
            else ""
        ),
        "",
        f"Totals: {result.submitted:,} submissions and {result.reads:,} reads; "
        f"verification failures: {result.verification_failures}; failed requests: {errors}"
        + (f"; processes died: {', '.join(result.dead)}" if result.dead else "")
        + (
            f". Cosigning lag (tree size minus newest cosigned size): mean "
            f"{f['mean_cosign_lag']}, max {f['max_cosign_lag']} entries; final tree size "
            f"{f['final_tree_size']:,}."
            if f
            else "."
        ),
        "",
        *rows,
        "",
        "Latency in ms (submissions from their scheduled time; intervals of "
        f"{result.config.interval:g} s):",
        "",
        *latency,
    ]
    return "\n".join(text)


# -- command line ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser of the soak benchmark."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.soak", description="Soak benchmark of the log and witnesses."
    )
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the soak")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/soak"), help="series dir")
    parser.add_argument("--png", type=Path, default=Path("benchmarks/soak.png"), help="plot")
    parser.add_argument("--no-plot", action="store_true", help="do not plot")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--probe-seconds", type=float, default=45.0, help="flat-out window")
    parser.add_argument("--probe-concurrency", type=int, default=256, help="flat-out clients")
    parser.add_argument("--rate", type=float, help="submissions per second (skips the probe)")
    parser.add_argument("--fraction", type=float, default=0.5, help="share of the probed rate")
    parser.add_argument("--read-rate", type=float, default=60.0, help="reads per second")
    parser.add_argument("--event-bytes", type=int, default=300, help="padding per event")
    parser.add_argument("--database", help="postgresql:// URL for the log (default SQLite)")
    parser.add_argument("--batch-period-ms", type=int, help="the log's batch period")
    parser.add_argument("--work-dir", type=Path, help="keep the processes' data here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the soak benchmark; exit status as the module docstring says."""
    args = build_parser().parse_args(argv)
    try:
        config = SoakConfig(
            minutes=args.minutes,
            interval=args.interval,
            probe_seconds=args.probe_seconds,
            probe_concurrency=args.probe_concurrency,
            rate=args.rate,
            fraction=args.fraction,
            read_rate=args.read_rate,
            event_bytes=args.event_bytes,
            database=args.database,
            batch_period_ms=args.batch_period_ms,
        )
    except ValueError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="etch-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = run_soak(config, work, echo=lambda line: print(line, flush=True))
    except RuntimeError as exc:
        print(f"soak: {exc} (process output in {work})", file=sys.stderr)
        return 1
    json_path, csv_path = write_series(result, args.out)
    print(f"series: {json_path}, {csv_path}")
    if not args.no_plot and result.samples:
        try:
            plot(result, args.png)
            print(f"plot: {args.png}")
        except ImportError:
            print("soak: matplotlib is missing (pip install -e '.[bench]'): no plot")
    print(format_summary(result))
    print()
    print(format_markdown(result))
    if args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    if result.verification_failures or result.dead:
        return 1
    return 0 if result.ok else 3


if __name__ == "__main__":
    sys.exit(main())
