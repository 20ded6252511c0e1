"""The monitor: each OAuth rule with a sequence that must alert and a near miss that must not,
the rule memory across restarts, and the monitor following a (tampering) log."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from client.errors import EntryMismatchError, StateError
from client.logclient import LeafView, LogClient
from client.monitor import Alert, Monitor, MonitorConfig, RuleEngine, normalize_events
from client.tokens import token_ref
from merkle.policy import parse_policy
from tests.tampering import TamperingLog, event_leaf

T0 = 1_767_225_600_000  # log time of the first event, POSIX ms
RT = token_ref(b"refresh-token-1")
AT = token_ref(b"access-token-1")
OTHER = token_ref(b"another-token")


def run(
    events: Sequence[dict[str, Any]],
    config: MonitorConfig | None = None,
    *,
    step_ms: int = 1000,
    engine: RuleEngine | None = None,
) -> list[Alert]:
    """Feed events (one per leaf, ``step_ms`` of log time apart, ``iat`` = log time)."""
    engine = engine or RuleEngine(config or MonitorConfig())
    alerts: list[Alert] = []
    for index, event in enumerate(events):
        log_time = T0 + index * step_ms
        body = {"iat": log_time // 1000, **event}
        alerts += engine.observe(index, LeafView("as-test", body, log_time))
    return alerts


def rules(alerts: Sequence[Alert]) -> list[str]:
    return [a.rule for a in alerts]


def issued(ref: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": "token-issued",
        "client_id": "app",
        "sub": "p-1",
        "token_type": "refresh_token",
        "token_ref": ref,
        **fields,
    }


def revoked(ref: str) -> dict[str, Any]:
    return {"type": "token-revoked", "client_id": "app", "token_ref": ref}


def refreshed(ref: str, **fields: Any) -> dict[str, Any]:
    return {"type": "token-refreshed", "client_id": "app", "token_ref": ref, **fields}


# -- revoked-token-used ----------------------------------------------------------------------------


def test_refresh_after_revocation_alerts() -> None:
    alerts = run([issued(RT), revoked(RT), refreshed(RT)])
    assert rules(alerts) == ["revoked-token-used"]
    assert alerts[0].index == 2
    assert alerts[0].fields["related_index"] == 1
    assert alerts[0].fields["token_ref"] == RT


def test_refresh_before_revocation_is_a_near_miss() -> None:
    assert run([issued(RT), refreshed(RT), revoked(RT)]) == []


def test_active_introspection_after_revocation_alerts() -> None:
    introspected = {"type": "token-introspected", "client_id": "rs", "token_ref": AT}
    assert rules(run([revoked(AT), {**introspected, "active": True}])) == ["revoked-token-used"]


def test_inactive_introspection_after_revocation_is_a_near_miss() -> None:
    introspected = {"type": "token-introspected", "client_id": "rs", "token_ref": AT}
    assert run([revoked(AT), {**introspected, "active": False}]) == []


def test_exchange_of_a_revoked_token_alerts() -> None:
    exchange = {
        "type": "token-exchanged",
        "client_id": "app",
        "subject_token_ref": AT,
        "issued_token_ref": OTHER,
    }
    assert rules(run([revoked(AT), exchange])) == ["revoked-token-used"]
    assert run([revoked(RT), exchange]) == []  # near miss: another token was revoked


def test_tokens_revoked_for_a_subject_covers_tokens_issued_before() -> None:
    everything = {"type": "tokens-revoked", "client_id": "app", "sub": "p-1"}
    assert rules(run([issued(RT), everything, refreshed(RT)])) == ["revoked-token-used"]
    # Near miss: the token was issued after the revocation.
    assert run([everything, issued(RT), refreshed(RT)]) == []


def test_new_token_from_a_revoked_parent_alerts() -> None:
    child = issued(
        OTHER, grant_type="refresh_token", parent_token_ref=RT, token_type="access_token"
    )
    assert rules(run([issued(RT), revoked(RT), child])) == ["revoked-token-used"]
    assert run([issued(RT), child, revoked(RT)]) == []


# -- refresh-token-reuse ---------------------------------------------------------------------------


def test_refresh_token_used_twice_after_rotation_alerts() -> None:
    alerts = run([issued(RT), refreshed(RT, rotated=True), refreshed(RT, rotated=True)])
    assert rules(alerts) == ["refresh-token-reuse"]
    assert alerts[0].fields["related_index"] == 1


def test_refresh_token_reused_without_rotation_is_a_near_miss() -> None:
    assert run([issued(RT), refreshed(RT, rotated=False), refreshed(RT, rotated=False)]) == []


def test_two_refresh_tokens_from_one_parent_alert() -> None:
    def child(ref: str, kind: str) -> dict[str, Any]:
        return issued(ref, grant_type="refresh_token", parent_token_ref=RT, token_type=kind)

    reuse = [issued(RT), child(OTHER, "refresh_token"), child(AT, "refresh_token")]
    assert rules(run(reuse)) == ["refresh-token-reuse"]
    # Near miss: one rotation issues an access token and one refresh token.
    assert run([issued(RT), child(AT, "access_token"), child(OTHER, "refresh_token")]) == []


# -- consent and clients ---------------------------------------------------------------------------


def test_issuance_after_consent_revoked_alerts() -> None:
    withdrawn = {"type": "consent-revoked", "client_id": "app", "sub": "p-1"}
    alerts = run([withdrawn, issued(AT)])
    assert rules(alerts) == ["issued-after-consent-revoked"]
    assert alerts[0].fields["subject"] == "p-1"


def test_issuance_after_consent_granted_again_is_a_near_miss() -> None:
    withdrawn = {"type": "consent-revoked", "client_id": "app", "sub": "p-1"}
    granted = {"type": "consent-granted", "client_id": "app", "sub": "p-1", "scope": ["openid"]}
    assert run([withdrawn, granted, issued(AT)]) == []
    assert run([withdrawn, issued(AT, sub="p-2")]) == []  # another subject


def test_partial_consent_revocation_alerts_only_for_its_scopes() -> None:
    withdrawn = {"type": "consent-revoked", "client_id": "app", "sub": "p-1", "scope": ["email"]}
    assert rules(run([withdrawn, issued(AT, scope=["openid", "email"])])) == [
        "issued-after-consent-revoked"
    ]
    assert run([withdrawn, issued(AT, scope=["openid"])]) == []


def test_issuance_to_a_disabled_client_alerts() -> None:
    disabled = {"type": "client-disabled", "client_id": "app"}
    assert rules(run([disabled, issued(AT)])) == ["issued-after-client-disabled"]
    assert rules(run([disabled, refreshed(RT)])) == ["issued-after-client-disabled"]


def test_issuance_after_the_client_is_enabled_again_is_a_near_miss() -> None:
    disabled = {"type": "client-disabled", "client_id": "app"}
    enabled = {"type": "client-enabled", "client_id": "app"}
    assert run([disabled, enabled, issued(AT)]) == []
    assert run([disabled, issued(AT, client_id="other-app")]) == []


# -- failed logins and clocks ----------------------------------------------------------------------


def failed(client: str = "app") -> dict[str, Any]:
    return {"type": "login-failed", "client_id": client, "reason": "invalid_credentials"}


def test_a_burst_of_failed_logins_alerts_once() -> None:
    config = MonitorConfig(failed_login_threshold=10, failed_login_window=60)
    alerts = run([failed()] * 25, config, step_ms=1000)
    assert rules(alerts) == ["failed-login-burst"]
    assert alerts[0].index == 9
    assert alerts[0].fields["count"] == 10


def test_failed_logins_below_the_threshold_or_spread_out_are_near_misses() -> None:
    config = MonitorConfig(failed_login_threshold=10, failed_login_window=60)
    assert run([failed()] * 9, config) == []
    assert run([failed()] * 30, config, step_ms=7000) == []  # 10 take 63 s
    assert run([failed(f"app-{i % 2}") for i in range(18)], config) == []  # two clients


def test_a_new_burst_alerts_again_after_quiet() -> None:
    config = MonitorConfig(failed_login_threshold=3, failed_login_window=10)
    engine = RuleEngine(config)
    first = run([failed()] * 3, engine=engine)
    assert rules(first) == ["failed-login-burst"]
    later = [(failed(), T0 + 60_000 + i * 1000) for i in range(3)]
    alerts = []
    for offset, (event, log_time) in enumerate(later):
        body = {"iat": log_time // 1000, **event}
        alerts += engine.observe(100 + offset, LeafView("as", body, log_time))
    assert rules(alerts) == ["failed-login-burst"]


def test_iat_far_from_the_log_time_alerts() -> None:
    config = MonitorConfig(max_iat_skew=600)
    late = {**revoked(AT), "iat": T0 // 1000 - 700}
    early = {**revoked(AT), "iat": T0 // 1000 + 601}
    assert rules(run([late], config)) == ["iat-skew"]
    assert rules(run([early], config)) == ["iat-skew"]
    assert run([{**revoked(AT), "iat": T0 // 1000 - 500}], config) == []


# -- memory ----------------------------------------------------------------------------------------


def test_rule_memory_survives_a_restart() -> None:
    config = MonitorConfig()
    before = RuleEngine(config)
    run([issued(RT), revoked(RT)], engine=before)
    after = RuleEngine.from_json(config, json.loads(json.dumps(before.to_json())))
    alerts = after.observe(5, LeafView("as", {"iat": T0 // 1000, **refreshed(RT)}, T0))
    assert rules(alerts) == ["revoked-token-used"]
    with pytest.raises(StateError):
        RuleEngine.from_json(config, {"revoked": []})


def test_memory_is_bounded_by_retention() -> None:
    config = MonitorConfig(retention=3600)
    engine = RuleEngine(config)
    run([issued(RT, exp=T0 // 1000 + 60), revoked(AT)], engine=engine)
    assert AT in engine.revoked
    assert RT in engine.issued
    engine.prune(T0 + 2 * 3600 * 1000)
    assert engine.revoked == {}
    assert engine.issued == {}


def test_set_payloads_are_read_per_event() -> None:
    payload = {
        "iss": "https://as.example",
        "jti": "s1",
        "iat": T0 // 1000,
        "events": {
            "https://schemas.openid.net/secevent/oauth/event-type/token-revoked": {
                "client_id": "app",
                "token_ref": RT,
            }
        },
    }
    flat = normalize_events(LeafView("as", payload, T0, set_jws="a.b.c"))
    assert flat == [{"iat": T0 // 1000, "jti": "s1", "client_id": "app", "token_ref": RT,
                     "type": "token-revoked"}]
    assert normalize_events(LeafView("as", {"no": "type"}, T0)) == []


def test_thresholds_are_checked() -> None:
    from client.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        MonitorConfig(failed_login_threshold=1)
    with pytest.raises(ConfigurationError):
        MonitorConfig(max_iat_skew=0)


# -- following a log -------------------------------------------------------------------------------


def _client(log: TamperingLog, tmp_path: Path) -> LogClient:
    return LogClient(
        "http://log.test",
        parse_policy(log.policy()),
        state_dir=tmp_path / "state",
        transport=httpx.ASGITransport(app=log.app()),
    )


def _oauth_log() -> TamperingLog:
    log = TamperingLog()
    base = T0
    flow = [issued(RT), {"type": "consent-granted", "client_id": "app", "sub": "p-1",
                         "scope": ["openid"]}]
    flow += [{"type": "login-succeeded", "sub": f"p-{i}"} for i in range(300)]
    log.append([event_leaf({"iat": base // 1000 + i, **e}, log_time=base + i * 1000)
                for i, e in enumerate(flow)])
    log.publish()
    return log


@pytest.mark.anyio
async def test_monitor_follows_the_log_and_resumes_after_a_restart(tmp_path: Path) -> None:
    log = _oauth_log()
    seen: list[Alert] = []
    state = tmp_path / "monitor.json"
    async with _client(log, tmp_path) as client:
        first = await Monitor(client, state, emit=seen.append).step()
    assert (first.first_size, first.tree_size, first.alerts) == (0, 302, ())
    assert json.loads(state.read_text())["format"] == "etch-monitor-state/v1"
    # More events, including a violation that needs the memory of the first step.
    start = T0 + 400_000
    log.append([event_leaf({"iat": start // 1000, **e}, log_time=start) for e in
                (revoked(RT), refreshed(RT))])
    log.publish()
    async with _client(log, tmp_path) as client:
        second = await Monitor(client, state, emit=seen.append).step()
    assert (second.first_size, second.tree_size) == (302, 304)
    assert rules(seen) == ["revoked-token-used"]
    assert seen[0].index == 303
    assert seen[0].to_json(log.origin)["origin"] == log.origin
    async with _client(log, tmp_path) as client:
        third = await Monitor(client, state, emit=seen.append).step()
    assert third.entries == 0
    assert len(seen) == 1


@pytest.mark.anyio
async def test_monitor_from_now_skips_the_past(tmp_path: Path) -> None:
    log = _oauth_log()
    async with _client(log, tmp_path) as client:
        result = await Monitor(client, tmp_path / "m.json", from_now=True).step()
    assert (result.first_size, result.tree_size, result.entries) == (302, 302, 0)


@pytest.mark.anyio
async def test_monitor_detects_a_modified_entry(tmp_path: Path) -> None:
    log = _oauth_log()
    log.entry_overrides[150] = event_leaf({"type": "login-succeeded", "sub": "x"}, log_time=1)
    async with _client(log, tmp_path) as client:
        with pytest.raises(EntryMismatchError) as caught:
            await Monitor(client, tmp_path / "m.json").step()
    assert caught.value.evidence_path is not None
    assert json.loads(caught.value.evidence_path.read_text())["details"]["index"] == 150
    assert not (tmp_path / "m.json").exists()
