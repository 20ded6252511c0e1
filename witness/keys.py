"""The witness's cosigning key file: created on first start, read on every later start.

The file holds one line, the type-0x04 private key text of :mod:`merkle.cosignature`
(``PRIVATE+KEY+<name>+<hex id>+<base64(0x04 || seed)>``). It is created with mode 0600 by an
atomic, no-clobber write (temporary file, fsync, hard link to the final name, fsync of the
directory), so a crash leaves either no key or a complete one, and two processes starting at
once cannot replace each other's key. The key text never appears in a log line or an error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

from merkle.cosignature import CosignatureSigner
from merkle.errors import MalformedError
from witness.errors import ConfigError

__all__ = ["load_or_create_key"]

logger = logging.getLogger(__name__)


def load_or_create_key(path: Path, name: str | None) -> tuple[CosignatureSigner, bool]:
    """Return the witness key at ``path`` and whether it was created now.

    An existing key is read; when ``name`` is given it must equal the key's name. A missing
    key is generated under ``name`` (required then) and written as described in the module
    docstring. A key file readable by group or others is used but logged as a warning.

    Raises ConfigError for a missing name, a name mismatch, or an unreadable or malformed key
    file (without echoing its content); OSError if the file cannot be written.
    """
    if path.exists():
        return _load(path, name), False
    if not name:
        raise ConfigError(f"no witness key at {path}: give a key name (--name) to create one")
    try:
        signer = CosignatureSigner.generate(name)
    except MalformedError as exc:
        raise ConfigError(f"invalid witness name {name!r}: {exc}") from None
    try:
        _write_new(path, (signer.private_key + "\n").encode("ascii"))
    except FileExistsError:
        return _load(path, name), False
    return signer, True


def _load(path: Path, name: str | None) -> CosignatureSigner:
    try:
        mode = path.stat().st_mode
        text = path.read_text("ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the witness key {path}: {type(exc).__name__}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("witness key %s is accessible to group or others; chmod 600 it", path)
    try:
        signer = CosignatureSigner.from_private_key(text)
    except MalformedError:
        raise ConfigError(f"{path} does not hold a witness (type 0x04) private key") from None
    if name and signer.name != name:
        raise ConfigError(f"the witness key in {path} is named {signer.name!r}, not {name!r}")
    return signer


def _write_new(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.link(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
