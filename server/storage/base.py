"""The storage port of the log: values, the :class:`Storage` protocol and its error hierarchy.

One interface, two implementations (:mod:`server.storage.sqlite`, :mod:`server.storage.postgres`),
one conformance suite (``tests/test_storage_conformance.py``) that runs against both
(ARCHITECTURE.md "Storage").

What is stored: entries by index (the exact leaf bytes and the log time), leaf hash to index,
idempotency key to index, lookup keys ``(kind, value)`` to index, tiles by ``(level, index)`` (the
newest width only: a partial tile ``.p/W`` is the first ``W`` hashes of the stored tile), the
latest signed checkpoint with the compact range at its size, the history of signed checkpoints
by tree size, the latest checkpoint carrying witness cosignatures, and small metadata values.

Beside the log itself, the OAuth layer stores principals (:class:`OAuthStorage`): submitters and
readers, each a name, the SHA-256 hash of its bearer credential (never the credential), a status
and, for submitters, public keys (Ed25519 keys for signed events, JWKs or PEM keys for SETs).
Both backends implement both protocols; :class:`Storage` alone is what the log engine needs.

The latest checkpoint is replaced only by :meth:`Storage.commit`, a compare-and-swap against the
previous one in the same transaction that stores the entries and tiles it covers (invariant 1).

Errors (nothing a database driver raises leaks through a backend)::

    StorageError             base; a fault that retrying will not fix (schema too new, closed, bug)
    ├── CheckpointConflict   the stored latest checkpoint is not the ``previous`` the caller gave
    ├── StorageUnavailable   the database cannot be reached or cannot write now (down, disk full,
    │                        connection lost, lock timeout): answer 503 and retry later
    └── IntegrityError       a batch breaks a uniqueness or ordering rule (duplicate leaf hash or
                             idempotency key, entries not consecutive from the stored tree size,
                             a tile whose stored hashes would change)

Text keys (idempotency keys, lookup kinds and values, metadata keys) are stored as their UTF-8
bytes, so any string without lone surrogates is accepted, including ``"\\x00"`` separators.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "HASH_SIZE",
    "KEY_USAGES",
    "MAX_TIME_MS",
    "ROLES",
    "STATUSES",
    "Batch",
    "CheckpointConflict",
    "IntegrityError",
    "LogState",
    "LookupHit",
    "NewEntry",
    "OAuthStorage",
    "Principal",
    "PrincipalKey",
    "Storage",
    "StorageError",
    "StorageUnavailable",
    "TileKey",
    "check_batch",
    "check_principal",
    "check_principal_key",
    "encode_key",
    "leading_entries",
]

HASH_SIZE = 32
"""Length in bytes of a leaf hash (SHA-256, RFC 6962 §2.1)."""

INT64_MAX = 2**63 - 1
"""Largest value of the signed 64-bit integer columns."""

MAX_TIME_MS = 2**62
"""Largest log time, in POSIX milliseconds, that storage accepts (far beyond any real clock)."""

MAX_INDEX = INT64_MAX
"""Largest entry index or tile index that storage accepts."""

MIN_TILE_LEVEL = -1
"""Smallest tile level: -1 holds entry bundles (``tile/entries/...``), 0 and up hash tiles."""

MAX_TILE_LEVEL = 63
"""Largest tile level a 64-bit tree can have."""

ROLES = ("submitter", "reader")
"""Principal roles: a submitter appends events, a reader may read entry contents."""

STATUSES = ("active", "revoked")
"""Principal statuses; a revoked principal keeps its name (it is never reused)."""

KEY_USAGES = ("event", "set")
"""What a principal key verifies: signed events (Ed25519) or SETs (JWS)."""

KEY_ALGORITHMS = {"event": ("Ed25519",), "set": ("EdDSA", "ES256", "RS256")}
"""Algorithms allowed for each key usage (JOSE names for SET keys, RFC 7518 / RFC 8037)."""

TileKey = tuple[int, int]
"""A tile's storage key ``(level, index)``, e.g. ``(0, 1234)`` for ``tile/0/x001/234``."""


class StorageError(Exception):
    """Base of every error a storage backend raises; retrying helps only where a subclass says."""


class CheckpointConflict(StorageError):  # noqa: N818 (name fixed by the shared contract)
    """The stored latest checkpoint is not the one the commit expected; nothing was stored.

    ``stored`` is the latest checkpoint note found in storage (``None`` if none), for the log's
    diagnostics; the caller should reload its state with :meth:`Storage.load_state`.
    """

    def __init__(self, message: str, stored: bytes | None = None) -> None:
        super().__init__(message)
        self.stored = stored


class StorageUnavailable(StorageError):  # noqa: N818 (name fixed by the shared contract)
    """The database cannot be used right now (down, disk full, connection lost, lock timeout).

    The caller answers 503 and retries later. After a failed :meth:`Storage.commit` the outcome
    is unknown (the connection may have dropped after the database committed): reload the state
    with :meth:`Storage.load_state` before trusting any in-memory state.
    """


class IntegrityError(StorageError):
    """A batch breaks a uniqueness or ordering rule; nothing of the batch was stored."""


@dataclass(frozen=True, slots=True)
class LogState:
    """What the sequencer needs to resume: the latest checkpoint and the frontier at its size.

    ``checkpoint`` is the latest signed checkpoint note (with the log's signature),
    ``compact_range`` the ``merkle.compact.CompactRange.to_bytes()`` value at ``tree_size``
    (opaque to storage).
    """

    checkpoint: bytes
    tree_size: int
    compact_range: bytes


@dataclass(frozen=True, slots=True)
class NewEntry:
    """One entry to store: its index, leaf hash, exact leaf bytes and how to find it again.

    ``idempotency_key`` is unique across the log when set (e.g. ``"<submitter>\\x00<jti>"``);
    ``lookup_keys`` are ``(kind, value)`` pairs such as ``("token_ref", "...")`` or
    ``("client_id", "...")`` (a repeated pair is stored once); ``log_time`` is the POSIX time in
    milliseconds the log assigned.
    """

    index: int
    leaf_hash: bytes
    data: bytes
    idempotency_key: str | None = None
    lookup_keys: tuple[tuple[str, str], ...] = ()
    log_time: int = 0


@dataclass(frozen=True, slots=True)
class Batch:
    """Everything one sequencing round stores in one transaction.

    ``entries`` have consecutive indexes starting at the previous tree size (may be empty);
    ``tiles`` maps ``(level, index)`` to the full new contents (newest width) of each tile that
    changed; ``checkpoint`` is the new signed checkpoint note for ``tree_size`` and
    ``compact_range`` the serialized frontier at that size.
    """

    entries: Sequence[NewEntry]
    tiles: Mapping[TileKey, bytes]
    checkpoint: bytes
    tree_size: int
    compact_range: bytes


class Storage(Protocol):
    """The log's storage: one writer (the sequencer) commits batches; many readers.

    A backend is created unopened (:func:`server.storage.open_storage`); :meth:`open` connects
    and creates or migrates the schema, :meth:`close` releases everything. Every method may raise
    :class:`StorageUnavailable` when the database cannot be reached, and :class:`StorageError`
    when used while closed.
    """

    async def open(self) -> None:
        """Connect, then create the schema or migrate it to the current version.

        Raises ``StorageUnavailable`` if the database cannot be reached, ``StorageError`` if its
        schema is newer than this code.
        """
        ...

    async def close(self) -> None:
        """Release connections and threads; a closed storage may be opened again."""
        ...

    async def load_state(self) -> LogState | None:
        """Return the latest checkpoint and frontier, or ``None`` if nothing was committed yet."""
        ...

    async def commit(self, previous: bytes | None, batch: Batch) -> None:
        """Store a batch atomically, compare-and-swapping the latest checkpoint (invariant 1).

        In one transaction: insert the entries, their leaf hashes, idempotency keys and lookup
        keys; upsert the tiles; add the checkpoint to the history; replace the latest checkpoint,
        which must equal ``previous`` (``None``: nothing committed yet). Durable on return.
        Committing a batch whose checkpoint is already the stored latest one (same note, same
        size) returns without change, so a commit retried after a lost connection is safe.

        Requires the entries to be consecutive from the stored tree size and ``batch.tree_size``
        to be the stored size plus their number.

        Raises ``CheckpointConflict`` (nothing stored) if the stored latest checkpoint is not
        ``previous``; ``IntegrityError`` (nothing stored) for a duplicate leaf hash or idempotency
        key, misnumbered entries, or a tile update that would change stored hashes;
        ``StorageUnavailable`` if the outcome is unknown.
        """
        ...

    async def find_leaf_hashes(self, leaf_hashes: Sequence[bytes]) -> dict[bytes, int]:
        """Return the index of each given leaf hash that is stored (absent ones are left out)."""
        ...

    async def find_idempotency_keys(self, keys: Sequence[str]) -> dict[str, int]:
        """Return the index of each given idempotency key that is stored (absent ones left out)."""
        ...

    async def read_tiles(self, coords: Sequence[TileKey]) -> dict[TileKey, bytes]:
        """Return the stored contents (newest width) of each given tile; absent tiles left out."""
        ...

    async def read_entries(self, start: int, end: int) -> list[bytes]:
        """Return the data of entries ``start`` to ``end - 1`` in order, stopping at the first gap.

        Requires ``0 <= start <= end``; the caller bounds ``end - start`` (e.g. one bundle, 256).
        Returns fewer than ``end - start`` entries when the log is shorter.
        """
        ...

    async def read_entry_meta(self, index: int) -> tuple[bytes, int] | None:
        """Return ``(data, log_time)`` of the entry at ``index``, or ``None`` if not stored."""
        ...

    async def lookup(
        self,
        kind: str,
        value: str,
        *,
        after: int = -1,
        limit: int = 100,
        since_ms: int | None = None,
        until_ms: int | None = None,
    ) -> list[int]:
        """Return up to ``limit`` indexes ``> after`` of entries with lookup key ``(kind, value)``.

        Ascending; pass the last index returned as ``after`` for the next page. Only entries with
        ``since_ms <= log_time < until_ms`` (each bound optional) are returned. Requires
        ``limit >= 1``. Cost: one index range scan over the key's entries after ``after``, the
        time bounds filtering the rows it walks (a narrow window late in a long history walks
        the key's earlier rows; callers paginate with ``after``).
        """
        ...

    async def checkpoint_history(self, *, after_size: int = -1, limit: int = 100) -> list[bytes]:
        """Return up to ``limit`` signed checkpoints with tree size ``> after_size``, by size.

        The history keeps the first checkpoint committed at each tree size.
        """
        ...

    async def put_cosigned_checkpoint(self, tree_size: int, note: bytes) -> None:
        """Store ``note`` (a checkpoint with witness cosignatures) as the latest cosigned one.

        Only moves forward: a note for a smaller tree size than the stored one is ignored; the
        same size replaces (more cosignatures may have arrived).
        """
        ...

    async def latest_cosigned_checkpoint(self) -> bytes | None:
        """Return the latest stored cosigned checkpoint note, or ``None``."""
        ...

    async def get_meta(self, key: str) -> bytes | None:
        """Return a small metadata value (e.g. the log's key ID or origin), or ``None``."""
        ...

    async def put_meta(self, key: str, value: bytes) -> None:
        """Set a small metadata value, replacing any earlier one."""
        ...


# -- helpers shared by the backends ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PrincipalKey:
    """A public key registered for a principal.

    ``key_id`` is unique per principal (the RFC 7638 JWK thumbprint, or the JWK's ``kid``);
    ``usage`` is ``"event"`` (``algorithm`` ``"Ed25519"``, ``public_key`` the raw 32 bytes) or
    ``"set"`` (``algorithm`` ``"EdDSA"``, ``"ES256"`` or ``"RS256"``, ``public_key`` the DER
    SubjectPublicKeyInfo); ``not_after_ms`` ends its validity (POSIX ms, ``None``: no expiry);
    ``issuer`` (SET keys) is the only ``iss`` that SETs verified with it may carry.
    """

    key_id: str
    usage: str
    algorithm: str
    public_key: bytes
    created_ms: int
    not_after_ms: int | None = None
    issuer: str | None = None


@dataclass(frozen=True, slots=True)
class Principal:
    """A submitter or reader: its name, credential hash, status, creation time and keys."""

    role: str
    name: str
    credential_hash: bytes
    status: str
    created_ms: int
    keys: tuple[PrincipalKey, ...] = ()


@dataclass(frozen=True, slots=True)
class LookupHit:
    """One entry found by a lookup key: its index, log time and exact leaf bytes."""

    index: int
    log_time: int
    data: bytes


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_KEY_ID = re.compile(r"[\x21-\x7e]{1,128}\Z")


def check_principal_key(key: PrincipalKey) -> None:
    """Check a key's fields. Raises ``IntegrityError`` naming the first bad one."""
    if not _KEY_ID.match(key.key_id):
        raise IntegrityError("a key id is 1 to 128 printable ASCII characters")
    if key.usage not in KEY_ALGORITHMS or key.algorithm not in KEY_ALGORITHMS[key.usage]:
        raise IntegrityError(f"key {key.key_id}: bad usage or algorithm")
    if not key.public_key or len(key.public_key) > 4096:
        raise IntegrityError(f"key {key.key_id}: public key must be 1 to 4096 bytes")
    for value in (key.created_ms, key.not_after_ms):
        if value is not None and not 0 <= value <= MAX_TIME_MS:
            raise IntegrityError(f"key {key.key_id}: time out of range")
    if key.issuer is not None and (not key.issuer or len(key.issuer) > 512):
        raise IntegrityError(f"key {key.key_id}: issuer must be 1 to 512 characters")
    if key.issuer is not None:
        encode_key(key.issuer)


def check_principal(principal: Principal) -> None:
    """Check a principal's fields and keys. Raises ``IntegrityError`` naming the first bad one.

    Names are 1 to 64 characters ``[A-Za-z0-9._-]`` starting with a letter or digit.
    """
    if principal.role not in ROLES:
        raise IntegrityError("role must be submitter or reader")
    if not _NAME.match(principal.name):
        raise IntegrityError("a name is 1 to 64 characters of A-Z a-z 0-9 . _ - (no leading . _ -)")
    if len(principal.credential_hash) != HASH_SIZE:
        raise IntegrityError("a credential hash is 32 bytes")
    if principal.status not in STATUSES:
        raise IntegrityError("status must be active or revoked")
    if not 0 <= principal.created_ms <= MAX_TIME_MS:
        raise IntegrityError("creation time out of range")
    ids = [key.key_id for key in principal.keys]
    if len(set(ids)) != len(ids):
        raise IntegrityError("a key id appears twice")
    for key in principal.keys:
        check_principal_key(key)


class OAuthStorage(Protocol):
    """What the OAuth layer stores beside the log: principals, and lookups with entry data.

    Implemented by both backends next to :class:`Storage`. Every method may raise
    :class:`StorageUnavailable`, and :class:`StorageError` when used while closed.
    """

    async def add_principal(self, principal: Principal) -> None:
        """Store a new principal with its keys, in one transaction.

        Raises ``IntegrityError`` (nothing stored) if the (role, name) or the credential hash
        is already stored, or a field is invalid (:func:`check_principal`).
        """
        ...

    async def add_principal_key(self, role: str, name: str, key: PrincipalKey) -> None:
        """Add a key to a stored principal.

        Raises ``IntegrityError`` if the principal does not exist, already has a key with this
        id, or the key is invalid.
        """
        ...

    async def get_principal(self, role: str, name: str) -> Principal | None:
        """Return the principal with this role and name (keys included), or ``None``."""
        ...

    async def find_principal(self, credential_hash: bytes) -> Principal | None:
        """Return the principal whose credential has this SHA-256 hash, or ``None``."""
        ...

    async def list_principals(self, role: str) -> list[Principal]:
        """Return every principal of ``role`` (keys included), ordered by name."""
        ...

    async def set_principal_status(self, role: str, name: str, status: str) -> bool:
        """Set a principal's status; return whether it exists.

        Raises ``IntegrityError`` for a status other than those of :data:`STATUSES`.
        """
        ...

    async def lookup_entries(
        self,
        kind: str,
        value: str,
        *,
        after: int = -1,
        limit: int = 100,
        since_ms: int | None = None,
        until_ms: int | None = None,
    ) -> list[LookupHit]:
        """Return what :meth:`Storage.lookup` finds, each with its log time and leaf bytes.

        Same order, bounds and paging as :meth:`Storage.lookup`. Raises ``ValueError`` if
        ``limit < 1``.
        """
        ...


def encode_key(text: str) -> bytes:
    """Return the UTF-8 bytes under which a text key is stored.

    Raises ``IntegrityError`` if ``text`` cannot be encoded (it holds lone surrogates).
    """
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise IntegrityError("a key is not valid Unicode text (lone surrogate)") from None


def check_batch(batch: Batch) -> int:
    """Check a batch's shape without storage and return the tree size it must start from.

    Checks: entries numbered consecutively and ending at ``batch.tree_size``, 32-byte leaf
    hashes, no leaf hash or idempotency key twice in the batch, log times and indexes in 64-bit
    range, tile keys in range. Raises ``IntegrityError`` naming the first problem found.
    """
    entries = batch.entries
    start = batch.tree_size - len(entries)
    if start < 0 or batch.tree_size > MAX_INDEX:
        raise IntegrityError(f"tree size {batch.tree_size} cannot hold {len(entries)} new entries")
    hashes: set[bytes] = set()
    keys: set[str] = set()
    for offset, entry in enumerate(entries):
        if entry.index != start + offset:
            raise IntegrityError(
                f"entry {offset} of the batch has index {entry.index}, expected {start + offset}"
            )
        if len(entry.leaf_hash) != HASH_SIZE:
            size = len(entry.leaf_hash)
            raise IntegrityError(f"entry {entry.index} has a leaf hash of {size} bytes")
        if entry.leaf_hash in hashes:
            raise IntegrityError(f"entry {entry.index} repeats a leaf hash of the batch")
        hashes.add(entry.leaf_hash)
        if entry.idempotency_key is not None:
            if entry.idempotency_key in keys:
                raise IntegrityError(f"entry {entry.index} repeats an idempotency key of the batch")
            keys.add(entry.idempotency_key)
        if not 0 <= entry.log_time <= MAX_TIME_MS:
            raise IntegrityError(f"entry {entry.index} has log time {entry.log_time} out of range")
    for level, index in batch.tiles:
        if not (MIN_TILE_LEVEL <= level <= MAX_TILE_LEVEL and 0 <= index <= MAX_INDEX):
            raise IntegrityError(f"tile key {(level, index)} is out of range")
    return start


def unique_lookup_keys(entry: NewEntry) -> list[tuple[bytes, bytes]]:
    """Return an entry's lookup keys as UTF-8 byte pairs, each pair once, in their first order.

    Raises ``IntegrityError`` if a kind or value cannot be encoded.
    """
    try:
        pairs = [(kind.encode("utf-8"), value.encode("utf-8")) for kind, value in entry.lookup_keys]
    except UnicodeEncodeError:
        raise IntegrityError(f"entry {entry.index} has a lookup key that is not text") from None
    return list(dict.fromkeys(pairs))


def check_limit(limit: int) -> int:
    """Return ``limit`` capped to the 64-bit range. Raises ``ValueError`` if ``limit < 1``."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    return min(limit, INT64_MAX)


def check_read_range(start: int, end: int) -> None:
    """Raise ``ValueError`` unless ``0 <= start <= end``."""
    if not 0 <= start <= end:
        raise ValueError(f"bad entry range [{start}, {end})")


def leading_entries(rows: Sequence[Sequence[Any]], start: int) -> list[bytes]:
    """Return the data of ``(leaf_index, data)`` rows (ordered by index, unique, from
    ``start`` on) up to the first missing index: what ``read_entries`` answers.

    Example: rows ``[(5, b"a"), (6, b"b"), (8, b"c")]`` from 5 -> ``[b"a", b"b"]``.
    """
    # The first and last index tell whether any is missing: the common case takes every row.
    if rows and rows[0][0] == start and rows[-1][0] == start + len(rows) - 1:
        return [bytes(row[1]) for row in rows]
    out: list[bytes] = []
    for row in rows:
        if row[0] != start + len(out):
            break
        out.append(bytes(row[1]))
    return out


def fits_int64(value: int) -> bool:
    """Return whether ``0 <= value <= INT64_MAX`` (an index or size storage can hold)."""
    return 0 <= value <= INT64_MAX


def clamp64(value: int) -> int:
    """Return ``value`` limited to ``[-1, INT64_MAX]``, the range every bound is compared in."""
    return min(max(value, -1), INT64_MAX)


def lookup_bounds(
    after: int, limit: int, since_ms: int | None, until_ms: int | None
) -> tuple[int, int, int, int]:
    """Return ``(after, limit, low, high)`` for a lookup, with ``low <= log_time < high``.

    Bounds outside the 64-bit range are clamped (they cannot match anything more or less).
    Raises ``ValueError`` if ``limit < 1``.
    """
    low = 0 if since_ms is None else clamp64(since_ms)
    high = INT64_MAX if until_ms is None else clamp64(until_ms)
    return clamp64(after), check_limit(limit), low, high
