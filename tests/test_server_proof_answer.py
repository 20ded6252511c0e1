"""``GET /v1/proof/inclusion``: the directly assembled answer is exactly json.dumps' bytes.

The handler writes its JSON body without ``json.dumps`` (:func:`server.app.inclusion_answer`)
and reads the leaf hash and the path in one pass (``TreeReader.leaf_and_inclusion_proof``);
these tests pin the bytes to the compact ``json.dumps`` encoding and check the answers of a real
log against ``merkle.tree.verify_inclusion`` and the leaves that were submitted.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from merkle.hashing import leaf_hash
from merkle.tree import verify_inclusion
from server.app import inclusion_answer
from tests.server_helpers import open_log


def _compact(index: int, tree_size: int, leaf: bytes, proof: list[bytes]) -> bytes:
    body = {
        "index": index,
        "tree_size": tree_size,
        "leaf_hash": base64.b64encode(leaf).decode(),
        "proof": [base64.b64encode(h).decode() for h in proof],
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


@pytest.mark.parametrize("length", [0, 1, 2, 20, 63])
def test_answer_bytes_equal_compact_json(length: int) -> None:
    leaf = os.urandom(32)
    proof = [os.urandom(32) for _ in range(length)]
    index, tree_size = 2**63 - 2, 2**63 - 1
    assert inclusion_answer(index, tree_size, leaf, proof) == _compact(
        index, tree_size, leaf, proof
    )
    assert inclusion_answer(0, 1, leaf, []) == _compact(0, 1, leaf, [])


@pytest.mark.anyio
async def test_answers_of_a_log_verify_against_its_checkpoint(tmp_path: Path) -> None:
    async with open_log(str(tmp_path / "log.db")) as log:
        entries = await log.fill(600)
        _, checkpoint = await log.checkpoint()
        for size in (1, 255, 256, 257, 600):
            for index in {0, size // 2, size - 1}:
                response = await log.client.get(
                    f"/v1/proof/inclusion?index={index}&tree_size={size}"
                )
                assert response.status_code == 200
                assert response.headers["content-type"] == "application/json"
                body = response.json()
                leaf = base64.b64decode(body["leaf_hash"])
                proof = [base64.b64decode(h) for h in body["proof"]]
                assert leaf == leaf_hash(entries[index])
                assert response.content == _compact(index, size, leaf, proof)
                if size == checkpoint.tree_size:
                    verify_inclusion(leaf, index, size, proof, checkpoint.root_hash)
                by_hash = await log.client.get(
                    f"/v1/proof/inclusion?leaf_hash={leaf.hex()}&tree_size={size}"
                )
                assert by_hash.content == response.content
