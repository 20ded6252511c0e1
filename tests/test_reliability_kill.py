"""``kill -9`` of a real log process while 32 clients submit (ARCHITECTURE.md invariants 1-2).

A real ``python -m server`` (uvicorn) runs on 127.0.0.1; 32 concurrent clients submit distinct
events over keep-alive connections; at a random moment the process gets SIGKILL; it is started
again on the same data, and so on. After every restart, and once more at the end:

* the new checkpoint verifies with the log's key and is consistent (proof from the API) with
  every checkpoint any client was shown before;
* every event that got an answer with a receipt is in the log at the index it was given under
  the new checkpoint: its receipt verified when it arrived, the checkpoint of that receipt is
  consistent with the new one, the tiles hold its leaf hash at its index, and for a sample
  (64 per round) an inclusion proof from the API verifies against the new checkpoint;
* the tiles and entry bundles agree with each other, and the root recomputed from the tiles at
  every checkpoint size ever shown equals that checkpoint's root;
* the log holds each event at most once, and only events that were sent; the events whose
  answer was lost in the crash are submitted again and get exactly one index.

SQLite runs 10 rounds, PostgreSQL 3. The random seed is in every failure message.
"""

from __future__ import annotations

import asyncio
import os
import random
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
from merkle.tree import verify_inclusion
from tests.server_helpers import (
    LogProcess,
    RawConnection,
    RootTracker,
    b64d,
    check_consistency,
    check_submit_result,
    entry_bytes,
    open_note,
    pg_schema,
    read_tree,
)

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

CLIENTS = 32


@dataclass
class Ledger:
    """Everything the clients saw, across all rounds."""

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


def note_of(ledger: Ledger) -> str:
    return f"(seed {ledger.seed})"


async def submit_until_stopped(
    port: int, client: int, round_number: int, ledger: Ledger, stop: asyncio.Event
) -> int:
    """Submit distinct events one after another until ``stop`` or the connection is lost."""
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


async def verify_log(
    api: httpx.AsyncClient, ledger: Ledger, verifier: Verifier, *, sample: int
) -> Checkpoint:
    """Check the running log against everything the clients were ever shown (see module doc).

    Every acknowledged event's receipt verified against the checkpoint it came with; here each
    checkpoint not yet checked is proved consistent with the current one (so, by the chain of
    proofs, every receipt holds for the current checkpoint too), the tiles are read and must
    hold every acknowledged event at its index under the current root, and ``sample`` of the
    events acknowledged since the last check get an inclusion proof from the API.
    """
    response = await api.get("/checkpoint")
    assert response.status_code == 200, note_of(ledger)
    current = open_note(response.content, verifier)
    for size in ledger.unverified_checkpoints:
        assert size <= current.tree_size, f"checkpoint {size} was lost {note_of(ledger)}"
    await gather_limited(
        [
            check_consistency(api, ledger.checkpoints[size], current)
            for size in sorted(ledger.unverified_checkpoints)
        ]
    )
    ledger.unverified_checkpoints.clear()
    ledger.see(current)
    ledger.unverified_checkpoints.discard(current.tree_size)

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

    rng = random.Random(ledger.seed + current.tree_size)
    recent = sorted(set(ledger.recent))
    everything = list(ledger.acknowledged)
    checked = rng.sample(recent, min(sample, len(recent)))
    checked += rng.sample(everything, min(sample // 4, len(everything)))
    await gather_limited(
        [check_inclusion(api, value, ledger.acknowledged[value], current) for value in checked]
    )
    ledger.recent.clear()
    return current


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
    log: LogProcess, rounds: int, seed: int, *, min_s: float = 0.1, max_s: float = 0.7
) -> None:
    """Run ``rounds`` rounds of submit-then-SIGKILL on ``log``, then verify a last restart."""
    rng = random.Random(seed)
    ledger = Ledger(seed)
    verifier: Verifier | None = None
    total_sent = 0
    for round_number in range(rounds + 1):
        await log.start()
        if verifier is None:
            verifier = Ed25519Verifier.from_vkey(log.vkey())
        vkey = log.vkey()
        async with httpx.AsyncClient(base_url=log.base_url, timeout=30) as api:
            await verify_log(api, ledger, verifier, sample=64)
            await resubmit_unknown(api, ledger)
            settle_answers(ledger, verifier, vkey)
            if round_number == rounds:
                await verify_log(api, ledger, verifier, sample=64)
                break
            stop = asyncio.Event()
            clients = [
                asyncio.create_task(submit_until_stopped(log.port, c, round_number, ledger, stop))
                for c in range(CLIENTS)
            ]
            await asyncio.sleep(rng.uniform(min_s, max_s))
            stop.set()
            log.kill()
            sent = await asyncio.wait_for(asyncio.gather(*clients), timeout=30)
            total_sent += sum(sent)
        assert not ledger.problems, f"{ledger.problems[:5]} {note_of(ledger)}"
        settle_answers(ledger, verifier, vkey)
    log.terminate()
    assert not ledger.problems, f"{ledger.problems[:5]} {note_of(ledger)}"
    print(
        f"{rounds} kills: {total_sent} events sent, {len(ledger.acknowledged)} logged, "
        f"{ledger.lost_answers} answers lost in a crash, {ledger.logged_before_kill} of those "
        "already logged"
    )
    assert total_sent > CLIENTS * rounds, "the clients hardly submitted anything"
    assert ledger.lost_answers > 0, "no kill ever caught a request in flight"
    assert len(ledger.acknowledged) > CLIENTS, "hardly anything was acknowledged"


@pytest.fixture
def seed() -> int:
    value = int.from_bytes(os.urandom(4), "big")
    print(f"random seed {value}")
    return value


@pytest.fixture
async def stopped_on_exit(tmp_path: Path) -> AsyncIterator[list[LogProcess]]:
    processes: list[LogProcess] = []
    try:
        yield processes
    finally:
        for process in processes:
            process.kill()


async def test_kill_9_sqlite(tmp_path: Path, seed: int, stopped_on_exit: list[LogProcess]) -> None:
    log = LogProcess(tmp_path / "data", batch_period_ms=5)
    stopped_on_exit.append(log)
    started = time.monotonic()
    await crash_rounds(log, 10, seed)
    assert log.starts == 11
    assert time.monotonic() - started < 120


async def test_kill_9_postgres(
    pg_dsn: str, tmp_path: Path, seed: int, stopped_on_exit: list[LogProcess]
) -> None:
    async with pg_schema(pg_dsn) as url:
        log = LogProcess(tmp_path / "data", database_url=url, batch_period_ms=5)
        stopped_on_exit.append(log)
        try:
            await crash_rounds(log, 3, seed)
        finally:
            log.kill()
        assert log.starts == 4
