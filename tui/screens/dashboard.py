"""The main screen: header, tiles, charts and the log, with the run's keys in the footer."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer

from ..widgets import EventLog, HealthBanner, MetricChart, MetricTile, RunHeader

if TYPE_CHECKING:
    from ..app import DashboardApp

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


class DashboardScreen(Screen):
    """Everything about the run on one screen. Its keys are bound here rather than on the
    app, so dialogs on top of it take their own keys without these firing underneath."""

    # Below 100 columns the panels stack and the body scrolls (see dashboard.tcss).
    HORIZONTAL_BREAKPOINTS: ClassVar[list[tuple[int, str]]] = [(0, "-narrow"), (100, "-wide")]

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("p", "pause", "Pause"),
        Binding("r", "resume", "Resume"),
        Binding("c", "checkpoint", "Checkpoint"),
        Binding("s", "stop", "Stop"),
        Binding("e", "export", "Export"),
        Binding("m", "cycle_smoothing", "Smoothing"),
        Binding("u", "summary", "Summary"),
        Binding("q", "quit_dashboard", "Quit"),
    ]

    @property
    def dashboard(self) -> DashboardApp:
        return self.app  # type: ignore[return-value]

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

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "summary":
            # Only a finished run has one; hidden rather than greyed to keep the footer short.
            return self.dashboard.action_available(action)
        # None greys the key out in the footer (False would hide it).
        return True if self.dashboard.action_available(action) else None

    def action_pause(self) -> None:
        self.dashboard.pause_run()

    def action_resume(self) -> None:
        self.dashboard.resume_run()

    def action_checkpoint(self) -> None:
        self.dashboard.checkpoint_run()

    def action_stop(self) -> None:
        self.dashboard.ask_stop_run()

    def action_export(self) -> None:
        self.dashboard.ask_export()

    def action_cycle_smoothing(self) -> None:
        self.dashboard.cycle_smoothing()

    def action_summary(self) -> None:
        self.dashboard.show_summary()

    def action_quit_dashboard(self) -> None:
        self.dashboard.request_quit()
