"""``etch monitor``: follow a log, verify everything new, and check OAuth invariants.

Each step (:meth:`Monitor.step`):

1. :meth:`client.logclient.LogClient.update` fetches the checkpoint, verifies it under the
   policy and proves it consistent with the trusted state (a proof built from tiles);
2. the new entries (from the size already processed to the new size) are read from the entry
   bundles, compared with the level-0 tiles, and their leaf hashes appended to the monitor's
   own compact range (:class:`merkle.compact.CompactRange`): its root must equal the new
   checkpoint's root, so every new entry is verified against the signed tree;
3. each event is fed to the :class:`RuleEngine`, which emits one :class:`Alert` per broken
   invariant;
4. the state (processed checkpoint, compact range, rule memory) is written atomically, so a
   restarted monitor resumes where it stopped. Alerts of a step are emitted before its state
   is saved: after a crash they may be repeated, never lost.

Rules (``alert`` names), each over the log's order and its log time:

``revoked-token-used``
    a token refreshed, introspected as active, exchanged (as subject or actor token) or used as
    the parent of a new token after it was revoked (``token-revoked``), or after every token of
    its subject was revoked (``tokens-revoked``, for its client when one is named) if it was
    issued before that revocation.
``refresh-token-reuse``
    a refresh token presented again after it was already refreshed with rotation
    (``token-refreshed`` with ``rotated: true``), or a second refresh token issued from the
    same parent (``token-issued`` of a ``refresh_token`` with grant ``refresh_token``).
``issued-after-consent-revoked``
    a token issued or refreshed for a (client, subject) after ``consent-revoked`` for that pair
    and before a new ``consent-granted`` / ``consent-updated``; a partial revocation (scopes
    listed) alerts only when the new token's scopes include a revoked one.
``issued-after-client-disabled``
    a token issued, refreshed or exchanged for a client after ``client-disabled`` and before
    ``client-enabled``.
``failed-login-burst``
    at least ``failed_login_threshold`` ``login-failed`` events for one client (events without a
    client count under ``""``) within ``failed_login_window`` seconds of log time; one alert per
    burst.
``iat-skew``
    an event whose ``iat`` is more than ``max_iat_skew`` seconds away from its log time.

The rule memory is bounded by time: revocations, issuances, consent and client records older
than ``retention`` seconds of log time (and issued tokens past their ``exp``) are forgotten.

Errors: the log's misbehaviour raises :class:`client.errors.LogMisbehaviour` (evidence
written); the state file raises :class:`client.errors.StateError`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from client.errors import (
    ConfigurationError,
    LogResponseError,
    LogUnavailableError,
    StateError,
)
from client.logclient import (
    LeafView,
    LogClient,
    VerifiedCheckpoint,
    atomic_write,
    flatten_events,
    parse_leaf_view,
    subject_key,
)
from merkle.checkpoint import open_checkpoint
from merkle.compact import CompactRange
from merkle.errors import MerkleError, ProofError
from merkle.hashing import leaf_hash
from merkle.note import parse_verifier
from merkle.tiles import TILE_WIDTH
from merkle.tree import root_nodes, verify_inclusion

__all__ = [
    "MONITOR_STATE_FORMAT",
    "RULES",
    "Alert",
    "Monitor",
    "MonitorConfig",
    "RuleEngine",
    "StepResult",
    "normalize_events",
]

log = logging.getLogger(__name__)

MONITOR_STATE_FORMAT: Final = "etch-monitor-state/v1"
"""Value of ``format`` in the monitor's state file."""

RULES: Final = (
    "revoked-token-used",
    "refresh-token-reuse",
    "issued-after-consent-revoked",
    "issued-after-client-disabled",
    "failed-login-burst",
    "iat-skew",
)
"""The alert names the rule engine emits."""

_ISSUING_TYPES: Final = frozenset({"token-issued", "token-refreshed", "token-exchanged"})
_PRUNE_EVERY: Final = 1024
_BUNDLES_PER_ROUND: Final = 16


@dataclass(frozen=True, slots=True)
class MonitorConfig:
    """Thresholds of the rules (seconds are of log time). Raises ConfigurationError."""

    failed_login_threshold: int = 10
    failed_login_window: int = 60
    max_iat_skew: int = 600
    retention: int = 90 * 86400

    def __post_init__(self) -> None:
        if self.failed_login_threshold < 2:
            raise ConfigurationError("the failed-login threshold must be at least 2")
        for name in ("failed_login_window", "max_iat_skew", "retention"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"{name.replace('_', ' ')} must be at least 1 second")


@dataclass(frozen=True, slots=True)
class Alert:
    """One broken invariant: the rule, the event that broke it, and what it relates to.

    ``fields`` holds the identifiers involved (``client_id``, ``token_ref``, ``subject``,
    ``related_index`` of the event that made this one wrong, ...): references and pseudonyms
    only, never secrets.
    """

    rule: str
    index: int
    log_time: int
    event_type: str
    detail: str
    fields: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self, origin: str) -> dict[str, Any]:
        """Return the JSON object of one alert line."""
        return {
            "alert": self.rule,
            "origin": origin,
            "index": self.index,
            "log_time": self.log_time,
            "event_type": self.event_type,
            "detail": self.detail,
            **self.fields,
        }


def normalize_events(leaf: LeafView) -> list[dict[str, Any]]:
    """Return the flat events of a leaf (see :func:`client.logclient.flatten_events`)."""
    return flatten_events(leaf)


def _text(event: Mapping[str, Any], name: str) -> str | None:
    value = event.get(name)
    return value if isinstance(value, str) else None


class RuleEngine:
    """The OAuth invariants over a stream of events in log order (pure: no I/O, no clock).

    Feed events with :meth:`observe`; :meth:`to_json` / :meth:`from_json` persist the memory.
    """

    def __init__(self, config: MonitorConfig) -> None:
        """Start with an empty memory."""
        self.config = config
        # token_ref -> [index, log_time]
        self.revoked: dict[str, list[int]] = {}
        # token_ref -> [index, log_time, expiry_ms or -1, subject, client]
        self.issued: dict[str, list[Any]] = {}
        # "<client>\x00<subject>" or "\x00<subject>" -> [index, log_time]
        self.subject_revoked: dict[str, list[int]] = {}
        # refresh token_ref -> [index, log_time] of its rotating refresh
        self.refreshed: dict[str, list[int]] = {}
        # parent token_ref -> [index, log_time] of the refresh token issued from it
        self.rotated_children: dict[str, list[int]] = {}
        # "<client>\x00<subject>" -> [index, log_time, scopes or None]
        self.consent_revoked: dict[str, list[Any]] = {}
        # client -> [index, log_time]
        self.disabled: dict[str, list[int]] = {}
        # client -> {"times": [...], "alerted": bool}
        self.failed: dict[str, dict[str, Any]] = {}
        self._seen = 0

    # -- persistence --------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """Return the memory as a JSON-compatible object."""
        return {
            "revoked": self.revoked,
            "issued": self.issued,
            "subject_revoked": self.subject_revoked,
            "refreshed": self.refreshed,
            "rotated_children": self.rotated_children,
            "consent_revoked": self.consent_revoked,
            "disabled": self.disabled,
            "failed": self.failed,
        }

    @classmethod
    def from_json(cls, config: MonitorConfig, value: object) -> RuleEngine:
        """Restore an engine from :meth:`to_json`. Raises StateError if malformed."""
        engine = cls(config)
        names = set(engine.to_json())
        if not isinstance(value, dict) or set(value) != names:
            raise StateError(f"monitor rule memory must have exactly the keys {sorted(names)}")
        for name in names:
            table = value[name]
            if not isinstance(table, dict) or not all(isinstance(k, str) for k in table):
                raise StateError(f"monitor rule memory {name!r} is not an object")
            for item in table.values():
                ok = isinstance(item, dict) if name == "failed" else isinstance(item, list)
                if not ok:
                    raise StateError(f"monitor rule memory {name!r} holds a malformed record")
            setattr(engine, name, table)
        return engine

    # -- the rules ----------------------------------------------------------------------------

    def observe(self, index: int, leaf: LeafView) -> list[Alert]:
        """Apply the rules to the events of one leaf (log order); return the alerts raised."""
        alerts: list[Alert] = []
        for event in normalize_events(leaf):
            alerts += self._observe_event(index, leaf.log_time, event)
        self._seen += 1
        if self._seen % _PRUNE_EVERY == 0:
            self.prune(leaf.log_time)
        return alerts

    def _observe_event(self, index: int, now: int, event: dict[str, Any]) -> list[Alert]:
        kind = event["type"]
        alerts: list[Alert] = []

        def alert(rule: str, detail: str, **fields: Any) -> None:
            present = {k: v for k, v in fields.items() if v is not None}
            alerts.append(Alert(rule, index, now, kind, detail, present))

        self._iat(event, now, alert)
        client = _text(event, "client_id")
        subject = subject_key(event.get("sub"))
        if kind in _ISSUING_TYPES:
            self._issuing(kind, event, client, subject, alert)
        handler = getattr(self, "_on_" + kind.replace("-", "_"), None)
        if handler is not None:
            handler(index, now, event, client, subject, alert)
        return alerts

    def _iat(self, event: Mapping[str, Any], now: int, alert: Callable[..., None]) -> None:
        iat = event.get("iat")
        if type(iat) is int:
            skew = iat - now // 1000
            if abs(skew) > self.config.max_iat_skew:
                alert(
                    "iat-skew",
                    f"iat is {abs(skew)} s {'after' if skew > 0 else 'before'} the log time "
                    f"(more than {self.config.max_iat_skew} s)",
                    iat=iat,
                    client_id=_text(event, "client_id"),
                )

    def _revocation_of(self, ref: str) -> int | None:
        """Return the index of the revocation that covers token ``ref``, if any."""
        found = self.revoked.get(ref)
        if found is not None:
            return found[0]
        issued = self.issued.get(ref)
        if issued is None or issued[3] is None:
            return None
        _, issued_time, _, subject, client = issued
        for key in (f"{client}\x00{subject}" if client else None, f"\x00{subject}"):
            if key is None:
                continue
            revocation = self.subject_revoked.get(key)
            if revocation is not None and revocation[1] >= issued_time:
                return revocation[0]
        return None

    def _check_revoked(self, ref: str | None, how: str, alert: Callable[..., None]) -> None:
        if ref is None:
            return
        revocation = self._revocation_of(ref)
        if revocation is not None:
            alert(
                "revoked-token-used",
                f"token {how} after its revocation (entry {revocation})",
                token_ref=ref,
                related_index=revocation,
            )

    def _issuing(
        self,
        kind: str,
        event: Mapping[str, Any],
        client: str | None,
        subject: str | None,
        alert: Callable[..., None],
    ) -> None:
        """Checks common to every event that issues a token to a client."""
        if client is not None and client in self.disabled:
            disabled = self.disabled[client][0]
            alert(
                "issued-after-client-disabled",
                f"{kind} for a client disabled at entry {disabled}",
                client_id=client,
                related_index=disabled,
            )
        if client is None or subject is None or kind == "token-exchanged":
            return
        revoked = self.consent_revoked.get(f"{client}\x00{subject}")
        if revoked is None:
            return
        scopes = revoked[2]
        issued_scope = event.get("scope")
        if scopes is not None and (
            not isinstance(issued_scope, list) or not set(issued_scope) & set(scopes)
        ):
            return
        alert(
            "issued-after-consent-revoked",
            f"{kind} after the subject revoked this client's consent (entry {revoked[0]})",
            client_id=client,
            subject=subject,
            related_index=revoked[0],
        )

    def _remember_issued(
        self,
        ref: str | None,
        index: int,
        now: int,
        event: Mapping[str, Any],
        subject: str | None,
        client: str | None,
    ) -> None:
        if ref is None:
            return
        exp = event.get("exp")
        expiry = exp * 1000 if type(exp) is int else -1
        self.issued[ref] = [index, now, expiry, subject, client]

    def _on_token_issued(
        self,
        index: int,
        now: int,
        event: Mapping[str, Any],
        client: str | None,
        subject: str | None,
        alert: Callable[..., None],
    ) -> None:
        parent = _text(event, "parent_token_ref")
        self._check_revoked(parent, "used as the parent of a new token", alert)
        if (
            parent is not None
            and event.get("token_type") == "refresh_token"
            and event.get("grant_type") == "refresh_token"
        ):
            earlier = self.rotated_children.get(parent)
            if earlier is not None:
                alert(
                    "refresh-token-reuse",
                    f"a second refresh token issued from one refresh token (first at entry "
                    f"{earlier[0]})",
                    token_ref=parent,
                    client_id=client,
                    related_index=earlier[0],
                )
            else:
                self.rotated_children[parent] = [index, now]
        self._remember_issued(_text(event, "token_ref"), index, now, event, subject, client)

    def _on_token_refreshed(
        self,
        index: int,
        now: int,
        event: Mapping[str, Any],
        client: str | None,
        subject: str | None,
        alert: Callable[..., None],
    ) -> None:
        ref = _text(event, "token_ref")
        self._check_revoked(ref, "refreshed", alert)
        if ref is None:
            return
        earlier = self.refreshed.get(ref)
        if earlier is not None:
            alert(
                "refresh-token-reuse",
                f"refresh token used again after it was rotated at entry {earlier[0]}",
                token_ref=ref,
                client_id=client,
                related_index=earlier[0],
            )
        elif event.get("rotated") is True:
            self.refreshed[ref] = [index, now]
        self._remember_issued(_text(event, "issued_token_ref"), index, now, event, subject, client)

    def _on_token_introspected(
        self,
        index: int,
        now: int,
        event: Mapping[str, Any],
        client: str | None,
        subject: str | None,
        alert: Callable[..., None],
    ) -> None:
        if event.get("active") is True:
            self._check_revoked(_text(event, "token_ref"), "introspected as active", alert)

    def _on_token_exchanged(
        self,
        index: int,
        now: int,
        event: Mapping[str, Any],
        client: str | None,
        subject: str | None,
        alert: Callable[..., None],
    ) -> None:
        self._check_revoked(_text(event, "subject_token_ref"), "exchanged", alert)
        self._check_revoked(_text(event, "actor_token_ref"), "used as actor token", alert)
        self._remember_issued(_text(event, "issued_token_ref"), index, now, event, subject, client)

    def _on_token_revoked(
        self,
        index: int,
        now: int,
        event: Mapping[str, Any],
        client: str | None,
        subject: str | None,
        alert: Callable[..., None],
    ) -> None:
        ref = _text(event, "token_ref")
        if ref is not None and ref not in self.revoked:
            self.revoked[ref] = [index, now]

    def _on_tokens_revoked(
        self,
        index: int,
        now: int,
        event: Mapping[str, Any],
        client: str | None,
        subject: str | None,
        alert: Callable[..., None],
    ) -> None:
        if subject is not None:
            self.subject_revoked[f"{client or ''}\x00{subject}"] = [index, now]

    def _on_consent_revoked(
        self,
        index: int,
        now: int,
        event: Mapping[str, Any],
        client: str | None,
        subject: str | None,
        alert: Callable[..., None],
    ) -> None:
        if client is None or subject is None:
            return
        scope = event.get("scope")
        scopes = sorted(s for s in scope if isinstance(s, str)) if isinstance(scope, list) else None
        self.consent_revoked[f"{client}\x00{subject}"] = [index, now, scopes]

    def _on_consent_granted(
        self,
        index: int,
        now: int,
        event: Mapping[str, Any],
        client: str | None,
        subject: str | None,
        alert: Callable[..., None],
    ) -> None:
        if client is not None and subject is not None:
            self.consent_revoked.pop(f"{client}\x00{subject}", None)

    _on_consent_updated = _on_consent_granted

    def _on_client_disabled(
        self,
        index: int,
        now: int,
        event: Mapping[str, Any],
        client: str | None,
        subject: str | None,
        alert: Callable[..., None],
    ) -> None:
        if client is not None:
            self.disabled[client] = [index, now]

    def _on_client_enabled(
        self,
        index: int,
        now: int,
        event: Mapping[str, Any],
        client: str | None,
        subject: str | None,
        alert: Callable[..., None],
    ) -> None:
        if client is not None:
            self.disabled.pop(client, None)

    def _on_login_failed(
        self,
        index: int,
        now: int,
        event: Mapping[str, Any],
        client: str | None,
        subject: str | None,
        alert: Callable[..., None],
    ) -> None:
        key = client or ""
        window = self.config.failed_login_window * 1000
        record = self.failed.setdefault(key, {"times": [], "alerted": False})
        times = [t for t in record["times"] if t > now - window]
        times.append(now)
        record["times"] = times[-self.config.failed_login_threshold :]
        if len(times) < self.config.failed_login_threshold:
            record["alerted"] = False
            return
        if not record["alerted"]:
            record["alerted"] = True
            alert(
                "failed-login-burst",
                f"{len(times)} failed logins within {self.config.failed_login_window} s",
                client_id=client,
                count=len(times),
            )

    # -- memory bound ----------------------------------------------------------------------------

    def prune(self, now: int) -> None:
        """Forget records older than the retention (log time ``now``, ms) and expired tokens."""
        horizon = now - self.config.retention * 1000
        for table in (
            self.revoked,
            self.subject_revoked,
            self.refreshed,
            self.rotated_children,
            self.consent_revoked,
            self.disabled,
        ):
            for key in [k for k, v in table.items() if v[1] < horizon]:
                del table[key]
        for key in [
            k for k, v in self.issued.items() if v[1] < horizon or 0 <= v[2] < now
        ]:
            del self.issued[key]
        since = now - self.config.failed_login_window * 1000
        for key in [k for k, v in self.failed.items() if not v["times"] or v["times"][-1] <= since]:
            del self.failed[key]


# =========================================================================== the monitor


@dataclass(frozen=True, slots=True)
class StepResult:
    """What one :meth:`Monitor.step` did: sizes before and after, entries read, alerts."""

    first_size: int
    tree_size: int
    entries: int
    alerts: tuple[Alert, ...]


@dataclass
class _State:
    origin: str
    vkey: str
    note: bytes
    compact: CompactRange
    engine: RuleEngine
    alerts: int = 0


class Monitor:
    """Follows one log with a :class:`LogClient`, keeping its own state file.

    ``emit`` receives each alert (the CLI prints one JSON line); ``from_now`` starts a monitor
    without a state file at the log's current size instead of at entry 0.
    """

    def __init__(
        self,
        client: LogClient,
        state_path: Path,
        config: MonitorConfig | None = None,
        *,
        emit: Callable[[Alert], None] = lambda alert: None,
        from_now: bool = False,
    ) -> None:
        """Prepare the monitor; the state file is read on the first step."""
        self.client = client
        self.state_path = state_path
        self.config = config or MonitorConfig()
        self.emit = emit
        self.from_now = from_now
        self._state: _State | None = None

    @property
    def origin(self) -> str:
        """The origin of the log followed (known after the first step; ``""`` before)."""
        return self._state.origin if self._state is not None else ""

    # -- state file -----------------------------------------------------------------------------

    def _load(self) -> _State | None:
        try:
            data = self.state_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read monitor state {self.state_path}: {exc}") from None
        try:
            document = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise StateError(f"monitor state {self.state_path} is not UTF-8 JSON") from None
        keys = {"format", "origin", "vkey", "checkpoint", "compact_range", "rules", "alerts"}
        if not isinstance(document, dict) or set(document) != keys:
            raise StateError(f"monitor state {self.state_path} has other keys than {sorted(keys)}")
        if document["format"] != MONITOR_STATE_FORMAT:
            raise StateError(f"monitor state {self.state_path} is not {MONITOR_STATE_FORMAT}")
        try:
            note = str(document["checkpoint"]).encode("utf-8")
            checkpoint, _, _ = open_checkpoint(note, parse_verifier(str(document["vkey"])))
            compact = CompactRange.from_bytes(
                base64.b64decode(str(document["compact_range"]), validate=True)
            )
        except (MerkleError, ValueError, binascii.Error) as exc:
            raise StateError(f"monitor state {self.state_path} does not verify: {exc}") from None
        if compact.size != checkpoint.tree_size or compact.root() != checkpoint.root_hash:
            raise StateError(f"monitor state {self.state_path}: the range is not the checkpoint's")
        if checkpoint.origin != document["origin"] or type(document["alerts"]) is not int:
            raise StateError(f"monitor state {self.state_path} is inconsistent")
        engine = RuleEngine.from_json(self.config, document["rules"])
        return _State(
            document["origin"], document["vkey"], note, compact, engine, document["alerts"]
        )

    def _save(self, state: _State) -> None:
        document = {
            "format": MONITOR_STATE_FORMAT,
            "origin": state.origin,
            "vkey": state.vkey,
            "checkpoint": state.note.decode("utf-8"),
            "compact_range": base64.b64encode(state.compact.to_bytes()).decode("ascii"),
            "rules": state.engine.to_json(),
            "alerts": state.alerts,
        }
        data = (json.dumps(document, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
        try:
            self.state_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write(self.state_path, data, 0o600)
        except OSError as exc:
            raise StateError(f"cannot write monitor state {self.state_path}: {exc}") from None

    async def _initial(self, current: VerifiedCheckpoint) -> _State:
        vkey = self.client.log_vkey(current.origin)
        if not self.from_now:
            empty = CompactRange()
            note = b""
            return _State(current.origin, vkey, note, empty, RuleEngine(self.config))
        size = current.tree_size
        nodes = root_nodes(size)
        hashes = await self.client.tiles.read_node_hashes(nodes, size) if nodes else []
        compact = CompactRange(size, hashes)
        if compact.root() != current.root_hash:
            raise self.client.tile_mismatch(
                current,
                tile="root",
                served=compact.root(),
                computed=current.root_hash,
                checked="the root of the tree's complete subtrees read from the tiles",
            )
        return _State(current.origin, vkey, current.note, compact, RuleEngine(self.config))

    # -- one step --------------------------------------------------------------------------------

    async def step(self) -> StepResult:
        """Verify the log's newest checkpoint and every entry since the last step; apply rules.

        Raises LogMisbehaviour (evidence written), LogUnavailableError, LogResponseError,
        UntrustedCheckpointError, StateError.
        """
        update = await self.client.update()
        current = update.current
        if self._state is None:
            self._state = self._load() or await self._initial(current)
        state = self._state
        if state.origin != current.origin or state.vkey != self.client.log_vkey(current.origin):
            raise StateError(
                f"monitor state {self.state_path} is for {state.origin} with key {state.vkey}"
            )
        first = state.compact.size
        if state.note and state.note != current.note:
            # The monitor's own checkpoint may differ from the shared trusted state's.
            processed = self.client.known_checkpoint(state.note)
            if update.previous is None or processed.note != update.previous.note:
                await self.client.check_consistency(processed, current)
        alerts: list[Alert] = []
        start = first
        while start < current.tree_size:
            end = min(current.tree_size, (start // TILE_WIDTH + _BUNDLES_PER_ROUND) * TILE_WIDTH)
            alerts += await self._verify_range(state, start, end, current)
            start = end
        if state.compact.root() != current.root_hash:
            raise self.client.tile_mismatch(
                current,
                tile="root",
                served=current.root_hash,
                computed=state.compact.root(),
                checked=f"the root recomputed from the monitor's range at size {first} and the "
                f"entries up to {current.tree_size}, each equal to its level-0 tile hash",
            )
        changed = state.note != current.note or not self.state_path.exists()
        state.note = current.note
        state.alerts += len(alerts)
        if changed:
            self._save(state)
        return StepResult(first, current.tree_size, current.tree_size - first, tuple(alerts))

    async def _verify_range(
        self, state: _State, start: int, end: int, current: VerifiedCheckpoint
    ) -> list[Alert]:
        """Read entries ``[start, end)`` of ``current``, check them with level-0 tiles, apply
        the rules and extend the compact range. Raises EntryMismatchError on a mismatch."""
        size = current.tree_size
        first_tile, last_tile = start // TILE_WIDTH, (end - 1) // TILE_WIDTH
        tiles = range(first_tile, last_tile + 1)
        bundles = await asyncio.gather(*(self.client.bundle(t, size) for t in tiles))
        levels = await asyncio.gather(*(self.client.leaf_hashes(t, size) for t in tiles))
        alerts: list[Alert] = []
        hashes: list[bytes] = []
        for tile, bundle, tile_hashes in zip(tiles, bundles, levels, strict=True):
            base = tile * TILE_WIDTH
            for offset in range(max(start, base) - base, min(end, base + len(bundle)) - base):
                index = base + offset
                entry = bundle[offset]
                value = leaf_hash(entry)
                if value != tile_hashes[offset]:
                    await self._entry_mismatch(index, entry, tile_hashes[offset], current)
                hashes.append(value)
                leaf = parse_leaf_view(entry)
                if leaf is not None:
                    found = state.engine.observe(index, leaf)
                    for alert in found:
                        self.emit(alert)
                    alerts += found
        state.compact.extend(hashes)
        return alerts

    async def _entry_mismatch(
        self, index: int, entry: bytes, tile_leaf: bytes, current: VerifiedCheckpoint
    ) -> None:
        proof = await self.client.inclusion_proof(index, current.tree_size)
        try:
            verify_inclusion(tile_leaf, index, current.tree_size, proof, current.root_hash)
        except ProofError:
            raise self.client.tile_mismatch(
                current,
                tile=f"tile/0 hash of entry {index}",
                served=tile_leaf,
                computed=leaf_hash(entry),
                checked=f"entry {index} against the level-0 tile and the signed root",
            ) from None
        raise self.client.entry_mismatch(index, entry, tile_leaf, proof, current)

    async def run(
        self,
        *,
        interval: float = 10.0,
        once: bool = False,
        stop: asyncio.Event | None = None,
        on_step: Callable[[StepResult], None] = lambda result: None,
    ) -> None:
        """Step until ``stop`` is set (or once); transient log trouble is logged and retried.

        Raises LogMisbehaviour, UntrustedCheckpointError and StateError (stop monitoring and
        look); with ``once``, every error.
        """
        stop = stop or asyncio.Event()
        while True:
            try:
                on_step(await self.step())
            except (LogUnavailableError, LogResponseError) as exc:
                if once:
                    raise
                log.warning("monitor: %s; retrying in %.0f s", exc, interval)
            if once or stop.is_set():
                return
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
            except TimeoutError:
                continue
            return


def format_alert_line(alert: Alert, origin: str) -> str:
    """Return one alert as a JSON line (compact, keys in a stable order)."""
    return json.dumps(alert.to_json(origin), ensure_ascii=False, separators=(",", ":"))

