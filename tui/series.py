"""Metric histories for the charts: append-only series, EMA smoothing and downsampling.

Plain Python and numpy, so the buffers can be tested without a terminal.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

import numpy as np


class MetricSeries:
    """One metric over training steps. Non-finite values (null in the stream) are skipped.

    Steps only grow; a point at or before the last step means the stream was rewound (a
    resumed run), so later points are dropped first.
    """

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.values: list[float] = []
        # EMA weight -> smoothed prefix; extended as points arrive, so a redraw of a long run
        # costs only the new points.
        self._smoothed: dict[float, list[float]] = {}

    def __len__(self) -> int:
        return len(self.steps)

    def append(self, step: int, value: float | None) -> None:
        if value is None or isinstance(value, bool):
            return
        try:
            value = float(value)
        except (TypeError, ValueError):
            return
        if not math.isfinite(value):
            return
        if self.steps and step <= self.steps[-1]:
            self.truncate_after(step - 1)
        self.steps.append(int(step))
        self.values.append(value)

    def truncate_after(self, step: int) -> None:
        """Drop the points past `step`."""
        keep = bisect.bisect_right(self.steps, step)
        if keep == len(self.steps):
            return
        del self.steps[keep:]
        del self.values[keep:]
        for smoothed in self._smoothed.values():
            del smoothed[keep:]

    def clear(self) -> None:
        self.steps.clear()
        self.values.clear()
        self._smoothed.clear()

    @property
    def latest(self) -> float | None:
        return self.values[-1] if self.values else None

    @property
    def latest_step(self) -> int | None:
        return self.steps[-1] if self.steps else None

    def smoothed(self, weight: float) -> list[float]:
        """Exponential moving average with TensorBoard's debiasing (the first points are not
        pulled towards zero). `weight` 0 is the raw series."""
        if weight <= 0:
            return self.values
        smoothed = self._smoothed.setdefault(weight, [])
        # Rebuild the running state from the prefix already computed.
        count = len(smoothed)
        if count < len(self.values):
            if count:
                debias = 1 - weight**count
                biased = smoothed[-1] * debias
            else:
                biased = 0.0
            for index in range(count, len(self.values)):
                biased = weight * biased + (1 - weight) * self.values[index]
                smoothed.append(biased / (1 - weight ** (index + 1)))
        return smoothed


def downsample_minmax(
    xs: Sequence[float], ys: Sequence[float], buckets: int
) -> tuple[np.ndarray, np.ndarray]:
    """At most 2 points a bucket: each bucket's lowest and highest point, in step order.

    A line through these looks like the full series at `buckets` columns, spikes included,
    and costs the plot only O(buckets) to draw however long the run is.
    """
    x = np.asarray(xs, dtype=float)
    y = np.asarray(ys, dtype=float)
    buckets = max(int(buckets), 1)
    if len(x) <= 2 * buckets:
        return x, y
    edges = np.linspace(0, len(x), buckets + 1).astype(int)
    keep: list[int] = []
    for start, end in zip(edges[:-1], edges[1:], strict=True):
        if end <= start:
            continue
        segment = y[start:end]
        low = start + int(np.argmin(segment))
        high = start + int(np.argmax(segment))
        keep.extend(sorted({low, high}))
    index = np.asarray(keep, dtype=int)
    return x[index], y[index]
