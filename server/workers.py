"""``etch serve --workers N``: N cluster processes of one log sharing one listening socket.

The parent binds the port once (so ``--port 0`` works and every worker listens on the same
port), then forks N workers, each running :func:`server.__main__.serve` in cluster mode
(:mod:`server.cluster`). Where the system has ``SO_REUSEPORT`` (Linux) each worker listens on a
socket of its own bound to that port, and the kernel spreads new connections evenly over the
workers' sockets by a hash of their addresses; the parent's socket only holds the port (it never
listens, so no connection waits on it). With one shared listening socket instead, the first
worker to wake takes the connection: a burst of keep-alive connections (a load test's, a
proxy's pool) piles onto whichever worker is idle at that moment, and stays there for good
(measured: 43 and 21 of 64 connections on two workers). It creates
the log key first, so workers never race to create it. A worker that dies (``kill -9``, a
crash) is started again after a second; while it is gone, the other workers keep answering and
one of them takes over sequencing. SIGTERM or SIGINT stops every worker (SIGTERM each, then
SIGKILL after ``grace`` seconds) and the parent exits 0; it exits 1 when a worker refuses to
start (exit status 1, e.g. a stored log that does not verify).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any, Final

from server.config import Settings
from server.keys import KeyFileError, load_or_create_log_key

__all__ = ["REUSE_PORT", "bind_socket", "serve_workers", "supervise"]

log = logging.getLogger("etch.workers")


REUSE_PORT: Final = hasattr(socket, "SO_REUSEPORT")
"""Whether workers listen on sockets of their own (``SO_REUSEPORT``) instead of a shared one."""


def bind_socket(
    host: str, port: int, *, reuse_port: bool = False, listen: bool = True
) -> socket.socket:
    """Return a TCP socket bound to ``host:port`` (``port`` 0: any free port), listening.

    ``reuse_port`` sets ``SO_REUSEPORT`` (requires :data:`REUSE_PORT`): other sockets with it
    may bind the same port, and the kernel spreads connections over those that listen.
    ``listen=False`` only binds (holds the port). Raises OSError when the address cannot be
    bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says TCP,
    # and accepted connections inherit it. Without it every answer written in two parts (head,
    # body) waited for the client's delayed ACK: about 40 ms per keep-alive request.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if listen:
            sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def supervise(
    count: int,
    sock: socket.socket,
    worker: Callable[[socket.socket], int],
    *,
    grace: float = 15.0,
) -> int:
    """Run ``worker(sock)`` in ``count`` forked processes until SIGTERM/SIGINT; return the status.

    Requires ``count >= 1`` and no event loop or thread running in this process (fork). A worker
    exiting with status 1 (refused to start) stops everything with status 1; any other death is
    followed by a restart one second later.
    """
    context = multiprocessing.get_context("fork")
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

    def start() -> BaseProcess:
        process = context.Process(target=_run_worker, args=(worker, sock), daemon=False)
        process.start()
        return process

    workers = [start() for _ in range(count)]
    status = 0
    try:
        while not stopping:
            time.sleep(0.2)
            for position, process in enumerate(workers):
                if process.is_alive():
                    continue
                if process.exitcode == 1:
                    log.error("worker %d refused to start; stopping", process.pid)
                    status = 1
                    stopping = True
                    break
                log.warning(
                    "worker %d exited (%s); starting another", process.pid, process.exitcode
                )
                time.sleep(1.0)
                workers[position] = start()
    finally:
        for process in workers:
            if process.is_alive() and process.pid is not None:
                process.terminate()
        deadline = time.monotonic() + grace
        for process in workers:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return status


def _run_worker(worker: Callable[[socket.socket], int], sock: socket.socket) -> None:
    """Body of a worker process: default signal handling, then the worker's exit status."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL)
    raise SystemExit(worker(sock))


def serve_workers(settings: Settings, serve: Callable[..., Coroutine[Any, Any, int]]) -> int:
    """Run ``settings.workers`` cluster processes of the log on one socket; return the status.

    ``serve`` is :func:`server.__main__.serve` (passed in to keep the import graph acyclic).
    Creates the log key before forking. Exit status: 0 after SIGTERM/SIGINT, 1 when the key
    cannot be read or created, the address cannot be bound, or a worker refuses to start.
    """
    try:
        load_or_create_log_key(settings.data_dir, settings.origin)
        sock = bind_socket(
            settings.host, settings.port, reuse_port=REUSE_PORT, listen=not REUSE_PORT
        )
    except (KeyFileError, OSError) as exc:
        print(f"etch serve: {exc}", file=sys.stderr)
        return 1
    host, port = sock.getsockname()[:2]
    print(f"etch: {settings.workers} workers on http://{host}:{port}", flush=True)
    single = dataclasses.replace(settings, workers=1, cluster=True, port=port)

    def worker(shared: socket.socket) -> int:
        if not REUSE_PORT:
            return asyncio.run(serve(single, sock=shared))
        try:
            listener = bind_socket(settings.host, port, reuse_port=True)
        except OSError as exc:
            print(f"etch serve: {exc}", file=sys.stderr)
            return 1
        shared.close()  # the parent holds the port; only this worker's socket takes connections
        return asyncio.run(serve(single, sock=listener))

    try:
        return supervise(settings.workers, sock, worker)
    finally:
        sock.close()
