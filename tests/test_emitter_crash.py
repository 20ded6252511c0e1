"""The emitter survives SIGKILL of the OAuth server process.

A child process (tests/emitter_child.py) emits events in a loop against a log that is down and
records each event after the call returned; the test kills it with SIGKILL and reads the spool:

* durable variant: every recorded event is in the spool;
* plain ``emit``: what is missing is only a tail of the most recent events, all emitted within
  the group-commit window (plus the duration of the commit in flight) before the kill.

Then a new emitter opened on the same spool delivers everything the spool holds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from client.emitter import Emitter, EmitterConfig, load_signing_key
from client.spool import Spool
from merkle.note import Ed25519Signer
from tests.emitter_child import COMMIT_INTERVAL
from tests.emitter_fakelog import FakeLog

ROOT = Path(__file__).resolve().parent.parent
SLACK = 0.25
"""Seconds allowed beyond the commit window for the commit in flight (fsync on a busy CI disk)."""


def _run_and_kill(tmp_path: Path, mode: str, key_file: Path, vkey: str) -> tuple[
    list[tuple[str, int]], int, Path
]:
    spool = tmp_path / "spool.db"
    record = tmp_path / "record.txt"
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.emitter_child", str(spool), str(record), mode,
         "http://127.0.0.1:9", vkey, str(key_file)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if child.poll() is not None:
                raise AssertionError(f"child exited early: {child.stderr.read()!r}")  # type: ignore[union-attr]
            if record.exists() and record.read_bytes().count(b"\n") >= 400:
                break
            time.sleep(0.02)
        else:
            raise AssertionError("the child did not emit in time")
        killed_at = time.monotonic_ns()
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stderr is not None:
            child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    lines = record.read_text().splitlines()
    pairs = (line.split() for line in lines if line.count(" ") == 1)
    recorded = [(jti, int(ns)) for jti, ns in pairs]
    return recorded, killed_at, spool


def _spooled(spool: Path) -> list[str]:
    reader = Spool(spool)
    try:
        return [row.jti for row in reader.pending(limit=1_000_000)]
    finally:
        reader.close()


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, FakeLog]:
    signer = Ed25519Signer.generate("oauth-test")
    key_file = tmp_path / "submitter.key"
    key_file.write_text(signer.private_key + "\n")
    return key_file, FakeLog(load_signing_key(key_file).public_key())


def _deliver_all(spool: Path, key_file: Path, fake: FakeLog, expected: list[str]) -> None:
    emitter = Emitter(
        "http://log.test", fake.credential, load_signing_key(key_file), spool,
        log_vkey=fake.vkey, issuer="https://as.example.test", transport=fake.transport(),
        config=EmitterConfig(backoff_base=0.01, backoff_max=0.05),
    )
    try:
        assert emitter.flush(60.0)
    finally:
        emitter.close(1.0)
    assert [event["jti"] for event in fake.events] == expected


@pytest.mark.slow
def test_durable_emits_survive_sigkill(tmp_path: Path, keys: tuple[Path, FakeLog]) -> None:
    key_file, fake = keys
    recorded, _, spool = _run_and_kill(tmp_path, "durable", key_file, fake.vkey)
    spooled = _spooled(spool)
    assert len(recorded) >= 400
    assert {jti for jti, _ in recorded} <= set(spooled)
    _deliver_all(spool, key_file, fake, spooled)


@pytest.mark.slow
def test_plain_emits_lose_at_most_the_commit_window_on_sigkill(
    tmp_path: Path, keys: tuple[Path, FakeLog]
) -> None:
    key_file, fake = keys
    recorded, killed_at, spool = _run_and_kill(tmp_path, "plain", key_file, fake.vkey)
    spooled = _spooled(spool)
    order = [jti for jti, _ in recorded]
    # The spool holds a prefix of the emitted events (the last one may have been committed
    # without being recorded): losses are a tail, never a gap.
    assert order[: len(spooled)] == spooled[: len(order)]
    lost = [(jti, ns) for jti, ns in recorded if jti not in set(spooled)]
    bound_ns = int((COMMIT_INTERVAL + SLACK) * 1e9)
    assert all(killed_at - ns <= bound_ns for _, ns in lost), (
        f"{len(lost)} events lost, the oldest emitted "
        f"{(killed_at - min(ns for _, ns in lost)) / 1e6:.1f} ms before the kill"
    )
    _deliver_all(spool, key_file, fake, spooled)
