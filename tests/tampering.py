"""A log that lies on demand, for the client's tests: C2SP tlog-tiles over a real RFC 6962 tree.

:class:`TamperingLog` keeps entries, their tiles (built with :mod:`merkle`), an Ed25519 log key
and Ed25519 cosigning witnesses, and serves ``/checkpoint``, ``/tile/...``, ``/tile/entries/...``
and ``GET /v1/lookup`` from :meth:`TamperingLog.app`. Its knobs make it misbehave the ways a
client must notice:

* ``tile_overrides``: serve other bytes for a tile path (a modified tile);
* ``entry_overrides``: serve another entry at an index inside its bundle (a modified entry);
* ``note``: the checkpoint served, set by :meth:`publish` (any size, any signer, any number of
  cosignatures: a rolled-back checkpoint, one signed by an unknown key, a quorum short by one);
* :meth:`fork`: a second log with the same key sharing a prefix (a forked checkpoint);
* ``lookup_lies``: extra indexes answered by the lookup (a lying index);
* ``unavailable``: paths answered 503 (an outage in the middle of a read).

:func:`event_leaf` builds Etch event leaves (``server.leaves`` format) with a real submitter
signature; :class:`ServedApp` serves an app on a real uvicorn in a thread, for the CLI tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from client.cbor import decode_deterministic, encode_deterministic
from client.logclient import TOKEN_REF_FIELDS, subject_key
from merkle.checkpoint import Checkpoint, format_checkpoint
from merkle.compact import CompactRange
from merkle.cosignature import CosignatureSigner
from merkle.errors import MalformedError
from merkle.hashing import leaf_hash
from merkle.note import Ed25519Signer, Signer, add_signatures, sign_note
from merkle.tiles import (
    ENTRIES_LEVEL,
    TILE_HEIGHT,
    TILE_WIDTH,
    edge_tiles,
    extend_tiles,
    format_entry_bundle,
    parse_tile_path,
)
from tests.server_helpers import free_port

__all__ = [
    "ORIGIN",
    "ServedApp",
    "TamperingLog",
    "event_leaf",
    "submitter_key",
]

ORIGIN = "tamper.example/log"
SUBMITTER_KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"tests submitter").digest())


def submitter_key() -> Ed25519PrivateKey:
    """The fixed submitter key the leaves of these tests are signed with."""
    return SUBMITTER_KEY


def event_leaf(
    event: Mapping[str, Any], *, log_time: int, submitter: str = "as-test"
) -> bytes:
    """Return an Etch event leaf for ``event`` (deterministic CBOR, submitter signature)."""
    event_bytes = encode_deterministic(dict(event))
    signature = SUBMITTER_KEY.sign(b"etch/event/v1\x00" + event_bytes)
    return encode_deterministic(
        {
            "v": 1,
            "submitter": submitter,
            "event": dict(event),
            "signature": signature,
            "log_time": log_time,
        }
    )


class TamperingLog:
    """An in-memory tlog-tiles log with witnesses, whose answers can be tampered with."""

    def __init__(
        self,
        origin: str = ORIGIN,
        *,
        witnesses: int = 2,
        signer: Ed25519Signer | None = None,
        cosigners: Sequence[CosignatureSigner] | None = None,
    ) -> None:
        self.origin = origin
        self.signer = signer or Ed25519Signer.generate(origin)
        self.witnesses = list(
            cosigners
            if cosigners is not None
            else [CosignatureSigner.generate(f"w{i}.example/witness") for i in range(witnesses)]
        )
        self.entries: list[bytes] = []
        self.leaf_hashes: list[bytes] = []
        self.tiles: dict[tuple[int, int], bytes] = {}
        self.note = b""
        self.tile_overrides: dict[str, bytes] = {}
        self.entry_overrides: dict[int, bytes] = {}
        self.lookup_lies: dict[str, list[int]] = {}
        self.unavailable: set[str] = set()
        self.requests: list[str] = []
        self.cosign_time = 1_767_225_600
        self.publish()

    # -- the tree ------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Number of entries appended."""
        return len(self.entries)

    @property
    def vkey(self) -> str:
        """The log's verifier key."""
        return self.signer.vkey

    def append(self, entries: Sequence[bytes]) -> None:
        """Append entries, updating the tiles as a log does."""
        hashes = [leaf_hash(e) for e in entries]
        edge = {t.level: self.tiles[(t.level, t.index)] for t in edge_tiles(self.size)}
        self.tiles.update(extend_tiles(self.size, edge, hashes))
        self.entries += entries
        self.leaf_hashes += hashes

    def append_events(self, events: Sequence[Mapping[str, Any]], *, start_ms: int = 0) -> None:
        """Append event leaves, one millisecond of log time apart from ``start_ms``."""
        base = start_ms or 1_767_225_600_000 + self.size * 1000
        self.append([event_leaf(e, log_time=base + i) for i, e in enumerate(events)])

    def root(self, size: int | None = None) -> bytes:
        """The RFC 6962 root of the first ``size`` entries."""
        compact = CompactRange()
        compact.extend(self.leaf_hashes[: self.size if size is None else size])
        return compact.root()

    def sign(
        self,
        size: int | None = None,
        *,
        cosigners: int | None = None,
        signer: Signer | None = None,
        root: bytes | None = None,
    ) -> bytes:
        """Return a checkpoint note for ``size`` signed by the log (or ``signer``) and cosigned
        by the first ``cosigners`` witnesses (default all)."""
        size = self.size if size is None else size
        text = format_checkpoint(Checkpoint(self.origin, size, root or self.root(size)))
        note = sign_note(text, [signer or self.signer])
        count = len(self.witnesses) if cosigners is None else cosigners
        cosigning = [w.signer_at(self.cosign_time) for w in self.witnesses[:count]]
        return add_signatures(note, cosigning) if cosigning else note

    def publish(self, size: int | None = None, **options: Any) -> bytes:
        """Serve a new checkpoint (see :meth:`sign`) and return it."""
        self.note = self.sign(size, **options)
        return self.note

    def policy(self, quorum: int | None = None) -> str:
        """Return a tlog-policy text: this log, its witnesses, ``quorum`` of them (default all)."""
        lines = [f"log {self.vkey}"]
        lines += [f"witness w{i} {w.vkey}" for i, w in enumerate(self.witnesses)]
        if not self.witnesses:
            return "\n".join([*lines, "quorum none"]) + "\n"
        count = len(self.witnesses) if quorum is None else quorum
        names = " ".join(f"w{i}" for i in range(len(self.witnesses)))
        lines += [f"group all-witnesses {count} {names}", "quorum all-witnesses"]
        return "\n".join(lines) + "\n"

    def fork(self, at: int) -> TamperingLog:
        """Return a log with the same keys and the first ``at`` entries (then diverging)."""
        other = TamperingLog(self.origin, signer=self.signer, cosigners=self.witnesses)
        other.append(self.entries[:at])
        other.cosign_time = self.cosign_time
        return other

    # -- serving -------------------------------------------------------------------------------

    def tile_bytes(self, path: str) -> bytes | None:
        """Return what this log serves at ``path`` (tampering included), or None for 404."""
        if path in self.tile_overrides:
            return self.tile_overrides[path]
        try:
            tile = parse_tile_path(path)
        except MalformedError:
            return None
        if tile.level == ENTRIES_LEVEL:
            start = tile.index * TILE_WIDTH
            if start + tile.width > self.size:
                return None
            entries = [
                self.entry_overrides.get(i, self.entries[i])
                for i in range(start, start + tile.width)
            ]
            return format_entry_bundle(entries)
        count = self.size >> (TILE_HEIGHT * tile.level)
        if count - tile.index * TILE_WIDTH < tile.width:
            return None
        return self.tiles[(tile.level, tile.index)][: tile.width * 32]

    def _lookup(self, params: Mapping[str, str]) -> list[int]:
        found = []
        for index, entry in enumerate(self.entries):
            value = decode_deterministic(entry)
            if not isinstance(value, dict) or not isinstance(value.get("event"), dict):
                continue
            event = value["event"]
            log_time = value.get("log_time", 0)
            if "since" in params and log_time < int(params["since"]):
                continue
            if "until" in params and log_time >= int(params["until"]):
                continue
            if "token_ref" in params:
                hit = any(event.get(name) == params["token_ref"] for name in TOKEN_REF_FIELDS)
            elif "subject" in params:
                hit = subject_key(event.get("sub")) == params["subject"]
            else:
                kind = next(k for k in ("client_id", "type") if k in params)
                hit = event.get(kind) == params[kind]
            if hit:
                found.append(index)
        for kind, value in params.items():
            found += self.lookup_lies.get(f"{kind}={value}", [])
        return sorted(set(found))

    def app(self) -> Starlette:
        """Return the Starlette app serving this log (reads the knobs on every request)."""

        async def checkpoint(request: Request) -> Response:
            self.requests.append("checkpoint")
            if "checkpoint" in self.unavailable:
                return Response(b"down", status_code=503)
            return Response(self.note, media_type="text/plain; charset=utf-8")

        async def tile(request: Request) -> Response:
            path = "tile/" + request.path_params["path"]
            self.requests.append(path)
            if path in self.unavailable:
                return Response(b"down", status_code=503)
            data = self.tile_bytes(path)
            if data is None:
                return Response(b"not found", status_code=404)
            return Response(data, media_type="application/octet-stream")

        async def lookup(request: Request) -> Response:
            params = dict(request.query_params)
            self.requests.append("lookup")
            wanted = ("token_ref", "client_id", "subject", "type", "since", "until")
            indexes = self._lookup({k: v for k, v in params.items() if k in wanted})
            after = int(params.get("after", "-1"))
            limit = int(params.get("limit", "100"))
            page = [i for i in indexes if i > after][:limit]
            results = [
                {"index": i, "leaf_hash": "", "log_time": 0} for i in page
            ]
            more = len([i for i in indexes if i > after]) > limit
            return JSONResponse({"results": results, "next": page[-1] if more else None})

        return Starlette(
            routes=[
                Route("/checkpoint", checkpoint),
                Route("/tile/{path:path}", tile),
                Route("/v1/lookup", lookup),
            ]
        )


class ServedApp:
    """A Starlette app on a real uvicorn server in a background thread (127.0.0.1)."""

    def __init__(self, app: Starlette | Callable[[Any, Any, Any], Awaitable[None]]) -> None:
        self.app = app
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start serving; returns once the server accepts connections."""
        self.port = free_port()
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise AssertionError("the test server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        """Stop the server and wait for its thread."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)


@contextlib.contextmanager
def served(app: Starlette) -> Iterator[ServedApp]:
    """Serve ``app`` on a real uvicorn for the duration of the block."""
    server = ServedApp(app)
    server.start()
    try:
        yield server
    finally:
        server.stop()
