"""The main screen: the prompt, answers A and B side by side, and the verdict keys."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Footer, Static

from ..widgets import AnswerPane, CollectHeader, PromptPanel

if TYPE_CHECKING:
    from ..app import CollectApp


class CollectScreen(Screen):
    """Its keys are bound here, not on the app, so the editor on top takes its own keys."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a", "verdict('a')", "A better"),
        Binding("b", "verdict('b')", "B better"),
        Binding("t", "verdict('tie')", "tie"),
        Binding("x", "verdict('both_bad')", "both bad"),
        Binding("e", "edit", "edit"),
        Binding("r", "regenerate", "regenerate"),
        Binding("u", "undo", "undo"),
        Binding("tab", "switch_side", "edit A/B", show=False),
        Binding("left", "select_side('a')", show=False),
        Binding("right", "select_side('b')", show=False),
        Binding("q", "quit_collect", "quit"),
    ]

    @property
    def collect(self) -> CollectApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield CollectHeader(id="header")
        yield PromptPanel(id="prompt")
        with Horizontal(id="answers"):
            yield AnswerPane("a", id="answer-a")
            yield AnswerPane("b", id="answer-b")
        yield Static(id="note")
        yield Footer()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # None greys the key out in the footer (False would hide it).
        return True if self.collect.action_available(action) else None

    def action_verdict(self, verdict: str) -> None:
        self.collect.give_verdict(verdict)

    def action_edit(self) -> None:
        self.collect.edit_answer()

    def action_regenerate(self) -> None:
        self.collect.regenerate()

    def action_undo(self) -> None:
        self.collect.undo()

    def action_switch_side(self) -> None:
        self.collect.select_side("b" if self.collect.edit_side == "a" else "a")

    def action_select_side(self, side: str) -> None:
        self.collect.select_side(side)

    def action_quit_collect(self) -> None:
        self.collect.quit_collect()
