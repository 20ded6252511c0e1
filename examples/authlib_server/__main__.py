"""``python -m examples.authlib_server``: run the example authorization server (README.md).

Required: ``--log URL`` (the Etch log), ``--credential-file F`` (the submitter credential that
``etch submitter add`` printed), ``--signing-key F`` (the submitter's Ed25519 key: PEM or
``PRIVATE+KEY+...``) and ``--log-vkey-file F`` (the log's verifier key, ``<data dir>/log.vkey``).
The first line printed is ``listening on http://HOST:PORT`` (with the real port when ``--port
0``). Exit status 0 after SIGINT/SIGTERM, 2 for a usage error (a missing or malformed file).
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from werkzeug.serving import make_server

from client.emitter import Emitter, EmitterConfig, load_signing_key
from client.spool import SpoolError
from examples.authlib_server.app import create_app
from examples.authlib_server.store import DemoCredentials, demo_store

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

log = logging.getLogger("examples.authlib_server")


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.authlib_server",
        description="Example OAuth 2.0 authorization server (Flask + Authlib) audited by Etch.",
    )
    parser.add_argument("--log", required=True, help="base URL of the Etch log")
    parser.add_argument("--credential-file", required=True, type=Path,
                        help="file holding the submitter credential")
    parser.add_argument("--signing-key", required=True, type=Path,
                        help="the submitter's Ed25519 signing key (PEM or PRIVATE+KEY+...)")
    parser.add_argument("--log-vkey-file", required=True, type=Path,
                        help="the log's verifier key (log.vkey in its data directory)")
    parser.add_argument("--submitter", help="the submitter name the log must record")
    parser.add_argument("--spool", type=Path, default=Path("authlib-example-spool.db"),
                        help="the emitter's spool file (default ./authlib-example-spool.db)")
    parser.add_argument("--demo-credentials", type=Path,
                        default=Path("authlib-example-demo.json"),
                        help="demo client secrets and user password, created if missing")
    parser.add_argument("--pseudonym-key-file", type=Path,
                        default=Path("authlib-example-pseudonym.key"),
                        help="key of subject pseudonyms, created if missing")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000, help="listen port (0: any free port)")
    parser.add_argument("--issuer", help="issuer identifier (default http://HOST:PORT)")
    parser.add_argument("--durable", action="store_true",
                        help="wait for each audit event to be on disk before answering")
    return parser


def _read_text(path: Path, what: str) -> str:
    try:
        text = path.read_text("ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the {what} file {path}: {exc}") from None
    if not text:
        raise ValueError(f"the {what} file {path} is empty")
    return text


def _pseudonym_key(path: Path) -> bytes:
    """Read the 32-byte pseudonym key, or create it (mode 0600) on first start."""
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        key = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key)
    if len(key) != 32:
        raise ValueError(f"{path} does not hold a 32-byte pseudonym key")
    return key


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _not_ready(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """The WSGI app in place while the real one is built: 503."""
    start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
    return [b"starting\n"]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, start the emitter and serve until interrupted."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        credential = _read_text(args.credential_file, "credential")
        vkey = _read_text(args.log_vkey_file, "log vkey")
        signing_key = load_signing_key(args.signing_key)
        credentials = DemoCredentials.load_or_create(args.demo_credentials)
        pseudonym_key = _pseudonym_key(args.pseudonym_key_file)
    except (OSError, ValueError) as exc:
        print(f"authlib example: {exc}", file=sys.stderr)
        return 2
    server = None
    try:
        emitter = Emitter(
            args.log, credential, signing_key, args.spool, log_vkey=vkey,
            issuer=None, submitter=args.submitter, config=EmitterConfig(),
        )
    except (SpoolError, ValueError) as exc:
        print(f"authlib example: {exc}", file=sys.stderr)
        return 2
    try:
        # Bind first so that the issuer can name the real port (nothing is served until then).
        server = make_server(args.host, args.port, _not_ready, threaded=True)
        issuer = args.issuer or f"http://{args.host}:{server.server_port}"
        server.app = create_app(
            emitter, demo_store(credentials), issuer=issuer, pseudonym_key=pseudonym_key,
            durable=args.durable,
        )
        print(f"listening on http://{args.host}:{server.server_port}", flush=True)
        print(f"issuer {issuer}; audit events to {args.log}; spool {args.spool}", flush=True)
        print(f"demo client secrets and user password: {args.demo_credentials}", flush=True)
        signal.signal(signal.SIGTERM, _stop)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None:
            server.server_close()
        delivered = emitter.close(timeout=10.0)
        log.info("emitter closed; %s", "all events delivered" if delivered else
                 "undelivered events stay in the spool")
    return 0


if __name__ == "__main__":
    sys.exit(main())
