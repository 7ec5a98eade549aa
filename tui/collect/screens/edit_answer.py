"""Edit an answer; what is kept becomes the chosen answer of the pair."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Footer, Label, TextArea


class EditAnswerScreen(ModalScreen[str | None]):
    """Dismisses with the edited text (ctrl+s), or None (escape)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+s", "keep", "keep as chosen", priority=True),
        Binding("escape", "cancel", "cancel", priority=True),
    ]

    def __init__(self, side: str, text: str, rejected_side: str) -> None:
        super().__init__()
        self.side = side
        self.text = text
        self.rejected_side = rejected_side

    def compose(self) -> ComposeResult:
        with Vertical(id="edit-dialog"):
            yield Label(
                f"Edit answer {self.side.upper()}: it is kept as the chosen answer, "
                f"{self.rejected_side.upper()} as the rejected one.",
                id="edit-title",
            )
            yield TextArea(self.text, soft_wrap=True, id="edit-text")
        yield Footer()

    def on_mount(self) -> None:
        area = self.query_one("#edit-text", TextArea)
        area.focus()
        area.move_cursor(area.document.end)

    def action_keep(self) -> None:
        self.dismiss(self.query_one("#edit-text", TextArea).text)

    def action_cancel(self) -> None:
        self.dismiss(None)
