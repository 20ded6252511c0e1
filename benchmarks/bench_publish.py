"""Benchmark: time from a new log checkpoint to its publication with a 2-of-3 witness quorum.

Run from the project root::

    .venv/bin/python -m benchmarks.bench_publish [--checkpoints 200] [--rounds 3]
        [--watch hook|poll] [--gap-ms 10] [--dir DIR]

Each round starts, as subprocesses on 127.0.0.1 (like ``make run``, :mod:`server.devrun`):

* three witnesses (``python -m witness``, SQLite, every checkpoint durable before its
  cosignature leaves), following the log and, for the direct measurement below, a set of
  synthetic logs;
* the log (``python -m server --intake raw --policy-file``, SQLite) with a C2SP tlog-policy
  naming the three witnesses, quorum 2 of 3, and a 1 ms batch period.

After a few untimed warm-up checkpoints, it repeats ``--checkpoints`` times, one at a time:

1. **Commit**: ``POST /v1/events`` with one small event; the answer carries the committed
   checkpoint's size ``N``. The clock starts when the answer arrives.
2. **Publication**: the clock stops at the first moment ``GET /checkpoint`` serves a size
   ``>= N`` (the entry is then covered by a published checkpoint, its receipt available).
   ``--watch hook`` (default) takes that moment from the log's own debug line
   ``server.witnessing: published checkpoint <size> ...``, written right after the checkpoint is
   handed to ``GET /checkpoint``, read from the log's standard error as it arrives; ``--watch
   poll`` instead polls ``GET /checkpoint`` every ``--poll-ms`` (which costs the log CPU and
   adds up to one period). Either way ``GET /checkpoint`` is then fetched and must carry a
   size ``>= N``, the log's signature and at least two cosignatures that verify with the
   witnesses' keys (:func:`merkle.policy.verify_checkpoint`), or the run fails.
3. **The witnesses' own latency**: one ``POST /add-checkpoint`` straight to the first witness
   for a synthetic log (a 30-hash consistency proof, :mod:`benchmarks.bench_witness`), timed
   with the same lean HTTP/1.1 client. The witness does for it what it does for the log's
   push: parse, verify, check the proof, cosign, commit durably, answer.
4. A pause of ``--gap-ms`` (a steady, low rate of checkpoints).

Every round reports median and p99 (nearest rank) of both, and the difference; the summary
gives the median of each figure over the rounds, and the load average before and after each
round, since the machine's cores may be shared with other work.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import re
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.bench_witness import LogRun, build_log
from benchmarks.http11 import Http11Client
from merkle.checkpoint import parse_checkpoint
from merkle.cosignature import CosignatureVerifier
from merkle.note import open_note, parse_note
from merkle.policy import Policy, parse_policy, verify_checkpoint
from server.keys import load_or_create_log_key
from witness.keys import load_or_create_key

ORIGIN = "bench.example/publish"
QUORUM = 2
WITNESSES = 3
SYNTHETIC_STEPS = 10
PUBLISHED_LINE = re.compile(
    rb"server\.witnessing: published checkpoint (\d+) with \d+ cosignatures, ([0-9.]+) ms after"
)


def free_port() -> int:
    """Return a TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of ``values`` (requires at least one value, 0 < fraction <= 1)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


@dataclass(frozen=True, slots=True)
class Setup:
    """Keys and configuration files of one round, written before any process starts."""

    directory: Path
    policy_file: Path
    logs_file: Path
    witness_verifiers: tuple[CosignatureVerifier, ...]
    synthetic: tuple[LogRun, ...]


def prepare(directory: Path, synthetic_logs: int) -> Setup:
    """Create the log key, three witness keys, the witnesses' log list and the 2-of-3 policy."""
    log_key = load_or_create_log_key(directory / "log", ORIGIN)
    rng = random.Random(11)
    synthetic = tuple(
        build_log(f"bench.example/direct{i}", SYNTHETIC_STEPS, rng) for i in range(synthetic_logs)
    )
    witnesses: list[tuple[str, str]] = []
    verifiers: list[CosignatureVerifier] = []
    for number in range(1, WITNESSES + 1):
        wdir = directory / f"witness-{number}"
        wdir.mkdir(parents=True)
        signer, _ = load_or_create_key(wdir / "witness.key", f"bench.example/witness-{number}")
        witnesses.append((f"w{number}", signer.vkey))
        verifiers.append(signer.verifier())
    logs_file = directory / "witness-logs.toml"
    entries = [f'[[log]]\norigin = "{ORIGIN}"\nvkey = "{log_key.vkey}"\n']
    entries += [f'[[log]]\nvkey = "{log.config.vkeys[0]}"\n' for log in synthetic]
    logs_file.write_text("".join(entries), encoding="utf-8")
    return Setup(directory, directory / "policy.txt", logs_file, tuple(verifiers), synthetic)


def write_policy(setup: Setup, log_vkey: str, urls: Sequence[str]) -> Policy:
    """Write the tlog-policy (the log, three witnesses with URLs, quorum 2 of 3); return it."""
    lines = [f"log {log_vkey}"]
    lines += [
        f"witness w{number} {verifier.vkey} {url}"
        for number, (verifier, url) in enumerate(zip(setup.witness_verifiers, urls, strict=True), 1)
    ]
    lines += [f"group local {QUORUM} " + " ".join(f"w{n}" for n in range(1, WITNESSES + 1))]
    lines += ["quorum local"]
    text = "\n".join(lines) + "\n"
    setup.policy_file.write_text(text, encoding="utf-8")
    return parse_policy(text)


@dataclass
class PublicationWatch:
    """The log's standard error, read as it arrives: when each size was first published."""

    published: dict[int, float] = field(default_factory=dict)
    rounds: dict[int, float] = field(default_factory=dict)
    largest: int = -1
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    tail: list[bytes] = field(default_factory=list)

    async def read(self, stream: asyncio.StreamReader) -> None:
        """Record the arrival time of every ``published checkpoint`` line until end of file."""
        while line := await stream.readline():
            now = time.perf_counter()
            match = PUBLISHED_LINE.search(line)
            if match is None:
                self.tail = [*self.tail[-19:], line]
                continue
            size = int(match.group(1))
            self.published.setdefault(size, now)
            self.rounds.setdefault(size, float(match.group(2)) / 1e3)
            if size > self.largest:
                self.largest = size
                self.changed.set()
                self.changed = asyncio.Event()

    async def wait_for(self, size: int) -> float:
        """Return when a size ``>= size`` was first published (bound it with a timeout)."""
        while self.largest < size:
            await self.changed.wait()
        return min(t for s, t in self.published.items() if s >= size)


@dataclass
class Processes:
    """The running witnesses and log of one round."""

    children: list[asyncio.subprocess.Process] = field(default_factory=list)
    log_url: str = ""
    witness_urls: list[str] = field(default_factory=list)
    watch: PublicationWatch = field(default_factory=PublicationWatch)
    reader: asyncio.Task[None] | None = None
    policy: Policy | None = None


async def wait_healthy(url: str, process: asyncio.subprocess.Process) -> None:
    """Poll ``url/healthz`` until it answers 200. Raises RuntimeError if the process exits."""
    client = Http11Client(url, max_connections=1, timeout=1.0)
    try:
        for _ in range(600):
            if process.returncode is not None:
                raise RuntimeError(f"{url} exited with {process.returncode}")
            with contextlib.suppress(Exception):
                if (await client.request("GET", "/healthz")).status == 200:
                    return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{url} did not become healthy")
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def started(setup: Setup) -> AsyncIterator[Processes]:
    """Start three witnesses and the witnessed log; stop them all on exit."""
    running = Processes()
    log_vkey = (setup.directory / "log" / "log.vkey").read_text(encoding="utf-8").strip()
    try:
        for number in range(1, WITNESSES + 1):
            port = free_port()
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "witness",
                "--data-dir", str(setup.directory / f"witness-{number}"),
                "--logs", str(setup.logs_file), "--listen", f"127.0.0.1:{port}",
                "--rate", "1000000000", "--burst", "1000000000", "--poll-interval", "3600",
                "--log-level", "WARNING",
                stdout=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            running.children.append(process)
            running.witness_urls.append(f"http://127.0.0.1:{port}")
        for url, process in zip(running.witness_urls, running.children, strict=True):
            await wait_healthy(url, process)
        running.policy = write_policy(setup, log_vkey, running.witness_urls)
        port = free_port()
        log_process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "server", "--data-dir", str(setup.directory / "log"),
            "--host", "127.0.0.1", "--port", str(port), "--origin", ORIGIN, "--intake", "raw",
            "--policy-file", str(setup.policy_file), "--batch-period-ms", "1",
            "--log-level", "debug",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        running.children.append(log_process)
        assert log_process.stderr is not None
        running.reader = asyncio.create_task(running.watch.read(log_process.stderr))
        running.log_url = f"http://127.0.0.1:{port}"
        await wait_healthy(running.log_url, log_process)
        yield running
    finally:
        for process in reversed(running.children):
            if process.returncode is None:
                process.terminate()
        for process in running.children:
            await process.wait()
        if running.reader is not None:
            running.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running.reader


@dataclass(frozen=True, slots=True)
class RoundResult:
    """Per-checkpoint latencies of one round, in seconds, and the load around it."""

    publication: list[float]
    witness: list[float]
    cosignatures: list[int]
    pushes: list[float]
    """With ``--watch hook``: for checkpoints published at their own size, the log's time from
    its first push to the publication (the rest of ``publication`` is the commit reaching the
    collector, a wait for the previous round, and the debug line's trip to this process)."""
    load_before: float
    load_after: float


def cosigned_size(note: bytes, policy: Policy, verifiers: Sequence[CosignatureVerifier]) -> int:
    """Check ``note`` against the policy; return its size. Raises MerkleError below quorum."""
    checkpoint_text = verify_checkpoint(policy, note)[1].text
    _, verified = open_note(note, verifiers)
    if len(verified) < QUORUM:
        raise AssertionError(f"only {len(verified)} cosignatures verify")
    return parse_checkpoint(checkpoint_text).tree_size


async def poll_until(log: Http11Client, size: int, policy: Policy, period: float) -> float:
    """Poll ``GET /checkpoint`` until it serves a size ``>= size``; return when it first did.

    Bound it with a timeout. Raises MerkleError when that checkpoint misses the quorum.
    """
    while True:
        answer = await log.request("GET", "/checkpoint")
        now = time.perf_counter()
        if answer.status == 200:
            text = parse_note(answer.body).text
            if parse_checkpoint(text).tree_size >= size:
                verify_checkpoint(policy, answer.body)
                return now
        await asyncio.sleep(period)


async def run_round(setup: Setup, args: argparse.Namespace) -> RoundResult:
    """Start the processes, warm up, then time ``args.checkpoints`` checkpoints one at a time."""
    load_before = os.getloadavg()[0]
    publication: list[float] = []
    witness: list[float] = []
    cosignatures: list[int] = []
    pushes: list[float] = []
    bodies = [body for log in setup.synthetic for body in log.bodies]
    async with started(setup) as running:
        assert running.policy is not None
        policy = running.policy
        log = Http11Client(running.log_url, max_connections=2, timeout=10.0)
        direct = Http11Client(running.witness_urls[0], max_connections=1, timeout=10.0)
        try:
            for synthetic in setup.synthetic:  # bootstrap each synthetic log: old 0
                answer = await direct.request("POST", "/add-checkpoint", synthetic.first)
                if answer.status != 200:
                    raise RuntimeError(f"witness answered {answer.status}: {answer.body!r}")
            for number in range(args.warmup + args.checkpoints):
                event = json.dumps({"benchmark": "publish", "n": number}).encode()
                answer = await log.request("POST", "/v1/events", event, "application/json")
                committed = time.perf_counter()
                if answer.status != 201:
                    raise RuntimeError(f"log answered {answer.status}: {answer.body!r}")
                size = int(answer.json()["tree_size"])
                async with asyncio.timeout(args.timeout):
                    if args.watch == "hook":
                        shown = await running.watch.wait_for(size)
                    else:
                        shown = await poll_until(log, size, policy, args.poll_ms / 1000)
                served = await log.request("GET", "/checkpoint")
                if cosigned_size(served.body, policy, setup.witness_verifiers) < size:
                    raise AssertionError("GET /checkpoint serves a smaller size than published")
                started_at = time.perf_counter()
                answer = await direct.request("POST", "/add-checkpoint", bodies[number])
                elapsed = time.perf_counter() - started_at
                if answer.status != 200:
                    raise RuntimeError(f"witness answered {answer.status}: {answer.body!r}")
                if number >= args.warmup:
                    publication.append(max(0.0, shown - committed))
                    witness.append(elapsed)
                    _, verified = open_note(served.body, setup.witness_verifiers)
                    cosignatures.append(len(verified))
                    if size in running.watch.rounds:
                        pushes.append(running.watch.rounds[size])
                await asyncio.sleep(args.gap_ms / 1000)
        except BaseException:
            print("log's last lines:", *running.watch.tail[-10:], sep="\n  ", file=sys.stderr)
            raise
        finally:
            await log.aclose()
            await direct.aclose()
    return RoundResult(publication, witness, cosignatures, pushes, load_before, os.getloadavg()[0])


def summarize(result: RoundResult) -> dict[str, float]:
    """Median and p99 (ms) of publication and witness latency, and their differences."""
    figures = {
        "publish_p50": statistics.median(result.publication) * 1e3,
        "publish_p99": percentile(result.publication, 0.99) * 1e3,
        "witness_p50": statistics.median(result.witness) * 1e3,
        "witness_p99": percentile(result.witness, 0.99) * 1e3,
    }
    figures["beyond_p50"] = figures["publish_p50"] - figures["witness_p50"]
    figures["beyond_p99"] = figures["publish_p99"] - figures["witness_p99"]
    if result.pushes:
        figures["pushes_p50"] = statistics.median(result.pushes) * 1e3
        figures["pushes_p99"] = percentile(result.pushes, 0.99) * 1e3
    return figures


def line(name: str, figures: dict[str, float]) -> str:
    """One report line of ``summarize`` figures."""
    pushes = (
        f" | first push -> published p50 {figures['pushes_p50']:5.2f} ms  p99 "
        f"{figures['pushes_p99']:6.2f} ms"
        if "pushes_p50" in figures
        else ""
    )
    return (
        f"{name:<10} publication p50 {figures['publish_p50']:6.2f} ms  p99 "
        f"{figures['publish_p99']:6.2f} ms | witness add-checkpoint p50 "
        f"{figures['witness_p50']:5.2f} ms  p99 {figures['witness_p99']:6.2f} ms | beyond: "
        f"p50 {figures['beyond_p50']:6.2f} ms  p99 {figures['beyond_p99']:6.2f} ms" + pushes
    )


async def main_async(args: argparse.Namespace) -> None:
    synthetic_logs = math.ceil((args.warmup + args.checkpoints) / SYNTHETIC_STEPS)
    print(
        f"checkpoint -> publication with a {QUORUM}-of-{WITNESSES} quorum on loopback; "
        f"{args.checkpoints} checkpoints per round, {args.rounds} rounds, watch={args.watch}, "
        f"gap {args.gap_ms} ms; {os.cpu_count()} CPUs"
    )
    rounds: list[dict[str, float]] = []
    for number in range(args.rounds):
        with tempfile.TemporaryDirectory(dir=args.dir) as raw:
            setup = prepare(Path(raw), synthetic_logs)
            result = await run_round(setup, args)
        figures = summarize(result)
        rounds.append(figures)
        three = sum(1 for c in result.cosignatures if c >= WITNESSES)
        print(
            line(f"round {number + 1}", figures)
            + f" | load {result.load_before:.2f}->{result.load_after:.2f}"
            + f" | served with 3 cosignatures: {three}/{len(result.cosignatures)}"
        )
    medians = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    print(line("median", medians))


def main() -> None:
    parser = argparse.ArgumentParser(description="Time checkpoint publication with witnesses.")
    parser.add_argument("--checkpoints", type=int, default=200, help="timed checkpoints per round")
    parser.add_argument("--warmup", type=int, default=10, help="untimed checkpoints first")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each with new processes")
    parser.add_argument(
        "--watch", choices=("hook", "poll"), default="hook", help="the log's debug line or polling"
    )
    parser.add_argument("--poll-ms", type=float, default=1.0, help="polling period (--watch poll)")
    parser.add_argument("--gap-ms", type=float, default=10.0, help="pause between checkpoints")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per checkpoint")
    parser.add_argument("--dir", default=None, help="directory for the data directories")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
