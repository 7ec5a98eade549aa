"""Sizes, durations and numbers as people read them: one owner for the engine's console lines,
the memory plan, export and the dashboard. Plain Python (no MLX, no Textual), so the dashboard
imports it as it imports the event contract."""

from __future__ import annotations

import math
from typing import Any

GB = 1e9


def format_size(n: float) -> str:
    """Bytes as `1.23 GB`, `45.6 MB`, `7.8 KB` or `512 B`: GB down to 0.1 GB, then the unit
    that keeps the figure readable."""
    if abs(n) >= 0.1 * GB:
        return f"{n / GB:.2f} GB"
    if abs(n) >= 1e5:
        return f"{n / 1e6:.1f} MB"
    if abs(n) >= 1e3:
        return f"{n / 1e3:.1f} KB"
    return f"{n:.0f} B"


def format_duration(seconds: float | None) -> str:
    """`3h 02m`, `12m 05s`, `45s`; a dash when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "–"
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def finite_number(value: Any) -> float | None:
    """A finite float, or None for null, NaN, infinity and anything that is not a number
    (an event line may hold any JSON; a record may come before non-finite numbers became
    null)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:  # an int too large for a float
        return None
    return value if math.isfinite(value) else None
