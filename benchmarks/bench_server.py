"""The log server's benchmarks: Etch against an empty Starlette app, same machine, same run.

Run from the project root (each phase takes its own flags; see ``--help``)::

    .venv/bin/python -m benchmarks.bench_server [--phases submit,batch,reads,growth]
        [--backends sqlite,postgres] [--periods 5,25,200] [--repeats 3] [--duration 20]
        [--wrk] [--json results.json]
    .venv/bin/python -m benchmarks.bench_server build --data-dir DIR --entries 1000000
        [--database-url postgresql://...]
    .venv/bin/python -m benchmarks.bench_server --phases cluster --backends postgres
        [--processes 1,2,4] [--periods 25] [--compare-tree DIR]

Every server is a subprocess on 127.0.0.1 and a free port: the log through
:mod:`benchmarks.serve_raw` (the engine with its raw-map intake, no OAuth layer) and the ceiling
through :mod:`benchmarks.baseline_app` (empty Starlette routes), both on uvicorn with the same
options. Every load is one run of :mod:`benchmarks.load` (a subprocess, ``--json``); the
command lines are printed and kept in the JSON report. Baseline and log runs alternate
(baseline, log, baseline, log, ...) so that both see the same background load, and every figure
is the median of ``--repeats`` runs; the ratio of a pair is taken per pair, then the median.

``--compare-tree DIR`` also runs every log server of the ``submit`` and ``cluster`` phases from
another copy of the source tree (``git archive <commit> | tar -x -C DIR``), in the same rotation:
a before/after comparison of a change on the same background load.

Phases (per backend; PostgreSQL is a throwaway server started as in the tests, ``tests/pg.py``):

``submit``
    single events, ``POST /v1/events``, 64 concurrent clients each waiting for its receipt, every
    receipt verified; against ``POST /post`` of the baseline. Once per batch period
    (``--periods``): the log restarts with each period. Each repeat measures the log twice:
    with the receipts verified once the run is over (``benchmarks.load --verify-after``, the
    section's figures) and verified between requests (under ``inline``).
``batch``
    ``POST /v1/events/batch`` of 1,000 events, 4 requests in flight, for ``--batch-seconds``
    (default 60) without verification, then a shorter run that verifies every receipt.
``reads``
    a log of ``--read-size`` entries (default 1,000,000) is built in-process by driving the
    sequencer directly (:func:`build_log`), then served; inclusion proofs (random index, tree
    size of the checkpoint) and full level-0 tiles (random) against ``GET /get``, every answer
    verified (proofs once the run is over, ``--verify-after``; tiles as they come). With
    ``--wrk`` the same three are also measured with ``wrk`` (C, 1 thread).
``cluster`` (PostgreSQL only)
    the same single-event submissions (64 clients, every receipt verified) against the log run
    as ``python -m server --workers N --intake raw`` (cluster mode, :mod:`server.cluster`,
    :mod:`server.workers`) for each N of ``--processes``, with the first batch period of
    ``--periods``; every server runs at once (on its own database) and the runs rotate
    (baseline POST, then each N, per repeat). Reports the rate, its ratio to one process, the
    latency and the CPU per request of all the log's processes and of PostgreSQL.
``growth``
    a fresh log grows by 1,000-event batches toward ``--growth-target`` entries (default
    5,000,000) for at most ``--growth-minutes`` per backend; the server's resident memory
    (``VmRSS``) and the tree size are sampled every 5 s, and disk use per entry is measured at
    the end (SQLite: database, WAL and shared-memory files; PostgreSQL:
    ``pg_total_relation_size`` of every table, and ``pg_database_size``).

Noise: the machine is shared. Each measurement records the 1-minute load average and the CPU
pressure (``/proc/pressure/cpu`` ``some avg10``) before it starts, and the CPU time the server
process used during it (``/proc/<pid>/stat``), reported as CPU milliseconds per request: a
figure that depends much less on what else runs than throughput does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from benchmarks.serve_raw import build_raw_service
from merkle.hashing import leaf_hash
from server.codec import DEFAULT_LIMITS, encode_entry
from server.config import Settings
from server.sequencer import Submission
from tests.pg import PgServer

__all__ = ["Measurement", "Served", "build_log", "machine_info", "main"]

ROOT: Final = Path(__file__).resolve().parents[1]
PYTHON: Final = sys.executable
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
PAGE_KB: Final = os.sysconf("SC_PAGE_SIZE") // 1024
READY_TIMEOUT: Final = 600.0  # a large log verifies every stored tile before it serves


# -- the machine and its noise -----------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """Return what the figures depend on: cores, CPU model, memory, software versions."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_kb = int(line.split()[1])
    import starlette
    import uvicorn

    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(memory_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "uvicorn": uvicorn.__version__,
        "starlette": starlette.__version__,
    }


def noise() -> dict[str, float]:
    """Return the 1-minute load average and the CPU pressure (``some avg10``, percent)."""
    pressure = -1.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        first = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        pressure = float(first.split()[1].split("=")[1])
    return {"load1": os.getloadavg()[0], "cpu_pressure": pressure}


def process_cpu(pid: int) -> float:
    """Return the CPU seconds (user + system) process ``pid`` has used, 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def process_rss_kb(pid: int) -> int:
    """Return the resident set size of ``pid`` in KiB (``VmRSS``), 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children_cpu(parent: int) -> float:
    """Return the CPU seconds used by ``parent`` and its direct children (a PostgreSQL server)."""
    total = process_cpu(parent)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


# -- servers -----------------------------------------------------------------------------------


class Served:
    """A server subprocess that printed ``ready <url> [<vkey>]``; stop it with :meth:`stop`."""

    def __init__(self, command: Sequence[str], log_path: Path, *, cwd: Path = ROOT) -> None:
        self.command = list(command)
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            self.command,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        self.url, self.vkey = self._wait_ready(log_path)

    def _wait_ready(self, log_path: Path) -> tuple[str, str | None]:
        assert self.process.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.process.stdout], [], [], 1.0)
            if ready:
                line = self.process.stdout.readline().decode("utf-8", "replace").split()
                if len(line) >= 2 and line[0] == "ready":
                    return line[1], (line[2] if len(line) > 2 else None)
                if not line and self.process.poll() is not None:
                    break
            elif self.process.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"{' '.join(self.command)} did not start; see {log_path}")

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.process.pid

    def stop(self) -> None:
        """Interrupt the server (uvicorn shuts down cleanly), kill it after 30 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()


def start_etch(
    work: Path,
    name: str,
    *,
    database_url: str | None,
    period_ms: int,
    batch_size: int = 1000,
    tree: Path = ROOT,
) -> Served:
    """Start the raw-map log with its data in ``work/name``, from the source tree ``tree``."""
    command = [
        PYTHON,
        "-m",
        "benchmarks.serve_raw",
        "--data-dir",
        str(work / name),
        "--port",
        "0",
        "--log-level",
        "warning",
        "--batch-size",
        str(batch_size),
        "--batch-period-ms",
        str(period_ms),
    ]
    if database_url is not None:
        command += ["--database-url", database_url]
    return Served(command, work / f"{name}.log", cwd=tree)


class ClusterServed(Served):
    """``python -m server --workers N --intake raw`` (cluster mode); ready once it is healthy."""

    def __init__(
        self,
        work: Path,
        name: str,
        *,
        database_url: str,
        processes: int,
        period_ms: int,
        tree: Path,
    ) -> None:
        self.data_dir = work / name
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(socket.socket()) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self._url = f"http://127.0.0.1:{port}"
        command = [
            PYTHON,
            "-m",
            "server",
            "--workers",
            str(processes),
            "--cluster",
            "true",
            "--intake",
            "raw",
            "--data-dir",
            str(self.data_dir),
            "--database-url",
            database_url,
            "--port",
            str(port),
            "--batch-period-ms",
            str(period_ms),
            "--log-level",
            "warning",
        ]
        super().__init__(command, work / f"{name}.log", cwd=tree)

    def _wait_ready(self, log_path: Path) -> tuple[str, str | None]:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline and self.process.poll() is None:
            with (
                contextlib.suppress(OSError, ValueError),
                urllib.request.urlopen(self._url + "/healthz", timeout=5) as answer,
            ):
                if answer.status == 200:
                    vkey = (self.data_dir / "log.vkey").read_text(encoding="ascii").strip()
                    return self._url, vkey
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"{' '.join(self.command)} did not become healthy; see {log_path}")


def start_baseline(work: Path) -> Served:
    """Start the empty Starlette app."""
    command = [PYTHON, "-m", "benchmarks.baseline_app", "--port", "0"]
    return Served(command, work / "baseline.log")


def tree_size(url: str) -> int:
    """Return the log's committed tree size from ``/healthz``."""
    with urllib.request.urlopen(url + "/healthz", timeout=30) as answer:
        body = json.loads(answer.read())
    return int(body["tree_size"])


# -- measurements ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Measurement:
    """One load run against one server, with the noise around it."""

    label: str
    target: str
    tool: str
    command: str
    requests_per_s: float
    events_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    server_cpu_ms_per_request: float
    db_cpu_ms_per_request: float | None
    failures: dict[str, int]
    verified: int
    verification_failures: int
    client_cpu_share: float
    load1: float
    cpu_pressure: float
    extra: dict[str, Any] = field(default_factory=dict)


class Bench:
    """Runs measurements and keeps every one of them for the report."""

    def __init__(self, work: Path, args: argparse.Namespace) -> None:
        self.work = work
        self.args = args
        self.measurements: list[Measurement] = []
        self.sections: dict[str, Any] = {}
        self.pg_parent: int | None = None

    def load(
        self,
        label: str,
        served: Served,
        mode: str,
        *,
        duration: float,
        concurrency: int = 64,
        verify: bool = False,
        verify_after: bool = False,
        extra_args: Sequence[str] = (),
    ) -> Measurement:
        """Run :mod:`benchmarks.load` once against ``served`` and record the figures.

        ``verify_after`` (with ``verify``) has the load tool check the answers once the run is
        over rather than between requests (``--verify-after``).
        """
        command = [
            PYTHON,
            "-m",
            "benchmarks.load",
            "--url",
            served.url,
            "--mode",
            mode,
            "--concurrency",
            str(concurrency),
            "--duration",
            f"{duration:g}",
            "--warmup",
            f"{self.args.warmup:g}",
            "--json",
            *extra_args,
        ]
        if verify:
            assert served.vkey is not None
            command += ["--verify", "--vkey", served.vkey]
            if verify_after:
                command.append("--verify-after")
        before = noise()
        cpu0 = children_cpu(served.pid)  # with its workers, when it has some
        db0 = children_cpu(self.pg_parent) if self.pg_parent else None
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
        cpu1 = children_cpu(served.pid)
        db1 = children_cpu(self.pg_parent) if self.pg_parent else None
        if result.returncode not in (0, 1, 3) or not result.stdout.strip():
            raise RuntimeError(f"load tool failed ({result.returncode}): {result.stderr[-2000:]}")
        report = json.loads(result.stdout)
        kind = report["kinds"][0]
        total = duration + self.args.warmup
        started = kind["requests_per_s"] * total or 1.0  # requests during warm-up and window
        measurement = Measurement(
            label=label,
            target=_target(served),
            tool="benchmarks.load",
            command=" ".join(_shorten(command)),
            requests_per_s=kind["requests_per_s"],
            events_per_s=kind["events_per_s"],
            p50_ms=kind["p50_ms"],
            p90_ms=kind["p90_ms"],
            p99_ms=kind["p99_ms"],
            max_ms=kind["max_ms"],
            server_cpu_ms_per_request=(cpu1 - cpu0) / started * 1000,
            db_cpu_ms_per_request=None
            if db0 is None or db1 is None
            else (db1 - db0) / started * 1000,
            failures=kind["failures"],
            verified=kind["verified"],
            verification_failures=kind["verification_failures"] + report["duplicate_indexes"],
            client_cpu_share=report["client_cpu_share"],
            load1=before["load1"],
            cpu_pressure=before["cpu_pressure"],
        )
        if measurement.verification_failures:
            print(f"!! verification failed: {kind['first_verification_failure']}", flush=True)
        self._show(measurement)
        self.measurements.append(measurement)
        return measurement

    def wrk(
        self, label: str, served: Served, path: str, script: str | None, duration: float
    ) -> Measurement:
        """Run ``wrk -t1 -c64 --latency`` against ``served`` and record the figures."""
        command = ["wrk", "-t1", "-c64", f"-d{duration:g}s", "--latency", "--timeout", "30s"]
        if script is not None:
            lua = self.work / f"{label.replace(' ', '_')}.lua"
            lua.write_text(script)
            command += ["-s", str(lua)]
        command.append(served.url + path)
        before = noise()
        cpu0 = process_cpu(served.pid)
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        cpu1 = process_cpu(served.pid)
        figures = _parse_wrk(result.stdout)
        measurement = Measurement(
            label=label,
            target=served.command[2].rsplit(".", 1)[-1],
            tool="wrk",
            command=" ".join(_shorten(command)),
            requests_per_s=figures.get("rps", 0.0),
            events_per_s=figures.get("rps", 0.0),
            p50_ms=figures.get("p50", 0.0),
            p90_ms=figures.get("p90", 0.0),
            p99_ms=figures.get("p99", 0.0),
            max_ms=figures.get("max", 0.0),
            server_cpu_ms_per_request=(cpu1 - cpu0)
            / max(figures.get("rps", 0.0) * duration, 1.0)
            * 1000,
            db_cpu_ms_per_request=None,
            failures={"non-2xx": int(figures.get("non2xx", 0))} if figures.get("non2xx") else {},
            verified=0,
            verification_failures=0,
            client_cpu_share=0.0,
            load1=before["load1"],
            cpu_pressure=before["cpu_pressure"],
        )
        self._show(measurement)
        self.measurements.append(measurement)
        return measurement

    @staticmethod
    def _show(m: Measurement) -> None:
        failed = f" failed {m.failures}" if m.failures else ""
        print(
            f"  {m.label:<34} {m.tool:<6} {m.requests_per_s:>8.1f} req/s"
            f" {m.events_per_s:>8.1f} ev/s"
            f"  p50 {m.p50_ms:>6.1f}  p99 {m.p99_ms:>7.1f}  max {m.max_ms:>7.1f} ms"
            f"  cpu {m.server_cpu_ms_per_request:.3f} ms/req"
            + (f" db {m.db_cpu_ms_per_request:.3f}" if m.db_cpu_ms_per_request is not None else "")
            + f" client {m.client_cpu_share:.2f} cores"
            + f"  verified {m.verified} bad {m.verification_failures}"
            f"  load {m.load1:.1f} psi {m.cpu_pressure:.0f}%{failed}",
            flush=True,
        )


def _target(served: Served) -> str:
    """Return what a server runs: ``serve_raw``, ``baseline_app``, ``server --workers N``."""
    if served.command[2] == "server":
        return f"server --workers {served.command[4]}"
    return served.command[2].rsplit(".", 1)[-1]


def _shorten(command: Sequence[str]) -> list[str]:
    """Replace the interpreter path and long vkeys so that a command reads as typed."""
    out = []
    for part in command:
        if part == PYTHON:
            out.append(".venv/bin/python")
        elif "+" in part and len(part) > 60:
            out.append("<vkey>")
        else:
            out.append(part)
    return out


def _parse_wrk(text: str) -> dict[str, float]:
    """Return requests/s, latency percentiles (ms), max (ms) and non-2xx count from wrk output."""
    figures: dict[str, float] = {}
    for line in text.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            figures["rps"] = float(parts[1])
        elif line.strip().startswith(("50%", "90%", "99%")) and len(parts) == 2:
            figures["p" + parts[0].rstrip("%")] = _wrk_ms(parts[1])
        elif line.strip().startswith("Latency") and len(parts) >= 4:
            figures["max"] = _wrk_ms(parts[3])
        elif line.strip().startswith("Non-2xx"):
            figures["non2xx"] = float(parts[-1])
    return figures


def _wrk_ms(value: str) -> float:
    for suffix, scale in (("us", 0.001), ("ms", 1.0), ("s", 1000.0), ("m", 60_000.0)):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * scale
    return float(value)


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def _pairs(
    bench: Bench,
    label: str,
    baseline: Served,
    etch: Served,
    base_mode: str,
    etch_mode: str,
    *,
    verify: bool,
    repeats: int,
    duration: float,
) -> dict[str, Any]:
    """Alternate baseline and log runs ``repeats`` times; return medians and pair ratios."""
    runs: list[tuple[Measurement, Measurement]] = []
    for _ in range(repeats):
        base = bench.load(f"{label} baseline {base_mode}", baseline, base_mode, duration=duration)
        mine = bench.load(
            f"{label} etch {etch_mode}", etch, etch_mode, duration=duration, verify=verify
        )
        runs.append((base, mine))
    return _summary(runs)


def _summary(runs: Sequence[tuple[Measurement, Measurement]]) -> dict[str, Any]:
    bases = [b for b, _ in runs]
    mine = [m for _, m in runs]
    return {
        "baseline_rps": _median([b.requests_per_s for b in bases]),
        "etch_rps": _median([m.requests_per_s for m in mine]),
        "ratio": _median(
            [m.requests_per_s / b.requests_per_s for b, m in runs if b.requests_per_s]
        ),
        "ratios": [
            round(m.requests_per_s / b.requests_per_s, 3) for b, m in runs if b.requests_per_s
        ],
        "cpu_ratio": _median(
            [
                b.server_cpu_ms_per_request / m.server_cpu_ms_per_request
                for b, m in runs
                if m.server_cpu_ms_per_request
            ]
        ),
        "etch_p50_ms": _median([m.p50_ms for m in mine]),
        "etch_p99_ms": _median([m.p99_ms for m in mine]),
        "etch_max_ms": max((m.max_ms for m in mine), default=0.0),
        "baseline_cpu_ms": _median([b.server_cpu_ms_per_request for b in bases]),
        "etch_cpu_ms": _median([m.server_cpu_ms_per_request for m in mine]),
        "etch_db_cpu_ms": _median([m.db_cpu_ms_per_request or 0.0 for m in mine]),
        "client_cpu_share": _median([m.client_cpu_share for m in mine]),
        "cores_used": _median(
            [
                m.requests_per_s
                * (m.server_cpu_ms_per_request + (m.db_cpu_ms_per_request or 0.0))
                / 1000
                + m.client_cpu_share
                for m in mine
            ]
        ),
        "verified": sum(m.verified for m in mine),
        "verification_failures": sum(m.verification_failures for m in mine),
        "load1": [round(x.load1, 2) for pair in runs for x in pair],
        "cpu_pressure": [x.cpu_pressure for pair in runs for x in pair],
    }


# -- building a large log fast -------------------------------------------------------------------


def _bench_event(number: int, pad: str) -> dict[str, Any]:
    return {
        "type": "token-issued",
        "iss": "https://as.example.com",
        "jti": f"build-{number}",
        "iat": 1_767_225_600 + number // 1000,
        "client_id": f"app-{number % 97}",
        "sub": f"subject-{number % 1013}",
        "scope": "openid profile",
        "pad": pad,
    }


async def build_log(settings: Settings, entries: int, *, in_flight: int = 4) -> dict[str, float]:
    """Grow the log of ``settings`` to ``entries`` entries by driving its sequencer directly.

    No HTTP: each chunk of ``settings.batch_size`` events is encoded as the raw-map intake would
    (deterministic CBOR of the map) and handed to :meth:`server.log.LogService.submit`;
    ``in_flight`` chunks are queued at once so that a round always waits. Every commit is the
    log's real one (entries, tiles and signed checkpoint in one transaction). Returns the
    entries added, the seconds taken and the rate.
    """
    service = build_raw_service(settings)
    await service.start()
    pad = "x" * 300
    started = time.perf_counter()
    first = service.tree_size
    chunk = settings.batch_size
    next_number = first
    last_report = started

    async def one(start: int, count: int) -> None:
        submissions = []
        for number in range(start, start + count):
            data = encode_entry(_bench_event(number, pad), DEFAULT_LIMITS)
            submissions.append(Submission(data, leaf_hash(data), log_time=1_767_225_600_000))
        await service.submit(submissions)

    try:
        pending: set[asyncio.Task[None]] = set()
        while next_number < entries or pending:
            while next_number < entries and len(pending) < in_flight:
                count = min(chunk, entries - next_number)
                pending.add(asyncio.create_task(one(next_number, count)))
                next_number += count
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
            now = time.perf_counter()
            if now - last_report > 15:
                last_report = now
                print(f"  build: {service.tree_size:,} entries", flush=True)
    finally:
        await service.stop()
    seconds = time.perf_counter() - started
    added = entries - first
    return {"entries": added, "seconds": seconds, "rate": added / seconds if seconds else 0.0}


# -- phases ------------------------------------------------------------------------------------


@dataclass
class Backend:
    """One storage backend: its name and how to get a fresh database for a new log."""

    name: str
    fresh_url: Callable[[str], str | None]
    disk_bytes: Callable[[Path, str | None], dict[str, int]]


def phase_submit(bench: Bench, backend: Backend, baseline: Served) -> None:
    """Single-event submissions against the baseline POST, once per batch period.

    Each repeat runs the baseline, then the log twice: with every answer verified after the
    run (``--verify-after``: in the window the client costs what it costs against the
    baseline, an HTTP exchange, as a client on another machine would), whose figures are the
    section's, then with every answer verified between requests, whose figures go under
    ``inline`` (that client's verification shares the machine's cores with the log).
    With ``--compare-tree`` the same log from the other tree joins the rotation (baseline, log,
    other log, per repeat); its figures go to the section ``submit-compare/<backend>``.
    """
    curve: dict[str, Any] = {}
    compared: dict[str, Any] = {}
    other_tree: Path | None = bench.args.compare_tree
    for period in bench.args.periods:
        name = f"submit-{backend.name}-{period}ms"
        etch = start_etch(bench.work, name, database_url=backend.fresh_url(name), period_ms=period)
        other = None
        try:
            if other_tree is not None:
                other_name = f"{name}-compare"
                other = start_etch(
                    bench.work,
                    other_name,
                    database_url=backend.fresh_url(other_name),
                    period_ms=period,
                    tree=other_tree,
                )
            print(f"submit, {backend.name}, batch period {period} ms", flush=True)
            label = f"submit {backend.name} {period}ms"
            runs: list[tuple[Measurement, Measurement]] = []
            inline_runs: list[tuple[Measurement, Measurement]] = []
            other_runs: list[tuple[Measurement, Measurement]] = []
            for _ in range(bench.args.repeats):
                base = bench.load(
                    f"{label} baseline post", baseline, "post", duration=bench.args.duration
                )
                mine = bench.load(
                    f"{label} etch submit, verified after",
                    etch,
                    "submit",
                    duration=bench.args.duration,
                    verify=True,
                    verify_after=True,
                )
                runs.append((base, mine))
                inline = bench.load(
                    f"{label} etch submit, verified inline",
                    etch,
                    "submit",
                    duration=bench.args.duration,
                    verify=True,
                )
                inline_runs.append((base, inline))
                if other is not None:
                    theirs = bench.load(
                        f"{label} compare-tree submit, verified after",
                        other,
                        "submit",
                        duration=bench.args.duration,
                        verify=True,
                        verify_after=True,
                    )
                    other_runs.append((base, theirs))
            curve[str(period)] = _summary(runs)
            curve[str(period)]["p99_target_ms"] = period + 250
            curve[str(period)]["inline"] = _summary(inline_runs)
            if other_runs:
                compared[str(period)] = _summary(other_runs)
                compared[str(period)]["p99_target_ms"] = period + 250
                compared[str(period)]["tree"] = str(other_tree)
        finally:
            etch.stop()
            if other is not None:
                other.stop()
    bench.sections[f"submit/{backend.name}"] = curve
    if compared:
        bench.sections[f"submit-compare/{backend.name}"] = compared


def phase_cluster(bench: Bench, backend: Backend, baseline: Served) -> None:
    """Single-event submissions against 1, 2, 4... cluster processes (and the other tree's)."""
    if backend.name != "postgres":
        print("cluster phase: PostgreSQL only, skipped for", backend.name, flush=True)
        return
    period = bench.args.periods[0]
    trees: dict[str, Path] = {"this tree": ROOT}
    if bench.args.compare_tree is not None:
        trees["compare tree"] = bench.args.compare_tree
    servers: dict[tuple[str, int], Served] = {}
    runs: dict[tuple[str, int], list[tuple[Measurement, Measurement]]] = {}
    try:
        for tree_name, tree in trees.items():
            for count in bench.args.processes:
                name = f"cluster-{'compare-' if tree != ROOT else ''}{count}p"
                url = backend.fresh_url(name)
                assert url is not None
                servers[tree_name, count] = ClusterServed(
                    bench.work, name, database_url=url, processes=count, period_ms=period, tree=tree
                )
                runs[tree_name, count] = []
        print(f"cluster, processes {bench.args.processes}, batch period {period} ms", flush=True)
        for _ in range(bench.args.repeats):
            base = bench.load(
                "cluster baseline post",
                baseline,
                "post",
                duration=bench.args.duration,
                concurrency=bench.args.cluster_clients,
            )
            for count in bench.args.processes:
                for tree_name in trees:
                    served = servers[tree_name, count]
                    mine = bench.load(
                        f"cluster {tree_name} {count}p",
                        served,
                        "submit",
                        duration=bench.args.duration,
                        concurrency=bench.args.cluster_clients,
                        verify=True,
                    )
                    runs[tree_name, count].append((base, mine))
    finally:
        for served in servers.values():
            served.stop()
    section: dict[str, Any] = {
        "period_ms": period,
        "clients": bench.args.cluster_clients,
        "trees": {k: str(v) for k, v in trees.items()},
    }
    for tree_name in trees:
        first = runs[tree_name, bench.args.processes[0]]
        curve: dict[str, Any] = {}
        for count in bench.args.processes:
            summary = _summary(runs[tree_name, count])
            scales = [
                m.requests_per_s / one.requests_per_s
                for (_, m), (_, one) in zip(runs[tree_name, count], first, strict=True)
                if one.requests_per_s
            ]
            summary["scale"] = _median(scales)
            summary["scales"] = [round(x, 2) for x in scales]
            curve[str(count)] = summary
        section[tree_name] = curve
    bench.sections[f"cluster/{backend.name}"] = section


def phase_batch(bench: Bench, backend: Backend) -> None:
    """1,000-event batches for a minute (unverified), then a verified run."""
    name = f"batch-{backend.name}"
    etch = start_etch(
        bench.work, name, database_url=backend.fresh_url(name), period_ms=bench.args.batch_period
    )
    try:
        print(f"batch, {backend.name}", flush=True)
        sustained = bench.load(
            f"batch {backend.name} sustained",
            etch,
            "batch",
            duration=bench.args.batch_seconds,
            concurrency=4,
        )
        verified = bench.load(
            f"batch {backend.name} verified",
            etch,
            "batch",
            duration=bench.args.batch_verify_seconds,
            concurrency=4,
            verify=True,
        )
        bench.sections[f"batch/{backend.name}"] = {
            "sustained_events_per_s": sustained.events_per_s,
            "sustained_seconds": bench.args.batch_seconds,
            "verified_events_per_s": verified.events_per_s,
            "verified": verified.verified,
            "verification_failures": verified.verification_failures,
            "server_cpu_ms_per_event": sustained.server_cpu_ms_per_request / 1000,
            "db_cpu_ms_per_event": (sustained.db_cpu_ms_per_request or 0.0) / 1000,
            "batch_period_ms": bench.args.batch_period,
        }
    finally:
        etch.stop()


def phase_reads(bench: Bench, backend: Backend, baseline: Served) -> None:
    """Proofs and tiles of a large log against the baseline GET."""
    name = f"reads-{backend.name}"
    url = backend.fresh_url(name)
    data_dir = bench.work / name
    settings = Settings(data_dir=data_dir, database_url=url, batch_size=1000, batch_period_ms=0)
    print(f"reads, {backend.name}: building {bench.args.read_size:,} entries", flush=True)
    built = asyncio.run(build_log(settings, bench.args.read_size))
    print(f"  built {built['entries']:,} entries in {built['seconds']:.0f} s", flush=True)
    started = time.monotonic()
    etch = start_etch(bench.work, name, database_url=url, period_ms=25)
    startup = time.monotonic() - started
    try:
        size = tree_size(etch.url)
        # Fill the tile cache once, as a long-running server would have it.
        bench.load(f"reads {backend.name} warm-up", etch, "proof", duration=10)
        runs: dict[str, list[tuple[Measurement, Measurement]]] = {"proof": [], "tile": []}
        for _ in range(bench.args.repeats):
            for mode in ("proof", "tile"):
                base = bench.load(
                    f"reads {backend.name} baseline get",
                    baseline,
                    "get",
                    duration=bench.args.duration,
                )
                mine = bench.load(
                    f"reads {backend.name} etch {mode}",
                    etch,
                    mode,
                    duration=bench.args.duration,
                    verify=True,
                    verify_after=mode == "proof",  # tiles are checked as they come either way
                )
                runs[mode].append((base, mine))
        section: dict[str, Any] = {
            "tree_size": size,
            "build": built,
            "startup_seconds": startup,
            "proof": _summary(runs["proof"]),
            "tile": _summary(runs["tile"]),
            "rss_kb_after": process_rss_kb(etch.pid),
        }
        if bench.args.wrk and shutil.which("wrk"):
            section["wrk"] = _wrk_reads(bench, backend, baseline, etch, size)
        bench.sections[f"reads/{backend.name}"] = section
    finally:
        etch.stop()


def _wrk_reads(
    bench: Bench, backend: Backend, baseline: Served, etch: Served, size: int
) -> dict[str, Any]:
    proof_script = (
        "math.randomseed(os.time())\n"
        "request = function()\n"
        f"  local i = math.random(0, {size - 1})\n"
        f'  return wrk.format("GET", "/v1/proof/inclusion?index=" .. i .. "&tree_size={size}")\n'
        "end\n"
    )
    tile_script = (
        "math.randomseed(os.time())\n"
        "local function path(n)\n"
        "  local parts = {}\n"
        "  local s = string.format('%d', n)\n"
        "  local pad = (3 - #s % 3) % 3\n"
        "  s = string.rep('0', pad) .. s\n"
        "  for k = 1, #s, 3 do parts[#parts + 1] = s:sub(k, k + 2) end\n"
        "  for k = 1, #parts - 1 do parts[k] = 'x' .. parts[k] end\n"
        "  return table.concat(parts, '/')\n"
        "end\n"
        "request = function()\n"
        f"  return wrk.format('GET', '/tile/0/' .. path(math.random(0, {size // 256 - 1})))\n"
        "end\n"
    )
    out: dict[str, list[float]] = {"get": [], "proof": [], "tile": []}
    for _ in range(bench.args.repeats):
        out["get"].append(
            bench.wrk(
                f"wrk {backend.name} baseline get", baseline, "/get", None, bench.args.duration
            ).requests_per_s
        )
        out["proof"].append(
            bench.wrk(
                f"wrk {backend.name} etch proof", etch, "", proof_script, bench.args.duration
            ).requests_per_s
        )
        out["get"].append(
            bench.wrk(
                f"wrk {backend.name} baseline get", baseline, "/get", None, bench.args.duration
            ).requests_per_s
        )
        out["tile"].append(
            bench.wrk(
                f"wrk {backend.name} etch tile", etch, "", tile_script, bench.args.duration
            ).requests_per_s
        )
    get = _median(out["get"])
    return {
        "get_rps": get,
        "proof_rps": _median(out["proof"]),
        "tile_rps": _median(out["tile"]),
        "proof_ratio": _median(out["proof"]) / get if get else 0.0,
        "tile_ratio": _median(out["tile"]) / get if get else 0.0,
    }


class _Sampler:
    """Samples a server's RSS and tree size every ``interval`` seconds in a thread."""

    def __init__(self, served: Served, interval: float = 5.0) -> None:
        self.served = served
        self.interval = interval
        self.samples: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> dict[str, float]:
        """Take one sample now."""
        with contextlib.suppress(OSError, ValueError, KeyError):
            size = tree_size(self.served.url)
            entry = {
                "seconds": round(time.monotonic() - self._started, 1),
                "tree_size": size,
                "rss_mib": round(process_rss_kb(self.served.pid) / 1024, 1),
            }
            self.samples.append(entry)
            return entry
        return {}

    def stop(self) -> None:
        """Stop sampling (after one last sample)."""
        self._stop.set()
        self._thread.join()
        self.sample()


def phase_growth(bench: Bench, backend: Backend) -> None:
    """Grow a fresh log by 1,000-event batches; sample RSS; measure disk use per entry."""
    name = f"growth-{backend.name}"
    url = backend.fresh_url(name)
    etch = start_etch(bench.work, name, database_url=url, period_ms=bench.args.batch_period)
    sampler = _Sampler(etch)
    deadline = time.monotonic() + bench.args.growth_minutes * 60
    chunks = []
    try:
        print(f"growth, {backend.name}: toward {bench.args.growth_target:,} entries", flush=True)
        while time.monotonic() < deadline:
            size = tree_size(etch.url)
            if size >= bench.args.growth_target:
                break
            left = deadline - time.monotonic()
            chunk = max(10.0, min(60.0, left - bench.args.warmup))
            m = bench.load(
                f"growth {backend.name} at {size:,}", etch, "batch", duration=chunk, concurrency=4
            )
            chunks.append({"start_size": size, "events_per_s": m.events_per_s, "seconds": chunk})
    finally:
        sampler.stop()
        final = tree_size(etch.url) if etch.process.poll() is None else 0
        rss = process_rss_kb(etch.pid)
        etch.stop()
    disk = backend.disk_bytes(bench.work / name, url)
    bench.sections[f"growth/{backend.name}"] = {
        "final_tree_size": final,
        "final_rss_mib": round(rss / 1024, 1),
        "minutes": bench.args.growth_minutes,
        "reached_target": final >= bench.args.growth_target,
        "chunks": chunks,
        "rss_by_size": _milestones(sampler.samples),
        "samples": sampler.samples,
        "disk": disk,
        "disk_bytes_per_entry": {k: round(v / final, 1) for k, v in disk.items()} if final else {},
    }


def _milestones(samples: Sequence[dict[str, float]]) -> list[dict[str, float]]:
    """Return the first sample at or beyond each of 0, 250k, 500k, 1M, 2M, ... entries."""
    marks = [0, 250_000, 500_000, 1_000_000, 2_000_000, 3_000_000, 4_000_000, 5_000_000]
    out = []
    for mark in marks:
        hit = next((s for s in samples if s.get("tree_size", -1) >= mark), None)
        if hit is not None:
            out.append(hit)
    if samples and (not out or out[-1] is not samples[-1]):
        out.append(samples[-1])
    return out


# -- backends ----------------------------------------------------------------------------------


def _sqlite_disk(data_dir: Path, url: str | None) -> dict[str, int]:
    files = [data_dir / "log.db", data_dir / "log.db-wal", data_dir / "log.db-shm"]
    return {"sqlite_files": sum(f.stat().st_size for f in files if f.exists())}


@contextlib.contextmanager
def backends(names: Sequence[str], bench: Bench) -> Iterator[list[Backend]]:
    """Yield the chosen backends; a PostgreSQL server is started for the run if needed."""
    out: list[Backend] = []
    server = None
    try:
        for name in names:
            if name == "sqlite":
                out.append(Backend("sqlite", lambda _name: None, _sqlite_disk))
            elif name == "postgres":
                server = PgServer.create()
                pid_file = server.data_dir / "postmaster.pid"
                bench.pg_parent = int(pid_file.read_text().split()[0])
                out.append(_postgres_backend(server))
            else:
                raise ValueError(f"unknown backend {name!r}")
        yield out
    finally:
        if server is not None:
            server.destroy()


def _postgres_backend(server: PgServer) -> Backend:
    """Return the PostgreSQL backend: a new database on ``server`` per log."""

    def fresh(name: str) -> str:
        return server.create_database(name.replace("-", "_"))

    def disk(_data_dir: Path, url: str | None) -> dict[str, int]:
        assert url is not None
        return asyncio.run(_pg_disk(url))

    return Backend("postgres", fresh, disk)


async def _pg_disk(url: str) -> dict[str, int]:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        tables = await conn.fetchval(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
        )
        database = await conn.fetchval("SELECT pg_database_size(current_database())")
    finally:
        await conn.close()
    return {"pg_total_relation_size": int(tables), "pg_database_size": int(database)}


# -- report ------------------------------------------------------------------------------------


def _fmt(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def _ok(passed: bool) -> str:
    return "yes" if passed else "**no**"


def _inline(x: dict[str, Any] | None) -> str:
    """Return the submission figures with receipts verified inline (empty in older results)."""
    if not x:
        return ""
    return (
        f"{_fmt(x['etch_rps'])}, {x['ratio']:.2f} ({', '.join(f'{r:.2f}' for r in x['ratios'])});"
        f" {x['verified']:,} verified, {x['verification_failures']} bad"
    )


def render_markdown(results: dict[str, Any]) -> str:
    """Return the Markdown tables of a results file written with ``--json``."""
    sections: dict[str, Any] = results["sections"]
    machine = results["machine"]
    out = [
        f"Machine: {machine['nproc']} cores, {machine['cpu_model']}, {machine['memory_gib']} GiB;"
        f" Python {machine['python']}, uvicorn {machine['uvicorn']}, Starlette"
        f" {machine['starlette']}. Run started {results['started']}, {results['minutes']} min.",
        "",
    ]
    submit = {k.split("/")[1]: v for k, v in sections.items() if k.startswith("submit/")}
    submit.update(
        {
            f"{k.split('/')[1]} (compare tree)": v
            for k, v in sections.items()
            if k.startswith("submit-compare/")
        }
    )
    if submit:
        out += [
            "| backend | period ms | baseline req/s | Etch req/s | ratio (runs) | target 0.50 |"
            " CPU ms/req base / Etch (+db) | Etch p50 / p99 / max ms | p99 target | receipts"
            " verified | verified inline: Etch req/s, ratio (runs) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for backend, curve in submit.items():
            for period, x in curve.items():
                db = f" (+{x['etch_db_cpu_ms']:.3f})" if x["etch_db_cpu_ms"] else ""
                out.append(
                    f"| {backend} | {period} | {_fmt(x['baseline_rps'])} | {_fmt(x['etch_rps'])}"
                    f" | {x['ratio']:.2f} ({', '.join(f'{r:.2f}' for r in x['ratios'])})"
                    f" | {_ok(x['ratio'] >= 0.5)}"
                    f" | {x['baseline_cpu_ms']:.3f} / {x['etch_cpu_ms']:.3f}{db}"
                    f" | {x['etch_p50_ms']:.0f} / {x['etch_p99_ms']:.0f} / {x['etch_max_ms']:.0f}"
                    f" | {x['p99_target_ms']} {_ok(x['etch_p99_ms'] <= x['p99_target_ms'])}"
                    f" | {x['verified']:,}, {x['verification_failures']} bad"
                    f" | {_inline(x.get('inline'))} |"
                )
        out.append("")
    cluster = sections.get("cluster/postgres")
    if cluster:
        out += [
            "| source | processes | submissions/s (every receipt verified) | x one process (runs)"
            " | baseline POST req/s | CPU ms/req all processes (+db) | p50 / p99 / max ms"
            " | client cores | cores in use (of the machine's) | load average |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for tree_name in cluster["trees"]:
            for count, x in cluster[tree_name].items():
                out.append(
                    f"| {tree_name} | {count} | {_fmt(x['etch_rps'], 1)} | {x['scale']:.2f}"
                    f" ({', '.join(f'{r:.2f}' for r in x.get('scales', []))})"
                    f" | {_fmt(x['baseline_rps'])}"
                    f" | {x['etch_cpu_ms']:.3f} (+{x['etch_db_cpu_ms']:.3f})"
                    f" | {x['etch_p50_ms']:.0f} / {x['etch_p99_ms']:.0f} / {x['etch_max_ms']:.0f}"
                    f" | {x.get('client_cpu_share', 0.0):.2f} | {x.get('cores_used', 0.0):.2f}"
                    f" | {min(x['load1']):.1f}-{max(x['load1']):.1f} |"
                )
        out.append("")
    batch = {k.split("/")[1]: v for k, v in sections.items() if k.startswith("batch/")}
    if batch:
        out += [
            "| backend | events/s, 1,000-event batches, 60 s | target 8,000 | server CPU ms/event"
            " (+db) | events/s with every receipt verified | receipts verified |",
            "|---|---|---|---|---|---|",
        ]
        for backend, x in batch.items():
            db = f" (+{x['db_cpu_ms_per_event']:.3f})" if x["db_cpu_ms_per_event"] > 0.001 else ""
            out.append(
                f"| {backend} | {_fmt(x['sustained_events_per_s'])}"
                f" | {_ok(x['sustained_events_per_s'] >= 8000)}"
                f" | {x['server_cpu_ms_per_event']:.3f}{db} | {_fmt(x['verified_events_per_s'])}"
                f" | {x['verified']:,}, {x['verification_failures']} bad |"
            )
        out.append("")
    reads = {k.split("/")[1]: v for k, v in sections.items() if k.startswith("reads/")}
    if reads:
        out += [
            "| backend | read | tool | GET req/s | Etch req/s | ratio (runs) | target |"
            " CPU ms/req GET / Etch | Etch p99 ms |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for backend, x in reads.items():
            for kind, target in (("proof", 0.6), ("tile", 0.8)):
                y = x[kind]
                tool = "load (verified after)" if kind == "proof" else "load (verified)"
                out.append(
                    f"| {backend} | {kind} | {tool} | {_fmt(y['baseline_rps'])}"
                    f" | {_fmt(y['etch_rps'])}"
                    f" | {y['ratio']:.2f} ({', '.join(f'{r:.2f}' for r in y['ratios'])})"
                    f" | {target} {_ok(y['ratio'] >= target)}"
                    f" | {y['baseline_cpu_ms']:.3f} / {y['etch_cpu_ms']:.3f}"
                    f" | {y['etch_p99_ms']:.0f} |"
                )
                if "wrk" in x:
                    w = x["wrk"]
                    out.append(
                        f"| {backend} | {kind} | wrk | {_fmt(w['get_rps'])}"
                        f" | {_fmt(w[kind + '_rps'])} | {w[kind + '_ratio']:.2f}"
                        f" | {target} {_ok(w[kind + '_ratio'] >= target)} | | |"
                    )
            build = x["build"]
            out.append(
                f"| {backend} | (log of {x['tree_size']:,} built in-process in"
                f" {build['seconds']:.0f} s, {build['rate']:,.0f}/s; start-up with full"
                f" verification {x['startup_seconds']:.0f} s; RSS after the reads"
                f" {x['rss_kb_after'] / 1024:.0f} MiB) | | | | | | | |"
            )
        out.append("")
    growth = {k.split("/")[1]: v for k, v in sections.items() if k.startswith("growth/")}
    if growth:
        out += [
            "| backend | RSS MiB at tree size | final size (minutes) | disk bytes/entry |",
            "|---|---|---|---|",
        ]
        for backend, x in growth.items():
            marks = ", ".join(
                f"{m['rss_mib']:.0f} @ {m['tree_size'] / 1e6:.2f}M" for m in x["rss_by_size"]
            )
            disk = ", ".join(f"{k} {v:,.0f}" for k, v in x["disk_bytes_per_entry"].items())
            out.append(
                f"| {backend} | {marks} | {x['final_tree_size']:,} ({x['minutes']:g}) | {disk} |"
            )
    return "\n".join(out)


# -- command line ------------------------------------------------------------------------------


def _csv_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_server")
    parser.add_argument("--phases", default="submit,batch,reads,growth")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--periods", type=_csv_ints, default=[5, 25, 200], help="batch periods, ms")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--batch-period", type=int, default=25, help="ms, batch and growth phases")
    parser.add_argument("--batch-seconds", type=float, default=60.0)
    parser.add_argument("--batch-verify-seconds", type=float, default=20.0)
    parser.add_argument("--read-size", type=int, default=1_000_000)
    parser.add_argument("--growth-target", type=int, default=5_000_000)
    parser.add_argument("--growth-minutes", type=float, default=10.0, help="per backend")
    parser.add_argument("--wrk", action="store_true", help="also measure reads with wrk")
    parser.add_argument(
        "--processes", type=_csv_ints, default=[1, 2, 4], help="cluster phase: process counts"
    )
    parser.add_argument(
        "--cluster-clients",
        type=int,
        default=64,
        help="cluster phase: concurrent clients (enough to keep every process busy)",
    )
    parser.add_argument(
        "--compare-tree",
        type=Path,
        help="also run the log servers from this source tree (before/after, same rotation)",
    )
    parser.add_argument("--work-dir", type=Path, help="keep data here (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    sub = parser.add_subparsers(dest="command")
    report = sub.add_parser("report", help="print the Markdown tables of a --json results file")
    report.add_argument("results", type=Path)
    build = sub.add_parser("build", help="grow a log in-process to --entries entries")
    build.add_argument("--data-dir", type=Path, required=True)
    build.add_argument("--database-url")
    build.add_argument("--entries", type=int, required=True)
    build.add_argument("--batch-size", type=int, default=1000)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen phases (or ``build``) and print the summary; exit 1 if a check failed."""
    args = build_parser().parse_args(argv)
    if args.command == "report":
        print(render_markdown(json.loads(args.results.read_text())))
        return 0
    if args.command == "build":
        settings = Settings(
            data_dir=args.data_dir,
            database_url=args.database_url,
            batch_size=args.batch_size,
            batch_period_ms=0,
        )
        built = asyncio.run(build_log(settings, args.entries))
        print(json.dumps(built))
        return 0
    phases = [p for p in args.phases.split(",") if p]
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="etch-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    bench = Bench(work, args)
    info = machine_info()
    print(f"machine: {json.dumps(info)}\nwork dir: {work}", flush=True)
    started = time.time()
    baseline = start_baseline(work)
    try:
        with backends([b for b in args.backends.split(",") if b], bench) as chosen:
            for backend in chosen:
                if "submit" in phases:
                    phase_submit(bench, backend, baseline)
                if "cluster" in phases:
                    phase_cluster(bench, backend, baseline)
                if "batch" in phases:
                    phase_batch(bench, backend)
                if "reads" in phases:
                    phase_reads(bench, backend, baseline)
                if "growth" in phases:
                    phase_growth(bench, backend)
    finally:
        baseline.stop()
    report = {
        "machine": info,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "minutes": round((time.time() - started) / 60, 1),
        "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "sections": bench.sections,
        "measurements": [asdict(m) for m in bench.measurements],
    }
    print(json.dumps(bench.sections, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))
    failed = sum(m.verification_failures for m in bench.measurements)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
