"""The log pane: warnings and events of the run, one line each."""

from __future__ import annotations

from collections.abc import Iterable

from rich.table import Table
from rich.text import Text
from textual.widgets import RichLog

from ..run_model import LogEntry

LEVEL_MARKS = {
    "info": ("·", ""),
    "success": ("✓", "green"),
    "warning": ("⚠", "yellow"),
    "error": ("✗", "red"),
}


class EventLog(RichLog):
    """A scrolling log; entries carry the step they happened at, not the wall clock, so the
    same stream always reads the same."""

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(
            id=id, classes=classes, wrap=True, markup=False, max_lines=2000, min_width=20
        )
        self.border_title = "Events"
        self.entries: list[LogEntry] = []
        self._wrapped_at = 0

    def add_entries(self, entries: Iterable[LogEntry]) -> None:
        for entry in entries:
            self.entries.append(entry)
            self._write_entry(entry)
        # Keep the list bounded like the widget's own lines.
        if len(self.entries) > 4000:
            del self.entries[:-2000]

    def _write_entry(self, entry: LogEntry) -> None:
        mark, style = LEVEL_MARKS.get(entry.level, LEVEL_MARKS["info"])
        # A grid keeps wrapped messages indented past the step column.
        row = Table.grid(padding=(0, 1))
        row.add_column(width=5, justify="right", style="dim", no_wrap=True)
        row.add_column(width=1, style=style or "dim")
        row.add_column(ratio=1, overflow="fold")
        step = "" if entry.step is None else str(entry.step)
        message = Text(entry.message, style=style if entry.level == "error" else "")
        row.add_row(step, mark, message)
        self.write(row, expand=True)

    def on_resize(self) -> None:
        """Lines are wrapped when written: at a new width (the log shown across the body
        with key 4, or first shown at all) write them again."""
        width = self.scrollable_content_region.width
        if width and width != self._wrapped_at:
            self._wrapped_at = width
            self.clear()
            for entry in self.entries[-2000:]:
                self._write_entry(entry)

    def clear_entries(self) -> None:
        self.entries.clear()
        self.clear()
