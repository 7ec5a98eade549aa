"""Unit tests of the dashboard's plain-Python parts: series, smoothing, downsampling, the
run model, the run watcher, ticks and formatting. No Textual app runs here."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from mlx_dpo.tui.formatting import format_number, format_percent, format_rate
from mlx_dpo.tui.run_model import RunModel
from mlx_dpo.tui.run_watcher import RunWatcher, describe_exit, pid_alive, tail_lines
from mlx_dpo.tui.series import MetricSeries, downsample_minmax
from mlx_dpo.tui.ticks import TickFormatter, nice_ticks
from tui_runs import START_TIME, at, eval_metrics, step_metrics, write_run

from mlx_dpo.events import LOG_FILE, EventWriter, read_events, write_status
from mlx_dpo.formatting import format_duration


def model_of(run_dir) -> RunModel:
    model = RunModel()
    model.apply_all(read_events(run_dir))
    return model


# -- series ------------------------------------------------------------------------------


def test_series_skips_non_finite_and_null_values():
    series = MetricSeries()
    for step, value in enumerate([1.0, None, float("nan"), 2.0, float("inf"), True]):
        series.append(step, value)
    assert series.steps == [0, 3]
    assert series.values == [1.0, 2.0]


def test_series_rewinds_when_a_step_repeats():
    series = MetricSeries()
    for step in range(1, 11):
        series.append(step, float(step))
    series.append(6, 60.0)
    assert series.steps == [1, 2, 3, 4, 5, 6]
    assert series.values[-1] == 60.0


def test_ema_is_debiased_and_incremental_equals_full():
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    full = MetricSeries()
    for step, value in enumerate(values):
        full.append(step, value)
    expected, biased = [], 0.0
    for index, value in enumerate(values):
        biased = 0.5 * biased + 0.5 * value
        expected.append(biased / (1 - 0.5 ** (index + 1)))
    assert full.smoothed(0.5) == pytest.approx(expected)
    # The first point is the raw value (debiasing), not pulled towards zero.
    assert full.smoothed(0.9)[0] == pytest.approx(1.0)

    growing = MetricSeries()
    for step, value in enumerate(values[:2]):
        growing.append(step, value)
    growing.smoothed(0.5)
    for step, value in enumerate(values[2:], start=2):
        growing.append(step, value)
    assert growing.smoothed(0.5) == pytest.approx(expected)
    assert full.smoothed(0.0) == values


def test_truncation_also_truncates_the_smoothed_cache():
    series = MetricSeries()
    for step in range(10):
        series.append(step, float(step))
    series.smoothed(0.6)
    series.truncate_after(4)
    for step in range(5, 8):
        series.append(step, 0.0)
    fresh = MetricSeries()
    for step, value in zip(series.steps, series.values, strict=True):
        fresh.append(step, value)
    assert series.smoothed(0.6) == pytest.approx(fresh.smoothed(0.6))


def test_downsample_keeps_extremes_and_bounds_the_points():
    xs = np.arange(100_000)
    ys = np.sin(xs / 1000.0)
    ys[54_321] = 50.0  # a spike must survive
    ys[12_345] = -50.0
    out_x, out_y = downsample_minmax(xs, ys, 120)
    assert len(out_x) <= 240
    assert out_y.max() == 50.0 and out_y.min() == -50.0
    assert list(out_x) == sorted(out_x)
    short_x, short_y = downsample_minmax([1, 2, 3], [4.0, 5.0, 6.0], 120)
    assert list(short_x) == [1, 2, 3] and list(short_y) == [4.0, 5.0, 6.0]


# -- run model ---------------------------------------------------------------------------


def test_model_follows_a_recorded_run(tmp_path):
    write_run(tmp_path, steps=40, total_steps=100)
    model = model_of(tmp_path)
    assert model.state == "training"
    assert model.step == 40 and model.total_steps == 100
    assert model.train["loss"].values == [step_metrics(s)["loss"] for s in range(1, 41)]
    assert model.eval_split == "valid"
    assert model.eval_series("loss").steps == [10, 20, 30, 40]
    assert model.eval_series("loss").latest == pytest.approx(eval_metrics(40)["loss"])
    assert [step for step, _ in model.checkpoints] == [20, 40]
    assert model.last_checkpoint.endswith("0000040")
    # Elapsed and ETA come from the trainer's numbers, moved on by the given clock.
    assert model.elapsed(at(40)) == pytest.approx(10 + 40 * 2.0)
    assert model.elapsed(at(41)) == pytest.approx(10 + 40 * 2.0 + 2.0)
    assert model.eta(at(41)) == pytest.approx(60 * 2.0 - 2.0)


def test_model_states_follow_state_and_run_end_events(tmp_path):
    model = RunModel()
    assert model.state == "starting"
    model.apply({"event": "run_start", "step": 0, "time": START_TIME, "total_steps": 5})
    model.apply({"event": "reference", "step": 0, "done": 3, "total": 10})
    assert model.state == "computing_reference"
    model.apply({"event": "step", "step": 1, "loss": 0.69})
    assert model.state == "training"
    model.apply({"event": "state", "step": 1, "state": "paused"})
    assert model.state == "paused"
    model.apply({"event": "state", "step": 1, "state": "resumed"})
    assert model.state == "training"
    model.apply({"event": "state", "step": 1, "state": "evaluating"})
    assert model.state == "evaluating"
    model.apply({"event": "eval", "step": 1, "split": "valid", "loss": 0.6})
    assert model.state == "training"
    model.apply({"event": "state", "step": 2, "state": "stopping"})
    model.apply({"event": "step", "step": 2, "loss": 0.6})
    assert model.state == "stopping"
    entries = model.apply({"event": "run_end", "step": 2, "status": "stopped", "elapsed": 7})
    assert model.state == "stopped" and model.is_final
    assert "stopped at step 2" in entries[0].message
    # Nothing after the end changes the state but a new run.
    model.apply({"event": "state", "step": 2, "state": "training"})
    assert model.state == "stopped"


def test_finished_run_reads_the_same_at_any_time(tmp_path):
    write_run(tmp_path, steps=30, end="completed")
    model = model_of(tmp_path)
    assert model.state == "finished"
    assert model.elapsed(0.0) == model.elapsed(1e12) == pytest.approx(10 + 31 * 2.0)
    assert model.eta(1e12) is None


def test_resumed_run_drops_points_past_the_resume_step(tmp_path):
    write_run(tmp_path, steps=30, checkpoint_every=10)
    write_run(tmp_path, steps=25, first_step=21, resumed_from=20, checkpoint_every=0)
    model = model_of(tmp_path)
    assert model.train["loss"].steps == list(range(1, 26))
    assert [step for step, _ in model.checkpoints] == [10, 20]
    assert model.eval_series("loss").steps == [10, 20]
    assert model.step == 25


def test_new_run_without_resume_starts_the_charts_over():
    model = RunModel()
    model.apply({"event": "run_start", "step": 0, "total_steps": 5})
    model.apply({"event": "step", "step": 1, "loss": 1.0})
    model.apply({"event": "run_end", "step": 1, "status": "completed"})
    model.apply({"event": "run_start", "step": 0, "total_steps": 5})
    assert len(model.train["loss"]) == 0
    assert model.state == "starting" and model.run_end is None


def test_log_entries_for_truncation_health_checkpoint_and_log_events(tmp_path):
    write_run(tmp_path, steps=30, health=True)
    writer = EventWriter(tmp_path)
    writer.write("log", 30, level="warning", message="low disk space")
    writer.close()
    model = RunModel()
    entries = model.apply_all(read_events(tmp_path))
    messages = [(entry.level, entry.message) for entry in entries]
    assert (
        "warning",
        "3 train pairs truncated to max_length (prompt cut in 2, response cut in 1)",
    ) in messages
    assert any(level == "success" and "Checkpoint saved" in text for level, text in messages)
    assert any(
        level == "warning" and "KL to the reference grows fast → lower the learning rate" in text
        for level, text in messages
    )
    assert ("warning", "low disk space") in messages
    assert model.health[0]["kind"] == "kl_growing"


def test_status_fills_in_before_events_and_final_state_only_when_newer(tmp_path):
    model = RunModel()
    model.merge_status({"state": "computing_reference", "step": 0, "total_steps": 50})
    assert model.state == "computing_reference" and model.total_steps == 50
    model.apply({"event": "run_start", "step": 0, "time": 100.0, "total_steps": 50})
    model.apply({"event": "step", "step": 1, "time": 110.0, "loss": 0.7})
    model.merge_status({"state": "failed", "updated": 90.0})  # stale: an older run's status
    assert model.state == "training"
    model.merge_status({"state": "failed", "updated": 120.0, "error": "boom"})
    assert model.state == "failed" and model.error == "boom"


def test_trainer_gone_fails_the_run_unless_it_ended(tmp_path):
    model = RunModel()
    model.apply({"event": "run_start", "step": 0, "total_steps": 5})
    model.apply({"event": "checkpoint", "step": 3, "path": "ck/3"})
    entries = model.mark_trainer_gone("The trainer was killed", ["Traceback", "MemoryError"])
    assert model.state == "failed" and model.died == "The trainer was killed"
    assert [entry.message for entry in entries][-3:] == [
        "  Traceback",
        "  MemoryError",
        "Last checkpoint: ck/3",
    ]

    ended = RunModel()
    ended.apply({"event": "run_start", "step": 0})
    ended.apply({"event": "run_end", "step": 5, "status": "completed"})
    assert ended.mark_trainer_gone("gone", []) == []
    assert ended.state == "finished"


# -- run watcher -------------------------------------------------------------------------


def test_describe_exit():
    assert "SIGKILL" in describe_exit(-signal.SIGKILL) and "out of memory" in describe_exit(-9)
    assert "SIGTERM" in describe_exit(-signal.SIGTERM)
    assert describe_exit(3) == "The trainer exited with code 3"
    assert "without ending the run" in describe_exit(0)


def test_tail_lines(tmp_path):
    path = tmp_path / "train.log"
    path.write_text("".join(f"line {i}\n" for i in range(100)) + "\n\n")
    assert tail_lines(path, 3) == ["line 97", "line 98", "line 99"]
    assert tail_lines(tmp_path / "missing.log") == []


def test_watcher_sees_a_dead_popen_once_and_reads_the_log(tmp_path):
    (tmp_path / LOG_FILE).write_text("Traceback (most recent call last):\nMemoryError\n")
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    process.wait()
    watcher = RunWatcher(tmp_path, trainer=process)
    update = watcher.poll()
    assert update.trainer_gone == "The trainer exited with code 3"
    assert update.log_tail == ["Traceback (most recent call last):", "MemoryError"]
    assert watcher.poll().trainer_gone is None


def test_watcher_checks_the_status_pid_without_a_popen(tmp_path):
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()  # reaped: the pid no longer exists
    assert not pid_alive(process.pid)
    assert pid_alive(os.getpid())
    write_status(tmp_path, state="training", step=3, pid=process.pid)
    update = RunWatcher(tmp_path).poll()
    assert update.trainer_gone is not None and str(process.pid) in update.trainer_gone
    # A finished run is not checked: its trainer is meant to be gone.
    write_status(tmp_path, state="finished", step=3, pid=process.pid)
    assert RunWatcher(tmp_path).poll().trainer_gone is None
    write_status(tmp_path, state="training", step=3, pid=os.getpid())
    assert RunWatcher(tmp_path).poll().trainer_gone is None


def test_watcher_reports_a_rewritten_stream(tmp_path):
    write_run(tmp_path, steps=20)
    watcher = RunWatcher(tmp_path)
    assert len(watcher.poll().events) > 20
    (tmp_path / "metrics.jsonl").write_text('{"event": "run_start", "step": 0}\n')
    update = watcher.poll()
    assert update.reset and [event["event"] for event in update.events] == ["run_start"]


# -- ticks and formatting ----------------------------------------------------------------


def test_nice_ticks_fit_the_count_and_land_on_round_numbers():
    assert nice_ticks(0, 100, 5, integer=True) == [0, 20, 40, 60, 80, 100]
    ticks = nice_ticks(-1.07, 0.73, 4)
    assert ticks == pytest.approx([-1.0, -0.5, 0.0, 0.5])
    assert nice_ticks(0, 3, 10, integer=True) == [0, 1, 2, 3]
    labels = TickFormatter().get_labels_for_ticks([-0.5, -1e-17, 0.5])
    assert labels == ["-0.5", "0.0", "0.5"]


def test_formatting():
    assert format_duration(None) == "–"
    assert format_duration(45.2) == "45s"
    assert format_duration(725) == "12m 05s"
    assert format_duration(3 * 3600 + 125) == "3h 02m"
    assert format_number(0.693147) == "0.693"
    assert format_number(5e-6) == "5.00e-06"
    assert format_number(float("nan")) == "–"
    assert format_percent(0.875) == "87.5%"
    assert format_rate(1234.0, "tok/s") == "1.2k tok/s"
    assert format_rate(3.5, "") == "3.50"
    assert format_number(123.45) == "123.5"
