"""Unit tests of tui/run_model.py (plain Python: no Textual app runs here)."""

from __future__ import annotations

import pytest
from mlx_dpo.tui.run_model import RunModel
from tui_runs import START_TIME, at, eval_metrics, step_metrics, write_run

from mlx_dpo.events import EventWriter, read_events


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
