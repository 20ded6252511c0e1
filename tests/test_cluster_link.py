"""The local link between front ends and the sequencing process (:mod:`server.cluster_link`).

* frames round-trip (hypothesis), and every malformed request or answer is refused (mutation
  tables), as are oversized and undecodable frames;
* a front end on the sequencer's host hands its submissions over the link: no queue row, and
  every receipt verifies with ``merkle`` alone; a duplicate comes back with its index;
* when the link is down, or its process stopped sequencing, or the connection is lost with
  requests in flight, the submissions go to PostgreSQL's queue and are answered there;
* the sequencing process refuses a connection from another user (``SO_PEERCRED``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import textwrap
from typing import Any

import asyncpg
import cbor2
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from merkle.checkpoint import open_checkpoint
from merkle.hashing import leaf_hash
from merkle.note import Ed25519Verifier
from server.cluster_link import (
    MAX_FRAME,
    LinkClient,
    LinkLost,
    LinkServer,
    Moved,
    _Frames,
    decode_answer,
    decode_request,
    encode_answer,
    encode_request,
    link_address,
)
from server.log import FROZEN_META_KEY, LogService
from server.sequencer import Sequenced, SequencerStopped, Submission
from server.storage import PostgresStorage
from tests.server_helpers import check_submit_result, entry_bytes, make_signer, pg_schema
from tests.test_cluster import front_ends, leader_first, origin, submit_and_check, wait_for

pytestmark = pytest.mark.anyio

_H = b"\x11" * 32

submissions = st.builds(
    Submission,
    data=st.binary(max_size=64),
    leaf_hash=st.binary(min_size=32, max_size=32),
    idempotency_key=st.none() | st.text(max_size=20),
    lookup_keys=st.lists(st.tuples(st.text(max_size=8), st.text(max_size=8)), max_size=3).map(
        tuple
    ),
    log_time=st.integers(min_value=0, max_value=2**63 - 1),
)


def _decode_frame(frame: bytes) -> Any:
    (message,) = _Frames().feed(frame)
    return message


@settings(max_examples=60, deadline=None)
@given(request_id=st.integers(min_value=0, max_value=2**32), items=st.lists(submissions))
def test_requests_round_trip(request_id: int, items: list[Submission]) -> None:
    assert decode_request(_decode_frame(encode_request(request_id, items))) == (request_id, items)


@st.composite
def results(draw: st.DrawFn) -> list[Sequenced]:
    notes = draw(st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=3))
    out = []
    for _ in range(draw(st.integers(min_value=0, max_value=6))):
        size = draw(st.integers(min_value=1, max_value=2**40))
        proof = tuple(draw(st.lists(st.binary(min_size=32, max_size=32), max_size=5)))
        out.append(
            Sequenced(
                draw(st.integers(min_value=0, max_value=size - 1)),
                draw(st.binary(min_size=32, max_size=32)),
                draw(st.booleans()),
                size,
                draw(st.sampled_from(notes)),
                proof,
            )
        )
    return out


@settings(max_examples=60, deadline=None)
@given(request_id=st.integers(min_value=0, max_value=2**32), answer=results())
def test_answers_round_trip(request_id: int, answer: list[Sequenced]) -> None:
    frame = encode_answer(request_id, answer)
    assert decode_answer(_decode_frame(frame)) == (request_id, answer)
    notes = _decode_frame(frame)[2]
    assert len(notes) == len(set(notes))  # each checkpoint note once


_GOOD_SUBMISSION: list[Any] = [b"entry", _H, None, [["client_id", "c1"]], 5]


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("nope", "not a request"),
        ([1], "not a request"),
        (["1", []], "not a request"),
        ([1, {}], "not a list"),
        ([1, [_GOOD_SUBMISSION[:4]]], "5-item"),
        ([1, [["entry", _H, None, [], 5]]], "bad entry"),
        ([1, [[b"entry", b"\x11" * 31, None, [], 5]]], "bad entry"),
        ([1, [[b"entry", _H, 7, [], 5]]], "idempotency"),
        ([1, [[b"entry", _H, None, [], "5"]]], "log time"),
        ([1, [[b"entry", _H, None, [["only one"]], 5]]], "lookup"),
        ([1, [[b"entry", _H, None, [["k", b"v"]], 5]]], "lookup"),
        ([1, [[b"entry", _H, None, {"k": "v"}, 5]]], "lookup"),
    ],
)
def test_malformed_requests_are_refused(message: Any, reason: str) -> None:
    assert decode_request([1, [_GOOD_SUBMISSION]])[1][0].lookup_keys == (("client_id", "c1"),)
    with pytest.raises(ValueError, match=reason):
        decode_request(message)


_GOOD_ROW: list[Any] = [3, _H, False, 10, 0, _H * 2]


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("nope", "not an answer"),
        ([1], "not an answer"),
        ([1, 9, [b"n"], []], "unknown answer"),
        ([1, 0, [b"n"]], "unknown answer"),
        ([1, 1, "stopped", "1"], "retry_after"),
        ([1, 1, 7, None], "unknown answer"),
        ([1, 2, b"moved"], "unknown answer"),
        ([1, 0, ["n"], [_GOOD_ROW]], "notes"),
        ([1, 0, [b"n"], {}], "bad results"),
        ([1, 0, [b"n"], [_GOOD_ROW[:5]]], "6-item"),
        ([1, 0, [b"n"], [[10, _H, False, 10, 0, b""]]], "bad result"),  # index beyond size
        ([1, 0, [b"n"], [[-1, _H, False, 10, 0, b""]]], "bad result"),
        ([1, 0, [b"n"], [[3, _H, 0, 10, 0, b""]]], "bad result"),  # duplicate not a bool
        ([1, 0, [b"n"], [[3, _H[:31], False, 10, 0, b""]]], "bad result"),
        ([1, 0, [b"n"], [[3, _H, False, 10, 1, b""]]], "bad result"),  # no such note
        ([1, 0, [b"n"], [[3, _H, False, 10, 0, b"\x00" * 33]]], "bad result"),
    ],
)
def test_malformed_answers_are_refused(message: Any, reason: str) -> None:
    (result,) = decode_answer([1, 0, [b"n"], [_GOOD_ROW]])[1]  # type: ignore[misc]
    assert result.proof == (_H, _H)
    with pytest.raises(ValueError, match=reason):
        decode_answer(message)


def test_frames_split_anywhere_and_refuse_bad_ones() -> None:
    stream = encode_request(1, []) + encode_request(2, [Submission(b"x", _H)])
    frames = _Frames()
    got = []
    for k in range(len(stream)):
        got += frames.feed(stream[k : k + 1])
    assert [m[0] for m in got] == [1, 2]
    with pytest.raises(ValueError, match="over the limit"):
        _Frames().feed((MAX_FRAME + 1).to_bytes(4, "big"))
    with pytest.raises(ValueError, match="malformed CBOR"):
        _Frames().feed(b"\x00\x00\x00\x01\xff")


def test_addresses_differ_by_database_and_origin() -> None:
    a = link_address("postgresql:///a", "example.com/log")
    assert a.startswith("\x00etch-link-")
    assert len(a) == len("\x00etch-link-") + 32
    assert a != link_address("postgresql:///b", "example.com/log")
    assert a != link_address("postgresql:///a", "example.com/other")


def _sequenced(s: Submission, index: int) -> Sequenced:
    return Sequenced(index, s.leaf_hash, False, index + 1, b"note", ())


async def _pair(submit: Any) -> tuple[LinkServer, LinkClient]:
    address = link_address("test:///" + os.urandom(8).hex(), "example.com/link")
    server = LinkServer(address, submit)
    await server.start()
    return server, LinkClient(address, retry_interval=0.05)


async def test_concurrent_submissions_share_frames_and_get_their_own_answers() -> None:
    seen: list[int] = []
    counter = iter(range(1000))

    async def submit(items: list[Submission]) -> list[Sequenced]:
        seen.append(len(items))
        return [_sequenced(s, next(counter)) for s in items]

    server, client = await _pair(submit)
    try:
        batches = [
            [Submission(bytes([n, k]), leaf_hash(bytes([n, k]))) for k in range(n % 3 + 1)]
            for n in range(20)
        ]
        answers = await asyncio.gather(*(client.submit(b) for b in batches))
        for batch, answer in zip(batches, answers, strict=True):
            assert [a.leaf_hash for a in answer] == [s.leaf_hash for s in batch]
        assert sum(seen) == sum(len(b) for b in batches)
        assert len(seen) < len(batches)  # coalesced into fewer frames
    finally:
        client.close()
        await server.stop()


async def test_refusals_and_lost_connections_reach_the_caller() -> None:
    mode = "stopped"
    release = asyncio.Event()

    async def submit(items: list[Submission]) -> list[Sequenced]:
        if mode == "stopped":
            raise SequencerStopped("overloaded", retry_after=3)
        if mode == "moved":
            raise Moved("gone")
        await release.wait()
        return []

    one = [Submission(b"x", leaf_hash(b"x"))]
    server, client = await _pair(submit)
    try:
        with pytest.raises(SequencerStopped, match="overloaded") as stopped:
            await client.submit(one)
        assert stopped.value.retry_after == 3
        mode = "moved"
        with pytest.raises(Moved):
            await client.submit(one)
        mode = "hang"
        waiting = asyncio.ensure_future(client.submit(one))
        await asyncio.sleep(0.05)
        await server.stop()  # the sequencer goes away with the request in flight
        with pytest.raises(LinkLost):
            await asyncio.wait_for(waiting, 5)
        with pytest.raises(LinkLost, match="no link"):
            await client.submit(one)  # nobody listens: at once, no hang
        assert not client.up
    finally:
        client.close()
        await server.stop()


async def test_front_ends_use_the_link_and_fall_back_to_the_queue(pg_dsn: str) -> None:
    signer = make_signer(origin())
    async with pg_schema(pg_dsn) as dsn, front_ends(dsn, signer, 2, local_link=True) as ends:
        (leader, _), (other, client) = await leader_first(ends, published=True)
        conn = await asyncpg.connect(dsn)
        try:
            events: list[dict[str, object]] = [{"via": "link", "n": n} for n in range(8)]
            indexes = await submit_and_check(client, events, signer)
            assert await conn.fetchval("SELECT count(*) FROM etch_pending") == 0
            assert other._link.up
            assert other._link.sent == len(events)

            again = await client.post("/v1/events", json=events[3])
            assert again.status_code == 200, again.text
            assert again.json()["index"] == indexes[3]

            # The link goes away (as when its process stops sequencing): the queue answers.
            leadership = leader._leadership
            assert leadership is not None
            assert leadership.link is not None
            await leadership.link.stop()
            await wait_for(lambda: not other._link.up, within=5)
            later: list[dict[str, object]] = [{"via": "queue", "n": n} for n in range(3)]
            indexes = await submit_and_check(client, later, signer)
            rows = await conn.fetch("SELECT leaf_index FROM etch_pending")
            assert sorted(r["leaf_index"] for r in rows) == sorted(indexes)
        finally:
            await conn.close()


async def test_a_process_that_stopped_sequencing_sends_front_ends_to_the_queue(
    pg_dsn: str,
) -> None:
    signer = make_signer(origin())
    verifier = Ed25519Verifier.from_vkey(signer.vkey)
    async with pg_schema(pg_dsn) as dsn, front_ends(dsn, signer, 2, local_link=True) as ends:
        (leader, _), (_other, client) = await leader_first(ends)
        leadership = leader._leadership
        assert leadership is not None
        assert leadership.link is not None
        moved: list[int] = []

        async def no_longer_sequencing(items: list[Submission]) -> list[Sequenced]:
            moved.append(len(items))
            raise Moved("this process stopped sequencing")

        leadership.link.submit = no_longer_sequencing  # what a deposed sequencer answers
        conn = await asyncpg.connect(dsn)
        try:
            event: dict[str, object] = {"via": "moved"}
            answer = await client.post("/v1/events", json=event)
            assert answer.status_code == 201, answer.text
            check_submit_result(answer.json(), entry_bytes(event), verifier, vkey=signer.vkey)
            assert moved == [1]
            row = await conn.fetchrow("SELECT leaf_index FROM etch_pending")
            assert row is not None
            assert row["leaf_index"] == answer.json()["index"]
        finally:
            await conn.close()


_INTRUDER = textwrap.dedent(
    """
    import socket, sys
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(sys.argv[1].encode("latin-1").replace(b"@", b"\\x00", 1))
    sock.settimeout(5)
    try:
        sock.sendall(bytes.fromhex(sys.argv[2]))
        data = sock.recv(65536)
    except (BrokenPipeError, ConnectionResetError):
        data = b""
    print("answered" if data else "closed")
    """
)


_SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
"""An interpreter another user may run (the project's may live under root's home)."""


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runuser") is None,
    reason="needs root, to run the other user's process",
)
async def test_another_user_cannot_hand_entries_to_the_sequencer() -> None:
    calls: list[int] = []

    async def submit(items: list[Submission]) -> list[Sequenced]:
        calls.append(len(items))
        return [_sequenced(s, 0) for s in items]

    server, client = await _pair(submit)
    try:
        frame = encode_request(1, [Submission(b"forged", leaf_hash(b"forged"))]).hex()
        address = "@" + server.address[1:]
        run = [_SYSTEM_PYTHON, "-c", _INTRUDER, address, frame]
        mine = await asyncio.to_thread(subprocess.run, run, capture_output=True, text=True)
        assert mine.stdout.strip() == "answered", mine.stderr  # the same user is served
        theirs = await asyncio.to_thread(
            subprocess.run, ["runuser", "-u", "nobody", "--", *run], capture_output=True, text=True
        )
        assert theirs.stdout.strip() == "closed", theirs.stderr
        assert calls == [1]
    finally:
        client.close()
        await server.stop()


def test_frames_are_plain_cbor() -> None:
    frame = encode_request(7, [Submission(b"e", _H, "k", (("a", "b"),), 9)])
    assert cbor2.loads(frame[4:]) == [7, [[b"e", _H, "k", [["a", "b"]], 9]]]


async def test_a_submission_the_link_cannot_encode_goes_to_the_queue_at_once() -> None:
    async def submit(items: list[Submission]) -> list[Sequenced]:
        return [_sequenced(s, 0) for s in items]

    server, client = await _pair(submit)
    try:
        good = [Submission(b"ok", leaf_hash(b"ok"))]
        assert len(await client.submit(good)) == 1
        bad = [Submission(b"x", leaf_hash(b"x"), lookup_keys=(("sub", "\ud800"),))]
        with pytest.raises(LinkLost, match="cannot encode"):
            await asyncio.wait_for(client.submit(bad), 5)
        assert len(await client.submit(good)) == 1  # the link still works
    finally:
        client.close()
        await server.stop()


async def test_a_frozen_log_is_served_read_only_in_cluster_mode(pg_dsn: str) -> None:
    """A log frozen by a single process keeps its final checkpoint under a cluster: it refuses
    submissions, publishes the final checkpoint, and no process competes to sequence it."""
    signer = make_signer(origin())
    async with pg_schema(pg_dsn) as dsn:
        single = LogService(PostgresStorage(dsn), signer, signer.name, batch_period=0.002)
        await single.start()
        try:
            await single.submit([Submission(b"last", leaf_hash(b"last"))])
            final = await single.freeze()
        finally:
            await single.stop()
        async with front_ends(dsn, signer, 2, local_link=True) as ends:
            await asyncio.sleep(0.5)  # several election rounds (lease 0.1 s)
            for service, client in ends:
                assert service.state == "frozen"
                assert not service.is_sequencer
                assert service.published is not None
                assert service.published.note == final.note
                refused = await client.post("/v1/events", json={"after": "freeze"})
                assert refused.status_code == 409, refused.text
                assert refused.json()["type"].endswith("log-frozen")
                assert (await client.get("/checkpoint")).content == final.note
                proof = await client.get("/v1/proof/inclusion", params={"index": 0})
                assert proof.status_code == 200, proof.text


async def test_freezing_a_cluster_under_load_gives_one_final_checkpoint(pg_dsn: str) -> None:
    """Every process freezes (as they do with ``frozen = true`` or at ``not_after``) while
    clients keep submitting to both: one final checkpoint, stored once, served by all; every
    entry acknowledged is in it; nothing is committed after it; no process sequences again."""
    signer = make_signer(origin())
    verifier = Ed25519Verifier.from_vkey(signer.vkey)
    async with pg_schema(pg_dsn) as dsn, front_ends(dsn, signer, 2, local_link=True) as ends:
        await wait_for(lambda: sum(s.is_sequencer for s, _ in ends) == 1)
        acknowledged: list[int] = []
        statuses: list[int] = []
        stop = asyncio.Event()

        async def keep_submitting(client: httpx.AsyncClient, tag: str) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                response = await client.post("/v1/events", json={"tag": tag, "n": n})
                statuses.append(response.status_code)
                if response.status_code == 201:
                    acknowledged.append(response.json()["index"])
                else:  # a refusal in process may never suspend: let the rest of the test run
                    await asyncio.sleep(0.02)

        load = [
            asyncio.ensure_future(keep_submitting(client, f"{k}-{w}"))
            for k, (_, client) in enumerate(ends)
            for w in range(4)
        ]
        await asyncio.sleep(0.5)
        finals = await asyncio.wait_for(asyncio.gather(*(s.freeze() for s, _ in ends)), 30)
        await asyncio.sleep(0.5)  # submissions go on being refused
        stop.set()
        await asyncio.gather(*load)

        notes = {final.note for final in finals}
        assert len(notes) == 1
        (note,) = notes
        final = open_checkpoint(note, verifier)[0]
        assert acknowledged, statuses
        assert max(acknowledged) < final.tree_size
        assert set(statuses) <= {201, 409, 503}
        assert statuses[-1] == 409
        for service, client in ends:
            assert service.state == "frozen"
            assert not service.is_sequencer
            assert (await client.get("/checkpoint")).content == note
        storage = PostgresStorage(dsn)
        await storage.open()
        try:
            stored = await storage.get_meta(FROZEN_META_KEY)
            state = await storage.load_state()
        finally:
            await storage.close()
        assert stored == note
        assert state is not None
        assert state.tree_size == final.tree_size  # nothing committed after the final one
        # A process started afterwards serves the frozen log read-only at once.
        async with front_ends(dsn, signer, 1, local_link=True) as (late,):
            assert late[0].state == "frozen"
            assert late[0].published is not None
            assert late[0].published.note == note


async def test_a_process_not_told_to_freeze_follows_the_frozen_log(pg_dsn: str) -> None:
    signer = make_signer(origin())
    async with pg_schema(pg_dsn) as dsn, front_ends(dsn, signer, 2, local_link=True) as ends:
        (leader, _), (other, client) = await leader_first(ends)
        assert (await client.post("/v1/events", json={"before": "freeze"})).status_code == 201
        final = await asyncio.wait_for(leader.freeze(), 20)
        # The other process's settings never said to freeze: it finds the final checkpoint
        # when it competes for the sequencer lock, and serves the log frozen from then on.
        await wait_for(lambda: other.state == "frozen", within=10)
        assert other.published is not None
        assert other.published.note == final.note
        assert not other.is_sequencer
        refused = await client.post("/v1/events", json={"after": "freeze"})
        assert refused.status_code == 409, refused.text


async def test_a_submission_left_in_the_queue_by_a_freeze_is_answered_at_once(
    pg_dsn: str,
) -> None:
    signer = make_signer(origin())
    async with pg_schema(pg_dsn) as dsn, front_ends(dsn, signer, 2) as ends:  # queue only
        (leader, _), (other, client) = await leader_first(ends)
        leadership = leader._leadership
        assert leadership is not None
        leadership.closing = True  # what a freeze does first: the feeder takes no more rows
        started = asyncio.get_running_loop().time()
        queued = asyncio.ensure_future(client.post("/v1/events", json={"queued": "late"}))
        await wait_for(lambda: bool(other._waiting))
        await asyncio.wait_for(asyncio.gather(leader.freeze(), other.freeze()), 20)
        answer = await asyncio.wait_for(queued, 20)
        assert answer.status_code == 503, answer.text
        # Answered when the freeze ended, not after the 30 s a submitter may wait.
        assert asyncio.get_running_loop().time() - started < 10
