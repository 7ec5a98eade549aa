"""Unit tests of tui/ticks.py (plain Python: no Textual app runs here)."""

from __future__ import annotations

import pytest
from mlx_dpo.tui.ticks import TickFormatter, nice_ticks

# -- ticks and formatting ----------------------------------------------------------------


def test_nice_ticks_fit_the_count_and_land_on_round_numbers():
    assert nice_ticks(0, 100, 5, integer=True) == [0, 20, 40, 60, 80, 100]
    ticks = nice_ticks(-1.07, 0.73, 4)
    assert ticks == pytest.approx([-1.0, -0.5, 0.0, 0.5])
    assert nice_ticks(0, 3, 10, integer=True) == [0, 1, 2, 3]
    labels = TickFormatter().get_labels_for_ticks([-0.5, -1e-17, 0.5])
    assert labels == ["-0.5", "0.0", "0.5"]
