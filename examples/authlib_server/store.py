"""In-memory storage of the example authorization server: clients, users, codes and tokens.

The models implement Authlib's mixins (``ClientMixin``, ``AuthorizationCodeMixin``,
``TokenMixin``). The server never keeps a raw token or authorization code: each is stored under
its Etch token reference (:func:`client.tokens.token_ref`), the same value its audit events
carry, and looked up by recomputing the reference of what a client presents. Client secrets
are kept as SHA-256 hashes (they are 256-bit random values), user passwords as scrypt hashes.

Everything lives in one process and is lost on restart: this is an example, not a product.
A single lock guards every map, so the store is safe under Werkzeug's threaded server.

:class:`DemoCredentials` and :func:`demo_store` set up the demonstration clients and user of
README.md; their secrets are generated once and kept in a 0600 JSON file.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from authlib.oauth2.rfc6749 import AuthorizationCodeMixin, ClientMixin, TokenMixin

from client.tokens import token_ref

__all__ = [
    "API_CLIENT",
    "APP_CLIENT",
    "APP_REDIRECT_URI",
    "CODE_LIFETIME",
    "DEMO_USER",
    "REFRESH_LIFETIME",
    "SERVICE_CLIENT",
    "AuthorizationCode",
    "Client",
    "DemoCredentials",
    "IssuedToken",
    "Store",
    "User",
    "demo_store",
    "hash_password",
    "hash_secret",
]

CODE_LIFETIME: Final = 600
"""Seconds an authorization code stays valid (RFC 6749 §4.1.2 recommends at most 10 minutes)."""
REFRESH_LIFETIME: Final = 30 * 24 * 3600
"""Seconds a refresh token stays valid."""

SERVICE_CLIENT: Final = "demo-service"
"""Demo confidential client using the client credentials grant."""
APP_CLIENT: Final = "demo-app"
"""Demo public client using the authorization code grant with PKCE and refresh tokens."""
API_CLIENT: Final = "demo-api"
"""Demo resource server allowed to introspect tokens."""
APP_REDIRECT_URI: Final = "http://127.0.0.1:8765/callback"
"""Redirection URI registered for the demo public client."""
DEMO_USER: Final = "alice"
"""Username of the demo resource owner."""

_SCRYPT: Final = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}


def hash_secret(secret: str) -> bytes:
    """Return the stored form of a high-entropy client secret: SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(secret.encode("utf-8")).digest()


def hash_password(password: str, salt: bytes) -> bytes:
    """Return the scrypt hash (N=2**14, r=8, p=1) of a user's password with ``salt``."""
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, **_SCRYPT)


@dataclass(frozen=True, slots=True)
class Client(ClientMixin):
    """A registered OAuth client.

    ``secret_hash`` is None for a public client (``auth_method`` ``none``); ``scopes`` are the
    scopes it may ask for; ``can_introspect`` lets it call the introspection endpoint.
    """

    client_id: str
    secret_hash: bytes | None
    auth_method: str
    grant_types: tuple[str, ...]
    scopes: tuple[str, ...]
    redirect_uris: tuple[str, ...] = ()
    can_introspect: bool = False

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return self.redirect_uris[0] if self.redirect_uris else None

    def get_allowed_scope(self, scope: str | None) -> str:
        if not scope:
            return ""
        return " ".join(s for s in scope.split() if s in self.scopes)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        if self.secret_hash is None:
            return False
        return hmac.compare_digest(hash_secret(client_secret), self.secret_hash)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == self.auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


@dataclass(frozen=True, slots=True)
class User:
    """A resource owner: a stable internal id, a login name and a scrypt password hash."""

    user_id: str
    username: str
    salt: bytes
    password_hash: bytes

    def get_user_id(self) -> str:
        return self.user_id

    @classmethod
    def create(cls, user_id: str, username: str, password: str) -> User:
        """Return a user whose password hash is computed with a fresh random salt."""
        salt = secrets.token_bytes(16)
        return cls(user_id, username, salt, hash_password(password, salt))


@dataclass(frozen=True, slots=True)
class AuthorizationCode(AuthorizationCodeMixin):
    """An authorization code, kept under its token reference ``code_ref``.

    ``code_challenge`` / ``code_challenge_method`` are the PKCE values (RFC 7636) Authlib
    checks the verifier against.
    """

    code_ref: str
    client_id: str
    user_id: str
    redirect_uri: str
    scope: str
    code_challenge: str | None
    code_challenge_method: str | None
    expires_at: int

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def is_expired(self) -> bool:
        return time.time() >= self.expires_at


@dataclass(slots=True)
class IssuedToken(TokenMixin):
    """An access or refresh token (``kind``), kept under its token reference.

    A mutable model: ``revoked`` changes under the store's lock.
    """

    token_ref: str
    kind: str
    client_id: str
    user_id: str | None
    scope: str
    issued_at: int
    expires_in: int
    revoked: bool = False

    def check_client(self, client: Client) -> bool:
        return self.client_id == client.get_client_id()

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return self.expires_in

    def get_expires_at(self) -> int:
        return self.issued_at + self.expires_in

    def is_expired(self) -> bool:
        return time.time() >= self.get_expires_at()

    def is_revoked(self) -> bool:
        return self.revoked

    def get_user(self) -> str | None:
        return self.user_id

    def get_client_id(self) -> str:
        return self.client_id


class Store:
    """Clients, users, authorization codes and tokens, in memory, behind one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[str, Client] = {}
        self._users_by_name: dict[str, User] = {}
        self._users_by_id: dict[str, User] = {}
        self._codes: dict[str, AuthorizationCode] = {}
        self._tokens: dict[str, IssuedToken] = {}

    def add_client(self, client: Client) -> None:
        """Register ``client`` (replacing one with the same id)."""
        with self._lock:
            self._clients[client.client_id] = client

    def add_user(self, user: User) -> None:
        """Register ``user``."""
        with self._lock:
            self._users_by_name[user.username] = user
            self._users_by_id[user.user_id] = user

    def get_client(self, client_id: str) -> Client | None:
        """Return the client with this id, or None (Authlib's ``query_client``)."""
        with self._lock:
            return self._clients.get(client_id)

    def get_user(self, user_id: str) -> User | None:
        """Return the user with this internal id, or None."""
        with self._lock:
            return self._users_by_id.get(user_id)

    def check_login(self, username: str, password: str) -> tuple[User | None, User | None]:
        """Return (the user if the password is right, the user the username names).

        Unknown usernames cost one scrypt too, so timing does not tell which names exist.
        """
        with self._lock:
            named = self._users_by_name.get(username)
        if named is None:
            hash_password(password, b"\x00" * 16)
            return None, None
        if hmac.compare_digest(hash_password(password, named.salt), named.password_hash):
            return named, named
        return None, named

    def save_code(self, code: AuthorizationCode) -> None:
        """Store an authorization code under its reference."""
        with self._lock:
            self._codes[code.code_ref] = code

    def find_code(self, code: str, client: Client) -> AuthorizationCode | None:
        """Return the unexpired code issued to ``client`` whose value is ``code``, or None."""
        with self._lock:
            found = self._codes.get(token_ref(code.encode("utf-8")))
        if found is None or found.client_id != client.client_id or found.is_expired():
            return None
        return found

    def delete_code(self, code: AuthorizationCode) -> None:
        """Forget a used authorization code (a code is good for one exchange only)."""
        with self._lock:
            self._codes.pop(code.code_ref, None)

    def save_token(self, token: IssuedToken) -> None:
        """Store an issued token under its reference."""
        with self._lock:
            self._tokens[token.token_ref] = token

    def find_token(self, value: str, kind: str | None = None) -> IssuedToken | None:
        """Return the token whose value is ``value`` (of ``kind`` if given), or None."""
        if not value:
            return None
        with self._lock:
            found = self._tokens.get(token_ref(value.encode("utf-8")))
        if found is None or (kind is not None and found.kind != kind):
            return None
        return found

    def revoke(self, token: IssuedToken) -> bool:
        """Mark ``token`` revoked; return False if it already was."""
        with self._lock:
            already = token.revoked
            token.revoked = True
            return not already


@dataclass(frozen=True, slots=True)
class DemoCredentials:
    """Secrets of the demo clients and user (README.md), kept in a 0600 JSON file."""

    service_secret: str
    api_secret: str
    user_password: str

    @classmethod
    def load_or_create(cls, path: Path) -> DemoCredentials:
        """Load the credentials from ``path``, or generate them and write it (mode 0600).

        Raises OSError, ValueError (malformed file).
        """
        try:
            data = json.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            made = cls(
                secrets.token_urlsafe(32), secrets.token_urlsafe(32), secrets.token_urlsafe(12)
            )
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(
                    {
                        "service_secret": made.service_secret,
                        "api_secret": made.api_secret,
                        "user_password": made.user_password,
                    },
                    handle,
                )
            return made
        if not isinstance(data, dict) or not all(
            isinstance(data.get(name), str) and data[name]
            for name in ("service_secret", "api_secret", "user_password")
        ):
            raise ValueError(f"{path}: not a demo credentials file")
        return cls(data["service_secret"], data["api_secret"], data["user_password"])


def demo_store(credentials: DemoCredentials) -> Store:
    """Return a store with the demo clients and the demo user (see README.md)."""
    store = Store()
    store.add_client(
        Client(
            SERVICE_CLIENT,
            hash_secret(credentials.service_secret),
            "client_secret_basic",
            ("client_credentials",),
            ("read", "write"),
        )
    )
    store.add_client(
        Client(
            APP_CLIENT,
            None,
            "none",
            ("authorization_code", "refresh_token"),
            ("openid", "profile", "read"),
            redirect_uris=(APP_REDIRECT_URI,),
        )
    )
    store.add_client(
        Client(
            API_CLIENT,
            hash_secret(credentials.api_secret),
            "client_secret_basic",
            (),
            (),
            can_introspect=True,
        )
    )
    store.add_user(User.create("u-1001", DEMO_USER, credentials.user_password))
    return store
