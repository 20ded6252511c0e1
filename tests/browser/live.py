"""A real Etch deployment for the browser tests, on 127.0.0.1, in a background thread.

:class:`LiveStack` runs, on one event loop in its own thread, uvicorn servers for: the log
(SQLite, the OAuth layer, the explorer, a 2-of-3 witness policy and the real witness
collector pushing ``add-checkpoint`` over HTTP) and three witnesses (each its own SQLite
database and key, each page mounted). The browser reaches them like any other site.

Test data: events of two tokens (:data:`TOKEN`, :data:`TAMPERED_TOKEN`) and of unrelated
tokens, submitted by a registered submitter over HTTP with real signatures; witness 3 also
follows a second origin for which it holds fork evidence (two signed checkpoints of one size
with different roots), so its page has a fork to show.

The log's app is wrapped by a test fixture that, for the entry indexes in
:attr:`LiveStack.tampered`, flips a bit of the first hash of every inclusion proof it serves:
the browser must then mark that event failed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from starlette.applications import Starlette

from client.tokens import token_ref
from merkle.checkpoint import parse_checkpoint
from merkle.cosignature import CosignatureSigner
from merkle.note import parse_note
from merkle.policy import parse_policy
from server.explorer import install_explorer
from server.ingest import OAuthSettings, create_oauth_app
from server.log import LogService
from server.principals import event_key_id, new_principal
from server.storage import SQLiteStorage
from server.storage.base import Principal, PrincipalKey
from server.witnessing import WitnessCollector
from tests.oauth_support import NOW, FixedClock, sample_event, signed_message
from tests.server_helpers import ORIGIN, free_port, make_signer
from tests.witness_support import FakeLog
from witness.config import LogConfig
from witness.core import Witness
from witness.evidence import KIND_SAME_SIZE, Observation, make_record
from witness.gossip import Gossip
from witness.http import Components, create_app
from witness.metrics import WitnessMetrics
from witness.storage import open_storage as open_witness_storage

__all__ = ["FORKED_ORIGIN", "TAMPERED_TOKEN", "TOKEN", "LiveStack", "TokenEvents"]

TOKEN = "demo-access-token-Zx81"
"""The token whose events the "my token" test looks for (never sent by the browser)."""

TAMPERED_TOKEN = "second-access-token-Qe42"
"""A token one of whose inclusion proofs the fixture tampers with."""

FORKED_ORIGIN = "forked.example/log"
"""An origin witness 3 follows and holds same-size fork evidence against."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass
class TokenEvents:
    """The indexes at which a token's events were logged, by event type."""

    indexes: dict[str, int] = field(default_factory=dict)


class TamperingApp:
    """ASGI wrapper: corrupts inclusion proofs served for the indexes in ``tampered``."""

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.tampered: set[int] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/proof/inclusion":
            await self.app(scope, receive, send)
            return
        query = dict(
            part.split("=", 1)
            for part in scope.get("query_string", b"").decode("ascii").split("&")
            if "=" in part
        )
        index = query.get("index", "")
        if not (index.isdigit() and int(index) in self.tampered):
            await self.app(scope, receive, send)
            return
        start: Message = {}
        body = b""

        async def capture(message: Message) -> None:
            nonlocal start, body
            if message["type"] == "http.response.start":
                start = message
            else:
                body += message.get("body", b"")

        await self.app(scope, receive, capture)
        answer = json.loads(body)
        first = bytearray(base64.b64decode(answer["proof"][0]))
        first[0] ^= 0x01
        answer["proof"][0] = base64.b64encode(bytes(first)).decode("ascii")
        content = json.dumps(answer).encode("utf-8")
        headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(content)).encode("ascii")))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": content})


class LiveStack:
    """The log and three witnesses on uvicorn in a background thread (see module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.log_port = free_port()
        self.witness_ports = [free_port() for _ in range(3)]
        self.log_url = f"http://127.0.0.1:{self.log_port}"
        self.witness_urls = [f"http://127.0.0.1:{p}" for p in self.witness_ports]
        self.token_events = TokenEvents()
        self.tampered_events = TokenEvents()
        self.other_indexes: list[int] = []
        self.reader_credential = ""
        self.submitter_credential = ""
        self.submitter_key = ed25519.Ed25519PrivateKey.generate()
        self.log_private_key = ""
        self.tampering: TamperingApp | None = None
        self.published_size = 0
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="live etch", daemon=True)

    # -- control from the test thread ---------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        """Start everything and wait until the events are published with a quorum."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the live log did not become ready in time")
        if self._error is not None:
            raise RuntimeError("the live log failed to start") from self._error

    def stop(self) -> None:
        """Stop the servers and wait for the thread."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def tamper(self, indexes: set[int]) -> None:
        """Serve corrupted inclusion proofs for these entry indexes from now on."""
        assert self.tampering is not None
        self.tampering.tampered = set(indexes)

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to the test thread
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with contextlib.AsyncExitStack() as stack:
            servers: list[uvicorn.Server] = []
            log_signer = make_signer(ORIGIN)
            self.log_private_key = log_signer.private_key
            witness_signers = [
                CosignatureSigner.generate(f"localhost/test/witness-{n}") for n in (1, 2, 3)
            ]
            forked = FakeLog(FORKED_ORIGIN)
            for number, (signer, port) in enumerate(
                zip(witness_signers, self.witness_ports, strict=True), 1
            ):
                app = await self._witness_app(stack, number, signer, log_signer.vkey, forked)
                servers.append(_server(app, port, lifespan="on"))
            policy = parse_policy(
                f"log {log_signer.vkey} {self.log_url}\n"
                + "".join(
                    f"witness witness-{n} {s.vkey} {url}\n"
                    for n, (s, url) in enumerate(
                        zip(witness_signers, self.witness_urls, strict=True), 1
                    )
                )
                + "group local 2 witness-1 witness-2 witness-3\nquorum local\n"
            )
            storage = SQLiteStorage(str(self.directory / "log.db"))
            clock = FixedClock(NOW)
            service = LogService(
                storage, log_signer, ORIGIN, batch_period=0.002, clock=clock, witnessed=True
            )
            await service.start()
            stack.push_async_callback(service.stop)
            collector = WitnessCollector(service, policy, timeout=5.0, retry_limit=0.5)
            service.collector = collector
            await collector.start()
            stack.push_async_callback(collector.stop)
            app = create_oauth_app(
                service, storage, OAuthSettings(public_entries=True), manage_service=False
            )
            install_explorer(app, service, policy)
            self.tampering = TamperingApp(app)
            servers.append(_server(self.tampering, self.log_port, lifespan="off"))
            tasks = [asyncio.create_task(s.serve()) for s in servers]
            try:
                await _until(lambda: all(s.started for s in servers), 20.0)
                await self._fill(storage, service, clock)
                self._ready.set()
                await self._stop.wait()
            finally:
                for server in servers:
                    server.should_exit = True
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _witness_app(
        self,
        stack: contextlib.AsyncExitStack,
        number: int,
        signer: CosignatureSigner,
        log_vkey: str,
        forked: FakeLog,
    ) -> Starlette:
        storage = await open_witness_storage(self.directory / f"witness-{number}.sqlite3")
        stack.push_async_callback(storage.close)
        logs = [LogConfig(ORIGIN, (log_vkey,), self.log_url)]
        if number == 3:
            logs.append(forked.config())
        witness = Witness(
            logs=logs,
            signer=signer,
            storage=storage,
            metrics=WitnessMetrics(),
            rate_per_second=1000.0,
            rate_burst=1000,
        )
        http = httpx.AsyncClient(timeout=5.0)
        stack.push_async_callback(http.aclose)
        peers = tuple(url for n, url in enumerate(self.witness_urls, 1) if n != number)
        gossip = Gossip(witness, http, peers=peers, poll_interval=3600.0, fetch_timeout=5.0)
        if number == 3:
            await _record_fork(witness, forked)

        @contextlib.asynccontextmanager
        async def components() -> Any:
            yield Components(witness, gossip, 64 * 1024, False)

        return create_app(components)

    async def _fill(self, storage: SQLiteStorage, service: LogService, clock: FixedClock) -> None:
        """Register principals, submit the events over HTTP, wait for a cosigned checkpoint."""
        key = self.submitter_key
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        created = new_principal("submitter", "as-test", now_ms=0)
        await storage.add_principal(
            Principal(
                "submitter",
                "as-test",
                created.principal.credential_hash,
                "active",
                0,
                (PrincipalKey(event_key_id(raw), "event", "Ed25519", raw, 0, None),),
            )
        )
        self.submitter_credential = created.credential
        reader = new_principal("reader", "auditor", now_ms=0)
        await storage.add_principal(reader.principal)
        self.reader_credential = reader.credential
        ref, refresh = token_ref(TOKEN.encode()), token_ref(b"demo-refresh-token-Ab12")
        other = token_ref(TAMPERED_TOKEN.encode())
        plan: list[tuple[str, TokenEvents | None, dict[str, Any]]] = [
            (
                "token-issued",
                self.token_events,
                {
                    "token_ref": ref,
                    "token_type": "access_token",
                    "parent_token_ref": None,
                    "grant_type": "authorization_code",
                },
            ),
            ("token-issued", None, {"token_ref": token_ref(b"unrelated-1")}),
            ("token-introspected", self.token_events, {"token_ref": ref}),
            (
                "token-issued",
                self.tampered_events,
                {
                    "token_ref": other,
                    "parent_token_ref": None,
                    "token_type": "access_token",
                    "grant_type": "client_credentials",
                },
            ),
            ("token-refreshed", self.token_events, {"token_ref": refresh, "issued_token_ref": ref}),
            ("token-introspected", self.tampered_events, {"token_ref": other}),
            ("token-revoked", None, {"token_ref": token_ref(b"unrelated-2")}),
            ("token-revoked", self.token_events, {"token_ref": ref}),
        ]
        headers = {"authorization": f"Bearer {created.credential}"}
        async with httpx.AsyncClient(base_url=self.log_url, timeout=10.0) as client:
            for kind, bucket, changes in plan:
                clock.seconds += 90  # events a minute and a half apart: the chart has a slope
                event = sample_event(kind, **changes)
                signature = base64.b64encode(key.sign(signed_message(event))).decode("ascii")
                response = await client.post(
                    "/v1/events", json={"event": event, "signature": signature}, headers=headers
                )
                response.raise_for_status()
                index = int(response.json()["index"])
                if bucket is None:
                    self.other_indexes.append(index)
                else:
                    bucket.indexes[kind] = index
            size = service.tree_size
            await _until(
                lambda: (
                    service.published is not None and service.published.checkpoint.tree_size >= size
                ),
                30.0,
            )
        published = service.published
        assert published is not None
        self.published_size = published.checkpoint.tree_size


async def _record_fork(witness: Witness, forked: FakeLog) -> None:
    """Store same-size evidence against ``forked``'s origin: one size, two roots, both signed."""
    forked.append(4)
    honest = forked.checkpoint(4)
    other = forked.fork(2)
    other.append(2, tag=b"-other")
    lying = other.checkpoint(4)
    sides = [
        Observation(note, parse_checkpoint(parse_note(note).text), source)
        for note, source in ((honest, "stored"), (lying, "peer http://peer.example"))
    ]
    record = make_record(
        kind=KIND_SAME_SIZE,
        first=sides[0],
        second=sides[1],
        proof=[],
        reason="two checkpoints of size 4 with different root hashes",
        now_ms=int(time.time() * 1000),
        witness=witness.name,
    )
    await witness.record_evidence(record)


def _server(app: Any, port: int, *, lifespan: Literal["on", "off"]) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        lifespan=lifespan,
        log_level="warning",
        access_log=False,
    )
    return uvicorn.Server(config)


async def _until(condition: Callable[[], bool], within: float) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.05)
