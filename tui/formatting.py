"""Numbers and durations as the dashboard prints them."""

from __future__ import annotations

import math


def format_number(value: float | None, digits: int = 3) -> str:
    """A compact number: fixed point for everyday magnitudes, scientific for tiny or huge."""
    if value is None or not math.isfinite(value):
        return "–"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e5 or magnitude < 1e-3:
        return f"{value:.{max(digits - 1, 1)}e}"
    if magnitude >= 100:
        return f"{value:.1f}"
    return f"{value:.{digits}f}"


def format_fixed(value: float | None, decimals: int = 3) -> str:
    """A reward, margin or loss with a fixed number of decimals; "0" for anything that rounds
    to zero (the first step's margin is 0 up to float noise, not 1.78e-15)."""
    if value is None or not math.isfinite(value):
        return "–"
    magnitude = abs(value)
    if magnitude >= 1e5:
        return f"{value:.2e}"
    if magnitude >= 100:
        decimals = min(decimals, 1)
    text = f"{value:.{decimals}f}"
    return "0" if float(text) == 0 else text


def format_percent(value: float | None) -> str:
    """A share in [0, 1] as a percentage."""
    if value is None or not math.isfinite(value):
        return "–"
    return f"{100 * value:.1f}%"


def format_rate(value: float | None, unit: str) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    if value >= 1000:
        text = f"{value / 1000:.1f}k"
    elif value >= 10:
        text = f"{value:.0f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}" if unit else text


STATE_LABELS = {
    "starting": "starting",
    "computing_reference": "computing reference",
    "training": "training",
    "paused": "paused",
    "evaluating": "evaluating",
    "stopping": "stopping",
    "finished": "finished",
    "stopped": "stopped",
    "failed": "failed",
}


def state_label(state: str) -> str:
    return STATE_LABELS.get(state, state.replace("_", " "))
