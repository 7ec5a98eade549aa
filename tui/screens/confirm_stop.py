"""Asks before stopping the run: stopping cannot be undone from the dashboard."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label


class ConfirmStopScreen(ModalScreen[bool]):
    """True when the user confirms the stop."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "confirm", "Stop the run"),
        Binding("n,escape", "cancel", "Keep training"),
    ]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Stop training?", classes="dialog-title")
            yield Label(
                "The trainer finishes the current step, saves the adapters and a "
                "checkpoint, and stops. You can resume later with --resume.",
                classes="dialog-text",
            )
            with Horizontal(classes="dialog-buttons"):
                yield Button("Stop (y)", variant="error", id="confirm")
                yield Button("Keep training (n)", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#cancel", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "confirm")

    def action_confirm(self) -> None:
        self.dismiss(True)

    def action_cancel(self) -> None:
        self.dismiss(False)
