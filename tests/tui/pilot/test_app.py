"""Pilot tests of tui/app.py: the run's keys and the control channel, quitting, the export process, run_dashboard (recorded event streams, no trainer process)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import (
    WIDE,
    commands,
    footer_keys,
    make_app,
    screen_text,
    wait_until,
)
from mlx_dpo.tui.app import DashboardApp, build_export_command, run_dashboard
from mlx_dpo.tui.screens import ConfirmStopScreen, ExportScreen, QuitScreen, SummaryScreen
from mlx_dpo.tui.widgets import EventLog
from rich.text import Text
from textual.widgets import Input, Label, Switch
from tui_runs import at, write_run

from mlx_dpo.events import (
    METRICS_FILE,
    EventWriter,
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
            "h": True,
            "question_mark": True,
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


async def test_a_round_before_the_last_closes_once_finished(tmp_path):
    """train --rounds: the dashboard of a round that is not the last closes by itself when
    the round has finished (the next round's pairs follow); a stopped round stays."""
    write_run(tmp_path / "stopped", steps=20)
    app = make_app(tmp_path / "stopped", close_when_finished=True)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        writer = EventWriter(tmp_path / "stopped")
        writer.write("run_end", 20, status="stopped", adapter_path="x", elapsed=50.0)
        writer.close()
        await wait_until(pilot, lambda: isinstance(app.screen, SummaryScreen))
        assert app.is_running
        await pilot.press("q")
    write_run(tmp_path / "finishing", steps=20)
    app = make_app(tmp_path / "finishing", close_when_finished=True)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        assert app.is_running
        writer = EventWriter(tmp_path / "finishing")
        writer.write("run_end", 20, status="completed", adapter_path="x", elapsed=50.0)
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


WRONG_VALUES = ["x", {"a": "b"}, ["x", 1], 1e308, 2**70, True, -1]


def replace_fields(run_dir: Path, value_of) -> None:
    """Every field of every event but event, step and time replaced by value_of(n), n
    counting the fields."""
    lines, n = [], 0
    for line in (run_dir / METRICS_FILE).read_text().splitlines():
        event = json.loads(line)
        for key in event:
            if key not in ("event", "step", "time"):
                event[key], n = value_of(n), n + 1
        lines.append(json.dumps(event))
    (run_dir / METRICS_FILE).write_text("\n".join(lines) + "\n")


async def show_every_screen(app) -> None:
    async with app.run_test(size=WIDE) as pilot:
        await wait_until(pilot, lambda: app.model.run_end is not None)
        for key in ("escape", "h", "escape", "a", "escape", "2", "3", "4", "1"):
            await pilot.press(key)
            await pilot.pause()
    assert app._exception is None


async def test_well_formed_events_with_wrong_types_do_not_crash_the_dashboard(tmp_path):
    """Each field of each event (event, step and time kept) replaced by a value of the wrong
    type or size, in turn: the dashboard crashed (an eval dict that is a number, a string
    where a metric belongs, a finite number too large for the chart's axis). Now such a
    field reads as absent and every screen draws. (The slow test below: every value in
    every field.)"""
    write_run(tmp_path, steps=12, end="completed", health=True)
    replace_fields(tmp_path, lambda n: WRONG_VALUES[n % len(WRONG_VALUES)])
    await show_every_screen(make_app(tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("value", WRONG_VALUES, ids=repr)
async def test_one_wrong_value_in_every_field_does_not_crash_the_dashboard(tmp_path, value):
    write_run(tmp_path, steps=12, end="completed", health=True)
    replace_fields(tmp_path, lambda n: value)
    await show_every_screen(make_app(tmp_path))
