"""Two sequencers on one database (issue 8 item 7): one commits, the other stops and says why.

Two :class:`server.log.LogService` instances with the same key start on the same database (an
operator started a second copy by mistake). Each round commits with a compare-and-swap on the
checkpoint it started from, so once one of them has committed, the other's next commit finds
another checkpoint stored, stores nothing and stops for good, saying why (``healthy`` and the
503 of its submissions). The database then passes ``etch fsck``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from merkle.hashing import leaf_hash
from server.fsck import fsck
from server.log import LogService
from server.sequencer import Sequenced, SequencerStopped, Submission
from server.storage import open_storage
from tests.server_helpers import BACKENDS, ORIGIN, database, make_signer

pytestmark = pytest.mark.anyio


@pytest.fixture(params=BACKENDS)
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with database(request.param, request, tmp_path) as value:
        yield value


def entry(tag: str) -> Submission:
    data = tag.encode()
    return Submission(data, leaf_hash(data))


async def test_exactly_one_of_two_sequencers_commits(url: str) -> None:
    signer = make_signer()
    first = LogService(open_storage(url), signer, ORIGIN, batch_period=0.001)
    await first.start()
    second = LogService(open_storage(url), signer, ORIGIN, batch_period=0.001)
    await second.start()
    try:
        assert first.tree_size == second.tree_size == 0
        outcomes = await asyncio.gather(
            first.submit([entry("from the first")]),
            second.submit([entry("from the second")]),
            return_exceptions=True,
        )
        committed = [o for o in outcomes if isinstance(o, list)]
        refused = [o for o in outcomes if isinstance(o, SequencerStopped)]
        assert len(committed) == 1, outcomes
        assert len(refused) == 1, outcomes
        winner, loser = (first, second) if isinstance(outcomes[0], list) else (second, first)
        assert "another writer changed the checkpoint" in str(refused[0])
        ok, reason = loser.healthy
        assert not ok
        assert "another writer changed the checkpoint" in reason
        assert winner.healthy == (True, "ok")

        # The loser stays stopped; the winner carries on.
        with pytest.raises(SequencerStopped, match="stopped signing"):
            await loser.submit([entry("later, to the loser")])
        more: list[Sequenced] = await winner.submit([entry("later, to the winner")])
        assert more[0].tree_size == 2
        state = await winner.storage.load_state()
        assert state is not None
        assert state.tree_size == 2
        assert state.checkpoint == winner.sequencer.checkpoint
    finally:
        await second.stop()
        await first.stop()
    storage = open_storage(url)
    await storage.open()
    try:
        report = await fsck(storage, signer.verifier())
    finally:
        await storage.close()
    assert report.ok, report.problems
    assert report.entries == 2
