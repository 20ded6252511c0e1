"""``POST /v1/events/batch``: the directly written answer is exactly json.dumps' bytes.

The batch handler writes each result with :class:`server.app.ResultWriter` instead of building
dicts for ``json.dumps``; these tests pin its bytes to the compact ``json.dumps`` encoding of
:func:`server.app.result_body` (updated with an intake's additions, new or replacing members),
and check a real batch answer the same way, refused events included.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest

from merkle.checkpoint import Checkpoint, format_checkpoint, parse_checkpoint
from merkle.hashing import leaf_hash
from merkle.note import Ed25519Signer, generate_key, parse_note, sign_note
from merkle.receipt import parse_receipt
from merkle.tree import verify_inclusion
from server.app import ResultWriter, result_body
from server.sequencer import Sequenced
from tests.server_helpers import open_log


def _compact(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _expected(result: Sequenced, extra: dict[str, Any] | None = None) -> bytes:
    answer = result_body(None, result)  # type: ignore[arg-type] # the service is not read
    answer.update(extra or {})
    return _compact(answer)


def _note(origin: str, size: int) -> bytes:
    private, _ = generate_key(origin)
    signer = Ed25519Signer.from_private_key(private)
    return sign_note(format_checkpoint(Checkpoint(origin, size, os.urandom(32))), [signer])


@pytest.mark.parametrize("origin", ["example.com/log", "exämple.com/lög"])
@pytest.mark.parametrize("length", [0, 1, 20])
@pytest.mark.parametrize("duplicate", [False, True])
def test_written_result_equals_compact_json(origin: str, length: int, duplicate: bool) -> None:
    note = _note(origin, 2**40)
    proof = tuple(os.urandom(32) for _ in range(length))
    result = Sequenced(2**40 - 1, os.urandom(32), duplicate, 2**40, note, proof)
    writer = ResultWriter()
    assert writer.write(result) == _expected(result)
    assert writer.write(result, {}) == _expected(result)
    # Cached note text and hash texts give the same bytes the second time.
    assert writer.write(result) == _expected(result)


@pytest.mark.parametrize(
    "extra",
    [
        {"entry": "AAEC"},
        {"entry": "AAEC", "note": 'quote " and \\ and \n and é'},
        {"leaf_hash": "cmVwbGFjZWQ=", "entry": "AAEC"},  # replaces a member in place
        {"receipt": None},
    ],
)
def test_intake_additions_are_merged_like_dict_update(extra: dict[str, Any]) -> None:
    proof = tuple(os.urandom(32) for _ in range(3))
    result = Sequenced(5, os.urandom(32), False, 8, _note("example.com/log", 8), proof)
    assert ResultWriter().write(result, extra) == _expected(result, extra)


@pytest.mark.anyio
async def test_batch_answer_of_a_log_is_compact_json(tmp_path: Path) -> None:
    async with open_log(str(tmp_path / "log.db")) as log:
        events: list[Any] = [{"n": n, "pad": "x" * n} for n in range(40)]
        events[7] = {"bad": 1.5}  # refused: a float
        events[9] = events[3]  # a duplicate within the batch
        response = await log.client.post(
            "/v1/events/batch",
            content=_compact(events),
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 200
        results = response.json()["results"]
        assert len(results) == len(events)
        assert results[7]["type"].endswith("float-not-allowed")
        assert results[9]["index"] == results[3]["index"]
        assert response.content == _compact({"results": results})
        for position in (0, 3, 9, 39):
            result = results[position]
            checkpoint = parse_checkpoint(parse_note(result["checkpoint"].encode()).text)
            verify_inclusion(
                base64.b64decode(result["leaf_hash"]),
                result["index"],
                checkpoint.tree_size,
                [base64.b64decode(h) for h in result["inclusion_proof"]],
                checkpoint.root_hash,
            )
            receipt = parse_receipt(result["receipt"].encode())
            assert receipt.index == result["index"]
            assert receipt.checkpoint == result["checkpoint"].encode()
        stored = await log.service.storage.read_entries(0, 39)
        assert [leaf_hash(data) for data in stored[:3]] == [
            base64.b64decode(results[n]["leaf_hash"]) for n in range(3)
        ]
