"""Unit tests of tui/ticks.py (plain Python: no Textual app runs here)."""

from __future__ import annotations

import math

import pytest
from mlx_dpo.tui.ticks import TickFormatter, fit_axis, nice_ticks, tick_labels

# -- ticks and formatting ----------------------------------------------------------------


def test_nice_ticks_fit_the_count_and_land_on_round_numbers():
    assert nice_ticks(0, 100, 5, integer=True) == [0, 20, 40, 60, 80, 100]
    ticks = nice_ticks(-1.07, 0.73, 4)
    assert ticks == pytest.approx([-1.0, -0.5, 0.0, 0.5])
    assert nice_ticks(0, 3, 10, integer=True) == [0, 1, 2, 3]
    labels = TickFormatter().get_labels_for_ticks([-0.5, -1e-17, 0.5])
    assert labels == ["-0.5", "0.0", "0.5"]


@pytest.mark.parametrize(
    "low, high, rows",
    [(-1.07, 0.73, 10), (0.39, 0.7, 20), (0.0, 1.0, 8), (-130.0, -118.0, 5), (2.0, 2.0, 6),
     (1e-6, 5e-6, 8), (-3.1, 2.4, 3), (0.0, 1.0, 12)],
)  # fmt: skip
def test_fit_axis_puts_round_ticks_evenly_on_rows_around_the_data(low, high, rows):
    fit = fit_axis(low, high, rows, max_ticks=min(6, rows // 2 + 1))
    assert fit.low <= low and fit.high >= high  # the data is inside
    spacing = fit.ticks[1] - fit.ticks[0]
    mantissa = spacing / 10 ** math.floor(math.log10(spacing))
    assert round(mantissa, 6) in (1.0, 2.0, 2.5, 5.0)
    # The row of each tick as textual-plot computes it (ceil of the linear map onto rows).
    unit = (fit.high - fit.low) / rows
    tick_rows = [math.ceil((rows - 1) - (t - fit.low) / unit) for t in fit.ticks]
    gaps = {a - b for a, b in zip(tick_rows, tick_rows[1:], strict=False)}
    assert len(gaps) == 1 and gaps.pop() >= 1  # evenly spaced, distinct rows
    assert all(0 <= row <= rows - 1 for row in tick_rows)


def test_tick_labels_are_short_and_never_minus_zero():
    assert tick_labels([-0.5, 0.0, 0.5]) == ["-0.5", "0.0", "0.5"]
    assert tick_labels([0.0, 2.5, 5.0]) == ["0.0", "2.5", "5.0"]
    assert tick_labels([0.0, 2e-6, 4e-6]) == ["0", "2e-6", "4e-6"]
    assert tick_labels([-130.0, -120.0]) == ["-130", "-120"]
