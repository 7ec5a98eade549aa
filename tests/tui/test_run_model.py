"""Unit tests of tui/run_model.py (plain Python: no Textual app runs here)."""

from __future__ import annotations

import pytest
from mlx_dpo.tui.run_model import RunModel
from tui_runs import (
    START_TIME,
    at,
    earlier_round,
    eval_metrics,
    make_round,
    step_metrics,
    write_run,
)

from mlx_dpo.events import EventWriter, read_events, read_status


def model_of(run_dir) -> RunModel:
    model = RunModel()
    model.apply_all(read_events(run_dir))
    return model


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
    assert model.health[0]["kind"] == "kl_drift"


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


# -- lifecycle: wall time, pauses, sessions ----------------------------------------------


def test_elapsed_is_wall_time_with_paused_time_apart():
    model = RunModel()
    model.apply({"event": "run_start", "step": 0, "time": 100.0, "total_steps": 10})
    model.apply({"event": "step", "step": 1, "time": 110.0, "elapsed": 10.0})
    model.apply({"event": "state", "step": 1, "time": 120.0, "state": "paused"})
    # Paused: elapsed keeps counting the wall clock (no freeze, then no jump).
    assert model.elapsed(150.0) == 50.0 and model.paused(150.0) == 30.0
    assert model.elapsed(160.0) == 60.0 and model.paused(160.0) == 40.0
    model.apply({"event": "state", "step": 1, "time": 170.0, "state": "resumed"})
    assert model.paused(500.0) == 50.0  # the pause is over
    model.apply({"event": "run_end", "step": 2, "time": 200.0, "status": "completed"})
    assert model.elapsed(10_000.0) == 100.0 and model.paused(10_000.0) == 50.0


def test_a_resumed_run_adds_its_sessions_wall_time():
    model = RunModel()
    model.apply({"event": "run_start", "step": 0, "time": 0.0})
    model.apply({"event": "step", "step": 10, "time": 60.0})
    model.apply({"event": "run_end", "step": 10, "time": 70.0, "status": "stopped"})
    assert model.state == "stopped"
    model.apply({"event": "run_start", "step": 10, "time": 1000.0, "resumed_from": 10})
    assert model.state == "starting" and model.run_end is None  # not over any more
    model.apply({"event": "step", "step": 11, "time": 1010.0})
    assert model.elapsed(1030.0) == 70.0 + 30.0
    assert model.resumed_from == 10


def test_an_awaited_trainer_makes_an_earlier_run_end_history(tmp_path):
    write_run(tmp_path, steps=20, end="stopped")
    model = RunModel()
    model.await_session(pid=4242, since=at(100))
    entries = model.apply_all(read_events(tmp_path))
    model.merge_status(read_status(tmp_path))
    assert model.state == "starting" and not model.is_final  # not the stopped summary
    assert model.previous_end["status"] == "stopped"
    assert any("Earlier session stopped at step 20" in e.message for e in entries)
    model.apply({"event": "run_start", "step": 20, "time": at(200), "pid": 4242,
                 "resumed_from": 20})  # fmt: skip
    assert not model.awaiting
    model.apply({"event": "run_end", "step": 30, "time": at(210), "status": "completed"})
    assert model.state == "finished"  # this session's end counts


def test_run_start_written_after_the_launch_is_the_awaited_one_without_a_pid():
    model = RunModel()
    model.await_session(pid=None, since=500.0)
    model.apply({"event": "run_start", "step": 0, "time": 400.0})  # an earlier session
    assert model.awaiting
    model.apply({"event": "run_start", "step": 0, "time": 600.0})
    assert not model.awaiting


# -- progress, samples, checks that are off, export facts --------------------------------


def test_progress_events_give_counts_and_an_eta():
    model = RunModel()
    model.apply({"event": "run_start", "step": 0, "time": 0.0})
    model.apply({"event": "progress", "step": 0, "time": 10.0, "phase": "loading", "done": 0,
                 "total": 12, "unit": "files"})  # fmt: skip
    model.apply({"event": "progress", "step": 0, "time": 20.0, "phase": "loading", "done": 4,
                 "total": 12, "unit": "files"})  # fmt: skip
    phase = model.phase_progress()
    assert (phase.label, phase.done, phase.total, phase.unit) == ("loading", 4, 12, "files")
    assert phase.eta(20.0) == pytest.approx(20.0)  # 4 files in 10 s, 8 to go
    assert phase.eta(25.0) == pytest.approx(15.0)
    model.apply({"event": "reference", "step": 0, "time": 30.0, "split": "train", "done": 0,
                 "total": 200})  # fmt: skip
    model.apply({"event": "reference", "step": 0, "time": 40.0, "split": "train", "done": 50,
                 "total": 200})  # fmt: skip
    phase = model.phase_progress()
    assert model.state == "computing_reference" and phase.label == "reference (train)"
    assert phase.eta(40.0) == pytest.approx(30.0)
    model.apply({"event": "step", "step": 1, "time": 50.0})
    assert model.phase_progress() is None


def test_health_off_is_a_check_that_does_not_run_not_a_finding():
    model = RunModel()
    entries = model.apply({"event": "health", "step": 0, "kind": "overfitting",
                           "severity": "off", "message": "12 validation pairs, fewer than 20"})  # fmt: skip
    assert model.findings == [] and len(model.checks_off) == 1
    assert entries[0].message == "Check off: overfitting: 12 validation pairs, fewer than 20"


def test_adapter_step_and_quantized_base():
    model = RunModel()
    model.apply({"event": "run_start", "step": 0, "config": {"quantize": None}})
    assert model.adapter_step is None and model.quantized_base is None
    model.apply({"event": "checkpoint", "step": 20, "path": "c/20"})
    assert model.adapter_step == 20
    model.apply({"event": "run_end", "step": 27, "status": "stopped"})
    assert model.adapter_step == 27
    model.apply({"event": "run_start", "step": 0, "quantized_base": False})
    assert model.quantized_base is False
    model.apply({"event": "run_start", "step": 0, "config": {"quantize": 4}})
    assert model.quantized_base is True


def test_a_round_of_train_rounds_knows_its_round(tmp_path):
    earlier = [earlier_round(1, 0.61, 0.7)]
    model = RunModel()
    write_run(tmp_path, steps=5)
    make_round(tmp_path, 2, 3, earlier)
    entries = model.apply_all(read_events(tmp_path))
    assert model.round == (2, 3)
    assert model.earlier_rounds == earlier
    assert entries[0].message == "Round 2/3 begins"  # the boundary, in the log
    plain = RunModel()
    write_run(tmp_path / "plain", steps=5)
    plain.apply_all(read_events(tmp_path / "plain"))
    assert plain.round is None and plain.earlier_rounds == []
