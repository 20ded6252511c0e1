"""Tests of server.keys: creating, reloading and refusing the log's key files."""

from __future__ import annotations

import base64
import logging
import os
import stat
from pathlib import Path

import pytest

from merkle.note import Ed25519Signer, Ed25519Verifier, generate_key, open_note, sign_note
from server import keys
from server.keys import KEY_FILE_NAME, VKEY_FILE_NAME, KeyFileError, load_or_create_log_key

ORIGIN = "log.example.com/oauth/2026"


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def key_error(data_dir: Path, origin: str = ORIGIN) -> str:
    """Return the one-line message of the KeyFileError that loading raises."""
    with pytest.raises(KeyFileError) as info:
        load_or_create_log_key(data_dir, origin)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_first_start_creates_both_files(tmp_path: Path) -> None:
    data_dir = tmp_path / "nested" / "data"
    log_key = load_or_create_log_key(data_dir, ORIGIN)
    assert log_key.created
    assert log_key.key_path == data_dir / KEY_FILE_NAME
    assert log_key.vkey_path == data_dir / VKEY_FILE_NAME
    assert mode_of(data_dir) == 0o700
    assert mode_of(log_key.key_path) == 0o600
    assert mode_of(log_key.vkey_path) == 0o644
    assert sorted(os.listdir(data_dir)) == [KEY_FILE_NAME, VKEY_FILE_NAME]  # no temporary left

    private_text = log_key.key_path.read_text(encoding="ascii")
    assert private_text.endswith("\n")
    assert private_text.count("\n") == 1
    assert private_text.startswith(f"PRIVATE+KEY+{ORIGIN}+")
    assert log_key.vkey_path.read_text(encoding="ascii") == log_key.vkey + "\n"
    assert log_key.vkey.startswith(f"{ORIGIN}+")
    assert log_key.signer.name == ORIGIN
    assert log_key.signer.vkey == log_key.vkey

    # The stored key signs notes that the published vkey verifies.
    note = sign_note("hello\n", [log_key.signer])
    _, verified = open_note(note, [Ed25519Verifier.from_vkey(log_key.vkey)])
    assert len(verified) == 1


def test_permissions_do_not_depend_on_umask(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        log_key = load_or_create_log_key(tmp_path, ORIGIN)
    finally:
        os.umask(previous)
    assert mode_of(log_key.key_path) == 0o600


def test_later_starts_load_the_same_key(tmp_path: Path) -> None:
    first = load_or_create_log_key(tmp_path, ORIGIN)
    stored = first.key_path.read_bytes()
    second = load_or_create_log_key(tmp_path, ORIGIN)
    assert not second.created
    assert second.vkey == first.vkey
    assert second.signer.key_id == first.signer.key_id
    assert first.key_path.read_bytes() == stored


def test_existing_key_files_are_used(tmp_path: Path) -> None:
    private_key, vkey = generate_key(ORIGIN)
    (tmp_path / KEY_FILE_NAME).write_text(private_key, encoding="ascii")  # no final newline
    (tmp_path / KEY_FILE_NAME).chmod(0o600)
    log_key = load_or_create_log_key(tmp_path, ORIGIN)
    assert not log_key.created
    assert log_key.vkey == vkey
    assert (tmp_path / VKEY_FILE_NAME).read_text(encoding="ascii") == vkey + "\n"


def test_origin_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    load_or_create_log_key(tmp_path, ORIGIN)
    message = key_error(tmp_path, "log.example.com/oauth/2027")
    assert "does not match the configured origin" in message
    assert ORIGIN in message
    assert "log.example.com/oauth/2027" in message


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\n",
        b"not a key\n",
        b"PRIVATE+KEY+" + ORIGIN.encode() + b"+00000000+AAAA\n",
        b"\xff\xfe garbage",
        b"A" * 5000,
        b"PRIVATE+KEY+log\n\n",
    ],
)
def test_corrupted_key_file_is_refused(tmp_path: Path, content: bytes) -> None:
    (tmp_path / KEY_FILE_NAME).write_bytes(content)
    message = key_error(tmp_path)
    assert str(tmp_path / KEY_FILE_NAME) in message
    assert "corrupted" in message


def test_tampered_keys_are_refused_without_echoing_material(tmp_path: Path) -> None:
    private_key, _ = generate_key(ORIGIN)
    *head, material = private_key.split("+", 4)  # key names never contain "+"
    prefix = "+".join(head)
    raw = bytearray(base64.b64decode(material))
    raw[5] ^= 0x01  # seed changed: the key ID no longer matches
    tampered = f"{prefix}+{base64.b64encode(bytes(raw)).decode()}"
    (tmp_path / KEY_FILE_NAME).write_text(tampered + "\n", encoding="ascii")
    message = key_error(tmp_path)
    assert "corrupted" in message
    assert material not in message
    assert material[:16] not in message

    cosigner_type = bytes([0x04]) + bytes(raw[1:])
    other_type = f"{prefix}+{base64.b64encode(cosigner_type).decode()}"
    (tmp_path / KEY_FILE_NAME).write_text(other_type + "\n", encoding="ascii")
    assert "corrupted" in key_error(tmp_path)


def test_missing_key_with_existing_vkey_is_refused(tmp_path: Path) -> None:
    log_key = load_or_create_log_key(tmp_path, ORIGIN)
    log_key.key_path.unlink()
    message = key_error(tmp_path)
    assert "missing" in message
    assert VKEY_FILE_NAME in message
    assert not log_key.key_path.exists()  # no new identity was invented


def test_mismatched_vkey_is_refused(tmp_path: Path) -> None:
    load_or_create_log_key(tmp_path, ORIGIN)
    _, other_vkey = generate_key(ORIGIN)
    (tmp_path / VKEY_FILE_NAME).write_text(other_vkey + "\n", encoding="ascii")
    assert "does not match" in key_error(tmp_path)


def test_missing_vkey_is_rewritten(tmp_path: Path) -> None:
    log_key = load_or_create_log_key(tmp_path, ORIGIN)
    log_key.vkey_path.unlink()
    again = load_or_create_log_key(tmp_path, ORIGIN)
    assert again.vkey_path.read_text(encoding="ascii") == log_key.vkey + "\n"


def test_open_permissions_are_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log_key = load_or_create_log_key(tmp_path, ORIGIN)
    log_key.key_path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="server.keys"):
        load_or_create_log_key(tmp_path, ORIGIN)
    assert any("should be 0600" in record.getMessage() for record in caplog.records)
    secret = log_key.key_path.read_text(encoding="ascii").strip().split("+", 4)[4]
    assert all(secret not in record.getMessage() for record in caplog.records)


def test_invalid_origin_is_refused_before_writing(tmp_path: Path) -> None:
    assert "not a valid key name" in key_error(tmp_path, "bad origin")
    assert not (tmp_path / KEY_FILE_NAME).exists()


def test_data_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x", encoding="ascii")
    assert "cannot create data directory" in key_error(not_a_dir)


def test_unreadable_key_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE_NAME).mkdir()  # exists, but cannot be read as a file (even by root)
    assert "cannot read" in key_error(tmp_path)


def test_a_key_created_concurrently_is_never_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another process writes its key between our existence check and our link: ours is dropped
    # and theirs is loaded, so both processes sign with the one key on disk.
    theirs = Ed25519Signer.generate(ORIGIN)
    real_write = keys._write_file

    def racing_write(path: Path, data: bytes, mode: int, *, replace: bool) -> None:
        if path.name == KEY_FILE_NAME:
            path.write_text(theirs.private_key + "\n", encoding="ascii")
            path.chmod(0o600)
        real_write(path, data, mode, replace=replace)

    monkeypatch.setattr(keys, "_write_file", racing_write)
    log_key = load_or_create_log_key(tmp_path, ORIGIN)
    assert not log_key.created
    assert log_key.vkey == theirs.vkey
    assert sorted(os.listdir(tmp_path)) == [KEY_FILE_NAME, VKEY_FILE_NAME]


def test_write_file_never_clobbers_without_replace(tmp_path: Path) -> None:
    target = tmp_path / "f"
    keys._write_file(target, b"one", 0o600, replace=False)
    with pytest.raises(FileExistsError):
        keys._write_file(target, b"two", 0o600, replace=False)
    assert target.read_bytes() == b"one"
    keys._write_file(target, b"three", 0o644, replace=True)
    assert target.read_bytes() == b"three"
    assert mode_of(target) == 0o644
    assert sorted(os.listdir(tmp_path)) == ["f"]
