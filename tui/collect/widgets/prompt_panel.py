"""The prompt being judged: its place in the file and its messages."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static


class PromptPanel(VerticalScroll):
    def compose(self) -> ComposeResult:
        yield Static(id="prompt-title")
        yield Static(id="prompt-body", markup=False)

    def show(self, title: str, messages: list[dict[str, str]]) -> None:
        self.query_one("#prompt-title", Static).update(Text(title, style="bold"))
        body = Text()
        for number, message in enumerate(messages):
            if number:
                body.append("\n")
            if len(messages) > 1 or message["role"] != "user":
                body.append(f"{message['role']}: ", style="italic")
            body.append(message["content"])
        self.query_one("#prompt-body", Static).update(body)
        self.scroll_home(animate=False)
