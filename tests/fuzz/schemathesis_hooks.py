"""Schemathesis hooks for the fuzz run (loaded through ``SCHEMATHESIS_HOOKS``).

``POST /v1/sets`` takes ``application/secevent+jwt`` (RFC 8417 §2.3), a compact JWS in ASCII,
which schemathesis has no serializer for: it is sent as the text it was generated as.
"""

from __future__ import annotations

import schemathesis

schemathesis.serializer.alias("application/secevent+jwt", "text/plain")
