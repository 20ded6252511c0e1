"""The high-water mark: the newest checkpoint this log signed, kept outside its database.

A database restored from an older copy (a backup, a snapshot, a replica that lagged) holds a
shorter tree than the log already published. Signing on top of it would publish a second
history for sizes that receipts already cover: the fault that gets a transparency log removed.
The database cannot tell by itself, so the sequencer keeps the newest signed checkpoint note in
a small file of the data directory (``<data_dir>/checkpoint.hwm``) and refuses to sign when the
database is behind it (:class:`server.sequencer.IntegrityFailure`).

The file has two slots of 8 KiB; each holds a magic, a sequence number, the note's length, its
SHA-256 and the note. A write goes to the slot after the newest one (``pwrite``, then
``fdatasync``: one flush per round, no rename, no directory sync), so a write torn by a crash
damages only that slot and the previous note survives in the other; a read takes the valid slot
with the highest sequence number. It is written after every commit and before the round's
submitters are answered. A crash between the database commit and the write leaves the mark one
round behind the database, which is harmless (the database is ahead, not behind); the next start
writes it again.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path
from typing import Final

__all__ = ["HIGH_WATER_FILE_NAME", "HighWaterMark"]

HIGH_WATER_FILE_NAME: Final = "checkpoint.hwm"
"""Name of the high-water mark file inside the data directory."""

SLOT_SIZE: Final = 8192
"""Bytes per slot; a note must fit in it with the 52-byte header."""

_MAGIC: Final = b"etch-hwm"
_HEADER: Final = struct.Struct(">8sQI32s")  # magic, sequence, note length, SHA-256 of the note


class HighWaterMark:
    """Reads and durably replaces the high-water mark (one signed checkpoint note, two slots)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.writes = 0
        self._descriptor: int | None = None
        self._sequence = -1

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> HighWaterMark:
        """Return the mark kept at ``<data_dir>/checkpoint.hwm``."""
        return cls(data_dir / HIGH_WATER_FILE_NAME)

    def read(self) -> bytes | None:
        """Return the newest intact note, or ``None`` if the file is absent or was never written.

        Raises OSError if it cannot be read, ValueError if it exists but no slot is intact.
        """
        try:
            with self.path.open("rb") as file:
                data = file.read(2 * SLOT_SIZE + 1)
        except FileNotFoundError:
            return None
        best: tuple[int, bytes] | None = None
        for slot in range(2):
            found = _parse_slot(data[slot * SLOT_SIZE : (slot + 1) * SLOT_SIZE])
            if found is not None and (best is None or found[0] > best[0]):
                best = found
        if best is None:
            if data.strip(b"\x00"):
                raise ValueError(f"{self.path}: no intact slot (damaged or not a high-water mark)")
            return None
        self._sequence = max(self._sequence, best[0])
        return best[1]

    def write(self, note: bytes) -> None:
        """Record ``note`` as the newest signed checkpoint, durably, keeping the previous one.

        Requires ``len(note) <= SLOT_SIZE - 52``. Raises OSError (disk full, I/O error): the
        previous note is then still intact; ValueError for a note too large.
        """
        if len(note) > SLOT_SIZE - _HEADER.size:
            raise ValueError(f"a note of {len(note)} bytes does not fit in a slot")
        descriptor = self._open()
        if self._sequence < 0:
            self.read()
        sequence = self._sequence + 1
        header = _HEADER.pack(_MAGIC, sequence, len(note), hashlib.sha256(note).digest())
        record = header + note
        offset = (sequence % 2) * SLOT_SIZE
        written = os.pwrite(descriptor, record, offset)
        if written != len(record):
            raise OSError(f"short write to {self.path} ({written} of {len(record)} bytes)")
        os.fdatasync(descriptor)
        self._sequence = sequence
        self.writes += 1

    def close(self) -> None:
        """Close the file descriptor kept open between writes."""
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None

    def _open(self) -> int:
        if self._descriptor is not None:
            return self._descriptor
        created = not self.path.exists()
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            if os.fstat(descriptor).st_size < 2 * SLOT_SIZE:
                os.ftruncate(descriptor, 2 * SLOT_SIZE)
                os.fsync(descriptor)
            if created:
                directory = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    os.fsync(directory)
                finally:
                    os.close(directory)
        except BaseException:
            os.close(descriptor)
            raise
        self._descriptor = descriptor
        return descriptor


def _parse_slot(slot: bytes) -> tuple[int, bytes] | None:
    """Return ``(sequence, note)`` of an intact slot, or ``None``."""
    if len(slot) < _HEADER.size:
        return None
    magic, sequence, length, digest = _HEADER.unpack_from(slot)
    if magic != _MAGIC or length > SLOT_SIZE - _HEADER.size:
        return None
    note = slot[_HEADER.size : _HEADER.size + length]
    if len(note) != length or hashlib.sha256(note).digest() != digest:
        return None
    return sequence, note
