"""Shared pytest configuration: where the shared test data lives."""

from __future__ import annotations

from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED = PROJECT_ROOT.parent / "shared"
VECTORS = SHARED / "testdata" / "merkle-vectors"


@pytest.fixture(scope="session")
def merkle_vectors() -> Path:
    """The RFC 6962 probe vectors; a missing folder fails the suite, never skips it."""
    if not VECTORS.is_dir():
        pytest.fail(f"test vectors missing: {VECTORS} (expected ../shared beside the checkout)")
    return VECTORS
