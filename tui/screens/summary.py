"""The end of a run: how it went, where the adapters are, and what to do with them."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.markup import escape
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import ScrollableContainer, Vertical
from textual.css.query import NoMatches
from textual.screen import ModalScreen
from textual.widgets import Footer, Static

from ...formatting import format_duration
from ..commands import chat_command, resume_command
from ..formatting import format_number, format_percent
from ..messages import RunChanged
from ..run_model import RunModel, check_off_text
from .health import finding_title


def _eval_line(values: dict[str, Any] | None) -> str | None:
    if not values:
        return None
    parts = [
        f"loss {format_number(values.get('loss'))}",
        f"accuracy {format_percent(values.get('rewards/accuracies'))}",
        f"margin {format_number(values.get('rewards/margins'))}",
    ]
    if values.get("split"):
        parts.append(f"({values['split']})")
    if values.get("step") is not None:
        parts.append(f"at step {values['step']}")
    return "  ".join(parts)


def _round_lines(model: RunModel, final_eval: dict[str, Any] | None) -> list[str]:
    """Round k of N: each round's evaluation on its held-out pairs, earlier rounds first."""
    number, rounds = model.round or (0, 0)
    lines = [f"[b]Round {number} of {rounds}[/] (held-out: each round's validation pairs)"]
    results = [*model.earlier_rounds, {"round": number, "final_eval": final_eval}]
    for result in results:
        values = result.get("final_eval") or result.get("best_eval")
        shown = _eval_line(values) or "no evaluation (no validation split)"
        mark = "  ← this run" if result is results[-1] else ""
        lines.append(f"  round {result.get('round', '?')}  {escape(shown)}{mark}")
    return lines


# A summary line: ("text", markup) wraps like prose; ("command", plain) is a shell command,
# printed whole on its own line so it copies and pastes.
SummaryLine = tuple[str, str]


def summary_lines(model: RunModel, run_dir: str, export_note: str = "") -> list[SummaryLine]:
    """The summary, a pure function of the model: health findings first (a run with findings
    does not read as a plain success), then the evals, the adapters and what to run next.
    Long, but it reads top to bottom in the order a user needs its parts."""
    lines: list[SummaryLine] = []

    def text(markup: str = "") -> None:
        lines.append(("text", markup))

    def command(line: str) -> None:
        lines.append(("command", line))

    run_end = model.run_end or {}
    elapsed = format_duration(model.elapsed(0.0))
    paused = model.paused(0.0)
    if paused >= 1:
        elapsed += f" ({format_duration(paused)} of it paused)"
    steps = f"{model.step}/{model.total_steps}" if model.total_steps else str(model.step)
    findings = model.findings
    count = len(findings)
    with_findings = f" with {count} health finding{'s' if count != 1 else ''}" if count else ""
    if model.state == "failed":
        text(f"[b red]✗ Training failed[/] at step {steps} after {elapsed}")
    elif model.state == "stopped":
        text(f"[b yellow]■ Training stopped[/]{with_findings} at step {steps} after {elapsed}")
    elif count:
        text(f"[b yellow]⚠ Training finished{with_findings}[/]: {steps} steps in {elapsed}")
    else:
        text(f"[b green]✓ Training finished[/]: {steps} steps in {elapsed}")
    identity = f"model {model.model_name or '?'} · data {model.data_name or '?'} · run {run_dir}"
    text(f"[dim]{escape(identity)}[/]")
    text()
    if model.state == "failed" and model.error:
        text(f"[red]{escape(model.error)}[/]")
        text()

    if findings:
        text("[b]Health findings[/] (h lists them with their numbers; docs/health.md)")
        for finding in findings:
            mark = "✗" if finding.get("severity") == "error" else "⚠"
            text(
                f"[yellow]{mark}[/] [b]{escape(finding_title(finding))}[/] "
                f"[dim](step {finding.get('step', '?')})[/]"
            )
            if finding.get("suggestion"):
                text(f"   → {escape(str(finding['suggestion']))}")
        text()
    for check in model.checks_off:
        text(f"[dim]Check off: {escape(check_off_text(check))}[/]")
    if model.checks_off:
        text()

    final_eval = run_end.get("final_eval")
    # Without a final evaluation (a failed or stopped run), the last one is what there is.
    label = "Final eval" if final_eval else "Last eval "
    final_eval = final_eval or model.latest_eval()
    best_eval = run_end.get("best_eval")
    if final_eval:
        text(f"[b]{label}[/]  {escape(_eval_line(final_eval) or '')}")
    if best_eval:
        text(f"[b]Best eval[/]   {escape(_eval_line(best_eval) or '')}")
    if final_eval or best_eval:
        text()
    if model.round is not None:
        for line in _round_lines(model, final_eval):
            text(line)
        text()

    checkpoint = model.last_checkpoint
    if model.state == "failed":
        if checkpoint:
            text(f"[b]Last checkpoint[/]  {escape(checkpoint)}")
            text("Resume from it:")
            command(resume_command(run_dir))
        else:
            text("No checkpoint was saved.")
        if model.log_tail:
            text()
            text("[b]Last lines of train.log[/]")
            for line in model.log_tail:
                text(f"[dim]{escape(line)}[/]")
    else:
        adapter_path = str(run_end.get("adapter_path") or run_dir)
        text(f"[b]Adapters[/]  {escape(adapter_path)}")
        if checkpoint:
            text(f"[b]Last checkpoint[/]  {escape(checkpoint)}")
        if model.state == "stopped":
            text()
            text("Carry on from where it stopped:")
            command(resume_command(run_dir))
            if model.round is not None:
                text(
                    "or run the same [b]mlx-dpo train --rounds[/] command again: it continues "
                    "this round, then the rounds after it"
                )
        text()
        text("Chat with the tuned model:")
        command(chat_command(model.model_name or "MODEL", adapter_path))
        text("Fuse it into a standalone model: press [b]e[/] (or [b]mlx-dpo export[/]).")
    if export_note:
        text()
        text(escape(export_note))
    return lines


def summary_markup(model: RunModel, run_dir: str, export_note: str = "") -> str:
    """The summary as one block of Rich markup (for tests and plain output)."""
    return "\n".join(
        markup if kind == "text" else f"  [b]{escape(markup)}[/]"
        for kind, markup in summary_lines(model, run_dir, export_note)
    )


class SummaryScreen(ModalScreen[None]):
    """Stays up after the run ends until the user quits; esc goes back to the charts.
    Redrawn when the app posts `RunChanged` (an export starts or ends)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back to charts"),
        Binding("e", "app.export", "Export"),
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(self, model: RunModel, run_dir_label: str, export_note: str = "") -> None:
        super().__init__()
        self.model = model
        self.run_dir_label = run_dir_label
        self.export_note = export_note
        self._shown: list[SummaryLine] | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="summary-dialog", classes="dialog"):
            yield ScrollableContainer(id="summary-scroll")
        yield Footer()

    def on_mount(self) -> None:
        self.refresh_summary()

    @on(RunChanged)
    def run_changed(self, message: RunChanged) -> None:
        self.export_note = message.export_note
        self.refresh_summary()

    def refresh_summary(self) -> None:
        try:
            dialog = self.query_one("#summary-dialog")
        except NoMatches:
            return  # not composed yet, or already being taken down
        dialog.border_title = "Run summary"
        dialog.set_class(self.model.state == "failed", "-failed")
        dialog.set_class(bool(self.model.findings), "-findings")
        lines = summary_lines(self.model, self.run_dir_label, self.export_note)
        if lines != self._shown:
            self._shown = lines
            scroll = self.query_one("#summary-scroll", ScrollableContainer)
            scroll.remove_children()
            scroll.mount_all(
                Static(markup, classes="summary-line")
                if kind == "text"
                else Static(escape(markup), classes="summary-line command")
                for kind, markup in lines
            )
        self.refresh_bindings()

    def summary_text(self) -> str:
        """The summary as plain text, each command whole on its line (tests read this)."""
        markup = summary_markup(self.model, self.run_dir_label, self.export_note)
        return Text.from_markup(markup).plain

    def action_back(self) -> None:
        self.dismiss(None)
