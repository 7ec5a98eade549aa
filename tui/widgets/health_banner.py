"""A badge that appears when the trainer reports a health finding (diverging loss, ...)."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from textual.widgets import Static


class HealthBanner(Static):
    """Hidden until the first `health` event; then the count and the latest finding."""

    def show(self, findings: list[dict[str, Any]]) -> None:
        shown = (len(findings), id(findings[-1]) if findings else None)
        if shown == getattr(self, "_shown", None):
            return
        self._shown = shown
        self.display = bool(findings)
        if not findings:
            return
        latest = findings[-1]
        errors = sum(1 for finding in findings if finding.get("severity") == "error")
        self.set_class(errors > 0, "-error")
        count = len(findings)
        noun = "finding" if count == 1 else "findings"
        message = str(latest.get("message") or latest.get("kind") or "")
        suggestion = latest.get("suggestion")
        text = f"⚠ health: {count} {noun} · step {latest.get('step', '?')}: {escape(message)}"
        if suggestion:
            text += f" [i]→ {escape(str(suggestion))}[/]"
        self.update(text)
