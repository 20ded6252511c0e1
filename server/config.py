"""The log server's configuration: one frozen :class:`Settings`, loaded once at the entry point.

Sources, later ones winning: built-in defaults < TOML file < ``ETCH_*`` environment variables <
command-line flags. The TOML file is named by ``--config FILE`` (or ``ETCH_CONFIG``). Nothing
else in Etch reads the environment: the entry point passes ``os.environ`` to
:func:`load_settings` and hands the resulting :class:`Settings` down.

==================  ====================  ========================  ==========================
TOML key            environment           flag                      default
==================  ====================  ========================  ==========================
data_dir            ETCH_DATA_DIR         --data-dir                ``etch-data`` (see below)
host                ETCH_HOST             --host (or --listen)      ``127.0.0.1``
port                ETCH_PORT             --port (or --listen)      ``8080`` (0: any free port)
database_url        ETCH_DATABASE_URL     --database(-url)          ``<data_dir>/log.db``
origin              ETCH_ORIGIN           --origin                  ``localhost/etch/log``
batch_size          ETCH_BATCH_SIZE       --batch-size              ``1000`` entries
batch_period_ms     ETCH_BATCH_PERIOD_MS  --batch-period-ms         ``200`` ms
policy_file         ETCH_POLICY_FILE      --policy-file             none (C2SP tlog-policy)
log_level           ETCH_LOG_LEVEL        --log-level               ``info``
intake              ETCH_INTAKE           --intake                  ``oauth`` (or ``raw``)
public_entries      ETCH_PUBLIC_ENTRIES   --public-entries          ``false``
public_token_ref_   ETCH_PUBLIC_TOKEN_    --public-token-ref-       ``true``
lookup              REF_LOOKUP            lookup
submitter_rate      ETCH_SUBMITTER_RATE   --submitter-rate          ``10000`` events/s
submitter_burst     ETCH_SUBMITTER_BURST  --submitter-burst         ``20000`` events
set_audience        ETCH_SET_AUDIENCE     --set-audience            none (the origin only)
cluster             ETCH_CLUSTER          --cluster                 ``false`` (PostgreSQL only)
workers             ETCH_WORKERS          --workers                 ``1`` process
replica_url         ETCH_REPLICA_URL      --replica-url             none (reads on the primary)
[limits] max_...    ETCH_MAX_...          --max-...                 :data:`DEFAULT_LIMITS`
==================  ====================  ========================  ==========================

The ``[limits]`` table takes the fields of :class:`server.codec.Limits` (``max_body_bytes``,
``max_depth``, ``max_items``, ``max_string_bytes``, ``max_total_items``, ``max_entry_bytes``,
``max_batch_bytes``, ``max_batch_events``), with matching ``ETCH_MAX_*`` variables and
``--max-*`` flags.

* ``data_dir`` defaults to ``./etch-data``, relative to the working directory, so that a first
  ``etch serve`` keeps everything (database, ``log.key``, ``log.vkey``) in one visible folder
  beside where it was started. Paths are taken literally: no ``~`` expansion; relative paths are
  relative to the working directory, also inside the TOML file.
* ``database_url`` is a PostgreSQL URL (``postgresql://`` or ``postgres://``) or the path of an
  SQLite file; unset, it is ``<data_dir>/log.db``. It may hold a password: it is left out of
  ``repr`` and :meth:`Settings.database_for_display` masks the password.
* ``origin`` is the log's identity (C2SP tlog-checkpoint): a schema-less URL such as
  ``log.example.com/oauth/2026``; it is also the key name of the log's signing key, so it
  follows the signed-note key name rules (no spaces, no ``+``). The default
  ``localhost/etch/log`` suits a local trial only: a real log picks its own, once, forever.

* ``intake`` chooses what ``POST /v1/events`` accepts: ``oauth`` (the default) runs the OAuth
  layer (:mod:`server.ingest`: submitter credentials, signed events, SET intake, lookups, reader
  access); ``raw`` is the bare engine that logs any bounded map, for tests and experiments.
* ``public_entries`` lets anyone read entry contents (default: readers only; hashes,
  checkpoints, proofs and receipts are always public); ``public_token_ref_lookup`` answers
  lookups by token reference to anyone (default true); ``submitter_rate`` and
  ``submitter_burst`` are each submitter's token bucket; ``set_audience`` is an extra ``aud``
  value that SETs may carry beside the origin. Booleans are TOML booleans, or ``true`` /
  ``false`` in variables and flags.

* ``cluster``, ``workers`` and ``replica_url`` run the log as several processes around one
  PostgreSQL (:mod:`server.cluster`): ``cluster = true`` makes this process one front end of a
  cluster (others may run on other hosts with the same ``database_url`` and log key), in which
  one process at a time, elected, sequences; ``workers = N`` (N > 1 implies ``cluster``) runs N
  such processes on one listening socket; ``replica_url`` names a PostgreSQL streaming replica
  that serves reads (tiles, proofs, entries, lookups, the served checkpoint). Each needs a
  PostgreSQL ``database_url``. ``replica_url`` may hold a password, like ``database_url``.

Parsing is strict: unknown TOML keys, wrong TOML types, integers written as ``"+5"``, ``" 5"``,
``"05"``, ``"5_000"`` or with non-ASCII digits, out-of-range numbers and empty values are each a
one-line :class:`ConfigError` naming the source (file and key, variable or flag) and never the
value. Unknown ``ETCH_*`` variables are ignored (other Etch programs have their own).
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Final, NoReturn
from urllib.parse import urlsplit, urlunsplit

from merkle.errors import MalformedError
from merkle.note import check_key_name
from server.codec import DEFAULT_LIMITS, MAX_DEPTH_CAP, MAX_ENTRY_SIZE, Limits

__all__ = [
    "DEFAULT_DATA_DIR",
    "DEFAULT_ORIGIN",
    "LOG_LEVELS",
    "ConfigError",
    "Settings",
    "add_serve_arguments",
    "load_settings",
    "settings_from_args",
]

DEFAULT_DATA_DIR: Final = Path("etch-data")
"""Default data directory, relative to the working directory."""
DEFAULT_ORIGIN: Final = "localhost/etch/log"
"""Default log origin: fine for a local trial, never for a real deployment."""
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
"""Accepted ``log_level`` values (case-insensitive on input, stored lowercase)."""

_DECIMAL: Final = re.compile(r"(?:0|[1-9][0-9]{0,17})\Z")
_HOST_LABEL: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
_POSTGRES_SCHEMES: Final = ("postgresql", "postgres")


class ConfigError(ValueError):
    """The configuration is invalid; the message is one line naming the source, not the value."""


# --- value checks (each returns the clean value or raises ValueError with a short reason) ---


def _check_int(raw: object, low: int, high: int) -> int:
    """Return ``raw`` as an int in ``[low, high]``: a TOML int or a strict ASCII decimal string."""
    if isinstance(raw, str):
        if not _DECIMAL.match(raw):
            raise ValueError("must be a decimal integer without sign, spaces or leading zeros")
        number = int(raw)
    elif type(raw) is int:
        number = raw
    else:
        raise ValueError("must be an integer")
    if not low <= number <= high:
        raise ValueError(f"must be between {low} and {high}")
    return number


def _check_text(raw: object) -> str:
    """Return ``raw`` if it is a non-empty string without control characters."""
    if not isinstance(raw, str):
        raise ValueError("must be a string")
    if not raw:
        raise ValueError("must not be empty")
    if not raw.isprintable():
        raise ValueError("must not contain control characters")
    return raw


def _check_path(raw: object) -> Path:
    """Return ``raw`` as a Path (taken literally, relative to the working directory)."""
    return Path(_check_text(raw))


def _check_host(raw: object) -> str:
    """Return ``raw`` if it is an IP address or a DNS host name."""
    host = _check_text(raw)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        labels = host.removesuffix(".").split(".")
        if len(host) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
            raise ValueError("must be an IP address or a host name") from None
    return host


def _check_database(raw: object) -> str:
    """Return ``raw`` if it is a PostgreSQL URL or an SQLite file path (no other scheme)."""
    text = _check_text(raw)
    if any(c.isspace() for c in text):
        raise ValueError("must not contain spaces")
    scheme, separator, rest = text.partition("://")
    if separator:
        if scheme not in _POSTGRES_SCHEMES:
            raise ValueError("must be a postgresql:// URL or an SQLite file path")
        if not rest:
            raise ValueError("the PostgreSQL URL has no host or database")
    return text


def _check_origin(raw: object) -> str:
    """Return ``raw`` if it is a valid origin: a signed-note key name (C2SP tlog-checkpoint)."""
    origin = _check_text(raw)
    try:
        check_key_name(origin)
    except MalformedError:
        raise ValueError("must be a key name: no spaces, no '+', no control characters") from None
    return origin


def _check_bool(raw: object) -> bool:
    """Return ``raw`` as a bool: a TOML boolean, or exactly ``true`` / ``false`` as text."""
    if isinstance(raw, bool):
        return raw
    if raw == "true":
        return True
    if raw == "false":
        return False
    raise ValueError("must be true or false")


def _check_intake(raw: object) -> str:
    """Return ``raw`` if it names an intake: ``oauth`` or ``raw``."""
    if raw not in ("oauth", "raw"):
        raise ValueError("must be oauth or raw")
    assert isinstance(raw, str)
    return raw


def _check_level(raw: object) -> str:
    """Return ``raw`` lowercased if it names a logging level."""
    level = _check_text(raw).lower()
    if level not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
    return level




_UNBOUNDED: Final = 2**40


@dataclass(frozen=True, slots=True)
class _Option:
    """One setting: where it lives in each source and how its raw value is checked."""

    name: str
    check: Callable[[object], object]
    help: str
    in_limits: bool = False
    integer: bool = False
    boolean: bool = False

    @property
    def env(self) -> str:
        """Return the environment variable, e.g. ``ETCH_BATCH_SIZE``."""
        return "ETCH_" + self.name.upper()

    @property
    def flag(self) -> str:
        """Return the command-line flag, e.g. ``--batch-size``."""
        return "--" + self.name.replace("_", "-")

    @property
    def toml_key(self) -> str:
        """Return the TOML key, e.g. ``batch_size`` or ``limits.max_depth``."""
        return f"limits.{self.name}" if self.in_limits else self.name


def _int_option(
    name: str, low: int, high: int, help: str, *, in_limits: bool = False
) -> _Option:
    """Return an integer option accepting values in ``[low, high]``."""
    return _Option(name, lambda raw: _check_int(raw, low, high), help, in_limits, integer=True)


_OPTIONS: Final = (
    _Option("data_dir", _check_path, "data directory (default ./etch-data)"),
    _Option("host", _check_host, "listen address (default 127.0.0.1)"),
    _int_option("port", 0, 65535, "listen port (default 8080; 0 picks a free port)"),
    _Option("database_url", _check_database, "postgresql:// URL or SQLite file path"),
    _Option("origin", _check_origin, "log origin, e.g. log.example.com/oauth/2026"),
    _int_option("batch_size", 1, 100_000, "most entries sequenced at once (default 1000)"),
    _int_option("batch_period_ms", 0, 60_000, "longest wait for a batch, ms (default 200)"),
    _Option("policy_file", _check_path, "C2SP tlog-policy file naming witnesses and quorum"),
    _Option("log_level", _check_level, "debug, info, warning, error or critical"),
    _Option("intake", _check_intake, "oauth (default: submitters, signed events) or raw"),
    _Option("public_entries", _check_bool, "anyone may read entries (default false)", boolean=True),
    _Option(
        "public_token_ref_lookup",
        _check_bool,
        "anyone may look up by token reference (default true)",
        boolean=True,
    ),
    _int_option("submitter_rate", 1, 10_000_000, "events per second per submitter"),
    _int_option("submitter_burst", 1, 100_000_000, "burst size per submitter, events"),
    _Option("set_audience", _check_text, "an aud value SETs may carry beside the origin"),
    _Option("cluster", _check_bool, "one process of a cluster on PostgreSQL", boolean=True),
    _int_option("workers", 1, 64, "processes serving this log (cluster mode when above 1)"),
    _Option("replica_url", _check_database, "postgresql:// URL of a replica serving reads"),
    _int_option("max_body_bytes", 1, _UNBOUNDED, "largest event body", in_limits=True),
    _int_option("max_depth", 1, MAX_DEPTH_CAP, "deepest event nesting", in_limits=True),
    _int_option("max_items", 1, _UNBOUNDED, "most items in an array or map", in_limits=True),
    _int_option("max_string_bytes", 1, _UNBOUNDED, "longest string, bytes", in_limits=True),
    _int_option("max_total_items", 1, _UNBOUNDED, "most data items in all", in_limits=True),
    _int_option("max_entry_bytes", 1, MAX_ENTRY_SIZE, "largest entry", in_limits=True),
    _int_option("max_batch_bytes", 1, _UNBOUNDED, "largest batch body", in_limits=True),
    _int_option("max_batch_events", 1, _UNBOUNDED, "most events in a batch", in_limits=True),
)
_BY_NAME: Final = {option.name: option for option in _OPTIONS}


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of the log server (see the module docstring for sources and defaults).

    Constructing it directly checks every field like the loaders do.
    Raises ConfigError for an invalid field.
    """

    data_dir: Path = DEFAULT_DATA_DIR
    host: str = "127.0.0.1"
    port: int = 8080
    database_url: str | None = field(default=None, repr=False)
    origin: str = DEFAULT_ORIGIN
    batch_size: int = 1000
    batch_period_ms: int = 200
    limits: Limits = DEFAULT_LIMITS
    policy_file: Path | None = None
    log_level: str = "info"
    intake: str = "oauth"
    public_entries: bool = False
    public_token_ref_lookup: bool = True
    submitter_rate: int = 10_000
    submitter_burst: int = 20_000
    set_audience: str | None = None
    cluster: bool = False
    workers: int = 1
    replica_url: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.limits, Limits):
            raise ConfigError("Settings.limits must be a Limits")
        for item in fields(self):
            value = getattr(self, item.name)
            option = _BY_NAME.get(item.name)
            optional = ("database_url", "policy_file", "set_audience", "replica_url")
            if option is None or (value is None and item.name in optional):
                continue
            raw = str(value) if isinstance(value, Path) else value
            try:
                checked = option.check(raw)
            except ValueError as error:
                raise ConfigError(f"Settings.{item.name}: {error}") from None
            if checked != value:
                raise ConfigError(f"Settings.{item.name}: must be given in canonical form")

    @property
    def database(self) -> str:
        """Return what to open: the PostgreSQL URL or the SQLite file path (default log.db)."""
        if self.database_url is not None:
            return self.database_url
        return str(self.data_dir / "log.db")

    @property
    def is_postgres(self) -> bool:
        """Tell whether :attr:`database` is a PostgreSQL URL."""
        return self.database.partition("://")[0] in _POSTGRES_SCHEMES

    def database_for_display(self) -> str:
        """Return :attr:`database` with any URL password replaced by ``***`` (safe to log)."""
        database = self.database
        if not self.is_postgres:
            return database
        parts = urlsplit(database)
        if parts.password is None:
            return database
        user = parts.username or ""
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port is not None else ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))

    @property
    def clustered(self) -> bool:
        """Tell whether the log runs in cluster mode (``cluster``, ``workers > 1`` or a replica)."""
        return self.cluster or self.workers > 1 or self.replica_url is not None

    @property
    def key_file(self) -> Path:
        """Return the log's private key file, ``<data_dir>/log.key``."""
        return self.data_dir / "log.key"

    @property
    def vkey_file(self) -> Path:
        """Return the log's public key file, ``<data_dir>/log.vkey``."""
        return self.data_dir / "log.vkey"


# --- sources ------------------------------------------------------------------------------


def _fail(source: str, reason: str) -> NoReturn:
    """Raise ConfigError ``<source>: <reason>`` on one line."""
    raise ConfigError(f"{source}: {reason}".replace("\n", " "))


def _checked(option: _Option, raw: object, source: str) -> object:
    """Run ``option``'s check on ``raw``, naming ``source`` on failure."""
    try:
        return option.check(raw)
    except ValueError as error:
        _fail(source, str(error))


def _from_toml_value(option: _Option, raw: object, source: str) -> object:
    """Check a TOML value: integers must be TOML integers, not strings of digits."""
    if option.integer and type(raw) is not int:
        _fail(source, "must be a TOML integer")
    if option.boolean and type(raw) is not bool:
        _fail(source, "must be a TOML boolean")
    return _checked(option, raw, source)


def _from_toml(path: Path) -> dict[str, object]:
    """Read the TOML file at ``path`` into checked values by option name."""
    label = str(path)
    try:
        with path.open("rb") as file:
            document = tomllib.load(file)
    except FileNotFoundError:
        _fail(label, "configuration file not found")
    except OSError as error:
        _fail(label, f"cannot read configuration file ({error.strerror})")
    except tomllib.TOMLDecodeError as error:
        _fail(label, f"not valid TOML: {error}")
    values: dict[str, object] = {}
    for key, raw in document.items():
        if key == "limits":
            if not isinstance(raw, dict):
                _fail(f"{label}: limits", "must be a table")
            for limit_key, limit_raw in raw.items():
                option = _BY_NAME.get(limit_key)
                if option is None or not option.in_limits:
                    _fail(label, f"unknown key limits.{limit_key}")
                source = f"{label}: limits.{limit_key}"
                values[limit_key] = _from_toml_value(option, limit_raw, source)
            continue
        option = _BY_NAME.get(key)
        if option is None or option.in_limits:
            _fail(label, f"unknown key {key}")
        values[key] = _from_toml_value(option, raw, f"{label}: {key}")
    return values


def _from_environ(environ: Mapping[str, str]) -> dict[str, object]:
    """Read the known ``ETCH_*`` variables from ``environ`` into checked values."""
    values: dict[str, object] = {}
    for option in _OPTIONS:
        raw = environ.get(option.env)
        if raw is not None:
            values[option.name] = _checked(option, raw, option.env)
    return values


def _from_args(args: argparse.Namespace) -> dict[str, object]:
    """Read the flags added by :func:`add_serve_arguments` into checked values."""
    values: dict[str, object] = {}
    for option in _OPTIONS:
        raw = getattr(args, option.name, None)
        if raw is not None:
            values[option.name] = _checked(option, raw, option.flag)
    return values


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config FILE`` and one flag per setting to ``parser`` (all default to unset).

    Values are kept as strings and checked by :func:`settings_from_args`, so that flags are
    parsed as strictly as environment variables. Flags use ``dest`` equal to the setting name
    (``--batch-size`` -> ``batch_size``) and ``config`` for ``--config``.
    """
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file")
    parser.add_argument(
        "--listen",
        dest="listen",
        metavar="HOST:PORT",
        help="listen address and port in one flag (sets host and port; [::1]:8080 for IPv6)",
    )
    limits = parser.add_argument_group("event limits")
    for option in _OPTIONS:
        group = limits if option.in_limits else parser
        flags = [option.flag]
        if option.name == "database_url":
            flags.append("--database")
        group.add_argument(*flags, dest=option.name, metavar="VALUE", help=option.help)


def _split_listen(raw: str) -> dict[str, object]:
    """Split ``--listen HOST:PORT`` into checked host and port values (ConfigError otherwise)."""
    host, sep, port = raw.rpartition(":")
    if not sep or not host:
        _fail("--listen", "must be HOST:PORT, e.g. 127.0.0.1:8080")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return {
        "host": _checked(_BY_NAME["host"], host, "--listen"),
        "port": _checked(_BY_NAME["port"], port, "--listen"),
    }


def settings_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    """Build Settings from parsed flags (see :func:`add_serve_arguments`) and ``environ``.

    Order: defaults < TOML file (``--config``, else ``ETCH_CONFIG``) < environment < flags.
    Raises ConfigError (one line) for an unreadable or invalid file, an unknown TOML key or an
    invalid value from any source.
    """
    values: dict[str, object] = {}
    config = getattr(args, "config", None)
    config_source = "--config"
    if config is None:
        config = environ.get("ETCH_CONFIG")
        config_source = "ETCH_CONFIG"
    if config is not None:
        try:
            path = _check_path(config)
        except ValueError as error:
            _fail(config_source, str(error))
        values.update(_from_toml(path))
    values.update(_from_environ(environ))
    listen = getattr(args, "listen", None)
    if listen is not None:
        values.update(_split_listen(listen))
    values.update(_from_args(args))
    limit_values = {key: values.pop(key) for key in list(values) if _BY_NAME[key].in_limits}
    try:
        limits = Limits(**limit_values)  # type: ignore[arg-type]
    except ValueError as error:
        _fail("limits", str(error))
    return Settings(limits=limits, **values)  # type: ignore[arg-type]


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises ConfigError instead of exiting on a usage error."""

    def error(self, message: str) -> NoReturn:
        """Raise ConfigError with argparse's one-line message."""
        raise ConfigError(message)


def load_settings(argv: Sequence[str] | None, environ: Mapping[str, str]) -> Settings:
    """Load the Settings from command-line arguments and environment variables.

    ``argv`` holds only the serve flags (no program name); ``None`` means no flags at all (it
    does not read ``sys.argv``). ``environ`` is usually ``os.environ``.
    Example: ``load_settings(["--port", "9000"], {"ETCH_ORIGIN": "log.example.com/a"})``.
    Raises ConfigError (one line) for unknown flags and every error of
    :func:`settings_from_args`.
    """
    parser = _Parser(prog="etch serve", allow_abbrev=False)
    add_serve_arguments(parser)
    return settings_from_args(parser.parse_args(list(argv or ())), environ)
