"""The witness core: C2SP tlog-witness ``add-checkpoint``, decided and persisted in one step.

:meth:`Witness.add_checkpoint` follows the specification's checks in its order:

1. the body parses (``old <size>``, at most 63 base64 proof lines, a blank line, a note);
   otherwise 400 (:class:`~witness.errors.MalformedRequestError`);
2. the origin (first note line) is followed; otherwise 404 (``UnknownLogError``);
3. a trusted key of the log signs the note, and no trusted key's signature fails;
   otherwise 403 (``LogSignatureError``);
4. old size <= checkpoint size; otherwise 400;
5. the origin's request budget is not spent; otherwise 429 (``RateLimitedError``);

then, in ONE storage transaction (:meth:`~witness.storage.base.WitnessStorage.update`):

6. no evidence is held against the origin; otherwise 403 (``LogBlockedError``, see below);
7. old size equals the size of the latest cosigned checkpoint (0 if none); otherwise 409 with
   that size (``SizeConflictError``);
8. a size-0 checkpoint has the empty-tree root SHA-256(""); otherwise 422;
9. with old size 0 the proof is empty; otherwise 422;
10. with old size = checkpoint size, the proof is empty (422) and the root hash equals the
    cosigned one; otherwise 409 (``RootConflictError``) and ``same-size`` evidence is kept,
    as tlog-witness says ("If they don't match, the witness MUST respond with a 409");
11. otherwise the RFC 6962 consistency proof from the cosigned checkpoint verifies; otherwise
    422 (``ProofRefusedError``) and the refused checkpoint is kept as a record;
12. the checkpoint is cosigned (type 0x04, :mod:`merkle.cosignature`) and stored as the new
    latest checkpoint; the transaction commits durably, and only then the cosignature line is
    returned (200).

Blocked origins. Once it holds evidence against an origin, the witness refuses every
checkpoint of that origin with 403. tlog-witness defines 403 as "none of the signatures verify
against a trusted public key": evidence of a fork is exactly the point where the log's key stops
being trusted, so 403 says it best. 422 would claim something about this request's proof,
which may be fine. The refusal is logged at warning level.

A 409 for a root conflict is told apart from a size conflict by its content type: only the
size conflict answers ``text/x.tlog.size``.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from merkle.checkpoint import Checkpoint, parse_checkpoint, parse_decimal
from merkle.cosignature import CosignatureSigner
from merkle.errors import MalformedError, NoteError, ProofError
from merkle.hashing import EMPTY_ROOT, HASH_SIZE
from merkle.note import Note, NoteSignature, decode_base64, format_note, open_note, parse_note
from merkle.tree import verify_consistency
from witness.config import LogConfig
from witness.errors import (
    LogBlockedError,
    LogSignatureError,
    MalformedRequestError,
    ProofRefusedError,
    RequestError,
    RootConflictError,
    SizeConflictError,
    StorageError,
    UnknownLogError,
)
from witness.evidence import (
    KIND_PROOF_FAILED,
    KIND_SAME_SIZE,
    KIND_SUBMITTED_PROOF_FAILED,
    Observation,
    make_record,
)
from witness.metrics import WitnessMetrics
from witness.ratelimit import RateLimiter
from witness.storage.base import Decision, LogState, Record, StoredCheckpoint, WitnessStorage

__all__ = [
    "MAX_PROOF_LINES",
    "AddCheckpointRequest",
    "SignedCheckpoint",
    "Witness",
    "origin_hash",
    "parse_add_checkpoint",
    "stored_checkpoint",
]

logger = logging.getLogger(__name__)

MAX_PROOF_LINES = 63
"""Most consistency proof lines in an add-checkpoint body (tlog-witness)."""

_MAX_PENDING_CHECKS = 64


def origin_hash(origin: str) -> str:
    """Return the lowercase hex SHA-256 of the origin line, the monitoring path segment.

    tlog-witness monitoring: ``GET <prefix>/<origin hash>/checkpoint``.
    """
    return hashlib.sha256(origin.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class AddCheckpointRequest:
    """A parsed add-checkpoint body: old size, proof hashes, the note bytes and its origin."""

    old_size: int
    proof: tuple[bytes, ...]
    note: bytes
    origin: str


def parse_add_checkpoint(body: bytes) -> AddCheckpointRequest:
    """Parse an add-checkpoint body strictly (C2SP tlog-witness "add-checkpoint").

    Format::

        old 20852014
        PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=
        <blank line>
        <checkpoint signed note>

    The old size is ASCII decimal without sign or leading zeros; each proof line is the
    canonical standard base64 of a 32-byte hash; at most 63 proof lines; the blank line is
    required. The note itself is only split off here (its origin is its first line).

    Raises MalformedRequestError for anything else, e.g. ``old 007``, ``old 5 junk``,
    ``old 0x10``, 64 proof lines, a missing blank line or bad base64.
    """
    position = 0
    lines: list[bytes] = []
    while True:
        end = body.find(b"\n", position)
        if end < 0:
            raise MalformedRequestError("body ends before the blank line that precedes the note")
        line = body[position:end]
        position = end + 1
        if not line:
            break
        lines.append(line)
        if len(lines) > MAX_PROOF_LINES + 1:
            raise MalformedRequestError(f"more than {MAX_PROOF_LINES} consistency proof lines")
    if not lines:
        raise MalformedRequestError("body does not start with an 'old <size>' line")
    old_line, *proof_lines = lines
    if len(proof_lines) > MAX_PROOF_LINES:
        raise MalformedRequestError(f"more than {MAX_PROOF_LINES} consistency proof lines")
    if not old_line.startswith(b"old "):
        raise MalformedRequestError("first line is not 'old <size>'")
    try:
        old_size = parse_decimal(old_line[4:].decode("ascii"), what="old size")
        proof = tuple(_proof_hash(line, number) for number, line in enumerate(proof_lines, 1))
    except (MalformedError, UnicodeDecodeError) as exc:
        raise MalformedRequestError(str(exc)) from None
    note = body[position:]
    origin_end = note.find(b"\n")
    if origin_end <= 0:
        raise MalformedRequestError("the checkpoint note is empty or has no origin line")
    try:
        origin = note[:origin_end].decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedRequestError("the checkpoint origin line is not UTF-8") from None
    return AddCheckpointRequest(old_size, proof, note, origin)


def _proof_hash(line: bytes, number: int) -> bytes:
    value = decode_base64(line.decode("ascii"), what=f"proof line {number}")
    if len(value) != HASH_SIZE:
        raise MalformedError(f"proof line {number} is {len(value)} bytes, not {HASH_SIZE}")
    return value


@dataclass(frozen=True, slots=True)
class SignedCheckpoint:
    """A checkpoint whose log signature verified: parsed values, the note, the log signatures."""

    checkpoint: Checkpoint
    note: Note
    log_signatures: tuple[NoteSignature, ...]
    raw: bytes


class Witness:
    """One witness: followed logs, cosigning key, storage, request budgets and metrics.

    ``clock`` returns POSIX seconds (cosignature timestamps, record times). ``rate_per_second``
    and ``rate_burst`` are the default per-origin budget; a log's ``qpd`` replaces the rate.
    """

    def __init__(
        self,
        *,
        logs: Iterable[LogConfig],
        signer: CosignatureSigner,
        storage: WitnessStorage,
        metrics: WitnessMetrics | None = None,
        clock: Callable[[], float] = time.time,
        rate_limiter: RateLimiter | None = None,
        rate_per_second: float = 1.0,
        rate_burst: int = 60,
    ) -> None:
        """Assemble a witness. Raises ValueError if two entries share an origin."""
        self.logs: dict[str, LogConfig] = {}
        for log in logs:
            if log.origin in self.logs:
                raise ValueError(f"log {log.origin!r} is configured twice")
            self.logs[log.origin] = log
        self.by_hash = {origin_hash(origin): origin for origin in self.logs}
        self.signer = signer
        self.storage = storage
        self.metrics = metrics or WitnessMetrics()
        self._clock = clock
        self._last_cosigned_ms = 0
        self._limiter = rate_limiter or RateLimiter()
        self._rate = rate_per_second
        self._burst = rate_burst
        self.pending_checks: collections.deque[bytes] = collections.deque(
            maxlen=_MAX_PENDING_CHECKS
        )

    @property
    def name(self) -> str:
        """The witness's key name (the name on its cosignature lines)."""
        return self.signer.name

    @property
    def vkey(self) -> str:
        """The witness's type-0x04 vkey."""
        return self.signer.vkey

    def now_ms(self) -> int:
        """Return the witness clock in POSIX milliseconds."""
        return int(self._clock() * 1000)

    def log(self, origin: str) -> LogConfig:
        """Return the followed log with this origin. Raises UnknownLogError (404)."""
        log = self.logs.get(origin)
        if log is None:
            raise UnknownLogError("unknown origin")
        return log

    def take_check_budget(self, log: LogConfig) -> None:
        """Take one token of the origin's ``POST /check`` budget (separate from add-checkpoint).

        A check can make the witness fetch tiles from the log, so it is rate limited too, but
        on its own bucket: checks by strangers must not spend the log's cosigning budget.
        Raises RateLimitedError (429).
        """
        self._limiter.take("check " + log.origin, rate=self._rate, burst=self._burst)

    def open_checkpoint(self, log: LogConfig, data: bytes) -> SignedCheckpoint:
        """Verify ``data`` as a checkpoint of ``log``: signed note, trusted key, origin.

        Signatures by unknown keys are ignored (signed-note). Raises MalformedRequestError for
        a malformed note or checkpoint text, LogSignatureError when no trusted key signed it or
        a trusted key's signature fails, UnknownLogError if the text names another origin.
        """
        try:
            note, verified = open_note(data, log.verifiers)
            checkpoint = parse_checkpoint(note.text)
        except NoteError as exc:
            raise LogSignatureError(f"no valid signature by the log: {exc}") from None
        except MalformedError as exc:
            raise MalformedRequestError(f"malformed checkpoint: {exc}") from None
        if checkpoint.origin != log.origin:
            raise UnknownLogError("checkpoint origin differs from the log's")
        return SignedCheckpoint(checkpoint, note, verified, data)

    async def add_checkpoint(self, body: bytes) -> bytes:
        """Handle an add-checkpoint body; return the cosignature line(s) once durable.

        The checks and their order are in the module docstring. Raises the RequestError
        subclass of the first failed check, StorageError or StorageUnavailableError.
        """
        request = parse_add_checkpoint(body)
        log = self.log(request.origin)
        signed = self.open_checkpoint(log, request.note)
        return await self.submit(
            log, signed, request.old_size, request.proof, source="add-checkpoint"
        )

    async def submit(
        self,
        log: LogConfig,
        signed: SignedCheckpoint,
        old_size: int,
        proof: Sequence[bytes],
        *,
        source: str,
        proof_from_log: bool = False,
        rate_limited: bool = True,
    ) -> bytes:
        """Run checks 4 to 12 of the module docstring for a verified checkpoint.

        ``proof_from_log`` marks a proof the witness fetched from the log's own tiles (pull
        mode): if it fails, the witness keeps ``proof-failed`` evidence (and stops cosigning)
        instead of a refused-checkpoint record. ``rate_limited`` is false for the witness's
        own pulls. Returns the cosignature line(s). Raises as :meth:`add_checkpoint`.
        """
        checkpoint = signed.checkpoint
        if old_size > checkpoint.tree_size:
            raise MalformedRequestError(
                f"old size {old_size} is larger than the checkpoint size {checkpoint.tree_size}"
            )
        if rate_limited:
            self._limiter.take(
                log.origin,
                rate=self._rate if log.qpd is None else log.qpd / 86400,
                burst=self._burst,
            )
        proof = tuple(proof)

        def decide(state: LogState) -> Decision[bytes | RequestError]:
            return self._decide(state, signed, old_size, proof, source, proof_from_log)

        applied = await self.storage.update(log.origin, decide)
        result = applied.result
        if applied.evidence_ids:
            await self._evidence_added(log.origin, applied.evidence_ids)
        if isinstance(result, RequestError):
            self.metrics.refused.labels(log.origin, type(result).__name__).inc()
            if isinstance(result, LogBlockedError | RootConflictError):
                logger.warning(
                    "refused %s checkpoint of size %d for %r: %s",
                    source,
                    checkpoint.tree_size,
                    log.origin,
                    result,
                )
            if applied.refused_ids and log.url is not None:
                self.pending_checks.append(signed.raw)
            raise result
        self.metrics.cosignatures.labels(log.origin).inc()
        self.metrics.tree_size.labels(log.origin).set(checkpoint.tree_size)
        return result

    def _decide(
        self,
        state: LogState,
        signed: SignedCheckpoint,
        old_size: int,
        proof: tuple[bytes, ...],
        source: str,
        proof_from_log: bool,
    ) -> Decision[bytes | RequestError]:
        checkpoint = signed.checkpoint
        if state.blocked:
            return Decision(LogBlockedError("the witness holds evidence that this log forked"))
        if old_size != state.tree_size:
            return Decision(
                SizeConflictError(
                    f"old size {old_size} is not the cosigned size {state.tree_size}",
                    known_size=state.tree_size,
                )
            )
        if checkpoint.tree_size == 0 and checkpoint.root_hash != EMPTY_ROOT:
            return Decision(ProofRefusedError("a size-0 checkpoint must have root SHA-256('')"))
        stored = state.checkpoint
        if old_size == 0 or stored is None:
            if proof:
                return Decision(ProofRefusedError("the proof must be empty when old size is 0"))
        elif checkpoint.tree_size == old_size:
            if proof:
                return Decision(ProofRefusedError("the proof must be empty for equal sizes"))
            if checkpoint.root_hash != stored.root_hash:
                record = self._record(KIND_SAME_SIZE, stored, signed, source, (), "")
                return Decision(
                    RootConflictError("same size as the cosigned checkpoint, another root hash"),
                    evidence=(record,),
                )
        else:
            try:
                verify_consistency(
                    old_size, checkpoint.tree_size, stored.root_hash, checkpoint.root_hash, proof
                )
            except ProofError as exc:
                refusal = ProofRefusedError(f"consistency proof does not verify: {exc}")
                kind = KIND_PROOF_FAILED if proof_from_log else KIND_SUBMITTED_PROOF_FAILED
                record = self._record(kind, stored, signed, source, proof, str(exc))
                if proof_from_log:
                    return Decision(refusal, evidence=(record,))
                return Decision(refusal, refused=(record,))
        return self._cosign(state, signed)

    def _cosign(self, state: LogState, signed: SignedCheckpoint) -> Decision[bytes | RequestError]:
        # Cosignature timestamps never go backwards, even when the system clock is stepped back
        # (also across restarts: the stored time of the origin's last cosignature is a floor).
        previous_ms = state.checkpoint.updated_at if state.checkpoint is not None else 0
        now_ms = max(int(self._clock() * 1000), previous_ms, self._last_cosigned_ms)
        self._last_cosigned_ms = now_ms
        cosignature = self.signer.sign_at(signed.note.text, now_ms // 1000)
        note = format_note(Note(signed.note.text, (*signed.log_signatures, cosignature)))
        stored = StoredCheckpoint(
            origin=state.origin,
            tree_size=signed.checkpoint.tree_size,
            root_hash=signed.checkpoint.root_hash,
            note=note,
            updated_at=now_ms,
        )
        return Decision(cosignature.format_line().encode("utf-8"), checkpoint=stored)

    def _record(
        self,
        kind: str,
        stored: StoredCheckpoint,
        signed: SignedCheckpoint,
        source: str,
        proof: Sequence[bytes],
        detail: str,
    ) -> Record:
        ours = Observation(stored.note, stored_checkpoint(stored), "stored")
        theirs = Observation(signed.raw, signed.checkpoint, source)
        if kind == KIND_SAME_SIZE:
            reason = f"two checkpoints of size {stored.tree_size} with different root hashes"
        else:
            reason = (
                f"consistency proof from size {stored.tree_size} to "
                f"{signed.checkpoint.tree_size} does not verify: {detail}"
            )
        return make_record(
            kind=kind,
            first=ours,
            second=theirs,
            proof=proof,
            reason=reason,
            now_ms=self.now_ms(),
            witness=self.name,
        )

    async def record_evidence(self, record: Record) -> int | None:
        """Append an evidence record (deduplicated); return its id if it is new.

        A new record blocks the origin; it is logged at warning level and counted. Raises
        StorageError or StorageUnavailableError.
        """

        def decide(state: LogState) -> Decision[None]:
            return Decision(None, evidence=(record,))

        applied = await self.storage.update(record.origin, decide)
        if applied.evidence_ids:
            await self._evidence_added(record.origin, applied.evidence_ids)
            return applied.evidence_ids[0]
        return None

    async def _evidence_added(self, origin: str, ids: Sequence[int]) -> None:
        for record_id in ids:
            logger.warning(
                "evidence %d recorded against %r: the witness no longer cosigns it",
                record_id,
                origin,
            )
        counts = await self.storage.evidence_counts()
        self.metrics.evidence.labels(origin).set(counts.get(origin, 0))

    async def load_metrics(self) -> None:
        """Set the gauges from storage (at start). Raises StorageError."""
        for origin, count in (await self.storage.evidence_counts()).items():
            if origin in self.logs:
                self.metrics.evidence.labels(origin).set(count)
        for stored in await self.storage.latest_all():
            if stored.origin in self.logs:
                self.metrics.tree_size.labels(stored.origin).set(stored.tree_size)


def stored_checkpoint(stored: StoredCheckpoint) -> Checkpoint:
    """Return the parsed checkpoint of a stored note (written by this witness, so well-formed).

    Raises StorageError if the stored note does not parse or disagrees with its columns.
    """
    try:
        checkpoint = parse_checkpoint(parse_note(stored.note).text)
    except MalformedError as exc:
        raise StorageError(f"stored checkpoint of {stored.origin!r} is corrupt: {exc}") from None
    if (checkpoint.tree_size, checkpoint.root_hash) != (stored.tree_size, stored.root_hash):
        raise StorageError(f"stored checkpoint of {stored.origin!r} disagrees with its columns")
    return checkpoint
