"""C2SP tlog-witness ``add-checkpoint`` over HTTP, in process: the status table row by row,
malformed bodies, limits, the monitoring read, and 20 concurrent requests from a forked log.

Status order (tlog-witness; FORMATS.md §5 where it agrees with the specification): 404 unknown
origin, 403 no valid log signature, 400 malformed or old > new, 409 old != cosigned size (body
``<size>\\n``, ``text/x.tlog.size``), 422 bad size-0 root / stray proof / failed proof, 409
same size with another root (the specification's status; not ``text/x.tlog.size``), 200 the
cosignature line. Beyond the table: 403 once evidence is held, 413 and 429.
"""

from __future__ import annotations

import asyncio
import base64
import random
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from merkle.checkpoint import Checkpoint, format_checkpoint, parse_checkpoint
from merkle.cosignature import CosignatureSigner, cosignature_timestamp
from merkle.hashing import EMPTY_ROOT
from merkle.note import Ed25519Signer, open_note, parse_signature_lines, sign_note
from tests.witness_support import (
    FakeLog,
    InProcessWitness,
    add_checkpoint_body,
    in_process_witness,
    origin_hash,
)
from witness.core import parse_add_checkpoint
from witness.errors import MalformedRequestError
from witness.evidence import verify_evidence
from witness.storage import WitnessStorage, open_storage

pytestmark = pytest.mark.anyio

NOW = 1_767_225_600


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[WitnessStorage]:
    opened = await open_storage(tmp_path / "witness.sqlite3")
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def log() -> FakeLog:
    fake = FakeLog()
    fake.append(10)
    return fake


@pytest.fixture
async def w(storage: WitnessStorage, log: FakeLog) -> AsyncIterator[InProcessWitness]:
    async with in_process_witness(storage, [log.config()]) as running:
        yield running


async def post(w: InProcessWitness, body: bytes) -> httpx.Response:
    return await w.client.post("/add-checkpoint", content=body)


async def cosign(w: InProcessWitness, log: FakeLog, old: int) -> httpx.Response:
    proof = [] if old == 0 else log.consistency_proof(old)
    response = await post(w, add_checkpoint_body(old, proof, log.checkpoint()))
    assert response.status_code == 200, response.text
    return response


def assert_size_conflict(response: httpx.Response, size: int) -> None:
    assert response.status_code == 409
    assert response.headers["content-type"] == "text/x.tlog.size"
    assert response.content == f"{size}\n".encode()


# -- the status table, one test per row -----------------------------------------------------


async def test_404_unknown_origin(w: InProcessWitness) -> None:
    stranger = FakeLog("example.net/unknown")
    stranger.append(3)
    response = await post(w, add_checkpoint_body(0, [], stranger.checkpoint()))
    assert response.status_code == 404


async def test_403_signed_by_an_unknown_key(w: InProcessWitness, log: FakeLog) -> None:
    impostor = Ed25519Signer.generate(log.origin)
    text = format_checkpoint(Checkpoint(log.origin, 10, log.root()))
    response = await post(w, add_checkpoint_body(0, [], sign_note(text, [impostor])))
    assert response.status_code == 403


async def test_403_known_key_signature_fails(w: InProcessWitness, log: FakeLog) -> None:
    note = log.checkpoint()
    text, _, line = note.decode().rpartition("\n\n")
    name, _, encoded = line.rstrip("\n").rpartition(" ")
    raw = bytearray(base64.b64decode(encoded))
    raw[10] ^= 0x01  # inside the signature, after the 4-byte key ID
    broken = f"{text}\n\n{name} {base64.b64encode(bytes(raw)).decode()}\n".encode()
    response = await post(w, add_checkpoint_body(0, [], broken))
    assert response.status_code == 403


async def test_400_old_size_above_new(w: InProcessWitness, log: FakeLog) -> None:
    response = await post(w, add_checkpoint_body(11, [], log.checkpoint()))
    assert response.status_code == 400


async def test_409_old_size_differs(w: InProcessWitness, log: FakeLog) -> None:
    assert_size_conflict(await post(w, add_checkpoint_body(5, [], log.checkpoint())), 0)
    await cosign(w, log, 0)
    log.append(5)
    assert_size_conflict(await post(w, add_checkpoint_body(0, [], log.checkpoint())), 10)
    assert_size_conflict(
        await post(w, add_checkpoint_body(7, log.consistency_proof(7), log.checkpoint())), 10
    )


async def test_422_size_zero_with_wrong_root(w: InProcessWitness, log: FakeLog) -> None:
    response = await post(w, add_checkpoint_body(0, [], log.checkpoint(0, root=b"\x01" * 32)))
    assert response.status_code == 422
    empty = await post(w, add_checkpoint_body(0, [], log.checkpoint(0, root=EMPTY_ROOT)))
    assert empty.status_code == 200


async def test_422_proof_with_old_zero(w: InProcessWitness, log: FakeLog) -> None:
    response = await post(w, add_checkpoint_body(0, [b"\x00" * 32], log.checkpoint()))
    assert response.status_code == 422


async def test_422_proof_fails(w: InProcessWitness, log: FakeLog) -> None:
    await cosign(w, log, 0)
    log.append(7)
    proof = log.consistency_proof(10)
    proof[0] = bytes(b ^ 0xFF for b in proof[0])
    response = await post(w, add_checkpoint_body(10, proof, log.checkpoint()))
    assert response.status_code == 422
    short = await post(w, add_checkpoint_body(10, proof[:-1], log.checkpoint()))
    assert short.status_code == 422
    refused = (await w.client.get("/refused")).json()["refused"]
    assert [r["kind"] for r in refused] == ["submitted-proof-failed"]
    assert (await w.client.get("/evidence")).json()["evidence"] == []
    # A bad submitted proof proves nothing against the log: cosigning goes on.
    await cosign(w, log, 10)


async def test_409_same_size_other_root(w: InProcessWitness, log: FakeLog) -> None:
    await cosign(w, log, 0)
    forked = log.fork(9)
    forked.append(1, tag=b" fork")
    response = await post(w, add_checkpoint_body(10, [], forked.checkpoint()))
    assert response.status_code == 409
    assert response.headers["content-type"] != "text/x.tlog.size"
    evidence = (await w.client.get("/evidence")).json()["evidence"]
    assert [e["kind"] for e in evidence] == ["same-size"]
    document = (
        await w.client.get(f"/evidence/{origin_hash(log.origin)}/{evidence[0]['id']}")
    ).content
    assert verify_evidence(document, log.vkey).definitive


async def test_422_proof_present_for_equal_sizes(w: InProcessWitness, log: FakeLog) -> None:
    await cosign(w, log, 0)
    response = await post(w, add_checkpoint_body(10, [b"\x00" * 32], log.checkpoint()))
    assert response.status_code == 422


async def test_200_cosignature_lines(w: InProcessWitness, log: FakeLog) -> None:
    note = log.checkpoint()
    response = await post(w, add_checkpoint_body(0, [], note))
    assert response.status_code == 200
    assert response.content.startswith("— witness.example/w1 ".encode())
    assert response.content.endswith(b"\n")
    (signature,) = parse_signature_lines(response.content)
    assert cosignature_timestamp(signature) == NOW
    # tlog-witness: the client may append the lines to its note and verify with the witness key.
    cosigner = w.witness.signer.verifier()
    _, verified = open_note(note + response.content, [cosigner])
    assert [v.name for v in verified] == ["witness.example/w1"]


async def test_200_again_at_same_size_refreshes(w: InProcessWitness, log: FakeLog) -> None:
    await cosign(w, log, 0)
    w.clock[0] += 60
    response = await cosign(w, log, 10)
    (signature,) = parse_signature_lines(response.content)
    assert cosignature_timestamp(signature) == NOW + 60


async def test_403_after_evidence(w: InProcessWitness, log: FakeLog) -> None:
    await cosign(w, log, 0)
    forked = log.fork(9)
    forked.append(1, tag=b" fork")
    assert (await post(w, add_checkpoint_body(10, [], forked.checkpoint()))).status_code == 409
    log.append(3)
    honest = await post(w, add_checkpoint_body(10, log.consistency_proof(10), log.checkpoint()))
    assert honest.status_code == 403
    assert b"evidence" in honest.content
    stored = await w.witness.storage.latest(log.origin)
    assert stored is not None
    assert stored.tree_size == 10


# -- the order of the checks --------------------------------------------------------------


async def test_order_malformed_before_unknown_origin(w: InProcessWitness) -> None:
    stranger = FakeLog("example.net/unknown")
    response = await post(w, b"old 007\n\n" + stranger.checkpoint())
    assert response.status_code == 400


async def test_order_unknown_origin_before_signature(w: InProcessWitness) -> None:
    text = format_checkpoint(Checkpoint("example.net/unknown", 1, b"\x02" * 32))
    note = sign_note(text, [Ed25519Signer.generate("someone")])
    assert (await post(w, add_checkpoint_body(5, [], note))).status_code == 404


async def test_order_signature_before_sizes(w: InProcessWitness, log: FakeLog) -> None:
    impostor = Ed25519Signer.generate(log.origin)
    text = format_checkpoint(Checkpoint(log.origin, 10, log.root()))
    note = sign_note(text, [impostor])
    assert (await post(w, add_checkpoint_body(11, [], note))).status_code == 403
    assert (await post(w, add_checkpoint_body(3, [], note))).status_code == 403


async def test_order_old_above_new_before_conflict(w: InProcessWitness, log: FakeLog) -> None:
    await cosign(w, log, 0)
    assert (await post(w, add_checkpoint_body(12, [], log.checkpoint(10)))).status_code == 400


async def test_order_conflict_before_proof(w: InProcessWitness, log: FakeLog) -> None:
    await cosign(w, log, 0)
    log.append(2)
    assert_size_conflict(
        await post(w, add_checkpoint_body(3, [b"\x00" * 32], log.checkpoint())), 10
    )


async def test_unknown_signatures_are_ignored(w: InProcessWitness, log: FakeLog) -> None:
    stranger = Ed25519Signer.generate("someone.else")
    witness2 = CosignatureSigner.generate("witness.example/w2")
    note = log.checkpoint()
    text = open_note(note, [log.signer.verifier()])[0].text
    extra = sign_note(text, [log.signer, stranger])
    assert (await post(w, add_checkpoint_body(0, [], extra))).status_code == 200
    cosigned = note + witness2.sign_at(text, NOW).format_line().encode()
    assert (await post(w, add_checkpoint_body(10, [], cosigned))).status_code == 200


# -- malformed bodies: all 400 ------------------------------------------------------------

MALFORMED_OLD_LINES = [
    b"old 007",
    b"old 5 junk",
    b"old 0x10",
    b"old +5",
    b"old -1",
    b"old  5",
    b"old 5 ",
    b"old 5_000",
    "old \u0665".encode(),
    b"old 5\r",
    b"Old 5",
    b"old5",
    b"old",
    b"old 99999999999999999999",
    b"",
]


@pytest.mark.parametrize("line", MALFORMED_OLD_LINES, ids=lambda b: repr(b))
async def test_400_bad_old_line(w: InProcessWitness, log: FakeLog, line: bytes) -> None:
    response = await post(w, line + b"\n\n" + log.checkpoint())
    assert response.status_code == 400


def _b64(raw: bytes) -> bytes:
    return base64.b64encode(raw)


GOOD_HASH = _b64(b"\x11" * 32)
BAD_PROOF_LINES = [
    b"not base64!",
    _b64(b"\x11" * 31),
    _b64(b"\x11" * 33),
    GOOD_HASH.rstrip(b"="),
    GOOD_HASH[:-2] + b"F=",  # non-zero padding bits: not the canonical encoding
    base64.urlsafe_b64encode(b"\xff" * 32),
    b" " + GOOD_HASH,
    GOOD_HASH + b"\r",
]


@pytest.mark.parametrize("line", BAD_PROOF_LINES, ids=lambda b: repr(b))
async def test_400_bad_proof_line(w: InProcessWitness, log: FakeLog, line: bytes) -> None:
    response = await post(w, b"old 5\n" + line + b"\n\n" + log.checkpoint())
    assert response.status_code == 400


async def test_400_more_than_63_proof_lines(w: InProcessWitness, log: FakeLog) -> None:
    body = b"old 5\n" + (GOOD_HASH + b"\n") * 64 + b"\n" + log.checkpoint()
    assert (await post(w, body)).status_code == 400
    at_limit = b"old 5\n" + (GOOD_HASH + b"\n") * 63 + b"\n" + log.checkpoint()
    assert (await post(w, at_limit)).status_code == 409  # parses; the sizes decide next


@pytest.mark.parametrize(
    "body",
    [
        b"old 0\n",  # no blank line, no note
        b"old 0",  # no newline at all
        b"old 0\n\n",  # nothing after the blank line
        b"old 0\nexample.com/log\n10\nroot\n",  # no blank line before the note
        b"old 0\n\nexample.com/log",  # note without newline
        b"old 0\n\nexample.com/log\n10\n",  # note without blank line or signature
        b"old 0\n\n\xff\xfe\n",  # origin line is not UTF-8
    ],
)
async def test_400_bad_framing(w: InProcessWitness, body: bytes) -> None:
    assert (await post(w, body)).status_code == 400


async def test_400_missing_blank_line(w: InProcessWitness, log: FakeLog) -> None:
    assert (await post(w, b"old 0\n" + log.checkpoint())).status_code == 400


async def test_400_malformed_checkpoint_text(w: InProcessWitness, log: FakeLog) -> None:
    text = f"{log.origin}\n010\n{base64.b64encode(log.root()).decode()}\n"
    note = sign_note(text, [log.signer])
    assert (await post(w, add_checkpoint_body(0, [], note))).status_code == 400


def test_parser_accepts_the_specification_example() -> None:
    body = (
        b"old 20852014\n"
        b"PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=\n"
        b"jrJZDmY8Y7SyJE0MWLpLozkIVMSMZcD5kvuKxPC3swk=\n"
        b"5+pKlUdi2LeF/BcMHBn+Ku6yhPGNCswZZD1X/6QgPd8=\n"
        b"/6WVhPs2CwSsb5rYBH5cjHV/wSmA79abXAwhXw3Kj/0=\n"
        b"\n"
        b"example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
        b"\n"
    ) + (
        "— example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5"
        "/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
    ).encode()
    parsed = parse_add_checkpoint(body)
    assert parsed.old_size == 20852014
    assert len(parsed.proof) == 4
    assert parsed.proof[0] == base64.b64decode("PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=")
    assert parsed.origin == "example.com/behind-the-sofa"
    assert parsed.note.startswith(b"example.com/behind-the-sofa\n20852163\n")
    with pytest.raises(MalformedRequestError):
        parse_add_checkpoint(body.replace(b"old 20852014", b"old 020852014"))


# -- limits ----------------------------------------------------------------------------------


async def test_413_body_too_large(storage: WitnessStorage, log: FakeLog) -> None:
    async with in_process_witness(storage, [log.config()], max_body_bytes=2048) as w:
        body = add_checkpoint_body(0, [], log.checkpoint())
        assert (await post(w, body)).status_code == 200
        huge = b"old 0\n" + (GOOD_HASH + b"\n") * 60 + b"\n" + log.checkpoint()
        assert (await post(w, huge)).status_code == 413
        assert (await w.client.post("/check", content=b"x" * 4096)).status_code == 413


async def test_429_rate_limited_per_origin(storage: WitnessStorage, log: FakeLog) -> None:
    other = FakeLog("example.org/other")
    other.append(2)
    async with in_process_witness(
        storage, [log.config(), other.config()], rate_per_second=0.01, rate_burst=2
    ) as w:
        body = add_checkpoint_body(0, [], log.checkpoint())
        assert (await post(w, body)).status_code == 200
        assert (await post(w, body)).status_code == 409
        limited = await post(w, body)
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1
        assert (await post(w, add_checkpoint_body(0, [], other.checkpoint()))).status_code == 200


async def test_429_on_check_has_its_own_budget(storage: WitnessStorage, log: FakeLog) -> None:
    async with in_process_witness(storage, [log.config()], rate_per_second=0.01, rate_burst=2) as w:
        for _ in range(2):
            assert (await w.client.post("/check", content=log.checkpoint())).status_code == 200
        limited = await w.client.post("/check", content=log.checkpoint())
        assert limited.status_code == 429
        assert limited.headers["content-type"] == "application/problem+json"
        assert "retry-after" in limited.headers
        body = add_checkpoint_body(0, [], log.checkpoint())
        assert (await post(w, body)).status_code == 200


async def test_429_uses_qpd_from_the_log_list(storage: WitnessStorage, log: FakeLog) -> None:
    async with in_process_witness(storage, [log.config(qpd=1)], rate_burst=1) as w:
        body = add_checkpoint_body(0, [], log.checkpoint())
        assert (await post(w, body)).status_code == 200
        limited = await post(w, body)
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) > 80000


# -- monitoring read, logs, metrics ---------------------------------------------------------


async def test_monitoring_checkpoint(w: InProcessWitness, log: FakeLog) -> None:
    path = f"/{origin_hash(log.origin)}/checkpoint"
    assert (await w.client.get(path)).status_code == 404
    await cosign(w, log, 0)
    response = await w.client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    note, verified = open_note(
        response.content, [log.signer.verifier(), w.witness.signer.verifier()]
    )
    assert parse_checkpoint(note.text).tree_size == 10
    assert [v.name for v in verified] == [log.origin, "witness.example/w1"]
    assert (await w.client.get(path.upper())).status_code == 404
    assert (await w.client.get("/" + "0" * 64 + "/checkpoint")).status_code == 404
    assert (await w.client.get("/abc/checkpoint")).status_code == 404


async def test_logs_and_metrics(w: InProcessWitness, log: FakeLog) -> None:
    await cosign(w, log, 0)
    await post(w, add_checkpoint_body(3, [], log.checkpoint()))
    listing = (await w.client.get("/logs")).json()
    assert listing["witness"] == {"name": w.witness.name, "vkey": w.witness.vkey}
    assert listing["logs"] == [
        {
            "origin": log.origin,
            "origin_hash": origin_hash(log.origin),
            "vkeys": [log.vkey],
            "url": None,
            "qpd": None,
            "tree_size": 10,
            "evidence": 0,
        }
    ]
    assert (await w.client.get("/healthz")).json() == {"status": "ok"}
    text = (await w.client.get("/metrics")).text
    assert 'witness_cosignatures_total{origin="example.com/log"} 1.0' in text
    assert 'witness_http_requests_total{endpoint="add-checkpoint",status="200"} 1.0' in text
    assert 'witness_http_requests_total{endpoint="add-checkpoint",status="409"} 1.0' in text
    assert 'witness_tree_size{origin="example.com/log"} 10.0' in text


async def test_paging_parameters_are_strict(w: InProcessWitness) -> None:
    for query in ("limit=0", "limit=1001", "after=-1", "after=01", "limit=+5"):
        response = await w.client.get(f"/evidence?{query}")
        assert response.status_code == 400, query
        assert response.headers["content-type"] == "application/problem+json"


# -- 20 concurrent requests from a forked log -----------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
async def any_storage(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[WitnessStorage]:
    url = (
        str(tmp_path / "witness.sqlite3")
        if request.param == "sqlite"
        else request.getfixturevalue("pg_database")
    )
    opened = await open_storage(url)
    try:
        yield opened
    finally:
        await opened.close()


async def test_concurrent_interleaved_sizes(any_storage: WitnessStorage) -> None:
    """20 clients at once, half of them pushing a fork; the witness stays on one branch.

    Both branches share the cosigned prefix of size 10; branch A pushes sizes 11, 13, ... 29
    and branch B sizes 12, 14, ... 30. Each client follows 409s to the witness's size. The
    stored size never goes back, and every cosigned checkpoint is on the same branch, so all
    cosignatures are for mutually consistent checkpoints.
    """
    base = FakeLog()
    base.append(10)
    branch_a, branch_b = base.fork(10), base.fork(10)
    branch_a.append(20, tag=b" a")
    branch_b.append(20, tag=b" b")
    async with in_process_witness(any_storage, [base.config()]) as w:
        await cosign(w, base, 0)
        cosigned: list[tuple[str, int, bytes]] = []
        sizes_seen: list[int] = []
        stop = asyncio.Event()

        async def watch() -> None:
            path = f"/{origin_hash(base.origin)}/checkpoint"
            while not stop.is_set():
                response = await w.client.get(path)
                sizes_seen.append(parse_checkpoint(response.text.split("\n\n")[0] + "\n").tree_size)
                await asyncio.sleep(0)

        async def client(name: str, tree: FakeLog, size: int) -> None:
            note = tree.checkpoint(size)
            old = 10
            for _ in range(40):
                proof = [] if old == size else tree.consistency_proof(old, size)
                response = await post(w, add_checkpoint_body(old, proof, note))
                if response.status_code == 200:
                    open_note(note + response.content, [w.witness.signer.verifier()])
                    cosigned.append((name, size, tree.root(size)))
                    return
                if response.status_code != 409 or response.headers["content-type"] != (
                    "text/x.tlog.size"
                ):
                    return  # 422 (other branch) or 409 root conflict: this client gives up
                old = int(response.text)
                if old > size:
                    return
            pytest.fail("client did not settle")

        jobs = [(branch_a if s % 2 else branch_b, s) for s in range(11, 31)]
        random.Random(5).shuffle(jobs)
        watcher = asyncio.create_task(watch())
        await asyncio.gather(
            *(client("a" if tree is branch_a else "b", tree, size) for tree, size in jobs)
        )
        stop.set()
        await watcher

        assert cosigned, "nothing was cosigned"
        branches = {name for name, _, _ in cosigned}
        assert len(branches) == 1, f"cosigned both branches: {cosigned}"
        assert sizes_seen == sorted(sizes_seen), "the stored size went back"
        stored = await any_storage.latest(base.origin)
        assert stored is not None
        assert stored.tree_size == max(size for _, size, _ in cosigned)
        winner = branch_a if branches == {"a"} else branch_b
        for _, size, root in cosigned:
            assert root == winner.root(size)
