"""The round-cost benchmark (benchmarks.bench_rounds): its measurement and its arithmetic."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import pytest

from benchmarks.bench_rounds import RoundCost, _sizes, fit, format_table, measure


def test_a_measurement_takes_one_round_per_group(tmp_path: Path) -> None:
    cost = asyncio.run(measure(5, 4, tmp_path))
    assert (cost.size, cost.rounds) == (5, 4)
    assert cost.cpu_ms_per_round > 0
    assert cost.cpu_ms_per_entry == pytest.approx(cost.cpu_ms_per_round / 5)
    assert cost.wall_ms_per_round > 0


def _cost(size: int, cpu_per_round: float) -> RoundCost:
    return RoundCost(size, 10, cpu_per_round, cpu_per_round, cpu_per_round / size)


def test_the_fitted_line_through_known_points() -> None:
    # CPU per round = 2 ms + 0.1 ms per entry, exactly.
    fixed, per_entry = fit([_cost(n, 2 + 0.1 * n) for n in (1, 16, 64, 256)])
    assert fixed == pytest.approx(2.0)
    assert per_entry == pytest.approx(0.1)
    with pytest.raises(ValueError, match="two round sizes"):
        fit([_cost(64, 8.0), _cost(64, 9.0)])


def test_the_table_names_every_size_and_the_line() -> None:
    table = format_table([_cost(1, 2.1), _cost(64, 8.4)])
    assert "| 1 | 10 | 2.10 | 2.10 | 2.100 |" in table
    assert "| 64 | 10 | 8.40 | 8.40 | 0.131 |" in table
    assert table.endswith("CPU per round ~ 2.00 ms + 0.100 ms per entry")
    assert "per round ~" not in format_table([_cost(64, 8.4)])


@pytest.mark.parametrize("text", ["", "0", "1,x", "1000", "-3"])
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        _sizes(text)
