"""Pilot tests of tui/screens/dashboard.py: header, tiles, charts and log drawn from recorded
event streams."""

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
from mlx_dpo.tui.formatting import format_fixed, format_percent
from mlx_dpo.tui.widgets import EventLog, HealthBanner, MetricTile
from tui_runs import MODEL, at, eval_metrics, for_loss, make_round, step_metrics, write_run

from mlx_dpo.events import (
    EventWriter,
    truncate_events_after,
)


def ema(values: list[float], weight: float) -> list[float]:
    """TensorBoard's debiased EMA, written out from its formula (not the dashboard's code)."""
    out, biased = [], 0.0
    for index, value in enumerate(values):
        biased = weight * biased + (1 - weight) * value
        out.append(biased / (1 - weight ** (index + 1)))
    return out


async def test_header_tiles_and_charts_show_the_stream(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_run(tmp_path / "run", steps=40, total_steps=100)
    app = make_app(Path("run"))  # shown as given, so printed commands work from here
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        text = screen_text(app)
        assert f"model {MODEL}  data demo  β 0.1  run run" in text
        assert "TRAINING" in text
        assert "step 40/100" in text and "epoch 0.8/2.0" in text
        # Frozen clock two seconds after step 40: elapsed 90 s + 2 s, ETA 120 s - 2 s.
        assert "elapsed 1m 32s" in text and "ETA 1m 58s" in text
        assert "40%" in text
        assert not app.dashboard.query_one(HealthBanner).display  # no findings, no badge

        # Tiles read like the charts: smoothed by the default EMA 0.9.
        def smoothed(name: str) -> float:
            return ema([step_metrics(s)[name] for s in range(1, 41)], 0.9)[-1]

        last = step_metrics(40)
        assert tile(app, "loss").value_text == format_fixed(smoothed("loss"))
        assert tile(app, "loss").detail_text == f"eval {format_fixed(eval_metrics(40)['loss'])}"
        assert tile(app, "accuracy").value_text == format_percent(smoothed("rewards/accuracies"))
        assert tile(app, "margin").value_text == format_fixed(smoothed("rewards/margins"))
        assert tile(app, "log-ratio").value_text == format_fixed(smoothed("kl"))
        assert tile(app, "log-ratio").border_title == "Log-ratio"
        assert tile(app, "lr").value_text == "5.00e-06"
        assert tile(app, "throughput").value_text == "3.50"
        assert tile(app, "throughput").detail_text == f"{smoothed('tokens_per_second'):.0f} tok/s"
        assert tile(app, "memory").value_text == "1.30 GB"

        rewards = chart(app, "rewards").data
        assert [line.label for line in rewards.lines] == ["chosen", "rejected"]
        chosen = [step_metrics(s)["rewards/chosen"] for s in range(1, 41)]
        assert list(rewards.lines[0].raw) == chosen
        assert list(rewards.lines[0].values) == pytest.approx(ema(chosen, 0.9))
        assert list(rewards.lines[1].raw) == [
            step_metrics(s)["rewards/rejected"] for s in range(1, 41)
        ]
        assert rewards.checkpoints == [20, 40]
        accuracy = chart(app, "accuracy").data
        assert [line.label for line in accuracy.lines] == ["train", "eval"]
        assert list(accuracy.lines[1].steps) == [10, 20, 30, 40]
        loss = chart(app, "loss").data
        assert list(loss.lines[1].values) == [eval_metrics(s)["loss"] for s in (10, 20, 30, 40)]
        margin = chart(app, "margin").data
        assert margin.lines[0].raw[-1] == last["rewards/margins"]

        assert "Rewards" in text and "chosen" in text and "rejected" in text
        assert "Accuracy" in text and "Reward margin" in text


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


async def test_header_shows_the_round_of_train_rounds(tmp_path):
    make_round(write_run(tmp_path / "run", steps=5, total_steps=10), 2, 3)
    app = make_app(tmp_path / "run")
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        assert "round 2/3 · step 5/10" in screen_text(app)
        log = [entry.message for entry in app.dashboard.query_one(EventLog).entries]
        assert log[0] == "Round 2/3 begins"


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
        loss = format_fixed(ema([step_metrics(s)["loss"] for s in range(1, 31)], 0.9)[-1])
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
        assert "⚠ 1 finding — h to list" in text
        assert "drifting far from the reference" in text  # the kind's title
        log_messages = [entry.message for entry in app.dashboard.query_one(EventLog).entries]
        assert any("truncated to max_length" in message for message in log_messages)


async def test_smoothing_is_on_by_default_and_m_cycles_it(tmp_path):
    write_run(tmp_path, steps=40, noisy=True)
    app = make_app(tmp_path)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        data = chart(app, "loss").data
        raw = list(data.lines[0].raw)
        assert data.subtitle == "EMA 0.9"
        assert list(data.lines[0].values) == pytest.approx(ema(raw, 0.9))
        assert "EMA 0.9 (m) · raw faint · ● eval · ▲ checkpoint" in screen_text(app)
        await pilot.press("m")  # 0.99
        await pilot.press("m")  # raw
        await pilot.pause()
        data = chart(app, "loss").data
        assert data.subtitle == "raw" and list(data.lines[0].values) == raw
        assert data.lines[0].raw is None  # nothing faint behind a raw line
        await pilot.press("m")
        await pilot.pause()
        smoothed = chart(app, "loss").data
        assert smoothed.subtitle == "EMA 0.6"
        assert list(smoothed.lines[0].values) == pytest.approx(ema(raw, 0.6))
        # Eval points are never smoothed.
        assert list(smoothed.lines[1].values) == [eval_metrics(s)["loss"] for s in (10, 20, 30, 40)]
        assert "EMA 0.6 (m)" in screen_text(app)


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
            "Run resumed from step 20" in e.message
            for e in app.dashboard.query_one(EventLog).entries
        )


async def test_narrow_terminal_shows_every_part_without_scrolling(tmp_path):
    write_run(tmp_path, steps=40, health=True)
    app = make_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert app.dashboard.has_class("-narrow")
        charts = app.dashboard.visible_charts()
        assert len(charts) == 4
        # A 2 x 2 grid inside the screen, each chart tall enough for a plot.
        assert len({c.region.x for c in charts}) == 2 and len({c.region.y for c in charts}) == 2
        assert all(c.region.bottom <= 22 and c.region.height >= 8 for c in charts)
        text = screen_text(app)
        lines = text.splitlines()
        assert "TRAINING" in text and "step 40/100" in text
        assert "⚠ 1 finding — h to list" in text
        assert "Loss" in lines[4] and "Log-ratio" in lines[4]  # one-line tiles
        assert "1 Preferences  2  3  4  │ EMA 0.9" in lines[-2]  # the key line
        # The footer fits: its last key is whole (the footer recomposes as the keys settle).
        await wait_until(
            pilot, lambda: screen_text(app).splitlines()[-1].rstrip().endswith("q Quit")
        )
        assert "? Help" in screen_text(app).splitlines()[-1]
        # The log is one key away.
        assert not app.dashboard.query_one(EventLog).region.width
        await pilot.press("4")
        await pilot.pause()
        log = app.dashboard.query_one(EventLog)
        assert log.region.width >= 70 and log.region.height >= 12
        assert "Checkpoint saved: checkpoints/0000040" in screen_text(app)
        for key in "23":
            await pilot.press(key)
            await pilot.pause()
            shown = app.dashboard.visible_charts()
            assert all(c.region.width and c.region.bottom <= 22 for c in shown)
        await pilot.resize_terminal(140, 44)
        await pilot.pause()
        assert app.dashboard.has_class("-wide")


async def test_titles_and_legends_are_whole_at_100_by_30(tmp_path):
    write_run(tmp_path, steps=40, health=True)
    app = make_app(tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        for key in "123":
            await pilot.press(key)
            await pilot.pause(0.2)
            text = screen_text(app)
            for chart_widget in app.dashboard.visible_charts():
                assert chart_widget.chart_title in text
                for line in chart_widget.data.lines:
                    assert f" {line.label}" in text
            for tile_widget in app.dashboard.query(MetricTile):
                if tile_widget.region.width:
                    assert tile_widget.title in text


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
        # Layers: faint raw lines, smoothed lines, eval lines and markers.
        points = loss_chart.plot.paint_layers[1][0][0][0]
        plot_width = loss_chart.plot.size.width
        assert 0 < len(points) <= 4 * plot_width  # braille: two dots a column
        assert max(x for x, _ in points) == steps  # the newest point is drawn
        # Redrawing unchanged data is skipped.
        assert loss_chart.redraw() is False
    assert time.monotonic() - started < 20


@pytest.mark.parametrize(
    "loss, accuracy, log_ratio, detail, series",
    [
        ("kto", "Right side", "KL point", "KTO's z", "kl"),
        ("orpo", "Accuracy", "Chosen NLL", "no reference", "nll_loss"),
        ("simpo", "Accuracy", "Log-ratio", "no reference", None),
    ],
)
async def test_the_loss_decides_what_replaces_pair_accuracy_and_kl(
    tmp_path, loss, accuracy, log_ratio, detail, series
):
    """kto has no pairs (its accuracy is the share on the right side of its reference
    point); a reference-free loss has no kl (orpo shows its chosen NLL there)."""
    write_run(tmp_path / "run", steps=40, loss=loss)
    app = make_app(tmp_path / "run")
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        assert tile(app, "accuracy").border_title == accuracy
        assert chart(app, "accuracy").chart_title == accuracy
        assert tile(app, "log-ratio").border_title == log_ratio
        assert tile(app, "log-ratio").detail_text == detail
        if series is None:
            assert tile(app, "log-ratio").value_text == "–"
        else:
            values = [for_loss(step_metrics(s), loss)[series] for s in range(1, 41)]
            expected = format_fixed(ema(values, 0.9)[-1])
            assert tile(app, "log-ratio").value_text == expected
        await pilot.press("2")
        await pilot.pause()
        log_chart = chart(app, "log-ratio")
        assert log_chart.chart_title == {"kto": "KTO reference point z"}.get(
            loss, "Chosen NLL (orpo)" if loss == "orpo" else "Log-ratio π−ref"
        )
