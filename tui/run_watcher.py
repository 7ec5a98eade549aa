"""Following a run directory from outside: new events, the status file, and whether the
trainer process is still alive.

Plain Python and safe to call from a worker thread (it touches no widget).
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..events import FINAL_STATES, LOG_FILE, EventFollower, read_status


@dataclass
class RunUpdate:
    """What one poll of the run directory found."""

    events: list[dict[str, Any]] = field(default_factory=list)
    # The event stream was rewritten from the start (a resumed run): forget what was read.
    reset: bool = False
    status: dict[str, Any] = field(default_factory=dict)
    # Set once, when the trainer process is found gone: what happened, in words.
    trainer_gone: str | None = None
    # The last lines of train.log, read when the trainer is found gone.
    log_tail: list[str] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not (self.events or self.reset or self.trainer_gone)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        # It exists but belongs to someone else.
        return True
    except OSError:
        return False
    return True


def describe_exit(code: int) -> str:
    """A trainer's exit status in words."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        if -code == signal.SIGKILL:
            return f"The trainer was killed ({name}): out of memory, or killed by hand"
        return f"The trainer was killed by {name}"
    if code == 0:
        return "The trainer exited without ending the run"
    return f"The trainer exited with code {code}"


def tail_lines(path: str | os.PathLike, count: int = 20, max_bytes: int = 64 * 1024) -> list[str]:
    """The last `count` non-empty lines of a text file; [] when it does not exist."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except OSError:
        return []
    lines = [line.rstrip() for line in data.decode("utf-8", errors="replace").splitlines()]
    return [line for line in lines if line.strip()][-count:]


class RunWatcher:
    """Polls a run directory. With a `trainer` handle, its exit is seen directly; without
    one, the pid in status.json (or run_start) is checked while the run is not over."""

    def __init__(self, run_dir: str | os.PathLike, trainer: subprocess.Popen | None = None):
        self.run_dir = Path(run_dir)
        self.trainer = trainer
        self.follower = EventFollower(self.run_dir)
        self._ended = False
        self._run_start_pid: int | None = None
        self._gone_reported = False

    def poll(self) -> RunUpdate:
        update = RunUpdate()
        self._read_events(update)
        update.status = read_status(self.run_dir)
        if not self._gone_reported:
            gone = self._trainer_gone(update.status)
            if gone is not None:
                self._gone_reported = True
                # Lines written just before the exit (a run_end, an error) come first.
                self._read_events(update)
                update.trainer_gone = gone
                update.log_tail = tail_lines(self.run_dir / LOG_FILE)
        return update

    def _read_events(self, update: RunUpdate) -> None:
        events = self.follower.poll()
        if self.follower.reset:
            update.reset = True
            update.events.clear()
            self._ended = False
        for event in events:
            kind = event.get("event")
            if kind == "run_start":
                self._ended = False
                pid = event.get("pid")
                self._run_start_pid = pid if isinstance(pid, int) else None
                if self.trainer is None:
                    # A new trainer may be attached to this directory.
                    self._gone_reported = False
            elif kind == "run_end":
                self._ended = True
        update.events.extend(events)

    def _trainer_gone(self, status: dict[str, Any]) -> str | None:
        if self.trainer is not None:
            code = self.trainer.poll()
            return None if code is None else describe_exit(code)
        if self._ended or status.get("state") in FINAL_STATES:
            return None
        pid = status.get("pid")
        if not isinstance(pid, int) or isinstance(pid, bool):
            pid = self._run_start_pid
        if pid is None or pid <= 0 or pid_alive(pid):
            return None
        return f"The trainer process (pid {pid}) is gone without ending the run"
