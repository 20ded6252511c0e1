"""``kill -9`` of a real log process while 32 clients submit (ARCHITECTURE.md invariants 1-2).

A real ``python -m server`` (uvicorn) runs on 127.0.0.1; 32 concurrent clients submit distinct
events over keep-alive connections; at a random moment (0.05-0.4 s after the round's first
answer) the process gets SIGKILL; it is started again on the same data, and so on. After every
restart:

* every answer received before the kill is verified (leaf hash, inclusion proof, log signature,
  C2SP tlog-proof receipt);
* the new checkpoint verifies with the log's key; it is consistent (proof from the API) with the
  checkpoint verified after the previous restart, and the root recomputed from the leaves equals
  the root of every checkpoint any client was shown, at its size (a handful of them also get a
  consistency proof from the API), so every checkpoint ever shown is a prefix of the new one;
* the tiles and entry bundles added since the previous check are read and agree with each
  other (each entry hashes to its level-0 tile hash, each level-1 hash is the root of its
  level-0 tile) and with the leaves verified before (the partial tile that grew); two older full
  tiles, drawn at random, are read again and must not have changed;
* every event that got an answer with a receipt is checked against the new checkpoint: its
  index is below the new size and the leaf hash there (under the new root) is its own; for a
  sample (16 acknowledged since the previous check and 8 of all) an inclusion proof from the API
  verifies against the new checkpoint;
* the log holds each event at most once, and only events that were sent; the events whose
  answer was lost in the crash are submitted again and get exactly one index.

Older leaves are not read again every round: the consistency proof from the previous verified
checkpoint, whose root was recomputed from exactly those leaves, proves they are unchanged. At
the end a last restart is checked from scratch: every tile and entry bundle is read, the root
recomputed from all leaves must equal every checkpoint ever shown, and every acknowledged event
must be at its index.

SQLite runs 50 rounds, PostgreSQL 3. The random seed is in every failure message. A round costs
under 2 s of CPU (log and clients), most of it the log's start-up; to take it out of the critical
path, each next log process is spawned ahead and does its imports while the round runs
(:class:`WarmLogProcess`). The test prints the wall time of each phase.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from merkle.checkpoint import Checkpoint
from merkle.hashing import leaf_hash
from merkle.note import Ed25519Verifier, Verifier
from merkle.tiles import TILE_WIDTH, Tile, format_tile_path, parse_entry_bundle
from merkle.tree import verify_inclusion
from tests.server_helpers import (
    LogProcess,
    RawConnection,
    RootTracker,
    b64d,
    check_consistency,
    check_submit_result,
    entry_bytes,
    free_port,
    open_note,
    pg_schema,
    read_tree,
    subtree_root,
)

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

CLIENTS = 32
RECENT_PROOFS = 16
OLD_PROOFS = 8
SHOWN_PROOFS = 4
OLD_TILES = 2


_WARM_START = """\
import os, sys
import server.__main__ as m
sys.stdin.readline()
try:
    os.setpriority(os.PRIO_PROCESS, 0, 0)
except PermissionError:
    pass
sys.exit(m.main(sys.argv[1:]))
"""
"""What a prepared process runs: the server's imports (at nice 10, so that they take little from
the round in progress), then, once told, the priority back to 0 (when permitted: raising
priority needs root or CAP_SYS_NICE) and ``main`` as ``python -m server`` runs it."""


class WarmLogProcess(LogProcess):
    """A :class:`LogProcess` whose next process is spawned ahead and waits with its imports done.

    Start-up is mostly Python importing the server (about 0.7 s of CPU, several seconds of wall
    time on a loaded machine). :meth:`prepare` spawns the next process, which imports
    ``server.__main__`` at nice 10 and then blocks reading its stdin, without touching the data;
    :meth:`start` tells it to go once the previous process is dead, and it runs ``main`` with
    the same arguments as ``python -m server``.
    """

    def __init__(self, data_dir: Path, **kwargs: Any) -> None:
        super().__init__(data_dir, **kwargs)
        self._prepared: tuple[subprocess.Popen[bytes], int] | None = None

    def prepare(self) -> None:
        """Spawn the next process (its imports run now; it waits for :meth:`start`)."""
        assert self._prepared is None
        port = free_port()
        command = self.command(port)
        assert command[1:3] == ["-m", "server"]
        environ = {k: v for k, v in os.environ.items() if not k.startswith("ETCH_")}
        with self.log_path(self.starts + 1).open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-c", _WARM_START, *command[3:]],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=Path(__file__).resolve().parents[1],
                env=environ,
                preexec_fn=lambda: os.nice(10),
            )
        self._prepared = (process, port)

    async def start(self, within: float = 60.0) -> None:
        """Let the prepared process go (or start a cold one) and wait until it is healthy."""
        if self._prepared is None:
            await super().start(within)
            return
        assert self.process is None or self.process.poll() is not None
        process, port = self._prepared
        self._prepared = None
        self.process, self.port = process, port
        self.starts += 1
        assert process.stdin is not None
        process.stdin.write(b"go\n")
        process.stdin.close()
        if not await self._wait_healthy(within):
            if "address already in use" not in self.log_text().lower():
                raise AssertionError(f"the log did not start:\n{self.log_text()[-3000:]}")
            await super().start(within)

    def discard(self) -> None:
        """Kill the prepared process, if any."""
        if self._prepared is not None:
            process, _ = self._prepared
            self._prepared = None
            process.kill()
            process.wait(timeout=30)


@dataclass
class Ledger:
    """Everything the clients saw, across all rounds, and what is verified of the log so far."""

    seed: int
    sent: dict[bytes, bytes] = field(default_factory=dict)  # leaf hash -> entry bytes
    acknowledged: dict[bytes, int] = field(default_factory=dict)  # leaf hash -> index
    answers: list[tuple[dict[str, Any], Any]] = field(default_factory=list)  # unverified
    unknown: dict[bytes, dict[str, Any]] = field(default_factory=dict)  # answer lost
    checkpoints: dict[int, Checkpoint] = field(default_factory=dict)  # every one shown
    unverified_checkpoints: set[int] = field(default_factory=set)
    recent: list[bytes] = field(default_factory=list)  # acknowledged in the latest round
    problems: list[str] = field(default_factory=list)
    lost_answers: int = 0  # requests in flight at a kill
    logged_before_kill: int = 0  # of those, found already logged when sent again
    # The log as verified at the latest check: its checkpoint, its leaf hashes in order, the
    # same as a set, the root tracker over them, and the level-1 hashes recomputed from them.
    base: Checkpoint | None = None
    leaves: list[bytes] = field(default_factory=list)
    leaf_set: set[bytes] = field(default_factory=set)
    tracker: RootTracker = field(default_factory=RootTracker)
    level1: list[bytes] = field(default_factory=list)

    def fail(self, message: str) -> None:
        self.problems.append(message)

    def see(self, checkpoint: Checkpoint) -> None:
        """Record a checkpoint a client was shown; two of one size must be identical."""
        known = self.checkpoints.get(checkpoint.tree_size)
        if known is None:
            self.checkpoints[checkpoint.tree_size] = checkpoint
            self.unverified_checkpoints.add(checkpoint.tree_size)
        elif known != checkpoint:
            self.fail(f"two different checkpoints of size {checkpoint.tree_size}")

    def acknowledge(self, leaf: bytes, index: int) -> None:
        known = self.acknowledged.setdefault(leaf, index)
        if known != index:
            self.fail(f"an event was acknowledged at {known} and later at {index}")
        self.recent.append(leaf)


@dataclass
class Timings:
    """Wall-clock seconds of each phase of each round (printed at the end)."""

    start: list[float] = field(default_factory=list)
    check: list[float] = field(default_factory=list)
    submit: list[float] = field(default_factory=list)

    def report(self) -> str:
        parts = []
        for name in ("start", "check", "submit"):
            values: list[float] = getattr(self, name)
            if values:
                parts.append(
                    f"{name} median {statistics.median(values):.2f} s, "
                    f"max {max(values):.2f} s, total {sum(values):.1f} s"
                )
        return "; ".join(parts)


def note_of(ledger: Ledger) -> str:
    return f"(seed {ledger.seed})"


async def submit_until_stopped(
    port: int,
    client: int,
    round_number: int,
    ledger: Ledger,
    stop: asyncio.Event,
    answered: asyncio.Event,
) -> int:
    """Submit distinct events one after another until ``stop`` or the connection is lost.

    Sets ``answered`` when the first answer arrives.
    """
    connection: RawConnection | None = None
    sent = 0
    try:
        while not stop.is_set():
            event = {"c": client, "r": round_number, "s": ledger.seed % 10_000, "n": sent}
            entry = entry_bytes(event)
            ledger.sent[leaf_hash(entry)] = entry
            sent += 1
            try:
                if connection is None:
                    connection = await RawConnection.open(port)
                response = await connection.post_json("/v1/events", event)
            except (OSError, asyncio.IncompleteReadError):
                ledger.unknown[leaf_hash(entry)] = event
                ledger.lost_answers += 1
                if not stop.is_set():
                    ledger.fail(f"client {client} lost its connection before the kill")
                return sent
            if response.status != 201:
                ledger.fail(f"client {client} got {response.status}: {response.body[:200]!r}")
                return sent
            ledger.answers.append((event, response.json()))
            answered.set()
    finally:
        if connection is not None:
            await connection.close()
    return sent


def settle_answers(ledger: Ledger, verifier: Verifier, vkey: str) -> None:
    """Verify every answer received (receipt, proof, checkpoint) and record what it says."""
    for event, body in ledger.answers:
        entry = entry_bytes(event)
        checkpoint = check_submit_result(body, entry, verifier, vkey=vkey)
        ledger.see(checkpoint)
        ledger.acknowledge(leaf_hash(entry), body["index"])
    ledger.answers.clear()


async def gather_limited(jobs: list[Awaitable[None]], limit: int = 8) -> None:
    """Await ``jobs`` with at most ``limit`` running at once."""
    semaphore = asyncio.Semaphore(limit)

    async def run(job: Awaitable[None]) -> None:
        async with semaphore:
            await job

    await asyncio.gather(*(run(job) for job in jobs))


async def check_inclusion(
    api: httpx.AsyncClient, value: bytes, index: int, checkpoint: Checkpoint
) -> None:
    """Fetch and verify the inclusion proof of leaf ``value`` at ``index`` in ``checkpoint``."""
    response = await api.get(
        "/v1/proof/inclusion",
        params={"index": str(index), "tree_size": str(checkpoint.tree_size)},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert b64d(body["leaf_hash"]) == value
    proof = [b64d(h) for h in body["proof"]]
    verify_inclusion(value, index, checkpoint.tree_size, proof, checkpoint.root_hash)


async def get_bytes(api: httpx.AsyncClient, tile: Tile) -> bytes:
    """GET one tile or entry bundle; it must be there."""
    response = await api.get("/" + format_tile_path(tile))
    assert response.status_code == 200, (format_tile_path(tile), response.status_code)
    return response.content


async def read_level0(
    api: httpx.AsyncClient, index: int, width: int
) -> tuple[list[bytes], list[bytes]]:
    """Read level-0 tile ``index`` and its entry bundle; return (hashes, entries), cross-checked."""
    data, bundle = await asyncio.gather(
        get_bytes(api, Tile(0, index, width)), get_bytes(api, Tile(-1, index, width))
    )
    assert len(data) == 32 * width
    hashes = [data[i : i + 32] for i in range(0, len(data), 32)]
    entries = parse_entry_bundle(bundle)
    assert [leaf_hash(e) for e in entries] == hashes, f"entry bundle {index} != its tile"
    return hashes, entries


def widths(start: int, count: int) -> list[tuple[int, int]]:
    """``(index, width)`` of the tiles from ``start`` holding ``count`` hashes of one level."""
    end = -(-count // TILE_WIDTH)
    return [(i, min(TILE_WIDTH, count - i * TILE_WIDTH)) for i in range(start, end)]


async def read_new_leaves(api: httpx.AsyncClient, ledger: Ledger, size: int) -> list[bytes]:
    """Read the tiles and bundles that changed since the last check; return the new leaves.

    The part of the first tile read that was verified before must be unchanged; every new
    entry must be one that was sent, and no leaf may repeat one already in the log. Level-1
    tiles are checked against the roots of the full level-0 tiles below them.
    """
    verified = len(ledger.leaves)
    first = verified // TILE_WIDTH
    fetched = await asyncio.gather(*(read_level0(api, i, w) for i, w in widths(first, size)))
    hashes = [h for tile_hashes, _ in fetched for h in tile_hashes]
    entries = [e for _, tile_entries in fetched for e in tile_entries]
    overlap = verified - first * TILE_WIDTH
    assert hashes[:overlap] == ledger.leaves[first * TILE_WIDTH :], (
        f"a verified leaf changed {note_of(ledger)}"
    )
    new = hashes[overlap:]
    for value, entry in zip(new, entries[overlap:], strict=True):
        assert ledger.sent.get(value) == entry, f"an entry nobody sent {note_of(ledger)}"
        assert value not in ledger.leaf_set, f"an event is logged twice {note_of(ledger)}"
        ledger.leaf_set.add(value)
    assert len(set(new)) == len(new), f"an event is logged twice {note_of(ledger)}"
    leaves = ledger.leaves + new
    full = size // TILE_WIDTH
    level1_tiles = await asyncio.gather(
        *(get_bytes(api, Tile(1, i, w)) for i, w in widths(len(ledger.level1) // TILE_WIDTH, full))
    )
    level1 = [d[i : i + 32] for d in level1_tiles for i in range(0, len(d), 32)]
    offset = len(ledger.level1) // TILE_WIDTH * TILE_WIDTH
    for j, value in enumerate(level1, offset):
        if j < len(ledger.level1):
            assert value == ledger.level1[j], f"level-1 hash {j} changed {note_of(ledger)}"
        else:
            assert value == subtree_root(leaves[j * TILE_WIDTH : (j + 1) * TILE_WIDTH])
            ledger.level1.append(value)
    assert len(ledger.level1) == full
    return new


async def verify_log(
    api: httpx.AsyncClient, ledger: Ledger, verifier: Verifier, rng: random.Random
) -> Checkpoint:
    """Check the running log against everything the clients were ever shown (see module doc)."""
    response = await api.get("/checkpoint")
    assert response.status_code == 200, note_of(ledger)
    current = open_note(response.content, verifier)
    base = ledger.base
    if base is not None:
        assert current.tree_size >= base.tree_size, f"the log shrank {note_of(ledger)}"
        await check_consistency(api, base, current)
    shown = sorted(ledger.unverified_checkpoints)
    for size in shown:
        assert size <= current.tree_size, f"checkpoint {size} was lost {note_of(ledger)}"
    verified = len(ledger.leaves)
    # Checkpoints inside the verified part (none unless one was shown late) and a few others
    # get a consistency proof; the roots of the rest are recomputed from the leaves below.
    proved = [s for s in shown if s < verified]
    later = [s for s in shown if s >= verified]
    proved += rng.sample(later, min(SHOWN_PROOFS, len(later)))
    await gather_limited(
        [check_consistency(api, ledger.checkpoints[size], current) for size in set(proved)]
    )
    ledger.see(current)

    new = await read_new_leaves(api, ledger, current.tree_size)
    tracker = ledger.tracker
    for value in new:
        tracker.append(value)
        ledger.leaves.append(value)
        seen = ledger.checkpoints.get(tracker.size)
        if seen is not None:
            assert tracker.root() == seen.root_hash, f"root at {tracker.size} {note_of(ledger)}"
    assert tracker.size == current.tree_size
    assert tracker.root() == current.root_hash, f"tiles do not give the root {note_of(ledger)}"
    ledger.unverified_checkpoints.clear()
    ledger.base = current

    leaves = ledger.leaves
    for value, index in ledger.acknowledged.items():
        assert index < current.tree_size, f"entry {index} is lost {note_of(ledger)}"
        assert leaves[index] == value, f"entry {index} was replaced {note_of(ledger)}"
    old_full = verified // TILE_WIDTH
    for index in rng.sample(range(old_full), min(OLD_TILES, old_full)):
        hashes, _ = await read_level0(api, index, TILE_WIDTH)
        assert hashes == leaves[index * TILE_WIDTH : (index + 1) * TILE_WIDTH], (
            f"old tile {index} changed {note_of(ledger)}"
        )

    recent = sorted(set(ledger.recent))
    everything = list(ledger.acknowledged)
    checked = rng.sample(recent, min(RECENT_PROOFS, len(recent)))
    checked += rng.sample(everything, min(OLD_PROOFS, len(everything)))
    await gather_limited(
        [check_inclusion(api, value, ledger.acknowledged[value], current) for value in checked]
    )
    ledger.recent.clear()
    return current


async def verify_from_scratch(api: httpx.AsyncClient, ledger: Ledger, verifier: Verifier) -> None:
    """Read the whole log again and check it against everything ever shown (the last check)."""
    response = await api.get("/checkpoint")
    assert response.status_code == 200, note_of(ledger)
    current = open_note(response.content, verifier)
    snapshot = await read_tree(api, current.tree_size)
    leaves = snapshot.leaf_hashes
    assert len(set(leaves)) == len(leaves), f"an event is logged twice {note_of(ledger)}"
    for value, entry in zip(leaves, snapshot.entries, strict=True):
        assert ledger.sent.get(value) == entry, f"an entry nobody sent {note_of(ledger)}"
    tracker = RootTracker()
    for value in leaves:
        tracker.append(value)
        seen = ledger.checkpoints.get(tracker.size)
        if seen is not None:
            assert tracker.root() == seen.root_hash, f"root at {tracker.size} {note_of(ledger)}"
    assert tracker.root() == current.root_hash
    for value, index in ledger.acknowledged.items():
        assert index < current.tree_size, f"entry {index} is lost {note_of(ledger)}"
        assert leaves[index] == value, f"entry {index} was replaced {note_of(ledger)}"


async def resubmit_unknown(api: httpx.AsyncClient, ledger: Ledger) -> None:
    """Send again every event whose answer was lost: each gets one index, new or original."""
    events = list(ledger.unknown.values())
    ledger.unknown.clear()
    for start in range(0, len(events), 100):
        chunk = events[start : start + 100]
        response = await api.post("/v1/events/batch", json=chunk)
        assert response.status_code == 200, response.text
        for event, body in zip(chunk, response.json()["results"], strict=True):
            ledger.answers.append((event, body))
            ledger.logged_before_kill += body["duplicate"] is True


async def crash_rounds(
    log: WarmLogProcess, rounds: int, seed: int, *, min_s: float = 0.05, max_s: float = 0.4
) -> Timings:
    """Run ``rounds`` rounds of submit-then-SIGKILL on ``log``, then verify a last restart."""
    rng = random.Random(seed)
    ledger = Ledger(seed)
    timings = Timings()
    verifier: Verifier | None = None
    total_sent = 0
    for round_number in range(rounds + 1):
        began = time.monotonic()
        await log.start()
        timings.start.append(time.monotonic() - began)
        if round_number < rounds:
            log.prepare()
        if verifier is None:
            verifier = Ed25519Verifier.from_vkey(log.vkey())
        vkey = log.vkey()
        async with httpx.AsyncClient(base_url=log.base_url, timeout=30) as api:
            began = time.monotonic()
            await verify_log(api, ledger, verifier, rng)
            await resubmit_unknown(api, ledger)
            settle_answers(ledger, verifier, vkey)
            if round_number == rounds:
                await verify_log(api, ledger, verifier, rng)
                await verify_from_scratch(api, ledger, verifier)
                timings.check.append(time.monotonic() - began)
                break
            timings.check.append(time.monotonic() - began)
            began = time.monotonic()
            stop = asyncio.Event()
            answered = asyncio.Event()
            clients = [
                asyncio.create_task(
                    submit_until_stopped(log.port, c, round_number, ledger, stop, answered)
                )
                for c in range(CLIENTS)
            ]
            # The kill comes at a random moment after the first answer, however loaded the
            # machine is: every round has acknowledged events and requests in flight.
            await asyncio.wait_for(answered.wait(), timeout=60)
            await asyncio.sleep(rng.uniform(min_s, max_s))
            stop.set()
            log.kill()
            sent = await asyncio.wait_for(asyncio.gather(*clients), timeout=30)
            total_sent += sum(sent)
        assert not ledger.problems, f"{ledger.problems[:5]} {note_of(ledger)}"
        settle_answers(ledger, verifier, vkey)
        timings.submit.append(time.monotonic() - began)
    log.terminate()
    log.discard()
    assert not ledger.problems, f"{ledger.problems[:5]} {note_of(ledger)}"
    print(
        f"{rounds} kills: {total_sent} events sent, {len(ledger.acknowledged)} logged, "
        f"{ledger.lost_answers} answers lost in a crash, {ledger.logged_before_kill} of those "
        f"already logged; {timings.report()}"
    )
    assert total_sent > CLIENTS * rounds, f"the clients hardly submitted anything: {total_sent}"
    assert ledger.lost_answers > 0, "no kill ever caught a request in flight"
    assert len(ledger.acknowledged) > CLIENTS, "hardly anything was acknowledged"
    return timings


@pytest.fixture
def seed() -> int:
    value = int.from_bytes(os.urandom(4), "big")
    print(f"random seed {value}")
    return value


@pytest.fixture
async def stopped_on_exit(tmp_path: Path) -> AsyncIterator[list[WarmLogProcess]]:
    processes: list[WarmLogProcess] = []
    try:
        yield processes
    finally:
        for process in processes:
            process.kill()
            process.discard()


@pytest.mark.timeout(600)
async def test_kill_9_sqlite(
    tmp_path: Path, seed: int, stopped_on_exit: list[WarmLogProcess]
) -> None:
    log = WarmLogProcess(tmp_path / "data", batch_period_ms=5)
    stopped_on_exit.append(log)
    timings = await crash_rounds(log, 50, seed)
    assert log.starts == 51
    # Start-up dominates and stretches with the machine's load; the checks must not grow with
    # the log (they read only what is new), so none may take long.
    assert max(timings.check) < 30, timings.report()


async def test_kill_9_postgres(
    pg_dsn: str, tmp_path: Path, seed: int, stopped_on_exit: list[WarmLogProcess]
) -> None:
    async with pg_schema(pg_dsn) as url:
        log = WarmLogProcess(tmp_path / "data", database_url=url, batch_period_ms=5)
        stopped_on_exit.append(log)
        try:
            await crash_rounds(log, 3, seed)
        finally:
            log.kill()
        assert log.starts == 4
