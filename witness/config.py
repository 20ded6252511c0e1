"""Witness configuration: the followed logs and the frozen settings of one witness process.

Two log-list formats are accepted by :func:`parse_log_list`, told apart by their first
significant line.

**Etch TOML** (anything whose first significant line is not ``logs/v0``)::

    # one table per log; several tables with one origin add keys to that log
    [[log]]
    vkey = "example.com/log+2c5c1f0b+AX2x..."   # required: the log's Ed25519 vkey (type 0x01)
    origin = "example.com/log"                   # optional: defaults to the vkey's key name
    url = "https://example.com/log/"             # optional: tlog-tiles prefix (pull mode, proofs)
    qpd = 86400                                  # optional: add-checkpoint requests per day

**Witness network ``logs/v0``** (the public witness network's log list, as checked by its
``cmd/validate``)::

    # comments and blank lines are ignored anywhere; surrounding whitespace is trimmed
    logs/v0
    revision 12                      # optional, only directly after the header
    vkey <vkey>                      # starts a log
    origin <origin>                  # optional; "none" means the vkey's key name
    bastion <url>|none               # optional; accepted and ignored (no bastion support)
    qpd <positive decimal>           # required
    contact <free text>              # required, ends the log

Lines of one log come in that order; an unknown keyword, a missing required line, a repeated
line or a malformed value is a :class:`~witness.errors.ConfigError` naming the line. The list
carries no URL, so logs from it are push-only (no pull mode, no tile fetches).

:class:`Settings` is the one settings object of a witness process; only the entry point
(:mod:`witness.run`) reads the environment (``ETCH_WITNESS_*``) to build it.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from merkle.checkpoint import parse_decimal
from merkle.errors import MalformedError
from merkle.note import KEY_TYPE_ED25519, Verifier, parse_verifier, parse_vkey
from witness.errors import ConfigError

__all__ = [
    "DEFAULT_POLL_INTERVAL",
    "LogConfig",
    "Settings",
    "check_http_url",
    "merge_logs",
    "parse_listen",
    "parse_log_list",
    "parse_logs_toml",
    "parse_logs_v0",
    "peers_unique",
    "split_list",
]

DEFAULT_POLL_INTERVAL = 60.0
"""Seconds between two gossip rounds unless configured otherwise."""

_MAX_QPD = 10**9
_T = TypeVar("_T")
_BAD_ORIGIN_CHAR = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class LogConfig:
    """One followed log: its origin line, trusted vkeys, optional tiles URL and request budget.

    ``vkeys`` are Ed25519 (type 0x01) verifier keys; a checkpoint is accepted when one of them
    signs it. ``url`` is the log's tlog-tiles prefix without trailing slash (``None`` for a
    push-only log); ``qpd`` the add-checkpoint requests per day the log may make (``None``:
    the witness default).

    Raises ConfigError for an empty or control-character origin, no vkey, a vkey that is not
    an Ed25519 key, a URL that is not http(s) or a qpd outside 1..10**9.
    """

    origin: str
    vkeys: tuple[str, ...]
    url: str | None = None
    qpd: int | None = None
    verifiers: tuple[Verifier, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.origin or _BAD_ORIGIN_CHAR.search(self.origin):
            raise ConfigError(f"log origin {self.origin!r} is empty or has control characters")
        if not self.vkeys:
            raise ConfigError(f"log {self.origin!r} has no vkey")
        verifiers = tuple(_log_verifier(vkey) for vkey in self.vkeys)
        object.__setattr__(self, "verifiers", verifiers)
        if self.url is not None:
            check_http_url(self.url, what=f"url of log {self.origin!r}")
            if self.url.endswith("/"):
                raise ConfigError(f"url of log {self.origin!r} must not end with '/'")
        if self.qpd is not None and not 1 <= self.qpd <= _MAX_QPD:
            raise ConfigError(f"qpd of log {self.origin!r} must be in 1..{_MAX_QPD}")


def _log_verifier(vkey: str) -> Verifier:
    try:
        key_type = parse_vkey(vkey).key_type
        if key_type != KEY_TYPE_ED25519:
            raise ConfigError(f"log vkey {vkey!r} is type 0x{key_type:02x}, not Ed25519 (0x01)")
        return parse_verifier(vkey)
    except MalformedError as exc:
        raise ConfigError(f"invalid log vkey {vkey!r}: {exc}") from None


def _key_name(vkey: str) -> str:
    try:
        return parse_vkey(vkey).name
    except MalformedError as exc:
        raise ConfigError(f"invalid log vkey {vkey!r}: {exc}") from None


def check_http_url(url: str, *, what: str) -> None:
    """Check that ``url`` is an absolute ``http``/``https`` URL with a host and no query.

    Raises ConfigError naming ``what``.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ConfigError(f"{what}: {url!r} is not a URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{what}: {url!r} must be an http:// or https:// URL with a host")
    if parts.query or parts.fragment or any(c.isspace() for c in url):
        raise ConfigError(f"{what}: {url!r} must not have a query, fragment or spaces")


def merge_logs(logs: Iterable[LogConfig]) -> tuple[LogConfig, ...]:
    """Merge entries that share an origin into one log with all their vkeys, in first-seen order.

    Raises ConfigError if two entries of one origin give different URLs or qpd values.
    """
    merged: dict[str, LogConfig] = {}
    for log in logs:
        previous = merged.get(log.origin)
        if previous is None:
            merged[log.origin] = log
            continue
        url = _same(previous.url, log.url, what=f"url of log {log.origin!r}")
        qpd = _same(previous.qpd, log.qpd, what=f"qpd of log {log.origin!r}")
        vkeys = previous.vkeys + tuple(v for v in log.vkeys if v not in previous.vkeys)
        merged[log.origin] = LogConfig(log.origin, vkeys, url, qpd)
    return tuple(merged.values())


def _same(first: _T | None, second: _T | None, *, what: str) -> _T | None:
    if first is not None and second is not None and first != second:
        raise ConfigError(f"{what} is given twice with different values")
    return first if first is not None else second


def parse_log_list(text: str) -> tuple[LogConfig, ...]:
    """Parse a log list in either accepted format (see the module docstring).

    A list whose first line that is neither blank nor a ``#`` comment is ``logs/v0`` is read
    with :func:`parse_logs_v0`; anything else with :func:`parse_logs_toml`.

    Raises ConfigError.
    """
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            if stripped == "logs/v0":
                return parse_logs_v0(text)
            break
    return parse_logs_toml(text)


def parse_logs_toml(text: str) -> tuple[LogConfig, ...]:
    """Parse the Etch TOML log list: an array of ``[[log]]`` tables (see module docstring).

    Each table has ``vkey`` (string, required), ``origin``, ``url`` (strings) and ``qpd``
    (integer); no other keys. Tables with one origin are merged (:func:`merge_logs`).

    Raises ConfigError for invalid TOML, unknown keys, wrong types or invalid values.
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"log list is not valid TOML: {exc}") from None
    unknown = set(document) - {"log"}
    if unknown:
        raise ConfigError(f"log list has unknown top-level keys: {sorted(unknown)}")
    tables = document.get("log", [])
    if not isinstance(tables, list):
        raise ConfigError("'log' must be an array of tables ([[log]])")
    return merge_logs(_toml_log(table, number) for number, table in enumerate(tables, 1))


def _toml_log(table: Any, number: int) -> LogConfig:
    where = f"[[log]] number {number}"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} is not a table")
    unknown = set(table) - {"vkey", "origin", "url", "qpd"}
    if unknown:
        raise ConfigError(f"{where} has unknown keys: {sorted(unknown)}")
    vkey = table.get("vkey")
    if not isinstance(vkey, str):
        raise ConfigError(f"{where} needs a string 'vkey'")
    origin = table.get("origin", _key_name(vkey))
    url = table.get("url")
    qpd = table.get("qpd")
    if not isinstance(origin, str):
        raise ConfigError(f"{where}: 'origin' must be a string")
    if url is not None and not isinstance(url, str):
        raise ConfigError(f"{where}: 'url' must be a string")
    if qpd is not None and (type(qpd) is not int):
        raise ConfigError(f"{where}: 'qpd' must be an integer")
    return LogConfig(origin, (vkey,), url, qpd)


_V0_ORDER = ("vkey", "origin", "bastion", "qpd", "contact")
_V0_REQUIRED = frozenset({"vkey", "qpd", "contact"})


def parse_logs_v0(text: str) -> tuple[LogConfig, ...]:
    """Parse a witness-network ``logs/v0`` log list (see the module docstring for the grammar).

    Raises ConfigError with the line number for a missing header, an unknown keyword, lines
    out of order, a missing required line, or an invalid vkey, origin or qpd.
    """
    lines = [
        (number, line.strip())
        for number, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.strip().startswith("#")
    ]
    if not lines or lines[0][1] != "logs/v0":
        raise ConfigError("log list does not start with the 'logs/v0' header")
    body = lines[1:]
    if body and body[0][1].split(" ", 1)[0] == "revision":
        _v0_decimal(body[0][1].partition(" ")[2], body[0][0], what="revision", minimum=0)
        body = body[1:]
    logs: list[LogConfig] = []
    item: dict[str, str] = {}
    start = 0
    for number, line in body:
        keyword, _, value = line.partition(" ")
        if keyword not in _V0_ORDER:
            raise ConfigError(f"line {number}: unknown keyword {keyword!r}")
        if keyword == "vkey":
            if item:
                logs.append(_v0_log(item, start))
            item, start = {}, number
        elif not item:
            raise ConfigError(f"line {number}: {keyword!r} before the 'vkey' line of a log")
        elif _V0_ORDER.index(keyword) <= max(_V0_ORDER.index(k) for k in item):
            raise ConfigError(f"line {number}: {keyword!r} is repeated or out of order")
        if not value.strip():
            raise ConfigError(f"line {number}: {keyword!r} has no value")
        if keyword == "qpd":
            _v0_decimal(value, number, what="qpd", minimum=1)
        item[keyword] = value
    if item:
        logs.append(_v0_log(item, start))
    return merge_logs(logs)


def _v0_decimal(value: str, number: int, *, what: str, minimum: int) -> int:
    try:
        parsed = parse_decimal(value, what=what, maximum=_MAX_QPD)
    except MalformedError as exc:
        raise ConfigError(f"line {number}: {exc}") from None
    if parsed < minimum:
        raise ConfigError(f"line {number}: {what} must be at least {minimum}")
    return parsed


def _v0_log(item: dict[str, str], number: int) -> LogConfig:
    missing = _V0_REQUIRED - set(item)
    if missing:
        raise ConfigError(f"log starting at line {number} lacks {sorted(missing)}")
    vkey = item["vkey"]
    if " " in vkey:
        raise ConfigError(f"line {number}: vkey has more than one field")
    origin = item.get("origin", "none")
    if origin == "none":
        origin = _key_name(vkey)
    return LogConfig(origin, (vkey,), None, int(item["qpd"]))


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything one witness process is configured with, fixed at start.

    ``data_dir`` holds the key (``witness.key``) and, by default, the SQLite database
    (``witness.sqlite3``); ``database`` overrides the latter with a ``postgresql://`` URL or a
    SQLite path. ``name`` is the witness key name, required when the key is created.
    ``peers`` are base URLs of other witnesses' monitoring prefixes. Rates: each origin gets a
    token bucket of ``rate_burst`` add-checkpoint requests refilled at ``rate_per_second``
    (or ``qpd / 86400`` when the log list gives a qpd).

    Raises ConfigError for a non-positive interval, timeout, rate, burst or body limit, a port
    outside 0..65535 or a peer that is not an http(s) URL.
    """

    data_dir: Path
    logs_file: Path
    host: str = "127.0.0.1"
    port: int = 8380
    peers: tuple[str, ...] = ()
    database: str | None = None
    poll_interval: float = DEFAULT_POLL_INTERVAL
    name: str | None = None
    max_body_bytes: int = 64 * 1024
    rate_per_second: float = 1.0
    rate_burst: int = 60
    fetch_timeout: float = 10.0
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        for what, value in (
            ("poll interval", self.poll_interval),
            ("fetch timeout", self.fetch_timeout),
            ("rate per second", self.rate_per_second),
        ):
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{what} must be a positive number")
        if self.rate_burst < 1 or self.max_body_bytes < 1024:
            raise ConfigError("rate burst must be >= 1 and the body limit >= 1024 bytes")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is outside 0..65535")
        for peer in self.peers:
            check_http_url(peer, what="peer")

    @property
    def key_path(self) -> Path:
        """Path of the witness's private key file."""
        return self.data_dir / "witness.key"

    @property
    def database_url(self) -> str:
        """The database to open: ``database`` or the SQLite file in the data directory."""
        return self.database or str(self.data_dir / "witness.sqlite3")


def parse_listen(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` for IPv6) into host and port.

    Raises ConfigError for a missing port or a port that is not a canonical decimal 0..65535.
    """
    host, colon, port = value.rpartition(":")
    if not colon or not host:
        raise ConfigError(f"listen address {value!r} must be HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return host, parse_decimal(port, what="port", maximum=65535)
    except MalformedError as exc:
        raise ConfigError(str(exc)) from None


def split_list(value: str) -> tuple[str, ...]:
    """Split a comma- or whitespace-separated list from an environment variable."""
    return tuple(part for part in re.split(r"[,\s]+", value) if part)


def peers_unique(peers: Sequence[str]) -> tuple[str, ...]:
    """Return the peer URLs without trailing slashes and without repeats, in order."""
    seen: dict[str, None] = {}
    for peer in peers:
        seen.setdefault(peer.rstrip("/"), None)
    return tuple(seen)
