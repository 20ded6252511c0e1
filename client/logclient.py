"""The verifying client of an Etch log: checkpoints, trusted state, proofs, entries, evidence.

Nothing the log says is taken on its word. :class:`LogClient` (asyncio, :mod:`httpx`; the same
operations synchronously on :class:`SyncLogClient`):

* fetches ``/checkpoint`` and verifies it under a C2SP tlog-policy: the log's signature and the
  witness quorum (:func:`merkle.policy.verify_checkpoint`);
* keeps a **trusted state** per log origin on disk (:class:`StateStore`): the log's vkey and the
  last checkpoint verified. The state only moves forward, and only after a consistency proof
  from the trusted checkpoint to the new one verifies. The proof is built by the client from
  the log's C2SP tlog-tiles (:class:`client.tlogtiles.TlogTilesClient`); the JSON proof API is
  never consulted;
* reads entries from the tile entry bundles and checks that each hashes to its leaf and that
  the leaf is included under a verified checkpoint (inclusion proof built from tiles);
* writes C2SP tlog-proof receipts from verified data, with the entry in the ``extra`` line so a
  receipt verifies on its own (:func:`verify_receipt_file`, offline);
* finds the events of a token: ``token_ref`` then ``GET /v1/lookup``, each hit re-verified.

Bulk readers (the audit, the monitor) can use ``lean_http``: a small HTTP/1.1 transport
(:mod:`client.transport`) and raw tile reads that spend a fraction of ``httpx``'s CPU per
request; everything read is verified the same way.

When the log presents signed data that cannot all be honest, the client raises a
:class:`client.errors.LogMisbehaviour` subclass and writes an **evidence file** (JSON) into the
evidence directory. Two formats:

* ``etch-witness-evidence/v1`` (:mod:`witness.evidence`, checkable with ``etch evidence verify``)
  for two log-signed checkpoints that are not consistent: ``same-size`` (one size, two roots:
  definitive) and ``proof-failed`` (the consistency proof built from the log's tiles fails);
* ``etch-client-evidence/v1`` for what only a client sees::

    {
      "format": "etch-client-evidence/v1",
      "kind": "rollback" | "untrusted-checkpoint" | "tile-mismatch" | "entry-mismatch",
      "origin": "example.com/log",
      "log": "https://log.example.com",
      "trusted":   {"tree_size": 9, "checkpoint": "<signed note>"} | null,
      "presented": {"tree_size": 5, "checkpoint": "<note as served>"} | null,
      "proof": ["<base64 hash>", ...],
      "checked": "what the client checked, in words",
      "reason": "why it failed",
      "details": {"index": 3, "entry": "<base64>", "leaf_hash": "<base64>", ...},
      "observed_at": 1767225600
    }

  :func:`verify_client_evidence` re-checks such a document with nothing but the log's vkey.

Trusted state file (``<state_dir>/logs/<hex SHA-256(origin)>.json``, written atomically: temp
file, fsync, rename, fsync of the directory; updated under an exclusive ``flock``)::

    {"format": "etch-trusted-state/v1", "origin": "...", "vkey": "...", "tree_size": 9,
     "checkpoint": "<signed note>", "updated_at": 1767225600, "log_urls": ["http://..."]}

Errors: :mod:`client.errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NoReturn, TypeVar
from urllib.parse import urlsplit

import httpx

from client.cbor import CBORError, decode_deterministic
from client.errors import (
    ClientError,
    ConfigurationError,
    EntryMismatchError,
    InconsistentCheckpointError,
    LogMisbehaviour,
    LogResponseError,
    LogUnavailableError,
    LookupMismatchError,
    NotFoundError,
    ReceiptVerificationError,
    RollbackError,
    StateError,
    TileMismatchError,
    UntrustedCheckpointError,
    VerificationError,
)
from client.tlogtiles import (
    MAX_BUNDLE_BYTES,
    TileFetchError,
    TileNotFoundError,
    TileResponseError,
    TlogTilesClient,
    TlogTilesError,
    tile_for_size,
)
from client.tokens import is_token_ref, token_ref
from client.transport import Http11Pool, Http11Transport, PipelinedGet, RawAnswer, origin_of
from merkle.checkpoint import Checkpoint, open_checkpoint, parse_checkpoint
from merkle.cosignature import cosignature_timestamp
from merkle.errors import MalformedError, MerkleError, NoteError, PolicyError, ProofError
from merkle.hashing import HASH_SIZE, leaf_hash
from merkle.note import Note, decode_base64, encode_base64, parse_note, parse_verifier
from merkle.policy import Policy, parse_policy, verify_checkpoint, verify_parsed_checkpoint
from merkle.receipt import Receipt, format_receipt, parse_receipt
from merkle.tiles import ENTRIES_LEVEL, TILE_WIDTH, Tile, format_entry_bundle, format_tile_path
from merkle.tree import Node, verify_consistency, verify_inclusion

__all__ = [
    "CLIENT_EVIDENCE_FORMAT",
    "DEFAULT_LOG_URL",
    "STATE_FORMAT",
    "TOKEN_REF_FIELDS",
    "BulkReader",
    "ClientEvidenceReport",
    "Cosigner",
    "LeafView",
    "LogClient",
    "LookupQuery",
    "ReceiptReport",
    "StateStore",
    "SyncLogClient",
    "TrustedState",
    "Update",
    "VerifiedCheckpoint",
    "VerifiedEntry",
    "atomic_write",
    "event_matches",
    "event_type_name",
    "flatten_events",
    "parse_leaf_view",
    "policy_for_vkey",
    "read_policy",
    "subject_key",
    "token_ref",
    "verify_client_evidence",
    "verify_receipt_file",
]

DEFAULT_LOG_URL: Final = "http://127.0.0.1:8080"
"""Where ``make run`` / ``etch serve`` listens by default."""

STATE_FORMAT: Final = "etch-trusted-state/v1"
"""Value of ``format`` in every trusted state file."""

CLIENT_EVIDENCE_FORMAT: Final = "etch-client-evidence/v1"
"""Value of ``format`` in the client's own evidence documents."""

WITNESS_EVIDENCE_FORMAT: Final = "etch-witness-evidence/v1"
"""Value of ``format`` in witness-format evidence (:mod:`witness.evidence`)."""

TOKEN_REF_FIELDS: Final = frozenset(
    {"token_ref", "parent_token_ref", "subject_token_ref", "actor_token_ref", "issued_token_ref"}
)
"""Event members that hold token references (the same set as ``server.events``)."""

EVIDENCE_OBSERVER: Final = "etch client"
"""The ``witness`` member of witness-format evidence written by a client."""

MAX_STATE_BYTES: Final = 1 << 20
"""Largest trusted state or evidence file read back (1 MiB)."""

MAX_LOOKUP_PAGES: Final = 1000
"""Most pages one lookup follows (a log that pages forever is cut off)."""

_MAX_JSON_BYTES = 4 << 20
_CLIENT_EVIDENCE_KINDS = frozenset(
    {"rollback", "untrusted-checkpoint", "tile-mismatch", "entry-mismatch"}
)
_CLIENT_EVIDENCE_KEYS = frozenset(
    {
        "format",
        "kind",
        "origin",
        "log",
        "trusted",
        "presented",
        "proof",
        "checked",
        "reason",
        "details",
        "observed_at",
    }
)
_T = TypeVar("_T")


# =========================================================================== values


@dataclass(frozen=True, slots=True)
class Cosigner:
    """A witness of the policy whose cosignature on a checkpoint verified, and its time."""

    name: str
    key_name: str
    timestamp: int


@dataclass(frozen=True, slots=True)
class VerifiedCheckpoint:
    """A checkpoint note that verified under the policy: log signature and witness quorum.

    ``note`` is the signed note exactly as served; ``cosigners`` are the policy witnesses
    whose cosignatures are on it (all verified).
    """

    note: bytes
    checkpoint: Checkpoint
    cosigners: tuple[Cosigner, ...] = ()

    @property
    def origin(self) -> str:
        """The log's origin line."""
        return self.checkpoint.origin

    @property
    def tree_size(self) -> int:
        """The number of entries the checkpoint commits to."""
        return self.checkpoint.tree_size

    @property
    def root_hash(self) -> bytes:
        """The RFC 6962 root of the tree of ``tree_size`` entries."""
        return self.checkpoint.root_hash


@dataclass(frozen=True, slots=True)
class Update:
    """The result of :meth:`LogClient.update`.

    ``previous`` is the trusted checkpoint before (``None`` on first use), ``current`` the
    verified checkpoint now trusted, ``proof`` the consistency proof that linked them (built
    from tiles), ``advanced`` whether the trusted state moved.
    """

    previous: VerifiedCheckpoint | None
    current: VerifiedCheckpoint
    proof: tuple[bytes, ...]
    advanced: bool


@dataclass(frozen=True, slots=True)
class LeafView:
    """An Etch event leaf decoded (``server.leaves`` format): who submitted what, when.

    ``event`` is the event map (for a SET leaf, its claims); ``log_time`` POSIX milliseconds;
    ``signature`` the submitter's Ed25519 signature (event leaves); ``set_jws`` the compact JWS
    (SET leaves).
    """

    submitter: str
    event: Mapping[str, Any]
    log_time: int
    signature: bytes | None = None
    set_jws: str | None = None


@dataclass(frozen=True, slots=True)
class VerifiedEntry:
    """An entry whose inclusion under ``checkpoint`` verified (leaf hash and proof).

    ``proof`` is the inclusion proof built from tiles; ``leaf`` the decoded event leaf, or
    ``None`` for an entry that is not an Etch event leaf.
    """

    index: int
    entry: bytes
    leaf_hash: bytes
    proof: tuple[bytes, ...]
    checkpoint: VerifiedCheckpoint
    leaf: LeafView | None = None

    def receipt(self, *, include_entry: bool = True) -> bytes:
        """Return the C2SP tlog-proof receipt of this entry (the entry as ``extra`` if asked)."""
        return format_receipt(
            Receipt(
                self.index,
                self.proof,
                self.checkpoint.note,
                self.entry if include_entry else None,
            )
        )


@dataclass(frozen=True, slots=True)
class LookupQuery:
    """What ``GET /v1/lookup`` is asked: one key and an optional log-time range (POSIX ms).

    ``kind`` is ``token_ref``, ``client_id``, ``subject`` or ``type``; ``since_ms`` is
    inclusive and ``until_ms`` exclusive. Raises ConfigurationError for an unknown kind, an
    empty value, a malformed token reference or an empty time range.
    """

    kind: str
    value: str
    since_ms: int | None = None
    until_ms: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("token_ref", "client_id", "subject", "type"):
            raise ConfigurationError(f"unknown lookup kind {self.kind!r}")
        if not self.value or not self.value.isprintable():
            raise ConfigurationError(f"the {self.kind} to look up is empty or not printable")
        if self.kind == "token_ref" and not is_token_ref(self.value):
            raise ConfigurationError("not a token reference (43 canonical base64url characters)")
        if (
            self.since_ms is not None
            and self.until_ms is not None
            and self.since_ms >= self.until_ms
        ):
            raise ConfigurationError("the time range is empty (since must be before until)")


@dataclass(frozen=True, slots=True)
class ReceiptReport:
    """What :func:`verify_receipt_file` established: the entry is in the log, as of checkpoint.

    ``entry_source`` says where the entry came from (``given`` or ``receipt extra``).
    """

    index: int
    entry: bytes
    checkpoint: VerifiedCheckpoint
    entry_source: str

    @property
    def leaf(self) -> LeafView | None:
        """The entry decoded as an Etch event leaf, or ``None`` if it is not one."""
        return parse_leaf_view(self.entry)


@dataclass(frozen=True, slots=True)
class TrustedState:
    """The client's memory of one log: its key and the last checkpoint it verified."""

    origin: str
    vkey: str
    note: bytes
    checkpoint: Checkpoint
    updated_at: int
    log_urls: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ClientEvidenceReport:
    """What :func:`verify_client_evidence` established about a client evidence document.

    ``definitive`` is true only when the document alone convicts the log (two log-signed
    checkpoints that cannot both be honest); ``summary`` says what was and was not shown.
    """

    origin: str
    kind: str
    definitive: bool
    summary: str


# =========================================================================== small helpers


def policy_for_vkey(vkey: str) -> Policy:
    """Return the policy "this log's signature, no witness quorum" for a log vkey.

    Raises ConfigurationError for a vkey that is not a valid Ed25519 log key.
    """
    try:
        return parse_policy(f"log {vkey}\nquorum none\n")
    except MalformedError as exc:
        raise ConfigurationError(f"not a valid log vkey: {exc}") from None


def read_policy(path: Path) -> Policy:
    """Read and parse a C2SP tlog-policy file. Raises ConfigurationError naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read policy file {path}: {exc}") from None
    try:
        return parse_policy(text)
    except MalformedError as exc:
        raise ConfigurationError(f"policy file {path}: {exc}") from None


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically and durably: temp file, fsync, rename, fsync dir.

    Readers see the old contents or the new, never a mix, even across a crash. The temporary
    file is created exclusively with ``mode`` in the same directory. Raises OSError.
    """
    directory = path.parent
    temp = directory / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _origin_key(origin: str) -> str:
    return hashlib.sha256(origin.encode("utf-8")).hexdigest()


def _b64(data: bytes) -> str:
    return encode_base64(data)


def _note_text(note: bytes) -> str:
    """Return a note as text for a JSON document (undecodable bytes replaced, never raising)."""
    return note.decode("utf-8", errors="replace")


def _canonical_url(url: str) -> str:
    """Return ``url`` without a trailing slash; raises ConfigurationError for a non-HTTP URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(f"the log URL must be http:// or https://, not {url!r}")
    if parts.query or parts.fragment:
        raise ConfigurationError("the log URL must not have a query or fragment")
    return url.rstrip("/")


def subject_key(subject: object) -> str | None:
    """Return the lookup value of an event's ``sub``: the pseudonym, or ``id`` / ``sub`` inside.

    The same rule as the log's index (``server.events.subject_key``).
    """
    if isinstance(subject, str):
        return subject
    if isinstance(subject, dict):
        for member in ("id", "sub"):
            found = subject.get(member)
            if isinstance(found, str):
                return found
    return None


def parse_leaf_view(entry: bytes) -> LeafView | None:
    """Decode an Etch event leaf (deterministic CBOR map, ``v`` 1), or ``None`` if it is not one.

    Event leaf: ``{"v", "submitter", "event", "signature", "log_time"}``; SET leaf: ``{"v",
    "submitter", "set", "event", "log_time"}``; batch event leaf: ``{"v", "submitter", "batch",
    "event", "log_time"}`` (``server.leaves``). Never raises.
    """
    try:
        value = decode_deterministic(entry)
    except CBORError:
        return None
    if not isinstance(value, dict) or value.get("v") != 1 or type(value.get("v")) is not int:
        return None
    submitter, event, log_time = value.get("submitter"), value.get("event"), value.get("log_time")
    if not isinstance(submitter, str) or not isinstance(event, dict):
        return None
    if type(log_time) is not int or log_time < 0:
        return None
    keys = set(value)
    if keys == {"v", "submitter", "event", "signature", "log_time"}:
        signature = value["signature"]
        if not isinstance(signature, bytes):
            return None
        return LeafView(submitter, event, log_time, signature=signature)
    if keys == {"v", "submitter", "set", "event", "log_time"} and isinstance(value["set"], str):
        return LeafView(submitter, event, log_time, set_jws=value["set"])
    batch_keys = {"v", "submitter", "batch", "event", "log_time"}
    if keys == batch_keys and isinstance(value["batch"], dict):
        # Batch-signed event (client.batchsig): attributed by the batch signature and path.
        return LeafView(submitter, event, log_time)
    return None


def event_type_name(uri: str) -> str:
    """Return the short name of an event type URI, as the log indexes it.

    The log's own table (``server.events.type_name``) when it knows the URI, else the URI
    itself, e.g. ``.../oauth/event-type/token-issued`` -> ``token-issued``.
    """
    from server.events import type_name

    return type_name(uri) or uri


def _set_subject(claims: Mapping[str, Any]) -> str | None:
    sub_id = claims.get("sub_id")
    subject = subject_key(sub_id)
    if subject is None and isinstance(sub_id, dict):
        subject = subject_key(sub_id.get("user"))
    return subject if subject is not None else subject_key(claims.get("sub"))


def flatten_events(leaf: LeafView) -> list[dict[str, Any]]:
    """Return the flat events of a leaf: the event itself, or one per SET ``events`` member.

    A flat event has a text ``type``. SET claims (``{"iat", "sub_id", "events": {URI: {...}}}``,
    RFC 8417) give one event per URI, typed by :func:`event_type_name`, with the claims'
    ``iat``, ``jti``, subject and ``client_id`` where the member lacks them. Anything else
    gives no event.
    """
    event = dict(leaf.event)
    if isinstance(event.get("type"), str):
        return [event]
    members = event.get("events")
    if not isinstance(members, dict):
        return []
    subject = _set_subject(event)
    flat = []
    for uri, body in members.items():
        if not isinstance(body, dict):
            continue
        item = {k: v for k, v in event.items() if k in ("iat", "jti", "client_id")}
        if subject is not None:
            item["sub"] = subject
        item.update(body)
        item["type"] = event_type_name(uri)
        flat.append(item)
    return flat


def _found_deep(value: object, names: frozenset[str], wanted: str) -> bool:
    """Tell whether a member named one of ``names`` holds ``wanted`` at any depth."""
    if isinstance(value, dict):
        return any(
            (name in names and item == wanted) or _found_deep(item, names, wanted)
            for name, item in value.items()
        )
    if isinstance(value, list):
        return any(_found_deep(item, names, wanted) for item in value)
    return False


def event_matches(leaf: LeafView | None, query: LookupQuery) -> bool:
    """Tell whether a decoded leaf is an answer to ``query`` (key and log-time range).

    Mirrors how the log indexes leaves: an event's ``type``, ``client_id``, subject
    (:func:`subject_key`) and token-reference members; for SET claims, each event's type, the
    subject of ``sub_id`` (or ``sub``) and ``client_id`` / token references at any depth.
    """
    if leaf is None:
        return False
    if query.since_ms is not None and leaf.log_time < query.since_ms:
        return False
    if query.until_ms is not None and leaf.log_time >= query.until_ms:
        return False
    event = leaf.event
    if not isinstance(event.get("type"), str) and isinstance(event.get("events"), dict):
        payloads = event["events"]
        if query.kind == "type":
            return any(event_type_name(uri) == query.value for uri in payloads)
        if query.kind == "subject":
            return _set_subject(event) == query.value
        names = TOKEN_REF_FIELDS if query.kind == "token_ref" else frozenset({"client_id"})
        return _found_deep(payloads, names, query.value)
    if query.kind == "token_ref":
        return any(event.get(name) == query.value for name in TOKEN_REF_FIELDS)
    if query.kind == "subject":
        return subject_key(event.get("sub")) == query.value
    return event.get(query.kind) == query.value


@contextlib.contextmanager
def _reader_hint() -> Iterator[None]:
    """Add a hint about reader credentials to a 401/403 refusal of entry contents."""
    try:
        yield
    except LogResponseError as exc:
        if isinstance(exc, NotFoundError) or not re.search(r"answered 40[13]\b", str(exc)):
            raise
        raise LogResponseError(
            f"{exc}: entry contents need a reader's credential (--credential-file)"
        ) from None


@contextlib.contextmanager
def _tile_errors() -> Iterator[None]:
    """Translate the tile reader's errors into the client's hierarchy."""
    try:
        yield
    except TileNotFoundError as exc:
        raise NotFoundError(str(exc)) from None
    except TileFetchError as exc:
        raise LogUnavailableError(str(exc)) from None
    except (TileResponseError, TlogTilesError) as exc:
        raise LogResponseError(str(exc)) from None
    except MalformedError as exc:
        raise LogResponseError(f"the log's tiles are unusable: {exc}") from None


# =========================================================================== trusted state


def _parse_state(data: bytes, path: Path) -> TrustedState:
    """Parse and re-verify a trusted state file. Raises StateError."""
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise StateError(f"trusted state {path} is not UTF-8 JSON") from None
    keys = {"format", "origin", "vkey", "tree_size", "checkpoint", "updated_at", "log_urls"}
    if not isinstance(document, dict) or set(document) != keys:
        raise StateError(f"trusted state {path} does not have exactly the keys {sorted(keys)}")
    if document["format"] != STATE_FORMAT:
        raise StateError(f"trusted state {path} is not {STATE_FORMAT}")
    origin, vkey, note_text = document["origin"], document["vkey"], document["checkpoint"]
    urls = document["log_urls"]
    if not all(isinstance(v, str) for v in (origin, vkey, note_text)):
        raise StateError(f"trusted state {path}: origin, vkey and checkpoint must be strings")
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise StateError(f"trusted state {path}: log_urls must be a list of strings")
    updated_at = document["updated_at"]
    if type(updated_at) is not int or updated_at < 0:
        raise StateError(f"trusted state {path}: updated_at must be a non-negative integer")
    note = note_text.encode("utf-8")
    try:
        checkpoint, _, _ = open_checkpoint(note, parse_verifier(vkey))
    except (MerkleError, ValueError) as exc:
        raise StateError(f"trusted state {path} does not verify with its own key: {exc}") from None
    if checkpoint.origin != origin or checkpoint.tree_size != document["tree_size"]:
        raise StateError(f"trusted state {path}: origin or size does not match its checkpoint")
    return TrustedState(origin, vkey, note, checkpoint, updated_at, tuple(urls))


def _format_state(state: TrustedState) -> bytes:
    document = {
        "format": STATE_FORMAT,
        "origin": state.origin,
        "vkey": state.vkey,
        "tree_size": state.checkpoint.tree_size,
        "checkpoint": state.note.decode("utf-8"),
        "updated_at": state.updated_at,
        "log_urls": list(state.log_urls),
    }
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


class StateStore:
    """The trusted states of a state directory: one JSON file per log origin.

    Layout: ``<dir>/logs/<hex SHA-256(origin)>.json`` and, beside each, a ``.lock`` file that
    :meth:`locked` holds with ``flock`` while a state is read, checked and replaced, so two
    ``etch`` processes never advance one log's state past each other's checks.
    """

    def __init__(self, directory: Path) -> None:
        """Use ``directory`` (created on first write, mode 0700)."""
        self.directory = directory

    @property
    def logs_dir(self) -> Path:
        """Where the state files live."""
        return self.directory / "logs"

    def path(self, origin: str) -> Path:
        """Return the state file of ``origin``."""
        return self.logs_dir / f"{_origin_key(origin)}.json"

    def _ensure(self) -> None:
        try:
            self.logs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StateError(f"cannot create the state directory {self.logs_dir}: {exc}") from None

    def load(self, origin: str) -> TrustedState | None:
        """Return the trusted state of ``origin``, or ``None`` if there is none.

        Raises StateError if the file cannot be read, is malformed, or does not verify.
        """
        path = self.path(origin)
        try:
            with path.open("rb") as handle:
                data = handle.read(MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read trusted state {path}: {exc}") from None
        if len(data) > MAX_STATE_BYTES:
            raise StateError(f"trusted state {path} is larger than {MAX_STATE_BYTES} bytes")
        state = _parse_state(data, path)
        if state.origin != origin:
            raise StateError(f"trusted state {path} is for another origin")
        return state

    def save(self, state: TrustedState) -> None:
        """Replace the state of ``state.origin`` atomically. Raises StateError."""
        self._ensure()
        try:
            atomic_write(self.path(state.origin), _format_state(state), 0o600)
        except OSError as exc:
            raise StateError(f"cannot write trusted state for {state.origin}: {exc}") from None

    @contextlib.asynccontextmanager
    async def locked(self, origin: str, wait: float = 30.0) -> AsyncIterator[None]:
        """Hold the exclusive lock of ``origin``'s state (polling, never blocking the loop).

        Raises StateError if the lock is not obtained within ``wait`` seconds.
        """
        self._ensure()
        lock_path = self.logs_dir / f"{_origin_key(origin)}.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                        raise StateError(f"cannot lock {lock_path}: {exc}") from None
                    if time.monotonic() > deadline:
                        raise StateError(
                            f"another etch process holds {lock_path} for more than {wait} s"
                        ) from None
                    await asyncio.sleep(0.05)
            yield
        finally:
            os.close(fd)


# =========================================================================== evidence


class EvidenceWriter:
    """Writes evidence documents into a directory (``None``: keep them in memory only)."""

    def __init__(self, directory: Path | None) -> None:
        """Write into ``directory`` (created on first use)."""
        self.directory = directory

    def write(self, kind: str, document: bytes) -> Path | None:
        """Store one document atomically as ``<UTC time>-<kind>-<digest>.json``; return its path.

        Returns ``None`` without a directory. Raises StateError if the file cannot be written.
        """
        if self.directory is None:
            return None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        digest = hashlib.sha256(document).hexdigest()[:12]
        path = self.directory / f"{stamp}-{kind}-{digest}.json"
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write(path, document, 0o644)
        except OSError as exc:
            raise StateError(f"cannot write evidence into {self.directory}: {exc}") from None
        return path


def _side(note: bytes | None, size: int | None) -> dict[str, Any] | None:
    if note is None:
        return None
    return {"tree_size": size, "checkpoint": _note_text(note)}


def client_evidence(
    *,
    kind: str,
    origin: str,
    log: str,
    trusted: tuple[bytes, int] | None,
    presented: tuple[bytes, int | None] | None,
    proof: Sequence[bytes],
    checked: str,
    reason: str,
    details: Mapping[str, Any],
    observed_at: int,
) -> dict[str, Any]:
    """Build an ``etch-client-evidence/v1`` document (see the module docstring).

    ``trusted`` and ``presented`` are ``(note, tree size)`` pairs. Raises ValueError for an
    unknown ``kind``.
    """
    if kind not in _CLIENT_EVIDENCE_KINDS:
        raise ValueError(f"unknown client evidence kind {kind!r}")
    return {
        "format": CLIENT_EVIDENCE_FORMAT,
        "kind": kind,
        "origin": origin,
        "log": log,
        "trusted": _side(*trusted) if trusted else None,
        "presented": _side(*presented) if presented else None,
        "proof": [_b64(node) for node in proof],
        "checked": checked,
        "reason": reason,
        "details": dict(details),
        "observed_at": observed_at,
    }


def _dump(document: Mapping[str, Any]) -> bytes:
    return (json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _load_evidence(data: bytes) -> dict[str, Any]:
    if len(data) > MAX_STATE_BYTES:
        raise VerificationError(f"evidence is larger than {MAX_STATE_BYTES} bytes")
    try:
        document = json.loads(data.decode("utf-8"))
        # A "\ud800" escape decodes to a lone surrogate, which no UTF-8 text can hold.
        json.dumps(document, ensure_ascii=False).encode("utf-8")
    except (UnicodeError, json.JSONDecodeError) as exc:
        raise VerificationError(f"evidence is not UTF-8 JSON: {exc}") from None
    if not isinstance(document, dict) or set(document) != _CLIENT_EVIDENCE_KEYS:
        raise VerificationError(
            f"client evidence must have exactly the keys {sorted(_CLIENT_EVIDENCE_KEYS)}"
        )
    if document["format"] != CLIENT_EVIDENCE_FORMAT:
        raise VerificationError(f"evidence format is not {CLIENT_EVIDENCE_FORMAT!r}")
    if document["kind"] not in _CLIENT_EVIDENCE_KINDS:
        raise VerificationError(f"unknown client evidence kind {document['kind']!r}")
    for key in ("origin", "log", "checked", "reason"):
        if not isinstance(document[key], str):
            raise VerificationError(f"evidence {key!r} must be a string")
    if not isinstance(document["details"], dict):
        raise VerificationError("evidence 'details' must be an object")
    return document


def _evidence_side(document: Mapping[str, Any], name: str, vkey: str) -> Checkpoint | None:
    """Open one side of a client evidence document; ``None`` if absent. Raises on bad data."""
    side = document[name]
    if side is None:
        return None
    if not isinstance(side, dict) or set(side) != {"tree_size", "checkpoint"}:
        raise VerificationError(f"evidence {name!r} must have tree_size and checkpoint")
    if not isinstance(side["checkpoint"], str):
        raise VerificationError(f"evidence {name!r} checkpoint must be a string")
    try:
        checkpoint, _, _ = open_checkpoint(side["checkpoint"].encode("utf-8"), parse_verifier(vkey))
    except MerkleError as exc:
        raise VerificationError(f"the {name} checkpoint is not signed by the log: {exc}") from None
    if checkpoint.origin != document["origin"] or side["tree_size"] != checkpoint.tree_size:
        raise VerificationError(f"the {name} checkpoint does not match the document")
    return checkpoint


def _evidence_hashes(value: object, what: str) -> list[bytes]:
    if not isinstance(value, list) or len(value) > 64:
        raise VerificationError(f"evidence {what} must be a list of at most 64 hashes")
    hashes = []
    for item in value:
        try:
            node = decode_base64(item, what=what) if isinstance(item, str) else b""
        except MalformedError as exc:
            raise VerificationError(str(exc)) from None
        if len(node) != HASH_SIZE:
            raise VerificationError(f"evidence {what} holds a value that is not a 32-byte hash")
        hashes.append(node)
    return hashes


def _detail_bytes(details: Mapping[str, Any], name: str) -> bytes:
    value = details.get(name)
    if not isinstance(value, str):
        raise VerificationError(f"evidence details need {name!r}")
    try:
        return decode_base64(value, what=name)
    except MalformedError as exc:
        raise VerificationError(str(exc)) from None


def verify_client_evidence(data: bytes, log_vkey: str) -> ClientEvidenceReport:
    """Re-check an ``etch-client-evidence/v1`` document with nothing but the log's vkey.

    Per kind:

    * ``rollback``: both checkpoints carry the log's signature and the presented one is
      smaller than the trusted one. Definitive only if the recorded consistency proof (from
      the presented size to the trusted one) fails: then the two cannot both be honest.
    * ``untrusted-checkpoint``: the presented note indeed does not verify with the key (it may
      be a forgery by anyone on the path, so this is never definitive).
    * ``entry-mismatch``: the checkpoint is the log's; ``details.leaf_hash`` is included under it
      by the recorded proof, and ``details.entry`` does not hash to it.
    * ``tile-mismatch``: the checkpoint is the log's and the recorded inclusion proof of
      ``details.leaf_hash`` at ``details.index`` (or the recorded tile contents) does not lead
      to its root.

    Raises VerificationError if the document is malformed or its claim does not hold;
    ConfigurationError for an invalid vkey.
    """
    try:
        parse_verifier(log_vkey)
    except MalformedError as exc:
        raise ConfigurationError(f"invalid log vkey: {exc}") from None
    document = _load_evidence(data)
    kind, origin, details = document["kind"], document["origin"], document["details"]
    proof = _evidence_hashes(document["proof"], "proof")
    if kind == "untrusted-checkpoint":
        return _verify_untrusted(document, log_vkey)
    trusted = _evidence_side(document, "trusted", log_vkey)
    presented = _evidence_side(document, "presented", log_vkey)
    if kind == "rollback":
        if trusted is None or presented is None or presented.tree_size >= trusted.tree_size:
            raise VerificationError("rollback evidence needs a presented size below the trusted")
        try:
            verify_consistency(
                presented.tree_size,
                trusted.tree_size,
                presented.root_hash,
                trusted.root_hash,
                proof,
            )
        except ProofError:
            if proof:
                return ClientEvidenceReport(
                    origin,
                    kind,
                    True,
                    f"the log signed size {trusted.tree_size}, then presented size "
                    f"{presented.tree_size} and a consistency proof between them fails",
                )
        return ClientEvidenceReport(
            origin,
            kind,
            False,
            f"the log signed size {trusted.tree_size} and later presented the older size "
            f"{presented.tree_size}: a rewind (both sizes are signed; a consistent older view "
            "is not by itself a fork)",
        )
    if presented is None:
        raise VerificationError(f"{kind} evidence needs the presented checkpoint")
    if kind == "tile-mismatch" and "tile" in details:
        served, computed = _detail_bytes(details, "served"), _detail_bytes(details, "computed")
        if served == computed or not isinstance(details["tile"], str):
            raise VerificationError("the served and recomputed hashes agree: nothing is shown")
        return ClientEvidenceReport(
            origin,
            kind,
            False,
            f"{details['tile']} as served for the signed tree of size {presented.tree_size} "
            "differs from the client's recomputation from the level below (the inputs of the "
            "recomputation are the log's own entries and are not included)",
        )
    index = details.get("index")
    if type(index) is not int or not 0 <= index < presented.tree_size:
        raise VerificationError("evidence details need an index below the tree size")
    tile_leaf = _detail_bytes(details, "leaf_hash")
    included = True
    try:
        verify_inclusion(tile_leaf, index, presented.tree_size, proof, presented.root_hash)
    except ProofError:
        included = False
    if kind == "entry-mismatch":
        entry = _detail_bytes(details, "entry")
        if not included or leaf_hash(entry) == tile_leaf:
            raise VerificationError("the entry hashes to the included leaf: nothing is shown")
        return ClientEvidenceReport(
            origin,
            kind,
            False,
            f"the log's tiles include leaf hash {tile_leaf.hex()[:16]}... at index {index} under "
            "its signed checkpoint, but the entry it served does not hash to it (the entry "
            "bytes are unsigned, so this documents what was served)",
        )
    if included:
        raise VerificationError("the recorded inclusion proof verifies: nothing is shown")
    return ClientEvidenceReport(
        origin,
        kind,
        False,
        f"the inclusion proof of index {index} built from the log's tiles does not lead to the "
        "root it signed (tiles are unsigned, so this documents what was served)",
    )


def _verify_untrusted(document: Mapping[str, Any], log_vkey: str) -> ClientEvidenceReport:
    side = document["presented"]
    if not isinstance(side, dict) or not isinstance(side.get("checkpoint"), str):
        raise VerificationError("untrusted-checkpoint evidence needs the presented note")
    try:
        open_checkpoint(side["checkpoint"].encode("utf-8"), parse_verifier(log_vkey))
    except MerkleError as exc:
        return ClientEvidenceReport(
            document["origin"],
            "untrusted-checkpoint",
            False,
            f"the checkpoint the log served does not verify with its key ({exc}); "
            "anyone between the log and the client could have served it",
        )
    # Signed by the log: the failure recorded must have been the witness quorum.
    if "quorum" not in document["reason"]:
        raise VerificationError("the presented checkpoint verifies with the log's key")
    return ClientEvidenceReport(
        document["origin"],
        "untrusted-checkpoint",
        False,
        "the checkpoint is signed by the log but, as recorded, lacked the policy's witness "
        "quorum: the log published it without enough witnesses",
    )


def _checked_body(answer: RawAnswer, url: str, limit: int) -> bytes:
    """Return the body of a lean-HTTP answer to a GET of ``url`` if it is a usable 200.

    Raises NotFoundError (404, 410), LogUnavailableError (429, 5xx), LogResponseError (other
    statuses, a body over ``limit`` bytes or with a content coding).
    """
    status = answer.status
    if status in (404, 410):
        raise NotFoundError(f"log answered {status} ({url})")
    if status == 429 or status >= 500:
        raise LogUnavailableError(f"log answered {status} ({url})")
    if status != 200:
        raise LogResponseError(f"log answered {status} ({url})")
    if len(answer.body) > limit:
        raise LogResponseError(f"response is larger than {limit} bytes ({url})")
    for name, value in answer.headers:
        if name.lower() == b"content-encoding" and value.strip().lower() != b"identity":
            raise LogResponseError(f"unasked-for content coding ({url})")
    return answer.body


class BulkReader:
    """The bodies of many GETs of one log, in order (made by :meth:`LogClient.bulk_reader`).

    Use as ``async with reader:``, then call :meth:`next` once per path, in order.
    """

    def __init__(
        self, url: str, paths: Sequence[str], limits: Sequence[int], get: PipelinedGet
    ) -> None:
        """Wrap ``get``, whose targets are ``paths`` under ``url``."""
        if len(paths) != len(limits):
            raise ValueError("one limit per path")
        self._url = url
        self._paths = paths
        self._limits = limits
        self._get = get
        self._at = 0

    async def __aenter__(self) -> BulkReader:
        try:
            await self._get.start()
        except httpx.HTTPError as exc:
            raise LogUnavailableError(f"{type(exc).__name__} ({self._url})") from None
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._get.aclose()

    async def next(self) -> bytes:
        """Return the body of the next path. Raises as :meth:`LogClient._raw_get` does."""
        at = self._at
        try:
            answer = await self._get.next()
        except httpx.HTTPError as exc:
            url = f"{self._url}/{self._paths[at]}"
            raise LogUnavailableError(f"{type(exc).__name__}: {exc} ({url})") from None
        self._at = at + 1
        body = answer.body
        if answer.status == 200 and len(body) <= self._limits[at] and not any(
            name.lower() == b"content-encoding" for name, _ in answer.headers
        ):
            return body
        return _checked_body(answer, f"{self._url}/{self._paths[at]}", self._limits[at])


# =========================================================================== receipts


def verify_receipt_file(
    data: bytes, policy: Policy, entry: bytes | None = None
) -> ReceiptReport:
    """Verify a C2SP tlog-proof receipt offline, for ``entry`` or the entry in its ``extra``.

    What :func:`merkle.receipt.verify_receipt` checks, in its order: the checkpoint's log
    signature and witness quorum under ``policy`` (:func:`merkle.policy.verify_checkpoint`),
    then the RFC 9162 §2.1.3.2 inclusion proof of ``leaf_hash(entry)`` at the receipt's index;
    the parsed note is kept to report the cosigners. The ``extra`` line is unauthenticated
    data, but an entry taken from it is exactly as trusted as one given separately once its
    inclusion verifies.

    Raises ReceiptVerificationError with the reason (malformed receipt, no entry, signature,
    quorum, proof).
    """
    try:
        receipt = parse_receipt(data)
    except MalformedError as exc:
        raise ReceiptVerificationError(f"not a valid tlog-proof receipt: {exc}") from None
    source = "given"
    if entry is None:
        if receipt.extra is None:
            raise ReceiptVerificationError(
                "the receipt carries no entry (no extra line): give the entry with --entry"
            )
        entry, source = receipt.extra, "receipt extra"
    try:
        # The receipt parsed its note and checkpoint once, strictly: verify those values.
        checkpoint, note = receipt.parsed_checkpoint, receipt.note
        verify_parsed_checkpoint(policy, note, checkpoint)
        if receipt.index >= checkpoint.tree_size:
            raise ProofError(
                f"index {receipt.index} is not below the tree size {checkpoint.tree_size}"
            )
        verify_inclusion(
            leaf_hash(entry),
            receipt.index,
            checkpoint.tree_size,
            receipt.proof,
            checkpoint.root_hash,
        )
    except PolicyError as exc:
        raise ReceiptVerificationError(f"witness quorum not met: {exc}") from None
    except NoteError as exc:
        raise ReceiptVerificationError(f"checkpoint signature: {exc}") from None
    except ProofError as exc:
        raise ReceiptVerificationError(f"inclusion proof: {exc}") from None
    except MerkleError as exc:
        raise ReceiptVerificationError(str(exc)) from None
    verified = VerifiedCheckpoint(receipt.checkpoint, checkpoint, _cosigners(policy, note))
    return ReceiptReport(receipt.index, entry, verified, source)


def _cosigners(policy: Policy, note: Note) -> tuple[Cosigner, ...]:
    """Return the policy witnesses that cosigned ``note``.

    Requires ``note`` to have passed :func:`merkle.policy.verify_checkpoint`, which verified
    every signature by a known key (a failing one raises), so matching (name, key ID) suffices.
    """
    found: dict[str, Cosigner] = {}
    for signature in note.signatures:
        name = policy.witness_name(signature.name, signature.key_id)
        if name is None or name in found:
            continue
        try:
            stamp = cosignature_timestamp(signature)
        except MalformedError:
            continue
        found[name] = Cosigner(name, signature.name, stamp)
    return tuple(found.values())


# =========================================================================== the client


class LogClient:
    """A verifying client of one log, over asyncio (see the module docstring).

    ``url`` is the log's base URL; ``policy`` says which log keys and witness quorum make a
    checkpoint trusted; ``state_dir`` holds the trusted states (``None``: memory only, for one
    process); ``evidence_dir`` receives evidence files (default ``<state_dir>/evidence``);
    ``credential`` is a bearer credential sent to the log (readers, submitters); ``http`` an
    existing client to use as it is (its headers are not changed: it carries any credential
    itself); ``transport`` a transport for the client made here (tests pass an ASGI one);
    ``compress`` asks for gzip bodies (worth it over a network, not on loopback).
    """

    def __init__(
        self,
        url: str,
        policy: Policy,
        *,
        state_dir: Path | None = None,
        evidence_dir: Path | None = None,
        credential: str | None = None,
        http: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 15.0,
        concurrency: int = 8,
        compress: bool = True,
        lean_http: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Prepare the client; nothing is fetched yet. Raises ConfigurationError.

        ``lean_http`` uses :class:`client.transport.Http11Transport` (much less CPU per
        request, no proxy support) instead of ``httpx``'s default transport.
        """
        self.url = _canonical_url(url)
        if not policy.logs:
            raise ConfigurationError("the policy lists no log")
        self.policy = policy
        self.store = StateStore(state_dir) if state_dir is not None else None
        if evidence_dir is None and state_dir is not None:
            evidence_dir = state_dir / "evidence"
        self.evidence = EvidenceWriter(evidence_dir)
        self._memory: dict[str, TrustedState] = {}
        self._clock = clock
        headers = {
            "User-Agent": "etch-client/0.1",
            "Accept-Encoding": "gzip" if compress else "identity",
        }
        if credential is not None:
            if not credential or not credential.isprintable() or any(
                c.isspace() for c in credential
            ):
                raise ConfigurationError("the credential is empty or has spaces or controls")
            headers["Authorization"] = f"Bearer {credential}"
        self._own_http = http is None
        self._timeout = timeout
        self._pool: Http11Pool | None = None
        if transport is None and http is None and lean_http:
            self._pool = Http11Pool(max_connections=concurrency)
            transport = Http11Transport(self._pool)
        base = httpx.URL(self.url)
        self._origin = origin_of(base)
        self._base_path = base.raw_path.rstrip(b"/")
        self._raw_headers = [
            (b"Host", base.netloc),
            (b"User-Agent", b"etch-client/0.1"),
            (b"Accept-Encoding", b"identity"),
        ]
        if credential is not None:
            self._raw_headers.append((b"Authorization", f"Bearer {credential}".encode("ascii")))
        self.http = http or httpx.AsyncClient(
            transport=transport,
            headers=headers,
            timeout=timeout,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )
        self.tiles = TlogTilesClient(
            self.url, self.http, timeout=timeout, concurrency=concurrency, cache_tiles=512
        )

    async def __aenter__(self) -> LogClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client if this client created it."""
        if self._own_http:
            await self.http.aclose()

    def now(self) -> int:
        """Return the client's clock in POSIX seconds."""
        return int(self._clock())

    # -- checkpoints ---------------------------------------------------------------------------

    def log_vkey(self, origin: str) -> str:
        """Return the vkey of the policy's log for ``origin``. Raises ConfigurationError."""
        for entry in self.policy.logs:
            if entry.verifier.name == origin:
                return entry.vkey
        raise ConfigurationError(f"the policy has no log with origin {origin!r}")

    def verify_note(self, note: bytes) -> VerifiedCheckpoint:
        """Verify a checkpoint note under the policy (log signature, witness quorum).

        Raises UntrustedCheckpointError (evidence written) if it does not verify.
        """
        try:
            checkpoint, parsed = verify_checkpoint(self.policy, note)
        except (MerkleError, ValueError) as exc:
            self._untrusted(note, exc)
        return VerifiedCheckpoint(note, checkpoint, _cosigners(self.policy, parsed))

    def _untrusted(self, note: bytes, exc: Exception) -> NoReturn:
        if isinstance(exc, PolicyError):
            reason = f"witness quorum not met: {exc}"
        elif isinstance(exc, NoteError):
            reason = f"not validly signed by the log's known key: {exc}"
        else:
            reason = f"malformed checkpoint: {exc}"
        origin, size = "", None
        with contextlib.suppress(MerkleError, ValueError):
            parsed = parse_checkpoint(parse_note(note).text)
            origin, size = parsed.origin, parsed.tree_size
        trusted = self._memory.get(origin)
        if origin and self.store is not None and trusted is None:
            with contextlib.suppress(StateError):
                trusted = self.store.load(origin)
        raise self._misbehaviour(
            UntrustedCheckpointError,
            f"the checkpoint served by {self.url} is not trusted: {reason}",
            client_evidence(
                kind="untrusted-checkpoint",
                origin=origin,
                log=self.url,
                trusted=(trusted.note, trusted.checkpoint.tree_size) if trusted else None,
                presented=(note, size),
                proof=(),
                checked="the log's signature and the witness quorum of the policy",
                reason=reason,
                details={},
                observed_at=self.now(),
            ),
        )

    def _misbehaviour(
        self, cls: type[LogMisbehaviour], message: str, document: dict[str, Any]
    ) -> LogMisbehaviour:
        path = self.evidence.write(cls.kind, _dump(document))
        suffix = f"; evidence written to {path}" if path is not None else ""
        return cls(message + suffix, evidence=document, evidence_path=path)

    def _witness_evidence(
        self,
        cls: type[LogMisbehaviour],
        message: str,
        *,
        kind: str,
        trusted: VerifiedCheckpoint,
        presented: VerifiedCheckpoint,
        proof: Sequence[bytes],
        reason: str,
        sources: tuple[str, str] | None = None,
    ) -> LogMisbehaviour:
        from witness.evidence import Observation, make_record

        first_source, second_source = sources or self.default_sources
        record = make_record(
            kind=kind,
            first=Observation(trusted.note, trusted.checkpoint, first_source),
            second=Observation(presented.note, presented.checkpoint, second_source),
            proof=proof,
            reason=reason,
            now_ms=int(self._clock() * 1000),
            witness=EVIDENCE_OBSERVER,
        )
        path = self.evidence.write(kind, record.document)
        suffix = f"; evidence written to {path}" if path is not None else ""
        document = json.loads(record.document)
        return cls(message + suffix, evidence=document, evidence_path=path)

    @property
    def default_sources(self) -> tuple[str, str]:
        """Where the two checkpoints of a consistency check usually come from."""
        return "trusted state", f"GET {self.url}/checkpoint"

    async def fetch_checkpoint(self) -> VerifiedCheckpoint:
        """Fetch ``/checkpoint`` and verify it under the policy (the trusted state is untouched).

        Raises LogUnavailableError, LogResponseError, UntrustedCheckpointError.
        """
        with _tile_errors():
            note = await self.tiles.fetch_checkpoint()
        return self.verify_note(note)

    def trusted_state(self, origin: str) -> TrustedState | None:
        """Return the trusted state of ``origin`` (disk or memory), checked against the policy.

        Raises StateError if the state was verified with another key than the policy's.
        """
        state = self.store.load(origin) if self.store is not None else self._memory.get(origin)
        if state is not None and state.vkey != self.log_vkey(origin):
            raise StateError(
                f"the trusted state of {origin} was verified with the key {state.vkey}, not the "
                f"policy's {self.log_vkey(origin)}; remove {self._state_path(origin)} only if "
                "the log's key change is expected"
            )
        return state

    def _state_path(self, origin: str) -> str:
        return str(self.store.path(origin)) if self.store is not None else "(memory)"

    def _save(self, previous: TrustedState | None, current: VerifiedCheckpoint) -> None:
        urls = list(previous.log_urls) if previous else []
        if self.url not in urls:
            urls.append(self.url)
        state = TrustedState(
            current.origin,
            self.log_vkey(current.origin),
            current.note,
            current.checkpoint,
            self.now(),
            tuple(urls[-8:]),
        )
        self._memory[current.origin] = state
        if self.store is not None:
            self.store.save(state)

    @contextlib.asynccontextmanager
    async def _locked(self, origin: str) -> AsyncIterator[None]:
        if self.store is None:
            yield
            return
        async with self.store.locked(origin):
            yield

    async def update(self) -> Update:
        """Fetch and verify the checkpoint, prove it extends the trusted one, then trust it.

        On first use the verified checkpoint becomes the trusted state (trust on first use of
        the policy's key). Afterwards: a smaller tree raises RollbackError; the same size with
        another root, or a consistency proof (built from the log's tiles) that fails, raises
        InconsistentCheckpointError. Evidence is written for each. The state is replaced only
        after the proof verifies, under the state's lock.

        Raises also UntrustedCheckpointError, LogUnavailableError, LogResponseError, StateError.
        """
        current = await self.fetch_checkpoint()
        async with self._locked(current.origin):
            state = self.trusted_state(current.origin)
            if state is None:
                self._save(None, current)
                return Update(None, current, (), True)
            previous = self.verify_trusted(state)
            proof = await self.check_consistency(previous, current)
            advanced = current.tree_size > previous.tree_size or (
                current.note != previous.note and len(current.cosigners) > len(previous.cosigners)
            )
            if advanced or self.url not in state.log_urls:
                self._save(state, current if advanced else previous)
            return Update(previous, current, tuple(proof), advanced)

    def verify_trusted(self, state: TrustedState) -> VerifiedCheckpoint:
        """Return the trusted state's checkpoint as verified under the policy's log key.

        The stored note was verified under the policy when it was trusted; its cosignatures are
        listed again, but the quorum is not re-checked (a policy may have changed since).
        """
        return self.known_checkpoint(state.note)

    def known_checkpoint(self, note: bytes) -> VerifiedCheckpoint:
        """Return a checkpoint this client verified earlier (stored in a state file).

        Checks the log's signature with the policy's key for its origin; the witness quorum is
        not re-checked. Raises StateError if the note does not verify.
        """
        try:
            origin = parse_checkpoint(parse_note(note).text).origin
            verifier = parse_verifier(self.log_vkey(origin))
            checkpoint, parsed, _ = open_checkpoint(note, verifier)
        except (MerkleError, ValueError, ConfigurationError) as exc:
            raise StateError(
                f"a stored checkpoint does not verify with the log's key: {exc}"
            ) from None
        return VerifiedCheckpoint(note, checkpoint, _cosigners(self.policy, parsed))

    async def check_consistency(
        self,
        trusted: VerifiedCheckpoint,
        presented: VerifiedCheckpoint,
        sources: tuple[str, str] | None = None,
    ) -> list[bytes]:
        """Prove that ``presented`` extends ``trusted`` with a proof built from tiles.

        ``sources`` say where the two notes came from, for the evidence (default: the trusted
        state and the log's ``/checkpoint``). Returns the verified consistency proof (RFC 9162
        §2.1.4.2). Raises RollbackError, InconsistentCheckpointError (evidence written),
        LogUnavailableError, LogResponseError.
        """
        old, new = trusted.checkpoint, presented.checkpoint
        if new.tree_size < old.tree_size:
            await self._rollback(trusted, presented, sources)
        if new.tree_size == old.tree_size:
            if new.root_hash != old.root_hash:
                raise self._witness_evidence(
                    InconsistentCheckpointError,
                    f"the log signed two different roots for tree size {new.tree_size}: a fork",
                    kind="same-size",
                    trusted=trusted,
                    presented=presented,
                    proof=(),
                    reason=f"two checkpoints of size {new.tree_size} with different root hashes",
                    sources=sources,
                )
            return []
        if old.tree_size == 0:
            return []
        with _tile_errors():
            proof = await self.tiles.consistency_proof(old.tree_size, new.tree_size)
        try:
            verify_consistency(old.tree_size, new.tree_size, old.root_hash, new.root_hash, proof)
        except ProofError as exc:
            raise self._witness_evidence(
                InconsistentCheckpointError,
                f"the checkpoint of size {new.tree_size} is not consistent with the trusted one "
                f"of size {old.tree_size}: a fork, or tiles that contradict the signed roots",
                kind="proof-failed",
                trusted=trusted,
                presented=presented,
                proof=proof,
                reason=f"consistency proof from the log's tiles fails: {exc}",
                sources=sources,
            ) from None
        return proof

    async def _rollback(
        self,
        trusted: VerifiedCheckpoint,
        presented: VerifiedCheckpoint,
        sources: tuple[str, str] | None,
    ) -> NoReturn:
        old, new = presented.checkpoint, trusted.checkpoint
        proof: list[bytes] = []
        consistent: bool | None = None
        if old.tree_size > 0:
            try:
                with _tile_errors():
                    proof = await self.tiles.consistency_proof(old.tree_size, new.tree_size)
                verify_consistency(
                    old.tree_size, new.tree_size, old.root_hash, new.root_hash, proof
                )
                consistent = True
            except ClientError:
                proof = []
            except ProofError:
                consistent = False
        if consistent is False:
            raise self._witness_evidence(
                InconsistentCheckpointError,
                f"the log presented size {old.tree_size} after the trusted size {new.tree_size}, "
                "and the two are not consistent: a fork",
                kind="proof-failed",
                trusted=presented,
                presented=trusted,
                proof=proof,
                reason="consistency proof from the log's tiles, from the presented (smaller) "
                "checkpoint to the trusted one, fails",
                sources=(sources or self.default_sources)[::-1],
            )
        raise self._misbehaviour(
            RollbackError,
            f"the log presented a checkpoint of size {old.tree_size}, smaller than the trusted "
            f"size {new.tree_size}: a rollback",
            client_evidence(
                kind="rollback",
                origin=old.origin,
                log=self.url,
                trusted=(trusted.note, new.tree_size),
                presented=(presented.note, old.tree_size),
                proof=proof,
                checked="that the presented checkpoint is not smaller than the trusted one",
                reason=f"presented size {old.tree_size} < trusted size {new.tree_size}"
                + ("; the smaller tree is a prefix of the trusted one" if consistent else ""),
                details={"consistent_prefix": consistent},
                observed_at=self.now(),
            ),
        )

    async def current(self) -> VerifiedCheckpoint:
        """Return the trusted checkpoint after an :meth:`update` (the usual way to start)."""
        return (await self.update()).current

    # -- proofs and entries --------------------------------------------------------------------

    async def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]:
        """Return PATH(index, D[tree_size]) built from tiles (not verified here).

        Raises LogUnavailableError, LogResponseError, ConfigurationError for a bad index.
        """
        if not 0 <= index < tree_size:
            raise ConfigurationError(f"index {index} is not below the tree size {tree_size}")
        with _tile_errors():
            return await self.tiles.inclusion_proof(index, tree_size)

    async def consistency_proof(self, first_size: int, second_size: int) -> list[bytes]:
        """Return PROOF(first_size, D[second_size]) built from tiles (not verified here)."""
        with _tile_errors():
            return await self.tiles.consistency_proof(first_size, second_size)

    async def leaf_hashes(self, tile_index: int, tree_size: int) -> list[bytes]:
        """Return the level-0 tile ``tile_index`` of a tree of ``tree_size`` as leaf hashes."""
        with _tile_errors():
            end = min(tree_size, (tile_index + 1) * TILE_WIDTH)
            nodes = [Node(0, i) for i in range(tile_index * TILE_WIDTH, end)]
            return await self.tiles.read_node_hashes(nodes, tree_size)

    async def _raw_get(self, path: str, limit: int) -> bytes:
        """GET ``<url>/<path>`` on the lean pool, statuses mapped as the tile reader maps them.

        Requires ``lean_http``. Raises NotFoundError (404, 410), LogUnavailableError (network,
        timeout, 429, 5xx), LogResponseError (other statuses, a body over ``limit`` bytes or
        with a content coding).
        """
        assert self._pool is not None
        url = f"{self.url}/{path}"
        try:
            answer = await self._pool.request(
                "GET",
                self._origin,
                self._base_path + b"/" + path.encode("ascii"),
                self._raw_headers,
                connect_timeout=self._timeout,
                read_timeout=self._timeout,
            )
        except httpx.HTTPError as exc:
            raise LogUnavailableError(f"{type(exc).__name__} ({url})") from None
        return _checked_body(answer, url, limit)

    def bulk_reader(
        self,
        paths: Sequence[str],
        limits: Sequence[int],
        *,
        connections: int = 2,
        depth: int = 8,
        window: int = 64,
    ) -> BulkReader | None:
        """Return a reader of ``<url>/<path>`` for every path, pipelined (``lean_http`` only).

        ``limits[i]`` bounds the body of ``paths[i]``. The reads go over their own
        connections (:class:`client.transport.PipelinedGet`); ``None`` when the client was
        made without ``lean_http`` (the caller then reads one resource at a time).
        """
        if self._pool is None:
            return None
        targets = [self._base_path + b"/" + path.encode("ascii") for path in paths]
        get = PipelinedGet(
            self._origin,
            targets,
            self._raw_headers,
            connections=connections,
            depth=depth,
            window=window,
            connect_timeout=self._timeout,
            read_timeout=self._timeout,
            max_response_bytes=max(limits, default=0),
        )
        return BulkReader(self.url, paths, limits, get)

    async def hash_tile(self, tile: Tile) -> bytes:
        """Return hash tile ``tile`` (level >= 0) at exactly its width, as served (unchecked).

        A partial tile that answers 404 is read from the full tile. Raises LogUnavailableError,
        LogResponseError (a body of the wrong length).
        """
        if self._pool is None:
            with _tile_errors():
                data = await self.tiles.fetch_tile(tile)
            return data[: tile.width * HASH_SIZE]
        wanted = tile
        try:
            data = await self._raw_get(format_tile_path(tile), TILE_WIDTH * HASH_SIZE)
        except NotFoundError:
            if not tile.is_partial:
                raise
            wanted = Tile(tile.level, tile.index)
            data = await self._raw_get(format_tile_path(wanted), TILE_WIDTH * HASH_SIZE)
        if len(data) != wanted.width * HASH_SIZE:
            raise LogResponseError(
                f"tile {format_tile_path(wanted)} has {len(data)} bytes, "
                f"expected {wanted.width * HASH_SIZE}"
            )
        return data[: tile.width * HASH_SIZE]

    async def bundle(self, bundle_index: int, tree_size: int) -> list[bytes]:
        """Return the entries of bundle ``bundle_index`` in a tree of ``tree_size`` (unchecked).

        Raises LogUnavailableError, LogResponseError (which hints at a reader credential when
        the log refuses the read with 401 or 403).
        """
        with _reader_hint(), _tile_errors():
            return await self.tiles.fetch_entry_bundle(bundle_index, tree_size)

    async def bundle_bytes(self, bundle_index: int, tree_size: int) -> bytes:
        """Return bundle ``bundle_index`` of a tree of ``tree_size`` as served, unparsed.

        A partial bundle that answers 404 is read from the full one (cut to its width). The
        caller parses it (C2SP tlog-tiles entry bundle). Raises as :meth:`bundle`.
        """
        tile = tile_for_size(ENTRIES_LEVEL, bundle_index, tree_size)
        try:
            with _reader_hint(), _tile_errors():
                if self._pool is not None:
                    return await self._raw_get(format_tile_path(tile), MAX_BUNDLE_BYTES)
                return await self.tiles.fetch_bytes(format_tile_path(tile), MAX_BUNDLE_BYTES)
        except NotFoundError:
            if not tile.is_partial:
                raise
        return format_entry_bundle(await self.bundle(bundle_index, tree_size))

    async def entry(self, index: int, checkpoint: VerifiedCheckpoint) -> VerifiedEntry:
        """Fetch entry ``index`` from its bundle and verify its inclusion under ``checkpoint``.

        Builds the inclusion proof from tiles and checks it leads from the entry's leaf hash
        to the signed root. On failure decides which was wrong: the entry does not hash to the
        leaf the tiles include (EntryMismatchError) or the tiles do not lead to the signed root
        (TileMismatchError); evidence is written for both.

        Raises also ConfigurationError (index not below the size), LogUnavailableError,
        LogResponseError.
        """
        size = checkpoint.tree_size
        if not 0 <= index < size:
            raise ConfigurationError(f"entry {index} is not below the tree size {size}")
        bundle = await self.bundle(index // TILE_WIDTH, size)
        entry = bundle[index % TILE_WIDTH]
        value = leaf_hash(entry)
        proof = await self.inclusion_proof(index, size)
        try:
            verify_inclusion(value, index, size, proof, checkpoint.root_hash)
        except ProofError:
            await self._locate_entry_failure(index, entry, proof, checkpoint)
        return VerifiedEntry(index, entry, value, tuple(proof), checkpoint, parse_leaf_view(entry))

    async def _locate_entry_failure(
        self, index: int, entry: bytes, proof: list[bytes], checkpoint: VerifiedCheckpoint
    ) -> None:
        size = checkpoint.tree_size
        with _tile_errors():
            (tile_leaf,) = await self.tiles.read_node_hashes([Node(0, index)], size)
        included = True
        try:
            verify_inclusion(tile_leaf, index, size, proof, checkpoint.root_hash)
        except ProofError:
            included = False
        details = {
            "index": index,
            "leaf_hash": _b64(tile_leaf),
            "entry": _b64(entry),
            "entry_leaf_hash": _b64(leaf_hash(entry)),
        }
        if included and tile_leaf != leaf_hash(entry):
            raise self.entry_mismatch(index, entry, tile_leaf, proof, checkpoint)
        raise self._misbehaviour(
            TileMismatchError,
            f"the log's tiles do not hash into the signed root of size {size} "
            f"(inclusion proof of entry {index})",
            client_evidence(
                kind="tile-mismatch",
                origin=checkpoint.origin,
                log=self.url,
                trusted=None,
                presented=(checkpoint.note, size),
                proof=proof,
                checked=f"the inclusion proof of entry {index} built from the log's tiles",
                reason="the proof does not lead from the tiles' leaf hash to the signed root",
                details=details,
                observed_at=self.now(),
            ),
        )

    def entry_mismatch(
        self,
        index: int,
        entry: bytes,
        tile_leaf: bytes,
        proof: Sequence[bytes],
        checkpoint: VerifiedCheckpoint,
    ) -> EntryMismatchError:
        """Return (evidence written) the error for an entry that is not the tree's leaf.

        ``tile_leaf`` is the leaf hash the tiles hold at ``index`` and ``proof`` its inclusion
        proof under ``checkpoint`` (verified by the caller).
        """
        error = self._misbehaviour(
            EntryMismatchError,
            f"entry {index} served by the log does not hash to its leaf in the signed tree of "
            f"size {checkpoint.tree_size}",
            client_evidence(
                kind="entry-mismatch",
                origin=checkpoint.origin,
                log=self.url,
                trusted=None,
                presented=(checkpoint.note, checkpoint.tree_size),
                proof=proof,
                checked=f"that entry {index} of the entry bundle hashes to the leaf the tiles "
                "include under the signed root",
                reason="the entry's leaf hash differs from the included leaf hash",
                details={
                    "index": index,
                    "leaf_hash": _b64(tile_leaf),
                    "entry": _b64(entry),
                    "entry_leaf_hash": _b64(leaf_hash(entry)),
                },
                observed_at=self.now(),
            ),
        )
        assert isinstance(error, EntryMismatchError)
        return error

    def tile_mismatch(
        self,
        checkpoint: VerifiedCheckpoint,
        *,
        tile: str,
        served: bytes,
        computed: bytes,
        checked: str,
    ) -> TileMismatchError:
        """Return (evidence written) the error for a tile that contradicts a full recomputation.

        ``served`` and ``computed`` are the tile's contents as served and as recomputed from
        the level below (or the root, for ``tile`` ``"root"``).
        """
        error = self._misbehaviour(
            TileMismatchError,
            f"{tile} served by the log differs from the hashes recomputed from its entries "
            f"(tree size {checkpoint.tree_size})",
            client_evidence(
                kind="tile-mismatch",
                origin=checkpoint.origin,
                log=self.url,
                trusted=None,
                presented=(checkpoint.note, checkpoint.tree_size),
                proof=(),
                checked=checked,
                reason=f"{tile} as served differs from the recomputed hashes",
                details={"tile": tile, "served": _b64(served), "computed": _b64(computed)},
                observed_at=self.now(),
            ),
        )
        assert isinstance(error, TileMismatchError)
        return error

    # -- receipts ------------------------------------------------------------------------------

    async def receipt(self, index: int, *, include_entry: bool = True) -> VerifiedEntry:
        """Return the verified entry ``index`` under the freshly updated trusted checkpoint.

        :meth:`VerifiedEntry.receipt` then gives the tlog-proof text. Raises the errors of
        :meth:`update` and :meth:`entry`.
        """
        checkpoint = await self.current()
        return await self.entry(index, checkpoint)

    # -- lookups -------------------------------------------------------------------------------

    async def _get_json(self, path: str, params: Mapping[str, str]) -> Any:
        url = f"{self.url}/{path}"
        try:
            response = await self.http.get(url, params=dict(params))
        except httpx.HTTPError as exc:
            raise LogUnavailableError(f"{type(exc).__name__} ({url})") from None
        status = response.status_code
        if status in (404, 410):
            raise NotFoundError(f"log answered {status} ({url})")
        if status == 429 or status >= 500:
            raise LogUnavailableError(f"log answered {status} ({url})")
        if status in (401, 403):
            raise LogResponseError(
                f"log answered {status} ({url}): a reader credential is needed (--credential-file)"
            )
        if status != 200:
            detail = ""
            with contextlib.suppress(ValueError):
                body = response.json()
                if isinstance(body, dict) and isinstance(body.get("detail"), str):
                    detail = f": {body['detail'][:200]}"
            raise LogResponseError(f"log answered {status} ({url}){detail}")
        if len(response.content) > _MAX_JSON_BYTES:
            raise LogResponseError(f"answer larger than {_MAX_JSON_BYTES} bytes ({url})")
        try:
            return json.loads(response.content)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise LogResponseError(f"answer is not JSON ({url})") from None

    async def lookup_indexes(self, query: LookupQuery, *, limit: int = 100) -> list[int]:
        """Return the entry indexes ``GET /v1/lookup`` answers for ``query``, all pages.

        The answer is a hint: nothing here is verified (see :meth:`lookup`). Raises
        LogUnavailableError, LogResponseError (malformed pages, a cursor that does not move).
        """
        params = {query.kind: query.value, "limit": str(limit)}
        if query.since_ms is not None:
            params["since"] = str(query.since_ms)
        if query.until_ms is not None:
            params["until"] = str(query.until_ms)
        indexes: list[int] = []
        after: int | None = None
        for _ in range(MAX_LOOKUP_PAGES):
            page_params = dict(params)
            if after is not None:
                page_params["after"] = str(after)
            body = await self._get_json("v1/lookup", page_params)
            page, cursor = _parse_lookup_page(body)
            for index in page:
                if indexes and index <= indexes[-1]:
                    raise LogResponseError("lookup answers are not in ascending index order")
                indexes.append(index)
            if cursor is None or not page:
                return indexes
            if after is not None and cursor <= after:
                raise LogResponseError("the lookup cursor does not move forward")
            after = cursor
        raise LogResponseError(f"the lookup has more than {MAX_LOOKUP_PAGES} pages")

    async def lookup(
        self, query: LookupQuery, checkpoint: VerifiedCheckpoint | None = None
    ) -> tuple[list[VerifiedEntry], list[int]]:
        """Find and verify the entries matching ``query``.

        Asks ``/v1/lookup`` for indexes, then verifies each below the trusted checkpoint's size
        (:meth:`entry`) and checks that its event really matches the query. Returns the verified
        entries and the indexes not yet covered by the checkpoint (pending). The log could
        leave matches out: a lookup proves what it returns, not that nothing else exists (the
        monitor and the audit read everything).

        Raises LookupMismatchError for an answered entry that does not match, and the errors of
        :meth:`update`, :meth:`entry` and :meth:`lookup_indexes`.
        """
        if checkpoint is None:
            checkpoint = await self.current()
        indexes = await self.lookup_indexes(query)
        covered = [i for i in indexes if i < checkpoint.tree_size]
        pending = [i for i in indexes if i >= checkpoint.tree_size]
        entries = await _gather_limited([self.entry(i, checkpoint) for i in covered], 8)
        for entry in entries:
            if not event_matches(entry.leaf, query):
                raise LookupMismatchError(
                    f"the log's lookup answered entry {entry.index}, whose event does not match "
                    f"the {query.kind} asked for",
                    index=entry.index,
                )
        return entries, pending

    async def events_for_token(
        self, token: bytes, checkpoint: VerifiedCheckpoint | None = None
    ) -> tuple[list[VerifiedEntry], list[int]]:
        """Find and verify every logged event that names ``token`` (by its token reference).

        The token itself never leaves this process: only ``token_ref(token)`` is sent. See
        :meth:`lookup` for what is verified. Raises ValueError for an empty token.
        """
        return await self.lookup(LookupQuery("token_ref", token_ref(token)), checkpoint)


def _parse_lookup_page(body: object) -> tuple[list[int], int | None]:
    """Return the indexes of one ``/v1/lookup`` page and the cursor for the next, if any.

    The page is ``{"results": [{"index": N, ...}, ...], "next": <cursor or null>}``; the
    cursor is the last index of the page (an ``after`` value). Raises LogResponseError.
    """
    if not isinstance(body, dict):
        raise LogResponseError("the lookup answer is not a JSON object")
    results = body.get("results", body.get("entries"))
    if not isinstance(results, list):
        raise LogResponseError("the lookup answer has no results list")
    indexes = []
    for item in results:
        index = item.get("index") if isinstance(item, dict) else None
        if type(index) is not int or index < 0:
            raise LogResponseError("a lookup result has no valid index")
        indexes.append(index)
    cursor = body.get("next", body.get("after"))
    if cursor is None:
        return indexes, None
    if isinstance(cursor, str) and re.fullmatch(r"0|[1-9][0-9]{0,18}", cursor):
        cursor = int(cursor)
    if type(cursor) is not int or cursor < 0:
        raise LogResponseError("the lookup cursor is not an index")
    return indexes, cursor


async def _gather_limited(coroutines: Sequence[Awaitable[_T]], limit: int) -> list[_T]:
    semaphore = asyncio.Semaphore(limit)

    async def one(coroutine: Awaitable[_T]) -> _T:
        async with semaphore:
            return await coroutine

    return list(await asyncio.gather(*(one(c) for c in coroutines)))


# =========================================================================== sync face


class SyncLogClient:
    """The operations of :class:`LogClient` for synchronous code (its own event loop).

    Example::

        with SyncLogClient("https://log.example.com", read_policy(Path("policy"))) as log:
            update = log.update()
            events, pending = log.events_for_token(token)

    Not thread-safe: use one per thread.
    """

    def __init__(self, url: str, policy: Policy, **options: Any) -> None:
        """Take the same arguments as :class:`LogClient`."""
        self._runner = asyncio.Runner()
        self.client = LogClient(url, policy, **options)

    def __enter__(self) -> SyncLogClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the client and its event loop."""
        try:
            self._runner.run(self.client.aclose())
        finally:
            self._runner.close()

    def _run(self, coroutine: Awaitable[_T]) -> _T:
        async def wrapper() -> _T:
            return await coroutine

        return self._runner.run(wrapper())

    def fetch_checkpoint(self) -> VerifiedCheckpoint:
        """See :meth:`LogClient.fetch_checkpoint`."""
        return self._run(self.client.fetch_checkpoint())

    def update(self) -> Update:
        """See :meth:`LogClient.update`."""
        return self._run(self.client.update())

    def entry(self, index: int, checkpoint: VerifiedCheckpoint) -> VerifiedEntry:
        """See :meth:`LogClient.entry`."""
        return self._run(self.client.entry(index, checkpoint))

    def receipt(self, index: int) -> VerifiedEntry:
        """See :meth:`LogClient.receipt`."""
        return self._run(self.client.receipt(index))

    def lookup(self, query: LookupQuery) -> tuple[list[VerifiedEntry], list[int]]:
        """See :meth:`LogClient.lookup`."""
        return self._run(self.client.lookup(query))

    def events_for_token(self, token: bytes) -> tuple[list[VerifiedEntry], list[int]]:
        """See :meth:`LogClient.events_for_token`."""
        return self._run(self.client.events_for_token(token))

