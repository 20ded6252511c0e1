"""Benchmark of the client: a full audit of a large log over loopback, and offline receipts.

Run from the project root::

    .venv/bin/python -m benchmarks.bench_client [--entries 1000000] [--window 32]
        [--receipts 2000] [--skip-audit] [--json]

Both targets compare a rate with another measured in the same process in the same run. The
machine is shared (two cores, other work running), so preemption only ever slows a
measurement down: where a figure is repeated, the best repetition counts, and client CPU time
is reported beside wall time.

**Audit.** A log of ``--entries`` Etch event leaves (about 330 bytes each, every one distinct)
is written straight into an SQLite log database through the storage API
(:meth:`server.storage.base.Storage.commit`, batches of 65,536 entries, tiles from
:func:`merkle.tiles.extend_tiles`, each checkpoint signed with the log's key as the sequencer
signs it), then served by ``python -m server`` (uvicorn on 127.0.0.1, public entries). The
``etch audit`` code (:class:`client.audit.Auditor` over a :class:`client.logclient.LogClient`)
audits it: every entry bundle and every tile downloaded over HTTP, every leaf hash, tile and
the root recomputed and compared. The bare baseline is SHA-256 over the same entries and the
same tree in a plain loop (one leaf hash per entry, then each level paired up: ``n - 1`` node
hashes), measured before and after the audit in the same run; the figure is the audit's
entries per second over the better of the two. Target: at least 60%. The same audit is also
run against the same log laid out as static tiles behind a minimal keep-alive file server
(what a CDN or bucket in front of a tile directory does), which separates the client's rate
from the Etch server's; and each run reports its client CPU per entry against the bare
loop's CPU per entry, and the server's CPU seconds. The audit reads the full tiles and bundles
pipelined (2 connections, 8 requests in flight on each, ``2 * --window`` requests ahead).
``--log-dir DIR`` builds the log there once and reuses it in later runs.

**Receipts.** ``--receipts`` C2SP tlog-proof receipts (entries from the same tree, the entry in
the ``extra`` line, inclusion proofs of 20 hashes at 1,000,000 entries) on a checkpoint signed
by the log and cosigned by 2 of 3 witnesses, verified with :func:`client.logclient.
verify_receipt_file` under the policy "2 of these 3" (what ``etch verify`` runs). The bare
baseline is the three Ed25519 verifications each receipt needs (the log's signature and the
two cosignatures of the quorum), with the public keys loaded once and the messages prepared
beforehand, in rounds of 20 receipts alternating with the bare verifications; the best
round of each counts, and the median of the paired per-round ratios is reported beside it.
Target: at least 80%.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from client.audit import Auditor
from client.logclient import LogClient, policy_for_vkey, verify_receipt_file
from client.tokens import token_ref
from merkle.checkpoint import Checkpoint, format_checkpoint
from merkle.compact import CompactRange
from merkle.cosignature import CosignatureSigner, cosignature_message
from merkle.hashing import EMPTY_ROOT
from merkle.note import Ed25519Signer, add_signatures, parse_note, sign_note
from merkle.policy import parse_policy
from merkle.receipt import Receipt, format_receipt, parse_receipt
from merkle.tiles import (
    ENTRIES_LEVEL,
    TILE_WIDTH,
    Tile,
    edge_tiles,
    extend_tiles,
    format_entry_bundle,
    format_tile_path,
)
from merkle.tree import build_inclusion_proof, inclusion_nodes
from server.codec import Value, encode_deterministic
from server.keys import load_or_create_log_key
from server.leaves import encode_event_leaf
from server.storage import Batch, NewEntry, open_storage

ORIGIN = "bench.example/audit"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
NOW = 1_767_225_600
_sha256 = hashlib.sha256


def make_entries(count: int) -> list[bytes]:
    """Return ``count`` distinct event leaves as the OAuth layer writes them."""
    entries = []
    signature = bytes(range(64))
    for i in range(count):
        event: dict[str, Value] = {
            "iss": "https://as.example.com",
            "jti": f"{i:016x}",
            "iat": NOW + i // 1000,
            "type": "token-issued",
            "client_id": f"app-{i % 97}",
            "sub": f"pseudonym-{i % 10007}",
            "token_type": "access_token",
            "grant_type": "authorization_code",
            "scope": ["openid", "profile"],
            "token_ref": token_ref(i.to_bytes(8, "big")),
        }
        data = encode_deterministic(event)
        entries.append(encode_event_leaf("bench", data, signature, NOW * 1000 + i))
    return entries


def bare_tree(entries: Sequence[bytes]) -> tuple[float, float, list[list[bytes]]]:
    """Return (wall seconds, CPU seconds, levels): SHA-256 over the entries and the tree, bare.

    ``levels[0]`` are the leaf hashes, ``levels[k]`` the hashes of the complete subtrees of
    2**k leaves (an odd last node waits, as in RFC 6962's complete subtrees).
    """
    sha = _sha256
    started, cpu = time.perf_counter(), time.process_time()
    level = [sha(b"\x00" + e).digest() for e in entries]
    levels = [level]
    while len(level) > 1:
        pairs = range(0, len(level) - 1, 2)
        level = [sha(b"\x01" + level[i] + level[i + 1]).digest() for i in pairs]
        levels.append(level)
    return time.perf_counter() - started, time.process_time() - cpu, levels


async def write_log(
    data_dir: Path, entries: Sequence[bytes], batch: int = 65536
) -> tuple[str, bytes, dict[tuple[int, int], bytes]]:
    """Write ``entries`` into the log database of ``data_dir``.

    Returns the log's vkey, the final signed checkpoint and the final contents of every tile.
    """
    key = load_or_create_log_key(data_dir, ORIGIN)
    storage = open_storage(str(data_dir / "log.db"))
    await storage.open()

    def sign(size: int, root: bytes) -> bytes:
        return sign_note(format_checkpoint(Checkpoint(ORIGIN, size, root)), [key.signer])

    try:
        compact = CompactRange()
        note = sign(0, EMPTY_ROOT)
        await storage.commit(None, Batch((), {}, note, 0, compact.to_bytes()))
        edge: dict[int, bytes] = {}
        every: dict[tuple[int, int], bytes] = {}
        for start in range(0, len(entries), batch):
            chunk = entries[start : start + batch]
            hashes = [_sha256(b"\x00" + e).digest() for e in chunk]
            tiles = extend_tiles(start, edge, hashes)
            every.update(tiles)
            compact.extend(hashes)
            edge = {
                t.level: tiles.get((t.level, t.index)) or edge[t.level]
                for t in edge_tiles(compact.size)
            }
            new = [
                NewEntry(start + i, h, e, log_time=NOW * 1000 + start + i)
                for i, (h, e) in enumerate(zip(hashes, chunk, strict=True))
            ]
            previous, note = note, sign(compact.size, compact.root())
            await storage.commit(
                previous, Batch(new, tiles, note, compact.size, compact.to_bytes())
            )
    finally:
        await storage.close()
    return key.vkey, note, every


def write_static(
    root: Path, entries: Sequence[bytes], tiles: dict[tuple[int, int], bytes], note: bytes
) -> None:
    """Lay the log out as static C2SP tlog-tiles files (as a CDN or bucket would serve it)."""
    size = len(entries)
    (root / "checkpoint").parent.mkdir(parents=True, exist_ok=True)
    (root / "checkpoint").write_bytes(note)
    for (level, index), data in tiles.items():
        width = len(data) // 32
        path = root / format_tile_path(Tile(level, index, width))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for index in range(-(-size // TILE_WIDTH)):
        chunk = entries[index * TILE_WIDTH : (index + 1) * TILE_WIDTH]
        path = root / format_tile_path(Tile(ENTRIES_LEVEL, index, len(chunk)))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(format_entry_bundle(chunk))


async def serve_static(root: Path, port: int) -> None:
    """Serve the files under ``root`` over keep-alive HTTP/1.1 on 127.0.0.1 (GET only).

    A minimal static server, standing for the web server or CDN in front of a tile directory.
    """
    base = await asyncio.to_thread(root.resolve)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                target = head.split(b"\r\n", 1)[0].split(b" ")[1].decode("ascii")
                path = (base / target.lstrip("/")).resolve()
                if path.is_relative_to(base) and path.is_file():
                    status, body = b"200 OK", path.read_bytes()
                else:
                    status, body = b"404 Not Found", b"not found"
                writer.write(
                    b"HTTP/1.1 " + status + b"\r\nContent-Type: application/octet-stream\r\n"
                    b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, IndexError, UnicodeDecodeError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def process_cpu_seconds(pid: int) -> float:
    """Return the user + system CPU seconds process ``pid`` has used (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Served:
    """A log being served: its URL and the server's process ID."""

    url: str
    pid: int

    def cpu_seconds(self) -> float:
        """CPU seconds the server has used so far."""
        return process_cpu_seconds(self.pid)


@contextmanager
def serving(data_dir: Path, *, static: bool = False) -> Iterator[Served]:
    """Run ``python -m server`` on the log of ``data_dir`` (or the static server on a tile
    directory); yield its URL once it answers."""
    port = _free_port()
    command = [
        sys.executable, "-m", "server", "--data-dir", str(data_dir), "--origin", ORIGIN,
        "--host", "127.0.0.1", "--port", str(port), "--public-entries", "true",
        "--log-level", "warning",
    ]
    if static:
        command = [
            sys.executable, "-m", "benchmarks.bench_client", "--serve-static", str(data_dir),
            "--port", str(port),
        ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCH_")}
    process = subprocess.Popen(
        command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if process.poll() is not None:
                output = process.stderr.read().decode(errors="replace") if process.stderr else ""
                raise RuntimeError(f"the log did not start: {output}")
            try:
                probe = f"{url}/checkpoint" if static else f"{url}/healthz"
                if httpx.get(probe, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the log was not healthy within 600 s")
            time.sleep(0.2)
        yield Served(url, process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def run_audit(url: str, vkey: str, window: int, state: Path) -> tuple[float, int, int]:
    """Audit the served log; return (seconds, entries, tiles read)."""
    client = LogClient(
        url,
        policy_for_vkey(vkey),
        state_dir=state,
        compress=False,
        concurrency=min(window, 8),
        lean_http=True,
    )
    async with client:
        report = await Auditor(client, None, window=window, witnesses=False).run()
    return report.elapsed, report.entries, report.tiles


def _audit_against(
    served: Served, vkey: str, window: int, state: Path, entries: Sequence[bytes]
) -> dict[str, Any]:
    """Audit once, with bare SHA-256 measured before and after (the better of the two counts:
    the machine is shared, and preemption only ever slows a run down)."""
    before_wall, before_cpu, _ = bare_tree(entries)
    cpu, server_cpu = time.process_time(), served.cpu_seconds()
    seconds, audited, tiles = asyncio.run(run_audit(served.url, vkey, window, state))
    cpu, server_cpu = time.process_time() - cpu, served.cpu_seconds() - server_cpu
    after_wall, after_cpu, _ = bare_tree(entries)
    assert audited == len(entries)
    bare_rate = len(entries) / min(before_wall, after_wall)
    bare_cpu_rate = len(entries) / min(before_cpu, after_cpu)
    rate = audited / seconds
    return {
        "audit_seconds": round(seconds, 2),
        "audit_entries_per_s": round(rate),
        "bare_sha256_entries_per_s": round(bare_rate),
        "ratio": round(rate / bare_rate, 3),
        "audit_client_cpu_seconds": round(cpu, 2),
        "audit_entries_per_client_cpu_s": round(audited / cpu),
        "bare_sha256_entries_per_cpu_s": round(bare_cpu_rate),
        "cpu_ratio": round(audited / cpu / bare_cpu_rate, 3),
        "server_cpu_seconds": round(server_cpu, 2),
        "bare_wall_seconds": [round(before_wall, 2), round(after_wall, 2)],
        "tiles_and_bundles_read": tiles,
    }


def _build(root: Path, entries: list[bytes]) -> tuple[str, float]:
    """Build the log and its static copy under ``root`` unless a complete build of the same
    entries is there already; return (the log's vkey, build seconds, 0 when reused)."""
    data = root / "log"
    done = root / "built"
    digest = _sha256(b"".join(_sha256(e).digest() for e in entries)).hexdigest()
    if done.is_file() and done.read_text() == digest:
        return load_or_create_log_key(data, ORIGIN).vkey, 0.0
    started = time.perf_counter()
    vkey, note, tiles = asyncio.run(write_log(data, entries))
    write_static(root / "static", entries, tiles, note)
    done.write_text(digest)
    return vkey, time.perf_counter() - started


def bench_audit(
    entries: list[bytes], window: int, log_dir: Path | None = None
) -> dict[str, Any]:
    """Build the log (or reuse the one in ``log_dir``); audit it as served by ``python -m
    server`` and as static tiles."""
    results: dict[str, Any] = {
        "entries": len(entries),
        "entry_bytes_mean": round(sum(map(len, entries)) / len(entries), 1),
        "window": window,
        "target": 0.6,
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = log_dir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        vkey, seconds = _build(root, entries)
        results["build_seconds"] = round(seconds, 1)
        print(f"built a log of {len(entries):,} entries in {seconds:.1f} s", file=sys.stderr)
        with serving(root / "log") as served:
            results["etch_server"] = _audit_against(
                served, vkey, window, Path(tmp) / "a", entries
            )
        with serving(root / "static", static=True) as served:
            results["static_tiles"] = _audit_against(
                served, vkey, window, Path(tmp) / "b", entries
            )
    return results


def bench_receipts(
    entries: list[bytes], levels: list[list[bytes]], count: int
) -> dict[str, Any]:
    """Verify ``count`` receipts under a 2-of-3 policy against the bare verifications."""
    size = len(entries)
    log = Ed25519Signer.generate(ORIGIN)
    witnesses = [CosignatureSigner.generate(f"w{i}.bench.example") for i in range(3)]
    policy_text = "\n".join(
        [f"log {log.vkey}"]
        + [f"witness w{i} {w.vkey}" for i, w in enumerate(witnesses)]
        + ["group two 2 w0 w1 w2", "quorum two", ""]
    )
    policy = parse_policy(policy_text)
    root = CompactRange(size, [levels[n.level][n.index] for n in _root_nodes(size)]).root()
    text = format_checkpoint(Checkpoint(ORIGIN, size, root))
    note = add_signatures(sign_note(text, [log]), [w.signer_at(NOW) for w in witnesses[:2]])
    rng = random.Random(7)
    receipts = []
    for index in (rng.randrange(size) for _ in range(count)):
        nodes = inclusion_nodes(index, size)
        proof = build_inclusion_proof(index, size, [levels[n.level][n.index] for n in nodes])
        receipts.append(format_receipt(Receipt(index, tuple(proof), note, entries[index])))
    # What the bare baseline verifies: the log's signature and the two cosignatures.
    parsed = parse_note(note)
    keys = [
        Ed25519PublicKey.from_public_bytes(log.verifier().public_key),
        *(Ed25519PublicKey.from_public_bytes(w.verifier().public_key) for w in witnesses[:2]),
    ]
    messages = [text.encode(), cosignature_message(text, NOW), cosignature_message(text, NOW)]
    signatures = [s.signature[-64:] for s in parsed.signatures]

    def bare(batch: Sequence[bytes]) -> float:
        started = time.perf_counter()
        for _ in batch:
            for key, message, signature in zip(keys, messages, signatures, strict=True):
                key.verify(signature, message)
        return (time.perf_counter() - started) / len(batch)

    def verified(batch: Sequence[bytes]) -> float:
        started = time.perf_counter()
        for data in batch:
            verify_receipt_file(data, policy)
        return (time.perf_counter() - started) / len(batch)

    # Short interleaved rounds (the order alternating), twice over the receipts; the best round
    # of each counts (preemption only slows a round down), and the median of the paired
    # per-round ratios is reported beside it (robust to load that changes during the run).
    step = 20
    bare_times, receipt_times = [], []
    for turn in range(2):
        for start in range(0, count, step):
            batch = receipts[start : start + step]
            if (start // step + turn) % 2:
                receipt_times.append(verified(batch))
                bare_times.append(bare(batch))
            else:
                bare_times.append(bare(batch))
                receipt_times.append(verified(batch))
    bare_rate = 1 / min(bare_times)
    rate = 1 / min(receipt_times)
    paired = statistics.median(b / r for b, r in zip(bare_times, receipt_times, strict=True))
    return {
        "receipts": count,
        "tree_size": size,
        "proof_hashes": len(parse_receipt(receipts[0]).proof),
        "receipts_per_s": round(rate, 1),
        "bare_receipts_per_s": round(bare_rate, 1),
        "receipts_per_s_median": round(1 / statistics.median(receipt_times), 1),
        "bare_receipts_per_s_median": round(1 / statistics.median(bare_times), 1),
        "bare_verifications_per_receipt": 3,
        "ratio": round(rate / bare_rate, 3),
        "ratio_paired_median": round(paired, 3),
        "target": 0.8,
    }


def _root_nodes(size: int) -> list[Any]:
    from merkle.tree import root_nodes

    return root_nodes(size)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--receipts", type=int, default=2000)
    parser.add_argument("--skip-audit", action="store_true")
    parser.add_argument(
        "--log-dir",
        type=Path,
        help="build the log here once and reuse it in later runs (default: a temporary one)",
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve-static", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_static:
        asyncio.run(serve_static(Path(args.serve_static), args.port))
        return 0
    started = time.perf_counter()
    entries = make_entries(args.entries)
    made = time.perf_counter() - started
    print(f"made {len(entries):,} entries in {made:.1f} s", file=sys.stderr)
    _, _, levels = bare_tree(entries)
    results: dict[str, Any] = {"load_average": os.getloadavg()[0], "cpus": os.cpu_count()}
    if not args.skip_audit:
        results["audit"] = bench_audit(entries, args.window, args.log_dir)
    results["receipts"] = bench_receipts(entries, levels, args.receipts)
    if args.json:
        print(json.dumps(results))
    else:
        if "audit" in results:
            for name in ("etch_server", "static_tiles"):
                a = results["audit"][name]
                print(
                    f"audit ({name}): {results['audit']['entries']:,} entries in "
                    f"{a['audit_seconds']} s = {a['audit_entries_per_s']:,}/s, bare SHA-256 "
                    f"{a['bare_sha256_entries_per_s']:,}/s: ratio {a['ratio']:.0%} (target 60%); "
                    f"client CPU {a['audit_entries_per_client_cpu_s']:,} entries/s "
                    f"({a['cpu_ratio']:.0%} of bare)"
                )
        r = results["receipts"]
        print(
            f"receipts: {r['receipts_per_s']:,}/s; bare 3 x Ed25519 {r['bare_receipts_per_s']:,}/s;"
            f" ratio {r['ratio']:.0%} (target 80%)"
        )
        print(f"load average {results['load_average']:.1f} on {results['cpus']} cpus")
    return 0


if __name__ == "__main__":
    sys.exit(main())
