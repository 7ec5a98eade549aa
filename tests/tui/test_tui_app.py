"""Pilot tests of the dashboard on recorded event streams (no trainer process)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from conftest import FROZEN_CLOCK, screen_text, wait_until
from mlx_dpo.tui.app import DashboardApp, build_export_command, run_dashboard
from mlx_dpo.tui.formatting import format_number, format_percent
from mlx_dpo.tui.screens import ConfirmStopScreen, ExportScreen, QuitScreen, SummaryScreen
from mlx_dpo.tui.widgets import EventLog, HealthBanner, MetricChart, MetricTile
from rich.text import Text
from textual.widgets import Input, Label, Static, Switch
from textual.widgets._footer import FooterKey
from tui_runs import MODEL, at, eval_metrics, step_metrics, write_run

from mlx_dpo.events import (
    CONTROL_FILE,
    LOG_FILE,
    EventWriter,
    truncate_events_after,
)

WIDE = (110, 32)


def make_app(run_dir: Path, **kwargs) -> DashboardApp:
    kwargs.setdefault("clock", lambda: FROZEN_CLOCK)
    return DashboardApp(run_dir, poll_interval=0.05, redraw_interval=0.1, **kwargs)


def commands(run_dir: Path) -> list[str]:
    path = run_dir / CONTROL_FILE
    if not path.exists():
        return []
    return [json.loads(line)["command"] for line in path.read_text().splitlines()]


def tile(app: DashboardApp, name: str) -> MetricTile:
    return app.dashboard.query_one(f"#tile-{name}", MetricTile)


def chart(app: DashboardApp, name: str) -> MetricChart:
    return app.dashboard.query_one(f"#chart-{name}", MetricChart)


def summary_text(app: DashboardApp) -> str:
    """The summary's text unwrapped (long commands wrap on screen)."""
    content = app.screen.query_one("#summary-text", Static).content
    return Text.from_markup(str(content)).plain


def footer_keys(app: DashboardApp) -> dict[str, bool]:
    """Footer key -> whether it is enabled (greyed-out keys carry -disabled)."""
    return {key.key: not key.has_class("-disabled") for key in app.screen.query(FooterKey)}


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


async def test_keys_write_control_commands(tmp_path):
    write_run(tmp_path, steps=40)
    app = make_app(tmp_path)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        assert footer_keys(app) == {
            "p": True,
            "r": False,
            "c": True,
            "s": True,
            "e": True,
            "m": True,
            "q": True,
        }
        await pilot.press("p")
        await pilot.pause()
        assert commands(tmp_path) == ["pause"]
        assert "pause requested" in screen_text(app)
        await pilot.press("p")  # greyed out while the pause is pending: nothing more sent
        await pilot.pause()
        assert commands(tmp_path) == ["pause"]
        assert footer_keys(app)["p"] is False

        # The trainer answers.
        writer = EventWriter(tmp_path)
        writer.write("state", 40, time=at(40.5), state="paused")
        await wait_until(pilot, lambda: app.model.state == "paused")
        await pilot.pause()
        assert footer_keys(app)["r"] is True and footer_keys(app)["p"] is False
        assert "PAUSED" in screen_text(app)
        await pilot.press("r")
        await pilot.press("c")
        await pilot.pause()
        assert commands(tmp_path) == ["pause", "resume", "checkpoint"]

        # Stop asks first; "n" keeps training (the trainer test confirms with "y").
        await pilot.press("s")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmStopScreen)
        await pilot.press("n")
        await pilot.pause()
        assert app.screen is app.dashboard
        assert commands(tmp_path) == ["pause", "resume", "checkpoint"]
        writer.close()


async def test_finished_run_shows_the_summary_and_greys_out_run_keys(tmp_path):
    write_run(tmp_path, steps=60, end="completed")
    app = make_app(tmp_path)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, SummaryScreen)
        text = summary_text(app)
        assert "Training finished" in screen_text(app)
        assert f"mlx_lm.chat --model {MODEL} --adapter-path {tmp_path}" in text
        final = eval_metrics(60)
        assert f"loss {format_number(final['loss'])}" in text
        assert "Best eval" in text and "at step 50" in text
        assert "checkpoints/0000060" in text

        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is app.dashboard
        keys = footer_keys(app)
        assert keys["p"] is False and keys["r"] is False and keys["c"] is False
        assert keys["s"] is False
        assert keys["e"] is True and keys["u"] is True
        await pilot.press("p", "c", "s")
        assert commands(tmp_path) == []

        await pilot.press("u")
        await pilot.pause()
        assert isinstance(app.screen, SummaryScreen)
        await pilot.press("q")
        await pilot.pause()
    assert app.return_value == 0


async def test_failed_run_shows_error_log_tail_and_exits_1(tmp_path):
    write_run(tmp_path, steps=30, end="failed")
    (tmp_path / LOG_FILE).write_text("step 30 loss nan\nRuntimeError: NaN loss at step 30\n")
    app = make_app(tmp_path)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, SummaryScreen)
        text = summary_text(app)
        assert "Training failed" in screen_text(app)
        assert "RuntimeError: NaN loss at step 30" in text
        assert "step 30 loss nan" in text  # from train.log
        assert "checkpoints/0000020" in text
        await pilot.press("q")
    assert app.return_value == 1


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


EXPORT_SCRIPT = """
import sys, time
save, dequantize, code = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.stdout.write("Loading model\\n"); sys.stdout.flush()
sys.stdout.write("fusing 50%\\rfusing 100%\\n"); sys.stdout.flush()
print("dequantize=" + dequantize)
print("Saved to " + save if code == 0 else "Error: out of disk space")
sys.exit(code)
"""


def fake_export(code: int):
    def command(run_dir: Path, save_path: Path, dequantize: bool) -> list[str]:
        return [sys.executable, "-c", EXPORT_SCRIPT, str(save_path), str(dequantize), str(code)]

    return command


async def test_export_runs_in_its_own_process_and_reports_success(tmp_path):
    run_dir = tmp_path / "run"
    write_run(run_dir, steps=20, end="completed")
    app = make_app(run_dir, export_command=fake_export(0))
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        await pilot.press("e")  # from the summary screen
        await pilot.pause()
        assert isinstance(app.screen, ExportScreen)
        assert app.screen.query_one(Input).value == str(tmp_path / "run-fused")
        app.screen.query_one(Input).value = str(tmp_path / "fused")
        app.screen.query_one(Switch).value = True
        await pilot.press("enter")
        await wait_until(
            pilot, lambda: not app.export_running and app.export_note.startswith("Exported")
        )
        messages = [entry.message for entry in app.dashboard.query_one(EventLog).entries]
        assert "export: fusing 50%" in messages and "export: fusing 100%" in messages
        assert "export: dequantize=True" in messages
        assert f"Exported the fused model to {tmp_path / 'fused'}" in messages
        assert isinstance(app.screen, SummaryScreen)
        assert "Exported the fused model" in screen_text(app)


async def test_export_refuses_a_used_folder_and_reports_a_failure(tmp_path):
    write_run(tmp_path / "run", steps=20)  # still training: export works on the last save
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "model.safetensors").write_bytes(b"x")
    app = make_app(tmp_path / "run", export_command=fake_export(2))
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        await pilot.press("e")
        await pilot.pause()
        app.screen.query_one(Input).value = str(taken)
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ExportScreen)  # refused: the dialog stays
        error = app.screen.query_one("#export-error", Label).content
        assert "already exists and is not empty" in str(error)
        assert not app.export_running

        app.screen.query_one(Input).value = str(tmp_path / "out")
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.export_note.startswith("Export failed"))
        assert app.export_note == "Export failed (exit code 2): Error: out of disk space"
        assert "Export failed (exit code 2)" in screen_text(app)
        assert app.action_available("export")  # can try again


def test_export_command_is_the_cli():
    command = build_export_command(Path("runs/a"), Path("out"), True)
    assert command == [
        sys.executable,
        "-m",
        "mlx_dpo.cli",
        "export",
        "--adapter-path",
        "runs/a",
        "--save-path",
        "out",
        "--dequantize",
    ]
    assert "--dequantize" not in build_export_command(Path("a"), Path("b"), False)


async def test_quit_while_training_asks_and_can_leave_it_running(tmp_path):
    write_run(tmp_path, steps=20)
    app = make_app(tmp_path)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        await pilot.press("ctrl+q")  # Textual's quit key asks the same question
        await pilot.pause()
        assert isinstance(app.screen, QuitScreen)
        text = Text.from_markup(str(app.screen.query_one(".dialog-text", Label).content)).plain
        assert f"mlx-dpo view {tmp_path}" in text
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is app.dashboard
        await pilot.press("q")
        await pilot.pause()
        await pilot.press("l")
        await pilot.pause()
    assert app.return_value == 0
    assert commands(tmp_path) == []


async def test_quit_and_stop_sends_stop_and_waits_for_the_end(tmp_path):
    write_run(tmp_path, steps=20)
    app = make_app(tmp_path)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        await pilot.press("q")
        await pilot.pause()
        await pilot.press("s")
        await pilot.pause()
        assert commands(tmp_path) == ["stop"]
        assert app.is_running
        assert "dashboard closes when the trainer has saved" in screen_text(app)
        writer = EventWriter(tmp_path)
        writer.write("state", 20, state="stopping")
        writer.write("run_end", 20, status="stopped", adapter_path=str(tmp_path), elapsed=50.0)
        writer.close()
        await wait_until(pilot, lambda: not app.is_running)
    assert app.return_value == 0


async def test_empty_run_directory_waits_and_quits_without_asking(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        assert "STARTING" in screen_text(app)
        await pilot.press("q")
        await pilot.pause()
    assert app.return_value == 0


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


def test_run_dashboard_returns_1_after_a_failed_run(tmp_path, monkeypatch):
    """The CLI's entry point (finished runs return 0: see the tests on app.return_value)."""
    original_run = DashboardApp.run

    async def quit_at_once(pilot):
        await pilot.pause()
        await pilot.press("q")

    def headless_run(self, **kwargs):
        return original_run(self, headless=True, size=WIDE, auto_pilot=quit_at_once)

    monkeypatch.setattr(DashboardApp, "run", headless_run)
    write_run(tmp_path / "bad", steps=10, end="failed")
    assert run_dashboard(tmp_path / "bad") == 1
