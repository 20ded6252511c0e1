"""A real witness process (``python -m witness``, uvicorn on 127.0.0.1): key, restart, SIGKILL.

The witness is killed with SIGKILL right after it answers ``add-checkpoint``; once restarted
it must still serve that checkpoint (durable before the answer), keep its key and vkey, and
accept the next checkpoint from that size.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import witness
from merkle.checkpoint import parse_checkpoint
from merkle.cosignature import CosignatureVerifier
from merkle.note import open_note
from tests.witness_support import FakeLog, add_checkpoint_body, origin_hash

PROJECT_ROOT = Path(__file__).resolve().parents[1]
NAME = "witness.example/process"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Process:
    """One ``python -m witness`` child, with its printed vkey and base URL."""

    def __init__(self, args: list[str], port: int) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "witness", *args],
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.url = f"http://127.0.0.1:{port}"
        assert self.popen.stdout is not None
        self.vkey = self.popen.stdout.readline().strip()
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.popen.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"witness did not start: {self.stderr()}")
            time.sleep(0.05)

    def stderr(self) -> str:
        assert self.popen.stderr is not None
        return self.popen.stderr.read() if self.popen.poll() is not None else ""

    def kill(self) -> None:
        os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)
        self.close_pipes()

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.close_pipes()
        return self.popen.returncode

    def close_pipes(self) -> None:
        for pipe in (self.popen.stdout, self.popen.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def setup(tmp_path: Path) -> tuple[list[str], int, FakeLog]:
    log = FakeLog()
    log.append(10)
    logs_file = tmp_path / "logs.toml"
    logs_file.write_text(f'[[log]]\nvkey = "{log.vkey}"\n')
    port = free_port()
    args = [
        "--data-dir", str(tmp_path / "data"),
        "--logs", str(logs_file),
        "--listen", f"127.0.0.1:{port}",
    ]  # fmt: skip
    return args, port, log


def test_sigkill_right_after_answering_keeps_the_checkpoint(
    setup: tuple[list[str], int, FakeLog], tmp_path: Path
) -> None:
    args, port, log = setup
    first = Process([*args, "--name", NAME], port)
    try:
        assert first.vkey.startswith(NAME + "+")
        verifier = CosignatureVerifier.from_vkey(first.vkey)
        key_file = tmp_path / "data" / "witness.key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        response = httpx.post(
            f"{first.url}/add-checkpoint",
            content=add_checkpoint_body(0, [], log.checkpoint()),
            timeout=10,
        )
        assert response.status_code == 200
    finally:
        first.kill()

    second = Process(args, port)
    try:
        assert second.vkey == first.vkey
        served = httpx.get(f"{second.url}/{origin_hash(log.origin)}/checkpoint", timeout=10)
        assert served.status_code == 200
        note, verified = open_note(served.content, [log.signer.verifier(), verifier])
        assert parse_checkpoint(note.text).tree_size == 10
        assert len(verified) == 2
        log.append(30)
        body = add_checkpoint_body(10, log.consistency_proof(10), log.checkpoint())
        response = httpx.post(f"{second.url}/add-checkpoint", content=body, timeout=10)
        assert response.status_code == 200
    finally:
        second.kill()

    third = Process(args, port)
    try:
        served = httpx.get(f"{third.url}/{origin_hash(log.origin)}/checkpoint", timeout=10)
        assert parse_checkpoint(served.text.split("\n\n")[0] + "\n").tree_size == 40
    finally:
        assert third.stop() == 0


def test_usage_errors_exit_2(
    setup: tuple[list[str], int, FakeLog],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for variable in [v for v in os.environ if v.startswith("ETCH_WITNESS_")]:
        monkeypatch.delenv(variable)
    args, _, _ = setup
    assert witness.main(args) == 2
    assert "--name" in capsys.readouterr().err
    assert witness.main(["--data-dir", str(tmp_path)]) == 2
    assert witness.main([*args, "--listen", "nowhere"]) == 2
    assert witness.main([*args, "--bogus"]) == 2
    assert witness.main([*args, "--poll-interval", "0"]) == 2
    capsys.readouterr()
    bad_logs = tmp_path / "bad.toml"
    bad_logs.write_text("[[log]]\nvkey = 'nope'\n")
    assert witness.main(["--data-dir", str(tmp_path / "d"), "--logs", str(bad_logs)]) == 2
    assert "vkey" in capsys.readouterr().err
