"""Helpers of the explorer's tests: a log with the OAuth layer, a witness policy and the explorer.

:func:`open_explorer_log` runs the log in process (SQLite, the fixed test clock of
:mod:`tests.oauth_support`) with the explorer installed, and three witness keys of a 2-of-3
policy; :meth:`ExplorerLog.cosign` publishes the newest checkpoint with chosen witnesses'
cosignatures, as the witness collector would after a round of ``add-checkpoint``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from starlette.applications import Starlette

from merkle.cosignature import CosignatureSigner
from merkle.note import Note, format_note, parse_note
from merkle.policy import Policy, parse_policy
from server.explorer import install_explorer
from server.explorer.views import Explorer
from server.ingest import OAuthSettings, create_oauth_app
from server.log import LogService
from server.storage import PostgresStorage, SQLiteStorage, open_storage
from tests.oauth_support import NOW, FixedClock, OAuthLog, Submitter, sample_event
from tests.server_helpers import ORIGIN, make_signer

__all__ = ["WITNESS_NAMES", "ExplorerLog", "open_explorer_log", "text_of"]

WITNESS_NAMES = ("w1", "w2", "w3")


@dataclass
class ExplorerLog:
    """The log, its OAuth test handle, app, explorer, policy and witness signers."""

    oauth: OAuthLog
    app: Starlette
    explorer: Explorer
    policy: Policy
    witnesses: dict[str, CosignatureSigner] = field(default_factory=dict)

    @property
    def client(self) -> httpx.AsyncClient:
        return self.oauth.client

    @property
    def service(self) -> LogService:
        return self.oauth.service

    async def cosign(self, names: Sequence[str] = ("w1", "w2"), *, at: int = NOW + 5) -> bytes:
        """Publish the newest checkpoint with cosignatures of ``names`` made at time ``at``."""
        latest = self.service.latest
        assert latest is not None
        note, size = latest
        parsed = parse_note(note)
        extra = tuple(self.witnesses[n].sign_at(parsed.text, at) for n in names)
        merged = format_note(Note(parsed.text, parsed.signatures + extra))
        await self.service.storage.put_cosigned_checkpoint(size, merged)
        self.service.publish(merged)
        return merged

    async def submit_events(self, submitter: Submitter, count: int, **changes: object) -> None:
        """Submit ``count`` token-issued events (each its own batch)."""
        for _ in range(count):
            response = await self.oauth.submit(submitter, sample_event("token-issued", **changes))
            assert response.status_code == 201, response.text


def _policy(vkey: str, witnesses: dict[str, CosignatureSigner]) -> Policy:
    lines = [f"log {vkey}"]
    lines += [f"witness {name} {signer.vkey}" for name, signer in witnesses.items()]
    lines += ["group all-witnesses 2 " + " ".join(witnesses), "quorum all-witnesses"]
    return parse_policy("\n".join(lines) + "\n")


@contextlib.asynccontextmanager
async def open_explorer_log(
    tmp_path: Path, settings: OAuthSettings | None = None
) -> AsyncIterator[ExplorerLog]:
    """Run a witnessed log with the OAuth layer and the explorer in process (SQLite)."""
    storage = open_storage(str(tmp_path / "log.db"))
    assert isinstance(storage, SQLiteStorage | PostgresStorage)
    clock = FixedClock()
    signer = make_signer(ORIGIN)
    service = LogService(storage, signer, ORIGIN, batch_period=0.002, clock=clock, witnessed=True)
    witnesses = {
        name: CosignatureSigner.generate(f"witness.example/{name}") for name in WITNESS_NAMES
    }
    policy = _policy(signer.vkey, witnesses)
    app = create_oauth_app(service, storage, settings)
    explorer = install_explorer(app, service, policy)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://etch.test", timeout=60
        ) as client:
            yield ExplorerLog(
                OAuthLog(service, storage, client, clock), app, explorer, policy, witnesses
            )


_TAGS = re.compile(r"<[^>]*>")


def text_of(html: str) -> str:
    """The visible text of a page, roughly: tags removed, whitespace collapsed."""
    return " ".join(_TAGS.sub(" ", html).split())
