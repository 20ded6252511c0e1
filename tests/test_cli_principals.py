"""Tests of ``etch submitter`` and ``etch reader``: they work on the log's database directly.

The printed credential and the generated key file are then used against a log on the same
database, so the test shows the whole path from registration to a logged, signed event.
"""

from __future__ import annotations

import asyncio
import json
import re
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from client.cli import main
from server.storage import open_storage
from server.storage.base import Principal
from tests.oauth_support import (
    SetSigner,
    Submitter,
    envelope,
    open_oauth_log,
    sample_event,
)

CREDENTIAL = re.compile(r"^credential: ([A-Za-z0-9_-]{43})$", re.MULTILINE)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def stored(url: str, role: str) -> list[Principal]:
    async def read() -> list[Principal]:
        storage = open_storage(url)
        await storage.open()
        try:
            return await storage.list_principals(role)  # type: ignore[attr-defined, no-any-return]
        finally:
            await storage.close()

    return asyncio.run(read())


def test_submitter_add_generate_key_and_submit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    key_file = tmp_path / "as-prod.key"
    code, out, err = run(
        capsys, "submitter", "add", "as-prod", "--generate-key", "--key-file", str(key_file),
        "--data-dir", str(data),
    )  # fmt: skip
    assert code == 0, err
    match = CREDENTIAL.search(out)
    assert match is not None
    credential = match.group(1)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    private = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    (principal,) = stored(str(data / "log.db"), "submitter")
    assert principal.name == "as-prod"
    assert credential.encode() not in (data / "log.db").read_bytes()
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert [k.public_key for k in principal.keys] == [raw]

    async def submit() -> int:
        async with open_oauth_log(str(data / "log.db")) as log:
            submitter = Submitter("as-prod", credential, private)
            response = await log.client.post(
                "/v1/events",
                json=envelope(submitter, sample_event("token-issued")),
                headers=submitter.headers,
            )
            return response.status_code

    assert asyncio.run(submit()) == 201
    # Taken names and existing key files are refused without changing anything.
    assert run(capsys, "submitter", "add", "as-prod", "--generate-key", "--key-file",
               str(tmp_path / "other.key"), "--data-dir", str(data))[0] == 1  # fmt: skip
    assert not (tmp_path / "other.key").exists()
    assert run(capsys, "submitter", "add", "as-two", "--generate-key", "--key-file",
               str(key_file), "--data-dir", str(data))[0] == 1  # fmt: skip
    assert len(stored(str(data / "log.db"), "submitter")) == 1


def test_submitter_keys_list_and_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = str(tmp_path / "data")
    event_key = ed25519.Ed25519PrivateKey.generate().public_key()
    pem = tmp_path / "event.pem"
    pem.write_bytes(
        event_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    signer = SetSigner.generate("ES256", kid="set-1")
    jwk = tmp_path / "set.jwk"
    jwk.write_text(json.dumps(signer.public_jwk()))
    code, out, err = run(
        capsys, "submitter", "add", "as-prod", "--public-key", str(pem), "--set-key", str(jwk),
        "--issuer", "https://as.example.com", "--not-after", "1798761600", "--data-dir", data,
    )  # fmt: skip
    assert code == 0, err
    assert "set-1 set ES256" in out
    second = SetSigner.generate("RS256", kid="set-2")
    (tmp_path / "second.pem").write_bytes(second.public_pem())
    code, out, err = run(
        capsys, "submitter", "add-key", "as-prod", "--set-key", str(tmp_path / "second.pem"),
        "--data-dir", data,
    )  # fmt: skip
    assert code == 0, err
    code, out, _ = run(capsys, "submitter", "list", "--data-dir", data)
    assert code == 0
    assert out.startswith("as-prod\tactive\tcreated ")
    assert "set-1\tset\tES256\tnot after 2027-01-01T00:00:00Z\tissuer https://as.example.com" in out
    assert "\tRS256\t" in out
    (principal,) = stored(str(Path(data) / "log.db"), "submitter")
    # Keys stored in the same millisecond are ordered by key id, so compare as a multiset.
    assert sorted(k.usage for k in principal.keys) == ["event", "set", "set"]
    assert run(capsys, "submitter", "revoke", "as-prod", "--data-dir", data)[0] == 0
    assert stored(str(Path(data) / "log.db"), "submitter")[0].status == "revoked"
    assert "revoked" in run(capsys, "submitter", "list", "--data-dir", data)[1]
    assert run(capsys, "submitter", "revoke", "nobody", "--data-dir", data)[0] == 1


def test_submitter_usage_and_bad_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = str(tmp_path / "data")
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    private = tmp_path / "private.pem"
    private.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert run(capsys, "submitter")[0] == 2
    with pytest.raises(SystemExit) as info:
        main(["submitter", "add", "x", "--data-dir", data])  # neither key option
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        main(["submitter", "add", "x", "--generate-key", "--not-after", "+5"])
    assert run(capsys, "submitter", "add-key", "x", "--data-dir", data)[0] == 2
    code, _, err = run(
        capsys, "submitter", "add", "x", "--public-key", str(bad), "--data-dir", data
    )
    assert (code, "bad key" in err) == (1, True)
    code, _, err = run(
        capsys, "submitter", "add", "x", "--public-key", str(private), "--data-dir", data
    )
    assert code == 1
    assert "PRIVATE" not in err
    code, _, err = run(
        capsys, "submitter", "add", "bad name", "--generate-key", "--key-file",
        str(tmp_path / "k"), "--data-dir", data,
    )  # fmt: skip
    assert code == 1
    assert not (tmp_path / "k").exists()
    assert stored(str(Path(data) / "log.db"), "submitter") == []


def test_readers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = str(tmp_path / "data")
    code, out, err = run(capsys, "reader", "add", "auditor", "--data-dir", data)
    assert code == 0, err
    assert CREDENTIAL.search(out) is not None
    assert run(capsys, "reader", "add", "auditor", "--data-dir", data)[0] == 1
    assert run(capsys, "reader", "list", "--data-dir", data)[1].startswith("auditor\tactive")
    assert run(capsys, "submitter", "list", "--data-dir", data)[1] == ""
    assert run(capsys, "reader", "revoke", "auditor", "--data-dir", data)[0] == 0
    assert stored(str(Path(data) / "log.db"), "reader")[0].status == "revoked"
    assert run(capsys, "reader")[0] == 2


def test_commands_work_on_postgres(pg_database: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "reader", "add", "auditor", "--database-url", pg_database)
    assert CREDENTIAL.search(out) is not None
    assert code == 0, err
    assert [p.name for p in stored(pg_database, "reader")] == ["auditor"]
    assert run(capsys, "reader", "revoke", "auditor", "--database-url", pg_database)[0] == 0
    assert stored(pg_database, "reader")[0].status == "revoked"
