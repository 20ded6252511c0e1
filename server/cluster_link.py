"""The local link: front ends hand submissions straight to the sequencing process on their host.

In a cluster (:mod:`server.cluster`) a front end that does not sequence would otherwise put
each submission in PostgreSQL's pending queue and learn its answer from a notification and a
read of the tiles: about a millisecond of CPU across the processes and the database per
submission. When the sequencing process runs on the same host it also listens on a local
socket, and front ends there send it their prepared submissions directly; it sequences them
exactly like its own and answers with the finished results (index, stored leaf hash, signed
checkpoint and inclusion proof). The queue stays the path of every front end that cannot reach
the link (another host, the link not up yet, a sequencer that just changed).

Address
    A Linux abstract Unix socket (no file to leave behind or clean up), named
    ``\\0etch-link-<32 hex>`` with the first 16 bytes of
    SHA-256("etch/cluster-link/v1" || 0x00 || database URL || 0x00 || origin): processes of one
    log on one host (same database URL, same origin) find each other; two logs never share a
    link. Abstract sockets carry no file permissions, so the sequencing process accepts a
    connection only from a process of its own user (``SO_PEERCRED``): nobody else on the host
    can hand it entries that skipped the front end's authentication and validation.

Frames
    Each message is a 4-byte big-endian length and that many bytes of CBOR (at most
    :data:`MAX_FRAME`). A request is ``[id, [[data, leaf_hash, idempotency_key or null,
    [[kind, value]...], log_time]...]]``; the answer, in any order, ``[id, 0, [note...],
    [[index, leaf_hash, duplicate, tree_size, note number, proof hashes concatenated]...]]``
    (results in request order, each checkpoint note sent once per answer), or
    ``[id, 1, message, retry_after or null]`` (the sequencer cannot take them: 503), or
    ``[id, 2, message]`` (this process no longer sequences: the front end uses the queue).

Failures
    A front end that loses its connection while requests are in flight does not know whether
    they were committed; it hands them to the queue, where deduplication answers any entry the
    sequencer did commit with its original index (flagged ``duplicate``). A malformed frame
    ends the connection. Nothing here is trusted more than the queue is: both sides run the
    same code under the same user, and the log's integrity rests on the sequencer's own checks
    and the checkpoint compare-and-swap, not on the link.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final

import cbor2

from server.sequencer import Sequenced, SequencerStopped, Submission

__all__ = [
    "MAX_FRAME",
    "LinkClient",
    "LinkLost",
    "LinkServer",
    "Moved",
    "decode_answer",
    "decode_request",
    "encode_answer",
    "encode_request",
    "link_address",
]

log = logging.getLogger(__name__)

MAX_FRAME: Final = 64 * 1024 * 1024
"""Largest frame either side accepts; a larger declared length ends the connection."""

_FLUSH_BYTES: Final = 4 * 1024 * 1024
"""A front end starts a new request frame once the entries of one reach this many bytes."""

_HEADER: Final = struct.Struct(">I")

_OK: Final = 0
_STOPPED: Final = 1
_MOVED: Final = 2


class LinkLost(Exception):  # noqa: N818 (it names a state, not a programming error)
    """The link is down or was lost with requests in flight: use the queue (outcome unknown)."""


class Moved(LinkLost):
    """The process at the link no longer sequences: use the queue."""


def link_address(dsn: str, origin: str) -> str:
    """Return the abstract socket name of the link of the log ``origin`` in database ``dsn``."""
    digest = hashlib.sha256(
        b"etch/cluster-link/v1\x00" + dsn.encode("utf-8") + b"\x00" + origin.encode("utf-8")
    ).hexdigest()
    return "\x00etch-link-" + digest[:32]


def _frame(payload: Any) -> bytes:
    body = cbor2.dumps(payload)
    return _HEADER.pack(len(body)) + body


def encode_request(request_id: int, submissions: Sequence[Submission]) -> bytes:
    """Return the request frame handing ``submissions`` to the sequencer."""
    return _frame(
        [
            request_id,
            [
                [
                    s.data,
                    s.leaf_hash,
                    s.idempotency_key,
                    [list(k) for k in s.lookup_keys],
                    s.log_time,
                ]
                for s in submissions
            ],
        ]
    )


def _is_bytes(value: object, length: int | None = None) -> bool:
    return isinstance(value, bytes) and (length is None or len(value) == length)


def decode_request(message: Any) -> tuple[int, list[Submission]]:
    """Return the id and submissions of a decoded request frame. Raises ValueError if malformed."""
    if not (isinstance(message, list) and len(message) == 2 and isinstance(message[0], int)):
        raise ValueError("not a request")
    request_id, items = message
    if not isinstance(items, list):
        raise ValueError("the submissions are not a list")
    out: list[Submission] = []
    for item in items:
        if not (isinstance(item, list) and len(item) == 5):
            raise ValueError("a submission is not a 5-item list")
        data, leaf_hash, key, lookup, log_time = item
        if not (_is_bytes(data) and _is_bytes(leaf_hash, 32)):
            raise ValueError("bad entry or leaf hash")
        if not (key is None or isinstance(key, str)) or not isinstance(log_time, int):
            raise ValueError("bad idempotency key or log time")
        if not isinstance(lookup, list) or not all(
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)
            for pair in lookup
        ):
            raise ValueError("bad lookup keys")
        out.append(
            Submission(
                data=data,
                leaf_hash=leaf_hash,
                idempotency_key=key,
                lookup_keys=tuple((pair[0], pair[1]) for pair in lookup),
                log_time=log_time,
            )
        )
    return request_id, out


def encode_answer(request_id: int, results: Sequence[Sequenced]) -> bytes:
    """Return the answer frame carrying ``results`` (each distinct checkpoint note once)."""
    notes: dict[bytes, int] = {}
    rows = []
    for r in results:
        number = notes.setdefault(r.checkpoint, len(notes))
        rows.append([r.index, r.leaf_hash, r.duplicate, r.tree_size, number, b"".join(r.proof)])
    return _frame([request_id, _OK, list(notes), rows])


def decode_answer(message: Any) -> tuple[int, list[Sequenced] | BaseException]:
    """Return the id of a decoded answer frame and its results or the error it reports.

    The error is SequencerStopped (the sequencer cannot take the submissions) or Moved.
    Raises ValueError if the frame is malformed.
    """
    if not (isinstance(message, list) and len(message) >= 2 and isinstance(message[0], int)):
        raise ValueError("not an answer")
    request_id, kind = message[0], message[1]
    if kind == _STOPPED and len(message) == 4 and isinstance(message[2], str):
        retry = message[3]
        if not (retry is None or isinstance(retry, int)):
            raise ValueError("bad retry_after")
        return request_id, SequencerStopped(message[2], retry_after=retry)
    if kind == _MOVED and len(message) == 3 and isinstance(message[2], str):
        return request_id, Moved(message[2])
    if kind != _OK or len(message) != 4:
        raise ValueError("unknown answer")
    notes, rows = message[2], message[3]
    if not (isinstance(notes, list) and all(_is_bytes(n) for n in notes)):
        raise ValueError("bad checkpoint notes")
    if not isinstance(rows, list):
        raise ValueError("bad results")
    out: list[Sequenced] = []
    for row in rows:
        if not (isinstance(row, list) and len(row) == 6):
            raise ValueError("a result is not a 6-item list")
        index, leaf_hash, duplicate, tree_size, number, proof = row
        if not (
            isinstance(index, int)
            and isinstance(tree_size, int)
            and 0 <= index < tree_size
            and isinstance(duplicate, bool)
            and _is_bytes(leaf_hash, 32)
            and isinstance(number, int)
            and 0 <= number < len(notes)
            and _is_bytes(proof)
            and len(proof) % 32 == 0
        ):
            raise ValueError("bad result")
        out.append(
            Sequenced(
                index,
                leaf_hash,
                duplicate,
                tree_size,
                notes[number],
                tuple(proof[k : k + 32] for k in range(0, len(proof), 32)),
            )
        )
    return request_id, out


def _fail(futures: Iterable[asyncio.Future[Any]], error: BaseException) -> None:
    """Fail every future of ``futures`` not done yet with ``error``."""
    for future in futures:
        if not future.done():
            future.set_exception(error)


class _Frames:
    """Splits a byte stream into decoded CBOR frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        """Return the messages completed by ``data``. Raises ValueError on a malformed stream."""
        buffer = self._buffer
        buffer += data
        messages = []
        offset = 0
        while len(buffer) - offset >= 4:
            (length,) = _HEADER.unpack_from(buffer, offset)
            if length > MAX_FRAME:
                raise ValueError(f"a frame of {length} bytes is over the limit")
            end = offset + 4 + length
            if len(buffer) < end:
                break
            try:
                messages.append(cbor2.loads(bytes(buffer[offset + 4 : end])))
            except Exception as exc:  # cbor2 raises several types for malformed input
                raise ValueError(f"malformed CBOR frame: {type(exc).__name__}") from None
            offset = end
        if offset:
            del buffer[:offset]
        return messages


Submit = Callable[[list[Submission]], Awaitable[list[Sequenced]]]
"""Sequences submissions; raises SequencerStopped, or Moved when this process stopped sequencing."""


class _ServerConnection(asyncio.Protocol):
    def __init__(self, server: LinkServer) -> None:
        self._server = server
        self._frames = _Frames()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        sock = transport.get_extra_info("socket")
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _, uid, _ = struct.unpack("3i", creds)
        except OSError:
            uid = -1
        if uid != os.getuid():
            log.warning("refused a link connection from user id %d", uid)
            transport.abort()
            return
        self._transport = transport
        self._server.connections.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._server.connections.discard(self._transport)

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None:
            return
        try:
            messages = self._frames.feed(data)
            requests = [decode_request(m) for m in messages]
        except ValueError as exc:
            log.warning("closing a link connection: %s", exc)
            transport.abort()
            return
        for request_id, submissions in requests:
            self._server.spawn(self._answer(transport, request_id, submissions))

    async def _answer(
        self, transport: asyncio.Transport, request_id: int, submissions: list[Submission]
    ) -> None:
        try:
            frame = encode_answer(request_id, await self._server.submit(submissions))
        except Moved as exc:
            frame = _frame([request_id, _MOVED, str(exc)])
        except SequencerStopped as exc:
            frame = _frame([request_id, _STOPPED, str(exc), exc.retry_after])
        if not transport.is_closing():
            transport.write(frame)


class LinkServer:
    """The sequencing process's end of the link: sequences what front ends send it.

    ``submit`` is the sequencer's own submit (raising SequencerStopped, or Moved when the
    process no longer sequences). :meth:`start` raises OSError when the address is taken (a
    previous sequencer on this host still holds it: front ends then use the queue).
    """

    def __init__(self, address: str, submit: Submit) -> None:
        self.address = address
        self.submit = submit
        self.connections: set[asyncio.Transport] = set()
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Awaitable[None]) -> None:
        """Run ``coro`` as a task this server cancels when it stops."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        """Listen on the address. Raises OSError."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(
            lambda: _ServerConnection(self), self.address, start_serving=True
        )

    async def stop(self) -> None:
        """Stop listening, drop every connection (their in-flight requests go to the queue)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for transport in list(self.connections):
            transport.abort()
        self.connections.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class _ClientConnection(asyncio.Protocol):
    def __init__(self, client: LinkClient) -> None:
        self._client = client
        self._frames = _Frames()
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._client._lost(self, "the link connection closed")

    def data_received(self, data: bytes) -> None:
        try:
            answers = [decode_answer(m) for m in self._frames.feed(data)]
        except ValueError as exc:
            log.warning("closing the link: %s", exc)
            if self.transport is not None:
                self.transport.abort()
            return
        for request_id, outcome in answers:
            self._client._answered(request_id, outcome)


class LinkClient:
    """A front end's end of the link (one connection, reopened when needed).

    :meth:`submit` raises LinkLost when the link cannot be used (then the caller uses the
    queue), SequencerStopped when the sequencer refused the submissions.
    """

    def __init__(self, address: str, *, retry_interval: float = 0.5) -> None:
        self.address = address
        self.retry_interval = retry_interval
        self._conn: _ClientConnection | None = None
        self._connecting: asyncio.Future[_ClientConnection | None] | None = None
        self._down_until = 0.0
        self._next_id = 0
        self._waiting: dict[int, list[tuple[int, asyncio.Future[list[Sequenced]]]]] = {}
        self._batch: list[tuple[Sequence[Submission], asyncio.Future[list[Sequenced]]]] = []
        self._flush_scheduled = False
        self.sent = 0

    @property
    def up(self) -> bool:
        """Whether a connection is open now."""
        return self._conn is not None

    async def _connection(self) -> _ClientConnection | None:
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        self._conn = None
        if time.monotonic() < self._down_until:
            return None
        if self._connecting is not None:
            return await asyncio.shield(self._connecting)
        loop = asyncio.get_running_loop()
        self._connecting = loop.create_future()
        result: _ClientConnection | None = None
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_unix_connection(lambda: _ClientConnection(self), self.address), 1.0
            )
            if not protocol.closed:  # the other end may refuse at once (SO_PEERCRED)
                result = protocol
                self._conn = result
        except (OSError, TimeoutError):
            self._down_until = time.monotonic() + self.retry_interval
        finally:
            connecting, self._connecting = self._connecting, None
            connecting.set_result(result)
        return result

    async def submit(self, submissions: Sequence[Submission]) -> list[Sequenced]:
        """Have the sequencer sequence ``submissions``; results in the same order.

        Raises LinkLost (use the queue; the submissions may or may not have been committed),
        SequencerStopped.
        """
        conn = await self._connection()
        if conn is None:
            raise LinkLost("no link to a sequencer")
        future: asyncio.Future[list[Sequenced]] = asyncio.get_running_loop().create_future()
        self._batch.append((submissions, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        """Send every batched submission: one request frame per few MiB of entries."""
        self._flush_scheduled = False
        batch, self._batch = self._batch, []
        conn = self._conn
        if conn is None or conn.closed or conn.transport is None or conn.transport.is_closing():
            self._conn = None
            _fail((future for _, future in batch), LinkLost("the link connection closed"))
            return
        start = 0
        while start < len(batch):
            size, end = 0, start
            while end < len(batch) and (end == start or size < _FLUSH_BYTES):
                size += sum(len(s.data) for s in batch[end][0])
                end += 1
            group = [(subs, future) for subs, future in batch[start:end] if not future.done()]
            start = end
            if not group:
                continue
            self._next_id += 1
            request_id = self._next_id
            flat = [s for subs, _ in group for s in subs]
            try:
                frame = encode_request(request_id, flat)
            except (ValueError, TypeError, cbor2.CBOREncodeError) as exc:  # the queue takes them
                _fail(
                    (future for _, future in group),
                    LinkLost(f"cannot encode ({type(exc).__name__})"),
                )
                continue
            self._waiting[request_id] = [(len(subs), future) for subs, future in group]
            conn.transport.write(frame)
            self.sent += len(flat)

    def _answered(self, request_id: int, outcome: list[Sequenced] | BaseException) -> None:
        waiting = self._waiting.pop(request_id, None)
        if waiting is None:
            return
        if isinstance(outcome, BaseException):
            _fail((future for _, future in waiting), outcome)
            return
        if len(outcome) != sum(count for count, _ in waiting):
            log.warning("a link answer has the wrong number of results; closing the link")
            _fail((future for _, future in waiting), LinkLost("a malformed answer"))
            if self._conn is not None and self._conn.transport is not None:
                self._conn.transport.abort()
            return
        offset = 0
        for count, future in waiting:
            if not future.done():
                future.set_result(outcome[offset : offset + count])
            offset += count

    def _lost(self, conn: _ClientConnection, reason: str) -> None:
        if self._conn is not conn:
            return  # never became the connection (refused at once): nothing was sent on it
        self._conn = None
        waiting, self._waiting = self._waiting, {}
        _fail((future for group in waiting.values() for _, future in group), LinkLost(reason))

    def close(self) -> None:
        """Close the connection; requests in flight fail with LinkLost."""
        conn = self._conn
        if conn is not None and conn.transport is not None:
            conn.transport.abort()
