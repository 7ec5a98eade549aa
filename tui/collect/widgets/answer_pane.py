"""One answer (A or B): who gave it, its text as it streams in, and how it ended."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Static


class AnswerPane(Vertical, can_focus=False):
    """The title names the side and its source (sample A, reference, policy) and seed; the
    body is plain text (never read as markup: the model may write brackets); the status
    line says streaming, the token count and why it ended, and the model's preference."""

    def __init__(self, side: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.side = side
        self.text = ""

    def compose(self) -> ComposeResult:
        yield Static(classes="answer-title")
        with VerticalScroll(classes="answer-scroll"):
            yield Static(classes="answer-body", markup=False)
        yield Static(classes="answer-status")

    @property
    def scroll(self) -> VerticalScroll:
        return self.query_one(".answer-scroll", VerticalScroll)

    def set_title(self, label: str, seed: int | None) -> None:
        seed_text = f" · seed {seed}" if seed is not None else ""
        self.query_one(".answer-title", Static).update(
            Text.assemble((f"{self.side.upper()}", "bold"), f"  {label}{seed_text}")
        )

    def set_text(self, text: str) -> None:
        self.text = text
        self.query_one(".answer-body", Static).update(Text(text))

    def add_text(self, piece: str) -> None:
        self.set_text(self.text + piece)
        self.scroll.scroll_end(animate=False)

    def set_status(self, status: str, preferred: bool = False) -> None:
        self.query_one(".answer-status", Static).update(status)
        self.set_class(preferred, "-preferred")

    def set_selected(self, selected: bool) -> None:
        """The side `edit` starts from."""
        self.set_class(selected, "-selected")
