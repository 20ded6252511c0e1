"""Every fuzz target under hypothesis: random bytes, and mutations of valid seed inputs.

``make test`` runs a few examples per target (:data:`EXAMPLES`, 30 by default) so that the
targets themselves stay working; ``make fuzz`` sets ``ETCH_FUZZ_EXAMPLES`` to thousands. A
failure here is a crash of a parser: fix the parser and add the shrunk input to
``tests/test_fuzz_regressions.py``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from tests.fuzz.mutate import mutated
from tests.fuzz.targets import TARGETS, Target

EXAMPLES = int(os.environ.get("ETCH_FUZZ_EXAMPLES", "30"))
"""Examples per target and strategy (``ETCH_FUZZ_EXAMPLES`` overrides)."""

ARTIFACTS = Path(tempfile.gettempdir()) / "etch-fuzz"
"""Where a crashing input is saved: ``<target>/hypothesis-crash`` (the last one tried, which
is the shrunk example hypothesis reports)."""


def _run(target: Target, data: bytes) -> None:
    """Run ``target`` on ``data``; on a crash save the input before re-raising."""
    try:
        target(data)
    except BaseException:
        saved = ARTIFACTS / target.name / "hypothesis-crash"
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_bytes(data)
        note(f"input saved to {saved}: {data!r}")
        raise


_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_random_bytes(name: str) -> None:
    """Arbitrary bytes crash no parser."""
    target = TARGETS[name]

    @_SETTINGS
    @given(st.binary(max_size=512))
    def run(data: bytes) -> None:
        _run(target, data)

    run()


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_mutated_seeds(name: str) -> None:
    """Valid inputs with a few edits crash no parser (and the seeds themselves are accepted)."""
    target = TARGETS[name]
    seeds = target.seeds

    @_SETTINGS
    @given(mutated(seeds))
    def run(data: bytes) -> None:
        _run(target, data)

    run()


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_first_seed_is_accepted(name: str) -> None:
    """Each target's first seed passes its whole pipeline: the corpus starts deep."""
    target = TARGETS[name]
    target.body(target.seeds[0])
