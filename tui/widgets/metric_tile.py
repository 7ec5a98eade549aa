"""A tile with the latest value of a metric, a second line of detail, and a sparkline; on a
narrow terminal a single line ("Loss 0.394")."""

from __future__ import annotations

from collections.abc import Sequence
from statistics import fmean

from rich.markup import escape
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Sparkline, Static

# Sparklines summarise their data into one bar a cell; the recent past is what they are for.
SPARKLINE_POINTS = 240


class MetricTile(Vertical):
    """Title in the border; big number, detail line, sparkline of the recent history."""

    def __init__(self, title: str, *, id: str | None = None) -> None:
        super().__init__(id=id, classes="metric-tile")
        self.title = title
        self.border_title = title
        self.value_text = "–"
        self.detail_text = ""

    def compose(self) -> ComposeResult:
        yield Static(f"[b]{escape(self.title)}[/] –", classes="tile-compact")
        yield Static("–", classes="tile-value")
        yield Static("", classes="tile-detail")
        yield Sparkline([], summary_function=fmean)

    def retitle(self, title: str) -> None:
        """A new title (what the tile shows depends on the run's loss)."""
        if title != self.title:
            self.title = title
            self.border_title = title
            self.query_one(".tile-compact", Static).update(
                f"[dim]{escape(title)}[/] [b]{escape(self.value_text)}[/]", layout=False
            )

    def show(self, value: str, detail: str, history: Sequence[float]) -> None:
        # Tiles have a fixed size: no layout pass needed for new text.
        if value != self.value_text:
            self.value_text = value
            self.query_one(".tile-value", Static).update(escape(value), layout=False)
            self.query_one(".tile-compact", Static).update(
                f"[dim]{escape(self.title)}[/] [b]{escape(value)}[/]", layout=False
            )
        if detail != self.detail_text:
            self.detail_text = detail
            self.query_one(".tile-detail", Static).update(escape(detail), layout=False)
        recent = list(history[-SPARKLINE_POINTS:])
        sparkline = self.query_one(Sparkline)
        if sparkline.data != recent:
            sparkline.data = recent
