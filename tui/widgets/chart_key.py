"""One line under the charts: which chart set is shown (keys 1-4) and how the lines are
drawn (smoothing, the faint raw steps, eval markers, checkpoint marks)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.markup import escape
from textual.widgets import Static

from ..panels import LOG_PANEL_KEY, PanelSet, smoothing_label
from .metric_chart import CHECKPOINT_MARK, EVAL_MARKER


def key_markup(panel_sets: Sequence[PanelSet], current: str, weight: float, width: int) -> str:
    """The key line at `width` columns: every panel named when it fits, else the current one
    only; then the drawing key, shortened to fit."""
    names = [(panel.key, panel.name) for panel in panel_sets] + [(LOG_PANEL_KEY, "Events")]
    smoothing = smoothing_label(weight)
    drawings = (
        f"lines {smoothing} (m) · raw faint · {EVAL_MARKER} eval · {CHECKPOINT_MARK} checkpoint"
        " · ? help",
        f"{smoothing} (m) · raw faint · {EVAL_MARKER} eval · {CHECKPOINT_MARK} checkpoint",
        f"{smoothing} · faint raw · {EVAL_MARKER} eval · {CHECKPOINT_MARK} ckpt",
    )
    # Panel names go before the drawing key is shortened.
    variants = [(all_names, drawing) for drawing in drawings for all_names in (True, False)]
    for all_names, drawing in variants:
        tabs, plain = [], 0
        for key, name in names:
            text = f" {key} {name} " if all_names or key == current else f" {key} "
            plain += len(text)
            tabs.append(f"[reverse]{escape(text)}[/]" if key == current else escape(text))
        if plain + 3 + len(drawing) <= width:
            break
    return "".join(tabs) + " │ " + escape(drawing)


class ChartKey(Static):
    """Redrawn when the panel or the smoothing changes, or the width does."""

    def __init__(self, panel_sets: Sequence[PanelSet], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.panel_sets = panel_sets
        self.current = panel_sets[0].key
        self.weight = 0.0

    def show(self, current: str, weight: float) -> None:
        self.current, self.weight = current, weight
        self._draw()

    def on_resize(self) -> None:
        self._draw()

    def _draw(self) -> None:
        width = self.size.width or 200
        self.update(key_markup(self.panel_sets, self.current, self.weight, width))
