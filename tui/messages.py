"""Messages the dashboard's parts send each other, as small dataclasses.

Workers report to the app (`RunUpdated`, `ExportProgress`, `ExportFinished`); the app tells
the screens what changed (`RunChanged`) and the screens react in their `@on` handlers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from textual.message import Message

from .run_model import LogEntry
from .run_watcher import RunUpdate


@dataclass
class RunUpdated(Message):
    """The run directory changed (posted from the polling thread to the app)."""

    update: RunUpdate


@dataclass
class RunChanged(Message, bubble=False):
    """The app's run model (or what the app is waiting for) changed: redraw.

    `entries` are new lines for the log, `reset` says the stream started over (clear the
    log), `note` is what the dashboard waits for (a requested pause, an export) and
    `export_note` the export's last word, for the summary."""

    entries: list[LogEntry] = field(default_factory=list)
    reset: bool = False
    note: str = ""
    export_note: str = ""


@dataclass
class ExportRequest:
    """What the export dialog asks for."""

    save_path: str
    dequantize: bool


@dataclass
class ExportProgress(Message):
    """A line of output from the running export (posted from the export thread)."""

    line: str


@dataclass
class ExportFinished(Message):
    """The export process ended (posted from the export thread)."""

    save_path: str
    returncode: int
    output_tail: list[str]
