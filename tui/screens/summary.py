"""The end of a run: how it went, where the adapters are, and what to do with them."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, ClassVar

from rich.markup import escape
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.css.query import NoMatches
from textual.screen import ModalScreen
from textual.widgets import Footer, Static

from ...events import CONFIG_FILE
from ...formatting import format_duration
from ..formatting import format_number, format_percent
from ..messages import RunChanged
from ..run_model import RunModel


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


def chat_command(model: str, run_dir: str) -> str:
    return f"mlx_lm.chat --model {shlex.quote(model)} --adapter-path {shlex.quote(run_dir)}"


def summary_markup(
    model: RunModel, run_dir: str, log_tail: list[str], export_note: str = ""
) -> str:
    """The summary as Rich markup (a pure function, so it is tested without a screen)."""
    lines: list[str] = []
    run_end = model.run_end or {}
    elapsed = format_duration(model.elapsed(0.0))
    steps = f"{model.step}/{model.total_steps}" if model.total_steps else str(model.step)
    if model.state == "failed":
        lines.append(f"[b red]✗ Training failed[/] at step {steps} after {elapsed}")
    elif model.state == "stopped":
        lines.append(f"[b yellow]■ Training stopped[/] at step {steps} after {elapsed}")
    else:
        lines.append(f"[b green]✓ Training finished[/]: {steps} steps in {elapsed}")
    identity = f"model {model.model_name or '?'} · data {model.data_name or '?'} · run {run_dir}"
    lines += [f"[dim]{escape(identity)}[/]", ""]
    if model.state == "failed" and model.error:
        lines += [f"[red]{escape(model.error)}[/]", ""]

    final_eval = run_end.get("final_eval")
    # Without a final evaluation (a failed or stopped run), the last one is what there is.
    label = "Final eval" if final_eval else "Last eval "
    final_eval = final_eval or model.latest_eval()
    best_eval = run_end.get("best_eval")
    if final_eval:
        lines.append(f"[b]{label}[/]  {escape(_eval_line(final_eval) or '')}")
    if best_eval:
        lines.append(f"[b]Best eval[/]   {escape(_eval_line(best_eval) or '')}")
    if final_eval or best_eval:
        lines.append("")

    checkpoint = model.last_checkpoint
    if model.state == "failed":
        if checkpoint:
            lines.append(f"[b]Last checkpoint[/]  {escape(checkpoint)}")
            if (Path(run_dir) / CONFIG_FILE).exists():
                config = shlex.quote(str(Path(run_dir) / CONFIG_FILE))
                resume = f"mlx-dpo train {config} --resume --adapter-path {shlex.quote(run_dir)}"
                lines.append(f"Resume from it:  [b]{escape(resume)}[/]")
        else:
            lines.append("No checkpoint was saved.")
        if log_tail:
            lines += ["", "[b]Last lines of train.log[/]"]
            lines += [f"[dim]{escape(line)}[/]" for line in log_tail]
    else:
        adapter_path = str(run_end.get("adapter_path") or run_dir)
        lines.append(f"[b]Adapters[/]  {escape(adapter_path)}")
        if checkpoint:
            lines.append(f"[b]Last checkpoint[/]  {escape(checkpoint)}")
        lines += ["", "Chat with the tuned model:"]
        lines.append(f"  [b]{escape(chat_command(model.model_name or 'MODEL', adapter_path))}[/]")
        lines.append("Fuse it into a standalone model: press [b]e[/] (or [b]mlx-dpo export[/]).")
    if export_note:
        lines += ["", escape(export_note)]
    return "\n".join(lines)


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

    def compose(self) -> ComposeResult:
        with Vertical(id="summary-dialog", classes="dialog"), VerticalScroll(id="summary-scroll"):
            yield Static(id="summary-text")
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
        self.query_one("#summary-text", Static).update(
            summary_markup(self.model, self.run_dir_label, self.model.log_tail, self.export_note)
        )
        self.refresh_bindings()

    def action_back(self) -> None:
        self.dismiss(None)
