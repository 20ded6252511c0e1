"""The example authorization server: Flask + Authlib, every security-relevant action audited.

Endpoints:

=================================  ===============================================================
``GET/POST /login``                password login (``login-succeeded`` / ``login-failed``)
``GET /oauth/authorize``           authorization request (code + PKCE S256): consent page
``POST /oauth/authorize``          the user's decision (``consent-granted``, then the code's
                                   ``token-issued``; or ``login-failed`` reason
                                   ``consent_denied``)
``POST /oauth/token``              ``client_credentials``, ``authorization_code`` (with
                                   ``code_verifier``) and ``refresh_token`` (rotating: a new
                                   refresh token each time, the old one revoked)
``POST /oauth/revoke``             RFC 7009 revocation (``token-revoked`` reason ``api``)
``POST /oauth/introspect``         RFC 7662 introspection, for clients allowed to
                                   (``token-introspected``)
``GET /etch/receipts/<jti>``       the verified Etch receipt of one of the caller's events
``GET /healthz``, ``GET /metrics`` emitter statistics; Prometheus metrics of the emitter
=================================  ===============================================================

Token responses carry one extension member, ``etch_event``: the ``jti`` of the access token's
``token-issued`` event, so that the client can fetch its receipt once the log has it.

Rules of the example: every authorization and client-credentials request names at least one
scope the client is registered for; PKCE with ``S256`` is required for every authorization
request; refresh tokens rotate on every use. The store (:mod:`.store`) is in memory.
"""

from __future__ import annotations

import base64
import dataclasses
import hmac
import os
import secrets
import time
from typing import Any, Final
from urllib.parse import parse_qs, urlencode, urlsplit

from authlib.consts import default_json_headers
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import InvalidRequestError, InvalidScopeError, grants
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from flask import (
    Flask,
    Response,
    current_app,
    g,
    jsonify,
    redirect,
    render_template_string,
    session,
)
from flask import request as flask_request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from client.cbor import CBORError, decode_deterministic
from client.emitter import Emitter
from client.tokens import token_ref
from examples.authlib_server.audit import Auditor, AuditUnavailable, scope_list
from examples.authlib_server.store import (
    CODE_LIFETIME,
    REFRESH_LIFETIME,
    AuthorizationCode,
    Client,
    IssuedToken,
    Store,
    User,
)

__all__ = ["ACCESS_TOKEN_LIFETIME", "SCOPES", "create_app"]

ACCESS_TOKEN_LIFETIME: Final = 3600
"""Seconds an access token stays valid."""
SCOPES: Final = ("openid", "profile", "read", "write")
"""Every scope this server knows."""

_STATE: Final = "etch_authlib_example"
_AUTHORIZE_PATH: Final = "/oauth/authorize"

_LOGIN_PAGE: Final = """<!doctype html>
<title>Sign in</title>
<h1>Sign in</h1>
{% if error %}<p role="alert">{{ error }}</p>{% endif %}
<form method="post" action="/login">
  <input type="hidden" name="csrf" value="{{ csrf }}">
  <input type="hidden" name="next" value="{{ next }}">
  <label>Username <input name="username" autocomplete="username"></label>
  <label>Password <input name="password" type="password" autocomplete="current-password"></label>
  <button type="submit">Sign in</button>
</form>
"""

_CONSENT_PAGE: Final = """<!doctype html>
<title>Authorize {{ client_id }}</title>
<h1>{{ client_id }} asks for access</h1>
<ul>{% for scope in scopes %}<li>{{ scope }}</li>{% endfor %}</ul>
<form method="post" action="{{ action }}">
  <input type="hidden" name="csrf" value="{{ csrf }}">
  <button type="submit" name="confirm" value="yes">Allow</button>
  <button type="submit" name="confirm" value="no">Deny</button>
</form>
"""


@dataclasses.dataclass(frozen=True, slots=True)
class _AppState:
    """What the request handlers and Authlib callbacks share (in ``app.extensions``)."""

    store: Store
    auditor: Auditor
    server: AuthorizationServer


def _state() -> _AppState:
    state: _AppState = current_app.extensions[_STATE]
    return state


# --------------------------------------------------------------------------- Authlib parts


class S256CodeChallenge(CodeChallenge):
    """PKCE (RFC 7636) required on every authorization request, with ``S256`` only."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]  # noqa: RUF012 (Authlib's class attribute)

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge") or data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("PKCE with code_challenge_method=S256 is required")
        super().validate_code_challenge(grant, redirect_uri)


class ClientCredentialsGrant(grants.ClientCredentialsGrant):
    """RFC 6749 §4.4, limited to the scopes the client is registered for (at least one)."""

    def validate_token_request(self) -> None:
        super().validate_token_request()
        requested = scope_list(self.request.payload.scope)
        client: Client = self.request.client
        if not requested or not set(requested) <= set(client.scopes):
            raise InvalidScopeError()


class AuthorizationCodeGrant(grants.AuthorizationCodeGrant):
    """RFC 6749 §4.1 with PKCE; codes are stored under their token reference."""

    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]  # noqa: RUF012

    def save_authorization_code(self, code: str, request: Any) -> None:
        state = _state()
        client: Client = request.client
        user: User = request.user
        data = request.payload.data
        item = AuthorizationCode(
            code_ref=token_ref(code.encode("utf-8")),
            client_id=client.client_id,
            user_id=user.user_id,
            redirect_uri=request.payload.redirect_uri or "",
            scope=request.scope or "",
            code_challenge=data.get("code_challenge"),
            code_challenge_method=data.get("code_challenge_method"),
            expires_at=int(time.time()) + CODE_LIFETIME,
        )
        state.auditor.token_issued(
            client_id=client.client_id,
            token=code,
            token_type="authorization_code",  # noqa: S106 (a type name)
            user_id=user.user_id,
            scope=item.scope,
            expires_at=item.expires_at,
        )
        state.store.save_code(item)

    def query_authorization_code(self, code: str, client: Client) -> AuthorizationCode | None:
        return _state().store.find_code(code, client)

    def delete_authorization_code(self, authorization_code: AuthorizationCode) -> None:
        _state().store.delete_code(authorization_code)

    def authenticate_user(self, authorization_code: AuthorizationCode) -> User | None:
        return _state().store.get_user(authorization_code.user_id)


class RefreshTokenGrant(grants.RefreshTokenGrant):
    """RFC 6749 §6 with rotation: each use returns a new refresh token and revokes the old."""

    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]  # noqa: RUF012
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token: str) -> IssuedToken | None:
        token = _state().store.find_token(refresh_token, "refresh_token")
        if token is None or token.is_revoked() or token.is_expired():
            return None
        return token

    def authenticate_user(self, refresh_token: IssuedToken) -> User | None:
        if refresh_token.user_id is None:
            return None
        return _state().store.get_user(refresh_token.user_id)

    def revoke_old_credential(self, refresh_token: IssuedToken) -> None:
        state = _state()
        if refresh_token.is_revoked():
            return
        state.auditor.token_revoked(
            client_id=refresh_token.client_id,
            ref=refresh_token.token_ref,
            token_type="refresh_token",  # noqa: S106 (a type name)
            user_id=refresh_token.user_id,
            reason="issuer",
        )
        state.store.revoke(refresh_token)


def save_token(token: dict[str, Any], request: Any) -> None:
    """Authlib's ``save_token``: audit the tokens just issued, then store them.

    Emits ``token-issued`` for the access token and for the refresh token if there is one (each
    naming the code exchanged or the refresh token used as its parent), and ``token-refreshed``
    for a refresh grant; adds ``etch_event`` to the token response.
    """
    state = _state()
    now = int(time.time())
    client: Client = request.client
    user: User | None = request.user
    user_id = user.user_id if user is not None else None
    grant_type = request.payload.grant_type
    scope = token.get("scope") or ""
    parent: str | None = None
    if grant_type == "authorization_code":
        parent = request.authorization_code.code_ref
    elif grant_type == "refresh_token":
        parent = request.refresh_token.token_ref
    access = token["access_token"]
    expires_in = int(token["expires_in"])
    jti = state.auditor.token_issued(
        client_id=client.client_id,
        token=access,
        token_type="access_token",  # noqa: S106 (a type name)
        user_id=user_id,
        grant_type=grant_type,
        scope=scope,
        expires_at=now + expires_in,
        parent_ref=parent,
    )
    records = [
        IssuedToken(token_ref(access.encode("utf-8")), "access_token", client.client_id, user_id,
                    scope, now, expires_in)
    ]
    refresh = token.get("refresh_token")
    if refresh:
        state.auditor.token_issued(
            client_id=client.client_id,
            token=refresh,
            token_type="refresh_token",  # noqa: S106 (a type name)
            user_id=user_id,
            grant_type=grant_type,
            scope=scope,
            expires_at=now + REFRESH_LIFETIME,
            parent_ref=parent,
        )
        records.append(
            IssuedToken(token_ref(refresh.encode("utf-8")), "refresh_token", client.client_id,
                        user_id, scope, now, REFRESH_LIFETIME)
        )
    if grant_type == "refresh_token" and parent is not None:
        state.auditor.token_refreshed(
            client_id=client.client_id,
            refresh_ref=parent,
            issued_token=access,
            user_id=user_id,
            scope=scope,
            rotated=bool(refresh),
        )
    for record in records:
        state.store.save_token(record)
    if jti is not None:
        token["etch_event"] = jti


def _find_token(value: str, hint: str | None) -> IssuedToken | None:
    """Find a token by value, trying the hinted kind first (a hint is only a hint)."""
    store = _state().store
    return store.find_token(value, hint) or store.find_token(value)


class Revocation(RevocationEndpoint):
    """RFC 7009; public clients revoke their own tokens with their ``client_id``."""

    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]  # noqa: RUF012

    def query_token(self, token_string: str, token_type_hint: str | None) -> IssuedToken | None:
        return _find_token(token_string, token_type_hint)

    def revoke_token(self, token: IssuedToken, request: Any) -> None:
        state = _state()
        if token.is_revoked():
            return
        state.auditor.token_revoked(
            client_id=token.client_id,
            ref=token.token_ref,
            token_type=token.kind,
            user_id=token.user_id,
            reason="api",
        )
        state.store.revoke(token)


class Introspection(IntrospectionEndpoint):
    """RFC 7662 for clients registered with ``can_introspect``; every call is audited."""

    CLIENT_AUTH_METHODS = ["client_secret_basic"]  # noqa: RUF012

    def query_token(self, token_string: str, token_type_hint: str | None) -> IssuedToken | None:
        return _find_token(token_string, token_type_hint)

    def check_permission(self, token: IssuedToken, client: Client, request: Any) -> bool:
        return client.can_introspect

    def introspect_token(self, token: IssuedToken) -> dict[str, Any]:
        state = _state()
        body: dict[str, Any] = {
            "active": True,
            "client_id": token.client_id,
            "token_type": "Bearer" if token.kind == "access_token" else "refresh_token",
            "scope": token.scope,
            "exp": token.get_expires_at(),
            "iat": token.issued_at,
            "iss": state.auditor.issuer,
        }
        if token.user_id is not None:
            body["sub"] = state.auditor.subject(token.user_id)
        return body

    def create_endpoint_response(self, request: Any) -> tuple[int, dict[str, Any], Any]:
        client: Client = self.authenticate_endpoint_client(request)
        value = request.form.get("token", "")
        if not value:
            raise InvalidRequestError("the token parameter is required")
        token = self.authenticate_token(request, client)
        body = self.create_introspection_payload(token)
        active = bool(body.get("active"))
        _state().auditor.token_introspected(
            client_id=client.client_id,
            ref=token_ref(value.encode("utf-8")),
            active=active,
            token_type=token.kind if token is not None else None,
            user_id=token.user_id if token is not None and active else None,
            scope=token.scope if token is not None else None,
        )
        return 200, body, default_json_headers


# --------------------------------------------------------------------------- pages and routes


def _csrf_token() -> str:
    token = session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(24)
        session["csrf"] = token
    return token


def _check_csrf() -> bool:
    expected = session.get("csrf")
    given = flask_request.form.get("csrf", "")
    return isinstance(expected, str) and hmac.compare_digest(expected, given)


def _current_user() -> User | None:
    user_id = session.get("user_id")
    return _state().store.get_user(user_id) if isinstance(user_id, str) else None


def _safe_next(value: str | None) -> str:
    """Return ``value`` if it is a path of the authorization endpoint, else ``/``."""
    if value and value.startswith(_AUTHORIZE_PATH + "?") and "//" not in value:
        return value
    return "/"


def _client_of(next_path: str) -> str | None:
    """Return the client_id of a pending authorization request path, if it names a known one."""
    values = parse_qs(urlsplit(next_path).query).get("client_id")
    if values and _state().store.get_client(values[0]) is not None:
        return values[0]
    return None


def _oauth_error(error: OAuth2Error) -> tuple[Response, int]:
    body = dict(error.get_body())
    return jsonify(body), int(error.status_code)


def login() -> Any:
    """Show the login form, or check a submitted one and audit the outcome."""
    next_path = _safe_next(flask_request.values.get("next"))
    if flask_request.method == "GET":
        return render_template_string(_LOGIN_PAGE, csrf=_csrf_token(), next=next_path, error=None)
    if not _check_csrf():
        return "invalid form", 400
    state = _state()
    username = flask_request.form.get("username", "")
    password = flask_request.form.get("password", "")
    user, named = state.store.check_login(username, password)
    client_id = _client_of(next_path)
    if user is None:
        # An unknown username is not logged at all: it may be a password typed in the wrong box.
        state.auditor.login_failed(
            reason="invalid_credentials" if named is not None else "unknown_subject",
            user_id=named.user_id if named is not None else None,
            client_id=client_id,
        )
        page = render_template_string(
            _LOGIN_PAGE, csrf=_csrf_token(), next=next_path, error="Wrong username or password."
        )
        return page, 401
    state.auditor.login_succeeded(user_id=user.user_id, client_id=client_id)
    session.clear()
    session["user_id"] = user.user_id
    return redirect(next_path)


def authorize() -> Any:
    """Authorization endpoint: consent page (GET) and the user's decision (POST)."""
    user = _current_user()
    if user is None:
        return redirect("/login?" + urlencode({"next": flask_request.full_path}))
    state = _state()
    try:
        grant = state.server.get_consent_grant(end_user=user)
    except OAuth2Error as error:
        return _oauth_error(error)
    scope = grant.request.scope or ""
    if not scope_list(scope):
        return _oauth_error(InvalidScopeError("ask for at least one scope the client may use"))
    client_id = grant.request.client.client_id
    if flask_request.method == "GET":
        return render_template_string(
            _CONSENT_PAGE,
            client_id=client_id,
            scopes=scope_list(scope),
            action=flask_request.full_path,
            csrf=_csrf_token(),
        )
    if not _check_csrf():
        return "invalid form", 400
    if flask_request.form.get("confirm") == "yes":
        state.auditor.consent_granted(client_id=client_id, user_id=user.user_id, scope=scope)
        return state.server.create_authorization_response(grant_user=user, grant=grant)
    state.auditor.login_failed(reason="consent_denied", user_id=user.user_id, client_id=client_id)
    return state.server.create_authorization_response(grant_user=None, grant=grant)


def token() -> Any:
    """Token endpoint (RFC 6749 §3.2)."""
    return _state().server.create_token_response()


def revoke() -> Any:
    """Revocation endpoint (RFC 7009 §2)."""
    return _state().server.create_endpoint_response(Revocation.ENDPOINT_NAME)


def introspect() -> Any:
    """Introspection endpoint (RFC 7662 §2)."""
    return _state().server.create_endpoint_response(Introspection.ENDPOINT_NAME)


def receipt(jti: str) -> Any:
    """Return the verified Etch receipt of one of the authenticated client's events.

    Confidential clients authenticate with HTTP Basic, public clients name their
    ``client_id``. 404 until the log has returned a receipt that verified (or if the event is
    another client's).
    """
    state = _state()
    try:
        oauth_request = state.server.create_oauth2_request(None)
        client: Client = state.server.authenticate_client(
            oauth_request, ["client_secret_basic", "none"], "receipts"
        )
    except OAuth2Error as error:
        return _oauth_error(error)
    emitter: Emitter = state.auditor.emitter
    stored = emitter.receipt(jti)
    if stored is None:
        return jsonify({"error": "not_found"}), 404
    try:
        leaf = decode_deterministic(stored.entry)
    except CBORError:
        return jsonify({"error": "not_found"}), 404
    event = leaf.get("event") if isinstance(leaf, dict) else None
    if not isinstance(event, dict) or event.get("client_id") != client.client_id:
        return jsonify({"error": "not_found"}), 404
    return jsonify(
        {
            "jti": stored.jti,
            "index": stored.index,
            "leaf_hash": base64.b64encode(stored.leaf_hash).decode("ascii"),
            "tree_size": stored.tree_size,
            "checkpoint": stored.checkpoint.decode("utf-8"),
            "receipt": stored.receipt.decode("utf-8"),
            "entry": base64.b64encode(stored.entry).decode("ascii"),
        }
    )


def healthz() -> Any:
    """Emitter statistics as JSON."""
    stats = _state().auditor.emitter.stats()
    return jsonify({"status": "ok", "emitter": dataclasses.asdict(stats)})


def metrics() -> Any:
    """The emitter's Prometheus metrics."""
    registry = _state().auditor.emitter.registry
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


def _audit_unavailable(error: AuditUnavailable) -> tuple[Response, int]:
    body = {"error": "temporarily_unavailable", "error_description": "audit log unavailable"}
    return jsonify(body), 503


def create_app(
    emitter: Emitter,
    store: Store,
    *,
    issuer: str,
    pseudonym_key: bytes,
    durable: bool = False,
    secret_key: bytes | None = None,
) -> Flask:
    """Return the Flask application of the example authorization server.

    ``issuer`` is its issuer identifier (the ``iss`` of every event), ``pseudonym_key`` the
    key of subject pseudonyms, ``durable`` whether events go through ``emit_durable``,
    ``secret_key`` the session cookie key (random when not given: sessions end on restart).
    """
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=secret_key or os.urandom(32),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        OAUTH2_REFRESH_TOKEN_GENERATOR=True,
        OAUTH2_SCOPES_SUPPORTED=list(SCOPES),
        OAUTH2_TOKEN_EXPIRES_IN={
            "authorization_code": ACCESS_TOKEN_LIFETIME,
            "client_credentials": ACCESS_TOKEN_LIFETIME,
            "refresh_token": ACCESS_TOKEN_LIFETIME,
        },
    )
    auditor = Auditor(
        emitter, issuer, pseudonym_key, durable=durable, txn=lambda: g.get("txn")
    )
    server = AuthorizationServer(app, query_client=store.get_client, save_token=save_token)
    server.register_grant(ClientCredentialsGrant)
    server.register_grant(AuthorizationCodeGrant, [S256CodeChallenge(required=True)])
    server.register_grant(RefreshTokenGrant)
    server.register_endpoint(Revocation)
    server.register_endpoint(Introspection)
    app.extensions[_STATE] = _AppState(store, auditor, server)

    @app.before_request
    def _new_transaction() -> None:
        g.txn = secrets.token_hex(8)

    app.add_url_rule("/login", view_func=login, methods=["GET", "POST"])
    app.add_url_rule(_AUTHORIZE_PATH, view_func=authorize, methods=["GET", "POST"])
    app.add_url_rule("/oauth/token", view_func=token, methods=["POST"])
    app.add_url_rule("/oauth/revoke", view_func=revoke, methods=["POST"])
    app.add_url_rule("/oauth/introspect", view_func=introspect, methods=["POST"])
    app.add_url_rule("/etch/receipts/<jti>", view_func=receipt, methods=["GET"])
    app.add_url_rule("/healthz", view_func=healthz, methods=["GET"])
    app.add_url_rule("/metrics", view_func=metrics, methods=["GET"])
    app.register_error_handler(AuditUnavailable, _audit_unavailable)
    return app
