"""Tests of server.config: defaults, source precedence and strict parsing of every source."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from server.codec import DEFAULT_LIMITS, Limits
from server.config import (
    DEFAULT_DATA_DIR,
    DEFAULT_ORIGIN,
    ConfigError,
    Settings,
    add_serve_arguments,
    load_settings,
    settings_from_args,
)


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "etch.toml"
    path.write_text(text, encoding="utf-8")
    return path


def config_error(argv: list[str] | None, environ: dict[str, str]) -> str:
    """Return the message of the ConfigError that loading raises; it must be one line."""
    with pytest.raises(ConfigError) as info:
        load_settings(argv, environ)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults() -> None:
    settings = load_settings(None, {})
    assert settings == Settings()
    assert settings.data_dir == DEFAULT_DATA_DIR == Path("etch-data")
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.database == str(Path("etch-data") / "log.db")
    assert not settings.is_postgres
    assert settings.origin == DEFAULT_ORIGIN == "localhost/etch/log"
    assert (settings.batch_size, settings.batch_period_ms) == (1000, 200)
    assert settings.limits == DEFAULT_LIMITS
    assert settings.policy_file is None
    assert settings.log_level == "info"
    assert settings.key_file == Path("etch-data/log.key")
    assert settings.vkey_file == Path("etch-data/log.vkey")


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().port = 1  # type: ignore[misc]


def test_every_source_sets_every_field(tmp_path: Path) -> None:
    config = write_toml(
        tmp_path,
        """
data_dir = "/var/lib/etch"
host = "0.0.0.0"
port = 9000
database_url = "postgresql://etch@db.internal/etch"
origin = "log.example.com/oauth/2026"
batch_size = 256
batch_period_ms = 0
policy_file = "witnesses.policy"
log_level = "debug"

[limits]
max_body_bytes = 32768
max_depth = 8
max_items = 100
max_string_bytes = 1024
max_total_items = 2000
max_entry_bytes = 30000
max_batch_bytes = 500000
max_batch_events = 50
""",
    )
    settings = load_settings(["--config", str(config)], {})
    assert settings == Settings(
        data_dir=Path("/var/lib/etch"),
        host="0.0.0.0",
        port=9000,
        database_url="postgresql://etch@db.internal/etch",
        origin="log.example.com/oauth/2026",
        batch_size=256,
        batch_period_ms=0,
        limits=Limits(
            max_body_bytes=32768,
            max_depth=8,
            max_items=100,
            max_string_bytes=1024,
            max_total_items=2000,
            max_entry_bytes=30000,
            max_batch_bytes=500000,
            max_batch_events=50,
        ),
        policy_file=Path("witnesses.policy"),
        log_level="debug",
    )
    assert settings.is_postgres
    assert settings.database == "postgresql://etch@db.internal/etch"

    environ = {
        "ETCH_DATA_DIR": "d",
        "ETCH_HOST": "::1",
        "ETCH_PORT": "1",
        "ETCH_DATABASE_URL": "x.db",
        "ETCH_ORIGIN": "o.example/e",
        "ETCH_BATCH_SIZE": "2",
        "ETCH_BATCH_PERIOD_MS": "3",
        "ETCH_POLICY_FILE": "p",
        "ETCH_LOG_LEVEL": "WARNING",
        "ETCH_MAX_DEPTH": "4",
        "ETCH_MAX_ENTRY_BYTES": "5",
    }
    from_env = load_settings(None, environ)
    assert (from_env.data_dir, from_env.host, from_env.port) == (Path("d"), "::1", 1)
    assert (from_env.database, from_env.origin) == ("x.db", "o.example/e")
    assert (from_env.batch_size, from_env.batch_period_ms) == (2, 3)
    assert (from_env.policy_file, from_env.log_level) == (Path("p"), "warning")
    assert (from_env.limits.max_depth, from_env.limits.max_entry_bytes) == (4, 5)
    assert from_env.limits.max_items == DEFAULT_LIMITS.max_items

    argv = [
        "--data-dir",
        "f",
        "--host",
        "localhost",
        "--port",
        "7",
        "--batch-size",
        "8",
        "--batch-period-ms",
        "9",
        "--origin",
        "flag.example/x",
        "--log-level",
        "error",
        "--policy-file",
        "q",
        "--database-url",
        "postgres://h/db",
        "--max-items",
        "10",
    ]
    from_flags = load_settings(argv, {})
    assert (from_flags.data_dir, from_flags.host, from_flags.port) == (Path("f"), "localhost", 7)
    assert (from_flags.batch_size, from_flags.batch_period_ms) == (8, 9)
    assert (from_flags.origin, from_flags.log_level) == ("flag.example/x", "error")
    assert (from_flags.policy_file, from_flags.database) == (Path("q"), "postgres://h/db")
    assert from_flags.limits.max_items == 10


def test_precedence_defaults_toml_environment_flags(tmp_path: Path) -> None:
    config = write_toml(tmp_path, 'port = 1001\nbatch_size = 11\norigin = "toml.example/log"\n')
    environ = {"ETCH_CONFIG": str(config), "ETCH_PORT": "1002", "ETCH_BATCH_SIZE": "12"}
    settings = load_settings(["--port", "1003"], environ)
    assert settings.port == 1003  # flag beats environment and file
    assert settings.batch_size == 12  # environment beats file
    assert settings.origin == "toml.example/log"  # file beats default
    assert settings.batch_period_ms == 200  # default


def test_limits_merge_across_sources(tmp_path: Path) -> None:
    config = write_toml(tmp_path, "[limits]\nmax_depth = 5\nmax_items = 50\n")
    settings = load_settings(
        ["--config", str(config), "--max-items", "60"], {"ETCH_MAX_STRING_BYTES": "70"}
    )
    assert settings.limits == Limits(max_depth=5, max_items=60, max_string_bytes=70)


def test_config_flag_beats_etch_config(tmp_path: Path) -> None:
    first = write_toml(tmp_path, "port = 1\n")
    second = tmp_path / "other.toml"
    second.write_text("port = 2\n", encoding="utf-8")
    settings = load_settings(["--config", str(second)], {"ETCH_CONFIG": str(first)})
    assert settings.port == 2


STRICT_INTEGER_REFUSALS = [
    "+5",
    "-5",
    " 5",
    "5 ",
    "05",
    "00",
    "5_000",
    "٥",
    "５",
    "0x10",
    "",
    "1e3",
    "5.0",
    "1" * 30,
]


@pytest.mark.parametrize("raw", STRICT_INTEGER_REFUSALS)
def test_integers_are_parsed_strictly(raw: str) -> None:
    assert config_error(None, {"ETCH_BATCH_SIZE": raw}).startswith("ETCH_BATCH_SIZE: ")
    assert config_error([f"--batch-size={raw}"], {}).startswith("--batch-size: ")


@pytest.mark.parametrize(
    ("argv", "source"),
    [
        (["--port", "65536"], "--port"),
        (["--batch-size", "0"], "--batch-size"),
        (["--batch-size", "100001"], "--batch-size"),
        (["--batch-period-ms", "60001"], "--batch-period-ms"),
        (["--max-depth", "129"], "--max-depth"),
        (["--max-depth", "0"], "--max-depth"),
        (["--max-entry-bytes", "65536"], "--max-entry-bytes"),
        (["--log-level", "verbose"], "--log-level"),
        (["--origin", "has space/log"], "--origin"),
        (["--origin", "plus+sign"], "--origin"),
        (["--origin", "tab\there"], "--origin"),
        (["--host", "bad host"], "--host"),
        (["--host=-leading.example"], "--host"),
        (["--host", "a" * 64 + ".example"], "--host"),
        (["--database-url", "mysql://db/x"], "--database-url"),
        (["--database-url", "postgresql://"], "--database-url"),
        (["--data-dir", ""], "--data-dir"),
        (["--data-dir", "a\x00b"], "--data-dir"),
    ],
)
def test_bad_values_name_their_source(argv: list[str], source: str) -> None:
    assert config_error(argv, {}).startswith(source + ": ")


def test_values_never_appear_in_errors(tmp_path: Path) -> None:
    secret = "s3cretPassw0rd"
    message = config_error(None, {"ETCH_DATABASE_URL": f"mysql://etch:{secret}@db/x"})
    assert secret not in message
    config = write_toml(tmp_path, f'database_url = "oracle://u:{secret}@h/x"\n')
    assert secret not in config_error(["--config", str(config)], {})
    config = write_toml(tmp_path, f'port = "{secret}"\n')
    assert secret not in config_error(["--config", str(config)], {})


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("prot = 8080\n", "unknown key prot"),
        ("[limits]\nmax_deep = 3\n", "unknown key limits.max_deep"),
        ("[server]\nport = 1\n", "unknown key server"),
        ("max_depth = 3\n", "unknown key max_depth"),
        ("limits = 3\n", "limits: must be a table"),
        ('port = "8080"\n', "port: must be a TOML integer"),
        ("port = 8080.0\n", "port: must be a TOML integer"),
        ("port = true\n", "port: must be a TOML integer"),
        ("[limits]\nmax_depth = 1000\n", "limits.max_depth: must be between 1 and 128"),
        ("host = 1\n", "host: must be a string"),
        ('log_level = ""\n', "log_level: must not be empty"),
        ("port = \n", "not valid TOML"),
        ("port = 1\nport = 2\n", "not valid TOML"),
    ],
)
def test_toml_is_strict(tmp_path: Path, text: str, fragment: str) -> None:
    config = write_toml(tmp_path, text)
    message = config_error(["--config", str(config)], {})
    assert message.startswith(str(config))
    assert fragment in message


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "none.toml"
    assert "not found" in config_error(["--config", str(missing)], {})
    assert "not found" in config_error(None, {"ETCH_CONFIG": str(missing)})
    assert config_error(None, {"ETCH_CONFIG": ""}).startswith("ETCH_CONFIG: ")


def test_unknown_flags_are_refused_and_unknown_variables_ignored() -> None:
    assert "unrecognized arguments" in config_error(["--prot", "1"], {})
    assert "unrecognized arguments" in config_error(["--por", "1"], {})  # no abbreviations
    assert load_settings(None, {"ETCH_WITNESS_PORT": "x", "PORT": "1"}) == Settings()


def test_accepted_hosts_and_databases() -> None:
    for host in ("127.0.0.1", "0.0.0.0", "::", "::1", "localhost", "log.example.com", "a-b.c"):
        assert load_settings(["--host", host], {}).host == host
    for database in ("/var/lib/etch/log.db", "relative.db", "postgresql://u@h:5432/db"):
        assert load_settings(["--database-url", database], {}).database == database


def test_paths_are_taken_literally() -> None:
    settings = load_settings(["--data-dir", "~/etch"], {"ETCH_POLICY_FILE": "$HOME/p"})
    assert settings.data_dir == Path("~/etch")
    assert settings.policy_file == Path("$HOME/p")
    assert settings.database == str(Path("~/etch/log.db"))


def test_database_password_is_hidden() -> None:
    settings = load_settings(
        ["--database-url", "postgresql://etch:Sup3rS3cret@db.example:5433/etch?sslmode=require"],
        {},
    )
    assert "Sup3rS3cret" not in repr(settings)
    assert settings.database_for_display() == (
        "postgresql://etch:***@db.example:5433/etch?sslmode=require"
    )
    no_password = load_settings(["--database-url", "postgresql://etch@[::1]/etch"], {})
    assert no_password.database_for_display() == "postgresql://etch@[::1]/etch"
    ipv6 = load_settings(["--database-url", "postgresql://u:pw@[::1]:5432/etch"], {})
    assert ipv6.database_for_display() == "postgresql://u:***@[::1]:5432/etch"
    assert Settings().database_for_display() == str(Path("etch-data/log.db"))


def test_direct_construction_is_checked() -> None:
    for bad in (
        {"port": 70000},
        {"port": True},
        {"origin": "a b"},
        {"log_level": "INFO"},
        {"batch_size": 0},
        {"database_url": "mysql://x"},
        {"limits": {"max_depth": 3}},
    ):
        with pytest.raises(ConfigError, match="Settings"):
            Settings(**bad)


def test_serve_arguments_fit_a_larger_command_line() -> None:
    parser = argparse.ArgumentParser(prog="etch")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve")
    add_serve_arguments(serve)
    args = parser.parse_args(["serve", "--port", "8443", "--max-depth", "9"])
    assert args.command == "serve"
    settings = settings_from_args(args, {"ETCH_PORT": "1"})
    assert (settings.port, settings.limits.max_depth) == (8443, 9)
    help_text = serve.format_help()
    for flag in ("--config", "--data-dir", "--database-url", "--max-entry-bytes"):
        assert flag in help_text


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        ("127.0.0.1:9001", "127.0.0.1", 9001),
        ("[::1]:9002", "::1", 9002),
        ("0.0.0.0:0", "0.0.0.0", 0),
    ],
)
def test_listen_sets_host_and_port(listen: str, host: str, port: int) -> None:
    settings = load_settings(["--listen", listen], {})
    assert (settings.host, settings.port) == (host, port)


@pytest.mark.parametrize(
    "listen", ["9000", ":80", "127.0.0.1:+5", "127.0.0.1:05", "127.0.0.1:70000", "127.0.0.1:"]
)
def test_listen_is_strict(listen: str) -> None:
    with pytest.raises(ConfigError, match="--listen"):
        load_settings(["--listen", listen], {})


def test_port_flag_wins_over_listen_and_database_is_an_alias() -> None:
    settings = load_settings(["--listen", "127.0.0.1:9001", "--port", "9005"], {})
    assert settings.port == 9005
    settings = load_settings(["--database", "/tmp/etch-alias.db"], {})
    assert settings.database == "/tmp/etch-alias.db"
