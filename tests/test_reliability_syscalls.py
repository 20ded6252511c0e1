"""Syscall faults injected with ``strace`` into a real log and a real witness process.

``strace -f -p <pid> -e inject=...`` is attached to a running ``python -m server`` (SQLite,
``--intake raw``) or ``python -m witness`` after it started, so start-up is never disturbed, and
detached again; the process is then ``kill -9``ed and started without strace. Faults:

* **EIO on ``fdatasync``** of the SQLite write-ahead log (the commit of a round) or of the
  high-water mark file (written after the commit, before the answer). The failed ``fdatasync``
  is never retried and trusted (fsyncgate): the round fails, every submitter of it gets 503 with
  ``Retry-After``, nothing of it is acknowledged; the sequencer drops its in-memory state and
  reloads and re-verifies it from storage before the next round, and the high-water mark is
  written (and flushed) again before anything is signed on top of a round whose mark did not
  flush. Reads go on being served. When the fault clears, the same process takes submissions
  again; after a restart every acknowledged event is there with a valid proof.
* **ENOSPC on ``write``/``pwrite64``** (every file): the same 503, the same recovery.
* **SIGKILL on the Nth ``pwrite64``** of the write-ahead log (or of the mark) while 16 clients
  submit: a crash torn at a write boundary. The restarted log passes its full start-up check;
  every acknowledged event is in the log with a proof against the new checkpoint.

After every fault: every checkpoint any client saw is consistent (proof from the API) with the
new one, the tiles hold every acknowledged event at its index, the root recomputed from the
tiles equals the checkpoint's, and ``server.fsck`` finds nothing.

For the witness the same faults hit its SQLite database during ``add-checkpoint``: it never
returns a cosignature for a checkpoint whose transaction did not flush (EIO, ENOSPC: 503), and
after a restart its stored checkpoint is the old or the new one, never anything else; if a
cosignature was returned, the restarted witness serves that checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from merkle.checkpoint import Checkpoint, parse_checkpoint
from merkle.cosignature import CosignatureVerifier
from merkle.hashing import leaf_hash
from merkle.note import Ed25519Verifier, Verifier, open_note
from merkle.tree import verify_inclusion
from server.fsck import fsck
from server.storage import open_storage
from tests.server_helpers import (
    LogProcess,
    RawConnection,
    RootTracker,
    StraceInjection,
    b64d,
    check_consistency,
    check_problem,
    check_submit_result,
    entry_bytes,
    free_port,
    read_tree,
    require_strace,
)
from tests.server_helpers import open_note as open_log_note
from tests.test_witness_process import Process
from tests.witness_support import FakeLog, add_checkpoint_body, origin_hash

pytestmark = [pytest.mark.slow]


# -- the log -------------------------------------------------------------------------------------


@dataclass
class Seen:
    """What the clients of one log were told: acknowledged events and checkpoints."""

    verifier: Verifier
    vkey: str
    acknowledged: dict[bytes, tuple[int, bytes]] = field(default_factory=dict)  # leaf -> (i, e)
    checkpoints: dict[int, Checkpoint] = field(default_factory=dict)
    refused: list[dict[str, Any]] = field(default_factory=list)  # answered 503
    unknown: list[dict[str, Any]] = field(default_factory=list)  # answer lost in a crash

    def accept(self, event: dict[str, Any], body: dict[str, Any]) -> int:
        """Verify one submission answer and record it; return its index."""
        entry = entry_bytes(event)
        checkpoint = check_submit_result(body, entry, self.verifier, vkey=self.vkey)
        self.see(checkpoint)
        index: int = body["index"]
        known = self.acknowledged.setdefault(leaf_hash(entry), (index, entry))
        assert known[0] == index, f"acknowledged at {known[0]}, later at {index}"
        return index

    def see(self, checkpoint: Checkpoint) -> None:
        """Record a checkpoint shown to a client; two of one size must be the same."""
        known = self.checkpoints.setdefault(checkpoint.tree_size, checkpoint)
        assert known == checkpoint, f"two checkpoints of size {checkpoint.tree_size}"


def check_refused(response: httpx.Response, because: str | None = None) -> None:
    """A refused submission: RFC 9457 ``unavailable``, 503, with a positive ``Retry-After``;
    with ``because``, its ``detail`` names that condition."""
    body = check_problem(response, "unavailable", 503)
    if because is not None:
        assert because in body.get("detail", ""), body
    retry_after = response.headers.get("retry-after", "")
    assert retry_after.isdigit(), response.headers
    assert int(retry_after) > 0, response.headers


async def submit(api: httpx.AsyncClient, seen: Seen, event: dict[str, Any]) -> httpx.Response:
    """POST one event; verify and record it when it is acknowledged (200 or 201)."""
    response = await api.post("/v1/events", json=event)
    if response.status_code in (200, 201):
        seen.accept(event, response.json())
    return response


async def check_reads(api: httpx.AsyncClient, seen: Seen, expected_size: int) -> None:
    """During a fault: the checkpoint of ``expected_size``, tiles and proofs are served."""
    response = await api.get("/checkpoint")
    assert response.status_code == 200, response.text
    checkpoint = open_log_note(response.content, seen.verifier)
    assert checkpoint.tree_size == expected_size
    seen.see(checkpoint)
    await read_tree(api, expected_size)
    index, entry = next(iter(seen.acknowledged.values()))
    await check_inclusion(api, leaf_hash(entry), index, checkpoint)


async def check_inclusion(
    api: httpx.AsyncClient, value: bytes, index: int, checkpoint: Checkpoint
) -> None:
    """Fetch and verify the inclusion proof of leaf hash ``value`` at ``index``."""
    response = await api.get(
        "/v1/proof/inclusion",
        params={"index": str(index), "tree_size": str(checkpoint.tree_size)},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert b64d(body["leaf_hash"]) == value
    proof = [b64d(h) for h in body["proof"]]
    verify_inclusion(value, index, checkpoint.tree_size, proof, checkpoint.root_hash)


async def verify_log(api: httpx.AsyncClient, seen: Seen, *, proofs: int = 64) -> Checkpoint:
    """Check the running log against everything its clients saw (see the module docstring).

    The tiles must hold every acknowledged event at its index; an inclusion proof from the
    API is checked for ``proofs`` of them, chosen at random (for all when there are fewer).
    """
    response = await api.get("/checkpoint")
    assert response.status_code == 200, response.text
    current = open_log_note(response.content, seen.verifier)
    for older in sorted(seen.checkpoints.values(), key=lambda c: c.tree_size):
        assert older.tree_size <= current.tree_size, f"checkpoint {older.tree_size} was lost"
        await check_consistency(api, older, current)
    seen.see(current)
    snapshot = await read_tree(api, current.tree_size)
    assert len(set(snapshot.leaf_hashes)) == current.tree_size, "an event is logged twice"
    tracker = RootTracker()
    for value in snapshot.leaf_hashes:
        tracker.append(value)
        shown = seen.checkpoints.get(tracker.size)
        if shown is not None:
            assert tracker.root() == shown.root_hash, f"root at size {tracker.size}"
    assert tracker.root() == current.root_hash
    for index, entry in seen.acknowledged.values():
        assert index < current.tree_size, f"acknowledged entry {index} is lost"
        assert snapshot.entries[index] == entry, f"acknowledged entry {index} was replaced"
    acknowledged = list(seen.acknowledged.items())
    for value, (index, _) in random.sample(acknowledged, min(proofs, len(acknowledged))):
        await check_inclusion(api, value, index, current)
    return current


async def resubmit(api: httpx.AsyncClient, seen: Seen, events: list[dict[str, Any]]) -> int:
    """Submit again events whose first answer was 503 or lost; return how many were logged
    already (answered 200 as duplicates). Each gets exactly one index."""
    duplicates = 0
    for event in events:
        response = await submit(api, seen, event)
        assert response.status_code in (200, 201), response.text
        duplicates += response.status_code == 200
    return duplicates


async def run_fsck(log: LogProcess, verifier: Verifier) -> None:
    """``server.fsck`` on the stopped log's database must find nothing."""
    storage = open_storage(str(log.data_dir / "log.db"))
    await storage.open()
    try:
        report = await fsck(storage, verifier)
    finally:
        await storage.close()
    assert report.ok, report.problems


async def restart_and_verify(log: LogProcess, seen: Seen) -> Checkpoint:
    """SIGKILL the log, start it without strace, verify it, resubmit, stop it, run fsck."""
    log.kill()
    await log.start()
    async with httpx.AsyncClient(base_url=log.base_url, timeout=30) as api:
        await verify_log(api, seen)
        await resubmit(api, seen, seen.refused + seen.unknown)
        seen.refused.clear()
        seen.unknown.clear()
        final = await verify_log(api, seen)
    log.terminate()
    await run_fsck(log, seen.verifier)
    return final


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[LogProcess]:
    """A started log process (SQLite), killed after the test."""
    require_strace()
    process = LogProcess(tmp_path / "data", batch_period_ms=2)
    try:
        await process.start()
        yield process
    finally:
        process.kill()


def seen_for(log: LogProcess) -> Seen:
    vkey = log.vkey()
    return Seen(Ed25519Verifier.from_vkey(vkey), vkey)


def event(tag: str, n: int) -> dict[str, Any]:
    return {"t": tag, "n": n}


@contextlib.contextmanager
def injected(injection: StraceInjection) -> Iterator[StraceInjection]:
    """Attach ``injection`` for the block; detach it afterwards (also on failure)."""
    injection.attach()
    try:
        yield injection
    finally:
        injection.detach()


FAULTS = {
    # name: (traced syscalls, inject expression, file the fault is limited to or None)
    "eio-wal-fdatasync": ("fdatasync,fsync", "fdatasync,fsync:error=EIO", "log.db-wal"),
    "eio-mark-fdatasync": ("fdatasync,fsync", "fdatasync,fsync:error=EIO", "checkpoint.hwm"),
    "enospc-write": ("write,pwrite64", "write,pwrite64:error=ENOSPC", None),
}
BECAUSE = {"eio": "an I/O error", "enospc": "the disk is full"}  # the 503's detail


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("fault", "ending"),
    [
        ("eio-wal-fdatasync", "recover"),
        ("eio-wal-fdatasync", "crash"),
        ("eio-mark-fdatasync", "recover"),
        ("enospc-write", "recover"),
    ],
)
async def test_log_refuses_during_a_write_fault_and_loses_nothing(
    log: LogProcess, tmp_path: Path, fault: str, ending: str
) -> None:
    """503 + Retry-After for every submission while the fault lasts, nothing acknowledged lost.

    ``recover``: the fault clears while the process runs; the same process takes submissions
    again (no restart). ``crash``: the process is killed while the fault lasts. Either way it is
    then restarted without strace and verified.
    """
    trace, inject, name = FAULTS[fault]
    seen = seen_for(log)
    async with httpx.AsyncClient(base_url=log.base_url, timeout=30) as api:
        for n in range(10):
            assert (await submit(api, seen, event("before", n))).status_code == 201
        size = max(seen.checkpoints)
        paths = [log.data_dir / name] if name else []
        injection = StraceInjection(
            log.pid, inject, trace=trace, output=tmp_path / "strace.txt", paths=paths
        )
        with injected(injection):
            for n in range(4):
                refused = event("during", n)
                response = await api.post("/v1/events", json=refused)
                check_refused(response, BECAUSE[fault.split("-")[0]])
                seen.refused.append(refused)
            await check_reads(api, seen, size)
            if ending == "crash":
                log.kill()
        assert injection.injected(), "no fault was injected"
        if ending == "recover":
            # The same process, untraced: submissions succeed again without a restart.
            for n in range(5):
                response = await submit(api, seen, event("after", n))
                assert response.status_code == 201, response.text
            duplicates = await resubmit(api, seen, seen.refused)
            # A failed WAL flush rolls the round back; a failed mark flush comes after the
            # commit, so that round's events are stored but were never acknowledged.
            assert duplicates == (0 if fault != "eio-mark-fdatasync" else 1), duplicates
            seen.refused.clear()
            await verify_log(api, seen)
    final = await restart_and_verify(log, seen)
    assert final.tree_size >= 10 + (9 if ending == "recover" else 4)


@dataclass
class Load:
    """Clients submitting distinct events until their connection dies."""

    seen: Seen
    answers: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    async def client(self, port: int, number: int, round_number: int) -> None:
        connection = await RawConnection.open(port)
        try:
            for n in range(10_000):
                sent = {"c": number, "r": round_number, "n": n}
                try:
                    response = await connection.post_json("/v1/events", sent)
                except (OSError, asyncio.IncompleteReadError):
                    self.seen.unknown.append(sent)
                    return
                if response.status != 201:
                    self.problems.append(f"{response.status}: {response.body[:200]!r}")
                    return
                self.answers.append((sent, response.json()))
        finally:
            await connection.close()


@pytest.mark.anyio
async def test_log_sigkilled_at_the_nth_write(log: LogProcess, tmp_path: Path) -> None:
    """SIGKILL at a random write to the WAL (2 rounds) and to the high-water mark (1 round)."""
    rng = random.Random()
    seed = rng.randrange(1 << 32)
    rng.seed(seed)
    seen = seen_for(log)
    targets = [("log.db-wal", rng.randint(2, 60)) for _ in range(2)]
    targets.append(("checkpoint.hwm", rng.randint(2, 6)))
    for round_number, (name, nth) in enumerate(targets):
        where = f"(seed {seed}, round {round_number}: write {nth} of {name})"
        load = Load(seen)
        injection = StraceInjection(
            log.pid,
            f"pwrite64:signal=SIGKILL:when={nth}",
            trace="pwrite64",
            output=tmp_path / f"strace-{round_number}.txt",
            paths=[log.data_dir / name],
        )
        with injected(injection):
            clients = [
                asyncio.create_task(load.client(log.port, c, round_number)) for c in range(16)
            ]
            await asyncio.wait_for(asyncio.gather(*clients), timeout=60)
        assert log.process is not None
        assert log.process.wait(timeout=10) == -9, where
        assert not load.problems, (load.problems[:3], where)
        for sent, body in load.answers:
            seen.accept(sent, body)
        assert seen.unknown, f"no request was in flight at the kill {where}"
        await log.start()
        async with httpx.AsyncClient(base_url=log.base_url, timeout=30) as api:
            await verify_log(api, seen)
            await resubmit(api, seen, seen.unknown)
            seen.unknown.clear()
    final = await restart_and_verify(log, seen)
    assert final.tree_size == len(seen.acknowledged)
    assert len(seen.acknowledged) > 16, "hardly anything was acknowledged"


# -- the witness -----------------------------------------------------------------------------

WITNESS = "witness.example/syscalls"


@dataclass
class WitnessUnderTest:
    """A witness data directory, its command line, and the log it witnesses."""

    args: list[str]
    port: int
    data_dir: Path
    log: FakeLog
    processes: list[Process] = field(default_factory=list)
    verifier: CosignatureVerifier | None = None

    def start(self) -> Process:
        """Start ``python -m witness`` (creating its key on the first start)."""
        first = self.verifier is None
        process = Process([*self.args, *(["--name", WITNESS] if first else [])], self.port)
        self.processes.append(process)
        if self.verifier is None:
            self.verifier = CosignatureVerifier.from_vkey(process.vkey)
        assert CosignatureVerifier.from_vkey(process.vkey).vkey == self.verifier.vkey
        return process

    def add_checkpoint(self, process: Process, old: int) -> httpx.Response:
        """POST the log's current checkpoint with a proof from ``old``."""
        proof = self.log.consistency_proof(old) if old else []
        body = add_checkpoint_body(old, proof, self.log.checkpoint())
        return httpx.post(f"{process.url}/add-checkpoint", content=body, timeout=30)

    def check_cosignature(self, response: httpx.Response) -> None:
        """A 200 answer: one cosignature line that verifies over the checkpoint sent."""
        assert response.status_code == 200, response.text
        assert self.verifier is not None
        line = response.content
        note = self.log.checkpoint()
        _, verified = open_note(note.rstrip(b"\n") + b"\n" + line, [self.verifier])
        assert len(verified) == 1

    def served_size(self, process: Process) -> int:
        """The size of the checkpoint the witness serves; log and witness signatures verify."""
        assert self.verifier is not None
        response = httpx.get(f"{process.url}/{origin_hash(self.log.origin)}/checkpoint", timeout=10)
        assert response.status_code == 200, response.text
        note, verified = open_note(response.content, [self.log.signer.verifier(), self.verifier])
        assert len(verified) == 2
        checkpoint = parse_checkpoint(note.text)
        assert checkpoint.root_hash == self.log.root(checkpoint.tree_size)
        return checkpoint.tree_size


@pytest.fixture
def witness(tmp_path: Path) -> Iterator[WitnessUnderTest]:
    """A witness of a 10-entry log; every process it started is killed afterwards."""
    require_strace()
    log = FakeLog()
    log.append(10)
    logs_file = tmp_path / "logs.toml"
    logs_file.write_text(f'[[log]]\nvkey = "{log.vkey}"\n')
    port = free_port()
    data_dir = tmp_path / "witness"
    args = ["--data-dir", str(data_dir), "--logs", str(logs_file), "--listen", f"127.0.0.1:{port}"]
    under_test = WitnessUnderTest(args, port, data_dir, log)
    try:
        yield under_test
    finally:
        for process in under_test.processes:
            if process.popen.poll() is None:
                process.kill()


WITNESS_FAULTS = {
    "eio-fdatasync": ("fdatasync,fsync", "fdatasync,fsync:error=EIO"),
    "enospc-write": ("write,pwrite64", "write,pwrite64:error=ENOSPC"),
}


@pytest.mark.parametrize(
    ("fault", "ending"),
    [("eio-fdatasync", "recover"), ("enospc-write", "crash")],
)
def test_witness_never_cosigns_what_it_did_not_persist(
    witness: WitnessUnderTest, tmp_path: Path, fault: str, ending: str
) -> None:
    """While its database cannot flush or write, add-checkpoint answers 503, no cosignature."""
    trace, inject = WITNESS_FAULTS[fault]
    process = witness.start()
    witness.check_cosignature(witness.add_checkpoint(process, 0))
    witness.log.append(30)
    injection = StraceInjection(
        process.popen.pid, inject, trace=trace, output=tmp_path / "strace.txt"
    )
    with injected(injection):
        response = witness.add_checkpoint(process, 10)
        assert response.status_code == 503, (response.status_code, response.text)
        assert WITNESS.encode() not in response.content
        if ending == "crash":
            process.kill()
    assert injection.injected(), "no fault was injected"
    if ending == "recover":
        # The transaction was rolled back: the old checkpoint is served, and the same
        # process cosigns the new one once the fault is gone.
        assert witness.served_size(process) == 10
        witness.check_cosignature(witness.add_checkpoint(process, 10))
        process.kill()
    restarted = witness.start()
    size = witness.served_size(restarted)
    if ending == "recover":
        assert size == 40
    else:
        # Killed after the failed flush: the unflushed transaction may or may not have
        # reached the file, but it was never answered; either state is a valid one.
        assert size in (10, 40)
    witness.log.append(5)
    witness.check_cosignature(witness.add_checkpoint(restarted, size))
    assert restarted.stop() == 0


def test_witness_sigkilled_at_the_nth_write(witness: WitnessUnderTest, tmp_path: Path) -> None:
    """SIGKILL in the middle of add-checkpoint's transaction, and at its flush."""
    process = witness.start()
    witness.check_cosignature(witness.add_checkpoint(process, 0))
    size, kills = 10, 0
    # The second write of the transaction to the WAL (some of it written), and its flush
    # (all of it written, none flushed).
    faults = [
        ("pwrite64", "pwrite64:signal=SIGKILL:when=2"),
        ("fdatasync,fsync", "fdatasync,fsync:signal=SIGKILL:when=1"),
    ]
    for number, (trace, inject) in enumerate(faults):
        witness.log.append(7)
        new_size = witness.log.size
        injection = StraceInjection(
            process.popen.pid,
            inject,
            trace=trace,
            output=tmp_path / f"strace-{number}.txt",
            paths=[witness.data_dir / "witness.sqlite3-wal"],
        )
        answered = False
        with injected(injection):
            try:
                response = witness.add_checkpoint(process, size)
            except httpx.TransportError:
                pass
            else:
                witness.check_cosignature(response)
                answered = True
        killed = process.popen.poll() == -9
        kills += killed
        if not killed:
            process.kill()
        process = witness.start()
        served = witness.served_size(process)
        assert served in (size, new_size), (inject, served)
        if answered:
            assert served == new_size, f"cosigned {new_size} but serves {served} ({inject})"
        size = served
    assert kills == len(faults), f"only {kills} of {len(faults)} injections killed the witness"
    witness.log.append(1)
    witness.check_cosignature(witness.add_checkpoint(process, size))
    assert process.stop() == 0
