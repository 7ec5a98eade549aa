"""A one-line banner that cannot be missed once the trainer reports a health finding."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from textual.widgets import Static

from ...health import KIND_TITLES


def banner_text(findings: list[dict[str, Any]], checks_off: list[dict[str, Any]]) -> str:
    """ "⚠ 2 findings — h to list", then checks that are off and the latest finding's title
    (the banner is one line: what does not fit is cut, the count and the key never)."""
    off = len(checks_off)
    off_text = f"{off} health check{'s' if off != 1 else ''} off"
    if not findings:
        return f"{off_text} — h to see why"
    count = len(findings)
    parts = [f"⚠ {count} finding{'s' if count != 1 else ''} — h to list"]
    if off:
        parts.append(off_text)
    latest = findings[-1]
    kind = str(latest.get("kind") or "")
    title = KIND_TITLES.get(kind, kind.replace("_", " "))
    if title:
        parts.append(f"latest (step {latest.get('step', '?')}): {escape(title)}")
    return " · ".join(parts)


class HealthBanner(Static):
    """Hidden until the first `health` event; then one line: how many findings, and the
    key that lists them (the findings screen). Checks that are off are counted too."""

    def show(self, findings: list[dict[str, Any]], checks_off: list[dict[str, Any]]) -> None:
        shown = (len(findings), len(checks_off))
        if shown == getattr(self, "_shown", None):
            return
        self._shown = shown
        self.display = bool(findings or checks_off)
        if not self.display:
            return
        errors = sum(1 for finding in findings if finding.get("severity") == "error")
        self.set_class(errors > 0, "-error")
        self.set_class(not findings, "-quiet")
        self.update(banner_text(findings, checks_off))
