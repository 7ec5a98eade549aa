"""The main screen: header, tiles, charts and the log, with the run's keys in the footer.

The screen owns its widgets: it draws them from the app's `RunModel` when the app posts
`RunChanged`, and from a timer (the clock moves elapsed and ETA). The run's keys are
app actions (`app.pause`, ...): the app decides from the run's state which are available,
and the footer greys out the others.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer

from ..formatting import format_number, format_percent, format_rate
from ..messages import RunChanged
from ..run_model import RunModel
from ..widgets import EventLog, HealthBanner, MetricChart, MetricTile, RunHeader
from ..widgets.metric_chart import ChartData, ChartLine

# Smoothing choices cycled with "m": 0 is raw, the others are EMA weights.
SMOOTHING_WEIGHTS = (0.0, 0.6, 0.9, 0.99)

# Colours of the chart lines.
CHOSEN_COLOR = "green"
REJECTED_COLOR = "red"
TRAIN_COLOR = "dodger_blue1"
EVAL_COLOR = "orange1"
MARGIN_COLOR = "medium_purple1"

# (widget id, title) of the tiles, in reading order.
TILES = (
    ("tile-loss", "Loss"),
    ("tile-accuracy", "Accuracy"),
    ("tile-margin", "Margin"),
    ("tile-kl", "KL"),
    ("tile-lr", "LR"),
    ("tile-throughput", "Pairs/s"),
    ("tile-memory", "Peak mem"),
)


def smoothing_label(weight: float) -> str:
    return "raw" if weight <= 0 else f"EMA {weight:g}"


class DashboardScreen(Screen):
    """Everything about the run on one screen. Its keys are bound here rather than on the
    app, so dialogs on top of it take their own keys without these firing underneath."""

    # Below 100 columns the panels stack and the body scrolls (see dashboard.tcss).
    HORIZONTAL_BREAKPOINTS: ClassVar[list[tuple[int, str]]] = [(0, "-narrow"), (100, "-wide")]

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("p", "app.pause", "Pause"),
        Binding("r", "app.resume", "Resume"),
        Binding("c", "app.checkpoint", "Checkpoint"),
        Binding("s", "app.stop", "Stop"),
        Binding("e", "app.export", "Export"),
        Binding("m", "cycle_smoothing", "Smoothing"),
        Binding("u", "app.summary", "Summary"),
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(
        self,
        model: RunModel,
        run_dir_label: str,
        *,
        clock: Callable[[], float] = time.time,
        redraw_interval: float = 0.3,
    ) -> None:
        super().__init__()
        self.model = model
        self.run_dir_label = run_dir_label
        self.clock = clock
        self.redraw_interval = redraw_interval
        self.smoothing_index = 0
        # What the app is waiting for (a requested pause, an export), shown under the header.
        self.note = ""
        self._drawn_version = -1

    def compose(self) -> ComposeResult:
        yield RunHeader(id="header")
        yield HealthBanner(id="health")
        with VerticalScroll(id="body"):
            with Grid(id="tiles"):
                for tile_id, title in TILES:
                    yield MetricTile(title, id=tile_id)
            with Horizontal(id="main"):
                with Grid(id="charts"):
                    yield MetricChart("Rewards", id="chart-rewards")
                    yield MetricChart("Reward margin", id="chart-margin")
                    yield MetricChart(
                        "Preference accuracy", y_range=(0.0, 1.0), id="chart-accuracy"
                    )
                    yield MetricChart("Loss", id="chart-loss")
                yield EventLog(id="log")
        yield Footer()

    def on_mount(self) -> None:
        # The app read the run before pushing this screen: the first frame shows it.
        self.redraw(force=True)
        self.set_interval(self.redraw_interval, self.redraw)

    @on(RunChanged)
    def run_changed(self, message: RunChanged) -> None:
        log = self.query_one(EventLog)
        if message.reset:
            log.clear_entries()
        log.add_entries(message.entries)
        self.note = message.note
        self.refresh_header()
        self.query_one(HealthBanner).show(self.model.health)
        self.refresh_bindings()

    # -- drawing -----------------------------------------------------------------------

    def refresh_header(self) -> None:
        self.query_one(RunHeader).show(self.model, self.clock(), self.run_dir_label, self.note)

    def redraw(self, force: bool = False) -> None:
        """Timer: header every tick (the clock moves); tiles and charts when data changed."""
        if not self.is_attached or not self.app.is_running:
            return
        self.refresh_header()
        if force or self.model.version != self._drawn_version:
            self._drawn_version = self.model.version
            self.refresh_tiles()
            self.refresh_charts()
        for chart in self.query(MetricChart):
            chart.redraw()

    def refresh_tiles(self) -> None:
        model = self.model
        train = model.train
        latest_eval = model.latest_eval() or {}

        def tile(tile_id: str) -> MetricTile:
            return self.query_one(f"#{tile_id}", MetricTile)

        def eval_detail(name: str, formatter: Callable[[Any], str]) -> str:
            value = latest_eval.get(name)
            return f"eval {formatter(value)}" if value is not None else "eval –"

        loss = train["loss"]
        tile("tile-loss").show(
            format_number(loss.latest), eval_detail("loss", format_number), loss.values
        )
        accuracy = train["rewards/accuracies"]
        tile("tile-accuracy").show(
            format_percent(accuracy.latest),
            eval_detail("rewards/accuracies", format_percent),
            accuracy.smoothed(0.6),
        )
        margin = train["rewards/margins"]
        tile("tile-margin").show(
            format_number(margin.latest),
            eval_detail("rewards/margins", format_number),
            margin.values,
        )
        kl = train["kl"]
        tile("tile-kl").show(
            format_number(kl.latest),
            f"grad norm {format_number(train['grad_norm'].latest)}",
            kl.values,
        )
        lr = train["learning_rate"]
        tile("tile-lr").show(
            format_number(lr.latest), f"β {format_number(model.info.get('beta'))}", lr.values
        )
        pairs = train["pairs_per_second"]
        tile("tile-throughput").show(
            format_rate(pairs.latest, ""),
            format_rate(train["tokens_per_second"].latest, "tok/s"),
            pairs.values,
        )
        memory = train["peak_memory_gb"]
        peak = max(memory.values) if memory.values else None
        tile("tile-memory").show(
            f"{format_number(memory.latest, 2)} GB" if memory.latest is not None else "–",
            f"max {format_number(peak, 2)} GB" if peak is not None else "",
            memory.values,
        )

    def refresh_charts(self) -> None:
        model = self.model
        weight = SMOOTHING_WEIGHTS[self.smoothing_index]
        subtitle = smoothing_label(weight)
        checkpoints = [step for step, _ in model.checkpoints]

        def train_line(name: str, label: str, color: str) -> ChartLine:
            series = model.train[name]
            return ChartLine(label, series.steps, series.smoothed(weight), color)

        def eval_line(name: str) -> ChartLine:
            series = model.eval_series(name)
            return ChartLine("eval", series.steps, series.values, EVAL_COLOR, markers=True)

        def chart(chart_id: str) -> MetricChart:
            return self.query_one(f"#{chart_id}", MetricChart)

        chart("chart-rewards").show(
            ChartData(
                [
                    train_line("rewards/chosen", "chosen", CHOSEN_COLOR),
                    train_line("rewards/rejected", "rejected", REJECTED_COLOR),
                ],
                checkpoints,
                subtitle,
            )
        )
        chart("chart-margin").show(
            ChartData(
                [train_line("rewards/margins", "margin", MARGIN_COLOR)], checkpoints, subtitle
            )
        )
        chart("chart-accuracy").show(
            ChartData(
                [
                    train_line("rewards/accuracies", "train", TRAIN_COLOR),
                    eval_line("rewards/accuracies"),
                ],
                checkpoints,
                subtitle,
            )
        )
        chart("chart-loss").show(
            ChartData(
                [train_line("loss", "train", TRAIN_COLOR), eval_line("loss")], checkpoints, subtitle
            )
        )

    # -- keys of this screen -----------------------------------------------------------

    def action_cycle_smoothing(self) -> None:
        self.smoothing_index = (self.smoothing_index + 1) % len(SMOOTHING_WEIGHTS)
        self.refresh_charts()
        # Each chart's subtitle names the smoothing; no toast needed.
        for chart in self.query(MetricChart):
            chart.redraw()
