"""The dashboard app and its entry point, `run_dashboard`.

The app keeps what is app-wide: the worker that follows the run directory, the trainer
process, the run model the screens draw, which of the run's keys are available, the screens,
and the export's child process. A worker thread polls metrics.jsonl, status.json and the
trainer process and reports by message; the app applies what it found to its `RunModel` and
posts `RunChanged` to the screens, which redraw their own widgets. Commands go to the trainer
through control.jsonl (`mlx_dpo.events.send_command`). No MLX here.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from textual import on, work
from textual.app import App
from textual.binding import Binding, BindingType
from textual.worker import get_current_worker

from ..events import ADAPTER_FILE, LOG_FILE, send_command
from .commands import closing_message
from .messages import ExportFinished, ExportProgress, ExportRequest, RunChanged, RunUpdated
from .run_model import LogEntry, RunModel
from .run_watcher import RunUpdate, RunWatcher, tail_lines
from .screens import ConfirmStopScreen, DashboardScreen, ExportScreen, QuitScreen, SummaryScreen

ExportCommand = Callable[[Path, Path, bool], list[str]]

# The run's keys: the app decides from the run's state which of them are available.
RUN_ACTIONS = ("pause", "resume", "checkpoint", "stop", "export", "summary")

# What a command waits for: the event kind (and states) with which the trainer answers it.
COMMAND_ANSWERS: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "pause": ("state", ("paused",)),
    "resume": ("state", ("resumed", "training")),
    "checkpoint": ("checkpoint", None),
    "stop": ("state", ("stopping",)),
}

PENDING_NOTES = {
    "pause": "pause requested: the trainer pauses after the current step…",
    "resume": "resume requested…",
    "checkpoint": "checkpoint requested: saved after the current step…",
    "stop": "stop requested: the trainer saves and stops after the current step…",
}


def build_export_command(run_dir: Path, save_path: Path, dequantize: bool) -> list[str]:
    """The export runs the CLI in its own process (it loads the model with MLX)."""
    command = [
        sys.executable,
        "-m",
        "mlx_dpo.cli",
        "export",
        "--adapter-path",
        str(run_dir),
        "--save-path",
        str(save_path),
    ]
    if dequantize:
        command.append("--dequantize")
    return command


class DashboardApp(App[int]):
    """The live dashboard of one run directory.

    `trainer` is the trainer's process when this dashboard started it; without it, the
    trainer's liveness is read from the pid in status.json. `clock` gives the time used for
    elapsed/ETA between events (tests freeze it).
    """

    CSS_PATH = "dashboard.tcss"
    TITLE = "mlx-dpo"
    # Every action goes through the keys, whose availability follows the run.
    ENABLE_COMMAND_PALETTE = False
    # Textual's own quit key goes through the same questions as "q". Ctrl-C does what it
    # does without the dashboard (README "The dashboard"): see action_interrupt.
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+q", "quit", "Quit", show=False, priority=True),
        Binding("ctrl+c", "interrupt", "Stop and save", show=False, priority=True),
    ]

    def __init__(
        self,
        run_dir: str | Path,
        trainer: subprocess.Popen | None = None,
        poll_interval: float = 0.25,
        *,
        clock: Callable[[], float] = time.time,
        redraw_interval: float = 0.3,
        export_command: ExportCommand = build_export_command,
        close_when_finished: bool = False,
    ) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        # A round of `train --rounds` that is not the last: its end is not the user's to
        # read, the next round's pairs follow (mlx_dpo/cli/rounds.py).
        self.close_when_finished = close_when_finished
        # Shown as given (relative stays relative), so printed commands work from here.
        self.run_dir_label = str(run_dir)
        self.trainer = trainer
        self.poll_interval = poll_interval
        self.clock = clock
        self.export_command = export_command
        self.model = RunModel()
        if trainer is not None:
            # A run being resumed has an earlier session's run_end in its stream: until this
            # trainer's run_start, that end is history, not this run's.
            self.model.await_session(trainer.pid, clock())
        self.watcher = RunWatcher(self.run_dir, trainer)
        # A command sent and not yet answered by an event: "pause", "resume", "checkpoint", "stop".
        self.pending_command: str | None = None
        self.stopping_to_quit = False
        self.trainer_exited = False
        self.export_running = False
        self.export_note = ""
        self._export_process: subprocess.Popen | None = None
        self._adapters_exist = False
        self._summary_shown = False
        self._last_status: dict[str, Any] = {}
        self._availability: tuple[bool, ...] = ()
        self._stop_polling = threading.Event()
        self.dashboard = DashboardScreen(
            self.model, self.run_dir_label, clock=clock, redraw_interval=redraw_interval
        )

    @property
    def log_tail(self) -> list[str]:
        return self.model.log_tail

    # -- lifecycle ---------------------------------------------------------------------

    async def on_mount(self) -> None:
        # The first read happens before the screen is shown, so its first frame has the run.
        entries = self.apply_update_to_model(self.watcher.poll())
        await self.push_screen(self.dashboard)
        self.announce(entries)
        self._show_summary_once()
        self.poll_run_directory()

    def on_unmount(self) -> None:
        self._stop_polling.set()
        self._kill_export()

    def exit(self, *args: Any, **kwargs: Any) -> None:
        # Stop drawing first: timers and queued updates may still fire while the screens go.
        self._stop_polling.set()
        self._kill_export()
        super().exit(*args, **kwargs)

    @work(thread=True, exclusive=True, group="poll", exit_on_error=False)
    def poll_run_directory(self) -> None:
        """Polls in a thread (a long stream takes a while to parse); reports by message."""
        worker = get_current_worker()
        while not worker.is_cancelled and not self._stop_polling.is_set():
            update = self.watcher.poll()
            if not update.is_empty or update.status != self._last_status:
                self.post_message(RunUpdated(update))
            self._stop_polling.wait(self.poll_interval)

    @property
    def can_draw(self) -> bool:
        """False while shutting down: messages and timers still fire as the screens go."""
        return self.is_running and not self._stop_polling.is_set()

    @on(RunUpdated)
    def run_updated(self, message: RunUpdated) -> None:
        if not self.can_draw:
            return
        reset = message.update.reset
        entries = self.apply_update_to_model(message.update)
        self.announce(entries, reset=reset)
        if self.stopping_to_quit and (self.model.is_final or self.trainer_exited):
            self.exit(self.exit_code)
            return
        if self.close_when_finished and self.model.state == "finished":
            self.exit(0)
            return
        if not self.model.is_final:
            self._close_summary()
        self._show_summary_once()

    def apply_update_to_model(self, update: RunUpdate) -> list[LogEntry]:
        """Take in one poll's findings; returns the log lines they add."""
        self._last_status = update.status
        if update.reset:
            self._summary_shown = False
        entries = self.model.apply_update(update)
        self._settle_pending_command(update.events)
        if update.trainer_gone is not None:
            self.trainer_exited = True
        elif self.model.state == "failed" and not self.model.log_tail:
            self.model.log_tail = tail_lines(self.run_dir / LOG_FILE)
        self._adapters_exist = (self.run_dir / ADAPTER_FILE).exists()
        return entries

    def announce(self, entries: list[LogEntry] | None = None, reset: bool = False) -> None:
        """Tell the screens that the run, or what the app waits for, changed."""
        note, export_note = self.header_note(), self.export_note
        self.dashboard.post_message(RunChanged(list(entries or []), reset, note, export_note))
        for screen in self.screen_stack:
            if isinstance(screen, SummaryScreen):
                screen.post_message(RunChanged([], reset, note, export_note))
        self._refresh_bindings_if_changed()

    def _settle_pending_command(self, events: list[dict[str, Any]]) -> None:
        """A command is answered when the trainer writes the matching event."""
        if self.pending_command is None:
            return
        kind, states = COMMAND_ANSWERS[self.pending_command]
        for event in events:
            if event.get("event") == kind and (states is None or event.get("state") in states):
                self.pending_command = None
                break
        if self.model.is_final:
            self.pending_command = None

    @property
    def exit_code(self) -> int:
        return 1 if self.model.state == "failed" else 0

    def header_note(self) -> str:
        """What the dashboard waits for, in words."""
        parts = []
        if self.stopping_to_quit and not self.model.is_final:
            parts.append(
                "Stopping the run; the dashboard closes when the trainer has saved "
                "(q again leaves now)."
            )
        elif self.pending_command:
            parts.append(PENDING_NOTES[self.pending_command])
        if self.export_note:
            parts.append(self.export_note)
        return "  ".join(parts)

    # -- what the keys may do ----------------------------------------------------------

    @property
    def run_is_live(self) -> bool:
        """The run is (as far as we can tell) still going."""
        if self.model.is_final or self.trainer_exited:
            return False
        return bool(self.model.events_seen or self.model.status or self.trainer is not None)

    def action_available(self, action: str) -> bool:
        state = self.model.state
        live = self.run_is_live and not self.stopping_to_quit
        pending = self.pending_command
        if action == "pause":
            return (
                live
                and state in ("computing_reference", "training", "evaluating")
                and pending not in ("pause", "stop")
            )
        if action == "resume":
            return live and state == "paused" and pending not in ("resume", "stop")
        if action == "checkpoint":
            return (
                live
                and state in ("training", "paused", "evaluating")
                and pending not in ("checkpoint", "stop")
            )
        if action == "stop":
            return live and state != "stopping" and pending != "stop"
        if action == "export":
            return self._adapters_exist and not self.export_running
        if action == "summary":
            return self.model.is_final
        return True

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action not in RUN_ACTIONS:
            return True
        if action == "summary":
            # Only a finished run has one; hidden rather than greyed to keep the footer short.
            return self.action_available(action)
        # None greys the key out in the footer (False would hide it).
        return True if self.action_available(action) else None

    def _refresh_bindings_if_changed(self) -> None:
        availability = tuple(self.action_available(action) for action in RUN_ACTIONS)
        if availability != self._availability:
            self._availability = availability
            self.screen.refresh_bindings()
            self.dashboard.refresh_bindings()

    def _send(self, command: str) -> None:
        try:
            send_command(self.run_dir, command)
        except OSError as error:
            self.notify(f"Could not send {command}: {error}", severity="error")
            return
        self.pending_command = command
        self.announce([LogEntry("info", f"Sent {command} to the trainer", self.model.step)])

    def action_pause(self) -> None:
        if self.action_available("pause"):
            self._send("pause")

    def action_resume(self) -> None:
        if self.action_available("resume"):
            self._send("resume")

    def action_checkpoint(self) -> None:
        if self.action_available("checkpoint"):
            self._send("checkpoint")

    def action_stop(self) -> None:
        if not self.action_available("stop"):
            return

        def confirmed(answer: bool | None) -> None:
            if answer and self.action_available("stop"):
                self._send("stop")

        self.push_screen(ConfirmStopScreen(), confirmed)

    def action_summary(self) -> None:
        if self.model.is_final and not isinstance(self.screen, SummaryScreen):
            self._summary_shown = True
            self.push_screen(SummaryScreen(self.model, self.run_dir_label, self.export_note))

    def _close_summary(self) -> None:
        """A new run_start (a resumed or restarted run): the previous end's summary goes."""
        self._summary_shown = False
        while isinstance(self.screen, SummaryScreen):
            self.pop_screen()

    def _show_summary_once(self) -> None:
        # Not over a dialog the user is busy with; the next update tries again.
        if self.model.is_final and not self._summary_shown and self.screen is self.dashboard:
            self.action_summary()

    # -- quitting ----------------------------------------------------------------------

    async def action_quit(self) -> None:
        self.request_quit()

    def request_quit(self) -> None:
        """Quit; while the run goes on, ask whether to stop it or leave it running."""
        if self.stopping_to_quit or not self.run_is_live:
            self.exit(self.exit_code)
            return

        def chosen(choice: str | None) -> None:
            if choice == "leave":
                self.exit(self.exit_code)
            elif choice == "stop":
                self.stopping_to_quit = True
                if self.pending_command != "stop" and self.model.state != "stopping":
                    self._send("stop")
                self.announce()

        self.push_screen(
            QuitScreen(self.run_dir_label, self.model.state, self.export_running), chosen
        )

    def action_interrupt(self) -> None:
        """Ctrl-C. With the trainer this dashboard started (`mlx-dpo train`): stop the run and
        save, as Ctrl-C does without the dashboard, and close once it has saved; a second
        Ctrl-C closes at once (the trainer still saves). Otherwise (`mlx-dpo view`, or a run
        that is over): close, and leave any run going."""
        if self.trainer is None or not self.run_is_live or self.stopping_to_quit:
            self.exit(self.exit_code)
            return
        self.stopping_to_quit = True
        if self.pending_command != "stop" and self.model.state != "stopping":
            self._send("stop")
        self.notify(
            "Stopping: the trainer saves after the current step, then the dashboard closes "
            "(Ctrl-C again closes now).",
            title="Ctrl-C",
        )
        self.announce()

    def action_screenshot(self) -> None:
        """Save the screen as SVG into the run directory (never over an earlier one)."""
        stem = f"screenshot-step{self.model.step:06d}"
        name, index = f"{stem}.svg", 1
        while (self.run_dir / name).exists():
            index += 1
            name = f"{stem}-{index}.svg"
        try:
            path = self.save_screenshot(name, str(self.run_dir))
        except OSError as error:
            self.notify(f"Could not save the screenshot: {error}", severity="error")
            return
        self.notify(f"Saved {path}", title="Screenshot")
        self.announce([LogEntry("info", f"Screenshot saved: {path}", self.model.step)])

    # -- export ------------------------------------------------------------------------

    def action_export(self) -> None:
        if not self.action_available("export"):
            return
        default = self.run_dir.parent / f"{self.run_dir.name}-fused"

        def chosen(request: ExportRequest | None) -> None:
            if request is not None and self.action_available("export"):
                self.start_export(request)

        self.push_screen(
            ExportScreen(str(default), self.model.adapter_step, self.model.quantized_base), chosen
        )

    def start_export(self, request: ExportRequest) -> None:
        self.export_running = True
        self.export_note = f"exporting to {request.save_path}…"
        self.announce([LogEntry("info", f"Export started: {request.save_path}", self.model.step)])
        self.run_export(request)

    @work(thread=True, exclusive=True, group="export", exit_on_error=False)
    def run_export(self, request: ExportRequest) -> None:
        """Runs the export's process in a thread; reports its lines and its end by message."""
        command = self.export_command(self.run_dir, Path(request.save_path), request.dequantize)
        tail: deque[str] = deque(maxlen=20)
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        except OSError as error:
            self.post_message(ExportFinished(request.save_path, -1, [str(error)]))
            return
        self._export_process = process
        assert process.stdout is not None
        buffer = ""
        while chunk := process.stdout.read1(4096):
            buffer += chunk.decode("utf-8", errors="replace")
            # Progress bars redraw with carriage returns: each counts as a line.
            *lines, buffer = re.split(r"[\r\n]", buffer)
            for line in lines:
                if line.strip():
                    tail.append(line.rstrip())
                    self.post_message(ExportProgress(line.rstrip()))
        if buffer.strip():
            tail.append(buffer.rstrip())
            self.post_message(ExportProgress(buffer.rstrip()))
        returncode = process.wait()
        self._export_process = None
        self.post_message(ExportFinished(request.save_path, returncode, list(tail)))

    @on(ExportProgress)
    def export_progress(self, message: ExportProgress) -> None:
        if not self.can_draw:
            return
        self.export_note = f"export: {message.line[-120:]}"
        self.announce([LogEntry("info", f"export: {message.line}", None)])

    @on(ExportFinished)
    def export_finished(self, message: ExportFinished) -> None:
        self.export_running = False
        if not self.can_draw:
            return
        if message.returncode == 0:
            self.export_note = f"Exported the fused model to {message.save_path}"
            entry = LogEntry("success", self.export_note, None)
            self.notify(self.export_note, title="Export done")
        else:
            last = message.output_tail[-1] if message.output_tail else "no output"
            self.export_note = f"Export failed (exit code {message.returncode}): {last}"
            entry = LogEntry("error", self.export_note, None)
            self.notify(self.export_note, title="Export failed", severity="error")
        self.announce([entry])

    def _kill_export(self) -> None:
        process = self._export_process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()


def run_dashboard(
    run_dir: str | Path, trainer: subprocess.Popen | None = None, close_when_finished: bool = False
) -> int:
    """Run the dashboard on `run_dir` until the user quits (or, with `close_when_finished`,
    until the run has finished).

    Returns 0, or 1 when the run failed. With `trainer` (the trainer process this CLI started),
    "stop" on quitting waits for it to end before returning; "leave running" returns at once.
    """
    app = DashboardApp(run_dir, trainer=trainer, close_when_finished=close_when_finished)
    result = app.run()
    if trainer is not None and app.stopping_to_quit:
        # The app waited for the trainer to exit; reap it (it is gone or about to be).
        with contextlib.suppress(subprocess.TimeoutExpired):
            trainer.wait(timeout=1)
    still_running = app.run_is_live and (trainer is None or trainer.poll() is None)
    print("\n".join(closing_message(app.model, app.run_dir_label, still_running)), flush=True)
    if isinstance(result, int):
        return result
    return 1 if app.return_code else app.exit_code


__all__ = ["DashboardApp", "build_export_command", "run_dashboard"]
