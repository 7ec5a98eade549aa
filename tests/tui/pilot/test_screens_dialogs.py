"""Pilot tests of the screens the keys open: help (?), findings (h), answers (a), export (e),
quit (q) on a paused run, and of what the app does on Ctrl-C, x and a new run_start."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import WIDE, commands, make_app, screen_text, wait_until
from mlx_dpo.tui.screens import (
    ExportScreen,
    HealthScreen,
    HelpScreen,
    QuitScreen,
    SamplesScreen,
    SummaryScreen,
)
from rich.text import Text
from textual.widgets import Label
from tui_runs import MODEL, at, step_metrics, write_run

from mlx_dpo.events import EventWriter, truncate_events_after


def write_samples(run_dir: Path) -> None:
    writer = EventWriter(run_dir)
    writer.write("samples", 0, time=at(0), prompts=[
        {"prompt": "Name a primary colour.", "reference": "Green is a colour of grass."},
        {"prompt": "2+2?", "reference": "It is 5."}], seconds=1.5)  # fmt: skip
    writer.write("samples", 40, time=at(40.5), prompts=[
        {"prompt": "Name a primary colour.", "policy": "Red is a primary colour."},
        {"prompt": "2+2?", "policy": "It is 4."}], seconds=2.5)  # fmt: skip
    writer.close()


async def test_help_lists_every_key_and_chart(tmp_path):
    write_run(tmp_path, steps=10)
    app = make_app(tmp_path)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        text = Text.from_markup(str(app.screen.query_one("#help-text").content)).plain
        for binding in app.dashboard.BINDINGS:
            assert f"{binding.key_display or binding.key}  " in text or binding.key in text
        for title in ("Rewards", "Log-probs", "Seconds per step", "Log-ratio π−ref"):
            assert title in text
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is app.dashboard


async def test_findings_screen_lists_findings_and_suggestions(tmp_path):
    write_run(tmp_path, steps=30, health=True)
    app = make_app(tmp_path)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press("h")
        await pilot.pause()
        assert isinstance(app.screen, HealthScreen)
        text = screen_text(app)
        assert "Run health: 1 finding" in text
        assert "drifting far from the reference" in text
        assert "→ lower the learning rate or raise beta" in text


async def test_answers_screen_shows_reference_and_policy_with_changes(tmp_path):
    write_run(tmp_path, steps=40)
    write_samples(tmp_path)
    app = make_app(tmp_path)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press("a")
        await pilot.pause()
        assert isinstance(app.screen, SamplesScreen)
        text = screen_text(app)
        assert "Step 40: eval 1/1 (generated in 2s)" in text
        assert "Green is a colour of grass." in text and "Red is a primary colour." in text
        assert "It is 5." in text and "It is 4." in text


async def test_export_dialog_names_the_step_and_hides_dequantize_for_a_float_base(tmp_path):
    run_dir = write_run(tmp_path / "run", steps=40)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first["quantized_base"] = False
    (run_dir / "metrics.jsonl").write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    app = make_app(run_dir)
    async with app.run_test(size=(160, 40)) as pilot:
        await pilot.press("e")
        await pilot.pause()
        assert isinstance(app.screen, ExportScreen)
        text = screen_text(app)
        assert "Fuses the adapters of step 40" in text
        assert "Dequantize" not in text and not app.screen.query("#dequantize")


async def test_export_dialog_offers_dequantize_for_a_quantized_base(tmp_path):
    run_dir = write_run(tmp_path / "run", steps=40)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first["quantized_base"] = True
    (run_dir / "metrics.jsonl").write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    app = make_app(run_dir)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("e")
        await pilot.pause()
        label = str(app.screen.query_one("#dequantize-label", Label).content)
        assert label == "Dequantize: full-precision weights from the quantized base"
        assert label in screen_text(app).replace("\n", " ") or label[:40] in screen_text(app)


async def test_quitting_a_paused_run_does_not_call_it_running(tmp_path):
    write_run(tmp_path, steps=20, paused=True)
    app = make_app(tmp_path)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press("q")
        await pilot.pause()
        assert isinstance(app.screen, QuitScreen)
        text = screen_text(app)
        assert "The run is paused" in text and "still running" not in text
        assert "Leave it paused (l)" in text


async def test_ctrl_c_on_a_viewed_run_closes_and_leaves_it_going(tmp_path):
    write_run(tmp_path, steps=20)
    app = make_app(tmp_path)  # no trainer handle: `mlx-dpo view`
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press("ctrl+c")
        await pilot.pause()
    assert app.return_value == 0 and commands(tmp_path) == []


async def test_x_saves_a_screenshot_into_the_run_directory(tmp_path):
    write_run(tmp_path, steps=20)
    app = make_app(tmp_path)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press("x")
        await pilot.pause()
        await pilot.press("x")
        await pilot.pause()
    shots = sorted(p.name for p in tmp_path.glob("screenshot-*.svg"))
    assert shots == ["screenshot-step000020-2.svg", "screenshot-step000020.svg"]
    assert "<svg" in (tmp_path / shots[1]).read_text()


async def test_a_new_run_start_closes_the_previous_sessions_summary(tmp_path):
    write_run(tmp_path, steps=30, end="stopped")
    app = make_app(tmp_path)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, SummaryScreen)
        assert "Training stopped" in screen_text(app)
        # --resume: the stream is cut back to the checkpoint and the new session appends.
        truncate_events_after(tmp_path, 20)
        writer = EventWriter(tmp_path)
        writer.write("run_start", 20, time=at(60), model=MODEL, total_steps=100,
                     resumed_from=20)  # fmt: skip
        writer.write("step", 21, time=at(61), **step_metrics(21))
        writer.close()
        await wait_until(pilot, lambda: app.model.step == 21)
        await pilot.pause(0.2)
        assert app.screen is app.dashboard
        text = screen_text(app)
        assert "TRAINING" in text and "Training stopped" not in text


async def test_progress_before_the_first_step_shows_counts_and_eta(tmp_path):
    writer = EventWriter(tmp_path)
    writer.write("run_start", 0, time=at(0), model=MODEL, total_steps=100)
    writer.write("progress", 0, time=at(0), phase="tokenizing", done=0, total=2000, unit="pairs")
    writer.write("progress", 0, time=at(5), phase="tokenizing", done=500, total=2000, unit="pairs")
    writer.close()
    app = make_app(tmp_path, clock=lambda: at(5))
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        text = screen_text(app)
        assert "tokenizing 500/2000 pairs · ETA 30s" in text  # 500 in 10 s, 1500 to go
        assert "25%" in text
