"""The main screen: the prompt, answers A and B side by side, and the verdict keys."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Footer, Static

from ..widgets import AnswerPane, CollectHeader, PromptPanel


class CollectScreen(Screen):
    """Its keys are bound here, not on the app, so the editor on top takes its own keys; they
    run the app's actions (the app holds the session and says which are available)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a", "app.verdict('a')", "A better"),
        Binding("b", "app.verdict('b')", "B better"),
        Binding("t", "app.verdict('tie')", "tie"),
        Binding("x", "app.verdict('both_bad')", "both bad"),
        Binding("e", "app.edit", "edit"),
        Binding("r", "app.regenerate", "regenerate"),
        Binding("u", "app.undo", "undo"),
        Binding("tab", "app.switch_side", "edit A/B", show=False),
        Binding("left", "app.select_side('a')", show=False),
        Binding("right", "app.select_side('b')", show=False),
        Binding("q", "app.quit_collect", "quit"),
    ]

    def compose(self) -> ComposeResult:
        yield CollectHeader(id="header")
        yield PromptPanel(id="prompt")
        with Horizontal(id="answers"):
            yield AnswerPane("a", id="answer-a")
            yield AnswerPane("b", id="answer-b")
        yield Static(id="note")
        yield Footer()
