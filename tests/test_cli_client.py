"""The ``etch`` commands for users, against a tampering log on a real uvicorn (127.0.0.1).

Every command's happy path and its failures: exit 0 / 1 / 2, human and ``--json`` output, and
one test per way the log can misbehave (modified tile, modified entry, forked checkpoint,
rolled-back checkpoint, unknown key, quorum short by one): exit 1, the error named, and an
evidence file that ``etch evidence verify`` accepts.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from client.cli import main
from client.tokens import token_ref
from merkle.cosignature import CosignatureSigner
from merkle.note import Ed25519Signer, Ed25519Verifier
from merkle.receipt import parse_receipt
from merkle.tiles import Tile, format_tile_path
from tests.cli_helpers import Run, run_etch
from tests.tampering import ServedApp, TamperingLog, event_leaf

TOKEN = b"mF_9.B5f-4.1JqM"
REF = token_ref(TOKEN)
T0 = 1_767_225_600_000


class Etch:
    """Runs ``etch`` in process with a state directory and the served log's policy."""

    def __init__(self, log: TamperingLog, url: str, tmp: Path, capsys: pytest.CaptureFixture[str]):
        self.log = log
        self.url = url
        self.tmp = tmp
        self.capsys = capsys
        self.policy = tmp / "policy.txt"
        self.policy.write_text(log.policy())

    def __call__(self, *argv: str, stdin: bytes | None = None, trust: bool = True) -> Run:
        args = list(argv)
        if trust and args[0] not in ("keygen", "verify", "evidence", "witness"):
            args += ["--log", self.url, "--policy", str(self.policy)]
            args += ["--state-dir", str(self.tmp / "state")]
        return run_etch(self.capsys, args, stdin)

    def evidence(self) -> list[Path]:
        return sorted((self.tmp / "state" / "evidence").glob("*.json"))


def oauth_events() -> list[dict[str, Any]]:
    """A token's life (issued, refreshed, revoked, then refreshed again) among other events."""
    events: list[dict[str, Any]] = [
        {"type": "login-succeeded", "sub": f"p-{i}", "client_id": "web"} for i in range(290)
    ]
    events[10] = {"type": "token-issued", "client_id": "web", "sub": "p-1",
                  "token_type": "refresh_token", "token_ref": REF}
    events[120] = {"type": "token-refreshed", "client_id": "web", "token_ref": REF}
    events[200] = {"type": "token-revoked", "client_id": "web", "token_ref": REF}
    events[280] = {"type": "token-refreshed", "client_id": "web", "token_ref": REF}
    return [{"iss": "https://as.example", "jti": f"j{i}", "iat": T0 // 1000 + i, **e}
            for i, e in enumerate(events)]


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[list[TamperingLog], str]]:
    """One real uvicorn serving whichever log is first in the returned list."""
    current: list[TamperingLog] = [TamperingLog()]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await current[0].app()(scope, receive, send)

    server = ServedApp(app)
    server.start()
    try:
        yield current, server.url
    finally:
        server.stop()


@pytest.fixture
def log(served: tuple[list[TamperingLog], str]) -> TamperingLog:
    tampering = TamperingLog()
    tampering.append([event_leaf(e, log_time=T0 + i * 1000) for i, e in enumerate(oauth_events())])
    tampering.publish()
    served[0][0] = tampering
    return tampering


@pytest.fixture
def etch(
    log: TamperingLog,
    served: tuple[list[TamperingLog], str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Etch:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ETCH_POLICY_FILE", raising=False)
    monkeypatch.delenv("ETCH_STATE_DIR", raising=False)
    return Etch(log, served[1], tmp_path, capsys)


# -- checkpoint ------------------------------------------------------------------------------------


def test_checkpoint_shows_size_root_and_cosigners(etch: Etch, log: TamperingLog) -> None:
    run = etch("checkpoint")
    assert run.status == 0, run.err
    assert f"tree size  {log.size}" in run.out
    assert log.root().hex() in run.out
    assert "w0 at 2026-01-01T00:00:00Z, w1 at 2026-01-01T00:00:00Z" in run.out
    assert "first use: now trusted" in run.out
    log.append([b"more"] * 10)
    log.publish()
    run = etch("checkpoint", "--json")
    document = run.json()
    assert document["ok"]
    assert document["tree_size"] == 300
    assert document["previous_size"] == 290
    assert document["advanced"]
    assert [c["name"] for c in document["cosigners"]] == ["w0", "w1"]


def test_checkpoint_without_a_key_is_a_usage_error(etch: Etch) -> None:
    run = etch("checkpoint", "--log", etch.url, "--state-dir", str(etch.tmp), trust=False)
    assert run.status == 2
    assert "--policy" in run.err


def test_unreachable_log_fails_with_status_1(etch: Etch) -> None:
    run = etch("checkpoint", "--log", "http://127.0.0.1:9", "--vkey", etch.log.vkey,
               "--state-dir", str(etch.tmp), "--timeout", "2", trust=False)
    assert run.status == 1
    assert "etch checkpoint:" in run.err


# -- lookup ----------------------------------------------------------------------------------------


def test_lookup_by_token_on_stdin(etch: Etch) -> None:
    run = etch("lookup", "--token-stdin", stdin=TOKEN + b"\n")
    assert run.status == 0, run.err
    assert "4 event(s)" in run.out
    for index in (10, 120, 200, 280):
        assert f"#{index}" in run.out
    assert TOKEN.decode() not in run.out + run.err
    # Standard input that is not a terminal is read without a flag.
    assert etch("lookup", "--json", stdin=TOKEN).json()["query"]["value"] == REF


def test_lookup_by_token_file_json(etch: Etch, tmp_path: Path) -> None:
    (tmp_path / "token").write_bytes(TOKEN)
    document = etch("lookup", "--token-file", str(tmp_path / "token"), "--json").json()
    assert [e["index"] for e in document["events"]] == [10, 120, 200, 280]
    assert document["events"][2]["event"]["type"] == "token-revoked"
    assert document["checkpoint"]["tree_size"] == 290


def test_lookup_by_reference_client_and_time(etch: Etch) -> None:
    assert len(etch("lookup", f"--token-ref={REF}", "--json").json()["events"]) == 4
    run = etch("lookup", "--client-id", "web", "--since", str(T0 // 1000 + 100),
               "--until", "2026-01-01T00:03:20Z", "--json")
    assert [e["index"] for e in run.json()["events"]] == list(range(100, 200))


def test_lookup_usage_errors(etch: Etch) -> None:
    assert etch("lookup", "--token-ref", "abc").status == 2
    assert etch("lookup", "--client-id", "web", "--since", "+5").status == 2
    assert etch("lookup", "--client-id", "web", "--since", "2026-01-01 00:00:00").status == 2
    assert etch("lookup", "--token-stdin", stdin=b"").status == 2
    run = etch("lookup", "--client-id", "a", "--type", "b")
    assert run.status == 2


def test_lookup_answer_that_does_not_match_fails(etch: Etch, log: TamperingLog) -> None:
    log.lookup_lies[f"token_ref={REF}"] = [11]
    run = etch("lookup", "--token-stdin", stdin=TOKEN)
    assert run.status == 1
    assert "does not match" in run.err


# -- receipt and verify ----------------------------------------------------------------------------


def test_receipt_for_an_index_verifies_offline(etch: Etch, tmp_path: Path) -> None:
    out = tmp_path / "200.tlog-proof"
    run = etch("receipt", "--index", "200", "-o", str(out))
    assert run.status == 0, run.err
    assert parse_receipt(out.read_bytes()).index == 200
    verified = etch("verify", str(out), "--policy", str(etch.policy))
    assert verified.status == 0, verified.err
    assert "valid: entry 200" in verified.out
    assert "event: token-revoked" in verified.out
    document = etch("verify", str(out), "--policy", str(etch.policy), "--json").json()
    assert document["valid"]
    assert document["event"]["token_ref"] == REF
    # Existing files are not replaced without --force.
    assert etch("receipt", "--index", "200", "-o", str(out)).status == 2
    assert etch("receipt", "--index", "200", "-o", str(out), "--force").status == 0


def test_receipts_for_a_token(etch: Etch, tmp_path: Path) -> None:
    run = etch("receipt", "--token-stdin", "-o", str(tmp_path / "r"), "--json", stdin=TOKEN)
    assert run.status == 0, run.err
    files = [Path(r["file"]) for r in run.json()["receipts"]]
    assert [f.name for f in files] == [f"{i}.tlog-proof" for i in (10, 120, 200, 280)]
    for path in files:
        assert etch("verify", str(path), "--policy", str(etch.policy)).status == 0


def test_verify_failures(etch: Etch, log: TamperingLog, tmp_path: Path) -> None:
    out = tmp_path / "r.tlog-proof"
    assert etch("receipt", "--index", "3", "-o", str(out), "--no-entry").status == 0
    entry = tmp_path / "entry"
    entry.write_bytes(log.entries[3])
    assert etch("verify", str(out), "--policy", str(etch.policy), "--entry", str(entry)).status == 0
    missing = etch("verify", str(out), "--policy", str(etch.policy))
    assert missing.status == 1
    assert "no entry" in missing.err
    entry.write_bytes(log.entries[4])
    wrong = etch("verify", str(out), "--policy", str(etch.policy), "--entry", str(entry), "--json")
    assert wrong.status == 1
    assert wrong.json()["valid"] is False
    assert "inclusion proof" in wrong.err
    other = tmp_path / "other-policy"
    other.write_text(TamperingLog(log.origin).policy())
    entry.write_bytes(log.entries[3])
    assert "signature" in etch(
        "verify", str(out), "--policy", str(other), "--entry", str(entry)
    ).err
    out.write_bytes(out.read_bytes().replace(b"index 3", b"index 03"))
    assert etch("verify", str(out), "--policy", str(etch.policy)).status == 1
    assert etch("verify", str(out)).status == 2
    assert etch("verify", str(tmp_path / "absent"), "--policy", str(etch.policy)).status == 2


# -- monitor and audit -----------------------------------------------------------------------------


def test_monitor_prints_one_json_line_per_alert(etch: Etch, tmp_path: Path) -> None:
    state = tmp_path / "monitor.json"
    run = etch("monitor", "--once", "--state", str(state))
    assert run.status == 0, run.err
    alerts = [json.loads(line) for line in run.out.splitlines()]
    assert [a["alert"] for a in alerts] == ["revoked-token-used"]
    assert alerts[0]["index"] == 280
    assert alerts[0]["related_index"] == 200
    assert "verified size 0 -> 290" in run.err
    again = etch("monitor", "--once", "--state", str(state))
    assert again.status == 0
    assert again.out == ""


def test_audit_passes_and_reports(etch: Etch, log: TamperingLog) -> None:
    run = etch("audit", "--json")
    assert run.status == 0, run.err
    document = run.json()
    assert document["entries"] == log.size
    assert document["checkpoint"]["root_hash"] == run.json()["checkpoint"]["root_hash"]
    human = etch("audit", "--restart")
    assert human.status == 0
    assert "audit passed" in human.out
    assert "audit:" in human.err  # plain progress lines when not on a terminal


# -- keygen, evidence, witness ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["log", "witness", "submitter"])
def test_keygen(kind: str, etch: Etch, tmp_path: Path) -> None:
    prefix = tmp_path / kind
    run = etch("keygen", "--type", kind, "--name", f"{kind}.example/k", "-o", str(prefix))
    assert run.status == 0, run.err
    key = Path(f"{prefix}.key")
    vkey = Path(f"{prefix}.vkey").read_text().strip()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_text().startswith(f"PRIVATE+KEY+{kind}.example/k+")
    assert key.read_text() not in run.out
    assert vkey in run.out
    if kind == "witness":
        assert CosignatureSigner.from_private_key(key.read_text().strip()).vkey == vkey
    else:
        signer = Ed25519Signer.from_private_key(key.read_text().strip())
        assert Ed25519Verifier.from_vkey(vkey).key_id == signer.key_id
    assert Path(f"{prefix}.pub.pem").exists() == (kind == "submitter")
    again = etch("keygen", "--type", kind, "--name", "x", "-o", str(prefix))
    assert again.status == 1
    assert "exists" in again.err
    assert etch("keygen", "--type", kind, "--name", "bad name", "-o", str(prefix)).status == 2


def test_witness_delegates_to_the_witness() -> None:
    with pytest.raises(SystemExit) as caught:
        main(["witness", "--help"])
    assert caught.value.code == 0


# -- the log misbehaves: exit 1, the error, evidence -----------------------------------------------


def _misbehaviour(etch: Etch, run: Run, kind: str) -> Path:
    assert run.status == 1, (run.out, run.err)
    assert "LOG MISBEHAVIOUR" in run.err
    files = etch.evidence()
    assert len(files) == 1
    assert str(files[0]) in run.err
    verified = etch("evidence", "verify", str(files[0]), "--vkey", etch.log.vkey, "--json")
    assert verified.status == 0, verified.err
    assert verified.json()["kind"] == kind
    return files[0]


def test_cli_modified_tile(etch: Etch, log: TamperingLog, tmp_path: Path) -> None:
    path = format_tile_path(Tile(0, 0, 256))
    data = bytearray(log.tile_bytes(path) or b"")
    data[11 * 32] ^= 1  # the sibling of entry 10
    log.tile_overrides[path] = bytes(data)
    run = etch("receipt", "--index", "10", "-o", str(tmp_path / "r"), "--json")
    _misbehaviour(etch, run, "tile-mismatch")
    assert run.json()["error"] == "TileMismatchError"
    assert not (tmp_path / "r").exists()


def test_cli_modified_entry(etch: Etch, log: TamperingLog) -> None:
    log.entry_overrides[120] = event_leaf({"type": "token-refreshed", "token_ref": REF}, log_time=1)
    run = etch("lookup", "--token-stdin", "--json", stdin=TOKEN)
    _misbehaviour(etch, run, "entry-mismatch")
    assert run.json()["error"] == "EntryMismatchError"


def test_cli_forked_checkpoint(etch: Etch, log: TamperingLog, served: Any) -> None:
    assert etch("checkpoint").status == 0
    fork = log.fork(150)
    fork.append([b"rewritten history"] * 200)
    fork.publish()
    served[0][0] = fork
    run = etch("checkpoint", "--json")
    evidence = _misbehaviour(etch, run, "proof-failed")
    assert run.json()["error"] == "InconsistentCheckpointError"
    assert json.loads(evidence.read_text())["format"] == "etch-witness-evidence/v1"


def test_cli_rolled_back_checkpoint(etch: Etch, log: TamperingLog) -> None:
    assert etch("checkpoint").status == 0
    log.publish(200)
    run = etch("checkpoint")
    _misbehaviour(etch, run, "rollback")
    assert "RollbackError" not in run.err
    assert "rollback" in run.err


def test_cli_checkpoint_signed_by_an_unknown_key(etch: Etch, log: TamperingLog) -> None:
    log.publish(signer=Ed25519Signer.generate(log.origin))
    run = etch("checkpoint", "--json")
    _misbehaviour(etch, run, "untrusted-checkpoint")
    assert run.json()["error"] == "UntrustedCheckpointError"


def test_cli_quorum_short_by_one(etch: Etch, log: TamperingLog) -> None:
    log.publish(cosigners=1)
    run = etch("checkpoint", "--json")
    _misbehaviour(etch, run, "untrusted-checkpoint")
    assert "quorum" in run.json()["message"]
    # The monitor says so too, as an alert line, and stops with status 1.
    monitor = etch("monitor", "--once", "--state", str(etch.tmp / "m.json"))
    assert monitor.status == 1
    assert json.loads(monitor.out.splitlines()[-1])["alert"] == "log-misbehaviour"


def test_evidence_verify_refuses_what_does_not_hold(etch: Etch, log: TamperingLog) -> None:
    log.publish(cosigners=1)
    etch("checkpoint")
    (path,) = etch.evidence()
    other = TamperingLog(log.origin).vkey
    # Under another key the checkpoint is not the log's: still "untrusted", but the claim that
    # it lacked a quorum no longer holds against a log that did sign it.
    document = json.loads(path.read_text())
    document["reason"] = "made up"
    path.write_text(json.dumps(document))
    assert etch("evidence", "verify", str(path), "--vkey", log.vkey).status == 1
    assert etch("evidence", "verify", str(path), "--vkey", other).status == 0
    assert etch("evidence", "verify", str(path), "--vkey", "junk").status == 2
    path.write_text("{}")
    assert etch("evidence", "verify", str(path), "--vkey", log.vkey).status == 1


def test_cli_audit_finds_a_modified_entry_and_resumes_after_repair(
    etch: Etch, log: TamperingLog, tmp_path: Path
) -> None:
    state = tmp_path / "audit.json"
    log.entry_overrides[3] = b"forged"
    run = etch("audit", "--state", str(state), "--json")
    _misbehaviour(etch, run, "entry-mismatch")
    assert run.json()["error"] == "EntryMismatchError"
    del log.entry_overrides[3]
    again = etch("audit", "--state", str(state), "--json")
    assert again.status == 0, again.err
    assert again.json()["entries"] == log.size
