"""``etch keygen``: create a log, witness or submitter key pair in the signed-note key format.

Writes ``PREFIX.key`` (the private key, ``PRIVATE+KEY+<name>+<hex id>+<base64>``, mode 0600,
never replacing an existing file) and ``PREFIX.vkey`` (the verifier key to publish). A log key
is Ed25519 (type 0x01) named after the log's origin; a witness key is an Ed25519 cosignature
key (type 0x04); a submitter key is Ed25519 and also gets ``PREFIX.pub.pem``, the public key
``etch submitter add --public-key`` registers. The private key is never printed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from client.commands._common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_output_argument, emit_json
from merkle.cosignature import CosignatureSigner
from merkle.errors import MalformedError
from merkle.note import KEY_TYPE_ED25519, Ed25519Signer, check_key_name, parse_private_key

__all__ = ["register", "write_new_file"]

EPILOG = """examples:
  etch keygen --type log --name log.example.com/oauth/2026 -o /var/lib/etch/log
  etch keygen --type witness --name witness.example.com/w1 -o witness
  etch keygen --type submitter --name as-prod -o as-prod   # then: etch submitter add as-prod \\
                                                          #   --public-key as-prod.pub.pem

exit status: 0 written, 1 a file exists or cannot be written, 2 usage
"""


def register(subparsers: Any) -> None:
    """Add the ``keygen`` subcommand."""
    parser = subparsers.add_parser(
        "keygen",
        help="create a log, witness or submitter key pair",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--type", required=True, choices=("log", "witness", "submitter"))
    parser.add_argument(
        "--name", required=True, help="key name: the log's origin, the witness's name, ..."
    )
    parser.add_argument(
        "-o", "--output", metavar="PREFIX", help="file name prefix (default: the --type)"
    )
    add_output_argument(parser)
    parser.set_defaults(func=_run)


def write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` and ``data``, durably; never replace an existing file.

    Written to a temporary file first, then hard-linked into place (which fails if the name
    exists), so a crash leaves no half-written key. Raises FileExistsError, OSError.
    """
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.link(temp, path)
    finally:
        with contextlib.suppress(OSError):
            temp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _generate(kind: str, name: str) -> tuple[str, str, bytes | None]:
    """Return (private key text, vkey, PEM public key for submitters)."""
    if kind == "witness":
        cosigner = CosignatureSigner.generate(name)
        return cosigner.private_key, cosigner.vkey, None
    signer = Ed25519Signer.generate(name)
    pem = None
    if kind == "submitter":
        _, seed = parse_private_key(signer.private_key, KEY_TYPE_ED25519)
        public = Ed25519PrivateKey.from_private_bytes(seed).public_key()
        pem = public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    return signer.private_key, signer.vkey, pem


def _run(args: argparse.Namespace) -> int:
    try:
        check_key_name(args.name)
    except MalformedError as exc:
        print(f"etch keygen: invalid --name: {exc}", file=sys.stderr)
        return EXIT_USAGE
    prefix = Path(args.output or args.type)
    key_path = prefix.with_name(prefix.name + ".key")
    vkey_path = prefix.with_name(prefix.name + ".vkey")
    pem_path = prefix.with_name(prefix.name + ".pub.pem")
    private, vkey, pem = _generate(args.type, args.name)
    targets = [key_path, vkey_path] + ([pem_path] if pem is not None else [])
    for path in targets:
        if path.exists():
            print(f"etch keygen: {path} exists; not replacing a key", file=sys.stderr)
            return EXIT_FAILED
    try:
        write_new_file(key_path, (private + "\n").encode("ascii"), 0o600)
        write_new_file(vkey_path, (vkey + "\n").encode("ascii"), 0o644)
        if pem is not None:
            write_new_file(pem_path, pem, 0o644)
    except OSError as exc:
        print(f"etch keygen: cannot write the key files: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        document: dict[str, Any] = {
            "ok": True,
            "type": args.type,
            "vkey": vkey,
            "key_file": str(key_path),
            "vkey_file": str(vkey_path),
        }
        if pem is not None:
            document["public_key_file"] = str(pem_path)
        emit_json(document)
    else:
        print(f"wrote {key_path} (private, mode 0600) and {vkey_path}")
        if pem is not None:
            print(f"wrote {pem_path} (etch submitter add NAME --public-key {pem_path})")
        print(f"vkey {vkey}")
    return EXIT_OK
