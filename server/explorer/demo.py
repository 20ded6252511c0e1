"""The demo token of ``make run``: a few logged events to find with the explorer's "my token".

:data:`DEMO_TOKEN` is a made-up refresh token; :func:`demo_events` are four events about it
(issued, used to refresh, introspected, revoked), with fixed ``jti`` values and times so that
submitting them again only finds the originals (200, duplicate). :func:`submit_demo_events`
signs and submits them as a registered submitter. Pasting the demo token into the explorer's
"my token" page then shows them on a timeline, each verified in the browser.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Final

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.emitter import load_signing_key, sign_event
from client.tokens import token_ref

__all__ = ["DEMO_TOKEN", "demo_events", "submit_demo_events", "submit_demo_events_from_files"]

DEMO_TOKEN: Final = "etch-demo-refresh-token-7Qv2"  # noqa: S105 (public by design)
"""The token to paste into "my token" after ``make run`` (it was never a real credential)."""

_ACCESS_TOKENS: Final = ("etch-demo-access-token-1", "etch-demo-access-token-2")
_IAT: Final = 1_767_225_600  # 2026-01-01T00:00:00Z: fixed, so resubmitting finds duplicates


def demo_events() -> list[dict[str, Any]]:
    """Return the demo token's events, oldest first (valid OAuth events, see server.events)."""
    ref = token_ref(DEMO_TOKEN.encode("ascii"))
    access = [token_ref(t.encode("ascii")) for t in _ACCESS_TOKENS]
    common = {"iss": "https://as.example.com", "client_id": "demo-client"}
    return [
        {
            **common,
            "jti": "demo-token-issued-1",
            "iat": _IAT,
            "type": "token-issued",
            "sub": "pseudonym-7f3a",
            "token_type": "refresh_token",
            "grant_type": "authorization_code",
            "scope": ["openid", "offline_access"],
            "token_ref": ref,
        },
        {
            **common,
            "jti": "demo-token-refreshed-1",
            "iat": _IAT + 60,
            "type": "token-refreshed",
            "sub": "pseudonym-7f3a",
            "token_ref": ref,
            "issued_token_ref": access[1],
            "scope": ["openid"],
        },
        {
            "iss": "https://as.example.com",
            "jti": "demo-token-introspected-1",
            "iat": _IAT + 120,
            "type": "token-introspected",
            "client_id": "demo-resource-server",
            "token_ref": ref,
            "active": True,
            "token_type": "refresh_token",
        },
        {
            **common,
            "jti": "demo-token-revoked-1",
            "iat": _IAT + 180,
            "type": "token-revoked",
            "token_ref": ref,
            "token_type": "refresh_token",
            "reason": "user",
        },
    ]


def submit_demo_events(client: httpx.Client, credential: str, key: Ed25519PrivateKey) -> int:
    """Sign and submit the demo events with ``client`` (its base URL is the log's).

    Returns how many were logged for the first time (resubmissions answer 200). Raises
    httpx.HTTPStatusError for a refusal, httpx.HTTPError when the log cannot be reached.
    """
    new = 0
    for event in demo_events():
        _, signature = sign_event(event, key)
        response = client.post(
            "/v1/events",
            json={"event": event, "signature": base64.b64encode(signature).decode("ascii")},
            headers={"authorization": f"Bearer {credential}"},
        )
        response.raise_for_status()
        new += response.status_code == 201
    return new


def submit_demo_events_from_files(log_url: str, credential_file: Path, key_file: Path) -> int:
    """Submit the demo events with a submitter's credential and key files (``make run``'s).

    Raises OSError or ValueError for unreadable files, httpx errors as
    :func:`submit_demo_events` does.
    """
    credential = credential_file.read_text(encoding="ascii").strip()
    key = load_signing_key(key_file)
    with httpx.Client(base_url=log_url, timeout=10.0) as client:
        return submit_demo_events(client, credential, key)
