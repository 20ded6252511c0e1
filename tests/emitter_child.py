"""A stand-in OAuth server process for the emitter's SIGKILL tests (tests/test_emitter_crash.py).

``python -m tests.emitter_child SPOOL RECORD MODE LOG_URL VKEY KEY_FILE`` emits events without end
(``MODE`` ``plain``: :meth:`Emitter.emit`, ``durable``: :meth:`Emitter.emit_durable`) and,
after each call returns, appends ``<jti> <CLOCK_MONOTONIC ns>`` to the RECORD file with one
unbuffered ``write`` (the page cache keeps it across SIGKILL). It runs until killed.
"""

from __future__ import annotations

import os
import sys
import time

from client.emitter import Emitter, EmitterConfig, load_signing_key

COMMIT_INTERVAL = 0.005
"""The group-commit window the child runs with (the tests' loss bound is based on it)."""


def main(argv: list[str]) -> int:
    spool, record, mode, log_url, vkey, key_file = argv
    emitter = Emitter(
        log_url,
        "unused-credential",
        load_signing_key(key_file),
        spool,
        log_vkey=vkey,
        issuer="https://as.example.test",
        config=EmitterConfig(commit_interval=COMMIT_INTERVAL, backoff_base=0.05, backoff_max=0.2),
    )
    emit = emitter.emit_durable if mode == "durable" else emitter.emit
    fd = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    number = 0
    while True:
        jti = emit({"type": "login-succeeded", "sub": f"pseudonym-{number}"})
        os.write(fd, f"{jti} {time.monotonic_ns()}\n".encode("ascii"))
        number += 1
        time.sleep(0.0005)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
