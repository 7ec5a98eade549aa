"""The dashboard app and its entry point, `run_dashboard`.

The app follows a run directory: a worker thread polls metrics.jsonl, status.json and the
trainer process, and posts what it found; the app applies it to a `RunModel` and redraws.
Commands go to the trainer through control.jsonl (`mlx_dpo.events.send_command`). No MLX here.
"""

from __future__ import annotations

import asyncio
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

from textual import work
from textual.app import App
from textual.binding import Binding, BindingType
from textual.worker import get_current_worker

from ..events import ADAPTER_FILE, LOG_FILE, send_command
from .formatting import format_number, format_percent, format_rate
from .messages import ExportFinished, ExportProgress, ExportRequest, RunUpdated
from .run_model import LogEntry, RunModel
from .run_watcher import RunUpdate, RunWatcher, tail_lines
from .screens import ConfirmStopScreen, DashboardScreen, ExportScreen, QuitScreen, SummaryScreen
from .widgets import EventLog, HealthBanner, MetricChart, MetricTile, RunHeader
from .widgets.metric_chart import ChartData, ChartLine

# Smoothing choices cycled with "m": 0 is raw, the others are EMA weights.
SMOOTHING_WEIGHTS = (0.0, 0.6, 0.9, 0.99)

# Colours of the chart lines.
CHOSEN_COLOR = "green"
REJECTED_COLOR = "red"
TRAIN_COLOR = "dodger_blue1"
EVAL_COLOR = "orange1"
MARGIN_COLOR = "medium_purple1"

ExportCommand = Callable[[Path, Path, bool], list[str]]


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


def smoothing_label(weight: float) -> str:
    return "raw" if weight <= 0 else f"EMA {weight:g}"


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
    # Textual's own quit key goes through the same questions as "q".
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+q", "quit", "Quit", show=False, priority=True),
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
    ) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        # Shown as given (relative stays relative), so printed commands work from here.
        self.run_dir_label = str(run_dir)
        self.trainer = trainer
        self.poll_interval = poll_interval
        self.redraw_interval = redraw_interval
        self.clock = clock
        self.export_command = export_command
        self.model = RunModel()
        self.watcher = RunWatcher(self.run_dir, trainer)
        self.smoothing_index = 0
        self.log_tail: list[str] = []
        # A command sent and not yet answered by an event: "pause", "resume", "checkpoint", "stop".
        self.pending_command: str | None = None
        self.stopping_to_quit = False
        self.trainer_exited = False
        self.export_running = False
        self.export_note = ""
        self._export_process: asyncio.subprocess.Process | None = None
        self._adapters_exist = False
        self._summary_shown = False
        self._last_status: dict[str, Any] = {}
        self._drawn_version = -1
        self._availability: tuple[bool, ...] = ()
        self._stop_polling = threading.Event()
        self.dashboard = DashboardScreen()

    # -- lifecycle ---------------------------------------------------------------------

    async def on_mount(self) -> None:
        await self.push_screen(self.dashboard)
        # The first read happens here, so the first frame already shows the run.
        self.apply_update(self.watcher.poll())
        self.redraw(force=True)
        self.set_interval(self.redraw_interval, self.redraw)
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

    def on_run_updated(self, message: RunUpdated) -> None:
        if self.can_draw:
            self.apply_update(message.update)

    def apply_update(self, update: RunUpdate) -> None:
        """Take in one poll's findings and bring the screen up to date."""
        self._last_status = update.status
        log = self.dashboard.query_one(EventLog)
        if update.reset:
            self.model.clear()
            log.clear_entries()
            self._summary_shown = False
        entries = self.model.apply_all(update.events)
        self.model.merge_status(update.status)
        self._settle_pending_command(update.events)
        if update.trainer_gone is not None:
            self.trainer_exited = True
            self.log_tail = update.log_tail
            entries += self.model.mark_trainer_gone(update.trainer_gone, update.log_tail)
        elif self.model.state == "failed" and not self.log_tail:
            self.log_tail = update.log_tail or tail_lines(self.run_dir / LOG_FILE)
        log.add_entries(entries)
        self._adapters_exist = (self.run_dir / ADAPTER_FILE).exists()
        self.refresh_header()
        self.dashboard.query_one(HealthBanner).show(self.model.health)
        self._refresh_bindings_if_changed()
        if self.stopping_to_quit and (self.model.is_final or self.trainer_exited):
            self.exit(self.exit_code)
            return
        if self.model.is_final:
            self._show_summary_once()

    def _settle_pending_command(self, events: list[dict[str, Any]]) -> None:
        """A command is answered when the trainer writes the matching event."""
        if self.pending_command is None:
            return
        answers = {
            "pause": ("state", ("paused",)),
            "resume": ("state", ("resumed", "training")),
            "checkpoint": ("checkpoint", None),
            "stop": ("state", ("stopping",)),
        }
        kind, states = answers[self.pending_command]
        for event in events:
            if event.get("event") == kind and (states is None or event.get("state") in states):
                self.pending_command = None
                break
        if self.model.is_final:
            self.pending_command = None

    @property
    def exit_code(self) -> int:
        return 1 if self.model.state == "failed" else 0

    # -- drawing -----------------------------------------------------------------------

    def header_note(self) -> str:
        notes = {
            "pause": "pause requested: the trainer pauses after the current step…",
            "resume": "resume requested…",
            "checkpoint": "checkpoint requested: saved after the current step…",
            "stop": "stop requested: the trainer saves and stops after the current step…",
        }
        parts = []
        if self.stopping_to_quit and not self.model.is_final:
            parts.append(
                "Stopping the run; the dashboard closes when the trainer has saved "
                "(q again leaves now)."
            )
        elif self.pending_command:
            parts.append(notes[self.pending_command])
        if self.export_note:
            parts.append(self.export_note)
        return "  ".join(parts)

    def refresh_header(self) -> None:
        self.dashboard.query_one(RunHeader).show(
            self.model, self.clock(), self.run_dir_label, self.header_note()
        )

    def redraw(self, force: bool = False) -> None:
        """Timer: header every tick (the clock moves); tiles and charts when data changed."""
        if not self.can_draw:
            return
        self.refresh_header()
        if force or self.model.version != self._drawn_version:
            self._drawn_version = self.model.version
            self.refresh_tiles()
            self.refresh_charts()
        for chart in self.dashboard.query(MetricChart):
            chart.redraw()

    def refresh_tiles(self) -> None:
        train = self.model.train
        latest_eval = self.model.latest_eval() or {}
        screen = self.dashboard

        def tile(tile_id: str) -> MetricTile:
            return screen.query_one(f"#{tile_id}", MetricTile)

        def eval_detail(name: str, formatter: Callable[[Any], str]) -> str:
            value = latest_eval.get(name)
            return f"eval {formatter(value)}" if value is not None else "eval –"

        loss = train["loss"]
        tile("tile-loss").show(
            format_number(loss.latest), eval_detail("loss", format_number), loss.values
        )
        accuracy = train["rewards/accuracies"]
        tile("tile-accuracy").show(
            format_percent(accuracy.latest),
            eval_detail("rewards/accuracies", format_percent),
            accuracy.smoothed(0.6),
        )
        margin = train["rewards/margins"]
        tile("tile-margin").show(
            format_number(margin.latest),
            eval_detail("rewards/margins", format_number),
            margin.values,
        )
        kl = train["kl"]
        tile("tile-kl").show(
            format_number(kl.latest),
            f"grad norm {format_number(train['grad_norm'].latest)}",
            kl.values,
        )
        lr = train["learning_rate"]
        tile("tile-lr").show(
            format_number(lr.latest), f"β {format_number(self.model.info.get('beta'))}", lr.values
        )
        pairs = train["pairs_per_second"]
        tile("tile-throughput").show(
            format_rate(pairs.latest, ""),
            format_rate(train["tokens_per_second"].latest, "tok/s"),
            pairs.values,
        )
        memory = train["peak_memory_gb"]
        peak = max(memory.values) if memory.values else None
        tile("tile-memory").show(
            f"{format_number(memory.latest, 2)} GB" if memory.latest is not None else "–",
            f"max {format_number(peak, 2)} GB" if peak is not None else "",
            memory.values,
        )

    def refresh_charts(self) -> None:
        model = self.model
        weight = SMOOTHING_WEIGHTS[self.smoothing_index]
        subtitle = smoothing_label(weight)
        checkpoints = [step for step, _ in model.checkpoints]

        def train_line(name: str, label: str, color: str) -> ChartLine:
            series = model.train[name]
            return ChartLine(label, series.steps, series.smoothed(weight), color)

        def eval_line(name: str) -> ChartLine:
            series = model.eval_series(name)
            return ChartLine("eval", series.steps, series.values, EVAL_COLOR, markers=True)

        screen = self.dashboard
        screen.query_one("#chart-rewards", MetricChart).show(
            ChartData(
                [
                    train_line("rewards/chosen", "chosen", CHOSEN_COLOR),
                    train_line("rewards/rejected", "rejected", REJECTED_COLOR),
                ],
                checkpoints,
                subtitle,
            )
        )
        screen.query_one("#chart-margin", MetricChart).show(
            ChartData(
                [train_line("rewards/margins", "margin", MARGIN_COLOR)], checkpoints, subtitle
            )
        )
        screen.query_one("#chart-accuracy", MetricChart).show(
            ChartData(
                [
                    train_line("rewards/accuracies", "train", TRAIN_COLOR),
                    eval_line("rewards/accuracies"),
                ],
                checkpoints,
                subtitle,
            )
        )
        screen.query_one("#chart-loss", MetricChart).show(
            ChartData(
                [train_line("loss", "train", TRAIN_COLOR), eval_line("loss")], checkpoints, subtitle
            )
        )

    def cycle_smoothing(self) -> None:
        self.smoothing_index = (self.smoothing_index + 1) % len(SMOOTHING_WEIGHTS)
        self.refresh_charts()
        # Each chart's subtitle names the smoothing; no toast needed.
        for chart in self.dashboard.query(MetricChart):
            chart.redraw()

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

    def _refresh_bindings_if_changed(self) -> None:
        actions = ("pause", "resume", "checkpoint", "stop", "export", "summary")
        availability = tuple(self.action_available(action) for action in actions)
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
        self.dashboard.query_one(EventLog).add_entries(
            [LogEntry("info", f"Sent {command} to the trainer", self.model.step)]
        )
        self.refresh_header()
        self._refresh_bindings_if_changed()

    def pause_run(self) -> None:
        if self.action_available("pause"):
            self._send("pause")

    def resume_run(self) -> None:
        if self.action_available("resume"):
            self._send("resume")

    def checkpoint_run(self) -> None:
        if self.action_available("checkpoint"):
            self._send("checkpoint")

    def ask_stop_run(self) -> None:
        if not self.action_available("stop"):
            return

        def confirmed(answer: bool | None) -> None:
            if answer and self.action_available("stop"):
                self._send("stop")

        self.push_screen(ConfirmStopScreen(), confirmed)

    def show_summary(self) -> None:
        if self.model.is_final and not isinstance(self.screen, SummaryScreen):
            self._summary_shown = True
            self.push_screen(SummaryScreen())

    def _show_summary_once(self) -> None:
        # Not over a dialog the user is busy with; the next update tries again.
        if not self._summary_shown and self.screen is self.dashboard:
            self.show_summary()

    def _refresh_summary(self) -> None:
        for screen in self.screen_stack:
            if isinstance(screen, SummaryScreen):
                screen.refresh_summary()

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
                self.refresh_header()
                self._refresh_bindings_if_changed()

        self.push_screen(QuitScreen(self.run_dir_label, self.export_running), chosen)

    # -- export ------------------------------------------------------------------------

    def ask_export(self) -> None:
        if not self.action_available("export"):
            return
        default = self.run_dir.parent / f"{self.run_dir.name}-fused"

        def chosen(request: ExportRequest | None) -> None:
            if request is not None and self.action_available("export"):
                self.start_export(request)

        self.push_screen(ExportScreen(str(default)), chosen)

    def start_export(self, request: ExportRequest) -> None:
        self.export_running = True
        self.export_note = f"exporting to {request.save_path}…"
        self.dashboard.query_one(EventLog).add_entries(
            [LogEntry("info", f"Export started: {request.save_path}", self.model.step)]
        )
        self.refresh_header()
        self._refresh_summary()
        self._refresh_bindings_if_changed()
        self.run_export(request)

    @work(exclusive=True, group="export", exit_on_error=False)
    async def run_export(self, request: ExportRequest) -> None:
        command = self.export_command(self.run_dir, Path(request.save_path), request.dequantize)
        tail: deque[str] = deque(maxlen=20)
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
        except OSError as error:
            self.post_message(ExportFinished(request.save_path, -1, [str(error)]))
            return
        self._export_process = process
        assert process.stdout is not None
        buffer = ""
        while True:
            chunk = await process.stdout.read(4096)
            if not chunk:
                break
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
        returncode = await process.wait()
        self._export_process = None
        self.post_message(ExportFinished(request.save_path, returncode, list(tail)))

    def on_export_progress(self, message: ExportProgress) -> None:
        if not self.can_draw:
            return
        self.export_note = f"export: {message.line[-120:]}"
        self.dashboard.query_one(EventLog).add_entries(
            [LogEntry("info", f"export: {message.line}", None)]
        )
        self.refresh_header()

    def on_export_finished(self, message: ExportFinished) -> None:
        self.export_running = False
        if not self.can_draw:
            return
        log = self.dashboard.query_one(EventLog)
        if message.returncode == 0:
            self.export_note = f"Exported the fused model to {message.save_path}"
            log.add_entries([LogEntry("success", self.export_note, None)])
            self.notify(self.export_note, title="Export done")
        else:
            last = message.output_tail[-1] if message.output_tail else "no output"
            self.export_note = f"Export failed (exit code {message.returncode}): {last}"
            log.add_entries([LogEntry("error", self.export_note, None)])
            self.notify(self.export_note, title="Export failed", severity="error")
        self.refresh_header()
        self._refresh_summary()
        self._refresh_bindings_if_changed()

    def _kill_export(self) -> None:
        process = self._export_process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()


def run_dashboard(run_dir: str | Path, trainer: subprocess.Popen | None = None) -> int:
    """Run the dashboard on `run_dir` until the user quits.

    Returns 0, or 1 when the run failed. With `trainer` (the trainer process this CLI started),
    "stop" on quitting waits for it to end before returning; "leave running" returns at once.
    """
    app = DashboardApp(run_dir, trainer=trainer)
    result = app.run()
    if trainer is not None and app.stopping_to_quit:
        # The app waited for the trainer to exit; reap it (it is gone or about to be).
        with contextlib.suppress(subprocess.TimeoutExpired):
            trainer.wait(timeout=1)
    if isinstance(result, int):
        return result
    return 1 if app.return_code else app.exit_code


__all__ = ["DashboardApp", "build_export_command", "run_dashboard"]
