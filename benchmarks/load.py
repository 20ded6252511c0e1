"""Load generator for the log: submissions and reads, at a set rate or flat out, verified.

Run from the project root::

    .venv/bin/python -m benchmarks.load --url http://127.0.0.1:8080
        --mode submit|batch|proof|tile|mixed|post|get --concurrency 64 --duration 30
        [--rate R] [--warmup 3] [--processes 1] [--batch-events 1000] [--event-bytes 300]
        [--mix submit=1,proof=6,tile=3] [--verify [--vkey VKEY | --data-dir DIR]
        [--verify-after]] [--json]

Modes (each request is one HTTP/1.1 exchange on a keep-alive connection; ``--concurrency``
requests are in flight at once, split over ``--processes``; the client is the lean one of
:mod:`benchmarks.http11`, or ``httpx`` with ``--client httpx``):

* ``submit``: ``POST /v1/events``, one new JSON event per request, waiting for its receipt;
* ``batch``: ``POST /v1/events/batch``, ``--batch-events`` new events per request;
* ``proof``: ``GET /v1/proof/inclusion?index=I&tree_size=N``, ``I`` uniformly random below
  the size ``N`` of the checkpoint read at start;
* ``tile``: ``GET /tile/0/<K>``, a uniformly random *full* level-0 tile of that tree;
* ``mixed``: the three above, drawn per request with the weights of ``--mix``;
* ``post`` and ``get``: the same requests as ``submit`` (same event bodies) and a bare GET,
  sent to ``--path`` (default ``/post`` and ``/get``) of a baseline app
  (:mod:`benchmarks.baseline_app`); answers are parsed but there is nothing to verify.

Every event is unique (a random run id, the process, the worker and a counter), so the log never
answers a duplicate. Without ``--rate`` every worker sends its next request as soon as the last
answer arrived (closed loop, flat out). With ``--rate R`` requests are scheduled at ``R`` per
second in total (open loop) and each latency is measured from the request's *scheduled* time,
so a server that falls behind shows in the percentiles instead of slowing the load down.
Requests answered in the first ``--warmup`` seconds are not counted; the report covers the
``--duration`` seconds after that.

``--verify`` checks every answer against the log's public key (``--vkey``, or the ``log.vkey``
file of ``--data-dir``):

* each receipt: the tlog-proof text parses strictly; its checkpoint is signed by the log's key
  (C2SP signed-note; each distinct note is verified once and remembered); its index, proof and
  checkpoint equal the JSON fields; the leaf hash is SHA-256(0x00 || the deterministic CBOR
  encoding of the event that was sent), so the log stored exactly that event; the RFC 9162
  inclusion proof leads to the checkpoint's root; no index is handed out twice;
* each proof answer: the inclusion proof of the returned leaf hash at the asked index leads to
  the root of the checkpoint read (and verified) at start;
* each tile: the hash of its 256 hashes equals the one the level-1 tile holds for it, where every
  tile of level 1 and above was fetched at start and checked up to the checkpoint's root (full
  tiles are immutable: a tile seen again must equal, byte for byte, the copy verified first).

Every answer is verified, those of the warm-up included, so the ``verified`` count exceeds the
number of requests in the measured window.

``--verify-after`` keeps the answers of submissions and proofs (their bytes, with the event
sent) and runs the same checks on them once the run is over, instead of between requests: a
client on this machine then takes no more CPU per request in the window than the baseline
modes do (an HTTP exchange), which is what a remote client costs the log. The report gives the
CPU of the verification after the run on its own; the exit status still fails the run on any
answer that does not verify. Tile answers are verified inline either way.

The report gives, per request kind: completed requests, requests (and events) per second,
latency percentiles p50/p90/p99/max, failures by HTTP status or exception, verification
counts, and the client's own CPU use (a saturated client makes figures meaningless). ``--json``
prints the same as one JSON object. Exit status: 0 when every answer was a success and every
verification passed, 1 when a verification failed, 3 when requests failed, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import itertools
import json
import math
import multiprocessing
import random
import resource
import secrets
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import cbor2

from benchmarks.http11 import HttpClient, HttpError, open_client
from client.cbor import encode_deterministic
from merkle.checkpoint import Checkpoint, open_checkpoint, parse_checkpoint
from merkle.errors import MerkleError
from merkle.hashing import HASH_SIZE, leaf_hash
from merkle.note import Ed25519Verifier, decode_base64, parse_note
from merkle.receipt import parse_receipt
from merkle.tiles import (
    TILE_WIDTH,
    Tile,
    format_tile_path,
    node_hashes_from_tiles,
    tiles_for_size,
)
from merkle.tree import root_from_hashes, root_nodes, verify_inclusion

__all__ = [
    "MODES",
    "KindReport",
    "LoadConfig",
    "LoadReport",
    "Prepared",
    "ReceiptChecker",
    "TileChecker",
    "VerificationError",
    "format_table",
    "json_object",
    "main",
    "percentile",
    "prepare",
    "run_load",
]

MODES: Final = ("submit", "batch", "proof", "tile", "mixed", "post", "get")
"""Load modes; ``post`` and ``get`` are for the baseline app."""

READ_KINDS: Final = ("proof", "tile")
JSON_TYPE: Final = "application/json"
DEFAULT_MIX: Final = (("submit", 1), ("proof", 6), ("tile", 3))
"""Weights of the ``mixed`` mode: one submission for six proofs and three tiles."""
_TILE_BYTES: Final = TILE_WIDTH * HASH_SIZE
_MAX_REMEMBERED_NOTES: Final = 4096
_PAD_ALPHABET: Final = "abcdefghijklmnopqrstuvwxyz0123456789"


class VerificationError(Exception):
    """An answer of the log does not verify; the message says which check failed."""


# -- configuration and results ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoadConfig:
    """What to run: target, mode, concurrency, timing and verification.

    ``rate`` is requests per second in total (``None``: flat out). ``mix`` weighs the request
    kinds of the ``mixed`` mode. ``path`` is the baseline route for ``post`` and ``get``.
    """

    url: str
    mode: str
    concurrency: int
    duration: float
    warmup: float = 3.0
    rate: float | None = None
    processes: int = 1
    batch_events: int = 1000
    event_bytes: int = 300
    mix: tuple[tuple[str, int], ...] = DEFAULT_MIX
    verify: bool = False
    verify_after: bool = False
    vkey: str | None = None
    path: str | None = None
    timeout: float = 120.0
    client: str = "raw"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        if self.concurrency < 1 or self.processes < 1 or self.processes > self.concurrency:
            raise ValueError("need 1 <= processes <= concurrency")
        if self.duration <= 0 or self.warmup < 0:
            raise ValueError("duration must be positive and warmup not negative")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("rate must be positive")
        if not 1 <= self.batch_events <= 100_000:
            raise ValueError("batch events must be between 1 and 100000")
        if not 0 <= self.event_bytes <= 60_000:
            raise ValueError("event bytes must be between 0 and 60000")
        if self.verify_after and not self.verify:
            raise ValueError("--verify-after needs --verify")
        if self.verify and self.vkey is None:
            raise ValueError("--verify needs the log's vkey (--vkey or --data-dir)")
        if self.client not in ("raw", "httpx"):
            raise ValueError("client must be raw or httpx")
        if self.verify and self.mode in ("post", "get"):
            raise ValueError("the baseline modes have nothing to verify")
        if not self.mix or any(w < 0 or k not in ("submit", "proof", "tile") for k, w in self.mix):
            raise ValueError("mix weights are submit, proof and tile, not negative")
        if sum(w for _, w in self.mix) == 0:
            raise ValueError("mix weights must not all be zero")

    @property
    def kinds(self) -> tuple[str, ...]:
        """The request kinds this run sends."""
        if self.mode == "mixed":
            return tuple(k for k, w in self.mix if w > 0)
        return (self.mode,)

    @property
    def needs_tree(self) -> bool:
        """Whether the run reads the tree (and so needs its checkpoint at start)."""
        return any(k in READ_KINDS for k in self.kinds)


@dataclass(frozen=True, slots=True)
class Prepared:
    """What every client process gets before the clock starts: the checkpoint and upper tiles.

    ``checkpoint_note`` is the signed note read from ``GET /checkpoint`` (``None`` when the run
    does not read the tree); ``upper_tiles`` maps ``(level, index)`` to the contents of every
    hash tile of level >= 1 of that tree, plus the partial level-0 tile (for tile checks).
    """

    checkpoint_note: bytes | None = None
    upper_tiles: Mapping[tuple[int, int], bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class KindReport:
    """Figures of one request kind over the measured window."""

    kind: str
    requests: int
    events: int
    requests_per_s: float
    events_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    failures: Mapping[str, int]
    verified: int
    verification_failures: int
    first_verification_failure: str | None


@dataclass(frozen=True, slots=True)
class LoadReport:
    """The result of a run: per-kind figures plus the run's own parameters and costs."""

    url: str
    mode: str
    concurrency: int
    processes: int
    rate: float | None
    window_s: float
    warmup_s: float
    verify: bool
    tree_size: int | None
    kinds: tuple[KindReport, ...]
    client_cpu_s: float
    duplicate_indexes: int
    verify_after: bool = False
    verify_after_cpu_s: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether every request succeeded and every verification passed."""
        return self.verification_failed == 0 and not any(k.failures for k in self.kinds)

    @property
    def verification_failed(self) -> int:
        """The number of answers that failed verification (plus reused indexes)."""
        return sum(k.verification_failures for k in self.kinds) + self.duplicate_indexes

    def to_json(self) -> dict[str, Any]:
        """Return the report as a JSON-compatible dict."""
        body = asdict(self)
        body["client_cpu_share"] = self.client_cpu_share
        return body

    @property
    def client_cpu_share(self) -> float:
        """The client's CPU seconds per second of the run (warm-up and window), all processes."""
        elapsed = self.window_s + self.warmup_s
        return self.client_cpu_s / elapsed if elapsed else 0.0


# -- verification ----------------------------------------------------------------------------


def _field(answer: Mapping[str, Any], name: str, kind: type) -> Any:
    value = answer.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise VerificationError(f"answer field {name!r} is missing or not a {kind.__name__}")
    return value


def _hash_field(answer: Mapping[str, Any], name: str) -> bytes:
    try:
        value = decode_base64(_field(answer, name, str), what=name)
    except MerkleError as exc:
        raise VerificationError(str(exc)) from None
    if len(value) != HASH_SIZE:
        raise VerificationError(f"answer field {name!r} is not a 32-byte hash")
    return value


def _proof_field(answer: Mapping[str, Any], name: str) -> tuple[bytes, ...]:
    items = _field(answer, name, list)
    out = []
    for position, item in enumerate(items):
        if not isinstance(item, str):
            raise VerificationError(f"{name}[{position}] is not a string")
        try:
            out.append(decode_base64(item, what=f"{name}[{position}]"))
        except MerkleError as exc:
            raise VerificationError(str(exc)) from None
    return tuple(out)


class ReceiptChecker:
    """Verifies the log's answers against its public key (see the module docstring).

    Each distinct checkpoint note is verified once and remembered (at most 4,096 of them).
    """

    def __init__(self, vkey: str) -> None:
        try:
            self._verifier = Ed25519Verifier.from_vkey(vkey)
        except MerkleError as exc:
            raise ValueError(f"not an Ed25519 vkey: {exc}") from None
        self._notes: dict[bytes, Checkpoint] = {}

    @property
    def origin(self) -> str:
        """The log's origin (its key name)."""
        return self._verifier.name

    def checkpoint(self, note: bytes) -> Checkpoint:
        """Return the checkpoint of ``note`` after checking the log's signature on it.

        Raises VerificationError when the note is malformed or not signed by the log's key.
        """
        known = self._notes.get(note)
        if known is not None:
            return known
        try:
            checkpoint, _, _ = open_checkpoint(note, self._verifier)
        except MerkleError as exc:
            raise VerificationError(f"checkpoint does not verify: {exc}") from None
        if len(self._notes) >= _MAX_REMEMBERED_NOTES:
            self._notes.clear()
        self._notes[note] = checkpoint
        return checkpoint

    def check_receipt(self, entry: bytes, answer: Mapping[str, Any]) -> int:
        """Verify one submission answer for the entry bytes sent; return its index.

        ``entry`` is the deterministic CBOR encoding of the event submitted (what the log's
        raw-map intake stores). Raises VerificationError naming the first check that failed.
        """
        try:
            receipt = parse_receipt(_field(answer, "receipt", str).encode("utf-8"))
        except MerkleError as exc:
            raise VerificationError(f"receipt does not parse: {exc}") from None
        index: int = _field(answer, "index", int)
        if receipt.index != index:
            raise VerificationError(f"receipt index {receipt.index} is not the answer's {index}")
        if _field(answer, "checkpoint", str).encode("utf-8") != receipt.checkpoint:
            raise VerificationError("the receipt's checkpoint is not the answer's")
        if _proof_field(answer, "inclusion_proof") != receipt.proof:
            raise VerificationError("the receipt's proof is not the answer's")
        expected = leaf_hash(entry)
        if _hash_field(answer, "leaf_hash") != expected:
            raise VerificationError("the leaf hash is not that of the event sent")
        if _field(answer, "duplicate", bool):
            raise VerificationError("a new event was answered as a duplicate")
        checkpoint = self.checkpoint(receipt.checkpoint)
        if _field(answer, "tree_size", int) != checkpoint.tree_size:
            raise VerificationError("the answer's tree size is not the checkpoint's")
        try:
            verify_inclusion(
                expected, index, checkpoint.tree_size, receipt.proof, checkpoint.root_hash
            )
        except MerkleError as exc:
            raise VerificationError(f"inclusion proof fails: {exc}") from None
        return index

    def check_proof(self, index: int, checkpoint: Checkpoint, answer: Mapping[str, Any]) -> None:
        """Verify a ``/v1/proof/inclusion`` answer for ``index`` against ``checkpoint``.

        Raises VerificationError.
        """
        if _field(answer, "index", int) != index:
            raise VerificationError("the proof is for another index")
        if _field(answer, "tree_size", int) != checkpoint.tree_size:
            raise VerificationError("the proof is for another tree size")
        value = _hash_field(answer, "leaf_hash")
        proof = _proof_field(answer, "proof")
        try:
            verify_inclusion(value, index, checkpoint.tree_size, proof, checkpoint.root_hash)
        except MerkleError as exc:
            raise VerificationError(f"inclusion proof fails: {exc}") from None


def _tile_root(level: int, index: int, data: bytes) -> bytes:
    """Return the hash of the complete subtree a full tile holds (RFC 6962 §2.1 MTH).

    Requires ``data`` to be 256 hashes. Raises VerificationError otherwise.
    """
    if len(data) != _TILE_BYTES:
        raise VerificationError(f"tile ({level}, {index}) is {len(data)} bytes, not {_TILE_BYTES}")
    row = [data[i : i + HASH_SIZE] for i in range(0, _TILE_BYTES, HASH_SIZE)]
    sha256 = hashlib.sha256
    while len(row) > 1:
        row = [sha256(b"\x01" + row[i] + row[i + 1]).digest() for i in range(0, len(row), 2)]
    return row[0]


class TileChecker:
    """Checks level-0 tiles against upper tiles already verified up to a checkpoint's root."""

    def __init__(self, checkpoint: Checkpoint, tiles: Mapping[tuple[int, int], bytes]) -> None:
        """Verify ``tiles`` (every tile of level >= 1 and the partial level-0 tile, if any).

        Every full tile must hash to the value its parent tile holds for it, and the root
        computed from the tiles must be the checkpoint's. Raises VerificationError.
        """
        size = checkpoint.tree_size
        for tile in upper_tiles_for_size(size):
            data = tiles.get((tile.level, tile.index))
            if data is None or len(data) != tile.width * HASH_SIZE:
                raise VerificationError(f"tile {format_tile_path(tile)} is missing or too short")
        try:
            root = root_from_hashes(node_hashes_from_tiles(root_nodes(size), tiles))
        except MerkleError as exc:
            raise VerificationError(f"tiles do not give a root: {exc}") from None
        if root != checkpoint.root_hash:
            raise VerificationError("the upper tiles do not give the checkpoint's root")
        self._upper = dict(tiles)
        for (level, index), data in self._upper.items():
            if level >= 1 and len(data) == _TILE_BYTES:
                self._check_against_parent(level, index, data)
        self._verified: dict[int, bytes] = {}

    def _check_against_parent(self, level: int, index: int, data: bytes) -> None:
        parent = self._upper.get((level + 1, index // TILE_WIDTH))
        offset = (index % TILE_WIDTH) * HASH_SIZE
        if parent is None or len(parent) < offset + HASH_SIZE:
            raise VerificationError(f"no parent hash for tile ({level}, {index})")
        if _tile_root(level, index, data) != parent[offset : offset + HASH_SIZE]:
            raise VerificationError(f"tile ({level}, {index}) does not match its parent tile")

    def check_level0(self, index: int, data: bytes) -> None:
        """Verify the full level-0 tile ``index``. Raises VerificationError.

        Full tiles are immutable: the first answer for a tile is hashed and checked against its
        parent tile, later answers must be byte-identical to that verified copy.
        """
        known = self._verified.get(index)
        if known is not None:
            if data != known:
                raise VerificationError(f"tile 0/{index} changed since it was verified")
            return
        if len(data) != _TILE_BYTES:
            raise VerificationError(f"tile 0/{index} is {len(data)} bytes, not {_TILE_BYTES}")
        self._check_against_parent(0, index, data)
        self._verified[index] = data


def upper_tiles_for_size(tree_size: int) -> list[Tile]:
    """Return every hash tile of level >= 1 of the tree, plus its partial level-0 tile."""
    return [t for t in tiles_for_size(tree_size) if t.level >= 1 or t.width < TILE_WIDTH]


# -- the load itself -------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Return the nearest-rank ``p``-th percentile of ascending ``sorted_values`` (0 if empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass(frozen=True, slots=True)
class _Outcome:
    """How one request ended: the events it carried, or why it failed."""

    events: int = 1
    failure: str | None = None


@dataclass(slots=True)
class _Tally:
    """Raw results of one kind in one process (mutable while the run goes)."""

    latencies: list[float] = field(default_factory=list)
    events: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    verified: int = 0
    verification_failures: int = 0
    first_verification_failure: str | None = None

    def record(self, outcome: _Outcome, latency: float, *, in_window: bool) -> None:
        if outcome.failure is not None:
            reason = outcome.failure if in_window else f"outside window: {outcome.failure}"
            self.failures[reason] = self.failures.get(reason, 0) + 1
        elif in_window:
            self.latencies.append(latency)
            self.events += outcome.events


@dataclass(frozen=True, slots=True)
class _ProcessResult:
    tallies: dict[str, _Tally]
    cpu: float
    indexes: bytes
    reused: int
    verify_after_cpu: float = 0.0


class _IndexSet:
    """A bitmap of the indexes receipts named, to spot one handed out twice."""

    def __init__(self) -> None:
        self.bits = bytearray()
        self.reused = 0

    def add(self, index: int) -> None:
        byte, bit = divmod(index, 8)
        if byte >= len(self.bits):
            self.bits.extend(bytes(max(byte + 1 - len(self.bits), 1 << 16)))
        if self.bits[byte] >> bit & 1:
            self.reused += 1
        self.bits[byte] |= 1 << bit


class _Worker:
    """Runs the requests of one client process."""

    def __init__(self, config: LoadConfig, prepared: Prepared, process: int) -> None:
        self.config = config
        self.process = process
        self.run_id = secrets.token_hex(4)
        self.tallies = {kind: _Tally() for kind in config.kinds}
        self.indexes = _IndexSet()
        # Answers kept by --verify-after: (what was asked, the answer's body). Events travel as
        # the JSON bytes sent and indexes as ints, so the lists hold no object the cyclic
        # garbage collector has to walk while the run goes.
        self.kept_receipts: list[tuple[bytes, bytes]] = []
        self.kept_proofs: list[tuple[int, bytes]] = []
        self.random = random.Random()
        self.checker: ReceiptChecker | None = None
        self.checkpoint: Checkpoint | None = None
        self.tiles: TileChecker | None = None
        if config.vkey is not None and config.verify:
            self.checker = ReceiptChecker(config.vkey)
        if prepared.checkpoint_note is not None:
            if self.checker is not None:
                self.checkpoint = self.checker.checkpoint(prepared.checkpoint_note)
            else:
                note = parse_note(prepared.checkpoint_note)
                self.checkpoint = parse_checkpoint(note.text)
            if self.checker is not None and "tile" in config.kinds:
                self.tiles = TileChecker(self.checkpoint, prepared.upper_tiles)
        weights = dict(config.mix)
        self.kind_weights = [weights.get(k, 1) for k in config.kinds]
        self.pad = "".join(self.random.choice(_PAD_ALPHABET) for _ in range(config.event_bytes))
        self.counter = 0
        check_entry_encoding(self._event(0))

    # -- request bodies ----------------------------------------------------------------

    def _event(self, worker: int) -> dict[str, Any]:
        self.counter += 1
        return {
            "type": "token-issued",
            "iss": "https://as.example.com",
            "jti": f"{self.run_id}-{self.process}-{worker}-{self.counter}",
            "iat": int(time.time()),
            "client_id": f"app-{self.counter % 97}",
            "sub": f"subject-{self.counter % 1013}",
            "scope": "openid profile",
            "pad": self.pad,
        }

    # -- one request of each kind ------------------------------------------------------------

    def _verified(self, tally: _Tally, check: Callable[[], int | None]) -> None:
        """Run one verification, counting it; every answer is checked, in the window or not."""
        try:
            index = check()
        except VerificationError as exc:
            tally.verification_failures += 1
            if tally.first_verification_failure is None:
                tally.first_verification_failure = str(exc)
            return
        if index is not None:
            self.indexes.add(index)
        tally.verified += 1

    async def _submit(self, client: HttpClient, worker: int, tally: _Tally) -> _Outcome:
        event = self._event(worker)
        path = (self.config.path or "/post") if self.config.mode == "post" else "/v1/events"
        sent = json.dumps(event, separators=(",", ":")).encode("utf-8")
        response = await client.request("POST", path, sent, JSON_TYPE)
        if response.status not in (200, 201):
            return _Outcome(failure=f"HTTP {response.status}")
        checker = self.checker
        if checker is not None and self.config.verify_after:
            self.kept_receipts.append((sent, response.body))
            return _Outcome()
        answer = response.json()
        if checker is not None:
            self._verified(
                tally, lambda: checker.check_receipt(entry_of(event), answer)
            )
        return _Outcome()

    async def _batch(self, client: HttpClient, worker: int, tally: _Tally) -> _Outcome:
        events = [self._event(worker) for _ in range(self.config.batch_events)]
        body = json.dumps(events, separators=(",", ":")).encode("utf-8")
        response = await client.request("POST", "/v1/events/batch", body, JSON_TYPE)
        if response.status != 200:
            return _Outcome(failure=f"HTTP {response.status}")
        results = response.json().get("results")
        if not isinstance(results, list) or len(results) != len(events):
            return _Outcome(failure="batch answer of the wrong length")
        checker = self.checker
        if checker is not None:
            for position, (event, result) in enumerate(zip(events, results, strict=True)):
                if position % 64 == 63:
                    await asyncio.sleep(0)  # let the other workers' answers in
                self._verified(
                    tally, functools.partial(_check_batch_result, checker, event, result)
                )
        return _Outcome(events=len(events))

    async def _proof(self, client: HttpClient, tally: _Tally) -> _Outcome:
        checkpoint = self.checkpoint
        assert checkpoint is not None
        index = self.random.randrange(checkpoint.tree_size)
        response = await client.request(
            "GET", f"/v1/proof/inclusion?index={index}&tree_size={checkpoint.tree_size}"
        )
        if response.status != 200:
            return _Outcome(failure=f"HTTP {response.status}")
        checker = self.checker
        if checker is not None and self.config.verify_after:
            self.kept_proofs.append((index, response.body))
            return _Outcome()
        answer = response.json()
        if checker is not None:
            self._verified(tally, lambda: checker.check_proof(index, checkpoint, answer))
        return _Outcome()

    async def _tile(self, client: HttpClient, tally: _Tally) -> _Outcome:
        checkpoint = self.checkpoint
        assert checkpoint is not None
        index = self.random.randrange(checkpoint.tree_size // TILE_WIDTH)
        response = await client.request("GET", "/" + format_tile_path(Tile(0, index)))
        if response.status != 200:
            return _Outcome(failure=f"HTTP {response.status}")
        data = response.body
        tiles = self.tiles
        if tiles is not None:
            self._verified(tally, lambda: tiles.check_level0(index, data))
        elif len(data) != _TILE_BYTES:
            return _Outcome(failure="tile of the wrong length")
        return _Outcome()

    async def _get(self, client: HttpClient) -> _Outcome:
        response = await client.request("GET", self.config.path or "/get")
        if response.status != 200:
            return _Outcome(failure=f"HTTP {response.status}")
        _ = response.body
        return _Outcome()

    async def _one(self, client: HttpClient, worker: int, kind: str) -> _Outcome:
        tally = self.tallies[kind]
        try:
            if kind in ("submit", "post"):
                return await self._submit(client, worker, tally)
            if kind == "batch":
                return await self._batch(client, worker, tally)
            if kind == "proof":
                return await self._proof(client, tally)
            if kind == "tile":
                return await self._tile(client, tally)
            return await self._get(client)
        except HttpError as exc:
            return _Outcome(failure=f"transport: {str(exc).partition(':')[0]}")
        except ValueError:  # an answer that is not JSON
            return _Outcome(failure="answer is not JSON")

    # -- answers kept by --verify-after ------------------------------------------------------

    @property
    def kept(self) -> int:
        """How many answers ``--verify-after`` keeps for after the run."""
        return len(self.kept_receipts) + len(self.kept_proofs)

    def verify_kept(self) -> None:
        """Verify the answers ``--verify-after`` kept, counting each, and forget them."""
        checker = self.checker
        receipts, self.kept_receipts = self.kept_receipts, []
        proofs, self.kept_proofs = self.kept_proofs, []
        if checker is None:
            return
        for sent, body in receipts:
            self._verified(
                self.tallies["submit"], functools.partial(_check_kept, checker, sent, body)
            )
        if not proofs:
            return
        checkpoint = self.checkpoint
        assert checkpoint is not None  # proofs are only asked against it
        for index, body in proofs:
            self._verified(
                self.tallies["proof"],
                functools.partial(_check_kept_proof, checker, index, checkpoint, body),
            )

    # -- scheduling ----------------------------------------------------------------------------

    async def run(self, concurrency: int, rate: float | None, start_at: float) -> None:
        """Run ``concurrency`` workers from wall-clock ``start_at`` through the window.

        With ``rate`` (this process's share, requests per second) request ``k`` is due at
        ``k / rate`` seconds after the start and its latency counts from then.
        """
        client = open_client(
            self.config.client,
            self.config.url,
            max_connections=concurrency,
            timeout=self.config.timeout,
        )
        try:
            await asyncio.sleep(max(0.0, start_at - time.time()))
            loop = asyncio.get_running_loop()
            begin = loop.time()
            window_start = begin + self.config.warmup
            window_end = window_start + self.config.duration
            slots = itertools.count(1)

            async def worker(number: int) -> None:
                while True:
                    due = loop.time()
                    if rate is not None:
                        due = begin + next(slots) / rate
                        await asyncio.sleep(max(0.0, due - loop.time()))
                    if due >= window_end:
                        return
                    kind = self.random.choices(self.config.kinds, self.kind_weights)[0]
                    outcome = await self._one(client, number, kind)
                    done = loop.time()
                    in_window = window_start <= done <= window_end
                    self.tallies[kind].record(outcome, done - due, in_window=in_window)

            await asyncio.gather(*(worker(n) for n in range(concurrency)))
        finally:
            await client.aclose()


def entry_of(event: Mapping[str, Any]) -> bytes:
    """Return the leaf bytes the log stores for one of this tool's events (deterministic CBOR).

    ``cbor2``'s canonical form (keys ordered length-first, then bytewise) equals RFC 8949
    §4.2.1's (bytewise order of the encoded keys) for maps whose keys are all text strings,
    as these events' are; it is C code, so the client's own cost stays far below the
    server's. :func:`check_entry_encoding` checks the equality on a sample at start.
    """
    return cbor2.dumps(event, canonical=True)


def check_entry_encoding(event: Mapping[str, Any]) -> None:
    """Raise RuntimeError unless :func:`entry_of` agrees with ``client.cbor`` on ``event``."""
    if entry_of(event) != encode_deterministic(event):
        raise RuntimeError("cbor2's canonical encoding differs from RFC 8949 deterministic CBOR")


def _check_batch_result(checker: ReceiptChecker, event: dict[str, Any], result: object) -> int:
    """Verify one result of a batch answer (see :meth:`ReceiptChecker.check_receipt`)."""
    if not isinstance(result, dict):
        raise VerificationError("a batch result is not an object")
    return checker.check_receipt(entry_of(event), result)


def _run_process(
    config: LoadConfig, prepared: Prepared, process: int, concurrency: int, start_at: float
) -> _ProcessResult:
    """Run one client process's share of the load and return its raw results."""
    rate = None if config.rate is None else config.rate / config.processes
    worker = _Worker(config, prepared, process)
    before = _cpu_seconds()
    asyncio.run(worker.run(concurrency, rate, start_at))
    ran = _cpu_seconds()
    worker.verify_kept()
    after = _cpu_seconds()
    return _ProcessResult(
        worker.tallies, ran - before, bytes(worker.indexes.bits), worker.indexes.reused, after - ran
    )


def _cpu_seconds() -> float:
    """This process's CPU time so far (user and system), in seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _check_kept(checker: ReceiptChecker, sent: bytes, body: bytes) -> int:
    """Verify a kept submission answer ``body`` for the JSON event ``sent``; return its index."""
    return checker.check_receipt(entry_of(json.loads(sent)), json_object(body))


def _check_kept_proof(
    checker: ReceiptChecker, index: int, checkpoint: Checkpoint, body: bytes
) -> None:
    """Verify a kept proof answer ``body`` for ``index`` against ``checkpoint``."""
    checker.check_proof(index, checkpoint, json_object(body))


def json_object(body: bytes) -> dict[str, Any]:
    """Return the JSON object an answer's body holds. Raises VerificationError otherwise."""
    try:
        answer = json.loads(body)
    except ValueError:
        raise VerificationError("the answer is not JSON") from None
    if not isinstance(answer, dict):
        raise VerificationError("the answer is not a JSON object")
    return answer


# -- preparation -----------------------------------------------------------------------------


async def prepare(config: LoadConfig) -> Prepared:
    """Read what the run needs before it starts: the checkpoint and, for tiles, upper tiles.

    Raises VerificationError when ``--verify`` is on and the checkpoint or tiles do not verify,
    and HttpError when the log cannot be reached or answers an error.
    """
    if not config.needs_tree:
        return Prepared()
    client = open_client(config.client, config.url, max_connections=1, timeout=config.timeout)
    try:
        note = await _fetch(client, "/checkpoint")
        checkpoint = parse_checkpoint(parse_note(note).text)
        if config.verify:
            assert config.vkey is not None
            checkpoint = ReceiptChecker(config.vkey).checkpoint(note)
        if "proof" in config.kinds and checkpoint.tree_size == 0:
            raise VerificationError("the log is empty: nothing to prove")
        tiles: dict[tuple[int, int], bytes] = {}
        if "tile" in config.kinds:
            if checkpoint.tree_size < TILE_WIDTH:
                raise VerificationError("the log has no full tile yet")
            if config.verify:
                for tile in upper_tiles_for_size(checkpoint.tree_size):
                    tiles[(tile.level, tile.index)] = await _fetch(
                        client, "/" + format_tile_path(tile)
                    )
                TileChecker(checkpoint, tiles)
        return Prepared(note, tiles)
    finally:
        await client.aclose()


async def _fetch(client: HttpClient, path: str) -> bytes:
    """GET ``path`` and return the body of a 200 answer. Raises HttpError otherwise."""
    answer = await client.request("GET", path)
    if answer.status != 200:
        raise HttpError(f"GET {path} answered {answer.status}")
    return answer.body


def _merge(
    config: LoadConfig, results: Sequence[_ProcessResult], tree_size: int | None
) -> LoadReport:
    window = config.duration
    kinds = []
    for kind in config.kinds:
        tallies = [r.tallies[kind] for r in results]
        latencies = sorted(x for t in tallies for x in t.latencies)
        events = sum(t.events for t in tallies)
        failures: dict[str, int] = {}
        for t in tallies:
            for reason, count in t.failures.items():
                failures[reason] = failures.get(reason, 0) + count
        first = next(
            (t.first_verification_failure for t in tallies if t.first_verification_failure),
            None,
        )
        kinds.append(
            KindReport(
                kind=kind,
                requests=len(latencies),
                events=events,
                requests_per_s=len(latencies) / window,
                events_per_s=events / window,
                p50_ms=percentile(latencies, 50) * 1000,
                p90_ms=percentile(latencies, 90) * 1000,
                p99_ms=percentile(latencies, 99) * 1000,
                max_ms=(latencies[-1] if latencies else 0.0) * 1000,
                failures=failures,
                verified=sum(t.verified for t in tallies),
                verification_failures=sum(t.verification_failures for t in tallies),
                first_verification_failure=first,
            )
        )
    reused = _reused_indexes([r.indexes for r in results]) + sum(r.reused for r in results)
    return LoadReport(
        url=config.url,
        mode=config.mode,
        concurrency=config.concurrency,
        processes=config.processes,
        rate=config.rate,
        window_s=window,
        warmup_s=config.warmup,
        verify=config.verify,
        tree_size=tree_size,
        kinds=tuple(kinds),
        client_cpu_s=sum(r.cpu for r in results),
        duplicate_indexes=reused,
        verify_after=config.verify_after,
        verify_after_cpu_s=sum(r.verify_after_cpu for r in results),
    )


def _reused_indexes(bitmaps: Sequence[bytes]) -> int:
    """Count indexes set in more than one process's bitmap."""
    if len(bitmaps) < 2:
        return 0
    length = max(len(b) for b in bitmaps)
    seen = 0
    reused = 0
    for bitmap in bitmaps:
        value = int.from_bytes(bitmap.ljust(length, b"\0"), "little")
        reused += (seen & value).bit_count()
        seen |= value
    return reused


def run_load(config: LoadConfig) -> LoadReport:
    """Prepare, run the load in ``config.processes`` processes, and return the merged report.

    Raises VerificationError when the starting checkpoint or tiles do not verify.
    """
    prepared = asyncio.run(prepare(config))
    tree_size = None
    if prepared.checkpoint_note is not None:
        tree_size = parse_checkpoint(parse_note(prepared.checkpoint_note).text).tree_size
    shares = [
        config.concurrency // config.processes
        + (1 if p < config.concurrency % config.processes else 0)
        for p in range(config.processes)
    ]
    start_at = time.time() + (0.2 if config.processes == 1 else 2.0)
    if config.processes == 1:
        results = [_run_process(config, prepared, 0, shares[0], start_at)]
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(config.processes, mp_context=context) as pool:
            futures = [
                pool.submit(_run_process, config, prepared, p, shares[p], start_at)
                for p in range(config.processes)
            ]
            results = [f.result() for f in futures]
    return _merge(config, results, tree_size)


# -- output ------------------------------------------------------------------------------------


def format_table(report: LoadReport) -> str:
    """Return the report as a fixed-width text table with a one-line header."""
    rate = "flat out" if report.rate is None else f"{report.rate:g}/s"
    lines = [
        f"{report.mode} against {report.url}: concurrency {report.concurrency} in "
        f"{report.processes} process(es), {rate}, {report.window_s:g} s measured, "
        f"verify {'after the run' if report.verify_after else 'on' if report.verify else 'off'}"
        + (f", tree size {report.tree_size}" if report.tree_size is not None else ""),
        f"{'kind':<8}{'requests':>10}{'req/s':>10}{'events/s':>11}{'p50 ms':>9}{'p90 ms':>9}"
        f"{'p99 ms':>9}{'max ms':>9}{'verified':>10}{'bad':>6}",
    ]
    for k in report.kinds:
        lines.append(
            f"{k.kind:<8}{k.requests:>10}{k.requests_per_s:>10.1f}{k.events_per_s:>11.1f}"
            f"{k.p50_ms:>9.1f}{k.p90_ms:>9.1f}{k.p99_ms:>9.1f}{k.max_ms:>9.1f}"
            f"{k.verified:>10}{k.verification_failures:>6}"
        )
        if k.failures:
            failed = ", ".join(f"{reason}: {n}" for reason, n in sorted(k.failures.items()))
            lines.append(f"        failed: {failed}")
        if k.first_verification_failure:
            lines.append(f"        first verification failure: {k.first_verification_failure}")
    lines.append(
        f"client CPU {report.client_cpu_s:.1f} s ({report.client_cpu_share:.0%} of one core,"
        f" warm-up included); indexes handed out twice: {report.duplicate_indexes}"
    )
    if report.verify_after:
        lines.append(f"client CPU verifying after the run: {report.verify_after_cpu_s:.1f} s")
    return "\n".join(lines)


# -- command line ------------------------------------------------------------------------------


def _parse_mix(text: str) -> tuple[tuple[str, int], ...]:
    pairs = []
    for item in text.split(","):
        name, sep, weight = item.partition("=")
        if not sep or not weight.isascii() or not weight.isdigit():
            raise argparse.ArgumentTypeError("mix is like submit=1,proof=6,tile=3")
        pairs.append((name, int(weight)))
    return tuple(pairs)


def _read_vkey(data_dir: Path) -> str:
    try:
        return (data_dir / "log.vkey").read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {data_dir / 'log.vkey'}: {exc}") from None


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser of the load tool."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.load", description="Load generator for the Etch log."
    )
    parser.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--mode", required=True, choices=MODES)
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds not measured")
    parser.add_argument("--rate", type=float, help="requests per second in total (open loop)")
    parser.add_argument("--processes", type=int, default=1, help="client processes")
    parser.add_argument("--batch-events", type=int, default=1000, help="events per batch")
    parser.add_argument("--event-bytes", type=int, default=300, help="padding per event")
    parser.add_argument(
        "--mix",
        type=_parse_mix,
        default=DEFAULT_MIX,
        help="weights of the mixed mode, e.g. submit=1,proof=6,tile=3",
    )
    parser.add_argument("--path", help="route of the post/get modes (baseline app)")
    parser.add_argument("--verify", action="store_true", help="verify every answer")
    parser.add_argument(
        "--verify-after",
        action="store_true",
        help="with --verify: check submission and proof answers after the run, not during it",
    )
    parser.add_argument("--vkey", help="the log's verifier key")
    parser.add_argument("--data-dir", type=Path, help="read the vkey from DIR/log.vkey")
    parser.add_argument("--timeout", type=float, default=120.0, help="per-request timeout, s")
    parser.add_argument(
        "--client",
        choices=("raw", "httpx"),
        default="raw",
        help="HTTP client: raw (lean keep-alive HTTP/1.1, default) or httpx",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the load tool; exit status as the module docstring says."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        vkey = args.vkey
        if vkey is None and args.data_dir is not None:
            vkey = _read_vkey(args.data_dir)
        config = LoadConfig(
            url=args.url,
            mode=args.mode,
            concurrency=args.concurrency,
            duration=args.duration,
            warmup=args.warmup,
            rate=args.rate,
            processes=args.processes,
            batch_events=args.batch_events,
            event_bytes=args.event_bytes,
            mix=args.mix,
            verify=args.verify,
            verify_after=args.verify_after,
            vkey=vkey,
            path=args.path,
            timeout=args.timeout,
            client=args.client,
        )
        if config.verify:
            ReceiptChecker(vkey)
    except ValueError as exc:
        print(f"load: {exc}", file=sys.stderr)
        return 2
    try:
        report = run_load(config)
    except VerificationError as exc:
        print(f"load: verification failed before the run: {exc}", file=sys.stderr)
        return 1
    except HttpError as exc:
        print(f"load: cannot prepare the run against {config.url}: {exc}", file=sys.stderr)
        return 3
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(format_table(report))
    if report.verification_failed:
        return 1
    return 0 if report.ok else 3


if __name__ == "__main__":
    sys.exit(main())
