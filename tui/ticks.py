"""Tick marks for the charts: as many as fit the plot's size, on round values, with labels
that never read "-0.0". textual-plot's default formatter asks for up to 8 ticks whatever the
width, and their labels run together on a narrow chart.

`fit_axis` also picks the y limits, so that every tick falls exactly on a row and the ticks
are evenly spaced on screen (limits from the data alone put 0.5, 1.0, 1.5 one, two, one rows
apart)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from textual_plot import AxisFormatter


def nice_ticks(low: float, high: float, max_count: int, integer: bool = False) -> list[float]:
    """Ticks at 1, 2 or 5 times a power of ten, at most `max_count` of them in [low, high]."""
    span = high - low
    max_count = max(int(max_count), 1)
    if not (math.isfinite(span) and span > 0):
        return [low] if math.isfinite(low) else []
    raw = span / max_count
    power = 10 ** math.floor(math.log10(raw))
    spacing = 10 * power
    for multiple in (1, 2, 5, 10):
        if span / (multiple * power) <= max_count:
            spacing = multiple * power
            break
    if integer:
        spacing = max(1.0, round(spacing))
    first = math.ceil(low / spacing - 1e-9) * spacing
    count = int(math.floor((high - first) / spacing + 1e-9)) + 1
    return [first + index * spacing for index in range(max(count, 0))]


@dataclass(frozen=True)
class AxisFit:
    low: float
    high: float
    ticks: list[float]


# Tick spacings tried, as multiples of a power of ten.
NICE_MULTIPLES = (1.0, 2.0, 2.5, 5.0)


def fit_axis(low: float, high: float, rows: int, max_ticks: int) -> AxisFit:
    """Limits and ticks for a y axis of `rows` rows (textual-plot maps the low limit to the
    last row and the high limit to the row above the first): ticks at a round spacing, each
    `k` rows apart, the data inside. Rows left over go above the last tick."""
    if not (math.isfinite(low) and math.isfinite(high)):
        low, high = 0.0, 1.0
    if high - low <= 1e-12 * max(1.0, abs(high)):
        pad = max(abs(high) * 0.1, 0.05)
        low, high = low - pad, high + pad
    rows = max(int(rows), 2)
    # Three ticks at least: a range across zero needs two intervals at any spacing.
    max_ticks = max(int(max_ticks), 3)
    # Labels a row apart at least when there is room for it.
    min_rows_per_tick = 2 if rows >= 6 else 1
    power = 10 ** math.floor(math.log10((high - low) / max_ticks))
    for scale in (power, power * 10, power * 100, power * 1000, power * 10_000):
        for multiple in NICE_MULTIPLES:
            spacing = multiple * scale
            first = math.floor(low / spacing + 1e-9) * spacing
            last = math.ceil(high / spacing - 1e-9) * spacing
            intervals = max(1, round((last - first) / spacing))
            if intervals + 1 > max_ticks:
                continue
            rows_per_tick = (rows - 1) // intervals
            if rows_per_tick < min_rows_per_tick:
                continue
            unit = spacing / rows_per_tick  # data per row
            ticks = [first + index * spacing for index in range(intervals + 1)]
            # Rows the ticks leave over: half below the first tick, half above the last.
            below = (rows - intervals * rows_per_tick) // 2
            # A hair lower, so each tick maps inside its row rather than onto its edge.
            low_limit = first - below * unit - unit * 1e-6
            return AxisFit(low_limit, low_limit + rows * unit, ticks)
    return AxisFit(low, high, [low, high])


def tick_labels(ticks: Sequence[float], integer: bool = False) -> list[str]:
    """Labels with as many decimals as the spacing needs; tiny spacings in short scientific
    form ("5e-6") so they fit the chart's left margin."""
    if not ticks:
        return []
    if integer:
        return [str(int(round(tick))) for tick in ticks]
    spacing = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else abs(ticks[0]) or 1.0
    if spacing < 1e-3:
        return [_short_scientific(0.0 if abs(t) < spacing * 1e-6 else t) for t in ticks]
    decimals = max(0, -math.floor(math.log10(spacing) + 1e-9)) if spacing > 0 else 0
    scaled = spacing * 10**decimals
    if abs(scaled - round(scaled)) > 1e-6:
        decimals += 1  # a 2.5 spacing needs one decimal more than 2 or 5
    labels = []
    for tick in ticks:
        if abs(tick) < spacing * 1e-6:
            tick = 0.0
        labels.append(f"{tick:.{decimals}f}")
    return labels


def _short_scientific(value: float) -> str:
    if value == 0:
        return "0"
    mantissa, exponent = f"{value:.1e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


class TickFormatter(AxisFormatter):
    """Nice ticks, `max_ticks` of them at most (the chart sets it from its size)."""

    def __init__(self, integer: bool = False) -> None:
        self.integer = integer
        self.max_ticks = 5

    def get_ticks(self, min_: float, max_: float, max_ticks: int = 8) -> list[float]:
        return nice_ticks(min_, max_, min(max_ticks, self.max_ticks), self.integer)

    def get_ticks_and_labels(
        self, min_: float, max_: float, max_ticks: int = 8
    ) -> tuple[list[float], list[str]]:
        ticks = nice_ticks(min_, max_, self.max_ticks, self.integer)
        return ticks, self.get_labels_for_ticks(ticks)

    def get_labels_for_ticks(self, ticks: Sequence[float]) -> list[str]:
        return tick_labels(ticks, self.integer)
