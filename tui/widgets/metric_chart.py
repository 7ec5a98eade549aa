"""A line chart of one or more metrics over training steps, on textual-plot's axes.

textual-plot draws the axes and ticks; the lines are painted here, because its datasets each
overwrite the cells they pass through (the last line drawn hid the one under it) and its
markers and vertical lines sit where the data should be. Painted here:
- each training series smoothed, its raw series faint behind it;
- lines of one layer merged cell by cell (both lines' braille dots are kept; the first line
  listed keeps its colour), so chosen and rejected both show where they cross;
- eval points as markers in the very cell their line passes through;
- checkpoints as marks on the x axis, under the data rather than over it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from itertools import pairwise

import numpy as np
from rich.markup import escape
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.css.query import NoMatches
from textual.reactive import reactive
from textual_hires_canvas import Canvas
from textual_plot import PlotWidget

from .. import palette
from ..panels import ChartData, ChartLine
from ..series import downsample_minmax
from ..ticks import TickFormatter, fit_axis

# Braille dot bits by (column, row) inside a cell of 2 x 4 dots.
BRAILLE_BITS = {
    (0, 0): 0x01,
    (0, 1): 0x02,
    (0, 2): 0x04,
    (1, 0): 0x08,
    (1, 1): 0x10,
    (1, 2): 0x20,
    (0, 3): 0x40,
    (1, 3): 0x80,
}
EVAL_MARKER = "●"
CHECKPOINT_MARK = "▲"

Points = list[tuple[float, float]]


def hires_segment(x0: int, y0: int, x1: int, y1: int) -> Iterable[tuple[int, int]]:
    """The dots of a straight segment (Bresenham)."""
    dx, dy = abs(x1 - x0), -abs(y1 - y0)
    step_x, step_y = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
    error = dx + dy
    while True:
        yield x0, y0
        if x0 == x1 and y0 == y1:
            return
        doubled = 2 * error
        if doubled >= dy:
            error += dy
            x0 += step_x
        if doubled <= dx:
            error += dx
            y0 += step_y


# The axes end here: a finite but enormous value (1e308 in an event line) would make the
# axis span infinite, which textual-plot cannot draw; such points fall outside the chart.
AXIS_LIMIT = 1e100


def _dot(position: float) -> int:
    """A braille dot's position, kept within a few screens of the plot: a point far outside
    it (or at an infinite position) still gives its line a direction, not an overflow."""
    if math.isnan(position):
        return 0
    return math.floor(min(max(position, -4096.0), 4096.0))


class StepPlot(PlotWidget, can_focus=False):
    """A PlotWidget with tight margins (the chart's border names it) that never takes focus
    (the dashboard's keys are not pan and zoom) and paints its own layers over the axes."""

    margin_top = reactive(0)
    margin_bottom = reactive(1)
    margin_left = reactive(7)

    def __init__(self) -> None:
        super().__init__(allow_pan_and_zoom=False)
        # Each layer: (lines as (points, colour), markers as (points, colour)); later layers
        # paint over earlier ones.
        self.paint_layers: list[tuple[list[tuple[Points, str]], list[tuple[Points, str]]]] = []
        self.checkpoint_steps: list[float] = []

    def _render_plot(self) -> None:
        # textual-plot's own pass: axes, ticks and labels (no datasets are given to it).
        super()._render_plot()
        try:
            canvas = self.query_one("#plot", Canvas)
        except NoMatches:
            return
        if canvas._canvas_size is None:
            return
        for lines, markers in self.paint_layers:
            self._paint_lines(canvas, lines)
            self._paint_markers(canvas, markers)
        self._paint_checkpoints(canvas)

    def _cell_of(self, x: float, y: float) -> tuple[int, int] | None:
        """The data cell a point's line dot lands in (None outside the plot area)."""
        region = self._scale_rectangle
        hx, hy = self.get_hires_pixel_from_coordinate(x, y)
        if not (math.isfinite(hx) and math.isfinite(hy)):
            return None
        column = min(max(math.floor(hx), region.x), region.right - 1)
        row = math.floor(hy)
        if row == region.bottom:
            row -= 1  # the lowest value sits on the last data row, not the axis
        if not region.y <= row < region.bottom:
            return None
        return column, row

    def _paint_lines(self, canvas: Canvas, lines: list[tuple[Points, str]]) -> None:
        region = self._scale_rectangle
        cells: dict[tuple[int, int], list] = {}
        for points, color in lines:
            dots = [self.get_hires_pixel_from_coordinate(x, y) for x, y in points]
            dots = [(_dot(hx * 2), _dot(hy * 4)) for hx, hy in dots]
            if len(dots) == 1:
                dots = dots * 2
            for (x0, y0), (x1, y1) in pairwise(dots):
                for hx, hy in hires_segment(x0, y0, x1, y1):
                    column, row = hx // 2, hy // 4
                    if row == region.bottom and hy % 4 == 0:
                        row, hy = row - 1, hy - 1  # the minimum: onto the last data row
                    if not (region.x <= column < region.right and region.y <= row < region.bottom):
                        continue
                    bit = BRAILLE_BITS[(hx % 2, hy % 4)]
                    cell = cells.get((column, row))
                    if cell is None:
                        cells[(column, row)] = [bit, color]
                    else:
                        cell[0] |= bit  # keeps the first line's colour and both lines' dots
        for (column, row), (bits, color) in cells.items():
            canvas.set_pixel(column, row, chr(0x2800 + bits), style=color)

    def _paint_markers(self, canvas: Canvas, markers: list[tuple[Points, str]]) -> None:
        for points, color in markers:
            for x, y in points:
                cell = self._cell_of(x, y)
                if cell is not None:
                    canvas.set_pixel(*cell, char=EVAL_MARKER, style=f"bold {color}")

    def _paint_checkpoints(self, canvas: Canvas) -> None:
        region = self._scale_rectangle
        for step in self.checkpoint_steps:
            hx, _ = self.get_hires_pixel_from_coordinate(step, 0.0)
            column = min(max(math.floor(hx), region.x), region.right - 1)
            canvas.set_pixel(column, region.bottom, CHECKPOINT_MARK, style=palette.CHECKPOINT)


class MetricChart(Vertical):
    """A bordered chart: title on top, the legend in the bottom border, so the plot keeps
    its area and neither is cut on a small terminal.

    `show` only stores the data; `redraw` draws it, downsampled to the plot's width. The
    screen calls `redraw` from a timer, so a fast stream costs a few redraws a second at most.
    """

    def __init__(
        self,
        title: str,
        *,
        y_range: tuple[float, float] | None = None,
        id: str | None = None,
    ) -> None:
        super().__init__(id=id, classes="metric-chart")
        self.chart_title = title
        self.y_range = y_range
        self.data = ChartData()
        self._drawn_key: tuple | None = None
        self._data_version = 0
        self.border_title = escape(title)
        self.x_ticks = TickFormatter(integer=True)
        self.y_ticks = TickFormatter()

    def compose(self) -> ComposeResult:
        plot = StepPlot()
        plot.set_x_formatter(self.x_ticks)
        plot.set_y_formatter(self.y_ticks)
        yield plot

    @property
    def plot(self) -> StepPlot:
        return self.query_one(StepPlot)

    def retitle(self, title: str) -> None:
        """A new title (what a chart shows can depend on the run's loss)."""
        if title != self.chart_title:
            self.chart_title = title
            self.border_title = escape(title)

    def show(self, data: ChartData) -> None:
        self.data = data
        self._data_version += 1
        self.border_subtitle = legend_markup(data.lines)

    def on_resize(self) -> None:
        self.redraw()

    def redraw(self) -> bool:
        """Draw the stored data if it or the plot's size changed; True when it drew."""
        try:
            plot = self.plot
        except NoMatches:
            return False
        if not plot.size.width or not self.display:
            return False  # not laid out (or hidden): on_resize draws at the real size
        width = max(plot.size.width - plot.margin_left - 2, 10)
        rows = max(plot.size.height - plot.margin_top - plot.margin_bottom - 2, 2)
        key = (self._data_version, width, rows)
        if key == self._drawn_key:
            return False
        self._drawn_key = key
        # Step labels are up to ~5 characters: one tick per 8 columns at most.
        self.x_ticks.max_ticks = max(2, width // 8)
        plot.clear()
        faint_lines: list[tuple[Points, str]] = []
        lines: list[tuple[Points, str]] = []
        eval_lines: list[tuple[Points, str]] = []
        markers: list[tuple[Points, str]] = []
        xs_seen: list[float] = []
        ys_seen: list[float] = []
        for line in self.data.lines:
            if not len(line.steps):
                continue
            # Braille has two dots a column: twice the columns keeps the detail.
            xs, ys = downsample_minmax(line.steps, line.values, 2 * width)
            points = list(zip(xs.tolist(), ys.tolist(), strict=True))
            if line.markers:
                eval_lines.append((points, line.color))
                markers.append((points, line.color))
            else:
                lines.append((points, line.color))
            xs_seen += [float(xs.min()), float(xs.max())]
            ys_seen += [float(ys.min()), float(ys.max())]
            if line.raw is not None and len(line.raw) == len(line.steps):
                raw_x, raw_y = downsample_minmax(line.steps, line.raw, 2 * width)
                faint_lines.append(
                    (list(zip(raw_x.tolist(), raw_y.tolist(), strict=True)), line.color)
                )
                # The raw steps widen the axis to their 5-95% range, not to every outlier:
                # the smoothed line is what the chart is read by.
                low_raw, high_raw = np.percentile(np.asarray(line.raw, dtype=float), [5, 95])
                ys_seen += [float(low_raw), float(high_raw)]
        xs_seen += [float(step) for step in self.data.checkpoints]
        plot.set_xlimits(min([0.0, *xs_seen]), min(max([1.0, *xs_seen]), AXIS_LIMIT))
        if self.y_range is not None:
            low, high = self.y_range
        elif ys_seen:
            low, high = min(ys_seen), max(ys_seen)
        else:
            low, high = 0.0, 1.0
        low, high = (min(max(v, -AXIS_LIMIT), AXIS_LIMIT) for v in (low, high))
        fit = fit_axis(low, high, rows, max_ticks=min(6, rows // 2 + 1))
        plot.set_ylimits(fit.low, fit.high)
        plot.set_yticks(fit.ticks)
        plot.paint_layers = [
            ([(points, palette.faint(color)) for points, color in faint_lines], []),
            (lines, []),
            (eval_lines, markers),
        ]
        plot.checkpoint_steps = list(self.data.checkpoints)
        plot.refresh()
        return True


def legend_markup(lines: Sequence[ChartLine]) -> str:
    """The legend: a swatch in each line's colour (a dot for eval markers) and its label."""
    parts = []
    for line in lines:
        swatch = EVAL_MARKER if line.markers else "━"
        parts.append(f"[{line.color}]{swatch}[/] {escape(line.label)}")
    return " ".join(parts)
