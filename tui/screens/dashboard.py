"""The main screen: header, health banner, tiles, a set of charts, the log, and a key line.

The screen owns its widgets: it draws them from the app's `RunModel` when the app posts
`RunChanged`, and from a timer (the clock moves elapsed and ETA). The run's keys are app
actions (`app.pause`, ...): the app decides from the run's state which are available, and
the footer greys out the others. Keys 1-3 switch the chart set, 4 shows the log across the
body (on a narrow terminal the log is only there), m the smoothing, h/a/? open the findings,
the answers and the help.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Container, Grid, Horizontal
from textual.screen import Screen
from textual.widgets import ContentSwitcher, Footer

from ..formatting import format_fixed, format_number, format_percent, format_rate
from ..loss_view import loss_view
from ..messages import RunChanged
from ..panels import LOG_PANEL_KEY, PANEL_SETS, chart_data
from ..run_model import RunModel
from ..series import MetricSeries
from ..widgets import ChartKey, EventLog, HealthBanner, MetricChart, MetricTile, RunHeader
from .health import HealthScreen
from .help import HelpScreen
from .samples import SamplesScreen

# Smoothing choices cycled with "m": 0 is raw, the others are EMA weights. Smoothed by
# default: per-batch noise otherwise draws barcodes, not trends.
SMOOTHING_WEIGHTS = (0.0, 0.6, 0.9, 0.99)
DEFAULT_SMOOTHING = 2

# (widget id, title) of the tiles, in reading order; a narrow terminal shows the first four.
TILES = (
    ("tile-loss", "Loss"),
    ("tile-accuracy", "Accuracy"),
    ("tile-margin", "Margin"),
    ("tile-log-ratio", "Log-ratio"),
    ("tile-lr", "LR"),
    ("tile-throughput", "Pairs/s"),
    ("tile-memory", "Peak mem"),
)


def latest_smoothed(series: MetricSeries, weight: float) -> float | None:
    values = series.smoothed(weight)
    return values[-1] if values else None


class DashboardScreen(Screen):
    """Everything about the run on one screen. Its keys are bound here rather than on the
    app, so dialogs on top of it take their own keys without these firing underneath."""

    # Below 100 columns: one-line tiles, no log beside the charts (key 4 shows it); below 130
    # the memory tile goes (its chart is in set 3), so the other titles are not cut.
    HORIZONTAL_BREAKPOINTS: ClassVar[list[tuple[int, str]]] = [
        (0, "-narrow"),
        (100, "-medium"),
        (130, "-wide"),
    ]

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("p", "app.pause", "Pause"),
        Binding("r", "app.resume", "Resume"),
        Binding("c", "app.checkpoint", "Checkpoint"),
        Binding("s", "app.stop", "Stop"),
        Binding("e", "app.export", "Export"),
        Binding("h", "health", "Health"),
        Binding("u", "app.summary", "Summary"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("q", "app.quit", "Quit"),
        Binding("a", "answers", "Answers", show=False),
        Binding("m", "cycle_smoothing", "Smoothing", show=False),
        Binding("x", "app.screenshot", "Screenshot", show=False),
        *(Binding(p.key, f"panel('{p.key}')", p.name, show=False) for p in PANEL_SETS),
        Binding(LOG_PANEL_KEY, f"panel('{LOG_PANEL_KEY}')", "Events", show=False),
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
        self.smoothing_index = DEFAULT_SMOOTHING
        self.panel = PANEL_SETS[0].key
        # What the app is waiting for (a requested pause, an export), shown under the header.
        self.note = ""
        self._drawn: tuple[int, int, str] | None = None

    @property
    def smoothing(self) -> float:
        return SMOOTHING_WEIGHTS[self.smoothing_index]

    def compose(self) -> ComposeResult:
        yield RunHeader(id="header")
        yield HealthBanner(id="health")
        with Container(id="body"):
            with Grid(id="tiles"):
                for tile_id, title in TILES:
                    yield MetricTile(title, id=tile_id)
            with Horizontal(id="main"):
                with ContentSwitcher(id="panels", initial=f"panel-{self.panel}"):
                    for panel in PANEL_SETS:
                        with Grid(id=f"panel-{panel.key}", classes="chart-grid"):
                            for spec in panel.charts:
                                yield MetricChart(
                                    spec.title, y_range=spec.y_range, id=spec.chart_id
                                )
                yield EventLog(id="log")
            yield ChartKey(PANEL_SETS, id="chart-key")
        yield Footer(compact=True)

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
        self.query_one(HealthBanner).show(self.model.findings, self.model.checks_off)
        self.refresh_bindings()

    # -- drawing -----------------------------------------------------------------------

    def refresh_header(self) -> None:
        self.query_one(RunHeader).show(self.model, self.clock(), self.run_dir_label, self.note)

    def redraw(self, force: bool = False) -> None:
        """Timer: header every tick (the clock moves); tiles and charts when data changed."""
        if not self.is_attached or not self.app.is_running:
            return
        self.refresh_header()
        drawn = (self.model.version, self.smoothing_index, self.panel)
        if force or drawn != self._drawn:
            self._drawn = drawn
            self.refresh_tiles()
            self.refresh_charts()
        for chart in self.visible_charts():
            chart.redraw()

    def visible_charts(self) -> list[MetricChart]:
        if self.panel == LOG_PANEL_KEY:
            return []
        return list(self.query_one(f"#panel-{self.panel}").query(MetricChart))

    def refresh_tiles(self) -> None:
        """Values smoothed like the charts (a tile that shows the last batch jumps between
        62.5% and 100% while the chart beside it is smooth); the latest eval under them."""
        model, weight = self.model, self.smoothing
        train = model.train
        latest_eval = model.latest_eval() or {}

        def tile(tile_id: str) -> MetricTile:
            return self.query_one(f"#{tile_id}", MetricTile)

        def eval_detail(name: str, formatter: Callable[[float | None], str]) -> str:
            value = latest_eval.get(name)
            return f"eval {formatter(value)}" if value is not None else "eval –"

        def smooth(name: str) -> float | None:
            return latest_smoothed(train[name], weight)

        tile("tile-loss").show(
            format_fixed(smooth("loss")),
            eval_detail("loss", format_fixed),
            train["loss"].smoothed(weight),
        )
        view = loss_view(model.loss)
        tile("tile-accuracy").retitle(view.accuracy_title)
        tile("tile-accuracy").show(
            format_percent(smooth("rewards/accuracies")),
            eval_detail("rewards/accuracies", format_percent),
            train["rewards/accuracies"].smoothed(weight),
        )
        tile("tile-margin").show(
            format_fixed(smooth("rewards/margins")),
            eval_detail("rewards/margins", format_fixed),
            train["rewards/margins"].smoothed(weight),
        )
        log_ratio = view.log_ratio_metric
        tile("tile-log-ratio").retitle(view.log_ratio_title)
        tile("tile-log-ratio").show(
            format_fixed(smooth(log_ratio)),
            view.log_ratio_detail,
            train[log_ratio].smoothed(weight),
        )
        lr = train["learning_rate"]
        tile("tile-lr").show(
            format_number(lr.latest), f"grad {format_number(smooth('grad_norm'))}", lr.values
        )
        tile("tile-throughput").show(
            format_rate(smooth("pairs_per_second"), ""),
            format_rate(smooth("tokens_per_second"), "tok/s"),
            train["pairs_per_second"].smoothed(weight),
        )
        memory = train["peak_memory_gb"]
        peak = max(memory.values) if memory.values else None
        tile("tile-memory").show(
            f"{format_number(memory.latest, 2)} GB" if memory.latest is not None else "–",
            f"max {format_number(peak, 2)} GB" if peak is not None else "",
            memory.values,
        )

    def refresh_charts(self) -> None:
        """The data of the charts shown (the others get theirs when their set is shown)."""
        view = loss_view(self.model.loss)
        for panel in PANEL_SETS:
            if panel.key != self.panel:
                continue
            for spec in panel.charts:
                spec = view.adapt(spec)  # e.g. kto has no pair accuracy: what replaces it
                chart = self.query_one(f"#{spec.chart_id}", MetricChart)
                chart.retitle(spec.title)
                chart.show(chart_data(spec, self.model, self.smoothing))
        self.query_one(ChartKey).show(self.panel, self.smoothing)

    # -- keys of this screen -----------------------------------------------------------

    def action_cycle_smoothing(self) -> None:
        self.smoothing_index = (self.smoothing_index + 1) % len(SMOOTHING_WEIGHTS)
        self.redraw()

    def action_panel(self, key: str) -> None:
        self.panel = key
        self.set_class(key == LOG_PANEL_KEY, "-log-panel")
        if key != LOG_PANEL_KEY:
            self.query_one("#panels", ContentSwitcher).current = f"panel-{key}"
        self.redraw()
        # Charts shown for the first time are laid out on the next refresh.
        self.call_after_refresh(self.redraw)

    def action_health(self) -> None:
        self.app.push_screen(HealthScreen(self.model))

    def action_answers(self) -> None:
        self.app.push_screen(SamplesScreen(self.model))

    def action_help(self) -> None:
        self.app.push_screen(HelpScreen())
