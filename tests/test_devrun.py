"""``make run`` (:mod:`server.devrun`) end to end, as a newcomer meets it.

The real command, on free ports: three witnesses and the log start, the banner appears, and the
README's commands work against them with the 2-of-3 witness policy ``make run`` wrote: ``etch
submit``, ``etch checkpoint``, ``etch receipt`` and the offline ``etch verify``, and ``etch
lookup`` of the demo token finds its four events. Ctrl-C stops every process it started. A
second start reuses the keys, and its banner names a trusted state that pins another key for
the origin (left by a data directory since removed), which the ``etch`` commands would refuse.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from client.logclient import StateStore, TrustedState
from merkle.checkpoint import Checkpoint, format_checkpoint, open_checkpoint
from merkle.hashing import EMPTY_ROOT
from merkle.note import sign_note
from server.config import DEFAULT_ORIGIN
from server.devrun import main as devrun_main
from server.devrun import trust_conflict
from server.keys import load_or_create_log_key
from tests.cli_helpers import run_etch
from tests.server_helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
BANNER = "Etch is running."


@dataclass
class DevRun:
    """A running ``python -m server.devrun`` and where it keeps things."""

    process: subprocess.Popen[bytes]
    data: Path
    output: Path
    url: str

    def text(self) -> str:
        return self.output.read_text(encoding="utf-8", errors="replace")


def _start(data: Path, state: Path, ports: list[int], output: Path) -> DevRun:
    env = {**os.environ, "ETCH_STATE_DIR": str(state)}
    with output.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "server.devrun",
                "--data-dir",
                str(data),
                "--port",
                str(ports[0]),
                "--witness-ports",
                ",".join(map(str, ports[1:])),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )
    run = DevRun(process, data, output, f"http://127.0.0.1:{ports[0]}")
    deadline = time.monotonic() + 120
    while BANNER not in run.text():
        if process.poll() is not None or time.monotonic() > deadline:
            _kill_group(process)
            pytest.fail(f"make run did not come up:\n{run.text()}")
        time.sleep(0.2)
    return run


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


def _stop(run: DevRun) -> int:
    """Ctrl-C, as the banner says; return the exit status and check every child is gone."""
    run.process.send_signal(signal.SIGINT)
    try:
        status = run.process.wait(30)
    finally:
        _kill_group(run.process)
    return status


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _free_ports() -> list[int]:
    chosen: list[int] = []
    while len(chosen) < 4:
        port = free_port()
        if port not in chosen:
            chosen.append(port)
    return chosen


@pytest.fixture(scope="module")
def ports() -> list[int]:
    return _free_ports()


@pytest.fixture(scope="module")
def devrun(tmp_path_factory: pytest.TempPathFactory, ports: list[int]) -> Iterator[DevRun]:
    root = tmp_path_factory.mktemp("devrun")
    run = _start(root / ".etch", root / "state", ports, root / "first.out")
    try:
        yield run
    finally:
        if run.process.poll() is None:
            _kill_group(run.process)


def test_the_banner_says_where_to_look(devrun: DevRun, ports: list[int]) -> None:
    text = devrun.text()
    vkey = (devrun.data / "log" / "log.vkey").read_text().strip()
    assert f"log vkey     {vkey}" in text
    assert devrun.url in text
    for number, port in enumerate(ports[1:], 1):
        assert f"witness-{number}    http://127.0.0.1:{port}" in text
    assert "2 of 3 witnesses must cosign" in text
    assert "Note:" not in text  # nothing stands in the way of a fresh state directory


def test_the_readme_commands_work(
    devrun: DevRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def etch(*argv: str, stdin: bytes | None = None) -> tuple[int, str, str]:
        run = run_etch(capsys, argv, stdin)
        return run.status, run.out, run.err

    data, state = devrun.data, str(tmp_path / "state")
    policy = str(data / "policy.txt")
    common = ["--log", devrun.url, "--policy", policy, "--state-dir", state]
    status, out, err = etch(
        "submit",
        *common,
        "--credential-file",
        str(data / "demo" / "credential"),
        "--key",
        str(data / "demo" / "demo.key"),
        str(ROOT / "examples/events/token-issued.json"),
    )
    assert status == 0, err
    found = re.search(r"logged as entry (\d+)", out)
    assert found is not None, out
    index = found.group(1)

    # The witnesses cosign within moments; until two have, the policy is not satisfied.
    deadline = time.monotonic() + 30
    while True:
        status, out, err = etch("checkpoint", *common)
        if status == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert status == 0, err

    receipt = tmp_path / "receipt.tlog-proof"
    status, out, err = etch("receipt", *common, "--index", index, "-o", str(receipt))
    assert status == 0, err
    status, out, err = etch("verify", str(receipt), "--policy", policy)
    assert status == 0, err
    # The receipt is bound to its index: the same proof under another index fails.
    tampered = tmp_path / "tampered.tlog-proof"
    tampered.write_text(
        receipt.read_text().replace(f"\nindex {index}\n", f"\nindex {int(index) + 1}\n", 1)
    )
    status, out, err = etch("verify", str(tampered), "--policy", policy)
    assert status == 1

    status, out, err = etch(
        "lookup", "--token-stdin", *common, "--json", stdin=b"etch-demo-refresh-token-7Qv2"
    )
    assert status == 0, err
    for kind in ("token-issued", "token-refreshed", "token-introspected", "token-revoked"):
        assert kind in out


def test_ctrl_c_stops_everything_and_a_restart_names_a_conflicting_trust(tmp_path: Path) -> None:
    ports = _free_ports()
    first = _start(tmp_path / ".etch", tmp_path / "fresh-state", ports, tmp_path / "first.out")
    pgid = first.process.pid
    vkey = (first.data / "log" / "log.vkey").read_text().strip()
    assert _stop(first) == 0
    assert not _group_alive(pgid), "a witness or the log outlived make run"

    # A trusted state of the same origin under another key, as an earlier .etch leaves behind.
    state = tmp_path / "state"
    _pin_another_key(state, tmp_path / "other-log")
    restarted = _start(first.data, state, ports, tmp_path / "second.out")
    try:
        text = restarted.text()
        assert (first.data / "log" / "log.vkey").read_text().strip() == vkey  # keys reused
        assert f"log vkey     {vkey}" in text
        assert "Note: the etch commands on this machine trust another key" in text
        assert str(StateStore(state).path(DEFAULT_ORIGIN)) in text
    finally:
        assert _stop(restarted) == 0


def _pin_another_key(state: Path, key_dir: Path) -> str:
    """Save a verified trusted state of the default origin under a new key; return its vkey."""
    key = load_or_create_log_key(key_dir, DEFAULT_ORIGIN)
    note = sign_note(format_checkpoint(Checkpoint(DEFAULT_ORIGIN, 0, EMPTY_ROOT)), [key.signer])
    checkpoint, _, _ = open_checkpoint(note, key.signer.verifier())
    StateStore(state).save(
        TrustedState(DEFAULT_ORIGIN, key.vkey, note, checkpoint, int(time.time()))
    )
    return key.vkey


def test_trust_conflict(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert trust_conflict(DEFAULT_ORIGIN, "any", state) is None  # no state: nothing pinned
    pinned = _pin_another_key(state, tmp_path / "key")
    assert trust_conflict(DEFAULT_ORIGIN, pinned, state) is None  # the same key
    message = trust_conflict(DEFAULT_ORIGIN, "localhost/etch/log+00000000+AAAA", state)
    assert message is not None
    assert pinned in message
    assert f"rm {StateStore(state).path(DEFAULT_ORIGIN)}" in message
    assert trust_conflict("other.example/log", pinned, state) is None  # another origin
    StateStore(state).path(DEFAULT_ORIGIN).write_text("{not json")
    unreadable = trust_conflict(DEFAULT_ORIGIN, pinned, state)
    assert unreadable is not None
    assert "cannot read" in unreadable


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "http"], "not a port number: 'http'"),
        (["--port", "70000"], "not a port number: '70000'"),
        (["--witness-ports", "8381,8382"], "give 3 ports"),
        (["--port", "8381"], "four different ports"),
    ],
)
def test_bad_ports_are_refused_before_anything_is_created(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / ".etch"
    with pytest.raises(SystemExit) as exit_info:
        devrun_main(["--data-dir", str(data), *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not data.exists()
