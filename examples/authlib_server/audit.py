"""Etch events for the example authorization server: one method per OAuth action.

Each method builds one event of the Etch vocabulary (``server/events.py``; served as JSON
Schema at ``GET /v1/schema/events``) and hands it to :class:`client.emitter.Emitter`:

==========================  ==============================================================
method                      event
==========================  ==============================================================
``token_issued``            ``token-issued``: access token, refresh token or authorization
                            code, with grant type, scopes, expiry and the parent token (the
                            code exchanged, or the refresh token rotated)
``token_refreshed``         ``token-refreshed``: a refresh token was used (and rotated)
``token_revoked``           ``token-revoked``: RFC 7009 revocation (``api``) or rotation
                            (``issuer``)
``token_introspected``      ``token-introspected``: RFC 7662, active or not
``consent_granted``         ``consent-granted``: the user approved a client's scopes
``login_succeeded``         ``login-succeeded``
``login_failed``            ``login-failed``: wrong password, unknown user, consent denied
==========================  ==============================================================

Tokens and codes appear only as token references (:func:`client.tokens.token_ref`); users only
as pseudonyms, ``p-`` followed by 32 hex digits of HMAC-SHA-256 under a key of the deployment
(:meth:`Auditor.subject`), so the log never learns who they are. ``txn`` ties the events of one
HTTP request together.

With ``durable`` every event goes through :meth:`Emitter.emit_durable`: the caller continues
only once the event is on disk, and an emitter that cannot store it raises
:class:`AuditUnavailable` (the application answers 503 and does not complete the action).
Otherwise :meth:`Emitter.emit` is used: it never blocks and never fails for log trouble.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable
from typing import Any

from client.emitter import Emitter, EmitterError
from client.tokens import token_ref

__all__ = ["AuditUnavailable", "Auditor", "scope_list"]

log = logging.getLogger(__name__)


class AuditUnavailable(Exception):  # noqa: N818 (a condition, named as the answer it gives)
    """A durable audit event could not be stored: the action must not complete."""


def scope_list(scope: str | None) -> list[str]:
    """Return the distinct scope tokens of an RFC 6749 §3.3 scope string, in order."""
    seen: dict[str, None] = {}
    for item in (scope or "").split():
        seen.setdefault(item, None)
    return list(seen)


class Auditor:
    """Builds Etch events for OAuth actions and emits them (see the module docstring).

    ``issuer`` is the authorization server's issuer identifier (each event's ``iss``),
    ``pseudonym_key`` the secret key of subject pseudonyms (at least 32 bytes), ``txn`` a
    callable returning the current transaction id (or None).
    """

    def __init__(
        self,
        emitter: Emitter,
        issuer: str,
        pseudonym_key: bytes,
        *,
        durable: bool = False,
        txn: Callable[[], str | None] = lambda: None,
    ) -> None:
        if len(pseudonym_key) < 32:
            raise ValueError("the pseudonym key must be at least 32 bytes")
        self.emitter = emitter
        self.issuer = issuer
        self.durable = durable
        self._pseudonym_key = pseudonym_key
        self._txn = txn

    def subject(self, user_id: str) -> str:
        """Return the stable pseudonym of a user: ``p-`` and 32 hex digits of an HMAC."""
        digest = hmac.new(self._pseudonym_key, user_id.encode("utf-8"), hashlib.sha256)
        return "p-" + digest.hexdigest()[:32]

    def _emit(self, event: dict[str, Any]) -> str | None:
        """Fill ``iss`` and ``txn``, emit, and return the event's jti (None if dropped)."""
        event["iss"] = self.issuer
        txn = self._txn()
        if txn is not None:
            event["txn"] = txn
        if not self.durable:
            return self.emitter.emit(event)
        try:
            return self.emitter.emit_durable(event)
        except EmitterError as exc:
            log.error("audit event %s not stored: %s", event["type"], exc)
            raise AuditUnavailable(str(exc)) from exc

    def _subject_fields(self, event: dict[str, Any], user_id: str | None) -> dict[str, Any]:
        if user_id is not None:
            event["sub"] = self.subject(user_id)
        return event

    def token_issued(
        self,
        *,
        client_id: str,
        token: str,
        token_type: str,
        user_id: str | None = None,
        grant_type: str | None = None,
        scope: str | None = None,
        expires_at: int | None = None,
        parent_ref: str | None = None,
    ) -> str | None:
        """Emit ``token-issued`` for ``token`` (an access/refresh token or a code)."""
        event: dict[str, Any] = {
            "type": "token-issued",
            "client_id": client_id,
            "token_type": token_type,
            "token_ref": token_ref(token.encode("utf-8")),
        }
        if grant_type is not None:
            event["grant_type"] = grant_type
        if scopes := scope_list(scope):
            event["scope"] = scopes
        if expires_at is not None:
            event["exp"] = expires_at
        if parent_ref is not None:
            event["parent_token_ref"] = parent_ref
        return self._emit(self._subject_fields(event, user_id))

    def token_refreshed(
        self,
        *,
        client_id: str,
        refresh_ref: str,
        issued_token: str,
        user_id: str | None,
        scope: str | None,
        rotated: bool,
    ) -> str | None:
        """Emit ``token-refreshed``: the refresh token ``refresh_ref`` bought ``issued_token``."""
        event: dict[str, Any] = {
            "type": "token-refreshed",
            "client_id": client_id,
            "token_ref": refresh_ref,
            "issued_token_ref": token_ref(issued_token.encode("utf-8")),
            "rotated": rotated,
        }
        if scopes := scope_list(scope):
            event["scope"] = scopes
        return self._emit(self._subject_fields(event, user_id))

    def token_revoked(
        self,
        *,
        client_id: str,
        ref: str,
        token_type: str,
        user_id: str | None,
        reason: str,
    ) -> str | None:
        """Emit ``token-revoked`` (``reason`` ``api`` for RFC 7009, ``issuer`` for rotation)."""
        event = {
            "type": "token-revoked",
            "client_id": client_id,
            "token_ref": ref,
            "token_type": token_type,
            "reason": reason,
        }
        return self._emit(self._subject_fields(event, user_id))

    def token_introspected(
        self,
        *,
        client_id: str,
        ref: str,
        active: bool,
        token_type: str | None,
        user_id: str | None,
        scope: str | None,
    ) -> str | None:
        """Emit ``token-introspected``; ``client_id`` is the resource server that asked."""
        event: dict[str, Any] = {
            "type": "token-introspected",
            "client_id": client_id,
            "token_ref": ref,
            "active": active,
        }
        if token_type is not None:
            event["token_type"] = token_type
        if active and (scopes := scope_list(scope)):
            event["scope"] = scopes
        return self._emit(self._subject_fields(event, user_id))

    def consent_granted(self, *, client_id: str, user_id: str, scope: str | None) -> str | None:
        """Emit ``consent-granted`` for the scopes the user approved.

        Requires at least one scope (the application refuses requests without); raises
        ValueError otherwise.
        """
        scopes = scope_list(scope)
        if not scopes:
            raise ValueError("a consent covers at least one scope")
        event = {"type": "consent-granted", "client_id": client_id, "scope": scopes}
        return self._emit(self._subject_fields(event, user_id))

    def login_succeeded(self, *, user_id: str, client_id: str | None) -> str | None:
        """Emit ``login-succeeded`` (password authentication)."""
        event: dict[str, Any] = {"type": "login-succeeded", "amr": ["pwd"]}
        if client_id is not None:
            event["client_id"] = client_id
        return self._emit(self._subject_fields(event, user_id))

    def login_failed(
        self, *, reason: str, user_id: str | None, client_id: str | None
    ) -> str | None:
        """Emit ``login-failed``; no subject for an unknown username (it may be a typo'd secret)."""
        event: dict[str, Any] = {"type": "login-failed", "reason": reason, "amr": ["pwd"]}
        if client_id is not None:
            event["client_id"] = client_id
        return self._emit(self._subject_fields(event, user_id))
