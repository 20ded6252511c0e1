"""A small in-memory log that speaks Etch's batch submission format, for the emitter's tests. It
answers ``POST /v1/events/batch`` and ``POST /v1/events/signed-batch`` (batch-root signatures:
the batch message and tree recomputed here from the naive RFC 6962 definitions of
:mod:`tests.naive`, whole batches without paths only, as the emitter sends them; turn it off
with ``signed_batches = False`` to look like an older log) the way the real log does
(``{"results": [...]}`` in request order, each a result with a real RFC 6962 inclusion proof
against a checkpoint signed with its own key, or an RFC 9457 problem), and it checks what a real
log checks: the bearer credential, the Ed25519 signature over ``b"etch/event/v1\\x00" +
deterministic CBOR(event)`` (computed here with ``server.codec``, so the client's encoder is
checked against the server's), and ``jti`` idempotency (same content: the original index with
``duplicate``; other content: 409). Faults can be switched on while it runs: ``down``
(connection refused / 503), a fixed status for every request, a per-event problem, or a
tampering function for results.

Use it in process through :meth:`FakeLog.transport` (an ``httpx.MockTransport``), or over
real HTTP on 127.0.0.1 with :meth:`FakeLog.serve`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from merkle.checkpoint import Checkpoint, format_checkpoint
from merkle.hashing import leaf_hash, node_hash
from merkle.note import Ed25519Signer, sign_note
from merkle.receipt import Receipt, format_receipt
from merkle.tree import build_inclusion_proof, inclusion_nodes, root_from_hashes, root_nodes
from server.codec import encode_deterministic
from tests import naive

SIGNATURE_CONTEXT = b"etch/event/v1\x00"
BATCH_CONTEXT = b"etch/event-batch/v1\x00"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def problem(status: int, slug: str, detail: str) -> dict[str, Any]:
    """Return an RFC 9457 problem object like the log's."""
    return {"type": f"urn:etch:error:{slug}", "title": slug, "status": status, "detail": detail}


def naive_log_time(entry: bytes) -> int:
    """Return the ``log_time`` of a leaf this fake log wrote."""
    import cbor2

    value: int = cbor2.loads(entry)["log_time"]
    return value


class FakeLog:
    """An in-memory Etch-like log for one submitter (see the module docstring)."""

    def __init__(
        self,
        submitter_key: Ed25519PublicKey,
        *,
        credential: str = "test-credential",
        submitter: str = "oauth-test",
        origin: str = "fake.test/log",
    ) -> None:
        self.signer = Ed25519Signer.generate(origin)
        self.vkey = self.signer.vkey
        self.origin = origin
        self.credential = credential
        self.submitter = submitter
        self.submitter_key = submitter_key
        self.entries: list[bytes] = []
        self.events: list[dict[str, Any]] = []
        self._leaves: list[bytes] = []
        self._nodes: dict[tuple[int, int], bytes] = {}
        self._by_jti: dict[str, tuple[int, bytes]] = {}
        self.lock = threading.Lock()
        self.down = False
        self.status: int | None = None
        self.retry_after: str | None = None
        self.event_problem: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None
        self.tamper: Callable[[dict[str, Any]], dict[str, Any]] | None = None
        self.requests = 0
        self.batch_sizes: list[int] = []
        self.signed_batches = True
        self.signed_batch_sizes: list[int] = []

    # -- tree ---------------------------------------------------------------------------------

    def _node(self, level: int, index: int) -> bytes:
        """Return the hash of the complete subtree (level, index); cached (it never changes)."""
        if level == 0:
            return self._leaves[index]
        key = (level, index)
        cached = self._nodes.get(key)
        if cached is None:
            left = self._node(level - 1, 2 * index)
            cached = node_hash(left, self._node(level - 1, 2 * index + 1))
            self._nodes[key] = cached
        return cached

    def checkpoint(self) -> bytes:
        """Return a signed checkpoint note for the current tree."""
        size = len(self._leaves)
        root = root_from_hashes([self._node(n.level, n.index) for n in root_nodes(size)])
        return sign_note(format_checkpoint(Checkpoint(self.origin, size, root)), [self.signer])

    def _result(self, index: int, duplicate: bool, note: bytes) -> dict[str, Any]:
        size = len(self._leaves)
        hashes = [self._node(n.level, n.index) for n in inclusion_nodes(index, size)]
        proof = build_inclusion_proof(index, size, hashes)
        return {
            "index": index,
            "leaf_hash": _b64(self._leaves[index]),
            "duplicate": duplicate,
            "tree_size": size,
            "checkpoint": note.decode("utf-8"),
            "inclusion_proof": [_b64(h) for h in proof],
            "receipt": format_receipt(Receipt(index, tuple(proof), note)).decode("utf-8"),
            "entry": _b64(self.entries[index]),
        }

    # -- requests -----------------------------------------------------------------------------

    def _admit(self, envelope: object) -> tuple[int, bool] | dict[str, Any]:
        """Check one envelope; append it or find its duplicate; return (index, dup) or a problem."""
        if not isinstance(envelope, dict) or set(envelope) != {"event", "signature"}:
            return problem(400, "bad-event", "an envelope is {event, signature}")
        event, encoded = envelope["event"], envelope["signature"]
        if not isinstance(event, dict) or not isinstance(encoded, str):
            return problem(400, "bad-event", "bad envelope member types")
        try:
            signature = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            return problem(400, "bad-signature", "signature is not base64")
        data = encode_deterministic(event)
        try:
            self.submitter_key.verify(signature, SIGNATURE_CONTEXT + data)
        except InvalidSignature:
            return problem(403, "bad-signature", "the signature does not verify")
        if self.event_problem is not None:
            injected = self.event_problem(event)
            if injected is not None:
                return injected
        jti = event.get("jti")
        if not isinstance(jti, str):
            return problem(422, "bad-event", "jti is required")
        previous = self._by_jti.get(jti)
        if previous is not None:
            index, content = previous
            if content != data + signature:
                return problem(409, "duplicate-jti", "this jti was logged with other content")
            return index, True
        entry = encode_deterministic(
            {
                "v": 1,
                "submitter": self.submitter,
                "event": event,
                "signature": signature,
                "log_time": time.time_ns() // 1_000_000,
            }
        )
        index = len(self.entries)
        self.entries.append(entry)
        self.events.append(event)
        self._leaves.append(leaf_hash(entry))
        self._by_jti[jti] = (index, data + signature)
        return index, False

    def _admit_signed(
        self, item: dict[str, Any], size: int, signature: bytes, path: list[bytes]
    ) -> tuple[int, bool] | dict[str, Any]:
        """Append one event of a verified signed batch, or find its duplicate."""
        event = item["event"]
        data = encode_deterministic(event)
        if self.event_problem is not None:
            injected = self.event_problem(event)
            if injected is not None:
                return injected
        jti = event.get("jti")
        if not isinstance(jti, str):
            return problem(422, "bad-event", "jti is required")
        previous = self._by_jti.get(jti)
        if previous is not None:
            index, content = previous
            if not content.startswith(data) or len(content) not in (len(data), len(data) + 64):
                return problem(409, "duplicate-jti", "this jti was logged with other content")
            return index, True
        batch = {"size": size, "index": item["index"], "path": path, "signature": signature}
        entry = encode_deterministic(
            {
                "v": 1,
                "submitter": self.submitter,
                "event": event,
                "batch": batch,
                "log_time": time.time_ns() // 1_000_000,
            }
        )
        index = len(self.entries)
        self.entries.append(entry)
        self.events.append(event)
        self._leaves.append(leaf_hash(entry))
        self._by_jti[jti] = (index, data)
        return index, False

    def _signed_batch(self, body: bytes) -> httpx.Response:
        """Answer ``POST /v1/events/signed-batch`` for a whole batch without paths."""
        try:
            batch = json.loads(body)
            size, events = batch["size"], batch["events"]
            root = base64.b64decode(batch["root"], validate=True)
            signature = base64.b64decode(batch["signature"], validate=True)
        except (ValueError, KeyError, TypeError):
            return httpx.Response(400, json=problem(400, "bad-event", "not a signed batch"))
        if not isinstance(events, list) or len(events) != size:
            return httpx.Response(422, json=problem(422, "bad-event", "not a whole batch"))
        name = self.submitter.encode()
        message = BATCH_CONTEXT + bytes([len(name)]) + name + size.to_bytes(8, "big") + root
        try:
            self.submitter_key.verify(signature, message)
        except InvalidSignature:
            return httpx.Response(422, json=problem(422, "bad-signature", "bad batch signature"))
        by_index = {item["index"]: item for item in events}
        encodings = [encode_deterministic(by_index[i]["event"]) for i in range(size)]
        if naive.mth(encodings) != root:
            return httpx.Response(422, json=problem(422, "bad-signature", "not the signed root"))
        self.signed_batch_sizes.append(size)
        admitted = [
            self._admit_signed(item, size, signature, naive.path(item["index"], encodings))
            for item in events
        ]
        note = self.checkpoint() if self._leaves else b""
        results: list[dict[str, Any]] = []
        for outcome in admitted:
            if isinstance(outcome, dict):
                results.append(outcome)
                continue
            result = self._result(outcome[0], outcome[1], note)
            del result["receipt"]
            result["checkpoint"] = 0
            if not outcome[1]:  # a duplicate keeps the stored entry
                del result["entry"]
                result["log_time"] = naive_log_time(self.entries[outcome[0]])
            results.append(self.tamper(result) if self.tamper is not None else result)
        checkpoints = [note.decode("utf-8")]
        return httpx.Response(200, json={"checkpoints": checkpoints, "results": results})

    def handle(self, method: str, path: str, headers: httpx.Headers, body: bytes) -> httpx.Response:
        """Answer one request (the transport-independent core)."""
        with self.lock:
            self.requests += 1
            if self.status is not None:
                extra = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
                return httpx.Response(
                    self.status, json=problem(self.status, "injected", "injected"), headers=extra
                )
            routes = ["/v1/events/batch"]
            if self.signed_batches:
                routes.append("/v1/events/signed-batch")
            if method != "POST" or path not in routes:
                return httpx.Response(404, json=problem(404, "not-found", "no such route"))
            if headers.get("authorization") != f"Bearer {self.credential}":
                return httpx.Response(401, json=problem(401, "unauthorized", "bad credential"))
            if path == "/v1/events/signed-batch":
                return self._signed_batch(body)
            try:
                batch = json.loads(body)
            except ValueError:
                return httpx.Response(400, json=problem(400, "bad-json", "not JSON"))
            if not isinstance(batch, list):
                return httpx.Response(400, json=problem(400, "bad-event", "not an array"))
            self.batch_sizes.append(len(batch))
            admitted = [self._admit(envelope) for envelope in batch]
            note = self.checkpoint() if self._leaves else b""
            results: list[dict[str, Any]] = []
            for item in admitted:
                if isinstance(item, dict):
                    results.append(item)
                    continue
                result = self._result(item[0], item[1], note)
                results.append(self.tamper(result) if self.tamper is not None else result)
            return httpx.Response(200, json={"results": results})

    def transport(self) -> httpx.MockTransport:
        """Return an in-process transport; ``down`` makes it refuse connections."""

        def handler(request: httpx.Request) -> httpx.Response:
            if self.down:
                raise httpx.ConnectError("connection refused (fake log is down)", request=request)
            return self.handle(request.method, request.url.path, request.headers, request.read())

        return httpx.MockTransport(handler)

    @contextlib.contextmanager
    def serve(self) -> Iterator[str]:
        """Serve over HTTP on 127.0.0.1 (``down`` answers 503); yield the base URL."""
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if fake.down:
                    response = httpx.Response(
                        503, json=problem(503, "unavailable", "down"), headers={"Retry-After": "0"}
                    )
                else:
                    response = fake.handle(
                        "POST", self.path, httpx.Headers(dict(self.headers.items())), body
                    )
                content = response.read()
                self.send_response(response.status_code)
                for name, value in response.headers.items():
                    if name.lower() not in ("content-length", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def log_message(self, format: str, *args: Any) -> None:
                return

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            server.server_close()
