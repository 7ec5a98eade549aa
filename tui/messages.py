"""Messages the dashboard's parts send each other."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from .run_watcher import RunUpdate


@dataclass
class RunUpdated(Message):
    """The run directory changed (posted from the polling thread)."""

    update: RunUpdate


@dataclass
class ExportRequest:
    """What the export dialog asks for."""

    save_path: str
    dequantize: bool


@dataclass
class ExportProgress(Message):
    """A line of output from the running export."""

    line: str


@dataclass
class ExportFinished(Message):
    """The export process ended."""

    save_path: str
    returncode: int
    output_tail: list[str]
