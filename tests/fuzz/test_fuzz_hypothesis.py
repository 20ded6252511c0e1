"""Every fuzz target under hypothesis: random bytes, and mutations of valid seed inputs.

``make test`` runs a few examples per target (:data:`EXAMPLES`, 30 by default) so that the
targets themselves stay working; ``make fuzz`` sets ``ETCH_FUZZ_EXAMPLES`` to thousands. A
failure here is a crash of a parser: fix the parser and add the shrunk input to
``tests/test_fuzz_regressions.py``.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.mutate import mutated
from tests.fuzz.targets import TARGETS

EXAMPLES = int(os.environ.get("ETCH_FUZZ_EXAMPLES", "30"))
"""Examples per target and strategy (``ETCH_FUZZ_EXAMPLES`` overrides)."""

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
        target(data)

    run()


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_mutated_seeds(name: str) -> None:
    """Valid inputs with a few edits crash no parser (and the seeds themselves are accepted)."""
    target = TARGETS[name]
    seeds = target.seeds

    @_SETTINGS
    @given(mutated(seeds))
    def run(data: bytes) -> None:
        target(data)

    run()


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_first_seed_is_accepted(name: str) -> None:
    """Each target's first seed passes its whole pipeline: the corpus starts deep."""
    target = TARGETS[name]
    target.body(target.seeds[0])
