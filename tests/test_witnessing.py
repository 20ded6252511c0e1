"""The log's witness collector (:mod:`server.witnessing`) against in-process fake witnesses.

Each fake witness follows C2SP tlog-witness closely enough for the collector: it keeps its
size and root hash, answers ``409`` with its size when ``old`` differs, checks the consistency
proof, and returns a real type-0x04 cosignature line. A witness can be held (its answers wait on
a gate) or down (it cannot be reached). The tests cover publication as soon as a 2-of-3 quorum
is met while the third witness is still working, the later re-publication with the third
cosignature, a slow witness being sent the newest checkpoint rather than every one it missed,
and a log that keeps sequencing without a quorum and publishes once a witness returns.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from merkle.checkpoint import open_checkpoint
from merkle.cosignature import CosignatureSigner
from merkle.hashing import EMPTY_ROOT, leaf_hash
from merkle.note import Ed25519Signer, Verifier, generate_key, open_note, parse_note
from merkle.policy import Policy, parse_policy, verify_checkpoint
from merkle.tree import verify_consistency
from server.log import LogService
from server.sequencer import Submission
from server.storage import open_storage
from server.witnessing import SIZE_MEDIA_TYPE, WitnessCollector

pytestmark = pytest.mark.anyio

ORIGIN = "example.com/witnessed-log"


class FakeWitness:
    """A minimal tlog-witness: size, root, 409 on a wrong ``old``, proof check, cosignature."""

    def __init__(self, name: str, log_verifier: Verifier) -> None:
        self.name = name
        self.signer = CosignatureSigner.generate(f"witness.example/{name}")
        self.log_verifier = log_verifier
        self.size = 0
        self.root = EMPTY_ROOT
        self.gate = asyncio.Event()
        self.gate.set()
        self.down = False
        self.seen: list[tuple[int, int]] = []
        """(old, new size) of every request that reached this witness, in order."""

    async def handle(self, request: httpx.Request) -> httpx.Response:
        """Answer one add-checkpoint request."""
        await self.gate.wait()
        if self.down:
            raise httpx.ConnectError("witness is down", request=request)
        head, _, note = request.content.partition(b"\n\n")
        old_line, *proof_lines = head.split(b"\n")
        old = int(old_line.removeprefix(b"old "))
        proof = [base64.b64decode(line, validate=True) for line in proof_lines]
        checkpoint, _, _ = open_checkpoint(note, self.log_verifier)
        self.seen.append((old, checkpoint.tree_size))
        if old != self.size:
            return httpx.Response(
                409, content=f"{self.size}\n".encode(), headers={"Content-Type": SIZE_MEDIA_TYPE}
            )
        if 0 < old < checkpoint.tree_size:
            verify_consistency(old, checkpoint.tree_size, self.root, checkpoint.root_hash, proof)
        self.size, self.root = checkpoint.tree_size, checkpoint.root_hash
        line = self.signer.sign_at(parse_note(note).text, int(time.time())).format_line()
        return httpx.Response(200, content=line.encode())


@dataclass
class Witnessed:
    """A running witnessed log, its collector and three fake witnesses (quorum 2 of 3)."""

    service: LogService
    collector: WitnessCollector
    witnesses: dict[str, FakeWitness]
    policy: Policy

    async def submit(self, data: bytes) -> int:
        """Log one entry and return the committed tree size."""
        (result,) = await self.service.submit([Submission(data, leaf_hash(data))])
        return result.tree_size

    def cosigners(self) -> list[str]:
        """Names of the witnesses whose cosignatures on the published note verify."""
        published = self.service.published
        assert published is not None
        verifiers = [w.signer.verifier() for w in self.witnesses.values()]
        _, verified = open_note(published.note, verifiers)
        return sorted(s.name.removeprefix("witness.example/") for s in verified)


async def eventually(condition: Callable[[], bool], what: str) -> None:
    """Wait up to 10 s for ``condition()`` to hold."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def published_size(log: Witnessed) -> int:
    """The size of the published checkpoint, -1 before any."""
    published = log.service.published
    return -1 if published is None else published.checkpoint.tree_size


@pytest.fixture
async def witnessed(tmp_path: Path) -> AsyncIterator[Witnessed]:
    """A log on SQLite with a 2-of-3 policy over fake witnesses, collector running."""
    signer = Ed25519Signer.from_private_key(generate_key(ORIGIN)[0])
    witnesses = {n: FakeWitness(n, signer.verifier()) for n in ("w1", "w2", "w3")}
    lines = [f"log {signer.vkey}"]
    lines += [f"witness {n} {w.signer.vkey} http://{n}.example" for n, w in witnesses.items()]
    lines += ["group all 2 w1 w2 w3", "quorum all"]
    policy = parse_policy("\n".join(lines) + "\n")

    async def route(request: httpx.Request) -> httpx.Response:
        return await witnesses[request.url.host.removesuffix(".example")].handle(request)

    service = LogService(
        open_storage(str(tmp_path / "log.db")), signer, ORIGIN, batch_period=0.001, witnessed=True
    )
    await service.start()
    client = httpx.AsyncClient(transport=httpx.MockTransport(route))
    collector = WitnessCollector(service, policy, client=client, retry_limit=0.1)
    service.collector = collector
    await collector.start()
    log = Witnessed(service, collector, witnesses, policy)
    try:
        yield log
    finally:
        for witness in witnesses.values():
            witness.gate.set()
        await collector.stop()
        await client.aclose()
        await service.stop()


async def test_publishes_on_quorum_without_waiting_for_the_third_witness(
    witnessed: Witnessed,
) -> None:
    """2 of 3 answered: published at once; the third cosignature is added when it arrives."""
    await eventually(lambda: published_size(witnessed) == 0, "the empty tree published")
    held = witnessed.witnesses["w3"]
    held.gate.clear()
    size = await witnessed.submit(b"first")
    assert size == 1
    await eventually(lambda: published_size(witnessed) == 1, "size 1 published")
    assert witnessed.cosigners() == ["w1", "w2"]
    assert held.size == 0, "the third witness has not answered yet"
    published = witnessed.service.published
    assert published is not None
    verify_checkpoint(witnessed.policy, published.note)
    held.gate.set()
    await eventually(lambda: witnessed.cosigners() == ["w1", "w2", "w3"], "the third cosignature")
    assert published_size(witnessed) == 1
    stored = await witnessed.service.storage.latest_cosigned_checkpoint()
    assert stored == witnessed.service.published.note  # type: ignore[union-attr]
    storage = witnessed.service.storage
    for _ in range(1000):  # each witness's size is written after the publication it served
        sizes = [await storage.get_meta(f"witness-size/{n}") for n in ("w1", "w2", "w3")]
        if sizes == [b"1"] * 3:
            break
        await asyncio.sleep(0.01)
    assert sizes == [b"1"] * 3


async def test_a_slow_witness_is_sent_the_newest_checkpoint_next(witnessed: Witnessed) -> None:
    """Checkpoints 2 and 3 published while w3 works on 1; w3 then gets 3, never 2."""
    await eventually(lambda: published_size(witnessed) == 0, "the empty tree published")
    slow = witnessed.witnesses["w3"]
    slow.gate.clear()
    for expected in (1, 2, 3):
        assert await witnessed.submit(b"entry %d" % expected) == expected
        at = functools.partial(lambda size: published_size(witnessed) == size, expected)
        await eventually(at, f"size {expected}")
        assert witnessed.cosigners() == ["w1", "w2"]
    assert slow.seen == [(0, 0)]
    slow.gate.set()
    await eventually(lambda: slow.size == 3, "the slow witness at size 3")
    assert slow.seen == [(0, 0), (0, 1), (1, 3)]
    await eventually(lambda: witnessed.cosigners() == ["w1", "w2", "w3"], "three cosignatures")
    assert published_size(witnessed) == 3
    assert witnessed.witnesses["w1"].seen == [(0, 0), (0, 1), (1, 2), (2, 3)]
    assert witnessed.service.healthy == (True, "ok")


async def test_sequencing_goes_on_without_a_quorum_and_publishes_when_a_witness_returns(
    witnessed: Witnessed,
) -> None:
    """Two witnesses down: nothing is published, entries still commit; one returns: published."""
    await eventually(lambda: published_size(witnessed) == 0, "the empty tree published")
    witnessed.witnesses["w2"].down = True
    witnessed.witnesses["w3"].down = True
    assert await witnessed.submit(b"a") == 1
    assert await witnessed.submit(b"b") == 2
    await eventually(lambda: witnessed.witnesses["w1"].size == 2, "w1 cosigned size 2")
    await asyncio.sleep(0.2)
    assert published_size(witnessed) == 0
    with pytest.raises(LookupError):
        await witnessed.service.receipt_for(1)
    witnessed.witnesses["w2"].down = False
    await eventually(lambda: published_size(witnessed) == 2, "size 2 published")
    assert witnessed.cosigners() in (["w1", "w2"], ["w1", "w2", "w3"])
    assert "w3" not in witnessed.cosigners()
    assert await witnessed.service.receipt_for(1)
