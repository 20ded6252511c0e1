"""Token references: how a token appears in Etch without the token itself (ARCHITECTURE.md Events).

A token reference is ``base64url-nopad(SHA-256("etch/token-ref/v1" || 0x00 || token))``: 43
characters of the URL-safe base64 alphabet, computed by the OAuth server when it logs an event
and by anyone holding the token when they look it up. The domain prefix keeps it distinct from
the plain token hashes that resource servers already see (DPoP ``ath``, OpenID Connect
``at_hash``), so a log entry cannot be matched against those.

Pure functions on bytes and text; importable by the server and by OAuth servers alike.

Example::

    >>> token_ref(b"2YotnFZFEjr1zCsicMWpAA")
    '-bfU429PR50gUa3RLbpGgosKKPkwMRgFyt9OMlQb4OQ'
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Final

__all__ = ["TOKEN_REF_DOMAIN", "TOKEN_REF_LENGTH", "is_token_ref", "parse_token_ref", "token_ref"]

TOKEN_REF_DOMAIN: Final = b"etch/token-ref/v1\x00"
"""The bytes hashed before the token: the label and its 0x00 separator."""

TOKEN_REF_LENGTH: Final = 43
"""Characters in a token reference: unpadded base64url of 32 bytes."""

# 43 characters carry 258 bits; the last character's two low bits must be zero for the text to
# be the canonical encoding of 32 bytes (RFC 4648 §3.5), hence its restricted alphabet.
_TOKEN_REF: Final = re.compile(r"[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]\Z")


def token_ref(token: bytes) -> str:
    """Return the token reference of ``token`` (the exact bytes of the token as issued).

    Requires a non-empty token. Example: ``token_ref(b"2YotnFZFEjr1zCsicMWpAA")`` is
    ``"-bfU429PR50gUa3RLbpGgosKKPkwMRgFyt9OMlQb4OQ"``.
    Raises ValueError for an empty token (nothing to refer to) and TypeError for non-bytes.
    """
    if not isinstance(token, bytes | bytearray | memoryview):
        raise TypeError("a token is given as bytes")
    if len(token) == 0:
        raise ValueError("an empty token has no reference")
    digest = hashlib.sha256(TOKEN_REF_DOMAIN + bytes(token)).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def is_token_ref(text: object) -> bool:
    """Tell whether ``text`` is a canonical token reference (43 base64url chars, 32 bytes)."""
    return isinstance(text, str) and _TOKEN_REF.match(text) is not None


def parse_token_ref(text: str) -> bytes:
    """Return the 32-byte digest a token reference encodes.

    Strict: exactly 43 characters of the URL-safe alphabet, no padding, canonical last
    character. Raises ValueError otherwise (the message never repeats the input).
    """
    if not is_token_ref(text):
        raise ValueError("not a token reference (43 canonical base64url characters)")
    return base64.urlsafe_b64decode(text + "=")
