"""End to end: the Authlib example server, audited by Etch, against a real log process.

The log is ``python -m server`` (a real uvicorn, SQLite) in a subprocess; the submitter is
registered with ``etch submitter add --generate-key``; the example authorization
server runs on a real Werkzeug HTTP server on 127.0.0.1 with an :class:`Emitter`. A client
drives the OAuth flows over HTTP (client credentials, authorization code with PKCE S256 and a
login, refresh token rotation, introspection, revocation, a denied consent), then every event's
receipt is verified with the client library: the stored receipt against the log's key, the
leaf's submitter signature, and a fresh receipt and consistency proof from the log's newest
checkpoint. A second test kills the log with SIGKILL in the middle of the flows, restarts it on
the same data directory and shows that no event is lost. A third runs the example's command
line (``python -m examples.authlib_server``) as a subprocess.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from werkzeug.serving import BaseWSGIServer, make_server

from client.batchsig import verify_leaf_attribution
from client.cbor import decode_deterministic, encode_deterministic
from client.emitter import EVENT_SIGNATURE_CONTEXT, Emitter, EmitterConfig, load_signing_key
from client.spool import StoredReceipt
from client.tokens import token_ref
from examples.authlib_server.app import create_app
from examples.authlib_server.store import (
    API_CLIENT,
    APP_CLIENT,
    APP_REDIRECT_URI,
    DEMO_USER,
    SERVICE_CLIENT,
    DemoCredentials,
    demo_store,
)
from merkle.checkpoint import open_checkpoint
from merkle.note import Ed25519Verifier, decode_base64
from merkle.policy import parse_policy
from merkle.receipt import parse_receipt, verify_receipt
from merkle.tree import verify_consistency
from tests.server_helpers import PROJECT_ROOT, free_port

pytestmark = pytest.mark.slow

SUBMITTER = "authlib-example"
ISSUER = "http://as.example.test"
CONFIG = EmitterConfig(commit_interval=0.005, backoff_base=0.05, backoff_max=0.5)


# --------------------------------------------------------------------------- the log


class Log:
    """``python -m server`` on a fixed 127.0.0.1 port: start, SIGKILL, restart on the same data."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        out = (self.data_dir.parent / f"log-{self.starts}.out").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "server", "--data-dir", str(self.data_dir), "--host",
             "127.0.0.1", "--port", str(self.port), "--batch-period-ms", "10",
             "--log-level", "warning"],
            cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )
        out.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the log exited with {self.process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        raise AssertionError("the log did not become healthy")

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    @property
    def vkey(self) -> str:
        return (self.data_dir / "log.vkey").read_text("ascii").strip()


@dataclass(frozen=True, slots=True)
class Submitter:
    credential: str
    key: Ed25519PrivateKey
    key_file: Path


def register_submitter(data_dir: Path) -> Submitter:
    """Register the example as a submitter with ``etch submitter add --generate-key``.

    The command prints the bearer credential once and writes the Ed25519 signing key (PKCS#8
    PEM, mode 0600) next to the data directory; it works while the log runs.
    """
    key_file = data_dir.parent / f"{SUBMITTER}.key"
    done = subprocess.run(
        [sys.executable, "-m", "client.cli", "submitter", "add", SUBMITTER, "--generate-key",
         "--key-file", str(key_file), "--data-dir", str(data_dir)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    credentials = [line.split(": ", 1)[1] for line in done.stdout.splitlines()
                   if line.startswith("credential: ")]
    assert len(credentials) == 1
    assert key_file.stat().st_mode & 0o077 == 0
    return Submitter(credentials[0], load_signing_key(key_file), key_file)


@pytest.fixture
def log(tmp_path: Path) -> Iterator[Log]:
    running = Log(tmp_path / "log-data")
    running.start()
    yield running
    running.stop()


# --------------------------------------------------------------------------- the OAuth server


@dataclass
class OAuthServer:
    url: str
    emitter: Emitter
    credentials: DemoCredentials
    server: BaseWSGIServer


@contextlib.contextmanager
def oauth_server(tmp_path: Path, log: Log, submitter: Submitter) -> Iterator[OAuthServer]:
    credentials = DemoCredentials.load_or_create(tmp_path / "demo.json")
    emitter = Emitter(
        log.url, submitter.credential, submitter.key, tmp_path / "spool.db",
        log_vkey=log.vkey, submitter=SUBMITTER, config=CONFIG,
    )
    app = create_app(
        emitter, demo_store(credentials), issuer=ISSUER, pseudonym_key=secrets.token_bytes(32)
    )
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield OAuthServer(f"http://127.0.0.1:{server.server_port}", emitter, credentials, server)
    finally:
        server.shutdown()
        server.server_close()
        emitter.close(timeout=5.0)


# --------------------------------------------------------------------------- OAuth flows


def _field(page: str, pattern: str) -> str:
    match = re.search(pattern, page)
    assert match is not None, f"{pattern!r} not in the page"
    return html.unescape(match.group(1))


@dataclass
class Flows:
    """Drives the OAuth flows and remembers every token and the events they should cause."""

    base: str
    credentials: DemoCredentials
    tokens: list[str]
    expected: Counter[str]

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, follow_redirects=False, timeout=30)

    def client_credentials(self) -> dict[str, Any]:
        with self.client() as http:
            response = http.post(
                "/oauth/token",
                data={"grant_type": "client_credentials", "scope": "read"},
                auth=(SERVICE_CLIENT, self.credentials.service_secret),
            )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        assert "refresh_token" not in body
        self.tokens.append(body["access_token"])
        self.expected["token-issued"] += 1
        return body

    def authorization_code(self, *, wrong_password_first: bool = False) -> dict[str, Any]:
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(
            hashlib.sha256(verifier.encode()).digest()
        ).rstrip(b"=").decode()
        query = urlencode({
            "response_type": "code", "client_id": APP_CLIENT, "redirect_uri": APP_REDIRECT_URI,
            "scope": "openid read", "state": "st-1", "code_challenge": challenge,
            "code_challenge_method": "S256",
        })
        with self.client() as http:
            response = http.get(f"/oauth/authorize?{query}")
            assert response.status_code == 302
            login_url = response.headers["location"]
            page = http.get(login_url).text
            form = {
                "csrf": _field(page, r'name="csrf" value="([^"]+)"'),
                "next": _field(page, r'name="next" value="([^"]+)"'),
                "username": DEMO_USER,
            }
            if wrong_password_first:
                failed = http.post("/login", data={**form, "password": "not-the-password"})
                assert failed.status_code == 401
                self.expected["login-failed"] += 1
            password = self.credentials.user_password
            response = http.post("/login", data={**form, "password": password})
            assert response.status_code == 302
            self.expected["login-succeeded"] += 1
            consent = http.get(response.headers["location"])
            assert consent.status_code == 200
            action = _field(consent.text, r'action="([^"]+)"')
            csrf = _field(consent.text, r'name="csrf" value="([^"]+)"')
            response = http.post(action, data={"csrf": csrf, "confirm": "yes"})
            assert response.status_code == 302, response.text
            self.expected["consent-granted"] += 1
            self.expected["token-issued"] += 1  # the code
            redirect = urlsplit(response.headers["location"])
            params = parse_qs(redirect.query)
            assert params["state"] == ["st-1"]
            code = params["code"][0]
            self.tokens.append(code)
            response = http.post("/oauth/token", data={
                "grant_type": "authorization_code", "code": code, "client_id": APP_CLIENT,
                "redirect_uri": APP_REDIRECT_URI, "code_verifier": verifier,
            })
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            self.tokens += [body["access_token"], body["refresh_token"]]
            self.expected["token-issued"] += 2
            replay = http.post("/oauth/token", data={
                "grant_type": "authorization_code", "code": code, "client_id": APP_CLIENT,
                "redirect_uri": APP_REDIRECT_URI, "code_verifier": verifier,
            })
            assert replay.status_code == 400  # a code is good once
        return body

    def refresh(self, refresh_token: str) -> dict[str, Any]:
        with self.client() as http:
            response = http.post("/oauth/token", data={
                "grant_type": "refresh_token", "refresh_token": refresh_token,
                "client_id": APP_CLIENT,
            })
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            assert body["refresh_token"] != refresh_token
            self.tokens += [body["access_token"], body["refresh_token"]]
            # new access and refresh token, the refresh itself, the old refresh token revoked
            self.expected.update({"token-issued": 2, "token-refreshed": 1, "token-revoked": 1})
            reuse = http.post("/oauth/token", data={
                "grant_type": "refresh_token", "refresh_token": refresh_token,
                "client_id": APP_CLIENT,
            })
            assert reuse.status_code == 400  # rotated: the old one is dead
        return body

    def introspect(self, token: str) -> bool:
        with self.client() as http:
            response = http.post(
                "/oauth/introspect", data={"token": token},
                auth=(API_CLIENT, self.credentials.api_secret),
            )
        assert response.status_code == 200, response.text
        self.expected["token-introspected"] += 1
        active: bool = response.json()["active"]
        return active

    def revoke(self, token: str) -> None:
        with self.client() as http:
            response = http.post("/oauth/revoke", data={
                "token": token, "token_type_hint": "refresh_token", "client_id": APP_CLIENT,
            })
        assert response.status_code == 200, response.text
        self.expected["token-revoked"] += 1

    def denied_consent(self) -> None:
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(
            hashlib.sha256(verifier.encode()).digest()
        ).rstrip(b"=").decode()
        query = urlencode({
            "response_type": "code", "client_id": APP_CLIENT, "redirect_uri": APP_REDIRECT_URI,
            "scope": "profile", "state": "st-2", "code_challenge": challenge,
            "code_challenge_method": "S256",
        })
        with self.client() as http:
            page = http.get(http.get(f"/oauth/authorize?{query}").headers["location"]).text
            response = http.post("/login", data={
                "csrf": _field(page, r'name="csrf" value="([^"]+)"'),
                "next": _field(page, r'name="next" value="([^"]+)"'),
                "username": DEMO_USER, "password": self.credentials.user_password,
            })
            consent = http.get(response.headers["location"]).text
            response = http.post(_field(consent, r'action="([^"]+)"'), data={
                "csrf": _field(consent, r'name="csrf" value="([^"]+)"'), "confirm": "no",
            })
        assert response.status_code == 302
        assert parse_qs(urlsplit(response.headers["location"]).query)["error"] == ["access_denied"]
        self.expected.update({"login-succeeded": 1, "login-failed": 1})

    def all_flows(self) -> None:
        issued = self.client_credentials()
        assert self.introspect(issued["access_token"])
        assert not self.introspect("no-such-token")
        body = self.authorization_code(wrong_password_first=True)
        rotated = self.refresh(body["refresh_token"])
        self.revoke(rotated["refresh_token"])
        assert not self.introspect(rotated["refresh_token"])
        self.denied_consent()


# --------------------------------------------------------------------------- verification


def verify_everything(server: OAuthServer, log: Log, submitter: Submitter, flows: Flows) -> None:
    """Check that every event the flows caused is in the log, provably, and holds no secret."""
    emitter = server.emitter
    assert emitter.flush(60.0), emitter.stats()
    stats = emitter.stats()
    assert stats.failed == 0
    assert stats.dropped_queue_full == stats.dropped_spool_full == 0
    assert stats.accepted == stats.delivered == sum(flows.expected.values())
    receipts: list[StoredReceipt] = emitter.receipts(limit=10_000)
    assert len(receipts) == stats.accepted

    policy = parse_policy(f"log {log.vkey}\nquorum none\n")
    public_key = submitter.key.public_key()
    raw_public_key = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    types: Counter[str] = Counter()
    refs: set[str] = set()
    with httpx.Client(base_url=log.url, timeout=30) as http:
        latest_note = http.get("/checkpoint").content
        latest, _, _ = open_checkpoint(latest_note, Ed25519Verifier.from_vkey(log.vkey))
        assert latest.tree_size == stats.accepted  # nothing logged twice, nothing missing
        checked_sizes: set[int] = set()
        for stored in receipts:
            # 1. the receipt the emitter kept, verified from its bytes alone
            checkpoint = verify_receipt(parse_receipt(stored.receipt), stored.entry, policy)
            assert checkpoint.tree_size == stored.tree_size
            # 2. the leaf carries the event signed by the submitter's key (one signature per
            # event, or the emitter's batch-root signature with the event's path in its batch)
            leaf = decode_deterministic(stored.entry)
            assert isinstance(leaf, dict)
            assert leaf["submitter"] == SUBMITTER
            event = leaf["event"]
            assert isinstance(event, dict)
            assert verify_leaf_attribution(stored.entry, [raw_public_key]) == SUBMITTER
            if "signature" in leaf:
                signature = leaf["signature"]
                assert isinstance(signature, bytes)
                public_key.verify(signature, EVENT_SIGNATURE_CONTEXT + encode_deterministic(event))
            else:
                assert "batch" in leaf
            assert event["iss"] == ISSUER
            assert event["jti"] == stored.jti
            types[str(event["type"])] += 1
            for name in ("token_ref", "parent_token_ref", "issued_token_ref"):
                if name in event:
                    refs.add(str(event[name]))
            # 3. the log still proves it against its newest checkpoint ...
            fresh = http.get(f"/v1/receipt/{stored.index}")
            assert fresh.status_code == 200
            assert verify_receipt(parse_receipt(fresh.content), stored.entry, policy) == latest
            # ... which is consistent with the checkpoint of the original receipt
            if stored.tree_size not in checked_sizes and stored.tree_size < latest.tree_size:
                checked_sizes.add(stored.tree_size)
                body = http.get(
                    "/v1/proof/consistency",
                    params={"first": stored.tree_size, "second": latest.tree_size},
                ).json()
                proof = [decode_base64(h, what="proof") for h in body["proof"]]
                verify_consistency(
                    stored.tree_size, latest.tree_size, checkpoint.root_hash, latest.root_hash,
                    proof,
                )
            # 4. no token or code appears anywhere in the log entry
            for token in flows.tokens:
                assert token.encode() not in stored.entry
    assert types == flows.expected
    assert {token_ref(token.encode()) for token in flows.tokens} <= refs


# --------------------------------------------------------------------------- the tests


def test_oauth_flows_are_logged_and_every_receipt_verifies(tmp_path: Path, log: Log) -> None:
    submitter = register_submitter(log.data_dir)
    with oauth_server(tmp_path, log, submitter) as server:
        flows = Flows(server.url, server.credentials, [], Counter())
        flows.all_flows()
        verify_everything(server, log, submitter, flows)
        # The client can fetch the receipt of its own token's issuance from the OAuth server.
        issued = flows.client_credentials()
        assert server.emitter.flush(30.0)
        with httpx.Client(base_url=server.url, timeout=30) as http:
            jti = issued["etch_event"]
            mine = http.get(f"/etch/receipts/{jti}",
                            auth=(SERVICE_CLIENT, server.credentials.service_secret))
            assert mine.status_code == 200
            body = mine.json()
            policy = parse_policy(f"log {log.vkey}\nquorum none\n")
            entry = base64.b64decode(body["entry"])
            verify_receipt(parse_receipt(body["receipt"].encode()), entry, policy)
            assert token_ref(issued["access_token"].encode()).encode() in entry
            # another client does not get it
            other = http.get(f"/etch/receipts/{jti}", params={"client_id": APP_CLIENT})
            assert other.status_code == 404
            assert http.get("/healthz").json()["emitter"]["delivered"] >= len(flows.tokens)


def test_log_killed_mid_flow_loses_no_event(tmp_path: Path, log: Log) -> None:
    submitter = register_submitter(log.data_dir)
    with oauth_server(tmp_path, log, submitter) as server:
        flows = Flows(server.url, server.credentials, [], Counter())
        for _ in range(3):
            flows.client_credentials()
        body = flows.authorization_code()
        log.kill()
        # The OAuth server keeps answering at full speed while the log is gone.
        started = time.monotonic()
        rotated = flows.refresh(body["refresh_token"])
        for _ in range(10):
            flows.client_credentials()
        flows.revoke(rotated["refresh_token"])
        assert not flows.introspect(rotated["refresh_token"])
        assert time.monotonic() - started < 20
        stats = server.emitter.stats()
        assert stats.pending > 0
        assert stats.retries > 0 or stats.requests == 0
        time.sleep(1.0)  # several failed delivery attempts
        log.start()  # same data directory, same port: the log checks its state and resumes
        flows.all_flows()
        verify_everything(server, log, submitter, flows)


def test_command_line_runs_the_example(tmp_path: Path, log: Log) -> None:
    submitter = register_submitter(log.data_dir)
    (tmp_path / "credential").write_text(submitter.credential + "\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "examples.authlib_server", "--log", log.url,
         "--credential-file", str(tmp_path / "credential"),
         "--signing-key", str(submitter.key_file),
         "--log-vkey-file", str(log.data_dir / "log.vkey"),
         "--submitter", SUBMITTER, "--port", "0",
         "--spool", str(tmp_path / "cli-spool.db"),
         "--demo-credentials", str(tmp_path / "cli-demo.json"),
         "--pseudonym-key-file", str(tmp_path / "cli-pseudonym.key")],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline().decode()
        assert first.startswith("listening on http://127.0.0.1:"), first
        base = first.split()[-1]
        credentials = DemoCredentials.load_or_create(tmp_path / "cli-demo.json")
        assert os.stat(tmp_path / "cli-demo.json").st_mode & 0o077 == 0
        with httpx.Client(base_url=base, timeout=30) as http:
            response = http.post(
                "/oauth/token", data={"grant_type": "client_credentials", "scope": "write"},
                auth=(SERVICE_CLIENT, credentials.service_secret),
            )
            assert response.status_code == 200, response.text
            jti = response.json()["etch_event"]
            deadline = time.monotonic() + 30
            while True:
                mine = http.get(f"/etch/receipts/{jti}",
                                auth=(SERVICE_CLIENT, credentials.service_secret))
                if mine.status_code == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        assert mine.status_code == 200
        policy = parse_policy(f"log {log.vkey}\nquorum none\n")
        entry = base64.b64decode(mine.json()["entry"])
        verify_receipt(parse_receipt(mine.json()["receipt"].encode()), entry, policy)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def test_durable_mode_stores_the_event_before_answering(tmp_path: Path) -> None:
    from tests.emitter_fakelog import FakeLog

    key = Ed25519PrivateKey.generate()
    fake = FakeLog(key.public_key())
    fake.down = True
    emitter = Emitter(
        "http://log.test", fake.credential, key, tmp_path / "spool.db", log_vkey=fake.vkey,
        transport=fake.transport(),
        config=EmitterConfig(max_spool_events=2, backoff_base=0.05, backoff_max=0.5),
    )
    credentials = DemoCredentials.load_or_create(tmp_path / "demo.json")
    app = create_app(emitter, demo_store(credentials), issuer=ISSUER,
                     pseudonym_key=secrets.token_bytes(32), durable=True)
    client = app.test_client()
    auth = "Basic " + base64.b64encode(
        f"{SERVICE_CLIENT}:{credentials.service_secret}".encode()).decode()
    try:
        for _ in range(2):
            response = client.post("/oauth/token", headers={"Authorization": auth},
                                   data={"grant_type": "client_credentials", "scope": "read"})
            assert response.status_code == 200
            jti = response.get_json()["etch_event"]
            assert jti in {row.jti for row in pending_rows(tmp_path / "spool.db")}
        # The spool is full: the server refuses to issue a token it cannot audit.
        response = client.post("/oauth/token", headers={"Authorization": auth},
                               data={"grant_type": "client_credentials", "scope": "read"})
        assert response.status_code == 503
        assert response.get_json()["error"] == "temporarily_unavailable"
        fake.down = False
        assert emitter.flush(20.0)
        assert len(fake.entries) == 2
    finally:
        emitter.close(timeout=2.0)


def pending_rows(path: Path) -> list[Any]:
    """The spool's pending rows, read with a separate connection."""
    from client.spool import Spool

    reader = Spool(path)
    try:
        return list(reader.pending(limit=100))
    finally:
        reader.close()
