"""Quitting while the run is going: stop it, or leave it running in the background."""

from __future__ import annotations

from typing import ClassVar

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label

from ..commands import view_command


class QuitScreen(ModalScreen[str | None]):
    """Dismisses with "stop", "leave", or None (stay)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("s", "choose('stop')", "Stop the run"),
        Binding("l", "choose('leave')", "Leave it running"),
        Binding("escape", "choose('')", "Cancel"),
    ]

    def __init__(self, run_dir: str, state: str = "training", export_running: bool = False) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.state = state
        self.export_running = export_running

    def compose(self) -> ComposeResult:
        paused = self.state == "paused"
        leave = "Leave it paused" if paused else "Leave it running"
        with Vertical(classes="dialog"):
            yield Label(
                "The run is paused" if paused else "Training is still running",
                classes="dialog-title",
            )
            if paused:
                text = (
                    "Stop the run (the adapters are saved now), or leave it paused in the "
                    "background: the trainer waits, and "
                    f"[b]{escape(view_command(self.run_dir))}[/] shows it again (r resumes)."
                )
            else:
                text = (
                    "Stop the run (the adapters are saved after the current step), or leave it "
                    "running in the background: "
                    f"[b]{escape(view_command(self.run_dir))}[/] shows it again."
                )
            if self.export_running:
                text += "\nThe export in progress is cancelled either way."
            yield Label(text, classes="dialog-text")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Stop the run (s)", variant="error", id="stop")
                yield Button(f"{leave} (l)", variant="primary", id="leave")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#cancel", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.action_choose("" if event.button.id == "cancel" else str(event.button.id))

    def action_choose(self, choice: str) -> None:
        self.dismiss(choice or None)
