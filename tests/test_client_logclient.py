"""The verifying client library against a log that lies on demand (tests/tampering.py).

Happy paths: trust on first use, advancing only with a consistency proof built from tiles,
entries verified by inclusion, receipts verified offline, a token's events, the synchronous
face. Then one test per way the log can misbehave (modified tile, modified entry, forked
checkpoint, same-size fork, rolled-back checkpoint, unknown key, quorum short by one): the
right error, an evidence file that verifies, and a trusted state that did not move.
"""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from client.errors import (
    ConfigurationError,
    EntryMismatchError,
    InconsistentCheckpointError,
    LookupMismatchError,
    ReceiptVerificationError,
    RollbackError,
    StateError,
    TileMismatchError,
    UntrustedCheckpointError,
    VerificationError,
)
from client.logclient import (
    STATE_FORMAT,
    LogClient,
    LookupQuery,
    SyncLogClient,
    parse_leaf_view,
    policy_for_vkey,
    verify_client_evidence,
    verify_receipt_file,
)
from client.tokens import token_ref
from merkle.hashing import leaf_hash
from merkle.note import Ed25519Signer, encode_base64
from merkle.policy import parse_policy
from merkle.receipt import parse_receipt
from merkle.tiles import Tile, format_tile_path
from merkle.tree import verify_consistency
from tests.tampering import TamperingLog, event_leaf
from witness.evidence import verify_evidence

pytestmark = pytest.mark.anyio

TOKEN = b"2YotnFZFEjr1zCsicMWpAA"
REF = token_ref(TOKEN)
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class Switch:
    """An ASGI app that forwards to whichever log is current (to swap in a fork)."""

    def __init__(self, log: TamperingLog) -> None:
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.log.app()(scope, receive, send)


def events(count: int) -> list[dict[str, Any]]:
    """A plausible run of OAuth events; entries 5, 77 and 300 name TOKEN."""
    out: list[dict[str, Any]] = []
    for i in range(count):
        event: dict[str, Any] = {
            "iss": "https://as.example",
            "jti": f"j{i}",
            "iat": 1_767_225_600 + i,
            "type": "token-issued",
            "client_id": f"app-{i % 7}",
            "token_type": "access_token",
            "token_ref": token_ref(f"t{i}".encode()),
        }
        if i in (5, 77, 300):
            event["token_ref"] = REF
            event["type"] = "token-revoked" if i == 300 else "token-issued"
            if i == 300:
                del event["token_type"]
        out.append(event)
    return out


@pytest.fixture
def log() -> TamperingLog:
    """A log of 600 event entries, two witnesses, published with both cosignatures."""
    tampering = TamperingLog()
    tampering.append_events(events(600))
    tampering.publish()
    return tampering


@pytest.fixture
def switch(log: TamperingLog) -> Switch:
    return Switch(log)


def client_for(
    switch: Switch, tmp_path: Path, *, policy: str | None = None, state: str = "state"
) -> LogClient:
    """A LogClient for the switched log, trusting its policy (all witnesses)."""
    return LogClient(
        "http://log.test",
        parse_policy(policy or switch.log.policy()),
        state_dir=tmp_path / state,
        transport=httpx.ASGITransport(app=switch),
    )


def evidence_files(tmp_path: Path, state: str = "state") -> list[Path]:
    return sorted((tmp_path / state / "evidence").glob("*.json"))


# -- happy paths -----------------------------------------------------------------------------------


async def test_first_use_trusts_the_verified_checkpoint(
    switch: Switch, log: TamperingLog, tmp_path: Path
) -> None:
    async with client_for(switch, tmp_path) as client:
        update = await client.update()
        assert update.previous is None
        assert update.advanced
        assert update.current.tree_size == 600
        assert update.current.root_hash == log.root()
        assert [c.name for c in update.current.cosigners] == ["w0", "w1"]
        path = client.store.path(log.origin) if client.store else None
    assert path is not None
    assert path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    document = json.loads(path.read_text())
    assert document["format"] == STATE_FORMAT
    assert document["tree_size"] == 600
    assert document["vkey"] == log.vkey
    assert document["checkpoint"] == log.note.decode()
    assert document["log_urls"] == ["http://log.test"]
    assert not list(path.parent.glob(".*.tmp"))


async def test_state_advances_only_with_a_consistency_proof_from_tiles(
    switch: Switch, log: TamperingLog, tmp_path: Path
) -> None:
    async with client_for(switch, tmp_path) as client:
        await client.update()
        log.append_events(events(300))
        log.publish()
        log.requests.clear()
        update = await client.update()
    assert update.previous is not None
    assert update.previous.tree_size == 600
    assert update.current.tree_size == 900
    assert update.advanced
    verify_consistency(600, 900, log.root(600), log.root(900), update.proof)
    assert any(r.startswith("tile/") for r in log.requests)
    assert not any("proof" in r for r in log.requests)
    # Nothing new: the state stays, no proof is needed.
    async with client_for(switch, tmp_path) as client:
        again = await client.update()
    assert again.previous is not None
    assert again.previous.tree_size == 900
    assert not again.advanced
    assert again.proof == ()


async def test_entry_is_verified_and_its_receipt_verifies_offline(
    switch: Switch, log: TamperingLog, tmp_path: Path
) -> None:
    async with client_for(switch, tmp_path) as client:
        entry = await client.receipt(77)
    assert entry.entry == log.entries[77]
    assert entry.leaf is not None
    assert entry.leaf.event["token_ref"] == REF
    policy = parse_policy(log.policy())
    report = verify_receipt_file(entry.receipt(), policy)
    assert (report.index, report.entry) == (77, log.entries[77])
    assert report.entry_source == "receipt extra"
    assert [c.name for c in report.checkpoint.cosigners] == ["w0", "w1"]
    bare = entry.receipt(include_entry=False)
    assert parse_receipt(bare).extra is None
    assert verify_receipt_file(bare, policy, log.entries[77]).entry_source == "given"
    with pytest.raises(ReceiptVerificationError, match="no entry"):
        verify_receipt_file(bare, policy)
    with pytest.raises(ReceiptVerificationError, match="inclusion proof"):
        verify_receipt_file(bare, policy, log.entries[78])
    with pytest.raises(ReceiptVerificationError, match="quorum"):
        verify_receipt_file(entry.receipt(), parse_policy(_stricter(log)))


def _stricter(log: TamperingLog) -> str:
    """The log's policy with a third witness required (the receipt has two cosignatures)."""
    extra = TamperingLog(witnesses=1).witnesses[0]
    lines = [f"log {log.vkey}"]
    lines += [f"witness w{i} {w.vkey}" for i, w in enumerate([*log.witnesses, extra])]
    return "\n".join([*lines, "group all 3 w0 w1 w2", "quorum all"]) + "\n"


async def test_events_of_a_token_are_found_and_verified(
    switch: Switch, log: TamperingLog, tmp_path: Path
) -> None:
    log.append_events([{"type": "token-refreshed", "client_id": "app-1", "token_ref": REF}])
    # Appended but not yet covered by a published checkpoint: reported as pending.
    async with client_for(switch, tmp_path) as client:
        found, pending = await client.events_for_token(TOKEN)
    assert [e.index for e in found] == [5, 77, 300]
    assert pending == [600]
    assert all(e.checkpoint.tree_size == 600 for e in found)
    leaves = [parse_leaf_view(e.entry) for e in found]
    assert [leaf.event["type"] for leaf in leaves if leaf] == [
        "token-issued",
        "token-issued",
        "token-revoked",
    ]


async def test_a_lookup_answer_that_does_not_match_is_refused(
    switch: Switch, log: TamperingLog, tmp_path: Path
) -> None:
    log.lookup_lies[f"token_ref={REF}"] = [6]
    async with client_for(switch, tmp_path) as client:
        with pytest.raises(LookupMismatchError) as caught:
            await client.events_for_token(TOKEN)
    assert caught.value.index == 6


async def test_lookup_by_client_and_time(switch: Switch, log: TamperingLog, tmp_path: Path) -> None:
    first = parse_leaf_view(log.entries[0])
    assert first is not None
    since = first.log_time + 7
    async with client_for(switch, tmp_path) as client:
        found, _ = await client.lookup(LookupQuery("client_id", "app-0", since_ms=since))
    assert [e.index for e in found][:3] == [7, 14, 21]


def test_lookup_query_is_strict() -> None:
    with pytest.raises(ConfigurationError):
        LookupQuery("token_ref", "not-a-token-ref")
    with pytest.raises(ConfigurationError):
        LookupQuery("secret", "x")
    with pytest.raises(ConfigurationError):
        LookupQuery("type", "token-issued", since_ms=5, until_ms=5)


async def test_a_changed_log_key_is_not_silently_trusted(
    switch: Switch, log: TamperingLog, tmp_path: Path
) -> None:
    async with client_for(switch, tmp_path) as client:
        await client.update()
    other = TamperingLog(log.origin)
    other.append(log.entries)
    other.publish()
    switch.log = other
    async with client_for(switch, tmp_path, policy=other.policy()) as client:
        with pytest.raises(StateError, match="verified with the key"):
            await client.update()


async def test_a_corrupted_state_file_is_refused(
    switch: Switch, log: TamperingLog, tmp_path: Path
) -> None:
    async with client_for(switch, tmp_path) as client:
        await client.update()
        assert client.store is not None
        path = client.store.path(log.origin)
    document = json.loads(path.read_text())
    document["checkpoint"] = log.sign(599).decode().replace("599", "598", 1)
    path.write_text(json.dumps(document))
    async with client_for(switch, tmp_path) as client:
        with pytest.raises(StateError):
            await client.update()


async def test_concurrent_updates_share_one_state(
    switch: Switch, log: TamperingLog, tmp_path: Path
) -> None:
    clients = [client_for(switch, tmp_path) for _ in range(3)]
    results = await asyncio.gather(*(c.update() for c in clients))
    for c in clients:
        await c.aclose()
    assert sum(1 for r in results if r.previous is None) >= 1
    assert {r.current.tree_size for r in results} == {600}


def test_the_synchronous_face(log: TamperingLog, tmp_path: Path) -> None:
    with SyncLogClient(
        "http://log.test",
        parse_policy(log.policy()),
        state_dir=tmp_path / "state",
        transport=httpx.ASGITransport(app=log.app()),
    ) as client:
        update = client.update()
        entry = client.entry(5, update.current)
        found, pending = client.events_for_token(TOKEN)
    assert entry.entry == log.entries[5]
    assert [e.index for e in found] == [5, 77, 300]
    assert pending == []


async def test_a_vkey_policy_needs_no_witnesses(log: TamperingLog, tmp_path: Path) -> None:
    log.publish(cosigners=0)
    async with LogClient(
        "http://log.test",
        policy_for_vkey(log.vkey),
        transport=httpx.ASGITransport(app=log.app()),
    ) as client:
        update = await client.update()
    assert update.current.cosigners == ()


def test_configuration_is_checked() -> None:
    with pytest.raises(ConfigurationError):
        policy_for_vkey("not a vkey")
    log = TamperingLog(witnesses=0)
    with pytest.raises(ConfigurationError):
        LogClient("ftp://log.test", policy_for_vkey(log.vkey))
    with pytest.raises(ConfigurationError):
        LogClient("http://log.test", policy_for_vkey(log.vkey), credential="two words")


# -- the log misbehaves: one test per way ----------------------------------------------------------


async def _trusted_size(client: LogClient, origin: str) -> int | None:
    state = client.trusted_state(origin)
    return state.checkpoint.tree_size if state else None


async def test_modified_tile(switch: Switch, log: TamperingLog, tmp_path: Path) -> None:
    # Entry 300's own leaf hash is intact; a sibling on its inclusion path is not.
    path = format_tile_path(Tile(0, 1, 256))
    data = bytearray(log.tile_bytes(path) or b"")
    data[(301 - 256) * 32] ^= 1
    log.tile_overrides[path] = bytes(data)
    async with client_for(switch, tmp_path) as client:
        checkpoint = await client.current()
        with pytest.raises(TileMismatchError) as caught:
            await client.entry(300, checkpoint)
    error = caught.value
    assert error.evidence_path is not None
    assert error.evidence_path.exists()
    assert error.evidence_path in evidence_files(tmp_path)
    document = json.loads(error.evidence_path.read_text())
    assert document["kind"] == "tile-mismatch"
    assert document["details"]["index"] == 300
    report = verify_client_evidence(error.evidence_path.read_bytes(), log.vkey)
    assert report.kind == "tile-mismatch"
    assert not report.definitive


async def test_modified_entry(switch: Switch, log: TamperingLog, tmp_path: Path) -> None:
    forged = event_leaf({"type": "token-issued", "client_id": "app-0"}, log_time=1)
    log.entry_overrides[77] = forged
    async with client_for(switch, tmp_path) as client:
        with pytest.raises(EntryMismatchError) as caught:
            await client.receipt(77)
    error = caught.value
    assert error.evidence_path is not None
    document = json.loads(error.evidence_path.read_text())
    assert document["details"]["entry"] == encode_base64(forged)
    assert document["details"]["leaf_hash"] == encode_base64(leaf_hash(log.entries[77]))
    report = verify_client_evidence(error.evidence_path.read_bytes(), log.vkey)
    assert report.kind == "entry-mismatch"
    # The evidence does not hold against another key.
    with pytest.raises(VerificationError):
        verify_client_evidence(error.evidence_path.read_bytes(), TamperingLog(log.origin).vkey)


async def test_forked_checkpoint(switch: Switch, log: TamperingLog, tmp_path: Path) -> None:
    async with client_for(switch, tmp_path) as client:
        await client.update()
    fork = log.fork(400)
    fork.append_events([{"type": "login-failed", "reason": "other", "n": i} for i in range(300)])
    fork.publish()
    switch.log = fork
    async with client_for(switch, tmp_path) as client:
        with pytest.raises(InconsistentCheckpointError) as caught:
            await client.update()
        assert await _trusted_size(client, log.origin) == 600
    error = caught.value
    assert error.evidence_path is not None
    data = error.evidence_path.read_bytes()
    report = verify_evidence(data, log.vkey)  # the witness's own format and verifier
    assert report.kind == "proof-failed"
    assert (report.first.tree_size, report.second.tree_size) == (600, 700)


async def test_forked_checkpoint_of_the_same_size(
    switch: Switch, log: TamperingLog, tmp_path: Path
) -> None:
    async with client_for(switch, tmp_path) as client:
        await client.update()
    fork = log.fork(400)
    fork.append_events([{"type": "client-disabled", "client_id": f"c{i}"} for i in range(200)])
    fork.publish()
    switch.log = fork
    async with client_for(switch, tmp_path) as client:
        with pytest.raises(InconsistentCheckpointError) as caught:
            await client.update()
    assert caught.value.evidence_path is not None
    report = verify_evidence(caught.value.evidence_path.read_bytes(), log.vkey)
    assert report.kind == "same-size"
    assert report.definitive


async def test_rolled_back_checkpoint(switch: Switch, log: TamperingLog, tmp_path: Path) -> None:
    log.append_events(events(50))
    log.publish()
    async with client_for(switch, tmp_path) as client:
        await client.update()
    log.publish(600)  # an older checkpoint the log really signed
    async with client_for(switch, tmp_path) as client:
        with pytest.raises(RollbackError) as caught:
            await client.update()
        assert await _trusted_size(client, log.origin) == 650
    error = caught.value
    assert error.evidence_path is not None
    document = json.loads(error.evidence_path.read_text())
    assert document["kind"] == "rollback"
    assert document["trusted"]["tree_size"] == 650
    assert document["presented"]["tree_size"] == 600
    assert document["details"]["consistent_prefix"] is True
    report = verify_client_evidence(error.evidence_path.read_bytes(), log.vkey)
    assert report.kind == "rollback"
    assert not report.definitive


async def test_checkpoint_signed_by_an_unknown_key(
    switch: Switch, log: TamperingLog, tmp_path: Path
) -> None:
    log.publish(signer=Ed25519Signer.generate(log.origin))
    async with client_for(switch, tmp_path) as client:
        with pytest.raises(UntrustedCheckpointError, match="not validly signed") as caught:
            await client.update()
        assert await _trusted_size(client, log.origin) is None
    error = caught.value
    assert error.evidence_path is not None
    report = verify_client_evidence(error.evidence_path.read_bytes(), log.vkey)
    assert report.kind == "untrusted-checkpoint"


async def test_quorum_short_by_one(switch: Switch, log: TamperingLog, tmp_path: Path) -> None:
    async with client_for(switch, tmp_path) as client:
        await client.update()
    log.append_events(events(10))
    log.publish(cosigners=1)
    async with client_for(switch, tmp_path) as client:
        with pytest.raises(UntrustedCheckpointError, match="quorum") as caught:
            await client.update()
        assert await _trusted_size(client, log.origin) == 600
    assert caught.value.evidence_path is not None
    document = json.loads(caught.value.evidence_path.read_text())
    assert document["trusted"]["tree_size"] == 600
    assert document["presented"]["tree_size"] == 610
    # The near miss: a policy asking for one witness accepts the same checkpoint.
    async with client_for(switch, tmp_path, policy=log.policy(quorum=1)) as client:
        update = await client.update()
    assert update.current.tree_size == 610
    assert [c.name for c in update.current.cosigners] == ["w0"]


# -- how entries are read --------------------------------------------------------------------------


def test_the_client_reads_events_as_the_log_indexes_them() -> None:
    from client.logclient import TOKEN_REF_FIELDS, LeafView, event_matches, subject_key
    from server import events as server_events

    assert server_events.TOKEN_REF_FIELDS == TOKEN_REF_FIELDS
    for subject in ("p-1", {"format": "opaque", "id": "x"}, {"format": "iss_sub", "sub": "y"}, 5):
        assert subject_key(subject) == server_events.subject_key(subject)  # type: ignore[arg-type]
    claims = {
        "iss": "https://as.example",
        "jti": "s1",
        "iat": 1_767_225_600,
        "sub_id": {"format": "opaque", "id": "p-9"},
        "events": {
            "https://schemas.openid.net/secevent/caep/event-type/session-established": {},
            "https://schemas.openid.net/secevent/oauth/event-type/token-revoked": {
                "client": {"client_id": "app"},
                "token_ref": REF,
            },
        },
    }
    leaf = LeafView("as", claims, 1_767_225_600_000, set_jws="h.p.s")
    assert server_events.set_lookup_keys(claims) == (  # type: ignore[arg-type]
        ("type", "login-succeeded"),
        ("type", "token-revoked"),
        ("subject", "p-9"),
        ("client_id", "app"),
        ("token_ref", REF),
    )
    for kind, value in server_events.set_lookup_keys(claims):  # type: ignore[arg-type]
        assert event_matches(leaf, LookupQuery(kind, value))
    assert not event_matches(leaf, LookupQuery("type", "token-issued"))
    assert not event_matches(leaf, LookupQuery("client_id", "other"))
    assert not event_matches(leaf, LookupQuery("subject", "p-1"))


async def test_a_receipt_whose_index_is_beyond_its_tree_is_refused(
    switch: Switch, log: TamperingLog, tmp_path: Path
) -> None:
    async with client_for(switch, tmp_path) as client:
        entry = await client.receipt(599)
    text = entry.receipt().replace(b"index 599\n", b"index 600\n")
    with pytest.raises(ReceiptVerificationError, match="not below the tree size"):
        verify_receipt_file(text, parse_policy(log.policy()))
