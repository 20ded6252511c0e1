"""The log's signing key on disk: ``<data_dir>/log.key`` (secret) and ``<data_dir>/log.vkey``.

``log.key`` holds one line, the Go note private key format (C2SP signed-note, Ed25519, type
0x01) whose key name is the log's origin::

    PRIVATE+KEY+log.example.com/oauth/2026+1a2b3c4d+AXb...=

``log.vkey`` holds the matching verifier key, the value to publish::

    log.example.com/oauth/2026+1a2b3c4d+ARf...=

On first start :func:`load_or_create_log_key` creates both. The private key is written with mode
0600 to a temporary file that is fsynced, then linked into place without replacing anything
(a "rename that never clobbers": two processes starting at once cannot end up signing with
different keys), and the directory is fsynced. On later starts the key is loaded and its name
must equal the configured origin.

A key is an identity: the log never replaces one by itself. If ``log.vkey`` exists but
``log.key`` does not, it refuses to start rather than invent a new identity for the same origin.

Errors are :class:`KeyFileError`, one line, naming the file and never any key material.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from merkle.errors import MalformedError
from merkle.note import Ed25519Signer, generate_key

__all__ = [
    "KEY_FILE_NAME",
    "VKEY_FILE_NAME",
    "KeyFileError",
    "LogKey",
    "load_or_create_log_key",
]

logger = logging.getLogger(__name__)

KEY_FILE_NAME: Final = "log.key"
"""Name of the private key file inside the data directory."""
VKEY_FILE_NAME: Final = "log.vkey"
"""Name of the verifier key file inside the data directory."""

_KEY_MODE: Final = 0o600
_VKEY_MODE: Final = 0o644
_DIR_MODE: Final = 0o700
_MAX_FILE_SIZE: Final = 4096


class KeyFileError(Exception):
    """The log's key files are missing, unreadable, corrupted or do not match the origin."""


@dataclass(frozen=True, slots=True)
class LogKey:
    """The log's signing key as loaded from (or just written to) the data directory.

    ``created`` is true when this call generated the key.
    """

    signer: Ed25519Signer
    vkey: str
    key_path: Path
    vkey_path: Path
    created: bool


def load_or_create_log_key(data_dir: Path, origin: str) -> LogKey:
    """Load the log's key from ``data_dir``, creating it (and ``data_dir``) on first start.

    Requires ``origin`` to be a valid signed-note key name; the key's name must equal it.
    Writes ``log.vkey`` when it is missing; an existing one must match ``log.key``.

    Raises KeyFileError: the directory or a file cannot be read or written; ``log.key`` is not
    a valid Ed25519 note private key; its name differs from ``origin``; ``log.vkey`` does not
    match it; ``log.vkey`` exists without ``log.key``; ``origin`` is not a valid key name.
    """
    key_path = data_dir / KEY_FILE_NAME
    vkey_path = data_dir / VKEY_FILE_NAME
    _ensure_directory(data_dir)
    created = False
    if not key_path.exists():
        if vkey_path.exists():
            raise KeyFileError(
                f"{key_path}: missing, but {vkey_path} exists; restore the key file "
                "(a new key would be a new identity for the same origin)"
            )
        created = _create_key(key_path, origin)
    signer = _load_signer(key_path, origin)
    _ensure_vkey(vkey_path, signer.vkey)
    if created:
        logger.info("created log key %s for origin %s", signer.key_id.hex(), origin)
    return LogKey(signer, signer.vkey, key_path, vkey_path, created)


def _ensure_directory(data_dir: Path) -> None:
    """Create ``data_dir`` (mode 0700) if missing, making the new entry durable."""
    if data_dir.is_dir():
        return
    try:
        data_dir.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        _fsync_directory(data_dir.absolute().parent)
    except OSError as error:
        raise KeyFileError(f"{data_dir}: cannot create data directory ({error.strerror})") from None


def _create_key(key_path: Path, origin: str) -> bool:
    """Generate a key named ``origin`` into ``key_path``; return False if one appeared first."""
    try:
        private_key, _ = generate_key(origin)
    except MalformedError:
        raise KeyFileError(
            f"origin is not a valid key name (no spaces, '+' or control characters): {origin!r}"
        ) from None
    try:
        _write_file(key_path, (private_key + "\n").encode("ascii"), _KEY_MODE, replace=False)
    except FileExistsError:
        return False
    except OSError as error:
        raise KeyFileError(f"{key_path}: cannot write key file ({error.strerror})") from None
    return True


def _read_small(path: Path) -> str:
    """Return the ASCII text of ``path`` without its single final newline, if any."""
    try:
        with path.open("rb") as file:
            data = file.read(_MAX_FILE_SIZE + 1)
    except OSError as error:
        raise KeyFileError(f"{path}: cannot read ({error.strerror})") from None
    if len(data) > _MAX_FILE_SIZE:
        raise KeyFileError(f"{path}: corrupted (larger than {_MAX_FILE_SIZE} bytes)")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFileError(f"{path}: corrupted (not ASCII text)") from None
    return text.removesuffix("\n")


def _load_signer(key_path: Path, origin: str) -> Ed25519Signer:
    """Load the signer in ``key_path`` and check that its key name is ``origin``."""
    try:
        mode = key_path.stat().st_mode
    except OSError as error:
        raise KeyFileError(f"{key_path}: cannot read ({error.strerror})") from None
    if stat.S_IMODE(mode) & 0o077:
        logger.warning(
            "%s is readable or writable by other users (mode %o); it should be 0600",
            key_path,
            stat.S_IMODE(mode),
        )
    text = _read_small(key_path)
    try:
        signer = Ed25519Signer.from_private_key(text)
    except MalformedError as error:
        raise KeyFileError(
            f"{key_path}: corrupted or not an Ed25519 note private key ({error})"
        ) from None
    if signer.name != origin:
        raise KeyFileError(
            f"{key_path}: key name {signer.name!r} does not match the configured origin "
            f"{origin!r} (a log's key name is its origin)"
        )
    return signer


def _ensure_vkey(vkey_path: Path, vkey: str) -> None:
    """Write ``vkey`` to ``vkey_path`` if missing; otherwise require the file to hold it."""
    if vkey_path.exists():
        if _read_small(vkey_path) != vkey:
            raise KeyFileError(f"{vkey_path}: does not match {KEY_FILE_NAME}")
        return
    try:
        _write_file(vkey_path, (vkey + "\n").encode("ascii"), _VKEY_MODE, replace=True)
    except OSError as error:
        raise KeyFileError(f"{vkey_path}: cannot write ({error.strerror})") from None


def _write_file(path: Path, data: bytes, mode: int, *, replace: bool) -> None:
    """Write ``data`` to ``path`` atomically and durably, with permissions exactly ``mode``.

    Temporary file in the same directory (created exclusively, mode set before any byte is
    written) -> write -> fsync -> rename into place -> fsync the directory. With
    ``replace=False`` the rename is a hard link, which fails with FileExistsError instead of
    replacing an existing file.
    Raises OSError (FileExistsError when ``replace`` is false and ``path`` exists).
    """
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    descriptor = os.open(temporary, flags, mode)
    try:
        try:
            os.fchmod(descriptor, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(descriptor, view) :]
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        if replace:
            os.replace(temporary, path)
        else:
            _link_no_replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    _fsync_directory(path.parent)


def _link_no_replace(source: Path, target: Path) -> None:
    """Give ``source`` the name ``target`` unless ``target`` exists (FileExistsError then)."""
    try:
        os.link(source, target)
    except FileExistsError:
        raise
    except OSError as error:
        # File systems without hard links: check-then-rename, the best they allow.
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        if target.exists():
            raise FileExistsError(errno.EEXIST, "file exists", str(target)) from None
        os.rename(source, target)


def _fsync_directory(directory: Path) -> None:
    """fsync ``directory`` so that entries created or renamed in it survive a crash."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
