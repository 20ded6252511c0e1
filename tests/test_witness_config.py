"""Witness configuration: log lists (Etch TOML and the witness network's logs/v0), settings
from flags and environment, and the key file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from merkle.cosignature import CosignatureSigner
from merkle.note import Ed25519Signer
from witness.config import (
    LogConfig,
    Settings,
    parse_listen,
    parse_log_list,
    parse_logs_toml,
    parse_logs_v0,
)
from witness.errors import ConfigError
from witness.keys import load_or_create_key
from witness.run import settings_from

FOO = Ed25519Signer.generate("tlog.foo.org").vkey
BAR = Ed25519Signer.generate("bar.org/tlog").vkey
BAR2 = Ed25519Signer.generate("bar.org/tlog").vkey


# -- Etch TOML ----------------------------------------------------------------------------------


def test_toml_log_list() -> None:
    text = f"""
# followed logs
[[log]]
vkey = "{FOO}"
url = "https://tlog.foo.org/log"
qpd = 1440

[[log]]
vkey = "{BAR}"
origin = "bar.org/tlog/2026"

[[log]]
vkey = "{BAR2}"
origin = "bar.org/tlog/2026"
"""
    logs = parse_log_list(text)
    assert logs == (
        LogConfig("tlog.foo.org", (FOO,), "https://tlog.foo.org/log", 1440),
        LogConfig("bar.org/tlog/2026", (BAR, BAR2)),
    )
    assert [v.name for v in logs[1].verifiers] == ["bar.org/tlog", "bar.org/tlog"]
    assert parse_log_list("") == ()


@pytest.mark.parametrize(
    "text",
    [
        "[[log]]\nvkey = 'x'\n",
        f"[[log]]\nvkey = '{FOO}'\nurl = 'ftp://x'\n",
        f"[[log]]\nvkey = '{FOO}'\nurl = 'https://x/'\n",
        f"[[log]]\nvkey = '{FOO}'\nurl = 'https://x?a=b'\n",
        f"[[log]]\nvkey = '{FOO}'\nqpd = 0\n",
        f"[[log]]\nvkey = '{FOO}'\nqpd = 1.5\n",
        f"[[log]]\nvkey = '{FOO}'\nqpd = true\n",
        f"[[log]]\nvkey = '{FOO}'\ncolour = 'red'\n",
        f"[[log]]\nvkey = '{FOO}'\norigin = ''\n",
        f"[[log]]\nvkey = '{FOO}'\norigin = \"a\\u0007b\"\n",
        f"[[log]]\nvkey = '{CosignatureSigner.generate('w').vkey}'\n",
        f"log = '{FOO}'\n",
        "[[log]]\n[[other]]\n",
        "[[log]\n",
        f"[[log]]\nvkey = '{FOO}'\nurl = 'https://a'\n[[log]]\nvkey = '{FOO}'\nurl = 'https://b'\n",
    ],
)
def test_toml_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_logs_toml(text)


# -- logs/v0 --------------------------------------------------------------------------------


def test_logs_v0() -> None:
    text = f"""#
# A list in the witness network's format.
#
logs/v0
revision 12

# foo, origin is the key name
vkey {FOO}
qpd 86400
contact https://tlog.foo.org/contact

vkey {BAR}
origin bar.org/tlog/2026
bastion none
qpd 24
contact sysadmin (at) bar.org

  vkey {BAR2}
  origin none
  qpd 24
  contact someone
"""
    assert parse_log_list(text) == (
        LogConfig("tlog.foo.org", (FOO,), None, 86400),
        LogConfig("bar.org/tlog/2026", (BAR,), None, 24),
        LogConfig("bar.org/tlog", (BAR2,), None, 24),
    )


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (f"vkey {FOO}\nqpd 1\ncontact c\n", "header"),
        (f"logs/v0\nvkey {FOO}\nqpd 05\ncontact c\n", "qpd"),
        (f"logs/v0\nvkey {FOO}\nqpd 0\ncontact c\n", "at least 1"),
        (f"logs/v0\nvkey {FOO}\nqpd +5\ncontact c\n", "qpd"),
        (f"logs/v0\nvkey {FOO}\ncontact c\n", "lacks"),
        (f"logs/v0\nvkey {FOO}\nqpd 5\n", "lacks"),
        (f"logs/v0\nvkey {FOO}\nqpd 5\norigin o\ncontact c\n", "out of order"),
        (f"logs/v0\nvkey {FOO}\nqpd 5\nqpd 6\ncontact c\n", "out of order"),
        (f"logs/v0\nvkey {FOO}\nurl https://x\nqpd 5\ncontact c\n", "unknown keyword"),
        ("logs/v0\nqpd 5\n", "before the 'vkey'"),
        (f"logs/v0\nvkey {FOO} extra\nqpd 5\ncontact c\n", "more than one field"),
        ("logs/v0\nvkey nope\nqpd 5\ncontact c\n", "vkey"),
        (f"logs/v0\nvkey {FOO}\norigin\nqpd 5\ncontact c\n", "no value"),
        (f"logs/v0\nrevision x\nvkey {FOO}\nqpd 5\ncontact c\n", "revision"),
    ],
)
def test_logs_v0_errors(body: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_logs_v0(body)


# -- settings -------------------------------------------------------------------------------


def test_settings_from_flags_and_environment(tmp_path: Path) -> None:
    environ = {
        "ETCH_WITNESS_DATA_DIR": str(tmp_path),
        "ETCH_WITNESS_LOGS": "/etc/logs",
        "ETCH_WITNESS_PEERS": "http://a, http://b/ http://a",
        "ETCH_WITNESS_POLL_INTERVAL": "2.5",
        "ETCH_WITNESS_NAME": "w.example/1",
        "ETCH_WITNESS_LOG_LEVEL": "debug",
        "ETCH_WITNESS_BURST": "7",
    }
    settings = settings_from(["--listen", "[::1]:9000", "--poll-interval", "3"], environ)
    assert settings == Settings(
        data_dir=tmp_path,
        logs_file=Path("/etc/logs"),
        host="::1",
        port=9000,
        peers=("http://a", "http://b"),
        poll_interval=3.0,
        name="w.example/1",
        log_level="DEBUG",
        rate_burst=7,
    )
    assert settings.database_url == str(tmp_path / "witness.sqlite3")
    assert settings.key_path == tmp_path / "witness.key"
    flagged = settings_from(
        ["--data-dir", "d", "--logs", "l", "--peer", "http://c", "--database", "postgresql://x"],
        environ,
    )
    assert flagged.peers == ("http://c",)
    assert flagged.database_url == "postgresql://x"


@pytest.mark.parametrize(
    "argv",
    [
        ["--data-dir", "d"],
        ["--data-dir", "d", "--logs", "l", "--poll-interval", "nan"],
        ["--data-dir", "d", "--logs", "l", "--poll-interval", "-1"],
        ["--data-dir", "d", "--logs", "l", "--burst", "5x"],
        ["--data-dir", "d", "--logs", "l", "--max-body-bytes", "10"],
        ["--data-dir", "d", "--logs", "l", "--peer", "ftp://x"],
        ["--data-dir", "d", "--logs", "l", "--log-level", "loud"],
    ],
)
def test_settings_errors(argv: list[str]) -> None:
    with pytest.raises(ConfigError):
        settings_from(argv, {})


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:8380") == ("127.0.0.1", 8380)
    assert parse_listen("[::1]:0") == ("::1", 0)
    for bad in ("8380", ":80", "host:", "host:080", "host:65536", "host:+1"):
        with pytest.raises(ConfigError):
            parse_listen(bad)


# -- the key file ---------------------------------------------------------------------------


def test_key_created_once_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "witness.key"
    signer, created = load_or_create_key(path, "w.example/1")
    assert created
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_text() == signer.private_key + "\n"
    again, created = load_or_create_key(path, None)
    assert not created
    assert again.vkey == signer.vkey
    assert load_or_create_key(path, "w.example/1")[0].vkey == signer.vkey
    assert [p.name for p in path.parent.iterdir()] == ["witness.key"]


def test_key_errors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "witness.key"
    with pytest.raises(ConfigError, match="--name"):
        load_or_create_key(path, None)
    with pytest.raises(ConfigError, match="invalid witness name"):
        load_or_create_key(path, "has space")
    signer, _ = load_or_create_key(path, "w.example/1")
    with pytest.raises(ConfigError, match=r"not 'w\.example/2'"):
        load_or_create_key(path, "w.example/2")
    os.chmod(path, 0o644)
    load_or_create_key(path, None)
    assert "chmod 600" in caplog.text
    secret = Ed25519Signer.generate("note-key").private_key
    path.write_text(secret + "\n")
    with pytest.raises(ConfigError) as refused:
        load_or_create_key(path, None)
    assert secret not in str(refused.value)
    assert signer.private_key not in caplog.text
