"""Gossip: the witness polls its logs and its peers, and turns conflicts into evidence.

Every ``poll_interval`` seconds (the first round at start) the witness:

* **pulls** each followed log that has a tiles URL: it fetches ``<url>/checkpoint``, verifies
  the log's signature, and treats a larger checkpoint like an ``add-checkpoint`` whose
  consistency proof it builds itself from the log's tiles (:mod:`client.tlogtiles`). So a log
  that never pushes is still witnessed. A smaller or equal checkpoint is checked like a peer's;
* **asks each peer witness** for ``<peer>/<hex sha256(origin)>/checkpoint`` of every followed
  origin and checks the answer against its own latest cosigned checkpoint;
* **re-checks refused checkpoints**: a checkpoint refused because the *submitted* proof failed
  is checked again with a proof from the log's own tiles.

:meth:`Gossip.check` is the one consistency check (also behind ``POST /check``). Given a
log-signed checkpoint and the witness's latest:

* same size, same root: consistent; same size, other root: ``same-size`` evidence;
* different sizes: a consistency proof from the smaller to the larger, built from the log's
  tiles, must verify; if it fails, ``proof-failed`` evidence; if the log answers that it does
  not have the tiles (404 after the full-tile fallback, or malformed tiles) on two attempts in
  a row (:data:`UNOBTAINABLE_STRIKES`; one miss can be a log publishing its checkpoint a moment
  before its tiles), ``proof-unobtainable`` evidence;
* transport failures (timeouts, refused connections, 429, 5xx) prove nothing: the answer is
  "unknown" and the next round tries again. An unreachable log is an outage, not a fork, and
  recording it would let any network fault disable a witness;
* a push-only log (no URL) can only be checked at equal sizes; other sizes are "unknown".

A peer's answer without a valid log signature is logged and ignored: it says nothing about the
log. Evidence is kept by :meth:`witness.core.Witness.record_evidence` (append-only, logged at
warning level, counted); from then on the witness refuses the origin.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass

import httpx

from client.tlogtiles import (
    TileFetchError,
    TileNotFoundError,
    TileResponseError,
    TlogTilesClient,
    TlogTilesError,
)
from merkle.errors import ProofError
from merkle.hashing import EMPTY_ROOT
from merkle.tree import verify_consistency
from witness.config import LogConfig
from witness.core import SignedCheckpoint, Witness, origin_hash, stored_checkpoint
from witness.errors import (
    LogBlockedError,
    RequestError,
    SizeConflictError,
    StorageError,
)
from witness.evidence import (
    KIND_PROOF_FAILED,
    KIND_PROOF_UNOBTAINABLE,
    KIND_SAME_SIZE,
    Observation,
    make_record,
)
from witness.storage.base import StoredCheckpoint

__all__ = ["UNOBTAINABLE_STRIKES", "CheckResult", "Gossip"]

logger = logging.getLogger(__name__)

_MAX_PEER_RESPONSE = 64 * 1024
_MAX_STRIKES = 1024

UNOBTAINABLE_STRIKES = 2
"""Consecutive attempts in which the log refuses the tiles of a proof before that is evidence."""


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The answer of :meth:`Gossip.check`.

    ``consistent`` is ``True``, ``False`` (evidence was recorded or already held) or ``None``
    (could not tell: no checkpoint yet, push-only log, log unreachable). ``witness_tree_size``
    is the size of the witness's latest cosigned checkpoint (``None`` if none);
    ``evidence_id`` the id of a record created by this check, if any.
    """

    origin: str
    tree_size: int
    witness_tree_size: int | None
    consistent: bool | None
    reason: str
    evidence_id: int | None = None


class Gossip:
    """Polls the witness's logs and peers (see the module docstring)."""

    def __init__(
        self,
        witness: Witness,
        http: httpx.AsyncClient,
        *,
        peers: tuple[str, ...] = (),
        poll_interval: float = 60.0,
        fetch_timeout: float = 10.0,
    ) -> None:
        """Prepare gossip for ``witness`` using the shared ``http`` client."""
        self.witness = witness
        self.http = http
        self.peers = tuple(peer.rstrip("/") for peer in peers)
        self.poll_interval = poll_interval
        self.fetch_timeout = fetch_timeout
        self.rounds = 0
        self._strikes: dict[tuple[object, ...], int] = {}
        self._tiles: dict[str, TlogTilesClient] = {
            log.origin: TlogTilesClient(log.url, http, timeout=fetch_timeout)
            for log in witness.logs.values()
            if log.url is not None
        }

    # ------------------------------------------------------------------ loop

    async def run(self) -> None:
        """Poll forever: a round at once, then one every ``poll_interval`` seconds."""
        while True:
            started = asyncio.get_running_loop().time()
            await self.poll_once()
            elapsed = asyncio.get_running_loop().time() - started
            await asyncio.sleep(max(0.0, self.poll_interval - elapsed))

    async def poll_once(self) -> None:
        """Run one round: pull every log with a URL, ask every peer, re-check refused ones.

        Never raises for a failing log or peer (failures are logged and counted).
        """
        tasks = [self._guard(self.pull(log)) for log in self.witness.logs.values() if log.url]
        tasks += [
            self._guard(self.poll_peer(peer, log))
            for peer in self.peers
            for log in self.witness.logs.values()
        ]
        while self.witness.pending_checks:
            note = self.witness.pending_checks.popleft()
            tasks.append(self._guard(self.check(note, source="refused add-checkpoint")))
        await asyncio.gather(*tasks)
        self.rounds += 1

    async def _guard(self, job: Awaitable[object]) -> None:
        try:
            await job
        except (RequestError, TlogTilesError, StorageError) as exc:
            logger.info("gossip step failed: %s", exc)
        except Exception:
            logger.exception("gossip step failed unexpectedly")

    # ------------------------------------------------------------------ pull mode

    async def pull(self, log: LogConfig) -> None:
        """Fetch the log's checkpoint; cosign it if it grew (with a proof from the tiles).

        Raises TlogTilesError when the checkpoint cannot be fetched, RequestError when it is
        not validly signed, StorageError.
        """
        tiles = self._tiles[log.origin]
        target = "log"
        try:
            raw = await tiles.fetch_checkpoint()
            signed = self.witness.open_checkpoint(log, raw)
        except (TlogTilesError, RequestError):
            self.witness.metrics.gossip.labels(target, "error").inc()
            raise
        self.witness.metrics.gossip.labels(target, "ok").inc()
        stored = await self.witness.storage.latest(log.origin)
        size = signed.checkpoint.tree_size
        if stored is not None and size <= stored.tree_size:
            await self._compare(log, signed, stored, source=f"pull {tiles.prefix}")
            return
        old = 0 if stored is None else stored.tree_size
        try:
            proof = [] if old == 0 else await tiles.consistency_proof(old, size)
        except TlogTilesError as exc:
            if stored is not None and _log_refused(exc):
                await self._unobtainable(log, signed, stored, f"pull {tiles.prefix}", exc)
            raise
        try:
            await self.witness.submit(
                log,
                signed,
                old,
                proof,
                source=f"pull {tiles.prefix}",
                proof_from_log=True,
                rate_limited=False,
            )
        except (SizeConflictError, LogBlockedError) as exc:
            logger.debug("pull of %r not cosigned: %s", log.origin, exc)

    # ------------------------------------------------------------------ peers

    async def poll_peer(self, peer: str, log: LogConfig) -> None:
        """Fetch a peer's latest checkpoint of ``log`` and check it against ours.

        A 404 (the peer has none) is not an error. Raises RequestError for a note without a
        valid log signature, StorageError, TlogTilesError from proof fetching.
        """
        url = f"{peer}/{origin_hash(log.origin)}/checkpoint"
        try:
            raw = await self._fetch_peer(url)
        except TileFetchError:
            self.witness.metrics.gossip.labels("peer", "error").inc()
            raise
        if raw is None:
            self.witness.metrics.gossip.labels("peer", "absent").inc()
            return
        self.witness.metrics.gossip.labels("peer", "ok").inc()
        try:
            signed = self.witness.open_checkpoint(log, raw)
        except RequestError as exc:
            logger.warning(
                "peer %s serves a checkpoint of %r without a valid log signature: %s",
                peer,
                log.origin,
                exc,
            )
            return
        stored = await self.witness.storage.latest(log.origin)
        if stored is not None:
            await self._compare(log, signed, stored, source=f"peer {peer}")

    async def _fetch_peer(self, url: str) -> bytes | None:
        try:
            async with asyncio.timeout(self.fetch_timeout):
                async with self.http.stream("GET", url, timeout=self.fetch_timeout) as response:
                    if response.status_code == 404:
                        return None
                    if response.status_code != 200:
                        raise TileFetchError(f"peer answered {response.status_code}", url=url)
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > _MAX_PEER_RESPONSE:
                            raise TileFetchError("peer answer is too large", url=url)
                    return bytes(body)
        except TimeoutError:
            raise TileFetchError("peer did not answer in time", url=url) from None
        except httpx.HTTPError as exc:
            raise TileFetchError(type(exc).__name__, url=url) from None

    # ------------------------------------------------------------------ the check

    async def check(self, raw: bytes, *, source: str, rate_limited: bool = False) -> CheckResult:
        """Check a checkpoint someone was shown against what this witness has seen.

        ``raw`` is a signed checkpoint note. Returns a CheckResult (see the module docstring
        for the rules); records evidence when it finds an inconsistency. With
        ``rate_limited``, a validly signed request takes a token of the origin's check budget.
        Raises UnknownLogError, LogSignatureError, MalformedRequestError for the note itself,
        RateLimitedError, StorageError.
        """
        origin = raw.split(b"\n", 1)[0].decode("utf-8", errors="replace")
        log = self.witness.log(origin)
        signed = self.witness.open_checkpoint(log, raw)
        if rate_limited:
            self.witness.take_check_budget(log)
        stored = await self.witness.storage.latest(log.origin)
        if stored is None:
            return CheckResult(
                log.origin,
                signed.checkpoint.tree_size,
                None,
                None,
                "this witness has no checkpoint of the log yet",
            )
        return await self._compare(log, signed, stored, source=source)

    async def _compare(
        self, log: LogConfig, signed: SignedCheckpoint, stored: StoredCheckpoint, *, source: str
    ) -> CheckResult:
        checkpoint = signed.checkpoint
        size, ours = checkpoint.tree_size, stored.tree_size

        def result(
            consistent: bool | None, reason: str, evidence: int | None = None
        ) -> CheckResult:
            return CheckResult(log.origin, size, ours, consistent, reason, evidence)

        if size == ours:
            if checkpoint.root_hash == stored.root_hash:
                return result(True, "same tree size and root hash as this witness's checkpoint")
            evidence = await self._record(
                KIND_SAME_SIZE,
                stored,
                signed,
                source,
                (),
                f"two checkpoints of size {size} with different root hashes",
            )
            return result(False, "same tree size, different root hash", evidence)
        small_size = min(size, ours)
        if small_size == 0:
            empty = (checkpoint if size == 0 else stored_checkpoint(stored)).root_hash
            if empty == EMPTY_ROOT:
                return result(True, "every tree extends the empty tree")
            return result(False, "a size-0 checkpoint whose root is not SHA-256('')")
        tiles = self._tiles.get(log.origin)
        if tiles is None:
            return result(None, "the log has no tiles URL: sizes differ and no proof can be had")
        large_size = max(size, ours)
        try:
            proof = await tiles.consistency_proof(small_size, large_size)
        except TlogTilesError as exc:
            if not _log_refused(exc):
                return result(None, f"could not fetch a consistency proof: {exc}")
            recorded, evidence = await self._unobtainable(log, signed, stored, source, exc)
            if not recorded:
                return result(
                    None,
                    "the log did not serve the tiles for a consistency proof; evidence is "
                    "recorded if it still does not on the next attempt",
                )
            return result(False, "the log does not serve the needed tiles", evidence)
        self._strikes.pop(_pair_key(signed, stored), None)
        first, second = (
            (checkpoint, stored_checkpoint(stored))
            if size < ours
            else (stored_checkpoint(stored), checkpoint)
        )
        try:
            verify_consistency(
                first.tree_size, second.tree_size, first.root_hash, second.root_hash, proof
            )
        except ProofError as exc:
            evidence = await self._record(
                KIND_PROOF_FAILED,
                stored,
                signed,
                source,
                proof,
                f"consistency proof from size {small_size} to {large_size}, built from the "
                f"log's tiles, does not verify: {exc}",
            )
            return result(False, "the log's consistency proof does not verify", evidence)
        return result(True, f"consistency proof from {small_size} to {large_size} verifies")

    async def _unobtainable(
        self,
        log: LogConfig,
        signed: SignedCheckpoint,
        stored: StoredCheckpoint,
        source: str,
        exc: TlogTilesError,
    ) -> tuple[bool, int | None]:
        """Count a refusal of the log to serve a proof; record evidence at the second strike.

        Returns ``(recorded, new evidence id)``. A single 404 can be a race with a log that
        publishes its checkpoint before its tiles, so one strike is not enough.
        """
        key = _pair_key(signed, stored)
        strikes = self._strikes.get(key, 0) + 1
        if strikes < UNOBTAINABLE_STRIKES:
            if len(self._strikes) >= _MAX_STRIKES:
                self._strikes.clear()
            self._strikes[key] = strikes
            logger.warning(
                "log %r did not serve a consistency proof between sizes %d and %d: %s",
                log.origin,
                stored.tree_size,
                signed.checkpoint.tree_size,
                exc,
            )
            return False, None
        self._strikes.pop(key, None)
        evidence = await self._record(
            KIND_PROOF_UNOBTAINABLE,
            stored,
            signed,
            source,
            (),
            f"the log did not serve the tiles for a consistency proof between sizes "
            f"{stored.tree_size} and {signed.checkpoint.tree_size}, twice: {exc}",
        )
        return True, evidence

    async def _record(
        self,
        kind: str,
        stored: StoredCheckpoint,
        signed: SignedCheckpoint,
        source: str,
        proof: Sequence[bytes],
        reason: str,
    ) -> int | None:
        record = make_record(
            kind=kind,
            first=Observation(stored.note, stored_checkpoint(stored), "stored"),
            second=Observation(signed.raw, signed.checkpoint, source),
            proof=proof,
            reason=reason,
            now_ms=self.witness.now_ms(),
            witness=self.witness.name,
        )
        return await self.witness.record_evidence(record)


def _pair_key(signed: SignedCheckpoint, stored: StoredCheckpoint) -> tuple[object, ...]:
    checkpoint = signed.checkpoint
    return (
        stored.origin,
        stored.tree_size,
        stored.root_hash,
        checkpoint.tree_size,
        checkpoint.root_hash,
    )


def _log_refused(exc: TlogTilesError) -> bool:
    """Whether the log itself answered that it lacks the data (not a transport failure)."""
    return isinstance(exc, TileNotFoundError | TileResponseError)
