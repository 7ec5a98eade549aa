"""Stopping and steering a run from outside, between optimizer steps: SIGINT/SIGTERM, and the
dashboard's commands in control.jsonl (pause, resume, checkpoint, stop)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mlx_dpo.events import ControlReader

# How often a paused run looks for "resume" (or "stop").
PAUSE_POLL_SECONDS = 0.2

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Set by a stop signal, the dashboard's stop command, another rank's stop or the memory
    guard; the run stops after its current step and saves. `reason` says why where there is
    more to say than "stop" (the signal's name, "memory limit")."""

    def __init__(self) -> None:
        self.requested = False
        self.reason: str | None = None

    def request(self, reason: str | None = None) -> None:
        self.requested = True
        if reason is not None:
            self.reason = reason

    def __call__(self, signum: int, _frame: Any) -> None:
        """The signal handler."""
        self.request(signal.Signals(signum).name)


@contextmanager
def stop_on_signals(stop: StopRequest, enabled: bool = True) -> Iterator[None]:
    """SIGINT and SIGTERM request a stop while inside; the previous handlers come back after.
    `enabled=False` (a run inside a test or a notebook) leaves the handlers alone."""
    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS} if enabled else {}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class RunControl:
    """The trainer's side of control.jsonl. Commands written before it was made (a previous
    run's) are skipped. `poll()` gives the commands that change something, in order: "pause"
    while running, "resume" while paused, and "checkpoint"; "stop" goes to the stop request."""

    def __init__(self, run_dir: str | os.PathLike, stop: StopRequest):
        self.reader = ControlReader(run_dir)
        self.stop = stop
        self.paused = False

    def poll(self) -> list[str]:
        actions = []
        for command in self.reader.poll():
            if command == "pause" and not self.paused:
                self.paused = True
                actions.append(command)
            elif command == "resume" and self.paused:
                self.paused = False
                actions.append(command)
            elif command == "checkpoint":
                actions.append(command)
            elif command == "stop":
                self.stop.request()
        return actions
