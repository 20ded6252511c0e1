"""Schemathesis against the live log and the live witness: no 5xx for any generated request.

Each service runs as a real process on 127.0.0.1 (a fresh temporary data directory, SQLite):
the log with the OAuth intake and a registered submitter whose bearer credential is sent with
every request (so generated bodies get past authentication to the parsers), and a witness
that follows that log. Schemathesis reads each service's ``/openapi.json`` and generates
requests that fit the document and requests that do not (positive and negative modes); for
every answer it checks that the status is not 5xx and that the answer's content type and body
conform to the document.

Runs only under ``make fuzz`` (``ETCH_FUZZ_EXAMPLES`` set, schemathesis installed), never in
``make test``. The number of examples per operation is ``ETCH_FUZZ_EXAMPLES`` divided by 10
(at least 20). A failure names the request that broke a check: fix the handler and add the
request to ``tests/test_fuzz_regressions.py``.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from server.codec import encode_deterministic
from server.leaves import event_signing_message
from tests.oauth_support import sample_event, sample_types
from tests.server_helpers import PROJECT_ROOT, LogProcess

if "ETCH_FUZZ_EXAMPLES" not in os.environ:
    pytest.skip("schemathesis runs under 'make fuzz' only", allow_module_level=True)
pytest.importorskip("schemathesis")

EXAMPLES = max(20, int(os.environ["ETCH_FUZZ_EXAMPLES"]) // 10)
"""Examples per operation and phase."""
MAX_SECONDS = int(os.environ.get("ETCH_FUZZ_API_SECONDS", "240"))
"""Time budget of one service's run (schemathesis ``--max-time``)."""
CHECKS = "not_a_server_error,content_type_conformance,response_schema_conformance"
_CREDENTIAL = re.compile(r"^credential: ([A-Za-z0-9_-]{43})$", re.MULTILINE)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _add_submitter(data_dir: Path, key_file: Path) -> str:
    """Register submitter ``fuzz`` with a generated key; return its bearer credential."""
    command = [sys.executable, "-m", "client.cli", "submitter", "add", "fuzz", "--generate-key"]
    command += ["--key-file", str(key_file), "--data-dir", str(data_dir)]
    done = subprocess.run(
        command,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    match = _CREDENTIAL.search(done.stdout)
    assert match is not None, done.stdout + done.stderr
    return match.group(1)


@pytest.fixture(scope="module")
def live_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LogProcess, str]]:
    """The log process (OAuth intake) and the credential of its submitter ``fuzz``."""
    root = tmp_path_factory.mktemp("fuzz-log")
    data_dir = root / "data"
    credential = _add_submitter(data_dir, root / "fuzz.key")
    process = LogProcess(data_dir, extra_args=["--intake", "oauth", "--public-entries", "true"])
    asyncio.run(process.start())
    try:
        _submit_events(process.base_url, credential, root / "fuzz.key")
        yield process, credential
    finally:
        process.terminate()
        assert not _server_errors(process.log_text()), process.log_text()[-4000:]


def _submit_events(url: str, credential: str, key_file: Path) -> None:
    """Log a few signed events, so that entries, receipts, proofs and tiles exist to read."""
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    headers = {"Authorization": f"Bearer {credential}"}
    for kind in sample_types()[:5]:
        event = sample_event(kind, jti=f"fuzz-{kind}", iat=int(time.time()), toe=None)
        signature = key.sign(event_signing_message(encode_deterministic(event)))
        envelope = {"event": event, "signature": base64.b64encode(signature).decode()}
        answer = httpx.post(f"{url}/v1/events", json=envelope, headers=headers, timeout=30)
        assert answer.status_code in (200, 201), answer.text


def _server_errors(log_text: str) -> list[str]:
    """Tracebacks in a server's output (an unhandled exception is a crash even if answered)."""
    return [line for line in log_text.splitlines() if line.startswith("Traceback")]


@pytest.fixture(scope="module")
def live_witness(
    tmp_path_factory: pytest.TempPathFactory, live_log: tuple[LogProcess, str]
) -> Iterator[str]:
    """A witness process following the live log; its base URL."""
    log, _ = live_log
    root = tmp_path_factory.mktemp("fuzz-witness")
    logs_file = root / "logs.toml"
    logs_file.write_text(f'[[log]]\nvkey = "{log.vkey()}"\nurl = "{log.base_url}"\n')
    port = _free_port()
    output = root / "witness.log"
    command = [sys.executable, "-m", "witness", "--data-dir", str(root / "data")]
    command += ["--logs", str(logs_file), "--listen", f"127.0.0.1:{port}"]
    command += ["--name", "fuzz.example/witness", "--log-level", "WARNING"]
    with output.open("wb") as out:
        process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, output.read_text()
            assert time.monotonic() < deadline, "the witness did not start"
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        text = output.read_text(errors="replace")
        assert not _server_errors(text), text[-4000:]


def _schemathesis(url: str, report: Path, headers: Sequence[str] = ()) -> None:
    """Run the schemathesis CLI against the service at ``url``; fail with its report if not 0.

    Phases: the document's examples, the coverage phase (boundary and invalid values of every
    parameter and body) and the fuzzing phase, in positive and negative modes.
    """
    command = [sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json"]
    command += ["--checks", CHECKS, "--mode", "all", "--max-examples", str(EXAMPLES)]
    command += ["--phases", "examples,coverage,fuzzing", "--max-time", str(MAX_SECONDS)]
    command += ["--request-timeout", "30", "--generation-database", "none", "--no-color"]
    command += ["--report", "junit", "--report-dir", str(report)]
    for header in headers:
        command += ["--header", header]
    hooks = {"SCHEMATHESIS_HOOKS": "tests.fuzz.schemathesis_hooks"}
    done = subprocess.run(
        command,
        cwd=PROJECT_ROOT,
        env={**os.environ, **hooks},
        capture_output=True,
        text=True,
        check=False,
    )
    sys.stdout.write(done.stdout[-20000:])
    assert done.returncode == 0, done.stdout[-20000:] + done.stderr[-4000:]


def test_log_api(live_log: tuple[LogProcess, str], tmp_path: Path) -> None:
    """No generated request makes the log answer 5xx; answers conform to its document."""
    process, credential = live_log
    _schemathesis(process.base_url, tmp_path, [f"Authorization: Bearer {credential}"])


def test_witness_api(live_witness: str, tmp_path: Path) -> None:
    """No generated request makes the witness answer 5xx; answers conform to its document."""
    _schemathesis(live_witness, tmp_path)
