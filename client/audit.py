"""``etch audit``: download every tile and entry of a log and recompute every hash and the root.

The audit trusts nothing but the checkpoint it verified (log signature and witness quorum, and
consistency with the trusted state, :meth:`client.logclient.LogClient.update`):

1. every checkpoint it can see is checked for consistency with the audited one, by proofs
   built from tiles: the trusted state's, the previous audit's, the latest checkpoint each
   policy witness with a URL cosigned (its monitoring endpoint, C2SP tlog-witness
   ``<url>/<hex SHA-256(origin)>/checkpoint``) and any given on the command line;
2. for every level-0 tile, in order: the entry bundle and the tile are fetched, each entry's
   leaf hash is recomputed (RFC 6962 §2.1) and must equal the tile's hash; the root of each
   full tile is appended to the level above, and every tile of every level is compared with
   these recomputed hashes when it is complete (partial tiles at the end);
3. the root is folded from the recomputed right edge and must equal the checkpoint's.

The work is the same hashing as a bare recomputation (one leaf hash per entry, one node hash
per inner node), plus fetching. With a ``lean_http`` client the full level-0 tiles and their
bundles are read in order over a few keep-alive connections with HTTP/1.1 pipelining
(:meth:`client.logclient.LogClient.bulk_reader`): the log prepares the next answers while the
client hashes, and the client spends little CPU per request (no task, no timer, one write per
batch of requests); each bundle is parsed and hashed in one pass, its leaf hashes compared
with the served tile in one comparison and paired up into the tile's root.

Any difference raises a :class:`client.errors.LogMisbehaviour` with evidence: a tile that
differs from the recomputation is a :class:`TileMismatchError`, an entry whose hash differs
from a tile leaf that is included under the signed root an :class:`EntryMismatchError`.

Resumable: after each run of full level-0 tiles the progress (the audited checkpoint, the next
tile and the partial upper levels, at most 255 hashes per level) is written atomically to the
audit state file. A later audit resumes there after proving the new checkpoint consistent with
the one the progress belongs to (full tiles never change), so a second audit of a grown log only
reads what is new.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx

from client.errors import ClientError, ConfigurationError, LogResponseError, StateError
from client.logclient import LogClient, VerifiedCheckpoint, atomic_write
from client.tlogtiles import MAX_BUNDLE_BYTES
from merkle.checkpoint import open_checkpoint
from merkle.errors import MerkleError, ProofError
from merkle.hashing import EMPTY_ROOT, HASH_SIZE
from merkle.note import parse_verifier
from merkle.tiles import (
    ENTRIES_LEVEL,
    TILE_HEIGHT,
    TILE_WIDTH,
    Tile,
    format_tile_path,
    node_hashes_from_tiles,
    parse_entry_bundle,
)
from merkle.tree import Node, root_from_hashes, root_nodes, verify_inclusion

__all__ = [
    "AUDIT_STATE_FORMAT",
    "AuditProgress",
    "AuditReport",
    "Auditor",
    "CheckpointCheck",
]

AUDIT_STATE_FORMAT: Final = "etch-audit-state/v1"
"""Value of ``format`` in the audit's progress file."""

_TILE_BYTES: Final = TILE_WIDTH * HASH_SIZE
_sha256 = hashlib.sha256


@dataclass(frozen=True, slots=True)
class CheckpointCheck:
    """One checkpoint the audit compared with the audited one, and what it found."""

    source: str
    tree_size: int | None
    status: str


@dataclass(frozen=True, slots=True)
class AuditProgress:
    """Progress of a running audit: entries verified of the total, rate and time left."""

    done: int
    total: int
    elapsed: float
    rate: float
    eta: float | None


@dataclass(frozen=True, slots=True)
class AuditReport:
    """The result of a complete audit: the verified checkpoint and what was read."""

    checkpoint: VerifiedCheckpoint
    entries: int
    tiles: int
    resumed_from: int
    elapsed: float
    checkpoints: tuple[CheckpointCheck, ...] = field(default_factory=tuple)

    @property
    def rate(self) -> float:
        """Entries verified per second in this run."""
        done = self.checkpoint.tree_size - self.resumed_from
        return done / self.elapsed if self.elapsed else 0.0


def _pair_level(hashes: list[bytes]) -> list[bytes]:
    sha = _sha256
    return [sha(b"\x01" + hashes[i] + hashes[i + 1]).digest() for i in range(0, len(hashes), 2)]


def _tile_root(hashes: list[bytes]) -> bytes:
    """Return the root of a full tile: 256 hashes, paired level by level (255 node hashes)."""
    while len(hashes) > 1:
        hashes = _pair_level(hashes)
    return hashes[0]


def bundle_leaf_hashes(data: bytes, count: int) -> list[bytes] | None:
    """Return the RFC 6962 leaf hashes of the entries of an entry bundle, parsing it strictly.

    One pass over C2SP tlog-tiles "uint16 length || entry" records, hashing as it goes (the
    audit's inner loop). Returns ``None`` if the bundle is truncated, empty, or does not hold
    exactly ``count`` entries.
    """
    sha = _sha256
    hashes: list[bytes] = []
    append = hashes.append
    at, end = 0, len(data)
    while at < end:
        if at + 2 > end:
            return None
        start = at + 2
        at = start + ((data[at] << 8) | data[at + 1])
        if at > end:
            return None
        append(sha(b"\x00" + data[start:at]).digest())
    return hashes if len(hashes) == count and count > 0 else None


def _split(data: bytes) -> list[bytes]:
    return [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)]


@dataclass
class _Progress:
    """What has been verified: full level-0 tiles before ``next_tile`` and the upper edges."""

    note: bytes
    next_tile: int
    levels: list[list[bytes]]  # levels[k]: recomputed hashes of the open tile at level k + 1


class Auditor:
    """Audits one log completely with a :class:`LogClient`.

    ``state_path`` keeps the progress (``None``: no resumption), written about every
    ``save_every`` seconds; ``progress`` is called about every ``progress_every`` seconds;
    ``checkpoints`` are extra ``(source, note)`` pairs to check; ``window`` is how many
    level-0 tiles are fetched ahead; ``witnesses`` asks the policy's witnesses for theirs.
    With a ``lean_http`` client the full level-0 tiles and bundles are read in order over
    ``connections`` keep-alive connections with up to ``pipeline`` requests in flight on each
    (:meth:`LogClient.bulk_reader`; ``pipeline=1``: no HTTP pipelining); otherwise, and for
    the partial tile at the end, each tile is one request, ``window`` of them at a time.
    """

    def __init__(
        self,
        client: LogClient,
        state_path: Path | None = None,
        *,
        progress: Callable[[AuditProgress], None] = lambda p: None,
        progress_every: float = 0.5,
        checkpoints: Sequence[tuple[str, bytes]] = (),
        window: int = 16,
        witnesses: bool = True,
        save_every: float = 2.0,
        connections: int = 2,
        pipeline: int = 8,
    ) -> None:
        """Prepare an audit; nothing is fetched yet. Raises ConfigurationError."""
        if window < 1:
            raise ConfigurationError("the fetch window must be at least 1 tile")
        if connections < 1 or pipeline < 1:
            raise ConfigurationError("connections and pipeline depth must be at least 1")
        self.connections = connections
        self.pipeline = pipeline
        self._marks = [0.0, 0.0]
        self.client = client
        self.state_path = state_path
        self.progress = progress
        self.progress_every = progress_every
        self.extra = tuple(checkpoints)
        self.window = window
        self.witnesses = witnesses
        self.save_every = save_every
        self.tiles_read = 0

    # -- progress file --------------------------------------------------------------------------

    def _load(self, origin: str, vkey: str) -> _Progress | None:
        if self.state_path is None:
            return None
        try:
            data = self.state_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read audit state {self.state_path}: {exc}") from None
        try:
            document = json.loads(data.decode("utf-8"))
            if not isinstance(document, dict) or document.get("format") != AUDIT_STATE_FORMAT:
                raise ValueError("not an audit state")
            if document["origin"] != origin or document["vkey"] != vkey:
                return None
            note = str(document["checkpoint"]).encode("utf-8")
            checkpoint, _, _ = open_checkpoint(note, parse_verifier(vkey))
            next_tile = document["next_tile"]
            levels = [
                _split(base64.b64decode(str(text), validate=True)) for text in document["levels"]
            ]
        except (ValueError, KeyError, TypeError, MerkleError, binascii.Error) as exc:
            raise StateError(f"audit state {self.state_path} is unusable: {exc}") from None
        if type(next_tile) is not int or not 0 <= next_tile * TILE_WIDTH <= checkpoint.tree_size:
            raise StateError(f"audit state {self.state_path} has an invalid next tile")
        expected: list[int] = []
        while next_tile >> (TILE_HEIGHT * len(expected)):
            expected.append((next_tile >> (TILE_HEIGHT * len(expected))) % TILE_WIDTH)
        counts = [len(level) for level in levels]
        if counts[: len(expected)] != expected or any(counts[len(expected) :]):
            raise StateError(f"audit state {self.state_path} has malformed upper levels")
        return _Progress(note, next_tile, levels[: len(expected)])

    def _save(self, origin: str, vkey: str, progress: _Progress) -> None:
        if self.state_path is None:
            return
        document: dict[str, Any] = {
            "format": AUDIT_STATE_FORMAT,
            "origin": origin,
            "vkey": vkey,
            "checkpoint": progress.note.decode("utf-8"),
            "next_tile": progress.next_tile,
            "levels": [
                base64.b64encode(b"".join(level)).decode("ascii") for level in progress.levels
            ],
        }
        data = (json.dumps(document, separators=(",", ":")) + "\n").encode("utf-8")
        try:
            self.state_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write(self.state_path, data, 0o600)
        except OSError as exc:
            raise StateError(f"cannot write audit state {self.state_path}: {exc}") from None

    # -- the audit ------------------------------------------------------------------------------

    async def run(self) -> AuditReport:
        """Audit the log up to its current checkpoint; return the report.

        Raises LogMisbehaviour (evidence written), UntrustedCheckpointError,
        LogUnavailableError, LogResponseError, StateError.
        """
        started = time.monotonic()
        update = await self.client.update()
        target = update.current
        origin, vkey = target.origin, self.client.log_vkey(target.origin)
        checks: list[CheckpointCheck] = []
        if update.previous is not None:
            checks.append(
                CheckpointCheck("trusted state", update.previous.tree_size, "consistent")
            )
        progress = self._load(origin, vkey)
        resumed_from = 0
        if progress is not None:
            previous = self.client.known_checkpoint(progress.note)
            await self.client.check_consistency(
                previous, target, ("previous audit", f"GET {self.client.url}/checkpoint")
            )
            checks.append(CheckpointCheck("previous audit", previous.tree_size, "consistent"))
            resumed_from = progress.next_tile * TILE_WIDTH
        checks += await self._check_seen(target)
        if progress is None:
            progress = _Progress(target.note, 0, [])
        progress.note = target.note
        await self._stream(target, progress, origin, vkey, started, resumed_from)
        return AuditReport(
            target,
            target.tree_size,
            self.tiles_read,
            resumed_from,
            time.monotonic() - started,
            tuple(checks),
        )

    async def _check_seen(self, target: VerifiedCheckpoint) -> list[CheckpointCheck]:
        """Check the extra and the witnesses' checkpoints against ``target``."""
        seen = list(self.extra)
        if self.witnesses:
            seen += await self._witness_checkpoints(target.origin)
        checks = []
        for source, note in seen:
            try:
                other = self.client.known_checkpoint(note)
            except StateError as exc:
                checks.append(CheckpointCheck(source, None, f"ignored: {exc}"))
                continue
            if other.origin != target.origin:
                checks.append(CheckpointCheck(source, other.tree_size, "ignored: other origin"))
                continue
            here = f"GET {self.client.url}/checkpoint"
            if other.tree_size <= target.tree_size:
                await self.client.check_consistency(other, target, (source, here))
            else:
                await self.client.check_consistency(target, other, (here, source))
            checks.append(CheckpointCheck(source, other.tree_size, "consistent"))
        return checks

    async def _witness_checkpoints(self, origin: str) -> list[tuple[str, bytes]]:
        """Fetch the latest checkpoint each policy witness with a URL cosigned (best effort)."""
        digest = hashlib.sha256(origin.encode("utf-8")).hexdigest()
        found = []
        for witness in self.client.policy.witnesses:
            if witness.url is None:
                continue
            url = f"{witness.url.rstrip('/')}/{digest}/checkpoint"
            try:
                response = await self.client.http.get(url)
            except httpx.HTTPError:
                continue
            if response.status_code == 200 and len(response.content) <= 64 * 1024:
                found.append((f"witness {witness.name} ({url})", response.content))
        return found

    async def _fetch_tile0(self, index: int, width: int, size: int) -> tuple[bytes, bytes]:
        # One after the other: the window of tasks already keeps the log busy, and two more
        # tasks per tile would cost the client more than they save.
        bundle = await self.client.bundle_bytes(index, size)
        return bundle, await self._fetch_hash_tile(Tile(0, index, width))

    async def _fetch_hash_tile(self, tile: Tile) -> bytes:
        data = await self.client.hash_tile(tile)
        self.tiles_read += 1
        return data

    async def _stream(
        self,
        target: VerifiedCheckpoint,
        progress: _Progress,
        origin: str,
        vkey: str,
        started: float,
        resumed_from: int,
    ) -> None:
        size = target.tree_size
        count = -(-size // TILE_WIDTH)
        full = size // TILE_WIDTH
        self._marks = [time.monotonic(), time.monotonic()]
        state = (origin, vkey, started, resumed_from)
        first = progress.next_tile
        reader = None
        if first < full:
            paths, limits = [], []
            for index in range(first, full):
                paths += [
                    format_tile_path(Tile(ENTRIES_LEVEL, index)),
                    format_tile_path(Tile(0, index)),
                ]
                limits += [MAX_BUNDLE_BYTES, _TILE_BYTES]
            reader = self.client.bulk_reader(
                paths,
                limits,
                connections=self.connections,
                depth=self.pipeline,
                window=2 * self.window,
            )
        if reader is not None:
            async with reader:
                next_ = reader.next
                for index in range(first, full):
                    bundle = await next_()
                    served = await next_()
                    self.tiles_read += 2
                    await self._verify_tile0(target, progress, index, bundle, served, state)
                    # Let the event loop read the connections and send the next requests.
                    await asyncio.sleep(0)
            first = full
        await self._stream_tasks(target, progress, first, count, state)
        if size % TILE_WIDTH == 0:
            await self._finish(target, progress, [])
        self._save(origin, vkey, progress)
        self._report(size, size, started, resumed_from)

    async def _stream_tasks(
        self,
        target: VerifiedCheckpoint,
        progress: _Progress,
        first: int,
        count: int,
        state: tuple[str, str, float, int],
    ) -> None:
        """Fetch and verify level-0 tiles ``first`` to ``count - 1``, ``window`` at a time."""
        size = target.tree_size
        pending: collections.deque[asyncio.Task[tuple[bytes, bytes]]] = collections.deque()
        next_fetch = first
        try:
            for index in range(first, count):
                while next_fetch < count and len(pending) < self.window:
                    width = min(TILE_WIDTH, size - next_fetch * TILE_WIDTH)
                    pending.append(
                        asyncio.ensure_future(self._fetch_tile0(next_fetch, width, size))
                    )
                    next_fetch += 1
                bundle, served = await pending.popleft()
                self.tiles_read += 1
                await self._verify_tile0(target, progress, index, bundle, served, state)
        finally:
            for task in pending:
                task.cancel()

    async def _verify_tile0(
        self,
        target: VerifiedCheckpoint,
        progress: _Progress,
        index: int,
        bundle: bytes,
        served: bytes,
        state: tuple[str, str, float, int],
    ) -> None:
        """Check level-0 tile ``index`` against its entry bundle and carry its root upwards.

        Every entry is hashed (RFC 6962 §2.1 leaf hash) and the leaf hashes must be the tile
        as served; a full tile's root goes to the level above (:meth:`_push`), a partial one
        ends the tree (:meth:`_finish`). Raises LogResponseError for a malformed bundle,
        LogMisbehaviour for a mismatch.
        """
        size = target.tree_size
        width = min(TILE_WIDTH, size - index * TILE_WIDTH)
        hashes = bundle_leaf_hashes(bundle, width)
        if hashes is None:
            raise LogResponseError(
                f"entry bundle {index} is malformed or does not hold {width} entries"
            )
        computed = b"".join(hashes)
        if computed != served:
            entries = parse_entry_bundle(bundle)
            await self._leaf_mismatch(target, index, entries, served, computed)
        if width == TILE_WIDTH:
            await self._push(target, progress, 0, _tile_root(hashes))
            progress.next_tile = index + 1
        else:
            await self._finish(target, progress, hashes)
        now = time.monotonic()
        marks = self._marks
        origin, vkey, started, resumed_from = state
        if now - marks[0] >= self.save_every and width == TILE_WIDTH:
            self._save(origin, vkey, progress)
            marks[0] = now
        if now - marks[1] >= self.progress_every:
            self._report(min(size, (index + 1) * TILE_WIDTH), size, started, resumed_from)
            marks[1] = now

    def _report(self, done: int, total: int, started: float, resumed_from: int) -> None:
        elapsed = time.monotonic() - started
        rate = (done - resumed_from) / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else None
        self.progress(AuditProgress(done, total, elapsed, rate, eta))

    async def _push(
        self, target: VerifiedCheckpoint, progress: _Progress, level: int, value: bytes
    ) -> None:
        """Append a full tile's root (of tile level ``level``) to the level above."""
        levels = progress.levels
        while True:
            if len(levels) <= level:
                levels.append([])
            above = levels[level]
            above.append(value)
            if len(above) < TILE_WIDTH:
                return
            tile_level = level + 1
            tile_index = self._open_tile_index(progress, tile_level)
            served = await self._fetch_hash_tile(Tile(tile_level, tile_index))
            computed = b"".join(above)
            if served != computed:
                raise self.client.tile_mismatch(
                    target,
                    tile=format_tile_path(Tile(tile_level, tile_index)),
                    served=served,
                    computed=computed,
                    checked="the tile against the roots of the tiles below it, recomputed "
                    "from the entries",
                )
            value = _tile_root(above)
            levels[level] = []
            level += 1

    @staticmethod
    def _open_tile_index(progress: _Progress, tile_level: int) -> int:
        """Index of the tile of ``tile_level`` being filled while level-0 tile
        ``progress.next_tile`` (not yet counted) completes."""
        return progress.next_tile >> (TILE_HEIGHT * tile_level)

    async def _finish(
        self, target: VerifiedCheckpoint, progress: _Progress, partial: list[bytes]
    ) -> None:
        """Compare the partial tiles of every level and fold the root (end of the tree)."""
        size = target.tree_size
        edges: dict[tuple[int, int], bytes] = {}
        if partial:
            edges[(0, size // TILE_WIDTH)] = b"".join(partial)
        for number, level in enumerate(progress.levels, 1):
            if not level:
                continue
            tile = Tile(number, (size >> (TILE_HEIGHT * number)) // TILE_WIDTH, len(level))
            served = await self._fetch_hash_tile(tile)
            computed = b"".join(level)
            if served != computed:
                raise self.client.tile_mismatch(
                    target,
                    tile=format_tile_path(tile),
                    served=served,
                    computed=computed,
                    checked="the partial tile against the roots of the tiles below it, "
                    "recomputed from the entries",
                )
            edges[(tile.level, tile.index)] = computed
        nodes: list[Node] = root_nodes(size)
        root = root_from_hashes(node_hashes_from_tiles(nodes, edges)) if nodes else EMPTY_ROOT
        if root != target.root_hash:
            raise self.client.tile_mismatch(
                target,
                tile="root",
                served=target.root_hash,
                computed=root,
                checked="the signed root against the root recomputed from every entry",
            )

    async def _leaf_mismatch(
        self,
        target: VerifiedCheckpoint,
        tile_index: int,
        entries: list[bytes],
        served: bytes,
        computed: bytes,
    ) -> None:
        """Decide whether the entry or the level-0 tile is wrong; raise with evidence."""
        base = tile_index * TILE_WIDTH
        offset = next(
            (
                i
                for i in range(len(entries))
                if served[i * HASH_SIZE : (i + 1) * HASH_SIZE]
                != computed[i * HASH_SIZE : (i + 1) * HASH_SIZE]
            ),
            0,
        )
        index = base + offset
        tile_leaf = served[offset * HASH_SIZE : (offset + 1) * HASH_SIZE]
        try:
            proof = await self.client.inclusion_proof(index, target.tree_size)
            verify_inclusion(tile_leaf, index, target.tree_size, proof, target.root_hash)
        except (ProofError, ClientError):
            raise self.client.tile_mismatch(
                target,
                tile=format_tile_path(Tile(0, tile_index, len(entries))),
                served=served,
                computed=computed,
                checked="the level-0 tile against the leaf hashes of its entry bundle",
            ) from None
        raise self.client.entry_mismatch(index, entries[offset], tile_leaf, proof, target)

