"""The ceiling the log's HTTP figures are compared with: an empty Starlette app on uvicorn.

Run from the project root::

    .venv/bin/python -m benchmarks.baseline_app [--host 127.0.0.1] [--port 0]

Two routes, with no log behind them:

* ``POST /post``: reads the body (same size limit as the log's ``POST /v1/events``), parses it
  as JSON, encodes the value as deterministic CBOR (``cbor2``, ``canonical=True``) and answers
  ``201 {"bytes": <encoded length>}``; a body that is not a JSON object answers 400. This is
  the least work any submission endpoint does: the log adds validation, sequencing, durable
  storage, signing and the receipt on top.
* ``GET /get``: answers ``200 ok`` (``text/plain``), the least any read endpoint does.

It runs on uvicorn with exactly the options :mod:`server.__main__` (and
:mod:`benchmarks.serve_raw`) use: one worker, the same event loop and HTTP implementation,
no access log, no lifespan, no server header, keep-alive 30 s, and the same garbage-collector
settings (:func:`server.runtime.tune_gc`). Once it listens it prints
``ready <url>`` to standard output.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
from collections.abc import Sequence

import cbor2
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.codec import DEFAULT_LIMITS
from server.runtime import tune_gc

__all__ = ["create_baseline_app", "main"]

_MAX_BODY = DEFAULT_LIMITS.max_body_bytes


async def _post(request: Request) -> Response:
    """Parse a JSON object and CBOR-encode it; answer its encoded length."""
    body = await request.body()
    if len(body) > _MAX_BODY:
        return Response(b'{"error":"too large"}', 413, media_type="application/json")
    try:
        value = json.loads(body)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        return Response(b'{"error":"not a JSON object"}', 400, media_type="application/json")
    encoded = cbor2.dumps(value, canonical=True)
    return Response(
        json.dumps({"bytes": len(encoded)}).encode("ascii"), 201, media_type="application/json"
    )


async def _get(request: Request) -> Response:
    """Answer a constant two-byte body."""
    return Response(b"ok", media_type="text/plain; charset=utf-8")


def create_baseline_app() -> Starlette:
    """Return the baseline Starlette app (``POST /post``, ``GET /get``)."""
    return Starlette(
        routes=[Route("/post", _post, methods=["POST"]), Route("/get", _get, methods=["GET"])]
    )


class _Server(uvicorn.Server):
    """A uvicorn server that prints ``ready <url>`` once its socket listens."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start listening, then print the ready line with the bound port."""
        await super().startup(sockets=sockets)
        if self.started and self.servers:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            print(f"ready http://{host}:{port}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the baseline app until interrupted; exit status 0, or 2 for a usage error."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.baseline_app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    config = uvicorn.Config(
        create_baseline_app(),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        lifespan="off",
        server_header=False,
        timeout_keep_alive=30,
    )
    tune_gc()  # the log's collector settings, so that only the app differs
    asyncio.run(_Server(config).serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
