"""What a run reports (mlx_dpo/trainer/reporting.py): status.json's fields, the run's end as
one RunResult, state changes, health findings, when a step gets a console line, and the
lines themselves."""

from __future__ import annotations

import json

import pytest

from mlx_dpo.events import EventWriter, read_events, read_status
from mlx_dpo.health import LN2, HealthMonitor
from mlx_dpo.trainer import reporting
from mlx_dpo.trainer.reporting import (
    HealthReport,
    ProgressLines,
    Reporter,
    RunResult,
    RunStatus,
    StatusFile,
    eval_line,
    failure_message,
    step_line,
    truncation_warnings,
)


def reporter_in(run_dir, enabled: bool = True) -> tuple[Reporter, list[str]]:
    lines: list[str] = []
    status = StatusFile(run_dir, RunStatus(model="m", pid=123), enabled=enabled)
    events = EventWriter(run_dir, enabled=enabled)
    return Reporter(events, status, lines.append, started=0.0), lines


def test_status_file_fields_in_order_written_on_update_only(tmp_path):
    reporter, _ = reporter_in(tmp_path)
    reporter.status.update()
    written = json.loads((tmp_path / "status.json").read_text())
    assert list(written) == [
        "state", "step", "total_steps", "epoch", "pid", "model", "last_checkpoint", "error",
        "auto_stop_at", "updated",
    ]  # fmt: skip
    assert written["state"] == "starting" and written["pid"] == 123 and written["model"] == "m"
    reporter.status.record(last_checkpoint="ck")
    assert read_status(tmp_path)["last_checkpoint"] is None  # recorded, not yet written
    reporter.status.update(step=3, total_steps=10)
    assert (read_status(tmp_path)["step"], read_status(tmp_path)["last_checkpoint"]) == (3, "ck")
    with pytest.raises(TypeError):
        reporter.status.update(stat="typo")


def test_other_ranks_write_nothing(tmp_path):
    reporter, _ = reporter_in(tmp_path, enabled=False)
    reporter.status.update(state="training")
    reporter.events.write("log", 0, level="info", message="x")
    assert reporter.status.status.state == "training"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "status,state", [("completed", "finished"), ("stopped", "stopped"), ("failed", "failed")]
)
def test_the_end_of_a_run_is_one_event_and_the_final_state(tmp_path, status, state):
    reporter, _ = reporter_in(tmp_path)
    reporter.status.record(last_checkpoint="run/checkpoints/step-0000004")
    error = "boom" if status == "failed" else None
    result = RunResult(status, 4, "run", error, {"loss": 0.5}, {"step": 2, "loss": 0.4})
    reporter.finish(result)
    (end,) = read_events(tmp_path)
    assert {k: end[k] for k in ("event", "step", "status", "error", "adapter_path")} == {
        "event": "run_end", "step": 4, "status": status, "error": error, "adapter_path": "run",
    }  # fmt: skip
    assert end["last_checkpoint"] == "run/checkpoints/step-0000004"
    assert end["final_eval"] == {"loss": 0.5} and end["best_eval"]["step"] == 2
    assert end["elapsed"] > 0
    final = read_status(tmp_path)
    assert (final["state"], final["step"], final["error"]) == (state, 4, error)


def test_a_full_disk_at_the_end_is_not_an_error_on_top(tmp_path, monkeypatch):
    reporter, _ = reporter_in(tmp_path)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(reporter.events, "write", full)
    reporter.finish(RunResult("failed", 2, "run", "disk full"))  # does not raise
    assert not (tmp_path / "status.json").exists()


def test_state_changes_and_warnings(tmp_path):
    reporter, lines = reporter_in(tmp_path)
    reporter.enter_state(3, "paused")
    reporter.enter_state(3, "training", event_state="resumed")
    reporter.warn("train: 2 pair(s) cut")
    events = read_events(tmp_path)
    assert [(e["event"], e.get("state"), e["step"]) for e in events] == [
        ("state", "paused", 3), ("state", "resumed", 3), ("log", None, 0),
    ]  # fmt: skip
    assert events[-1]["level"] == "warning" and events[-1]["message"] == "train: 2 pair(s) cut"
    assert read_status(tmp_path)["state"] == "training"
    assert lines == ["warning: train: 2 pair(s) cut"]


def test_health_findings_are_written_said_and_errors_kept(tmp_path):
    reporter, lines = reporter_in(tmp_path)
    reporter.status.update(step=1)
    health = HealthReport(HealthMonitor(loss="sigmoid", beta=0.1), reporter)
    # A fresh run's first step must have the loss of a policy equal to its reference.
    health.observe({"event": "run_start", "step": 0, "resumed_from": None})
    first_step = {
        "event": "step", "step": 1, "loss": LN2 + 0.5, "rewards/chosen": 0.0,
        "rewards/rejected": 0.0, "rewards/margins": 0.0, "rewards/accuracies": 0.0,
        "logps/chosen": -40.0, "logps/rejected": -41.0, "kl": 0.0,
    }  # fmt: skip
    health.observe(first_step)
    assert [f["kind"] for f in health.findings] == ["reference_mismatch"]
    assert health.errors == [health.findings[0]["message"]]
    (event,) = read_events(tmp_path)
    assert event["event"] == "health" and event["step"] == 1
    assert event["kind"] == "reference_mismatch" and event["severity"] == "error"
    assert lines == [
        f"health error: {event['message']} Suggestion: {event['suggestion']}",
    ]


def test_a_finding_without_a_step_takes_the_runs(tmp_path):
    reporter, _ = reporter_in(tmp_path)
    reporter.status.record(step=7)
    health = HealthReport(HealthMonitor(), reporter)
    health.report({"kind": "length_bias", "severity": "warning", "message": "m", "suggestion": "s"})
    (event,) = read_events(tmp_path)
    assert event["step"] == 7 and health.errors == []


def test_progress_lines_every_twentieth_the_last_and_every_30_seconds(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(reporting.time, "time", lambda: clock[0])
    progress = ProgressLines(100)
    assert [s for s in range(1, 101) if progress.due(s)] == [5 * k for k in range(1, 21)]
    progress = ProgressLines(7)  # fewer than 20 steps: every step
    assert all(progress.due(s) for s in range(1, 8))
    progress = ProgressLines(1000)  # every 50
    assert not progress.due(1)
    clock[0] += reporting.REPORT_SECONDS
    assert progress.due(2) and not progress.due(3)
    assert progress.due(1000)


def test_console_lines():
    values = {"loss": 0.69314, "rewards/accuracies": 0.5, "rewards/margins": 0.0123}
    assert step_line(3, 10, values, 2.0, 812.4, 0.71, 125) == (
        "step 3/10 | loss 0.6931 | accuracy 0.50 | margin 0.012 | 2.00 pairs/s, 812 tok/s | "
        "peak 0.71 GB | ETA 2m 05s"
    )
    assert eval_line(4, values) == "eval  step 4: loss 0.6931, accuracy 0.500, margin 0.012"


def test_truncation_warnings_say_what_was_cut():
    assert truncation_warnings("train", {}, 512) == []
    cut = {"pairs": 3, "prompt": 2, "response": 1, "prefix_mismatch": 4}
    assert truncation_warnings("valid", cut, 512) == [
        "valid: 3 pair(s) longer than max_length 512 were cut (2 prompt(s) from the left, "
        "1 response(s) from the right)",
        "valid: for 4 pair(s) the chat template's prompt is not a prefix of prompt + "
        "response; split at the longest common prefix",
    ]


def test_failure_messages_say_what_ran_out_and_what_is_safe():
    message = failure_message(MemoryError("bad_alloc"), "step 3", "run/checkpoints/step-0000002")
    assert message.startswith("step 3: out of memory (bad_alloc)")
    assert message.endswith("Last good checkpoint: run/checkpoints/step-0000002")
    disk = failure_message(OSError(28, "No space left on device"), "saving step 2", None)
    assert disk.startswith("saving step 2: disk full") and disk.endswith(
        "No checkpoint was saved yet"
    )
    assert failure_message(ValueError("boom"), "step 1", None) == "ValueError: boom"


def test_an_out_of_memory_message_ends_with_how_to_go_on():
    hint = "To continue with the same 8 pairs per optimizer step in smaller batches: mlx-dpo ..."
    metal = RuntimeError("[metal::malloc] Unable to allocate 1073741824 bytes")
    message = failure_message(metal, "step 3", "run/checkpoints/step-0000002", hint)
    assert message.endswith(f"Last good checkpoint: run/checkpoints/step-0000002. {hint}")
    # Only when memory ran out: a full disk or a bug says nothing of batches.
    disk = failure_message(OSError(28, "No space left on device"), "saving step 2", None, hint)
    assert hint not in disk
    assert failure_message(ValueError("boom"), "step 1", None, hint) == "ValueError: boom"


def test_elapsed_leaves_out_the_time_spent_paused(tmp_path, monkeypatch):
    """The `elapsed` of step and run_end events: wall time since the start, minus pauses,
    counted from the state events' own times (the dashboard reads the same times)."""
    now = [100.0]
    monkeypatch.setattr(reporting.time, "time", lambda: now[0])
    monkeypatch.setattr("mlx_dpo.events.time.time", lambda: now[0])
    reporter, _ = reporter_in(tmp_path)
    assert reporter.elapsed() == 100.0  # started at 0
    reporter.enter_state(3, "paused")
    now[0] = 130.0
    assert reporter.elapsed() == 100.0  # the pause going on counts as paused
    reporter.enter_state(3, "training", event_state="resumed")
    now[0] = 140.0
    assert reporter.elapsed() == 110.0
    reporter.enter_state(5, "paused")
    now[0] = 150.0
    reporter.enter_state(5, "stopping")  # a stop while paused ends the pause
    now[0] = 151.0
    assert reporter.elapsed() == 111.0
    paused = [e for e in read_events(tmp_path) if e["event"] == "state"]
    assert [(e["state"], e["time"]) for e in paused] == [
        ("paused", 100.0), ("resumed", 130.0), ("paused", 140.0), ("stopping", 150.0),
    ]  # fmt: skip


def test_checks_that_are_off_are_written_once_and_are_not_findings(tmp_path):
    reporter, lines = reporter_in(tmp_path)
    report = HealthReport(HealthMonitor(), reporter)
    checks = HealthMonitor().checks_off({"total_steps": 500, "train_pairs": 500, "valid_pairs": 8})
    report.report_off(checks, [])
    written = read_events(tmp_path)
    assert [(e["kind"], e["severity"], e["step"]) for e in written] == [
        ("orientation", "off", 0), ("overfitting", "off", 0),
    ]  # fmt: skip
    assert report.findings == [] and report.errors == []
    assert lines[1] == (
        "health check off: overfitting: it reads the validation evals, and the validation split "
        "has 8 pairs, under health.valid_min_pairs (20): too few to judge"
    )
    # A resumed run's kept stream has them: nothing is written again.
    report.report_off(checks, written)
    assert len(read_events(tmp_path)) == 2
