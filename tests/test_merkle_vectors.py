"""The transparency-dev/merkle probe vectors: every inclusion and consistency file, one case each.

Files live in ``../shared/testdata/merkle-vectors/{inclusion,consistency}/**/<name>.json`` and are
read through the ``merkle_vectors`` fixture (a missing folder fails the suite). ``"wantErr": true``
files must be rejected with a :class:`merkle.MerkleError`; the others must verify. ``"proof":
null`` is an empty proof; hashes are standard base64.

One file is held to a stricter rule than its source: ``sizes-are-equal-one-and-proof-is-empty``
passes two equal 12-byte placeholder roots (``"don't care 2"``) and expects success, because the
upstream verifier does not check root lengths. :mod:`merkle.tree` rejects every hash that is not
32 bytes, so that file must fail with MalformedError for its root length, and its intent (equal
sizes, empty proof, equal roots: consistent) is checked with the same root padded to 32 bytes.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from merkle.errors import MalformedError, MerkleError
from merkle.hashing import HASH_SIZE
from merkle.tree import verify_consistency, verify_inclusion
from tests.conftest import VECTORS

SHORT_ROOT_FILES = {"consistency/additional/sizes-are-equal-one-and-proof-is-empty.json"}
"""Valid upstream only because the upstream verifier ignores root lengths (see module docstring)."""


def _names(folder: Path, kind: str) -> list[str]:
    """The vector files of one kind, as paths relative to the vector folder."""
    return sorted(p.relative_to(folder).as_posix() for p in (folder / kind).rglob("*.json"))


INCLUSION = _names(VECTORS, "inclusion")
CONSISTENCY = _names(VECTORS, "consistency")


def _b64(text: str) -> bytes:
    """Decode standard base64 strictly, as the vector files are written."""
    data = base64.b64decode(text, validate=True)
    assert base64.b64encode(data).decode() == text
    return data


def _load(folder: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / name).read_text(encoding="utf-8"))
    return data


def _proof(vector: dict[str, Any]) -> list[bytes]:
    return [_b64(h) for h in vector["proof"] or []]


def test_vector_folders_are_complete(merkle_vectors: Path) -> None:
    """The folder is there and holds all 98 + 98 files (a truncated copy fails here)."""
    assert _names(merkle_vectors, "inclusion") == INCLUSION
    assert _names(merkle_vectors, "consistency") == CONSISTENCY
    assert len(INCLUSION) == 98
    assert len(CONSISTENCY) == 98
    happy = [n for n in INCLUSION + CONSISTENCY if not _load(merkle_vectors, n)["wantErr"]]
    assert len(happy) == 12
    assert set(happy) >= SHORT_ROOT_FILES


@pytest.mark.parametrize("name", INCLUSION)
def test_inclusion_vector(merkle_vectors: Path, name: str) -> None:
    vector = _load(merkle_vectors, name)
    args = (
        _b64(vector["leafHash"]),
        vector["leafIdx"],
        vector["treeSize"],
        _proof(vector),
        _b64(vector["root"]),
    )
    if vector["wantErr"]:
        with pytest.raises(MerkleError):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)


@pytest.mark.parametrize("name", CONSISTENCY)
def test_consistency_vector(merkle_vectors: Path, name: str) -> None:
    vector = _load(merkle_vectors, name)
    size1, size2 = vector["size1"], vector["size2"]
    root1, root2 = _b64(vector["root1"]), _b64(vector["root2"])
    proof = _proof(vector)
    if name in SHORT_ROOT_FILES:
        assert not vector["wantErr"]
        assert len(root1) != HASH_SIZE
        with pytest.raises(MalformedError, match="32 bytes"):
            verify_consistency(size1, size2, root1, root2, proof)
        padded = root1.ljust(HASH_SIZE, b"\x00")
        verify_consistency(size1, size2, padded, root2.ljust(HASH_SIZE, b"\x00"), proof)
    elif vector["wantErr"]:
        with pytest.raises(MerkleError):
            verify_consistency(size1, size2, root1, root2, proof)
    else:
        verify_consistency(size1, size2, root1, root2, proof)
