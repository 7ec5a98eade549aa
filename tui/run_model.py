"""What the dashboard knows about a run, built from its event stream and status file.

Plain Python: no Textual, no MLX. The app feeds events in order (`apply`); widgets read the
fields. Each event may also produce log entries for the log pane.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..events import FINAL_STATES, METRIC_NAMES, RUN_END_STATES
from ..formatting import finite_number, format_duration
from .formatting import format_number, format_percent
from .run_watcher import RunUpdate
from .series import MetricSeries

# Per-step numbers kept as series: the TRL metrics and the run's vital signs.
TRAIN_SERIES = (
    *METRIC_NAMES,
    "grad_norm",
    "learning_rate",
    "tokens_per_second",
    "pairs_per_second",
    "peak_memory_gb",
)

# States in which time passes for the run (elapsed ticks, ETA counts down).
RUNNING_STATES = ("starting", "computing_reference", "training", "evaluating", "stopping")

# What a `state` event's value means for the run's state.
STATE_EVENT_STATES = {
    "paused": "paused",
    "resumed": "training",
    "training": "training",
    "stopping": "stopping",
    "evaluating": "evaluating",
}


@dataclass(frozen=True)
class LogEntry:
    """One line of the log pane."""

    level: str  # "info" | "success" | "warning" | "error"
    message: str
    step: int | None = None


class RunModel:
    """The state of one run directory as seen through its events."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        """Forget everything (the stream was rewritten from the start)."""
        self.info: dict[str, Any] = {}
        self.state = "starting"
        self.step = 0
        self.total_steps: int | None = None
        self.epoch: float | None = None
        self.train: dict[str, MetricSeries] = {name: MetricSeries() for name in TRAIN_SERIES}
        self.evals: dict[str, dict[str, MetricSeries]] = {}
        self.last_eval: dict[str, dict[str, Any]] = {}
        self.checkpoints: list[tuple[int, str]] = []
        self.reference: dict[str, Any] | None = None
        self.health: list[dict[str, Any]] = []
        self.run_end: dict[str, Any] | None = None
        self.last_step: dict[str, Any] | None = None
        self.start_time: float | None = None
        self.last_event_time: float | None = None
        self.status: dict[str, Any] = {}
        self.died: str | None = None
        # The last lines of train.log, once the trainer is found gone or the run failed.
        self.log_tail: list[str] = []
        self.events_seen = 0
        # Bumped whenever chart data changes, so redraws can be skipped when nothing did.
        self.version = 0

    # -- reading -----------------------------------------------------------------------

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def model_name(self) -> str:
        return str(self.info.get("model") or self.status.get("model") or "")

    @property
    def data_name(self) -> str:
        return str(self.info.get("data") or "")

    @property
    def pid(self) -> int | None:
        for source in (self.status, self.info):
            pid = source.get("pid")
            if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0:
                return pid
        return None

    @property
    def last_checkpoint(self) -> str | None:
        if self.run_end and self.run_end.get("last_checkpoint"):
            return str(self.run_end["last_checkpoint"])
        if self.checkpoints:
            return self.checkpoints[-1][1]
        if self.status.get("last_checkpoint"):
            return str(self.status["last_checkpoint"])
        return None

    @property
    def error(self) -> str | None:
        if self.died:
            return self.died
        if self.run_end and self.run_end.get("error"):
            return str(self.run_end["error"])
        if self.state == "failed" and self.status.get("error"):
            return str(self.status["error"])
        return None

    @property
    def eval_split(self) -> str | None:
        """The split the charts show: the validation split when there is one."""
        if not self.evals:
            return None
        for preferred in ("valid", "validation", "eval"):
            if preferred in self.evals:
                return preferred
        return next(iter(self.evals))

    def eval_series(self, name: str) -> MetricSeries:
        split = self.eval_split
        if split is None:
            return MetricSeries()
        return self.evals[split].setdefault(name, MetricSeries())

    def latest_eval(self) -> dict[str, Any] | None:
        split = self.eval_split
        return self.last_eval.get(split) if split else None

    def elapsed(self, now: float) -> float | None:
        """Seconds the run has been going. Taken from the trainer's numbers, and moved on by
        the clock only while the run is running, so a finished run always reads the same."""
        if self.run_end is not None and finite_number(self.run_end.get("elapsed")) is not None:
            return finite_number(self.run_end.get("elapsed"))
        ticking = self.state in RUNNING_STATES
        if self.last_step is not None and finite_number(self.last_step.get("elapsed")) is not None:
            base = finite_number(self.last_step.get("elapsed")) or 0.0
            since = finite_number(self.last_step.get("time"))
            if ticking and since is not None:
                return base + max(0.0, now - since)
            return base
        if self.start_time is None:
            return None
        end = now if ticking else (self.last_event_time or self.start_time)
        return max(0.0, end - self.start_time)

    def eta(self, now: float) -> float | None:
        """Seconds left, or None when unknown or over."""
        if self.is_final or self.last_step is None:
            return None
        eta = finite_number(self.last_step.get("eta"))
        if eta is None:
            elapsed = finite_number(self.last_step.get("elapsed"))
            if elapsed is None or not self.total_steps or self.step <= 0:
                return None
            eta = elapsed / self.step * max(self.total_steps - self.step, 0)
        since = finite_number(self.last_step.get("time"))
        if self.state in RUNNING_STATES and since is not None:
            eta -= max(0.0, now - since)
        return max(0.0, eta)

    # -- updating ----------------------------------------------------------------------

    def apply_update(self, update: RunUpdate) -> list[LogEntry]:
        """Take in one poll of the run directory; returns the lines it adds to the log (after
        a reset, the whole log)."""
        if update.reset:
            self.clear()
        entries = self.apply_all(update.events)
        self.merge_status(update.status)
        if update.trainer_gone is not None:
            self.log_tail = update.log_tail
            entries += self.mark_trainer_gone(update.trainer_gone, update.log_tail)
        return entries

    def apply_all(self, events: list[dict[str, Any]]) -> list[LogEntry]:
        entries: list[LogEntry] = []
        for event in events:
            entries.extend(self.apply(event))
        return entries

    def apply(self, event: dict[str, Any]) -> list[LogEntry]:
        """Take in one event; returns the lines it adds to the log."""
        kind = event.get("event")
        try:
            step = int(event.get("step") or 0)
        except (TypeError, ValueError):
            step = 0
        self.events_seen += 1
        time = finite_number(event.get("time"))
        if time is not None:
            self.last_event_time = time
        handler = getattr(self, f"_on_{kind}", None)
        if handler is None:
            return []
        return handler(event, step)

    def truncate_after(self, step: int) -> None:
        """Forget chart points past `step` (a resumed run computes them again)."""
        for series in self.train.values():
            series.truncate_after(step)
        for by_name in self.evals.values():
            for series in by_name.values():
                series.truncate_after(step)
        self.checkpoints = [(s, p) for s, p in self.checkpoints if s <= step]
        if self.last_step is not None and int(self.last_step.get("step") or 0) > step:
            self.last_step = None
        self.step = min(self.step, step)
        self.version += 1

    def merge_status(self, status: dict[str, Any]) -> None:
        """Take in status.json. The event stream is the main source; status fills in before
        the first event, and its final state counts when it is newer than the last event (a
        stream whose run_end line never made it to disk)."""
        if not status:
            return
        self.status = status
        state = status.get("state")
        if self.events_seen == 0:
            if isinstance(state, str):
                self.state = state
            for key in ("step", "total_steps"):
                if isinstance(status.get(key), int):
                    setattr(self, key, status[key])
            if finite_number(status.get("epoch")) is not None:
                self.epoch = finite_number(status.get("epoch"))
            return
        updated = finite_number(status.get("updated"))
        newer = updated is not None and (
            self.last_event_time is None or updated >= self.last_event_time
        )
        if state in FINAL_STATES and not self.is_final and self.run_end is None and newer:
            self.state = state

    def mark_trainer_gone(self, description: str, log_tail: list[str]) -> list[LogEntry]:
        """The trainer process is gone. Unless it ended the run properly, the run failed."""
        if self.run_end is not None or self.is_final:
            return []
        self.state = "failed"
        self.died = description
        entries = [LogEntry("error", description, self.step)]
        if log_tail:
            entries.append(LogEntry("error", "Last lines of train.log:", self.step))
            entries.extend(LogEntry("error", "  " + line, None) for line in log_tail)
        if self.last_checkpoint:
            entries.append(LogEntry("info", f"Last checkpoint: {self.last_checkpoint}", self.step))
        return entries

    # -- one handler per event ---------------------------------------------------------

    def _on_run_start(self, event: dict[str, Any], step: int) -> list[LogEntry]:
        resumed_from = event.get("resumed_from")
        entries: list[LogEntry] = []
        if isinstance(resumed_from, int) and not isinstance(resumed_from, bool):
            self.truncate_after(resumed_from)
            self.step = resumed_from
            entries.append(LogEntry("info", f"Resumed from step {resumed_from}", resumed_from))
        elif self.info or any(len(s) for s in self.train.values()):
            # A new run in the same directory, not a resume: start the charts over.
            status = self.status
            self.clear()
            self.status = status
            self.events_seen = 1
        self.info = dict(event)
        self.state = "starting"
        self.run_end = None
        self.died = None
        self.start_time = finite_number(event.get("time"))
        if isinstance(event.get("total_steps"), int):
            self.total_steps = event["total_steps"]
        model = event.get("model") or "?"
        pairs = event.get("train_pairs")
        detail = f"{pairs} training pairs, " if pairs is not None else ""
        total = event.get("total_steps")
        entries.insert(0, LogEntry("info", f"Run started: {model}, {detail}{total} steps", step))
        truncated = event.get("truncated") or {}
        if isinstance(truncated, dict):
            for split, counts in truncated.items():
                if not isinstance(counts, dict) or not counts.get("pairs"):
                    continue
                entries.append(
                    LogEntry(
                        "warning",
                        f"{counts['pairs']} {split} pairs truncated to max_length "
                        f"(prompt cut in {counts.get('prompt', 0)}, "
                        f"response cut in {counts.get('response', 0)})",
                        step,
                    )
                )
        self.version += 1
        return entries

    def _on_reference(self, event: dict[str, Any], step: int) -> list[LogEntry]:
        self.reference = dict(event)
        done, total = event.get("done"), event.get("total")
        if self.state == "starting":
            self.state = "computing_reference"
        if isinstance(done, int) and isinstance(total, int) and done >= total:
            source = " (from the cache)" if event.get("cached") else ""
            split = event.get("split") or "train"
            return [LogEntry("info", f"Reference log-probs ready: {split}, {total} pairs{source}")]
        return []

    def _on_step(self, event: dict[str, Any], step: int) -> list[LogEntry]:
        for name, series in self.train.items():
            series.append(step, event.get(name))
        self.step = step
        self.last_step = dict(event)
        if finite_number(event.get("epoch")) is not None:
            self.epoch = finite_number(event.get("epoch"))
        if self.state not in ("stopping", *FINAL_STATES):
            self.state = "training"
        self.version += 1
        return []

    def _on_eval(self, event: dict[str, Any], step: int) -> list[LogEntry]:
        split = str(event.get("split") or "valid")
        by_name = self.evals.setdefault(split, {})
        for name in METRIC_NAMES:
            by_name.setdefault(name, MetricSeries()).append(step, event.get(name))
        self.last_eval[split] = dict(event)
        if self.state == "evaluating":
            self.state = "training"
        self.version += 1
        pairs = event.get("pairs")
        size = f", {pairs} pairs" if pairs is not None else ""
        return [
            LogEntry(
                "info",
                f"Eval ({split}{size}): loss {format_number(finite_number(event.get('loss')))}, "
                f"accuracy {format_percent(finite_number(event.get('rewards/accuracies')))}, "
                f"margin {format_number(finite_number(event.get('rewards/margins')))}",
                step,
            )
        ]

    def _on_checkpoint(self, event: dict[str, Any], step: int) -> list[LogEntry]:
        path = str(event.get("path") or "")
        self.checkpoints.append((step, path))
        self.version += 1
        return [LogEntry("success", f"Checkpoint saved: {path}", step)]

    def _on_state(self, event: dict[str, Any], step: int) -> list[LogEntry]:
        value = event.get("state")
        new_state = STATE_EVENT_STATES.get(str(value))
        if new_state is None or self.is_final:
            return []
        self.state = new_state
        messages = {
            "paused": "Paused",
            "resumed": "Resumed",
            "stopping": "Stopping after the current step; the adapters will be saved",
        }
        if value in messages:
            return [LogEntry("warning" if value == "stopping" else "info", messages[value], step)]
        return []

    def _on_export(self, event: dict[str, Any], step: int) -> list[LogEntry]:
        status = event.get("status")
        path = event.get("path") or ""
        message = event.get("message") or ""
        if status == "done":
            return [LogEntry("success", f"Export done: {path}", step)]
        if status == "failed":
            return [LogEntry("error", f"Export failed: {message or path}", step)]
        return [LogEntry("info", f"Export started: {path}", step)]

    def _on_health(self, event: dict[str, Any], step: int) -> list[LogEntry]:
        self.health.append(dict(event))
        level = "error" if event.get("severity") == "error" else "warning"
        message = str(event.get("message") or event.get("kind") or "health check")
        suggestion = event.get("suggestion")
        if suggestion:
            message += f" → {suggestion}"
        return [LogEntry(level, message, step)]

    def _on_log(self, event: dict[str, Any], step: int) -> list[LogEntry]:
        level = str(event.get("level") or "info")
        if level not in ("info", "warning", "error"):
            level = "info"
        return [LogEntry(level, str(event.get("message") or ""), step)]

    def _on_run_end(self, event: dict[str, Any], step: int) -> list[LogEntry]:
        self.run_end = dict(event)
        status = str(event.get("status") or "completed")
        self.state = RUN_END_STATES.get(status, "finished")
        elapsed = format_duration(finite_number(event.get("elapsed")))
        if self.state == "failed":
            error = event.get("error") or "unknown error"
            return [LogEntry("error", f"Run failed: {error}", step)]
        if self.state == "stopped":
            return [LogEntry("warning", f"Run stopped at step {step} after {elapsed}", step)]
        return [LogEntry("success", f"Run completed in {elapsed}", step)]
