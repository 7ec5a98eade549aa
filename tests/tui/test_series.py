"""Unit tests of tui/series.py (plain Python: no Textual app runs here)."""

from __future__ import annotations

import numpy as np
import pytest
from mlx_dpo.tui.series import MetricSeries, downsample_minmax

# -- series ------------------------------------------------------------------------------


def test_series_skips_non_finite_and_null_values():
    series = MetricSeries()
    for step, value in enumerate([1.0, None, float("nan"), 2.0, float("inf"), True]):
        series.append(step, value)
    assert series.steps == [0, 3]
    assert series.values == [1.0, 2.0]


def test_series_rewinds_when_a_step_repeats():
    series = MetricSeries()
    for step in range(1, 11):
        series.append(step, float(step))
    series.append(6, 60.0)
    assert series.steps == [1, 2, 3, 4, 5, 6]
    assert series.values[-1] == 60.0


def test_ema_is_debiased_and_incremental_equals_full():
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    full = MetricSeries()
    for step, value in enumerate(values):
        full.append(step, value)
    expected, biased = [], 0.0
    for index, value in enumerate(values):
        biased = 0.5 * biased + 0.5 * value
        expected.append(biased / (1 - 0.5 ** (index + 1)))
    assert full.smoothed(0.5) == pytest.approx(expected)
    # The first point is the raw value (debiasing), not pulled towards zero.
    assert full.smoothed(0.9)[0] == pytest.approx(1.0)

    growing = MetricSeries()
    for step, value in enumerate(values[:2]):
        growing.append(step, value)
    growing.smoothed(0.5)
    for step, value in enumerate(values[2:], start=2):
        growing.append(step, value)
    assert growing.smoothed(0.5) == pytest.approx(expected)
    assert full.smoothed(0.0) == values


def test_truncation_also_truncates_the_smoothed_cache():
    series = MetricSeries()
    for step in range(10):
        series.append(step, float(step))
    series.smoothed(0.6)
    series.truncate_after(4)
    for step in range(5, 8):
        series.append(step, 0.0)
    fresh = MetricSeries()
    for step, value in zip(series.steps, series.values, strict=True):
        fresh.append(step, value)
    assert series.smoothed(0.6) == pytest.approx(fresh.smoothed(0.6))


def test_downsample_keeps_extremes_and_bounds_the_points():
    xs = np.arange(100_000)
    ys = np.sin(xs / 1000.0)
    ys[54_321] = 50.0  # a spike must survive
    ys[12_345] = -50.0
    out_x, out_y = downsample_minmax(xs, ys, 120)
    assert len(out_x) <= 240
    assert out_y.max() == 50.0 and out_y.min() == -50.0
    assert list(out_x) == sorted(out_x)
    short_x, short_y = downsample_minmax([1, 2, 3], [4.0, 5.0, 6.0], 120)
    assert list(short_x) == [1, 2, 3] and list(short_y) == [4.0, 5.0, 6.0]
