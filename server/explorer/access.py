"""Who may see what in the explorer: reader sign-in sessions and the log's read rules.

The rules are the log's own (:mod:`server.ingest`): entry contents and lookups by client,
subject or type need a registered reader unless ``public_entries`` is on; a lookup by token
reference is answered to anyone unless ``public_token_ref_lookup`` is off; hashes,
checkpoints, proofs and receipts are public.

A browser cannot attach ``Authorization: Bearer`` to a page it navigates to, so a reader signs
in once with a form: the credential is checked against the stored credential hash and never
kept. The browser receives a random session id in an ``HttpOnly``, ``SameSite=Strict`` cookie
scoped to the explorer's path (``Secure`` over HTTPS); the server keeps only the SHA-256 of that
id, with the reader's credential hash and an expiry. Every request looks the reader up again,
so revoking a reader ends its sessions at once. Sessions live in memory: a restart signs
everyone out.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from starlette.requests import Request

from server.principals import credential_hash, credential_matches
from server.storage.base import OAuthStorage, Principal

__all__ = ["COOKIE_NAME", "Access", "ReadRules", "SessionStore", "Viewer"]

COOKIE_NAME: Final = "etch_explorer"
"""Name of the session cookie."""

SESSION_SECONDS: Final = 8 * 3600
"""How long a sign-in lasts."""

MAX_SESSIONS: Final = 10_000
"""Most sessions kept; the oldest is dropped beyond this."""


@dataclass(frozen=True, slots=True)
class ReadRules:
    """What the operator allows anonymous visitors (the log's OAuth settings).

    ``lookups`` is false for a log without the OAuth layer (no lookups, no readers).
    """

    public_entries: bool = False
    public_token_ref_lookup: bool = True
    lookups: bool = True


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who is looking: a signed-in reader's name (or ``None``) and what they may read."""

    reader: str | None
    can_read_entries: bool
    can_lookup_token_ref: bool

    def can_lookup(self, kind: str) -> bool:
        """Tell whether this viewer may look entries up by ``kind``."""
        if kind == "token_ref":
            return self.can_lookup_token_ref
        return self.can_read_entries


@dataclass(frozen=True, slots=True)
class _Session:
    credential_hash: bytes
    expires: float


class SessionStore:
    """Sign-in sessions in memory, keyed by the SHA-256 of their random id."""

    def __init__(
        self,
        *,
        lifetime: float = SESSION_SECONDS,
        capacity: int = MAX_SESSIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions: OrderedDict[bytes, _Session] = OrderedDict()
        self._lifetime = lifetime
        self._capacity = capacity
        self._clock = clock

    def create(self, credential: str) -> str:
        """Start a session for a checked reader credential; return the id for the cookie."""
        session_id = secrets.token_urlsafe(32)
        self._sessions[_key(session_id)] = _Session(
            credential_hash(credential), self._clock() + self._lifetime
        )
        while len(self._sessions) > self._capacity:
            self._sessions.popitem(last=False)
        return session_id

    def lookup(self, session_id: str | None) -> bytes | None:
        """Return the credential hash of a live session, or ``None`` (expired ones are dropped)."""
        if not session_id or len(session_id) > 128:
            return None
        key = _key(session_id)
        found = self._sessions.get(key)
        if found is None:
            return None
        if found.expires <= self._clock():
            del self._sessions[key]
            return None
        return found.credential_hash

    def end(self, session_id: str | None) -> None:
        """End a session (signing out); unknown ids are ignored."""
        if session_id and len(session_id) <= 128:
            self._sessions.pop(_key(session_id), None)


def _key(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).digest()


class Access:
    """Decides what a request may see, from the read rules and the reader session."""

    def __init__(
        self,
        rules: ReadRules,
        storage: OAuthStorage | None,
        sessions: SessionStore | None = None,
    ) -> None:
        self.rules = rules
        self.storage = storage
        self.sessions = sessions or SessionStore()

    async def reader(self, request: Request) -> Principal | None:
        """Return the active reader signed in on this request, or ``None``.

        Raises StorageError when the principals cannot be read.
        """
        if self.storage is None:
            return None
        stored_hash = self.sessions.lookup(request.cookies.get(COOKIE_NAME))
        if stored_hash is None:
            return None
        principal = await self.storage.find_principal(stored_hash)
        if principal is None or principal.role != "reader" or principal.status != "active":
            return None
        return principal

    async def viewer(self, request: Request) -> Viewer:
        """Return who is looking and what they may read. Raises StorageError."""
        reader = await self.reader(request)
        entries = self.rules.public_entries or reader is not None
        token_ref = self.rules.lookups and (entries or self.rules.public_token_ref_lookup)
        return Viewer(reader.name if reader else None, entries, token_ref)

    async def sign_in(self, credential: str) -> str | None:
        """Check a reader credential; return a new session id, or ``None`` if it is not one.

        Only active readers may sign in. Raises StorageError.
        """
        if self.storage is None or not credential.isascii() or not 1 <= len(credential) <= 256:
            return None
        principal = await self.storage.find_principal(credential_hash(credential))
        if (
            principal is None
            or principal.role != "reader"
            or principal.status != "active"
            or not credential_matches(credential, principal.credential_hash)
        ):
            return None
        return self.sessions.create(credential)
