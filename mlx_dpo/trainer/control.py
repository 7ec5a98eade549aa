"""Stopping and steering a run from outside: SIGINT/SIGTERM, and the dashboard's commands in
control.jsonl (pause, resume, checkpoint, stop).

Pause, resume and checkpoint are taken between optimizer steps. A stop is honoured in every
state within a few seconds: between steps, while paused, between the batches of the reference
precompute and of an evaluation (`RunControl.stop_requested` reads a stop command there).

A paused run with no dashboard attached does not hold the machine's memory for ever: once
`pause_timeout` seconds have passed since the later of the pause, the last command and the
moment its last dashboard was found gone, it requests a stop (the run saves a checkpoint
and ends "stopped"). A dashboard is attached while the process that launched the trainer as
its dashboard (MLX_DPO_DASHBOARD_PID, set by `mlx-dpo train`) or any process that sent this
run a command (control.jsonl lines carry the sender's pid) is alive. status.json's
`auto_stop_at` says when the stop will come.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from mlx_dpo.events import DASHBOARD_PID_ENV, ControlReader
from mlx_dpo.rundir import pid_alive

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
    while running, "resume" while paused, and "checkpoint"; "stop" goes to the stop request.
    `stop_requested()` reads the new commands too (for a long phase between steps) and keeps
    the others for the next `poll()`. `pause_timeout` is in seconds (0: a pause waits for ever)."""

    def __init__(
        self,
        run_dir: str | os.PathLike,
        stop: StopRequest,
        pause_timeout: float = 0.0,
        clock: Callable[[], float] = time.time,
    ):
        self.reader = ControlReader(run_dir)
        self.stop = stop
        self.paused = False
        self.pause_timeout = pause_timeout
        self.clock = clock
        self.pending: list[str] = []
        self.last_command = clock()
        self.paused_at = self.last_command
        self.alone_since: float | None = None
        self.dashboards = set(_launching_dashboard())

    def poll(self) -> list[str]:
        self._read()
        actions, self.pending = self.pending, []
        return actions

    def stop_requested(self) -> bool:
        self._read()
        return self.stop.requested

    def _read(self) -> None:
        for record in self.reader.poll_records():
            command = record["command"]
            self.last_command = self.clock()
            pid = record.get("pid")
            if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0:
                self.dashboards.add(pid)
            if command == "pause" and not self.paused:
                self.paused, self.paused_at = True, self.last_command
                self.pending.append(command)
            elif command == "resume" and self.paused:
                self.paused = False
                self.pending.append(command)
            elif command == "checkpoint":
                self.pending.append(command)
            elif command == "stop":
                self.stop.request()

    def auto_stop_at(self) -> float | None:
        """When a paused run with no dashboard attached stops itself (time.time() seconds);
        None while running, with a dashboard attached, or without a timeout. Requests the
        stop once that time has come."""
        if not self.paused or not self.pause_timeout:
            self.alone_since = None
            return None
        if any(pid_alive(pid) for pid in self.dashboards):
            self.alone_since = None
            return None
        now = self.clock()
        if self.alone_since is None:
            self.alone_since = now
        deadline = max(self.paused_at, self.last_command, self.alone_since) + self.pause_timeout
        if now >= deadline and not self.stop.requested:
            minutes = self.pause_timeout / 60
            self.stop.request(f"paused {minutes:g} min with no dashboard attached")
        return deadline


def _launching_dashboard() -> list[int]:
    text = os.environ.get(DASHBOARD_PID_ENV, "")
    return [int(text)] if text.isdigit() else []
