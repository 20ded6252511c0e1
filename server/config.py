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
local_link          ETCH_LOCAL_LINK       --local-link              ``true`` (cluster mode)
frozen              ETCH_FROZEN           --frozen                  ``false``
successor           ETCH_SUCCESSOR        --successor               none (a ``[logs.<name>]``)
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
  ``local_link`` (default ``true``): front ends on the sequencing process's host hand it their
  submissions over a local socket instead of PostgreSQL's queue (:mod:`server.cluster_link`).

* ``[logs.<name>]`` tables host further logs in the same service (:mod:`server.multilog`),
  each with its own origin, key, tree and witness policy: temporal shards (one log per period)
  or one log per tenant. The top-level settings stay the *default* log, served at ``/`` and
  listed as ``default``; log ``<name>`` is served at ``/logs/<name>/``. A table takes
  ``origin`` (required, unique), ``data_dir`` (default ``<data_dir>/logs/<name>``, where its
  ``log.key`` lives), ``database_url`` (default: ``<its data_dir>/log.db`` with SQLite; with a
  PostgreSQL ``database_url`` the same database, schema ``etch_<name>`` with ``-`` written
  ``_``), ``policy_file``, ``batch_size``, ``batch_period_ms`` (default: the top-level ones),
  ``frozen``, ``successor`` and ``not_after``. Names are 1 to 32 lowercase letters, digits and
  inner hyphens (``2026-h1``, ``tenant-a``); ``default`` is the top-level log's.
* ``frozen = true`` freezes a log: it refuses submissions (``409 log-frozen``, naming its
  ``successor`` when one is set), keeps serving reads, and publishes a final checkpoint that
  never changes afterwards. ``not_after`` (a TOML date-time with an offset, e.g.
  ``2026-07-01T00:00:00Z``) freezes the log at that instant without a restart. Freezing is
  recorded in the log's storage: a frozen log stays frozen when the flag is later removed.
  In cluster mode every process serves every log (each log needs PostgreSQL), and freezing
  spans the cluster: the sequencing process stores the final checkpoint, the others adopt it
  (:meth:`server.cluster.ClusterLog.freeze`).

Parsing is strict: unknown TOML keys, wrong TOML types, integers written as ``"+5"``, ``" 5"``,
``"05"``, ``"5_000"`` or with non-ASCII digits, out-of-range numbers and empty values are each a
one-line :class:`ConfigError` naming the source (file and key, variable or flag) and never the
value. Unknown ``ETCH_*`` variables are ignored (other Etch programs have their own).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Final, NoReturn
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from merkle.errors import MalformedError
from merkle.note import check_key_name
from server.codec import DEFAULT_LIMITS, MAX_DEPTH_CAP, MAX_ENTRY_SIZE, Limits

__all__ = [
    "DEFAULT_DATA_DIR",
    "DEFAULT_LOG_NAME",
    "DEFAULT_ORIGIN",
    "LOG_LEVELS",
    "ConfigError",
    "LogConfig",
    "Settings",
    "add_serve_arguments",
    "load_settings",
    "postgres_schema",
    "settings_from_args",
]

DEFAULT_DATA_DIR: Final = Path("etch-data")
"""Default data directory, relative to the working directory."""
DEFAULT_ORIGIN: Final = "localhost/etch/log"
"""Default log origin: fine for a local trial, never for a real deployment."""
DEFAULT_LOG_NAME: Final = "default"
"""Name of the top-level log among several (``/logs/default``, also served at ``/``)."""
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
"""Accepted ``log_level`` values (case-insensitive on input, stored lowercase)."""

_DECIMAL: Final = re.compile(r"(?:0|[1-9][0-9]{0,17})\Z")
_HOST_LABEL: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
_POSTGRES_SCHEMES: Final = ("postgresql", "postgres")
_LOG_NAME: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?\Z")


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


def _check_log_name(raw: object) -> str:
    """Return ``raw`` if it names a log: 1-32 of ``a-z``, ``0-9`` and inner ``-``."""
    name = _check_text(raw)
    if not _LOG_NAME.match(name) or "--" in name:
        raise ValueError("must be 1 to 32 lowercase letters, digits and single inner hyphens")
    return name


def _check_instant(raw: object) -> datetime.datetime:
    """Return ``raw`` (a TOML offset date-time) as an aware UTC datetime."""
    if not isinstance(raw, datetime.datetime) or raw.tzinfo is None:
        raise ValueError("must be a TOML date-time with an offset, e.g. 2026-07-01T00:00:00Z")
    return raw.astimezone(datetime.UTC)


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


def _int_option(name: str, low: int, high: int, help: str, *, in_limits: bool = False) -> _Option:
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
    _Option(
        "local_link",
        _check_bool,
        "cluster: hand submissions to a sequencer on this host over a local socket",
        boolean=True,
    ),
    _Option("frozen", _check_bool, "refuse submissions, keep serving reads", boolean=True),
    _Option("successor", _check_log_name, "the log (a [logs.<name>]) that takes over when frozen"),
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


_LOG_KEYS: Final = (
    "origin",
    "data_dir",
    "database_url",
    "policy_file",
    "batch_size",
    "batch_period_ms",
    "frozen",
    "successor",
)
"""Keys of a ``[logs.<name>]`` table checked like the top-level setting of the same name."""


def postgres_schema(name: str) -> str:
    """Return the PostgreSQL schema of log ``name``: ``etch_`` and the name, ``-`` as ``_``.

    Names hold no ``_`` (see :class:`LogConfig`), so distinct names give distinct schemas.
    Example: ``postgres_schema("2026-h1") == "etch_2026_h1"``.
    """
    return "etch_" + name.replace("-", "_")


def _with_search_path(dsn: str, schema: str) -> str:
    """Return ``dsn`` with its ``search_path`` query parameter set to ``schema``.

    asyncpg sends unknown DSN query parameters to the server as session settings, so every
    unqualified table of the storage then lives in ``schema``.
    """
    parts = urlsplit(dsn)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    query = [(k, v) for k, v in query if k != "search_path"] + [("search_path", schema)]
    return urlunsplit(parts._replace(query=urlencode(query, safe="/")))


@dataclass(frozen=True, slots=True)
class LogConfig:
    """One ``[logs.<name>]`` table: a further log hosted by the service.

    ``None`` fields take their default from the top-level :class:`Settings` (see
    :meth:`Settings.log_settings`). ``not_after`` is an aware UTC datetime.
    Raises ConfigError for an invalid field.
    """

    name: str
    origin: str
    data_dir: Path | None = None
    database_url: str | None = field(default=None, repr=False)
    policy_file: Path | None = None
    batch_size: int | None = None
    batch_period_ms: int | None = None
    frozen: bool = False
    successor: str | None = None
    not_after: datetime.datetime | None = None

    def __post_init__(self) -> None:
        try:
            _check_log_name(self.name)
        except ValueError as error:
            raise ConfigError(f"logs: log name: {error}") from None
        if self.name == DEFAULT_LOG_NAME:
            raise ConfigError(f"logs.{self.name}: the name is the top-level log's")
        for key in _LOG_KEYS:
            value = getattr(self, key)
            if value is None:
                continue
            raw = str(value) if isinstance(value, Path) else value
            try:
                checked = _BY_NAME[key].check(raw)
            except ValueError as error:
                raise ConfigError(f"logs.{self.name}.{key}: {error}") from None
            if checked != value:
                raise ConfigError(f"logs.{self.name}.{key}: must be given in canonical form")
        if self.not_after is not None:
            try:
                instant = _check_instant(self.not_after)
            except ValueError as error:
                raise ConfigError(f"logs.{self.name}.not_after: {error}") from None
            if instant.utcoffset() != datetime.timedelta(0) or instant != self.not_after:
                raise ConfigError(f"logs.{self.name}.not_after: must be in UTC")
        if self.successor == self.name:
            raise ConfigError(f"logs.{self.name}.successor: a log cannot succeed itself")


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
    local_link: bool = True
    frozen: bool = False
    successor: str | None = None
    logs: tuple[LogConfig, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.limits, Limits):
            raise ConfigError("Settings.limits must be a Limits")
        for item in fields(self):
            value = getattr(self, item.name)
            option = _BY_NAME.get(item.name)
            optional = ("database_url", "policy_file", "set_audience", "replica_url", "successor")
            if option is None or (value is None and item.name in optional):
                continue
            raw = str(value) if isinstance(value, Path) else value
            try:
                checked = option.check(raw)
            except ValueError as error:
                raise ConfigError(f"Settings.{item.name}: {error}") from None
            if checked != value:
                raise ConfigError(f"Settings.{item.name}: must be given in canonical form")
        self._check_logs()

    def _check_logs(self) -> None:
        """Check the hosted logs together: unique names, origins and places; known successors."""
        if not isinstance(self.logs, tuple) or not all(
            isinstance(log, LogConfig) for log in self.logs
        ):
            raise ConfigError("Settings.logs must be a tuple of LogConfig")
        if not self.logs:
            return
        names = [DEFAULT_LOG_NAME]
        origins = {self.origin: DEFAULT_LOG_NAME}
        places = {self.data_dir.resolve(): DEFAULT_LOG_NAME}
        for log in self.logs:
            if log.name in names:
                raise ConfigError(f"logs.{log.name}: the name is used twice")
            names.append(log.name)
            if log.origin in origins:
                other = origins[log.origin]
                raise ConfigError(f"logs.{log.name}.origin: also the origin of {other}")
            origins[log.origin] = log.name
            place = self.log_settings(log.name).data_dir.resolve()
            if place in places:
                raise ConfigError(f"logs.{log.name}.data_dir: also the data_dir of {places[place]}")
            places[place] = log.name
            if self.clustered and not self.log_settings(log.name).is_postgres:
                raise ConfigError(f"logs.{log.name}.database_url: cluster mode needs PostgreSQL")
        for name, successor in [(DEFAULT_LOG_NAME, self.successor)] + [
            (log.name, log.successor) for log in self.logs
        ]:
            if successor is not None and successor not in names:
                source = "successor" if name == DEFAULT_LOG_NAME else f"logs.{name}.successor"
                raise ConfigError(f"{source}: names no configured log")
            if successor == name:
                raise ConfigError("successor: a log cannot succeed itself")

    @property
    def log_names(self) -> list[str]:
        """Return the names of every hosted log, the default (top-level) one first."""
        return [DEFAULT_LOG_NAME] + [log.name for log in self.logs]

    def log_config(self, name: str) -> LogConfig | None:
        """Return the ``[logs.<name>]`` table, or ``None`` for the default log.

        Raises KeyError for a name that no log has.
        """
        if name == DEFAULT_LOG_NAME:
            return None
        for log in self.logs:
            if log.name == name:
                return log
        raise KeyError(name)

    def log_settings(self, name: str) -> Settings:
        """Return the settings of one hosted log, as if it were the only log of the service.

        The default log's are these settings without ``logs``. Log ``<name>`` takes its table's
        values, and for the rest the top-level ones, with ``data_dir`` defaulting to
        ``<data_dir>/logs/<name>`` and the database to an SQLite file there or, when the
        top-level database is PostgreSQL, to the same database with its tables in the schema
        :func:`postgres_schema` names. Listen address, intake, limits and the OAuth settings
        are the service's. Raises KeyError for an unknown name.
        """
        log = self.log_config(name)
        if log is None:
            return replace(self, logs=())
        data_dir = log.data_dir if log.data_dir is not None else self.data_dir / "logs" / name
        database_url = log.database_url
        if database_url is None and self.is_postgres:
            database_url = _with_search_path(self.database, postgres_schema(name))
        return replace(
            self,
            data_dir=data_dir,
            database_url=database_url,
            origin=log.origin,
            policy_file=log.policy_file,
            batch_size=log.batch_size if log.batch_size is not None else self.batch_size,
            batch_period_ms=(
                log.batch_period_ms if log.batch_period_ms is not None else self.batch_period_ms
            ),
            frozen=log.frozen,
            successor=log.successor,
            logs=(),
        )

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
        if key == "logs":
            values["logs"] = _logs_from_toml(raw, label)
            continue
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


def _logs_from_toml(raw: object, label: str) -> tuple[LogConfig, ...]:
    """Read the ``[logs.<name>]`` tables into LogConfig values, in file order."""
    if not isinstance(raw, dict):
        _fail(f"{label}: logs", "must be a table of [logs.<name>] tables")
    logs: list[LogConfig] = []
    for name, table in raw.items():
        try:
            _check_log_name(name)
        except ValueError as error:
            _fail(f"{label}: logs", f"log name: {error}")
        if not isinstance(table, dict):
            _fail(f"{label}: logs.{name}", "must be a table")
        values: dict[str, object] = {}
        for key, value in table.items():
            source = f"{label}: logs.{name}.{key}"
            if key == "not_after":
                try:
                    values[key] = _check_instant(value)
                except ValueError as error:
                    _fail(source, str(error))
            elif key in _LOG_KEYS:
                values[key] = _from_toml_value(_BY_NAME[key], value, source)
            else:
                _fail(label, f"unknown key logs.{name}.{key}")
        if "origin" not in values:
            _fail(f"{label}: logs.{name}", "origin is required")
        logs.append(LogConfig(name=name, **values))  # type: ignore[arg-type]
    return tuple(logs)


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
    limit_values = {
        key: values.pop(key) for key in list(values) if key in _BY_NAME and _BY_NAME[key].in_limits
    }
    try:
        limits = Limits(**limit_values)  # type: ignore[arg-type]
    except ValueError as error:
        _fail("limits", str(error))
    if values.get("successor") is not None and not values.get("logs"):
        _fail("successor", "names no configured log (there is no [logs.<name>] table)")
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
