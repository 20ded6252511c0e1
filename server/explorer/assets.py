"""The explorer's stylesheet and script, read once from the package and served from memory.

No CDN and no build step: ``static/explorer.css`` and ``static/explorer.js`` ship inside the
package. Each is served under a name carrying the first 16 hex digits of its SHA-256
(``explorer.3f2a….js``), so it can be cached for a year and a new version gets a new URL.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response

__all__ = ["Asset", "Assets", "load_assets"]

_TYPES = {"css": "text/css; charset=utf-8", "js": "text/javascript; charset=utf-8"}


@dataclass(frozen=True, slots=True)
class Asset:
    """One static file: its versioned file name, bytes and media type."""

    name: str
    data: bytes
    media_type: str


@dataclass(frozen=True, slots=True)
class Assets:
    """The stylesheet and the script."""

    css: Asset
    js: Asset

    def get(self, name: str) -> Asset | None:
        """Return the asset with this versioned file name, or ``None``."""
        for asset in (self.css, self.js):
            if asset.name == name:
                return asset
        return None

    async def serve(self, request: Request) -> Response:
        """Serve ``/static/<name>``: the bytes with a year of caching, or 404."""
        asset = self.get(request.path_params["name"])
        if asset is None:
            return Response("not found\n", 404, media_type="text/plain; charset=utf-8")
        return Response(
            asset.data,
            media_type=asset.media_type,
            headers={
                "Cache-Control": "public, max-age=31536000, immutable",
                "X-Content-Type-Options": "nosniff",
            },
        )


def _load(stem: str, extension: str) -> Asset:
    data = resources.files("server.explorer").joinpath("static", f"{stem}.{extension}").read_bytes()
    version = hashlib.sha256(data).hexdigest()[:16]
    return Asset(f"{stem}.{version}.{extension}", data, _TYPES[extension])


def load_assets() -> Assets:
    """Read the packaged stylesheet and script. Raises OSError if the package lacks them."""
    return Assets(_load("explorer", "css"), _load("explorer", "js"))
