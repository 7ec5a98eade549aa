"""The findings screen: every health finding with its numbers and the suggested change, and
the checks that are off in this run and why (docs/health.md explains each check)."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Static

from ...health import KIND_TITLES
from ..run_model import RunModel


def finding_title(finding: dict[str, Any]) -> str:
    kind = str(finding.get("kind") or "")
    return KIND_TITLES.get(kind, kind.replace("_", " ") or "health check")


def findings_markup(model: RunModel) -> str:
    """The findings as Rich markup, a pure function of the model."""
    lines: list[str] = []
    if not model.findings:
        lines.append("[green]No findings[/]: the run's health checks have raised nothing.")
    for finding in model.findings:
        mark, color = ("✗", "red") if finding.get("severity") == "error" else ("⚠", "yellow")
        lines.append(
            f"[b {color}]{mark} {escape(finding_title(finding))}[/] "
            f"[dim](step {finding.get('step', '?')})[/]"
        )
        if finding.get("message"):
            lines.append(f"  {escape(str(finding['message']))}")
        if finding.get("suggestion"):
            lines.append(f"  [b]→ {escape(str(finding['suggestion']))}[/]")
        lines.append("")
    if model.checks_off:
        lines.append("[b]Checks that are off in this run[/]")
        for check in model.checks_off:
            lines.append(
                f"  · {escape(finding_title(check))}: {escape(str(check.get('message') or ''))}"
            )
        lines.append("")
    lines.append("[dim]What each check looks for and its thresholds: docs/health.md[/]")
    return "\n".join(lines)


class HealthScreen(ModalScreen[None]):
    """Opened with h; esc goes back."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,h", "back", "Back"),
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(self, model: RunModel) -> None:
        super().__init__()
        self.model = model

    def compose(self) -> ComposeResult:
        with Vertical(id="health-dialog", classes="dialog wide-dialog"), VerticalScroll():
            yield Static(findings_markup(self.model), id="health-text")
        yield Footer()

    def on_mount(self) -> None:
        count = len(self.model.findings)
        self.query_one(
            "#health-dialog"
        ).border_title = f"Run health: {count} finding{'s' if count != 1 else ''}"

    def action_back(self) -> None:
        self.dismiss(None)
