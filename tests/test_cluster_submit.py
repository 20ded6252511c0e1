"""The submit path's fast routes: answers in commit notifications, local sequencing, idle close.

* :func:`server.cluster.encode_answers` / :func:`server.cluster.decode_answers` round-trip and
  refuse anything but their own canonical form;
* the sequencing process of a cluster sequences its own submissions without a queue row, and a
  front end that does not sequence learns its answers from the commit notification (its rows
  stay answered in ``etch_pending``, unclaimed);
* a sequencer round starts once no submission arrived for ``batch_idle`` instead of waiting out
  a long period, and waits the period without it; :meth:`Sequencer.stop` answers a round it cuts
  short;
* worker sockets with ``SO_REUSEPORT`` share one port held by a socket that never listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from merkle.hashing import leaf_hash
from merkle.note import Ed25519Verifier
from server.cluster import decode_answers, decode_lookup_keys, encode_answers, encode_lookup_keys
from server.sequencer import Sequencer, SequencerStopped, Submission
from server.storage import SQLiteStorage
from server.storage.base import Batch, LogState
from server.workers import REUSE_PORT, bind_socket
from tests.server_helpers import check_submit_result, entry_bytes, make_signer, pg_schema
from tests.test_cluster import front_ends, leader_first, origin, submit_and_check, wait_for

pytestmark = pytest.mark.anyio


def test_answers_round_trip() -> None:
    ids = [7, 8, 9, 12, 13, 20]
    answers = [(40, False), (41, False), (42, False), (3, True), (43, False), (45, False)]
    text = encode_answers(ids, answers)
    assert text == "7:40+3,12:3d,13:43,20:45"
    assert decode_answers(text) == [(i, a, d) for i, (a, d) in zip(ids, answers, strict=True)]
    assert encode_answers([1, 2], [(5, True), (6, True)]) == "1:5d,2:6d"
    assert decode_answers("0:0") == [(0, 0, False)]


@pytest.mark.parametrize(
    "bad", ["", "7", "7:", ":4", "07:4", "7:04", "7:4+0", "7:4+", "7:4d+2", "+7:4", "7:٤", "7:4,"]
)
def test_answers_refuse_non_canonical_text(bad: str) -> None:
    with pytest.raises(ValueError, match=r"canonical decimal|bad run"):
        decode_answers(bad)


def test_empty_lookup_keys_take_the_short_form() -> None:
    assert encode_lookup_keys(()) == b"[]"
    assert decode_lookup_keys(b"[]") == ()


def _submission(data: bytes) -> Submission:
    return Submission(data, leaf_hash(data))


async def test_local_submissions_skip_the_queue_and_others_read_answers_from_notifications(
    pg_dsn: str,
) -> None:
    signer = make_signer(origin())
    verifier = Ed25519Verifier.from_vkey(signer.vkey)
    async with pg_schema(pg_dsn) as dsn, front_ends(dsn, signer, 2) as ends:
        (_, leader_client), (other, other_client) = await leader_first(ends, published=True)
        conn = await asyncpg.connect(dsn)
        try:
            event: dict[str, object] = {"via": "sequencer"}
            response = await leader_client.post("/v1/events", json=event)
            assert response.status_code == 201, response.text
            check_submit_result(response.json(), entry_bytes(event), verifier, vkey=signer.vkey)
            assert await conn.fetchval("SELECT count(*) FROM etch_pending") == 0
            # The other front end learns of the commit from the announcement, not by polling.
            size = response.json()["tree_size"]
            await wait_for(lambda: other.tree_size >= size, within=0.9)

            events: list[dict[str, object]] = [{"via": "front end", "n": n} for n in range(5)]
            indexes = await submit_and_check(other_client, events, signer)
            # Answered through the notification: the rows are still there, answered, unclaimed.
            rows = await conn.fetch("SELECT leaf_index FROM etch_pending")
            assert sorted(r["leaf_index"] for r in rows) == sorted(indexes)
        finally:
            await conn.close()


async def _sequencer(tmp_path: Path, **options: Any) -> tuple[Sequencer, SQLiteStorage]:
    signer = make_signer("example.com/etch/idle")
    storage = SQLiteStorage(tmp_path / "log.db")
    await storage.open()
    sequencer = Sequencer(storage, signer, signer.name, **options)
    await sequencer.start()
    return sequencer, storage


@pytest.mark.parametrize(("idle", "quick"), [(0.005, True), (None, False)])
async def test_a_quiet_queue_starts_the_round_early(
    tmp_path: Path, idle: float | None, quick: bool
) -> None:
    sequencer, storage = await _sequencer(tmp_path, batch_period=0.6, batch_idle=idle)
    try:
        await sequencer.submit([_submission(b"first")])  # starts a period
        started = time.monotonic()
        (result,) = await sequencer.submit([_submission(b"second")])
        elapsed = time.monotonic() - started
        assert result.index == 1
        assert (elapsed < 0.45) is quick, elapsed
    finally:
        await sequencer.stop()
        await storage.close()


class _BlockedCommits:
    """A storage whose commits wait for ``release`` (everything else passes through)."""

    def __init__(self, inner: SQLiteStorage) -> None:
        self.inner = inner
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def commit(self, expected: bytes | None, batch: Batch) -> None:
        self.entered.set()
        await self.release.wait()
        await self.inner.commit(expected, batch)

    async def load_state(self) -> LogState | None:
        return await self.inner.load_state()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_stop_answers_the_round_it_cuts_short(tmp_path: Path) -> None:
    signer = make_signer("example.com/etch/stop")
    inner = SQLiteStorage(tmp_path / "log.db")
    await inner.open()
    storage = _BlockedCommits(inner)
    storage.release.set()  # the empty tree's first commit goes through
    sequencer = Sequencer(storage, signer, signer.name, batch_period=0)
    await sequencer.start()
    storage.release.clear()
    storage.entered.clear()
    try:
        waiting = asyncio.ensure_future(sequencer.submit([_submission(b"cut short")]))
        await asyncio.wait_for(storage.entered.wait(), 10)
        await sequencer.stop()
        with pytest.raises(SequencerStopped):
            await asyncio.wait_for(waiting, 5)
    finally:
        storage.release.set()
        await inner.close()


@pytest.mark.skipif(not REUSE_PORT, reason="SO_REUSEPORT is not available")
def test_worker_sockets_share_the_port_held_by_the_parent() -> None:
    holder = bind_socket("127.0.0.1", 0, reuse_port=True, listen=False)
    port = holder.getsockname()[1]
    listeners = [bind_socket("127.0.0.1", port, reuse_port=True) for _ in range(2)]
    clients: list[socket.socket] = []
    try:
        for listener in listeners:
            listener.setblocking(False)
        for _ in range(64):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        accepted = [0, 0]
        for position, listener in enumerate(listeners):
            while True:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    break
                conn.close()
                accepted[position] += 1
        assert sum(accepted) == 64  # none waits on the holder, which never listens
        assert min(accepted) > 0, accepted
    finally:
        for sock in (*clients, *listeners, holder):
            with contextlib.suppress(OSError):
                sock.close()


@pytest.mark.parametrize("reuse_port", [False, *([True] if REUSE_PORT else [])])
async def test_worker_connections_send_without_delay(reuse_port: bool) -> None:
    """asyncio sets TCP_NODELAY only where the socket's proto says TCP; the workers' must.

    Without it an answer written in two parts waits for the client's delayed ACK (40 ms per
    keep-alive request, measured before the fix).
    """
    listener = bind_socket("127.0.0.1", 0, reuse_port=reuse_port)
    nodelay: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        nodelay.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    server = await asyncio.start_server(accepted, sock=listener)
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", listener.getsockname()[1])
        assert await asyncio.wait_for(nodelay, 5) != 0
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
