"""Test doubles for the witness tests: an in-memory tlog-tiles log, its HTTP app, routing.

* :class:`FakeLog` is a real RFC 6962 tree kept as C2SP tiles (built with :mod:`merkle`),
  signing checkpoints with an Ed25519 note key. :meth:`FakeLog.fork` makes a second tree
  that shares a prefix and the key: the two are what a malicious log shows to different
  parties.
* :func:`log_app` serves one or more views of a log as tlog-tiles (``/<view>/checkpoint``,
  ``/<view>/tile/...``), so each witness can be configured with a different view URL.
* :class:`RoutingTransport` sends each host to its own ASGI app, so logs and witnesses talk
  to each other in process.
* :func:`in_process_witness` assembles a witness, its gossip and its Starlette app (lifespan
  entered) on a given storage.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from merkle.checkpoint import Checkpoint, format_checkpoint
from merkle.cosignature import CosignatureSigner
from merkle.errors import MalformedError
from merkle.hashing import leaf_hash
from merkle.note import Ed25519Signer, sign_note
from merkle.tiles import (
    ENTRIES_LEVEL,
    edge_tiles,
    extend_tiles,
    format_entry_bundle,
    node_hashes_from_tiles,
    parse_tile_path,
)
from merkle.tree import (
    build_consistency_proof,
    consistency_nodes,
    root_from_hashes,
    root_nodes,
)
from witness.config import LogConfig
from witness.core import Witness
from witness.gossip import Gossip
from witness.http import Components, create_app
from witness.metrics import WitnessMetrics
from witness.storage.base import WitnessStorage

__all__ = [
    "FakeLog",
    "InProcessWitness",
    "RoutingTransport",
    "add_checkpoint_body",
    "in_process_witness",
    "log_app",
]


class FakeLog:
    """An honest in-memory log: entries, tiles, and signed checkpoints of any past size."""

    def __init__(self, origin: str = "example.com/log", signer: Ed25519Signer | None = None):
        """Start an empty log with ``signer`` (a fresh key named ``origin`` by default)."""
        self.origin = origin
        self.signer = signer or Ed25519Signer.generate(origin)
        self.entries: list[bytes] = []
        self.tiles: dict[tuple[int, int], bytes] = {}
        self.published: bytes | None = None
        self.requests: list[str] = []
        self.missing_partials = False
        self.unavailable = False

    @property
    def size(self) -> int:
        """Current number of entries."""
        return len(self.entries)

    @property
    def vkey(self) -> str:
        """The log's Ed25519 vkey."""
        return self.signer.vkey

    def config(self, url: str | None = None, qpd: int | None = None) -> LogConfig:
        """The witness's configuration for this log."""
        return LogConfig(self.origin, (self.vkey,), url, qpd)

    def append(self, count: int, *, tag: bytes = b"") -> None:
        """Append ``count`` entries (``tag`` makes forks differ)."""
        self.extend([b"entry %d%s" % (self.size + i, tag) for i in range(count)])

    def extend(self, entries: Sequence[bytes]) -> None:
        """Append the given entries, updating the tiles."""
        edge = {t.level: self.tiles[(t.level, t.index)] for t in edge_tiles(self.size)}
        self.tiles.update(extend_tiles(self.size, edge, [leaf_hash(e) for e in entries]))
        self.entries.extend(entries)

    def root(self, size: int | None = None) -> bytes:
        """Root hash of the tree of ``size`` entries (default: all)."""
        size = self.size if size is None else size
        return root_from_hashes(node_hashes_from_tiles(root_nodes(size), self.tiles))

    def checkpoint(self, size: int | None = None, *, root: bytes | None = None) -> bytes:
        """Return a checkpoint note of ``size`` signed by the log (``root`` overrides)."""
        size = self.size if size is None else size
        text = format_checkpoint(Checkpoint(self.origin, size, root or self.root(size)))
        return sign_note(text, [self.signer])

    def publish(self) -> bytes:
        """Sign and serve the checkpoint of the current size; return it."""
        self.published = self.checkpoint()
        return self.published

    def consistency_proof(self, first: int, second: int | None = None) -> list[bytes]:
        """PROOF(first, D[second]) from the tiles."""
        second = self.size if second is None else second
        nodes = consistency_nodes(first, second)
        return build_consistency_proof(first, second, node_hashes_from_tiles(nodes, self.tiles))

    def fork(self, at: int) -> FakeLog:
        """Return a log with the same key and the first ``at`` entries of this one."""
        other = FakeLog(self.origin, self.signer)
        other.extend(self.entries[:at])
        return other

    def tile(self, path: str) -> bytes | None:
        """Serve ``tile/...`` as tlog-tiles would, or ``None`` for a 404."""
        try:
            tile = parse_tile_path(path)
        except MalformedError:
            return None
        if tile.level == ENTRIES_LEVEL:
            start = tile.index * 256
            if start + tile.width > self.size:
                return None
            return format_entry_bundle(self.entries[start : start + tile.width])
        content = self.tiles.get((tile.level, tile.index))
        if content is None or len(content) < tile.width * 32:
            return None
        if tile.is_partial and self.missing_partials:
            return None
        return content[: tile.width * 32]


def add_checkpoint_body(old: int, proof: Sequence[bytes], note: bytes) -> bytes:
    """Format a tlog-witness add-checkpoint request body."""
    import base64

    lines = [f"old {old}\n".encode()]
    lines += [base64.b64encode(h) + b"\n" for h in proof]
    return b"".join(lines) + b"\n" + note


def log_app(views: Mapping[str, FakeLog]) -> Starlette:
    """Serve each view as a tlog-tiles log under ``/<view>/`` (requests are recorded)."""

    async def checkpoint(request: Request) -> Response:
        log = views.get(request.path_params["view"])
        if log is None or log.published is None:
            return Response(b"not found\n", 404)
        log.requests.append("checkpoint")
        if log.unavailable:
            return Response(b"down\n", 503)
        return Response(log.published, media_type="text/plain; charset=utf-8")

    async def tile(request: Request) -> Response:
        log = views.get(request.path_params["view"])
        path = "tile/" + request.path_params["path"]
        if log is None:
            return Response(b"not found\n", 404)
        log.requests.append(path)
        if log.unavailable:
            return Response(b"down\n", 503)
        data = log.tile(path)
        if data is None:
            return Response(b"not found\n", 404)
        return Response(data, media_type="application/octet-stream")

    return Starlette(
        routes=[
            Route("/{view}/checkpoint", checkpoint),
            Route("/{view}/tile/{path:path}", tile),
        ]
    )


class RoutingTransport(httpx.AsyncBaseTransport):
    """An httpx transport that hands each request to the ASGI app registered for its host."""

    def __init__(self, apps: Mapping[str, Starlette] | None = None) -> None:
        """Route ``host -> app``; add more with :meth:`add`."""
        self._transports: dict[str, httpx.ASGITransport] = {}
        for host, app in (apps or {}).items():
            self.add(host, app)

    def add(self, host: str, app: Starlette) -> None:
        """Serve ``http://<host>/...`` with ``app``."""
        self._transports[host] = httpx.ASGITransport(app=app)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Dispatch by host; unknown hosts fail like an unreachable server."""
        transport = self._transports.get(request.url.host)
        if transport is None:
            raise httpx.ConnectError(f"no route to {request.url.host}", request=request)
        return await transport.handle_async_request(request)


@dataclass
class InProcessWitness:
    """A witness assembled in process: core, gossip, app, and a client bound to the app."""

    witness: Witness
    gossip: Gossip
    app: Starlette
    client: httpx.AsyncClient
    clock: list[float] = field(default_factory=lambda: [1_767_225_600.0])


@contextlib.asynccontextmanager
async def in_process_witness(
    storage: WitnessStorage,
    logs: Sequence[LogConfig],
    *,
    name: str = "witness.example/w1",
    signer: CosignatureSigner | None = None,
    http: httpx.AsyncClient | None = None,
    peers: tuple[str, ...] = (),
    poll_interval: float = 60.0,
    run_gossip: bool = False,
    max_body_bytes: int = 64 * 1024,
    rate_per_second: float = 1000.0,
    rate_burst: int = 1000,
) -> AsyncIterator[InProcessWitness]:
    """Build a witness on ``storage`` and enter its app's lifespan; yield the handles.

    ``http`` is the client gossip uses to reach logs and peers (default: one that reaches
    nothing). The yielded ``client`` talks to this witness's app.
    """
    clock = [1_767_225_600.0]
    witness = Witness(
        logs=logs,
        signer=signer or CosignatureSigner.generate(name),
        storage=storage,
        metrics=WitnessMetrics(),
        clock=lambda: clock[0],
        rate_per_second=rate_per_second,
        rate_burst=rate_burst,
    )
    outbound = http or httpx.AsyncClient(transport=RoutingTransport())
    gossip = Gossip(witness, outbound, peers=peers, poll_interval=poll_interval, fetch_timeout=5.0)

    @contextlib.asynccontextmanager
    async def components() -> AsyncIterator[Components]:
        yield Components(witness, gossip, max_body_bytes, run_gossip)

    app = create_app(components)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://witness"
        ) as client,
    ):
        yield InProcessWitness(witness, gossip, app, client, clock)
    if http is None:
        await outbound.aclose()


def origin_hash(origin: str) -> str:
    """Lowercase hex SHA-256 of an origin (the monitoring path segment)."""
    return hashlib.sha256(origin.encode()).hexdigest()
