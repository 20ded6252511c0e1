"""Cluster mode as real processes: ``python -m server --cluster true`` front ends, one PostgreSQL.

Three front-end processes (each with its own data directory holding the same log key, as
separate hosts would) serve 32 concurrent clients; then the sequencer process is ``kill -9``ed
under load five times. Every answer is checked with ``merkle``'s verifiers; the final log is
read back from PostgreSQL directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from merkle.checkpoint import Checkpoint
from merkle.hashing import leaf_hash
from merkle.note import Ed25519Verifier
from merkle.tree import verify_consistency
from server.cluster import LEADER_APPLICATION_NAME, cluster_names
from server.keys import load_or_create_log_key
from server.storage import PostgresStorage
from tests.server_helpers import (
    LogProcess,
    b64d,
    check_submit_result,
    entry_bytes,
    open_note,
    pg_schema,
)

pytestmark = pytest.mark.anyio

FRONT_ENDS = 3
CLIENTS = 32


@contextlib.asynccontextmanager
async def cluster(
    pg_dsn: str, tmp_path: Path, count: int = FRONT_ENDS
) -> AsyncIterator[tuple[str, str, list[LogProcess]]]:
    """Start ``count`` front-end processes of one new log; yield (dsn, origin, processes)."""
    origin = f"example.com/etch/cluster-{uuid.uuid4().hex[:12]}"
    first = tmp_path / "host0"
    load_or_create_log_key(first, origin)
    async with pg_schema(pg_dsn) as dsn:
        processes = []
        try:
            for n in range(count):
                data_dir = tmp_path / f"host{n}"
                if n:
                    data_dir.mkdir()
                    for name in ("log.key", "log.vkey"):
                        shutil.copy(first / name, data_dir / name)
                process = LogProcess(
                    data_dir,
                    database_url=dsn,
                    batch_period_ms=5,
                    extra_args=["--cluster", "true", "--origin", origin],
                )
                processes.append(process)
            await asyncio.gather(*(p.start() for p in processes))
            yield dsn, origin, processes
        finally:
            for process in processes:
                process.terminate()


async def leader_pid(dsn: str, origin: str) -> int | None:
    """Return the OS pid of the process holding the log's sequencer lock, or ``None``."""
    conn = await asyncpg.connect(dsn)
    try:
        name = await conn.fetchval(
            "SELECT a.application_name FROM pg_locks AS l"
            " JOIN pg_stat_activity AS a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.granted"
            " AND ((l.classid::bigint << 32) | l.objid::bigint) = $1",
            cluster_names(origin).lock_key,
        )
    finally:
        await conn.close()
    if name is None:
        return None
    assert name.startswith(LEADER_APPLICATION_NAME)
    return int(name.removeprefix(LEADER_APPLICATION_NAME))


async def stored_size(dsn: str) -> int:
    """The tree size of the primary's state row."""
    conn = await asyncpg.connect(dsn)
    try:
        size = await conn.fetchval("SELECT tree_size FROM state WHERE id = 1")
    finally:
        await conn.close()
    return int(size)


class Load:
    """Clients that submit unique events to the front ends, retrying on failure, verifying all.

    An event is acknowledged when a 201/200 answer carries a verified receipt; a failed request
    (connection refused or reset by a killed process, 503) is sent again, to the next front end.
    """

    def __init__(self, processes: list[LogProcess], verifier: Ed25519Verifier, vkey: str) -> None:
        self.processes = processes
        self.verifier = verifier
        self.vkey = vkey
        self.acknowledged: dict[int, bytes] = {}
        self.checkpoints: list[Checkpoint] = []
        self.failures = 0
        self.stop = False

    async def client(self, worker: int, count: int | None) -> None:
        """Submit ``count`` events (or until :attr:`stop`), each until it is acknowledged."""
        async with httpx.AsyncClient(timeout=30) as http:
            n = 0
            while (count is None and not self.stop) or (count is not None and n < count):
                event = {"w": worker, "n": n}
                attempt = 0
                while True:
                    process = self.processes[(worker + n + attempt) % len(self.processes)]
                    attempt += 1
                    try:
                        response = await http.post(f"{process.base_url}/v1/events", json=event)
                    except httpx.TransportError:
                        self.failures += 1
                        await asyncio.sleep(0.05)
                        continue
                    if response.status_code == 503:
                        self.failures += 1
                        await asyncio.sleep(0.05)
                        continue
                    assert response.status_code in (200, 201), response.text
                    self.record(response.json(), entry_bytes(event))
                    break
                n += 1

    def record(self, body: dict[str, Any], entry: bytes) -> None:
        """Verify one answer and remember its index and checkpoint."""
        self.checkpoints.append(check_submit_result(body, entry, self.verifier, vkey=self.vkey))
        index = body["index"]
        assert self.acknowledged.setdefault(index, entry) == entry, f"index {index} used twice"


async def check_final(
    dsn: str, processes: list[LogProcess], load: Load, verifier: Ed25519Verifier
) -> Checkpoint:
    """Every acknowledged entry is stored at its index; every checkpoint seen is consistent."""
    live = [p for p in processes if p.is_running()]
    async with httpx.AsyncClient(base_url=live[0].base_url, timeout=30) as http:
        final = open_note((await http.get("/checkpoint")).content, verifier)
        size = await stored_size(dsn)
        deadline = time.monotonic() + 10
        while final.tree_size < size and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            final = open_note((await http.get("/checkpoint")).content, verifier)
        assert final.tree_size == size
        storage = PostgresStorage(dsn)
        await storage.open()
        try:
            entries = []
            for start in range(0, size, 256):
                entries += await storage.read_entries(start, min(size, start + 256))
        finally:
            await storage.close()
        assert len(entries) == size
        assert len({leaf_hash(e) for e in entries}) == size, "an entry is stored twice"
        for index, entry in load.acknowledged.items():
            assert entries[index] == entry, f"acknowledged entry {index} is not in the log"
        for checkpoint in {(c.tree_size, c.root_hash): c for c in load.checkpoints}.values():
            response = await http.get(
                "/v1/proof/consistency",
                params={"first": checkpoint.tree_size, "second": final.tree_size},
            )
            assert response.status_code == 200, response.text
            proof = [b64d(h) for h in response.json()["proof"]]
            verify_consistency(
                checkpoint.tree_size, final.tree_size, checkpoint.root_hash, final.root_hash, proof
            )
    return final


async def test_three_processes_32_clients(pg_dsn: str, tmp_path: Path) -> None:
    """Every receipt verifies, no index is used twice, no gap."""
    async with cluster(pg_dsn, tmp_path) as (dsn, origin, processes):
        vkey = processes[0].vkey()
        verifier = Ed25519Verifier.from_vkey(vkey)
        load = Load(processes, verifier, vkey)
        await asyncio.gather(*(load.client(w, 8) for w in range(CLIENTS)))
        assert sorted(load.acknowledged) == list(range(CLIENTS * 8))
        assert load.failures == 0
        assert await leader_pid(dsn, origin) in {p.pid for p in processes}
        await check_final(dsn, processes, load, verifier)


async def test_sequencer_killed_five_times_under_load(pg_dsn: str, tmp_path: Path) -> None:
    """Another process takes over each time; nothing acknowledged is lost; all consistent."""
    async with cluster(pg_dsn, tmp_path) as (dsn, origin, processes):
        vkey = processes[0].vkey()
        verifier = Ed25519Verifier.from_vkey(vkey)
        load = Load(processes, verifier, vkey)
        clients = [asyncio.create_task(load.client(w, None)) for w in range(CLIENTS)]
        failovers = []
        restarts: list[asyncio.Task[None]] = []
        try:
            for _ in range(5):
                await asyncio.sleep(0.5)
                await asyncio.gather(*restarts[:-1])  # at most one process down at a time
                pid = await leader_pid(dsn, origin)
                assert pid is not None
                victim = next(p for p in processes if p.is_running() and p.pid == pid)
                killed_at = time.monotonic()
                victim.kill()
                # The victim's last commit may still land after the kill: wait for a new
                # sequencer, then for its first commit.
                while (new_pid := await leader_pid(dsn, origin)) in (None, pid):
                    assert time.monotonic() - killed_at < 15, "no takeover within 15 s"
                    await asyncio.sleep(0.01)
                size = await stored_size(dsn)
                while await stored_size(dsn) <= size:
                    assert time.monotonic() - killed_at < 15, "no commit within 15 s"
                    await asyncio.sleep(0.01)
                failovers.append(time.monotonic() - killed_at)
                assert new_pid in {p.pid for p in processes if p.is_running()}
                restarts.append(asyncio.create_task(victim.start()))
            await asyncio.gather(*restarts)
        finally:
            load.stop = True
            await asyncio.gather(*clients, *restarts, return_exceptions=True)
        assert len(load.acknowledged) > 100
        final = await check_final(dsn, processes, load, verifier)
        assert final.tree_size >= len(load.acknowledged)
        assert max(failovers) < 5.0, failovers
        print(f"failover times (s): {', '.join(f'{t:.2f}' for t in failovers)}")
