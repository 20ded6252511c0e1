"""The log side of C2SP tlog-witness: collect cosignatures, publish once the quorum is met.

After each commit the collector takes the newest signed checkpoint and sends it to every witness
of the log's tlog-policy in parallel (``POST <url>/add-checkpoint``), each request carrying a
consistency proof from the size that witness last cosigned. A ``409`` answer tells the witness's
size: the collector adopts it and retries at once with the right proof. The returned
cosignature lines are verified with the witness's key before they are merged into the note.

Publication does not wait for the slowest witness: the merged note is checked against the
policy after each answer, and the first time it meets the quorum it is stored and published
(``GET /checkpoint`` serves it from then on). The other witnesses' requests go on in the
background; when they bring further cosignatures while that checkpoint is still the newest
published one, it is stored and published again with them (same size, more cosignatures).
Each witness has at most one request in flight, and its requests go out in increasing
tree-size order: a request still waiting for its turn when a newer checkpoint is pushed to the
same witness is dropped, so a slow witness is always sent the newest checkpoint next. Each
witness's size is kept in memory at once and written to storage after publication (it only
saves a ``409`` round trip after a restart). Every publication is logged at debug level as
``published checkpoint <size> with <n> cosignatures, <t> ms after the pushes began``
(``re-published ...`` for the later ones).

Sequencing never waits for this: a checkpoint that misses its quorum, or whose publication
failed (storage, or an unexpected error, which is logged), is retried (with the then
newest checkpoint, after a back-off), and the last published checkpoint keeps serving
``/checkpoint`` and receipts. A witness that reports a size larger than the log's own tree has
seen a history this log does not have (a rollback or a fork): that is logged as an error,
counted, reported on the health endpoint, and the sequencer stops signing
(:meth:`server.sequencer.Sequencer.refuse`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
import time
from dataclasses import dataclass

import httpx

from merkle.checkpoint import parse_decimal
from merkle.errors import MerkleError
from merkle.note import Note, NoteSignature, format_note, parse_note, parse_signature_lines
from merkle.policy import Policy, PolicyWitness, verify_checkpoint
from server.faults import Phase, Step, fault_point
from server.log import LogService
from server.storage.base import StorageError

__all__ = ["WitnessCollector", "WitnessOutcome"]

log = logging.getLogger(__name__)

SIZE_MEDIA_TYPE = "text/x.tlog.size"
MAX_RESPONSE_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class WitnessOutcome:
    """What one witness answered for one checkpoint."""

    witness: str
    signatures: tuple[NoteSignature, ...]
    error: str | None = None


class WitnessCollector:
    """Pushes checkpoints of one log to its witnesses and publishes cosigned ones."""

    def __init__(
        self,
        service: LogService,
        policy: Policy,
        *,
        timeout: float = 2.0,
        retry_limit: float = 10.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._service = service
        self._policy = policy
        self._witnesses = [w for w in policy.witnesses if w.url]
        self._timeout = timeout
        self._retry_limit = retry_limit
        self._client = client
        self._own_client = client is None
        self._sizes: dict[str, int] = {}
        self._stored_sizes: dict[str, int] = {}
        self._turns = {w.name: asyncio.Lock() for w in self._witnesses}
        self._newest_push: dict[str, int] = {}
        self._late: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self.ahead: dict[str, int] = {}
        """Witnesses that reported a tree larger than the log's: name -> their size."""

    @property
    def witnesses(self) -> list[PolicyWitness]:
        """The policy's witnesses that have a URL to push to."""
        return list(self._witnesses)

    async def start(self) -> None:
        """Load each witness's last known size and start the push loop."""
        for witness in self._witnesses:
            raw = await self._service.storage.get_meta(_size_key(witness.name))
            self._sizes[witness.name] = int(raw.decode("ascii")) if raw else 0
            self._stored_sizes[witness.name] = self._sizes[witness.name]
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self._timeout,
                limits=httpx.Limits(max_keepalive_connections=len(self._witnesses) + 1),
            )
        self._task = asyncio.create_task(self._run(), name="witness collector")

    async def stop(self) -> None:
        """Stop pushing (also to late witnesses) and close the HTTP client this collector opened."""
        tasks = [*([self._task] if self._task is not None else []), *self._late]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = None
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            latest = self._service.latest
            published = self._service.published
            if latest is None or (
                published is not None and published.checkpoint.tree_size >= latest[1]
            ):
                await self._service.wait_for_commit()
                continue
            note, size = latest
            try:
                done = await self.witness(note, size)
            except (StorageError, MerkleError, LookupError) as exc:
                log.warning("witnessing size %d failed: %s", size, exc)
                done = False
            except Exception:
                # Anything else is a bug; it must not end publication for good: retry later.
                log.exception("witnessing size %d failed unexpectedly", size)
                done = False
            if done:
                backoff = 0.1
                continue
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, self._retry_limit)

    async def witness(self, note: bytes, size: int) -> bool:
        """Collect cosignatures for one checkpoint; publish it as soon as the quorum is met.

        Requires ``note`` to be the log's signed checkpoint of ``size``. Pushes to every witness
        at once and checks the merged note against the policy after each answer. Returns True
        once the quorum is met and the cosigned note is stored and published, without waiting
        for the remaining witnesses (their answers are merged later, see the module docstring);
        returns False when every witness has answered and the quorum is not met.

        Raises StorageError (storing the note or reading a proof), MerkleError, LookupError.
        """
        for witness in self._witnesses:
            self._newest_push[witness.name] = max(self._newest_push.get(witness.name, 0), size)
        began = time.perf_counter()
        proofs: dict[tuple[int, int], asyncio.Task[list[bytes]]] = {}
        pending = {
            asyncio.create_task(self._push(w, note, size, proofs), name=f"push to {w.name}")
            for w in self._witnesses
        }
        parsed = parse_note(note)
        collected: list[NoteSignature] = []
        errors: list[str] = []
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                fresh = False
                failures = [e for t in done if (e := t.exception()) is not None]
                if failures:
                    raise failures[0]
                for task in done:
                    outcome = task.result()
                    collected.extend(outcome.signatures)
                    fresh = fresh or bool(outcome.signatures)
                    if outcome.error:
                        errors.append(f"{outcome.witness}: {outcome.error}")
                if not fresh:
                    continue
                merged = format_note(Note(parsed.text, parsed.signatures + tuple(collected)))
                try:
                    verify_checkpoint(self._policy, merged)
                except MerkleError:
                    continue
                fault_point(Step.PUBLISH_COSIGNED, Phase.BEFORE, merged)
                await self._service.storage.put_cosigned_checkpoint(size, merged)
                self._service.publish(merged)
                fault_point(Step.PUBLISH_COSIGNED, Phase.AFTER, merged)
                log.debug(
                    "published checkpoint %d with %d cosignatures, %.2f ms after the pushes began",
                    size,
                    len(collected),
                    (time.perf_counter() - began) * 1e3,
                )
                if pending:
                    self._finish_later(parsed, size, collected, pending)
                    pending = set()
                await self._store_sizes()
                return True
        finally:
            for task in pending:
                task.cancel()
        log.info("checkpoint %d not yet witnessed (quorum not met) %s", size, ", ".join(errors))
        await self._store_sizes()
        return False

    def _finish_later(
        self,
        parsed: Note,
        size: int,
        collected: list[NoteSignature],
        pending: set[asyncio.Task[WitnessOutcome]],
    ) -> None:
        """Merge the answers of witnesses still working on a published checkpoint."""

        async def finish() -> None:
            try:
                outcomes = await asyncio.gather(*pending)
                late = [s for o in outcomes for s in o.signatures]
                published = self._service.published
                if late and published is not None and published.checkpoint.tree_size == size:
                    signatures = parsed.signatures + tuple(collected) + tuple(late)
                    merged = format_note(Note(parsed.text, signatures))
                    fault_point(Step.PUBLISH_COSIGNED, Phase.BEFORE, merged)
                    await self._service.storage.put_cosigned_checkpoint(size, merged)
                    self._service.publish(merged)
                    fault_point(Step.PUBLISH_COSIGNED, Phase.AFTER, merged)
                    log.debug(
                        "re-published checkpoint %d with %d cosignatures",
                        size,
                        len(collected) + len(late),
                    )
                await self._store_sizes()
            except (StorageError, MerkleError, LookupError) as exc:
                log.warning("late cosignatures for size %d not stored: %s", size, exc)
            finally:
                for task in pending:
                    task.cancel()

        task = asyncio.create_task(finish(), name=f"late cosignatures of {size}")
        self._late.add(task)
        task.add_done_callback(self._late.discard)

    async def _push(
        self,
        witness: PolicyWitness,
        note: bytes,
        size: int,
        proofs: dict[tuple[int, int], asyncio.Task[list[bytes]]],
    ) -> WitnessOutcome:
        """Push one checkpoint to one witness when its turn comes (one request at a time)."""
        async with self._turns[witness.name]:
            if self._newest_push.get(witness.name, 0) > size:
                return WitnessOutcome(witness.name, (), "superseded by a newer checkpoint")
            return await self._push_now(witness, note, size, proofs)

    async def _push_now(
        self,
        witness: PolicyWitness,
        note: bytes,
        size: int,
        proofs: dict[tuple[int, int], asyncio.Task[list[bytes]]],
    ) -> WitnessOutcome:
        metrics = self._service.metrics
        name = witness.name
        for _ in range(3):
            old = self._sizes.get(name, 0)
            if old > size:
                self.ahead[name] = old
                metrics.witness_failures.labels(name, "witness-ahead").inc()
                reason = (
                    f"witness {name} has cosigned size {old}, larger than this log's {size}: "
                    "the log's state was rolled back or forked"
                )
                log.error("%s", reason)
                self._service.sequencer.refuse(reason)
                return WitnessOutcome(name, (), "witness is ahead of the log")
            try:
                body = await self._request_body(old, size, note, proofs)
                assert self._client is not None
                fault_point(Step.PUSH_TO_WITNESS, Phase.BEFORE, name)
                response = await self._client.post(
                    witness.url.rstrip("/") + "/add-checkpoint",  # type: ignore[union-attr]
                    content=body,
                    headers={"Content-Type": "text/plain; charset=utf-8"},
                    timeout=self._timeout,
                )
                fault_point(Step.PUSH_TO_WITNESS, Phase.AFTER, name)
            except (httpx.HTTPError, OSError) as exc:
                metrics.witness_failures.labels(name, "unreachable").inc()
                return WitnessOutcome(name, (), f"unreachable ({type(exc).__name__})")
            content = response.content[:MAX_RESPONSE_BYTES]
            if response.status_code == 409:
                their = _parse_size(content)
                if their is None:
                    metrics.witness_failures.labels(name, "bad-409").inc()
                    return WitnessOutcome(name, (), "409 without a valid size")
                self._remember(name, their)
                continue
            if response.status_code != 200:
                metrics.witness_failures.labels(name, str(response.status_code)).inc()
                return WitnessOutcome(name, (), f"HTTP {response.status_code}")
            try:
                lines = parse_signature_lines(content)
            except MerkleError:
                metrics.witness_failures.labels(name, "bad-cosignature").inc()
                return WitnessOutcome(name, (), "unparsable cosignature")
            text = parse_note(note).text.encode("utf-8")
            good = tuple(
                s
                for s in lines
                if s.name == witness.verifier.name
                and s.key_id == witness.verifier.key_id
                and witness.verifier.verify(text, s.signature)
            )
            if not good:
                metrics.witness_failures.labels(name, "bad-cosignature").inc()
                return WitnessOutcome(name, (), "cosignature does not verify")
            self._remember(name, size)
            metrics.cosignatures.labels(name).inc()
            return WitnessOutcome(name, good)
        return WitnessOutcome(name, (), "witness kept answering 409")

    def _remember(self, name: str, size: int) -> None:
        """Take ``size`` as the witness's size now; :meth:`_store_sizes` writes it later."""
        self._sizes[name] = size
        self._service.metrics.witness_size.labels(name).set(size)

    async def _store_sizes(self) -> None:
        """Write the witnesses' sizes that changed since they were last stored."""
        for name, size in list(self._sizes.items()):
            if self._stored_sizes.get(name) != size:
                await self._service.storage.put_meta(_size_key(name), str(size).encode("ascii"))
                self._stored_sizes[name] = size

    async def _request_body(
        self,
        old: int,
        size: int,
        note: bytes,
        proofs: dict[tuple[int, int], asyncio.Task[list[bytes]]],
    ) -> bytes:
        """The add-checkpoint body; witnesses at the same size share one proof read."""
        proof: list[bytes] = []
        if 0 < old < size:
            task = proofs.get((old, size))
            if task is None:
                task = asyncio.ensure_future(self._service.reader.consistency_proof(old, size))
                proofs[(old, size)] = task
            proof = await asyncio.shield(task)
        lines = [f"old {old}\n".encode()]
        lines += [base64.b64encode(h) + b"\n" for h in proof]
        lines.append(b"\n")
        return b"".join(lines) + note


def _size_key(name: str) -> str:
    return f"witness-size/{name}"


def _parse_size(content: bytes) -> int | None:
    try:
        text = content.decode("ascii")
    except UnicodeDecodeError:
        return None
    if not text.endswith("\n"):
        return None
    try:
        return parse_decimal(text[:-1], what="witness size")
    except MerkleError:
        return None
