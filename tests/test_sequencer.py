"""The sequencer, in process, on SQLite and PostgreSQL: batching, ordering, deduplication,
compare-and-swap of the checkpoint, and storage outages it must ride out.

Outages are simulated with :class:`tests.server_helpers.FlakyStorage` around a real backend:
unreachable storage, a commit that fails before it is applied, and a commit that is applied but
whose answer is lost (the hardest case: the log must find out from storage what happened).
Every result is checked with ``merkle``'s verifiers; after each scenario the whole tree is read
back through the tile API and compared with the entries (:func:`tests.server_helpers.read_tree`).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from merkle.checkpoint import Checkpoint, format_checkpoint
from merkle.errors import MerkleError
from merkle.hashing import leaf_hash
from merkle.note import Ed25519Signer, sign_note
from merkle.tree import verify_inclusion
from server import treeview
from server.log import LogService
from server.sequencer import Sequenced, Sequencer, SequencerStopped, Submission
from server.storage import open_storage
from server.storage.base import Storage
from tests.server_helpers import (
    BACKENDS,
    ORIGIN,
    FlakyStorage,
    InProcessLog,
    check_consistency,
    check_problem,
    database,
    entry_bytes,
    make_signer,
    open_log,
    open_note,
    read_tree,
    subtree_root,
)

pytestmark = pytest.mark.anyio


@pytest.fixture(params=BACKENDS)
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with database(request.param, request, tmp_path) as opened:
        yield opened


def _flaky(storage: Storage) -> Storage:
    return FlakyStorage(storage)


def flaky_of(log: InProcessLog) -> FlakyStorage:
    storage = log.storage
    assert isinstance(storage, FlakyStorage)
    return storage


def sub(data: bytes, key: str | None = None) -> Submission:
    """A submission of raw leaf bytes (the sequencer logs bytes; events are the app's business)."""
    return Submission(data, leaf_hash(data), idempotency_key=key)


def check_sequenced(result: Sequenced, data: bytes, log: InProcessLog) -> Checkpoint:
    """A result's proof must show ``data`` at its index under its signed checkpoint."""
    checkpoint = open_note(result.checkpoint, log.verifier)
    assert checkpoint.tree_size == result.tree_size
    assert result.leaf_hash == leaf_hash(data)
    verify_inclusion(
        leaf_hash(data), result.index, result.tree_size, result.proof, checkpoint.root_hash
    )
    return checkpoint


async def check_tree(log: InProcessLog, entries: list[bytes]) -> None:
    """The log serves exactly ``entries``, and its checkpoint's root is theirs."""
    _, checkpoint = await log.checkpoint()
    assert checkpoint.tree_size == len(entries)
    snapshot = await read_tree(log.client, len(entries))
    assert list(snapshot.entries) == entries
    assert subtree_root(snapshot.leaf_hashes) == checkpoint.root_hash


# -- batching and order -------------------------------------------------------------------------


async def test_batches_respect_batch_size(url: str) -> None:
    async with open_log(url, batch_size=7, batch_period=0.05, wrap=_flaky) as log:
        flaky = flaky_of(log)
        flaky.commit_sizes.clear()
        datas = [b"batch %d" % i for i in range(50)]
        results = await asyncio.gather(*(log.service.submit([sub(d)]) for d in datas))
        assert sorted(r.index for (r,) in results) == list(range(50))
        sizes = [s for s in flaky.commit_sizes if s]
        assert sum(sizes) == 50
        assert max(sizes) == 7, sizes  # batching happened, and never beyond the limit
        history = await log.storage.checkpoint_history(limit=1000)
        tree_sizes = [open_note(note, log.verifier).tree_size for note in history]
        assert tree_sizes == sorted(tree_sizes)
        assert all(b - a <= 7 for a, b in itertools.pairwise(tree_sizes))
        # One call with more than a batch is split over several rounds, in order.
        many = [b"many %d" % i for i in range(20)]
        results_many = await log.service.submit([sub(d) for d in many])
        assert [r.index for r in results_many] == list(range(50, 70))
        assert max(flaky.commit_sizes[-3:]) <= 7


async def test_concurrent_submitters_get_consecutive_indexes(url: str) -> None:
    async with open_log(url, batch_size=64, batch_period=0.01) as log:
        events = [{"client": f"c{i % 7}", "n": i} for i in range(300)]
        responses = await asyncio.gather(*(log.submit(e) for e in events))
        assert {r.status_code for r in responses} == {201}
        indexes = [r.json()["index"] for r in responses]
        assert sorted(indexes) == list(range(300))
        by_index = {}
        for event, response in zip(events, responses, strict=True):
            body = response.json()
            checkpoint = open_note(body["checkpoint"].encode(), log.verifier)
            assert checkpoint.tree_size > body["index"]
            by_index[body["index"]] = entry_bytes(event)
        await check_tree(log, [by_index[i] for i in range(300)])


async def test_rounds_of_every_shape_answer_proofs_that_verify(url: str) -> None:
    """Rounds that fill, cross and complete tiles (the sequencer extends its edge tiles'
    expansions from round to round): every answer's proof verifies against its checkpoint."""
    async with open_log(url, batch_size=1000, batch_period=0.001) as log:
        entries: list[bytes] = []
        for count in (1, 1, 2, 3, 9, 240, 1, 255, 256, 257, 17, 1, 511, 1000, 3):
            datas = [b"round entry %d" % (len(entries) + i) for i in range(count)]
            results = await log.service.submit([sub(d) for d in datas])
            assert [r.index for r in results] == list(range(len(entries), len(entries) + count))
            for result, data in zip(results, datas, strict=True):
                check_sequenced(result, data, log)
            entries += datas
        await check_tree(log, entries)


async def test_own_commits_are_published_and_notes_from_elsewhere_are_verified(url: str) -> None:
    """A commit's checkpoint is published as the sequencer signed it (parsed, not verified
    again); a note handed to ``publish`` must carry the log key's signature."""
    async with open_log(url, batch_period=0.001) as log:
        (result,) = await log.service.submit([sub(b"published entry")])
        published = log.service.published
        assert published is not None
        assert published.note == result.checkpoint
        assert published.checkpoint.tree_size == result.tree_size
        text = format_checkpoint(Checkpoint(log.service.origin, 5, bytes(32)))
        forged = sign_note(text, [Ed25519Signer.generate(log.service.origin)])
        with pytest.raises(MerkleError):
            log.service.publish(forged)
        assert log.service.published == published


async def test_the_reader_serves_edge_proofs_from_the_sequencers_expansions(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sequencer hands its edge tiles' expansions to the tree reader with the edge: proofs
    of the newest entries expand no edge tile again, and they verify."""
    async with open_log(url, batch_size=1000, batch_period=0.001) as log:
        await log.service.submit([sub(b"edge entry %d" % i) for i in range(300)])
        datas = [b"edge entry %d" % i for i in range(300, 305)]
        results = await log.service.submit([sub(d) for d in datas])
        size = results[-1].tree_size
        checkpoint = check_sequenced(results[-1], datas[-1], log)
        edge = log.service.sequencer.edge_tiles()
        assert edge is not None
        assert set(edge.expanded) == {(0, 1), (1, 0)}
        expanded: list[bytes] = []
        real_expand = treeview.expand_tile

        def counted(data: bytes) -> treeview.ExpandedTile:
            expanded.append(data)
            return real_expand(data)

        monkeypatch.setattr(treeview, "expand_tile", counted)
        for index in range(256, size):
            proof = await log.service.reader.inclusion_proof(index, size)
            leaf = leaf_hash(b"edge entry %d" % index)
            verify_inclusion(leaf, index, size, proof, checkpoint.root_hash)
        assert edge.tiles[(0, 1)] not in expanded
        assert edge.tiles[(1, 0)] not in expanded


# -- deduplication --------------------------------------------------------------------------------


async def test_duplicates_within_one_batch_and_across_batches(url: str) -> None:
    async with open_log(url) as log:
        a, b, c = b"entry a", b"entry b", b"entry c"
        first = await log.service.submit([sub(a), sub(b), sub(a)])
        assert [(r.index, r.duplicate) for r in first] == [(0, False), (1, False), (0, True)]
        for result, data in zip(first, [a, b, a], strict=True):
            check_sequenced(result, data, log)
        (again,) = await log.service.submit([sub(a)])
        assert (again.index, again.duplicate) == (0, True)
        check_sequenced(again, a, log)
        # Ten submitters racing with the same new entry: one index, one of them is new.
        racing = await asyncio.gather(*(log.service.submit([sub(c)]) for _ in range(10)))
        assert {r.index for (r,) in racing} == {2}
        assert sum(not r.duplicate for (r,) in racing) == 1
        for (result,) in racing:
            check_sequenced(result, c, log)
        await check_tree(log, [a, b, c])


async def test_idempotency_keys_return_the_original_entry(url: str) -> None:
    async with open_log(url) as log:
        (first,) = await log.service.submit([sub(b"original", key="submitter\x00jti-1")])
        assert (first.index, first.duplicate) == (0, False)
        # A retry with the same key but other bytes (say, a re-serialised event) is the same
        # event: the original index and a proof for what is stored there, nothing new logged.
        (retry,) = await log.service.submit([sub(b"re-sent", key="submitter\x00jti-1")])
        assert (retry.index, retry.duplicate) == (0, True)
        check_sequenced(retry, b"original", log)
        # The same within one batch.
        pair = await log.service.submit(
            [sub(b"one", key="submitter\x00jti-2"), sub(b"two", key="submitter\x00jti-2")]
        )
        assert [(r.index, r.duplicate) for r in pair] == [(1, False), (1, True)]
        check_sequenced(pair[0], b"one", log)
        check_sequenced(pair[1], b"one", log)
        # Keys are exact: another key is another entry.
        (other,) = await log.service.submit([sub(b"re-sent", key="submitter\x00jti-3")])
        assert (other.index, other.duplicate) == (2, False)
        assert await log.storage.find_idempotency_keys(
            ["submitter\x00jti-1", "submitter\x00jti-2", "submitter\x00jti-3", "jti-1"]
        ) == {"submitter\x00jti-1": 0, "submitter\x00jti-2": 1, "submitter\x00jti-3": 2}
        await check_tree(log, [b"original", b"one", b"re-sent"])


# -- another writer: compare-and-swap ------------------------------------------------------------


async def test_stale_checkpoint_stops_the_sequencer_for_good(url: str) -> None:
    async with open_log(url) as log:
        await log.submit_ok({"n": 0})
        _, before = await log.checkpoint()
        # Another writer with the same key appends behind the log's back.
        other_storage = open_storage(url)
        await other_storage.open()
        try:
            other = Sequencer(other_storage, log.signer, ORIGIN, batch_period=0.001)
            await other.start()
            (intruder,) = await other.submit([sub(b"from another writer")])
            assert intruder.index == 1
            await other.stop()
            stored = await other_storage.load_state()
        finally:
            await other_storage.close()
        assert stored is not None

        response = await log.submit({"n": 1})
        body = check_problem(response, "unavailable", 503)
        assert "retry-after" in response.headers
        assert "stopped signing" in body["detail"]
        health = await log.client.get("/healthz")
        assert health.status_code == 503
        assert health.json()["status"] == "failing"
        assert "another writer" in health.json()["reason"]
        assert log.service.sequencer.failure is not None

        # It never signs again: later submissions are refused at once and storage is untouched.
        rounds = log.service.sequencer.rounds
        for n in range(2, 5):
            check_problem(await log.submit({"n": n}), "unavailable", 503)
        with pytest.raises(SequencerStopped):
            await log.service.submit([sub(b"direct")])
        assert log.service.sequencer.rounds == rounds
        assert await log.storage.load_state() == stored
        history = await log.storage.checkpoint_history(limit=100)
        assert [open_note(n, log.verifier).tree_size for n in history] == [0, 1, 2]
        assert history[-1] == stored.checkpoint
        # Reads keep working from what was committed before.
        _, checkpoint = await log.checkpoint()
        assert checkpoint == before


# -- storage outages ------------------------------------------------------------------------------


async def test_storage_outage_answers_503_and_recovers_by_itself(url: str) -> None:
    async with open_log(url, wrap=_flaky) as log:
        flaky = flaky_of(log)
        events = [{"n": i} for i in range(3)]
        for event in events:
            await log.submit_ok(event)
        _, before = await log.checkpoint()

        flaky.down = True
        for n in range(3, 6):
            response = await log.submit({"n": n})
            check_problem(response, "unavailable", 503)
            assert int(response.headers["retry-after"]) >= 1
        batch = await log.client.post("/v1/events/batch", json=[{"n": 6}, {"n": 7}])
        check_problem(batch, "unavailable", 503)
        # The published checkpoint is still served from memory.
        assert (await log.checkpoint())[1] == before

        flaky.down = False
        later = [{"n": i} for i in range(3, 8)]
        results = [await log.submit_ok(e) for e in later]
        assert [r["index"] for r in results] == [3, 4, 5, 6, 7]
        assert all(r["duplicate"] is False for r in results)
        _, after = await log.checkpoint()
        await check_consistency(log.client, before, after)
        await check_tree(log, [entry_bytes(e) for e in events + later])


async def test_failed_commit_is_retried_as_new(url: str) -> None:
    async with open_log(url, wrap=_flaky) as log:
        flaky = flaky_of(log)
        await log.submit_ok({"n": 0})
        flaky.fail_commits = 1
        check_problem(await log.submit({"n": 1}), "unavailable", 503)
        retried = await log.submit_ok({"n": 1})
        assert (retried["index"], retried["duplicate"]) == (1, False)
        await check_tree(log, [entry_bytes({"n": 0}), entry_bytes({"n": 1})])


async def test_commit_applied_but_answer_lost(url: str) -> None:
    """The database committed, the log saw an error: it must reload, not lose or repeat."""
    async with open_log(url, batch_period=0.02, wrap=_flaky) as log:
        flaky = flaky_of(log)
        first = [{"n": i} for i in range(4)]
        for event in first:
            await log.submit_ok(event)
        _, before = await log.checkpoint()

        loads = flaky.loads
        flaky.lose_commit_answers = 1
        lost = [{"lost": i} for i in range(5)]
        responses = await asyncio.gather(*(log.submit(e) for e in lost))
        assert {r.status_code for r in responses} == {503}, [r.text for r in responses]
        for response in responses:
            check_problem(response, "unavailable", 503)
        # Nothing was answered, but everything was stored: the log's memory is behind storage.
        stored = await log.storage.load_state()
        assert stored is not None
        assert stored.tree_size == 9

        # New submissions are appended after the lost batch (the log reloaded and verified).
        fresh = await log.submit_ok({"after": 1})
        assert (fresh["index"], fresh["duplicate"]) == (9, False)
        assert flaky.loads > loads
        # The clients retry: each gets the index its entry was committed at, nothing is doubled.
        retried = [await log.submit_ok(e) for e in lost]
        assert all(r["duplicate"] is True for r in retried)
        assert sorted(r["index"] for r in retried) == [4, 5, 6, 7, 8]
        order = {r["index"]: entry_bytes(e) for r, e in zip(retried, lost, strict=True)}

        _, after = await log.checkpoint()
        await check_consistency(log.client, before, after)
        expected = [entry_bytes(e) for e in first]
        expected += [order[i] for i in range(4, 9)]
        expected.append(entry_bytes({"after": 1}))
        await check_tree(log, expected)
        assert log.service.sequencer.failure is None
        assert (await log.client.get("/healthz")).status_code == 200


async def test_lost_answer_then_outage_then_recovery(url: str) -> None:
    """A lost commit answer followed by an outage during the reload: still nothing lost."""
    async with open_log(url, wrap=_flaky) as log:
        flaky = flaky_of(log)
        await log.submit_ok({"n": 0})
        flaky.lose_commit_answers = 1
        check_problem(await log.submit({"n": 1}), "unavailable", 503)
        flaky.down = True
        check_problem(await log.submit({"n": 2}), "unavailable", 503)
        flaky.down = False
        again = await log.submit_ok({"n": 1})
        assert (again["index"], again["duplicate"]) == (1, True)
        new = await log.submit_ok({"n": 2})
        assert (new["index"], new["duplicate"]) == (2, False)
        await check_tree(log, [entry_bytes({"n": i}) for i in range(3)])


async def test_restart_after_lost_answer_resumes_from_storage(url: str) -> None:
    signer = None
    async with open_log(url, wrap=_flaky) as log:
        signer = log.signer
        await log.submit_ok({"n": 0})
        flaky_of(log).lose_commit_answers = 1
        check_problem(await log.submit({"n": 1}), "unavailable", 503)
        _, seen = await log.checkpoint()
    async with open_log(url, signer=signer) as log:
        _, checkpoint = await log.checkpoint()
        assert checkpoint.tree_size == 2
        await check_consistency(log.client, seen, checkpoint)
        result = await log.submit_ok({"n": 1})
        assert (result["index"], result["duplicate"]) == (1, True)
        await check_tree(log, [entry_bytes({"n": 0}), entry_bytes({"n": 1})])


async def test_submit_before_start_and_after_stop(url: str) -> None:
    service = LogService(open_storage(url), make_signer(), ORIGIN)
    with pytest.raises(SequencerStopped) as not_running:
        await service.submit([sub(b"too early")])
    assert not_running.value.retry_after is not None
    await service.start()
    try:
        (result,) = await service.submit([sub(b"in time")])
        assert result.index == 0
    finally:
        await service.stop()
    with pytest.raises(SequencerStopped):
        await service.submit([sub(b"too late")])
