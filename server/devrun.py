"""``make run``: a complete local Etch on one machine, for trying it out.

Starts, as child processes, three witnesses (ports 8381-8383) and the log (port 8080, SQLite, a
2-of-3 witness policy), all keeping their state under one data directory (``.etch`` by
default), and registers a demo submitter on first start. Prints where to look and how to submit,
then supervises: Ctrl-C (or SIGTERM) stops everything; if a child dies, the others are stopped
and the exit status says so.

Layout of the data directory::

    log/                  the log's data directory (log.key, log.vkey, log.db)
    witness-1..3/         each witness's key and database
    policy.txt            the C2SP tlog-policy: the log and the three witnesses, quorum 2 of 3
    witness-logs.toml     what the witnesses follow (this log, with its URL for pull mode)
    demo/                 the demo submitter: credential (0600) and Ed25519 key (0600)

The ports are options (``--port`` for the log, ``--witness-ports`` for the three witnesses), so
that a second copy, or the test of this module, can run beside the first.

The ``etch`` commands pin a log's key by its origin in their trusted state (``etch checkpoint``
refuses a known origin signed by another key). A data directory made afresh, after an earlier
one was removed, holds a new key for the same origin; the banner then says which trusted state
file stands in the way instead of leaving the first ``etch`` command to fail.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from client.commands._common import state_dir
from client.errors import StateError
from client.logclient import StateStore
from server.config import DEFAULT_ORIGIN
from server.explorer.demo import DEMO_TOKEN, submit_demo_events_from_files
from server.keys import load_or_create_log_key
from witness.keys import load_or_create_key

__all__ = ["main", "trust_conflict"]

LOG_PORT = 8080
WITNESS_PORTS = (8381, 8382, 8383)
HOST = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class _Child:
    name: str
    url: str
    process: subprocess.Popen[bytes]


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)


def _prepare(
    data: Path, origin: str, log_port: int, witness_ports: Sequence[int]
) -> tuple[str, list[tuple[str, str, str]]]:
    """Create keys and configuration files; return the log vkey and each (name, vkey, url)."""
    log_dir = data / "log"
    log_key = load_or_create_log_key(log_dir, origin)
    log_url = f"http://{HOST}:{log_port}"
    witnesses = []
    for number, port in enumerate(witness_ports, 1):
        wdir = data / f"witness-{number}"
        wdir.mkdir(parents=True, exist_ok=True)
        signer, _ = load_or_create_key(wdir / "witness.key", f"localhost/etch/witness-{number}")
        witnesses.append((f"witness-{number}", signer.vkey, f"http://{HOST}:{port}"))
    policy = [f"log {log_key.vkey} {log_url}"]
    policy += [f"witness {name} {vkey} {url}" for name, vkey, url in witnesses]
    policy += ["group local 2 " + " ".join(name for name, _, _ in witnesses), "quorum local"]
    _write_if_changed(data / "policy.txt", "\n".join(policy) + "\n")
    _write_if_changed(
        data / "witness-logs.toml",
        f'[[log]]\norigin = "{origin}"\nvkey = "{log_key.vkey}"\nurl = "{log_url}"\n',
    )
    return log_key.vkey, witnesses


def trust_conflict(origin: str, vkey: str, directory: Path | None = None) -> str | None:
    """Say why the ``etch`` commands would refuse this log, or return ``None``.

    Reads the trusted state of ``origin`` in ``directory`` (by default where the ``etch``
    commands keep it: ``ETCH_STATE_DIR``, ``$XDG_STATE_HOME/etch`` or ``~/.local/state/etch``).
    Returns a few lines for the banner when that state was verified with another key than
    ``vkey``, or cannot be read; never raises.
    """
    store = StateStore(directory if directory is not None else state_dir(argparse.Namespace()))
    path = store.path(origin)
    try:
        state = store.load(origin)
    except StateError as exc:
        return f"The etch commands cannot read their trusted state of {origin}: {exc}"
    if state is None or state.vkey == vkey:
        return None
    return (
        f"Note: the etch commands on this machine trust another key for {origin}\n"
        f"  ({state.vkey}),\n"
        f"  from a log since replaced, and will refuse this one. If that log is gone for good:\n"
        f"    rm {path}"
    )


def _register_demo(data: Path) -> tuple[Path, Path]:
    """Register the demo submitter once; return its credential and key files."""
    demo = data / "demo"
    demo.mkdir(parents=True, exist_ok=True)
    credential_file = demo / "credential"
    key_file = demo / "demo.key"
    if credential_file.exists() and key_file.exists():
        return credential_file, key_file
    key_file.unlink(missing_ok=True)
    result = subprocess.run(  # noqa: S603 (our own interpreter and module, fixed arguments)
        [
            sys.executable,
            "-m",
            "client.cli",
            "submitter",
            "add",
            "demo",
            "--generate-key",
            "--key-file",
            str(key_file),
            "--data-dir",
            str(data / "log"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    credential = next(
        (
            line.split(":", 1)[1].strip()
            for line in result.stdout.splitlines()
            if line.startswith("credential:")
        ),
        None,
    )
    if result.returncode != 0 or credential is None:
        raise SystemExit(
            f"make run: could not register the demo submitter: {result.stderr.strip()}"
        )
    fd = os.open(credential_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(credential + "\n")
    return credential_file, key_file


def _start(name: str, url: str, args: Sequence[str], log_file: Path) -> _Child:
    out = log_file.open("ab")
    process = subprocess.Popen(  # noqa: S603 (our own interpreter and modules)
        [sys.executable, *args], stdout=out, stderr=subprocess.STDOUT
    )
    return _Child(name, url, process)


def _wait_healthy(children: Sequence[_Child], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = list(children)
    while pending and time.monotonic() < deadline:
        for child in list(pending):
            if child.process.poll() is not None:
                raise SystemExit(f"make run: {child.name} exited with {child.process.returncode}")
            try:
                if httpx.get(child.url + "/healthz", timeout=1.0).status_code == 200:
                    pending.remove(child)
            except httpx.HTTPError:
                pass
        time.sleep(0.2)
    if pending:
        raise SystemExit("make run: not healthy in time: " + ", ".join(c.name for c in pending))


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}")
    return port


def _ports(text: str) -> tuple[int, ...]:
    ports = tuple(_port(part.strip()) for part in text.split(","))
    if len(ports) != len(WITNESS_PORTS):
        raise argparse.ArgumentTypeError(f"give {len(WITNESS_PORTS)} ports, e.g. 8381,8382,8383")
    return ports


def main(argv: Sequence[str] | None = None) -> int:
    """Start the local log and witnesses and supervise them until interrupted."""
    parser = argparse.ArgumentParser(prog="make run", description=__doc__)
    parser.add_argument("--data-dir", default=".etch", help="where everything is kept")
    parser.add_argument("--origin", default=DEFAULT_ORIGIN, help="the log's origin")
    parser.add_argument("--port", type=_port, default=LOG_PORT, help="the log's port")
    parser.add_argument(
        "--witness-ports",
        type=_ports,
        default=WITNESS_PORTS,
        help="the three witnesses' ports, comma-separated (default 8381,8382,8383)",
    )
    args = parser.parse_args(argv)
    if len({args.port, *args.witness_ports}) != 4:
        parser.error("the log and the three witnesses need four different ports")
    data = Path(args.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    vkey, witnesses = _prepare(data, args.origin, args.port, args.witness_ports)
    credential_file, key_file = _register_demo(data)
    logs = data / "logs"
    logs.mkdir(exist_ok=True)

    children: list[_Child] = []
    for number, (name, _, url) in enumerate(witnesses, 1):
        peers: list[str] = []
        for other in witnesses:
            if other[0] != name:
                peers += ["--peer", other[2]]
        children.append(
            _start(
                name,
                url,
                [
                    "-m",
                    "witness",
                    "--data-dir",
                    str(data / f"witness-{number}"),
                    "--logs",
                    str(data / "witness-logs.toml"),
                    "--listen",
                    url.removeprefix("http://"),
                    "--poll-interval",
                    "10",
                    *peers,
                ],
                logs / f"{name}.log",
            )
        )
    log_url = f"http://{HOST}:{args.port}"
    children.append(
        _start(
            "log",
            log_url,
            [
                "-m",
                "server",
                "--data-dir",
                str(data / "log"),
                "--port",
                str(args.port),
                "--origin",
                args.origin,
                "--policy-file",
                str(data / "policy.txt"),
                "--public-entries",
                "true",
            ],
            logs / "log.log",
        )
    )
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        _wait_healthy(children, 30.0)
        try:  # the demo token's events, for the explorer's "my token" (duplicates on restart)
            submit_demo_events_from_files(log_url, credential_file, key_file)
        except (OSError, ValueError, httpx.HTTPError) as exc:
            print(f"make run: could not log the demo token's events: {exc}", flush=True)
        _banner(data, log_url, vkey, witnesses, credential_file, key_file)
        conflict = trust_conflict(args.origin, vkey)
        if conflict is not None:
            print(conflict, flush=True)
        while not stop:
            for child in children:
                if child.process.poll() is not None:
                    print(f"make run: {child.name} exited ({child.process.returncode}); see {logs}")
                    return 1
            time.sleep(0.5)
        return 0
    finally:
        for child in children:
            if child.process.poll() is None:
                child.process.terminate()
        for child in children:
            try:
                child.process.wait(10)
            except subprocess.TimeoutExpired:
                child.process.kill()


def _banner(
    data: Path,
    log_url: str,
    vkey: str,
    witnesses: list[tuple[str, str, str]],
    credential_file: Path,
    key_file: Path,
) -> None:
    lines = [
        "",
        "Etch is running.",
        f"  log          {log_url}   (checkpoint: {log_url}/checkpoint, health: {log_url}/healthz)",
        f"  log vkey     {vkey}",
        *(f"  {name:<12} {url}   vkey {wvkey}" for name, wvkey, url in witnesses),
        f"  policy       {data / 'policy.txt'}   (2 of 3 witnesses must cosign)",
        f"  logs         {data / 'logs'}/",
        "",
        "Submit an event as the demo submitter:",
        f"  .venv/bin/etch submit --log {log_url} --policy {data / 'policy.txt'} \\",
        f"      --credential-file {credential_file} --key {key_file} \\",
        "      examples/events/token-issued.json          # prints: logged as entry N",
        "",
        "Fetch and verify the checkpoint, then a receipt:",
        f"  .venv/bin/etch checkpoint --log {log_url} --policy {data / 'policy.txt'}",
        f"  .venv/bin/etch receipt --log {log_url} --policy {data / 'policy.txt'} \\",
        "      --index N -o receipt.tlog-proof",
        f"  .venv/bin/etch verify receipt.tlog-proof --policy {data / 'policy.txt'}",
        "",
        f"Explore in a browser: {log_url}/explorer   (each witness: <its URL>/explorer)",
        f'  "My token": paste the demo token {DEMO_TOKEN} to see its events verified',
        "",
        "Press Ctrl-C to stop.",
    ]
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())
