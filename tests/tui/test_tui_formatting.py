"""Unit tests of tui/formatting.py (plain Python: no Textual app runs here)."""

from __future__ import annotations

from mlx_dpo.tui.formatting import format_fixed, format_number, format_percent, format_rate


def test_formatting():
    assert format_number(0.693147) == "0.693"
    assert format_number(5e-6) == "5.00e-06"
    assert format_number(float("nan")) == "–"
    assert format_percent(0.875) == "87.5%"
    assert format_rate(1234.0, "tok/s") == "1.2k tok/s"
    assert format_rate(3.5, "") == "3.50"
    assert format_number(123.45) == "123.5"


def test_zero_margins_print_zero():
    assert format_fixed(1.78e-15) == "0" and format_fixed(-2e-7) == "0"
    assert format_fixed(0.503) == "0.503" and format_fixed(123.456) == "123.5"
