"""The top line: the model and how answers are drawn; progress and agreement with the model."""

from __future__ import annotations

from rich.markup import escape
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from ....collect import Progress
from ....sampling import describe_sampling


def progress_text(progress: Progress) -> str:
    agreement = progress.agreement
    agreed = (
        f"{progress.agreed}/{progress.compared} ({agreement:.0%})" if agreement is not None else "–"
    )
    return (
        f"[b]judged[/] {progress.judged}/{progress.total}  [b]pairs[/] {progress.pairs}  "
        f"[b]skipped[/] {progress.skipped}  [b]agreed with the model[/] {agreed}"
    )


class CollectHeader(Vertical):
    def compose(self) -> ComposeResult:
        yield Static("loading the model…", id="collect-identity")
        yield Static(id="collect-progress")

    def show_identity(self, info: dict, out: str) -> None:
        source = escape(str(info.get("adapter") or info.get("model") or "?"))
        mode = "reference vs policy" if info.get("mode") == "adapter" else "two samples"
        self.query_one("#collect-identity", Static).update(
            f"[b]model[/] {source}  [b]{mode}[/], {describe_sampling(info['sampling'])}  "
            f"[b]out[/] {escape(out)}"
        )

    def show_progress(self, progress: Progress) -> None:
        self.query_one("#collect-progress", Static).update(progress_text(progress))
