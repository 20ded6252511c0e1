"""Benchmark: the submit path's codec on a typical OAuth event, against the bare libraries.

Run with ``.venv/bin/python -m benchmarks.bench_codec``. The event is a 22-field
``token-issued`` record (strings, integers, short arrays), about 700 bytes of JSON. Measured in
the same run, interleaved, best of several rounds:

* ``decode_json`` + ``encode_deterministic`` (what the log does with a JSON submission: strict
  parse, every limit checked, deterministic CBOR out) against ``json.loads`` alone and against
  ``json.loads`` + ``cbor2.dumps(canonical=True)`` (parsing and encoding with no checks);
* ``encode_deterministic`` against ``cbor2.dumps(canonical=True)`` (C extension) for the
  encoding alone;
* ``decode_cbor`` + ``encode_deterministic`` (a CBOR submission) against ``cbor2.loads``.

The figures are informative: there is no target, the exit status is 0 unless the encoders
disagree on the bytes.
"""

from __future__ import annotations

import argparse
import json
import timeit
from collections.abc import Callable
from dataclasses import dataclass

import cbor2

from server.codec import Value, decode_cbor, decode_json, encode_deterministic

EVENT: dict[str, Value] = {
    "iss": "https://as.example.com",
    "jti": "0f8fad5b-d9cb-469f-a165-70867728950e",
    "iat": 1767225600,
    "toe": 1767225599,
    "txn": "c2a7e0f4-2b11-4f0e-9a55-3d7c1b2e8f90",
    "type": "token-issued",
    "client_id": "s6BhdRkqt3",
    "subject": "Qm9iLXBzZXVkb255bS0yMDI2LTAxLTAxLWV4YW1wbGU",
    "token_ref": "n4bQgYhMfWWaL-qgxVrQFaO_TxsrC4Is0V1sFbDwCgg",
    "token_type": "access_token",
    "grant_type": "authorization_code",
    "scope": ["openid", "profile", "email", "offline_access"],
    "audience": ["https://api.example.com", "https://files.example.com"],
    "expires_in": 3600,
    "auth_time": 1767225500,
    "acr": "urn:mace:incommon:iap:silver",
    "amr": ["pwd", "otp"],
    "dpop_jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I",
    "sender_constrained": True,
    "refresh_token_rotated": False,
    "session_id": None,
    "submitter": "as-prod-eu-1",
}
JSON_BODY = json.dumps(EVENT).encode()
CBOR_BODY = encode_deterministic(EVENT)
JSON_PATH = "decode_json + encode_deterministic"
CBOR_PATH = "decode_cbor + encode_deterministic"


@dataclass(frozen=True, slots=True)
class Comparison:
    """One measured pair, in seconds per call: Etch's operation and a library baseline."""

    name: str
    operation: float
    baseline_name: str
    baseline: float

    @property
    def ratio(self) -> float:
        """Operation time over baseline time (1.0 = as fast as the baseline)."""
        return self.operation / self.baseline


def interleaved(
    operation: Callable[[], object], baseline: Callable[[], object], number: int, rounds: int
) -> tuple[float, float]:
    """Return the best per-call times of both, timed in alternating rounds."""
    best_operation = best_baseline = float("inf")
    for _ in range(rounds):
        best_operation = min(best_operation, timeit.timeit(operation, number=number) / number)
        best_baseline = min(best_baseline, timeit.timeit(baseline, number=number) / number)
    return best_operation, best_baseline


def json_path() -> bytes:
    """Etch's JSON submission path: strict bounded decode, then deterministic CBOR."""
    return encode_deterministic(decode_json(JSON_BODY))


def cbor_path() -> bytes:
    """Etch's CBOR submission path: strict bounded decode, then deterministic CBOR."""
    return encode_deterministic(decode_cbor(CBOR_BODY))


def json_then_cbor2() -> bytes:
    """Library baseline with no checks: json.loads then cbor2 canonical encoding."""
    return cbor2.dumps(json.loads(JSON_BODY), canonical=True)


def run(number: int, rounds: int) -> list[Comparison]:
    """Measure every comparison of the module docstring."""
    pairs: list[tuple[str, Callable[[], object], str, Callable[[], object]]] = [
        (JSON_PATH, json_path, "json.loads", lambda: json.loads(JSON_BODY)),
        (JSON_PATH, json_path, "json.loads + cbor2.dumps", json_then_cbor2),
        (
            "encode_deterministic",
            lambda: encode_deterministic(EVENT),
            "cbor2.dumps(canonical=True)",
            lambda: cbor2.dumps(EVENT, canonical=True),
        ),
        (CBOR_PATH, cbor_path, "cbor2.loads", lambda: cbor2.loads(CBOR_BODY)),
    ]
    results: list[Comparison] = []
    for name, operation, baseline_name, baseline in pairs:
        operation_time, baseline_time = interleaved(operation, baseline, number, rounds)
        results.append(Comparison(name, operation_time, baseline_name, baseline_time))
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a table; exit status 1 if the encoders disagree."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--number", type=int, default=2000, help="calls per timing round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing rounds")
    args = parser.parse_args(argv)

    if json_path() != cbor2.dumps(EVENT, canonical=True) or cbor_path() != CBOR_BODY:
        print("encoders disagree on the deterministic bytes")
        return 1
    print(f"event: {len(EVENT)} fields, {len(JSON_BODY)} bytes JSON, {len(CBOR_BODY)} bytes CBOR")
    print(f"{'operation':36} {'events/s':>10}   {'baseline':28} {'events/s':>10} {'ratio':>6}")
    for item in run(args.number, args.rounds):
        print(
            f"{item.name:36} {1 / item.operation:10,.0f}   {item.baseline_name:28} "
            f"{1 / item.baseline:10,.0f} {item.ratio:6.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
