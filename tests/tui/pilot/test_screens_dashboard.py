"""Pilot tests of tui/screens/dashboard.py: header, tiles, charts and log drawn from recorded event streams."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import (
    WIDE,
    chart,
    make_app,
    screen_text,
    tile,
    wait_until,
)
from mlx_dpo.tui.formatting import format_number, format_percent
from mlx_dpo.tui.widgets import EventLog, HealthBanner, MetricChart
from tui_runs import MODEL, at, eval_metrics, step_metrics, write_run

from mlx_dpo.events import (
    EventWriter,
    truncate_events_after,
)


async def test_header_tiles_and_charts_show_the_stream(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_run(tmp_path / "run", steps=40, total_steps=100)
    app = make_app(Path("run"))  # shown as given, so printed commands work from here
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        text = screen_text(app)
        assert f"model {MODEL}  data demo  run run" in text
        assert "TRAINING" in text
        assert "step 40/100" in text and "epoch 0.8/2.0" in text
        # Frozen clock two seconds after step 40: elapsed 90 s + 2 s, ETA 120 s - 2 s.
        assert "elapsed 1m 32s" in text and "ETA 1m 58s" in text
        assert "40%" in text
        assert not app.dashboard.query_one(HealthBanner).display  # no findings, no badge

        last = step_metrics(40)
        assert tile(app, "loss").value_text == format_number(last["loss"])
        assert tile(app, "loss").detail_text == f"eval {format_number(eval_metrics(40)['loss'])}"
        assert tile(app, "accuracy").value_text == format_percent(last["rewards/accuracies"])
        assert tile(app, "margin").value_text == format_number(last["rewards/margins"])
        assert tile(app, "kl").value_text == format_number(last["kl"])
        assert tile(app, "lr").value_text == "5.00e-06"
        assert tile(app, "throughput").value_text == "3.50"
        assert tile(app, "throughput").detail_text == "890 tok/s"
        assert tile(app, "memory").value_text == "1.30 GB"

        rewards = chart(app, "rewards").data
        assert [line.label for line in rewards.lines] == ["chosen", "rejected"]
        assert list(rewards.lines[0].values) == [
            step_metrics(s)["rewards/chosen"] for s in range(1, 41)
        ]
        assert list(rewards.lines[1].values) == [
            step_metrics(s)["rewards/rejected"] for s in range(1, 41)
        ]
        assert rewards.checkpoints == [20, 40]
        accuracy = chart(app, "accuracy").data
        assert [line.label for line in accuracy.lines] == ["train", "eval"]
        assert list(accuracy.lines[1].steps) == [10, 20, 30, 40]
        loss = chart(app, "loss").data
        assert list(loss.lines[1].values) == [eval_metrics(s)["loss"] for s in (10, 20, 30, 40)]
        margin = chart(app, "margin").data
        assert margin.lines[0].values[-1] == last["rewards/margins"]

        assert "Rewards" in text and "chosen" in text and "rejected" in text
        assert "Preference accuracy" in text and "Reward margin" in text


async def test_header_shows_the_ranks_of_a_distributed_run(tmp_path):
    run_dir = write_run(tmp_path / "run", steps=5, total_steps=10)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first["world_size"] = 2
    (run_dir / "metrics.jsonl").write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    app = make_app(run_dir)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        assert "ranks 2" in screen_text(app)


async def test_follows_a_growing_stream(tmp_path):
    write_run(tmp_path, steps=10)
    app = make_app(tmp_path)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        assert app.model.step == 10
        writer = EventWriter(tmp_path)
        for step in range(11, 31):
            writer.write("step", step, time=at(step), **step_metrics(step))
        writer.write("checkpoint", 30, time=at(30.5), path="ckpt/30")
        writer.close()
        await wait_until(pilot, lambda: app.model.step == 30)
        loss = format_number(step_metrics(30)["loss"])
        await wait_until(pilot, lambda: tile(app, "loss").value_text == loss)
        assert len(chart(app, "loss").data.lines[0].steps) == 30
        assert chart(app, "loss").data.checkpoints == [30]
        assert any(
            "ckpt/30" in entry.message for entry in app.dashboard.query_one(EventLog).entries
        )


async def test_health_findings_get_a_badge_and_log_lines(tmp_path):
    write_run(tmp_path, steps=30, health=True)
    app = make_app(tmp_path)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        banner = app.dashboard.query_one(HealthBanner)
        assert banner.display
        text = screen_text(app)
        assert "health: 1 finding" in text and "KL to the reference grows fast" in text
        log_messages = [entry.message for entry in app.dashboard.query_one(EventLog).entries]
        assert any("truncated to max_length" in message for message in log_messages)


async def test_smoothing_cycles_raw_and_ema(tmp_path):
    write_run(tmp_path, steps=40)
    app = make_app(tmp_path)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        raw = list(chart(app, "loss").data.lines[0].values)
        assert chart(app, "loss").data.subtitle == "raw"
        await pilot.press("m")
        await pilot.pause()
        smoothed = chart(app, "loss").data
        assert smoothed.subtitle == "EMA 0.6"
        assert list(smoothed.lines[0].values) != raw
        assert smoothed.lines[0].values[0] == pytest.approx(raw[0])
        # Eval points are never smoothed.
        assert list(smoothed.lines[1].values) == [eval_metrics(s)["loss"] for s in (10, 20, 30, 40)]
        for _ in range(3):
            await pilot.press("m")
        await pilot.pause()
        assert chart(app, "loss").data.subtitle == "raw"


async def test_rewritten_stream_of_a_resumed_run_starts_over(tmp_path):
    write_run(tmp_path, steps=40)
    app = make_app(tmp_path)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        assert app.model.step == 40
        # What --resume does: cut the stream back to the checkpoint, then append.
        truncate_events_after(tmp_path, 20)
        writer = EventWriter(tmp_path)
        writer.write("run_start", 20, time=at(50), model=MODEL, total_steps=100, resumed_from=20)
        for step in range(21, 24):
            writer.write("step", step, time=at(50 + step), **step_metrics(step))
        writer.close()
        await wait_until(pilot, lambda: app.model.step == 23)
        await pilot.pause(0.2)
        loss = chart(app, "loss").data.lines[0]
        assert list(loss.steps) == list(range(1, 24))
        assert chart(app, "loss").data.checkpoints == [20]
        assert any(
            "Resumed from step 20" in e.message for e in app.dashboard.query_one(EventLog).entries
        )


async def test_narrow_terminal_stacks_the_panels(tmp_path):
    write_run(tmp_path, steps=40)
    app = make_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert app.dashboard.has_class("-narrow")
        charts = list(app.dashboard.query(MetricChart))
        assert len(charts) == 4
        # Stacked: the charts are one above the other, each the full body width.
        xs = {c.region.x for c in charts}
        assert len(xs) == 1
        assert all(c.region.width >= 70 for c in charts)
        text = screen_text(app)
        assert "TRAINING" in text and "step 40/100" in text
        await pilot.resize_terminal(140, 44)
        await pilot.pause()
        assert app.dashboard.has_class("-wide")
        assert len({c.region.x for c in app.dashboard.query(MetricChart)}) == 2


async def test_long_runs_are_downsampled_to_the_plot_width(tmp_path):
    steps = 20_000
    writer = EventWriter(tmp_path)
    writer.write("run_start", 0, time=at(0), model=MODEL, total_steps=steps)
    for step in range(1, steps + 1):
        writer.write("step", step, time=at(step), loss=1.0 / step, **{"rewards/chosen": step % 7})
    writer.close()
    app = make_app(tmp_path)
    started = time.monotonic()
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        loss_chart = chart(app, "loss")
        assert len(loss_chart.data.lines[0].steps) == steps
        plotted = loss_chart.plot._datasets[0]
        plot_width = loss_chart.plot.size.width
        assert 0 < len(plotted.x) <= 2 * plot_width
        assert plotted.x.max() == steps  # the newest point is drawn
        # Redrawing unchanged data is skipped.
        assert loss_chart.redraw() is False
    assert time.monotonic() - started < 20
