"""A line chart of one or more metrics over training steps, drawn with textual-plot."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from rich.markup import escape
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.css.query import NoMatches
from textual.reactive import reactive
from textual_plot import HiResMode, PlotWidget

from ..series import downsample_minmax
from ..ticks import TickFormatter


@dataclass
class ChartLine:
    """One line of a chart. Eval lines are few points: they get a marker on each."""

    label: str
    steps: Sequence[float]
    values: Sequence[float]
    color: str
    markers: bool = False


@dataclass
class ChartData:
    lines: list[ChartLine] = field(default_factory=list)
    checkpoints: list[int] = field(default_factory=list)
    subtitle: str = ""


class StepPlot(PlotWidget, can_focus=False):
    """A PlotWidget with tight margins (no axis labels: the chart's border names it) that
    never takes focus: the dashboard's keys belong to the app, not to pan and zoom."""

    margin_top = reactive(0)
    margin_bottom = reactive(1)
    margin_left = reactive(7)


class MetricChart(Vertical):
    """A bordered chart; the legend lives in the border title, so the plot keeps its area.

    `show` only stores the data; `redraw` draws it, downsampled to the plot's width. The app
    calls `redraw` from a timer, so a fast stream costs a few redraws a second at most.
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
        plot = StepPlot(allow_pan_and_zoom=False)
        plot.set_x_formatter(self.x_ticks)
        plot.set_y_formatter(self.y_ticks)
        yield plot

    @property
    def plot(self) -> PlotWidget:
        return self.query_one(PlotWidget)

    def show(self, data: ChartData) -> None:
        self.data = data
        self._data_version += 1
        legend = "  ".join(f"[{line.color}]━[/] {escape(line.label)}" for line in data.lines)
        self.border_title = (
            f"{escape(self.chart_title)}  {legend}" if legend else escape(self.chart_title)
        )
        self.border_subtitle = escape(data.subtitle)

    def on_resize(self) -> None:
        self.redraw()

    def redraw(self) -> bool:
        """Draw the stored data if it or the plot's width changed; True when it drew."""
        try:
            plot = self.plot
        except NoMatches:
            return False
        if not plot.size.width:
            return False  # not laid out yet: on_resize draws at the real size
        width = max(plot.size.width - plot.margin_left - 2, 10)
        height = max(plot.size.height - plot.margin_top - plot.margin_bottom - 2, 2)
        key = (self._data_version, width, height)
        if key == self._drawn_key:
            return False
        self._drawn_key = key
        # Step labels are up to ~5 characters; a row between y labels keeps them apart.
        self.x_ticks.max_ticks = max(2, width // 8)
        self.y_ticks.max_ticks = max(2, (height + 1) // 2)
        plot.clear()
        x_low: float | None = None
        x_high: float | None = None
        y_low: float | None = None
        y_high: float | None = None
        for line in self.data.lines:
            if not len(line.steps):
                continue
            xs, ys = downsample_minmax(line.steps, line.values, width)
            plot.plot(xs, ys, line_style=line.color, hires_mode=HiResMode.BRAILLE)
            if line.markers:
                plot.scatter(xs, ys, marker="•", marker_style=line.color)
            x_low = min(float(xs.min()), x_low) if x_low is not None else float(xs.min())
            x_high = max(float(xs.max()), x_high) if x_high is not None else float(xs.max())
            y_low = min(float(ys.min()), y_low) if y_low is not None else float(ys.min())
            y_high = max(float(ys.max()), y_high) if y_high is not None else float(ys.max())
        for step in self.data.checkpoints:
            plot.add_v_line(step, "grey42")
            x_high = max(float(step), x_high) if x_high is not None else float(step)
        if x_high is not None:
            plot.set_xlimits(min(0.0, x_low or 0.0), max(x_high, 1.0))
        else:
            plot.set_xlimits(0.0, 1.0)
        if self.y_range is not None:
            plot.set_ylimits(*self.y_range)
        elif y_low is not None and y_high is not None:
            span = y_high - y_low
            pad = span * 0.08 if span > 1e-9 else max(abs(y_high) * 0.1, 0.05)
            plot.set_ylimits(y_low - pad, y_high + pad)
        else:
            plot.set_ylimits(0.0, 1.0)
        return True
