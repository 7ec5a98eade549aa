"""What a run tells the world: events in metrics.jsonl, its state in status.json, lines on the
console, health findings, and its end as one RunResult (the `run_end` event and the final
state). docs/ and mlx_dpo/events.py describe the files; this module writes them for a run."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlx_dpo.errors import is_out_of_memory, resource_failure
from mlx_dpo.events import (
    LOSS,
    REWARDS_ACCURACIES,
    REWARDS_MARGINS,
    RUN_END_STATES,
    EventWriter,
    write_status,
)
from mlx_dpo.formatting import format_duration
from mlx_dpo.health import KIND_TITLES, HealthMonitor

# A console line at least this often (seconds), besides every twentieth of the run.
REPORT_SECONDS = 30.0


@dataclass
class RunStatus:
    """The fields of status.json (events.py): `state` is one of events.STATES."""

    state: str = "starting"
    step: int = 0
    total_steps: int | None = None
    epoch: float = 0.0
    pid: int = field(default_factory=os.getpid)
    model: str | None = None
    last_checkpoint: str | None = None
    error: str | None = None
    # While paused with no dashboard attached: when the run saves and stops by itself.
    auto_stop_at: float | None = None


class StatusFile:
    """A run's status, kept in memory and written to status.json (atomically) on `update`;
    `record` changes it without writing (the next update carries the change). Only rank 0
    writes (`enabled`)."""

    def __init__(self, run_dir: Path, status: RunStatus, enabled: bool = True):
        self.run_dir = run_dir
        self.status = status
        self.enabled = enabled

    def record(self, **changes: Any) -> None:
        self.status = dataclasses.replace(self.status, **changes)

    def update(self, **changes: Any) -> None:
        self.record(**changes)
        if self.enabled:
            write_status(self.run_dir, **dataclasses.asdict(self.status))


@dataclass(frozen=True)
class RunResult:
    """The end of a run: `status` "completed" | "stopped" | "failed", the last step, the
    error of a failed run, the evaluations, and where the adapters are (None when the run
    never started: its model or data could not be loaded)."""

    status: str
    step: int
    adapter_path: str | None
    error: str | None = None
    final_eval: dict | None = None
    best_eval: dict | None = None


class Reporter:
    """The run's outputs together: `events` (metrics.jsonl), `status` (status.json) and `say`
    (a console line). `started` is the run's start (time.time()), for elapsed times."""

    def __init__(
        self,
        events: EventWriter,
        status: StatusFile,
        say: Callable[[str], None],
        started: float,
    ):
        self.events = events
        self.status = status
        self.say = say
        self.started = started
        self.paused_seconds = 0.0
        self.paused_since: float | None = None

    def elapsed(self) -> float:
        """Seconds since this trainer began the run, time spent paused left out (the `elapsed`
        of step and run_end events)."""
        now = time.time()
        paused = self.paused_seconds
        if self.paused_since is not None:
            paused += now - self.paused_since
        return now - self.started - paused

    def enter_state(self, step: int, state: str, event_state: str | None = None) -> None:
        """A `state` event (`event_state`, when it says more than the state: "resumed") and
        the new state in status.json; the time spent paused is counted from the events' times."""
        event = self.events.write("state", step, state=event_state or state)
        if state == "paused" and self.paused_since is None:
            self.paused_since = event["time"]
        elif state != "paused" and self.paused_since is not None:
            self.paused_seconds += event["time"] - self.paused_since
            self.paused_since = None
        self.status.update(state=state)

    def note(self, message: str) -> None:
        """Something the run records, in the event stream and on the console."""
        self.events.write("log", 0, level="info", message=message)
        self.say(message)

    def warn(self, message: str) -> None:
        """A warning in the event stream and on the console."""
        self.events.write("log", 0, level="warning", message=message)
        self.say(f"warning: {message}")

    def finish(self, result: RunResult) -> None:
        """The `run_end` event, flushed to disk, and the final state in status.json."""
        try:
            self.events.write(
                "run_end",
                result.step,
                status=result.status,
                error=result.error,
                adapter_path=result.adapter_path,
                last_checkpoint=self.status.status.last_checkpoint,
                final_eval=result.final_eval,
                best_eval=result.best_eval,
                elapsed=self.elapsed(),
            )
            self.events.sync()
            self.status.update(
                state=RUN_END_STATES[result.status],
                step=result.step,
                error=result.error,
                auto_stop_at=None,
            )
        except OSError:
            # A full disk cannot take the run_end line either; the message on the console says
            # what happened, and the dashboard sees the trainer's process gone.
            pass


class HealthReport:
    """The run's health checks on the events it writes: each finding is written as a
    `health` event and said; error-level ones are kept in `errors` for the run to stop on."""

    def __init__(self, monitor: HealthMonitor, reporter: Reporter):
        self.monitor = monitor
        self.reporter = reporter
        self.findings: list[dict] = []
        self.errors: list[str] = []

    def observe(self, event: dict) -> None:
        for finding in self.monitor.observe(event):
            self.report(finding)

    def report_off(self, checks: list[dict], written: list[dict]) -> None:
        """`health` events of the checks that are off (HealthMonitor.checks_off), each said
        once; those `written` already (the stream a resumed run kept) are not repeated. Not
        findings: nothing is added to `findings`."""
        seen = {
            (e.get("kind"), e.get("message"))
            for e in written
            if e.get("event") == "health" and e.get("severity") == "off"
        }
        for check in checks:
            if (check["kind"], check["message"]) in seen:
                continue
            fields = {k: v for k, v in check.items() if k != "step"}
            self.reporter.events.write("health", check.get("step", 0), **fields)
            title = KIND_TITLES.get(check["kind"], check["kind"])
            self.reporter.say(f"health check off: {title}: {check['message']}")

    def report(self, finding: dict) -> None:
        self.findings.append(finding)
        fields = {k: v for k, v in finding.items() if k != "step"}
        step = finding.get("step", self.reporter.status.status.step)
        self.reporter.events.write("health", step, **fields)
        self.reporter.say(
            f"health {finding['severity']}: {finding['message']} Suggestion: {finding['suggestion']}"
        )
        if finding["severity"] == "error":
            self.errors.append(finding["message"])


class ProgressLines:
    """When a step gets a console line: every twentieth of the run, the last step, and at
    least every REPORT_SECONDS."""

    def __init__(self, steps: int):
        self.steps = steps
        self.every = max(1, steps // 20)
        self.last = time.time()

    def due(self, step: int) -> bool:
        now = time.time()
        if step % self.every == 0 or step == self.steps or now - self.last >= REPORT_SECONDS:
            self.last = now
            return True
        return False


def step_line(
    step: int,
    steps: int,
    values: dict[str, float],
    pairs_per_second: float,
    tokens_per_second: float,
    peak_gb: float,
    eta: float,
) -> str:
    return (
        f"step {step}/{steps} | loss {values[LOSS]:.4f} | accuracy "
        f"{values[REWARDS_ACCURACIES]:.2f} | margin {values[REWARDS_MARGINS]:.3f} | "
        f"{pairs_per_second:.2f} pairs/s, {tokens_per_second:.0f} tok/s | "
        f"peak {peak_gb:.2f} GB | ETA {format_duration(eta)}"
    )


def eval_line(step: int, result: dict[str, Any]) -> str:
    return (
        f"eval  step {step}: loss {result[LOSS]:.4f}, accuracy "
        f"{result[REWARDS_ACCURACIES]:.3f}, margin {result[REWARDS_MARGINS]:.3f}"
    )


def truncation_warnings(name: str, cut: dict[str, int], max_length: int) -> list[str]:
    """What the data loader cut or split oddly in a split (its `truncation` counts)."""
    warnings = []
    if cut.get("pairs"):
        warnings.append(
            f"{name}: {cut['pairs']} pair(s) longer than max_length {max_length} were "
            f"cut ({cut['prompt']} prompt(s) from the left, {cut['response']} response(s) "
            "from the right)"
        )
    if cut.get("prefix_mismatch"):
        warnings.append(
            f"{name}: for {cut['prefix_mismatch']} pair(s) the chat template's prompt is not a "
            "prefix of prompt + response; split at the longest common prefix"
        )
    return warnings


def failure_message(
    err: BaseException, doing: str, last_checkpoint: str | None, memory_hint: str | None = None
) -> str:
    """A resource failure said for a person, with what is safe on disk (and, out of memory,
    `memory_hint`: how to go on, rundir.out_of_memory_resume); a bug as it is."""
    reason = resource_failure(err)
    if reason is None:
        return f"{type(err).__name__}: {err}"
    message = f"{doing}: {reason}. " + (
        f"Last good checkpoint: {last_checkpoint}"
        if last_checkpoint
        else "No checkpoint was saved yet"
    )
    if memory_hint and is_out_of_memory(err):
        message += f". {memory_hint}"
    return message
