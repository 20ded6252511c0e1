"""End to end: the ``etch`` user commands against a real ``python -m server`` (uvicorn, SQLite,
the OAuth intake, entries readable by readers only).

The story of the README: a submitter key from ``etch keygen``, registered with ``etch submitter
add``; events signed and sent with ``etch submit``; then, as a token holder and as a reader,
``etch checkpoint``, ``etch lookup`` (the token on standard input), ``etch receipt`` and the
offline ``etch verify``; ``etch monitor`` raising the alert the events deserve; ``etch audit``.
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from client.cli import main
from client.tokens import token_ref
from tests.cli_helpers import Run, run_etch
from tests.server_helpers import LogProcess

ORIGIN = "e2e.example/oauth/log"
TOKEN = b"tGzv3JOkF0XG5Qx2TlKWIA"
REF = token_ref(TOKEN)


def etch(capsys: pytest.CaptureFixture[str], *argv: str, stdin: bytes | None = None) -> Run:
    """Run ``etch`` in process; return status and output."""
    return run_etch(capsys, argv, stdin)


@dataclass
class Deployment:
    """The running log and what its users hold."""

    process: LogProcess
    root: Path
    submitter_key: Path
    submitter_credential: Path
    reader_credential: Path

    @property
    def url(self) -> str:
        return self.process.base_url

    @property
    def vkey_file(self) -> Path:
        return self.process.data_dir / "log.vkey"

    def common(self, state: Path, *, reader: bool = True) -> list[str]:
        args = ["--log", self.url, "--vkey-file", str(self.vkey_file), "--state-dir", str(state)]
        if reader:
            args += ["--credential-file", str(self.reader_credential)]
        return args


def _credential(output: str) -> str:
    return next(
        line.split(": ", 1)[1] for line in output.splitlines() if line.startswith("credential: ")
    )


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("e2e")
    data = root / "log"
    capture = io.StringIO()
    saved = sys.stdout
    sys.stdout = capture
    try:
        assert main(["keygen", "--type", "submitter", "--name", "as-e2e",
                     "-o", str(root / "as-e2e")]) == 0
        assert main(["submitter", "add", "as-e2e", "--public-key", str(root / "as-e2e.pub.pem"),
                     "--data-dir", str(data)]) == 0
        submitter = _credential(capture.getvalue())
        capture.truncate(0)
        assert main(["reader", "add", "auditor", "--data-dir", str(data)]) == 0
        reader = _credential(capture.getvalue())
    finally:
        sys.stdout = saved
    (root / "submitter.cred").write_text(submitter + "\n")
    (root / "reader.cred").write_text(reader + "\n")
    process = LogProcess(data, extra_args=("--intake", "oauth", "--origin", ORIGIN))
    asyncio.run(process.start())
    try:
        yield Deployment(
            process, root, root / "as-e2e.key", root / "submitter.cred", root / "reader.cred"
        )
    finally:
        process.terminate()


@pytest.fixture(scope="module")
def submitted(deployment: Deployment) -> list[int]:
    """The events of one refresh token's life, submitted with ``etch submit``."""
    now = time.time()
    events = [
        {"type": "token-issued", "client_id": "web", "sub": "p-7",
         "token_type": "refresh_token", "grant_type": "authorization_code", "token_ref": REF},
        {"type": "login-failed", "client_id": "web", "reason": "invalid_credentials"},
        {"type": "token-revoked", "client_id": "web", "token_ref": REF, "reason": "user"},
        {"type": "token-refreshed", "client_id": "web", "token_ref": REF},
    ]
    indexes = []
    for number, event in enumerate(events):
        path = deployment.root / f"event-{number}.json"
        path.write_text(json.dumps({"iat": int(now), **event}))
        capture = io.StringIO()
        saved = sys.stdout
        sys.stdout = capture
        try:
            status = main([
                "submit", str(path), "--key", str(deployment.submitter_key),
                "--issuer", "https://as.e2e.example",
                "--credential-file", str(deployment.submitter_credential),
                "--log", deployment.url, "--vkey-file", str(deployment.vkey_file),
                "--state-dir", str(deployment.root / "submit-state"),
                "-o", str(deployment.root / f"event-{number}.tlog-proof"), "--json",
            ])
        finally:
            sys.stdout = saved
        assert status == 0, capture.getvalue()
        indexes.append(json.loads(capture.getvalue())["index"])
    return indexes


def test_submit_returns_verified_receipts(
    deployment: Deployment, submitted: list[int], capsys: pytest.CaptureFixture[str]
) -> None:
    assert submitted == sorted(submitted)
    for number, index in enumerate(submitted):
        run = etch(capsys, "verify", str(deployment.root / f"event-{number}.tlog-proof"),
                   "--vkey-file", str(deployment.vkey_file), "--json")
        assert run.status == 0, run.err
        assert run.json()["index"] == index
        assert run.json()["submitter"] == "as-e2e"


def test_submit_refusals(
    deployment: Deployment, submitted: list[int], capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    event = tmp_path / "e.json"
    event.write_text('{"type": "token-revoked", "client_id": "web", "token_ref": "' + REF + '"}')
    common = ["--key", str(deployment.submitter_key), "--log", deployment.url,
              "--vkey-file", str(deployment.vkey_file), "--state-dir", str(tmp_path)]
    wrong = tmp_path / "wrong.cred"
    wrong.write_text(deployment.reader_credential.read_text())
    run = etch(capsys, "submit", str(event), "--issuer", "https://as", "--credential-file",
               str(wrong), *common)
    assert run.status == 1
    assert "40" in run.err
    secret = tmp_path / "secret.json"
    secret.write_text('{"type": "token-revoked", "client_id": "web", "access_token": "x"}')
    run = etch(capsys, "submit", str(secret), "--issuer", "https://as", "--credential-file",
               str(deployment.submitter_credential), *common)
    assert run.status == 1
    assert "422" in run.err
    floats = tmp_path / "float.json"
    floats.write_text('{"type": "token-revoked", "iat": 1.5}')
    run = etch(capsys, "submit", str(floats), "--credential-file",
               str(deployment.submitter_credential), *common)
    assert run.status == 2


def test_checkpoint(
    deployment: Deployment, submitted: list[int], capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    run = etch(capsys, "checkpoint", *deployment.common(tmp_path, reader=False), "--json")
    assert run.status == 0, run.err
    assert run.json()["origin"] == ORIGIN
    assert run.json()["tree_size"] >= len(submitted)


def test_lookup_and_receipts_for_a_token(
    deployment: Deployment, submitted: list[int], capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    common = deployment.common(tmp_path)
    run = etch(capsys, "lookup", "--token-stdin", *common, "--json", stdin=TOKEN + b"\n")
    assert run.status == 0, run.err
    found = run.json()["events"]
    assert [e["event"]["type"] for e in found] == ["token-issued", "token-revoked",
                                                   "token-refreshed"]
    assert [e["index"] for e in found] == [submitted[0], submitted[2], submitted[3]]
    run = etch(capsys, "receipt", "--token-stdin", "-o", str(tmp_path / "r"), *common,
               stdin=TOKEN)
    assert run.status == 0, run.err
    for index in (submitted[0], submitted[2], submitted[3]):
        verified = etch(capsys, "verify", str(tmp_path / "r" / f"{index}.tlog-proof"),
                        "--vkey-file", str(deployment.vkey_file))
        assert verified.status == 0, verified.err
    by_client = etch(capsys, "lookup", "--client-id", "web", *common, "--json")
    assert len(by_client.json()["events"]) == len(submitted)


def test_entry_contents_need_a_reader(
    deployment: Deployment, submitted: list[int], capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    run = etch(capsys, "lookup", "--token-stdin", *deployment.common(tmp_path, reader=False),
               stdin=TOKEN)
    assert run.status == 1
    assert "reader" in run.err


def test_monitor_and_audit(
    deployment: Deployment, submitted: list[int], capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    common = deployment.common(tmp_path)
    run = etch(capsys, "monitor", "--once", *common)
    assert run.status == 0, run.err
    alerts = [json.loads(line) for line in run.out.splitlines()]
    assert [(a["alert"], a["index"]) for a in alerts] == [("revoked-token-used", submitted[3])]
    audit = etch(capsys, "audit", *common, "--json")
    assert audit.status == 0, audit.err
    assert audit.json()["entries"] >= len(submitted)


def test_envelope_for_curl_then_offline_verification(
    deployment: Deployment, submitted: list[int], capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """The README's curl path: a signed envelope, a plain HTTP POST, the receipt and entry
    fetched over HTTP, and ``etch verify`` of the receipt offline."""
    import base64

    import httpx

    event = tmp_path / "event.json"
    event.write_text(json.dumps({
        "iss": "https://as.e2e.example", "jti": "curl-0001", "iat": int(time.time()),
        "type": "token-revoked", "client_id": "web", "token_ref": REF, "reason": "user",
    }))
    run = etch(capsys, "submit", str(event), "--key", str(deployment.submitter_key),
               "--envelope-only")
    assert run.status == 0, run.err
    envelope = json.loads(run.out)
    assert set(envelope) == {"event", "signature"}
    credential = deployment.submitter_credential.read_text().strip()
    response = httpx.post(
        f"{deployment.url}/v1/events", content=run.out.encode(), timeout=15,
        headers={"Authorization": f"Bearer {credential}", "Content-Type": "application/json"},
    )
    assert response.status_code == 201, response.text
    index = response.json()["index"]
    receipt = httpx.get(f"{deployment.url}/v1/receipt/{index}", timeout=15)
    assert receipt.status_code == 200
    (tmp_path / "r.tlog-proof").write_bytes(receipt.content)
    reader = deployment.reader_credential.read_text().strip()
    entry = httpx.get(f"{deployment.url}/v1/entries/{index}", timeout=15,
                      headers={"Authorization": f"Bearer {reader}"})
    assert entry.status_code == 200, entry.text
    (tmp_path / "entry.bin").write_bytes(base64.b64decode(entry.json()["entry"]))
    run = etch(capsys, "verify", str(tmp_path / "r.tlog-proof"), "--vkey-file",
               str(deployment.vkey_file), "--entry", str(tmp_path / "entry.bin"))
    assert run.status == 0, run.err
    # The same receipt does not verify for other bytes.
    (tmp_path / "other.bin").write_bytes(b"\x00" + (tmp_path / "entry.bin").read_bytes())
    run = etch(capsys, "verify", str(tmp_path / "r.tlog-proof"), "--vkey-file",
               str(deployment.vkey_file), "--entry", str(tmp_path / "other.bin"))
    assert run.status == 1
