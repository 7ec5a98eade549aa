"""Tick marks for the charts: as many as fit the plot's size, with labels that never read
"-0.0". textual-plot's default formatter asks for up to 8 ticks whatever the width, and
their labels run together on a narrow chart."""

from __future__ import annotations

import math
from collections.abc import Sequence

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
        if not ticks:
            return []
        if self.integer:
            return [str(int(round(tick))) for tick in ticks]
        spacing = ticks[1] - ticks[0] if len(ticks) > 1 else abs(ticks[0]) or 1.0
        decimals = max(0, -math.floor(math.log10(spacing))) if spacing > 0 else 0
        labels = []
        for tick in ticks:
            if abs(tick) < spacing * 1e-6:
                tick = 0.0
            labels.append(f"{tick:.{decimals}f}")
        return labels
