"""What the dashboard knows about a run, built from its event stream and status file.

Plain Python: no Textual, no MLX. The app feeds events in order (`apply`); widgets read the
fields. Each event may also produce log entries for the log pane.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..events import EXTRA_METRIC_NAMES, FINAL_STATES, METRIC_NAMES, RUN_END_STATES
from ..formatting import finite_number, format_duration
from ..health import KIND_TITLES
from .formatting import format_fixed, format_number, format_percent
from .run_watcher import RunUpdate
from .series import MetricSeries

# Per-step numbers kept as series: the TRL metrics (and the extras of the losses that have
# them), and the run's vital signs.
TRAIN_SERIES = (
    *METRIC_NAMES,
    *EXTRA_METRIC_NAMES,
    "grad_norm",
    "learning_rate",
    "tokens_per_second",
    "pairs_per_second",
    "peak_memory_gb",
    # Not in the step event: the trainer's elapsed between two steps (see _on_step).
    "seconds_per_step",
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


@dataclass
class PhaseProgress:
    """How far a long phase before the first step is (`progress` and `reference` events)."""

    phase: str
    label: str
    done: float
    total: float
    unit: str
    first_time: float | None
    first_done: float
    time: float | None

    def eta(self, now: float) -> float | None:
        """Seconds left at the rate since the phase began; None before there is a rate."""
        if self.first_time is None or self.time is None or self.done >= self.total:
            return None
        rate_done = self.done - self.first_done
        seconds = self.time - self.first_time
        if rate_done <= 0 or seconds <= 0:
            return None
        left = (self.total - self.done) * seconds / rate_done
        return max(0.0, left - max(0.0, now - self.time))


@dataclass(frozen=True)
class LogEntry:
    """One line of the log pane."""

    level: str  # "info" | "success" | "warning" | "error"
    message: str
    step: int | None = None


class RunModel:
    """The state of one run directory as seen through its events.

    A dashboard that launched the trainer calls `await_session(pid, since)`: until that
    trainer's run_start arrives, a run_end in the stream is an earlier session's (the run is
    being resumed), so the run reads as starting, not as over."""

    def __init__(self) -> None:
        self.awaiting_pid: int | None = None
        self.awaiting_since: float | None = None
        self.clear()

    def await_session(self, pid: int | None, since: float) -> None:
        self.awaiting_pid = pid
        self.awaiting_since = since

    @property
    def awaiting(self) -> bool:
        return self.awaiting_pid is not None or self.awaiting_since is not None

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
        # Wall time: one [start, end] per trainer session (end None while it goes on); time
        # spent paused is counted apart.
        self.sessions: list[list[float | None]] = []
        self.paused_seconds = 0.0
        self.paused_since: float | None = None
        # Long phases before the first step; `phase` is the one going on.
        self.phases: dict[str, PhaseProgress] = {}
        self.phase: str | None = None
        # `health` events with severity "off": checks that do not run here, and why.
        self.checks_off: list[dict[str, Any]] = []
        # `samples` events: per prompt {prompt, reference}, and the events by step.
        self.sample_prompts: list[dict[str, Any]] = []
        self.samples: dict[int, dict[str, Any]] = {}
        # An earlier session's run_end, read while awaiting this dashboard's trainer.
        self.previous_end: dict[str, Any] | None = None
        self._previous_event_time: float | None = None
        self._last_step_clock: tuple[int, float] | None = None
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
    def loss(self) -> Any:
        """The run's loss as run_start gives it (a name or a list; None before it)."""
        return self.info.get("loss")

    def _accuracy_word(self) -> str:
        """kto has no pairs: its accuracy is the share on the right side of its reference
        point (tui/loss_view.py)."""
        loss = self.loss
        names = [loss] if isinstance(loss, str) else loss if isinstance(loss, list) else []
        return "right side" if "kto" in names else "accuracy"

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
    def findings(self) -> list[dict[str, Any]]:
        """Health findings: warnings and errors (checks that are off are not findings)."""
        return self.health

    @property
    def adapter_step(self) -> int | None:
        """The step whose adapters adapters.safetensors holds: the end of a run that ended
        with a save, else the last checkpoint (the trainer saves both together)."""
        if self.run_end is not None and self.state in ("finished", "stopped"):
            return int(self.run_end.get("step") or self.step)
        if self.checkpoints:
            return self.checkpoints[-1][0]
        return None

    @property
    def quantized_base(self) -> bool | None:
        """Whether the base weights are quantized; None when the stream does not say."""
        value = self.info.get("quantized_base")
        if isinstance(value, bool):
            return value
        config = self.info.get("config")
        if isinstance(config, dict) and config.get("quantize"):
            return True
        return None

    @property
    def resumed_from(self) -> int | None:
        value = self.info.get("resumed_from")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def round(self) -> tuple[int, int] | None:
        """(k, N) when the run is round k of N of `train --rounds`; None otherwise."""
        number, rounds = self.info.get("round"), self.info.get("rounds")
        if isinstance(number, int) and isinstance(rounds, int) and 0 < number <= rounds:
            return number, rounds
        return None

    @property
    def earlier_rounds(self) -> list[dict[str, Any]]:
        """The results of the rounds before this one (run_start's earlier_rounds)."""
        rounds = self.info.get("earlier_rounds")
        return [r for r in rounds if isinstance(r, dict)] if isinstance(rounds, list) else []

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
        """Wall time of the run: each trainer session from its run_start to its last event,
        the one going on up to `now`, paused time included (`paused` says how much of it).
        A finished run always reads the same."""
        if not self.sessions:
            return self._elapsed_before_run_start(now)
        total = 0.0
        for start, end in self.sessions:
            if start is None:
                continue
            if end is None:
                end = (self.last_event_time or start) if self.is_final else now
            total += max(0.0, end - start)
        return total

    def paused(self, now: float) -> float:
        """Seconds spent paused, the pause going on included."""
        if self.paused_since is not None and self.state == "paused":
            return self.paused_seconds + max(0.0, now - self.paused_since)
        return self.paused_seconds

    def _elapsed_before_run_start(self, now: float) -> float | None:
        """Only status.json or steps without a run_start: the trainer's own count."""
        if self.last_step is None or finite_number(self.last_step.get("elapsed")) is None:
            return None
        base = finite_number(self.last_step.get("elapsed")) or 0.0
        since = finite_number(self.last_step.get("time"))
        if self.state in RUNNING_STATES and since is not None:
            return base + max(0.0, now - since)
        return base

    def phase_progress(self) -> PhaseProgress | None:
        """The long phase going on before the first step, if any."""
        if self.phase is None or self.state not in ("starting", "computing_reference"):
            return None
        return self.phases.get(self.phase)

    def sample_steps(self) -> list[int]:
        """Steps that have the policy's answers, in order."""
        return sorted(step for step, event in self.samples.items() if _has_policy(event))

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
        self._previous_event_time = self.last_event_time
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
        if self.awaiting and state in FINAL_STATES:
            return  # the earlier session's status, until this trainer writes its own
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
        if self.awaiting and self._is_awaited(event):
            self.awaiting_pid = None
            self.awaiting_since = None
        resumed_from = event.get("resumed_from")
        resumed = isinstance(resumed_from, int) and not isinstance(resumed_from, bool)
        time = finite_number(event.get("time"))
        entries: list[LogEntry] = []
        if resumed:
            self.truncate_after(resumed_from)
            self.step = resumed_from
            self._close_session(self._previous_event_time)
        elif self.info or any(len(s) for s in self.train.values()):
            # A new run in the same directory, not a resume: start the charts over.
            status = self.status
            awaiting = (self.awaiting_pid, self.awaiting_since)
            self.clear()
            self.awaiting_pid, self.awaiting_since = awaiting
            self.status = status
            self.events_seen = 1
            self.last_event_time = time
        self._end_pause(time)
        self.info = dict(event)
        self.state = "starting"
        self.run_end = None
        self.died = None
        self.log_tail = []
        self.phase = None
        self.phases = {}
        self._last_step_clock = None
        self.start_time = time
        self.sessions.append([time, None])
        if isinstance(event.get("total_steps"), int):
            self.total_steps = event["total_steps"]
        model = event.get("model") or "?"
        pairs = event.get("train_pairs")
        detail = f"{pairs} training pairs, " if pairs is not None else ""
        total = event.get("total_steps")
        if resumed:
            entries.append(
                LogEntry(
                    "info", f"Run resumed from step {resumed_from}: {model}, {total} steps", step
                )
            )
        else:
            entries.append(LogEntry("info", f"Run started: {model}, {detail}{total} steps", step))
        if self.round is not None and not resumed:
            number, rounds = self.round
            entries.insert(0, LogEntry("info", f"Round {number}/{rounds} begins", step))
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

    def _is_awaited(self, event: dict[str, Any]) -> bool:
        """This dashboard's trainer wrote this run_start: its pid, or written since launch."""
        pid = event.get("pid")
        if self.awaiting_pid is not None and pid == self.awaiting_pid:
            return True
        time = finite_number(event.get("time"))
        return self.awaiting_since is not None and time is not None and time >= self.awaiting_since

    def _close_session(self, at: float | None) -> None:
        if self.sessions and self.sessions[-1][1] is None:
            start = self.sessions[-1][0]
            self.sessions[-1][1] = at if at is not None else start

    def _end_pause(self, at: float | None) -> None:
        if self.paused_since is not None:
            if at is not None:
                self.paused_seconds += max(0.0, at - self.paused_since)
            self.paused_since = None

    def _track_phase(
        self, phase: str, label: str, done: Any, total: Any, unit: str, time: float | None
    ) -> PhaseProgress | None:
        done, total = finite_number(done), finite_number(total)
        if done is None or total is None or total <= 0:
            return None
        current = self.phases.get(phase)
        if current is None or current.label != label or done < current.done:
            current = PhaseProgress(phase, label, done, total, unit, time, done, time)
            self.phases[phase] = current
        current.done, current.total, current.time = done, total, time
        self.phase = phase
        return current

    def _on_progress(self, event: dict[str, Any], step: int) -> list[LogEntry]:
        phase = str(event.get("phase") or "loading")
        unit = str(event.get("unit") or "")
        time = finite_number(event.get("time"))
        progress = self._track_phase(
            phase, phase, event.get("done"), event.get("total"), unit, time
        )
        if progress is not None and phase == "reference" and self.state == "starting":
            self.state = "computing_reference"
        if progress is not None and progress.done >= progress.total:
            total = format_number(progress.total, 0).rstrip("0").rstrip(".")
            return [LogEntry("info", f"{phase.capitalize()} done: {total} {unit}".rstrip())]
        return []

    def _on_reference(self, event: dict[str, Any], step: int) -> list[LogEntry]:
        self.reference = dict(event)
        done, total = event.get("done"), event.get("total")
        split = event.get("split") or "train"
        self._track_phase(
            "reference",
            f"reference ({split})",
            done,
            total,
            "pairs",
            finite_number(event.get("time")),
        )
        if self.state == "starting":
            self.state = "computing_reference"
        if isinstance(done, int) and isinstance(total, int) and done >= total:
            source = " (from the cache)" if event.get("cached") else ""
            return [LogEntry("info", f"Reference log-probs ready: {split}, {total} pairs{source}")]
        return []

    def _on_step(self, event: dict[str, Any], step: int) -> list[LogEntry]:
        self._track_seconds_per_step(event, step)
        for name, series in self.train.items():
            if name != "seconds_per_step":
                series.append(step, event.get(name))
        self.step = step
        self.last_step = dict(event)
        self.phase = None
        if finite_number(event.get("epoch")) is not None:
            self.epoch = finite_number(event.get("epoch"))
        if self.state not in ("stopping", *FINAL_STATES):
            self.state = "training"
        self.version += 1
        return []

    def _track_seconds_per_step(self, event: dict[str, Any], step: int) -> None:
        """Seconds a step took: the trainer's elapsed between two steps of one session, over
        the steps between them (wall time would count a pause as one long step)."""
        elapsed = finite_number(event.get("elapsed"))
        previous = self._last_step_clock
        if elapsed is None:
            self._last_step_clock = None
            return
        self._last_step_clock = (step, elapsed)
        if previous is not None and step > previous[0] and elapsed > previous[1]:
            self.train["seconds_per_step"].append(
                step, (elapsed - previous[1]) / (step - previous[0])
            )

    def _on_eval(self, event: dict[str, Any], step: int) -> list[LogEntry]:
        split = str(event.get("split") or "valid")
        by_name = self.evals.setdefault(split, {})
        for name in (*METRIC_NAMES, *EXTRA_METRIC_NAMES):
            if name in METRIC_NAMES or name in event:
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
                f"Eval ({split}{size}): loss {format_fixed(finite_number(event.get('loss')))}, "
                f"{self._accuracy_word()} "
                f"{format_percent(finite_number(event.get('rewards/accuracies')))}, "
                f"margin {format_fixed(finite_number(event.get('rewards/margins')))}",
                step,
            )
        ]

    def _on_checkpoint(self, event: dict[str, Any], step: int) -> list[LogEntry]:
        path = str(event.get("path") or "")
        self.checkpoints.append((step, path))
        self.version += 1
        # Inside the run directory (the usual case) the log names it from there: shorter.
        run_dir = str(self.info.get("run_dir") or "")
        shown = path
        if run_dir and path.startswith(run_dir.rstrip("/") + "/"):
            shown = path[len(run_dir.rstrip("/")) + 1 :]
        return [LogEntry("success", f"Checkpoint saved: {shown}", step)]

    def _on_state(self, event: dict[str, Any], step: int) -> list[LogEntry]:
        value = event.get("state")
        new_state = STATE_EVENT_STATES.get(str(value))
        if new_state is None or self.is_final:
            return []
        time = finite_number(event.get("time"))
        if new_state == "paused":
            if self.paused_since is None:
                self.paused_since = time
        else:
            self._end_pause(time)
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
        message = str(event.get("message") or event.get("kind") or "health check")
        if event.get("severity") == "off":
            self.checks_off.append(dict(event))
            self.version += 1
            return [LogEntry("info", f"Check off: {check_off_text(event)}", step)]
        self.health.append(dict(event))
        self.version += 1
        level = "error" if event.get("severity") == "error" else "warning"
        suggestion = event.get("suggestion")
        if suggestion:
            message += f" → {suggestion}"
        return [LogEntry(level, message, step)]

    def _on_samples(self, event: dict[str, Any], step: int) -> list[LogEntry]:
        prompts = event.get("prompts")
        if not isinstance(prompts, list):
            return []
        prompts = [p for p in prompts if isinstance(p, dict)]
        # Reference answers: step 0's, or any given later for a prompt that had none.
        for index, sample in enumerate(prompts):
            if index >= len(self.sample_prompts):
                self.sample_prompts.append({"prompt": str(sample.get("prompt") or "")})
            if (
                sample.get("reference") is not None
                and step == 0
                or (
                    sample.get("reference") is not None
                    and "reference" not in self.sample_prompts[index]
                )
            ):
                self.sample_prompts[index]["reference"] = str(sample["reference"])
        record = dict(event)
        record["prompts"] = prompts
        self.samples[step] = record
        self.version += 1
        if not _has_policy(record):
            return []
        seconds = finite_number(event.get("seconds"))
        cost = f" in {format_duration(seconds)}" if seconds is not None else ""
        return [
            LogEntry("info", f"Answers to {len(prompts)} prompts generated{cost} (a: show)", step)
        ]

    def _on_log(self, event: dict[str, Any], step: int) -> list[LogEntry]:
        level = str(event.get("level") or "info")
        if level not in ("info", "warning", "error"):
            level = "info"
        return [LogEntry(level, str(event.get("message") or ""), step)]

    def _on_run_end(self, event: dict[str, Any], step: int) -> list[LogEntry]:
        time = finite_number(event.get("time"))
        self._end_pause(time)
        self._close_session(time)
        status = str(event.get("status") or "completed")
        if self.awaiting:
            # An earlier session's end (the stream of a run being resumed): history.
            self.previous_end = dict(event)
            self.state = "starting"
            return [LogEntry("info", f"Earlier session {status} at step {step}", step)]
        self.run_end = dict(event)
        self.state = RUN_END_STATES.get(status, "finished")
        elapsed = format_duration(self.elapsed(time or 0.0))
        if self.state == "failed":
            error = event.get("error") or "unknown error"
            return [LogEntry("error", f"Run failed: {error}", step)]
        if self.state == "stopped":
            return [LogEntry("warning", f"Run stopped at step {step} after {elapsed}", step)]
        return [LogEntry("success", f"Run completed in {elapsed}", step)]


def check_off_text(event: dict[str, Any]) -> str:
    """A `health` event of a check that is off, as a line: the check, then why."""
    kind = str(event.get("kind") or "")
    title = KIND_TITLES.get(kind, kind.replace("_", " ") or "health check")
    message = event.get("message")
    return f"{title}: {message}" if message else title


def _has_policy(samples_event: dict[str, Any]) -> bool:
    return any(p.get("policy") is not None for p in samples_event.get("prompts") or [])
