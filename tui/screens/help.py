"""The help screen (?): every key of the dashboard and what each chart means."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Static

from ..panels import LOG_PANEL_KEY, PANEL_SETS, PanelSet
from ..widgets.metric_chart import CHECKPOINT_MARK, EVAL_MARKER

# Every key of the dashboard, in the order the help lists them.
KEYS = (
    ("p", "pause the run after the current step (the trainer waits)"),
    ("r", "resume a paused run"),
    ("c", "save a checkpoint after the current step"),
    ("s", "stop: save the adapters and a checkpoint, end the run (asks first)"),
    ("e", "export: fuse the adapters into the base model, in its own process"),
    ("1 2 3", "chart sets: preferences; log-probs & eval; optimizer & speed"),
    (LOG_PANEL_KEY, "the events log across the whole screen"),
    ("m", "smoothing of the charts and tiles: raw, EMA 0.6, 0.9, 0.99"),
    ("h", "health findings and the checks that are off"),
    ("a", "answers to fixed prompts: reference next to the policy, changes marked"),
    ("u", "the summary of a run that ended"),
    ("x", "save a screenshot (SVG) into the run directory"),
    ("?", "this help"),
    ("q", "quit: a live run can be stopped or left running (mlx-dpo view shows it again)"),
    (
        "ctrl+c",
        "with `mlx-dpo train`: stop the run and save, then close (like Ctrl-C "
        "without the dashboard); with `mlx-dpo view`: close and leave the run going",
    ),
)


def help_markup(panel_sets: Sequence[PanelSet] = PANEL_SETS) -> str:
    lines = ["[b]Keys[/]"]
    lines += [f"  [b]{escape(key):>6}[/]  {escape(text)}" for key, text in KEYS]
    lines += [
        "",
        "[b]How the charts are drawn[/]",
        "  Lines are the training steps, smoothed (EMA, m changes it); the raw steps are "
        "drawn faint behind. "
        f"{EVAL_MARKER} marks an evaluation on the validation split; "
        f"{CHECKPOINT_MARK} on the step axis marks a checkpoint. Where two lines share a "
        "cell both are drawn, in the colour of the first in the legend.",
    ]
    for panel in panel_sets:
        lines += ["", f"[b]{panel.key} · {escape(panel.name)}[/]"]
        for chart in panel.charts:
            lines.append(f"  [b]{escape(chart.title)}[/]: {escape(chart.meaning)}")
    lines += [
        "",
        "[b]Tiles[/]: the latest value, smoothed like the charts; under it the latest eval "
        "(or a related number); Log-ratio is the mean policy − reference log-ratio (`kl` in "
        "the stream), not a divergence: it can be negative.",
    ]
    return "\n".join(lines)


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,question_mark", "back", "Back")]

    def compose(self) -> ComposeResult:
        with Vertical(id="help-dialog", classes="dialog wide-dialog"), VerticalScroll():
            yield Static(help_markup(), id="help-text")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#help-dialog").border_title = "mlx-dpo dashboard: keys and charts"

    def action_back(self) -> None:
        self.dismiss(None)
