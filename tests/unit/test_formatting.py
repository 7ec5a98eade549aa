"""Unit tests of mlx_dpo/formatting.py: sizes, durations and numbers as people read them."""

from __future__ import annotations

import math

import pytest

from mlx_dpo.formatting import finite_number, format_duration, format_size


def test_format_duration():
    assert format_duration(None) == "–"
    assert format_duration(45.2) == "45s"
    assert format_duration(725) == "12m 05s"
    assert format_duration(3 * 3600 + 125) == "3h 02m"
    assert format_duration(math.nan) == format_duration(math.inf) == "–"
    assert format_duration(-3) == "0s"
    assert format_duration(59.6) == "1m 00s"  # rounded before it is split into units


@pytest.mark.parametrize(
    "n,expected",
    [
        (1.234e9, "1.23 GB"),
        (0.1e9, "0.10 GB"),  # GB down to a tenth of one
        (99_999_999, "100.0 MB"),
        (1e5, "0.1 MB"),
        (99_999, "100.0 KB"),
        (1e3, "1.0 KB"),
        (512, "512 B"),
        (-2e9, "-2.00 GB"),
    ],
)
def test_format_size_picks_the_readable_unit(n, expected):
    assert format_size(n) == expected


@pytest.mark.parametrize(
    "value,expected",
    [
        (3, 3.0),
        (0.5, 0.5),
        (True, None),  # a JSON true is not the number 1
        (None, None),
        ("1.5", None),
        (math.nan, None),
        (-math.inf, None),
        (10**400, None),  # too large for a float
    ],
)
def test_finite_number(value, expected):
    assert finite_number(value) == expected
