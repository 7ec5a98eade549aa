"""Unit tests of tui/panels.py: what each chart draws from a run model."""

from __future__ import annotations

import pytest
from mlx_dpo.tui.panels import LOG_PROBS, OPTIMIZER, PANEL_SETS, PREFERENCES, chart_data
from mlx_dpo.tui.run_model import RunModel
from tui_runs import noisy_step_metrics, write_run

from mlx_dpo.events import read_events


def model_of(run_dir) -> RunModel:
    model = RunModel()
    model.apply_all(read_events(run_dir))
    return model


def spec(panel, chart_id):
    return next(c for c in panel.charts if c.chart_id == chart_id)


def test_panel_sets_have_four_charts_with_unique_ids_and_keys():
    ids = [c.chart_id for p in PANEL_SETS for c in p.charts]
    assert len(ids) == len(set(ids)) == 12
    assert [p.key for p in PANEL_SETS] == ["1", "2", "3"]


def test_training_lines_are_smoothed_with_the_raw_steps_behind(tmp_path):
    write_run(tmp_path, steps=30, noisy=True)
    model = model_of(tmp_path)
    data = chart_data(spec(PREFERENCES, "chart-rewards"), model, 0.9)
    chosen = [noisy_step_metrics(s)["rewards/chosen"] for s in range(1, 31)]
    assert list(data.lines[0].raw) == chosen
    assert data.lines[0].values[-1] != chosen[-1]
    assert data.checkpoints == [20] and data.subtitle == "EMA 0.9"
    raw = chart_data(spec(PREFERENCES, "chart-rewards"), model, 0.0)
    assert list(raw.lines[0].values) == chosen and raw.lines[0].raw is None


def test_eval_lines_have_markers_and_are_not_smoothed(tmp_path):
    write_run(tmp_path, steps=30)
    model = model_of(tmp_path)
    data = chart_data(spec(LOG_PROBS, "chart-eval-rewards"), model, 0.9)
    assert all(line.markers for line in data.lines)
    assert list(data.lines[0].steps) == [10, 20, 30]
    assert list(data.lines[0].values) == [
        model.evals["valid"]["rewards/chosen"].values[i] for i in range(3)
    ]


def test_schedules_are_drawn_exact_and_seconds_per_step_comes_from_elapsed(tmp_path):
    write_run(tmp_path, steps=12)
    model = model_of(tmp_path)
    lr = chart_data(spec(OPTIMIZER, "chart-lr"), model, 0.9)
    assert list(lr.lines[0].values) == model.train["learning_rate"].values  # not lagging
    step_time = chart_data(spec(OPTIMIZER, "chart-step-time"), model, 0.0)
    # tui_runs writes elapsed = 10 + 2 s a step: 2 s a step from the second step on.
    assert list(step_time.lines[0].steps) == list(range(2, 13))
    assert step_time.lines[0].values == pytest.approx([2.0] * 11)


def test_chart_data_is_a_copy_the_stream_can_grow_past(tmp_path):
    write_run(tmp_path, steps=5)
    model = model_of(tmp_path)
    data = chart_data(spec(PREFERENCES, "chart-loss"), model, 0.9)
    model.apply({"event": "step", "step": 6, "loss": 0.1})
    assert len(data.lines[0].steps) == len(data.lines[0].values) == 5
