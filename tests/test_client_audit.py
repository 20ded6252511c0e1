"""The full audit: every size shape of the tile tree, every kind of mismatch, the checkpoints it
can see, resumption after an outage and after growth, and the progress display."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from client.audit import Auditor, AuditProgress
from client.commands.audit import ProgressPrinter
from client.errors import (
    EntryMismatchError,
    InconsistentCheckpointError,
    LogUnavailableError,
    TileMismatchError,
)
from client.logclient import LogClient, verify_client_evidence
from merkle.policy import parse_policy
from merkle.tiles import Tile, format_tile_path
from tests.tampering import TamperingLog

pytestmark = pytest.mark.anyio

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class Hosts:
    """An ASGI app that sends each host name to its own app."""

    def __init__(self, apps: Mapping[str, Any]) -> None:
        self.apps = dict(apps)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers", []))
        host = headers.get(b"host", b"").decode().split(":")[0]
        await self.apps[host](scope, receive, send)


def grown(size: int) -> TamperingLog:
    log = TamperingLog()
    log.append([f"entry {i}".encode() for i in range(size)])
    log.publish()
    return log


def client_for(log: TamperingLog, tmp_path: Path, app: Any = None, policy: str = "") -> LogClient:
    return LogClient(
        "http://log.test",
        parse_policy(policy or log.policy()),
        state_dir=tmp_path / "state",
        transport=httpx.ASGITransport(app=app or log.app()),
    )


async def audit(log: TamperingLog, tmp_path: Path, **options: Any) -> Any:
    async with client_for(log, tmp_path) as client:
        return await Auditor(client, tmp_path / "audit.json", witnesses=False, **options).run()


@pytest.mark.parametrize("size", [0, 1, 255, 256, 257, 513, 256 * 256 + 300])
async def test_audit_recomputes_every_shape_of_tree(size: int, tmp_path: Path) -> None:
    log = grown(size)
    report = await audit(log, tmp_path)
    assert report.entries == size
    assert report.checkpoint.root_hash == log.root()
    bundles = -(-size // 256)
    hash_tiles = len(
        [p for p in log.requests if p.startswith("tile/") and not p.startswith("tile/entries")]
    )
    assert len([p for p in log.requests if p.startswith("tile/entries/")]) == bundles
    # Every hash tile of the tree was read: level 0 (one per bundle) and the levels above.
    expected = bundles + -(-(size // 256) // 256) + (1 if size >= 65536 else 0)
    assert hash_tiles >= expected


async def test_modified_entry_is_found(tmp_path: Path) -> None:
    log = grown(600)
    log.entry_overrides[333] = b"not what was logged"
    with pytest.raises(EntryMismatchError) as caught:
        await audit(log, tmp_path)
    assert caught.value.evidence_path is not None
    report = verify_client_evidence(caught.value.evidence_path.read_bytes(), log.vkey)
    assert report.kind == "entry-mismatch"


async def test_modified_leaf_hash_in_a_level0_tile(tmp_path: Path) -> None:
    log = grown(600)
    path = format_tile_path(Tile(0, 1))
    data = bytearray(log.tile_bytes(path) or b"")
    data[40] ^= 0x80
    log.tile_overrides[path] = bytes(data)
    with pytest.raises(TileMismatchError) as caught:
        await audit(log, tmp_path)
    document = json.loads((caught.value.evidence_path or Path()).read_text())
    assert document["details"]["tile"] == path


async def test_modified_level1_tile(tmp_path: Path) -> None:
    log = grown(256 * 256 + 10)
    path = format_tile_path(Tile(1, 0))
    data = bytearray(log.tile_bytes(path) or b"")
    data[-1] ^= 1
    log.tile_overrides[path] = bytes(data)
    with pytest.raises(TileMismatchError, match="tile/1/000"):
        await audit(log, tmp_path)


async def test_modified_partial_tile_at_the_edge(tmp_path: Path) -> None:
    log = grown(256 * 3 + 5)
    path = format_tile_path(Tile(1, 0, 3))
    data = bytearray(log.tile_bytes(path) or b"")
    data[0] ^= 1
    log.tile_overrides[path] = bytes(data)
    with pytest.raises(TileMismatchError, match=r"tile/1/000\.p/3"):
        await audit(log, tmp_path)


async def test_signed_root_that_no_entry_set_reproduces(tmp_path: Path) -> None:
    log = grown(300)
    log.publish(root=hashlib.sha256(b"a root over other entries").digest())
    with pytest.raises(TileMismatchError, match="root"):
        await audit(log, tmp_path)


async def test_other_checkpoints_are_checked_for_consistency(tmp_path: Path) -> None:
    log = grown(700)
    older = log.sign(300)
    fork = log.fork(200)
    fork.append([b"other"] * 100)
    forked = fork.sign(300)
    report = await audit(log, tmp_path, checkpoints=[("file old", older)])
    assert [(c.source, c.tree_size, c.status) for c in report.checkpoints] == [
        ("file old", 300, "consistent")
    ]
    with pytest.raises(InconsistentCheckpointError) as caught:
        await audit(log, tmp_path, checkpoints=[("file forked", forked)])
    assert caught.value.evidence is not None
    assert caught.value.evidence["first"]["source"] == "file forked"


async def test_witness_checkpoints_are_fetched_and_checked(tmp_path: Path) -> None:
    log = grown(400)
    digest = hashlib.sha256(log.origin.encode()).hexdigest()

    async def latest(request: Request) -> Response:
        return Response(log.sign(350))

    witness = Starlette(routes=[Route(f"/{digest}/checkpoint", latest)])
    policy = log.policy().replace(
        f"witness w0 {log.witnesses[0].vkey}", f"witness w0 {log.witnesses[0].vkey} http://w0.test"
    )
    app = Hosts({"log.test": log.app(), "w0.test": witness})
    async with client_for(log, tmp_path, app, policy) as client:
        report = await Auditor(client, None).run()
    assert [(c.tree_size, c.status) for c in report.checkpoints if "w0" in c.source] == [
        (350, "consistent")
    ]


async def test_audit_resumes_after_an_outage_and_after_growth(tmp_path: Path) -> None:
    log = grown(256 * 40 + 7)
    log.unavailable.add("tile/entries/025")
    with pytest.raises(LogUnavailableError):
        await audit(log, tmp_path, save_every=0.0, window=1)
    progress = json.loads((tmp_path / "audit.json").read_text())
    assert progress["format"] == "etch-audit-state/v1"
    assert 0 < progress["next_tile"] <= 25
    log.unavailable.clear()
    log.requests.clear()
    report = await audit(log, tmp_path)
    assert report.resumed_from == progress["next_tile"] * 256
    assert report.entries == log.size
    assert "tile/entries/000" not in log.requests
    # The log grows: the next audit reads only the new part (full tiles never change).
    log.append([f"more {i}".encode() for i in range(600)])
    log.publish()
    log.requests.clear()
    again = await audit(log, tmp_path)
    assert again.resumed_from == 40 * 256
    assert again.entries == log.size
    assert len([p for p in log.requests if p.startswith("tile/entries/")]) == 3


async def test_a_corrupt_progress_file_is_refused(tmp_path: Path) -> None:
    from client.errors import StateError

    log = grown(600)
    await audit(log, tmp_path)
    document = json.loads((tmp_path / "audit.json").read_text())
    document["next_tile"] = 1  # the stored upper levels no longer fit
    (tmp_path / "audit.json").write_text(json.dumps(document))
    with pytest.raises(StateError):
        await audit(log, tmp_path)


def test_progress_on_a_terminal_is_a_bar_with_time_left() -> None:
    out = io.StringIO()
    show = ProgressPrinter(out, tty=True)
    show(AuditProgress(250, 1000, 1.0, 250.0, 3.0))
    show(AuditProgress(1000, 1000, 4.0, 250.0, 0.0))
    text = out.getvalue()
    assert text.startswith("\r[#######.......................]  25.0% 250/1,000")
    assert "ETA 0:03" in text
    assert text.endswith("\n")


def test_progress_elsewhere_is_plain_lines() -> None:
    out = io.StringIO()
    show = ProgressPrinter(out, tty=False, every=3600)
    show(AuditProgress(10, 1000, 0.1, 100.0, 9.9))
    show(AuditProgress(20, 1000, 0.2, 100.0, 9.8))  # throttled
    show(AuditProgress(1000, 1000, 10.0, 100.0, 0.0))
    lines = out.getvalue().splitlines()
    assert lines == [
        "audit: 10/1000 entries (1.0%), 100/s, about 0:09 left",
        "audit: 1000/1000 entries (100.0%), 100/s, about 0:00 left",
    ]
    assert "\r" not in out.getvalue()
