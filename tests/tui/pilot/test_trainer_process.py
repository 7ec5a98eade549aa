"""Pilot tests of the dashboard driving a trainer process: fake_trainer.py speaks the
run-directory protocol (events, status, control commands) the way the real trainer does,
without MLX."""

from __future__ import annotations

import json
import os
import signal

import pytest
from conftest import screen_text, wait_until
from mlx_dpo.tui.app import DashboardApp, run_dashboard
from mlx_dpo.tui.screens import SummaryScreen
from textual.widgets._footer import FooterKey

from mlx_dpo.events import CONTROL_FILE, read_events

SIZE = (120, 36)


def make_app(run_dir, trainer=None) -> DashboardApp:
    return DashboardApp(run_dir, trainer=trainer, poll_interval=0.05, redraw_interval=0.25)


def sent_commands(run_dir) -> list[str]:
    path = run_dir / CONTROL_FILE
    return [json.loads(line)["command"] for line in path.read_text().splitlines()]


def enabled_keys(app) -> set[str]:
    return {key.key for key in app.screen.query(FooterKey) if not key.has_class("-disabled")}


@pytest.mark.slow  # a real trainer process: 7-12 s each
async def test_pause_checkpoint_resume_and_stop_a_running_trainer(tmp_path, start_fake_trainer):
    run_dir = tmp_path / "run"
    trainer = start_fake_trainer(run_dir, "--steps", "100000", "--step-time", "0.1")
    app = make_app(run_dir, trainer)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.model.state == "training" and app.model.step >= 2)
        await pilot.press("p")
        await wait_until(pilot, lambda: app.model.state == "paused")
        paused_at = app.model.step
        await pilot.pause(0.3)
        assert app.model.step == paused_at  # really paused
        assert {"r", "c", "s"} <= enabled_keys(app) and "p" not in enabled_keys(app)

        await pilot.press("c")
        await wait_until(pilot, lambda: len(app.model.checkpoints) == 1)
        assert app.model.checkpoints[0][0] == paused_at

        await pilot.press("r")
        await wait_until(
            pilot, lambda: app.model.state == "training" and app.model.step > paused_at
        )

        await pilot.press("s")
        await pilot.pause()
        await pilot.press("y")
        await pilot.pause()
        assert "s" not in enabled_keys(app)  # greyed out while the stop is pending
        await wait_until(pilot, lambda: isinstance(app.screen, SummaryScreen), timeout=15)
        assert app.model.state == "stopped"
        assert trainer.wait(timeout=10) == 0
        assert "Training stopped" in screen_text(app)
    assert sent_commands(run_dir) == ["pause", "checkpoint", "resume", "stop"]
    assert read_events(run_dir)[-1]["status"] == "stopped"


@pytest.mark.slow  # a real trainer process: 7-12 s each
async def test_a_trainer_killed_with_sigkill_shows_the_failure(tmp_path, start_fake_trainer):
    run_dir = tmp_path / "run"
    trainer = start_fake_trainer(run_dir, "--steps", "100000", "--step-time", "0.1")
    app = make_app(run_dir, trainer)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.model.step >= 3)
        await pilot.press("c")
        await wait_until(pilot, lambda: app.model.checkpoints)
        os.kill(trainer.pid, signal.SIGKILL)
        await wait_until(pilot, lambda: app.model.state == "failed")
        await wait_until(pilot, lambda: isinstance(app.screen, SummaryScreen))
        assert "SIGKILL" in app.model.error and "out of memory" in app.model.error
        assert app.log_tail and app.log_tail[-1].startswith("step ")  # from train.log
        assert app.model.last_checkpoint == app.model.checkpoints[0][1]
        text = screen_text(app)
        assert "Training failed" in text and "SIGKILL" in text
        await pilot.press("q")  # the run is over: no question
    assert app.return_value == 1


@pytest.mark.slow
async def test_a_dead_trainer_is_found_from_the_status_pid(tmp_path, start_fake_trainer):
    """`mlx-dpo view` has no process handle: the pid in status.json tells."""
    run_dir = tmp_path / "run"
    trainer = start_fake_trainer(run_dir, "--steps", "100000", "--step-time", "0.1")
    app = make_app(run_dir)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.model.step >= 2)
        assert app.model.state == "training"
        os.kill(trainer.pid, signal.SIGKILL)
        trainer.wait(timeout=10)  # reaped, as it would be by its real parent
        await wait_until(pilot, lambda: app.model.state == "failed")
        assert f"pid {trainer.pid}" in app.model.error


@pytest.mark.slow
async def test_a_trainer_that_finishes_is_not_a_failure(tmp_path, start_fake_trainer):
    run_dir = tmp_path / "run"
    trainer = start_fake_trainer(run_dir, "--steps", "5", "--step-time", "0.01")
    app = make_app(run_dir, trainer)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, SummaryScreen))
        await wait_until(pilot, lambda: app.trainer_exited)
        assert app.model.state == "finished" and app.model.step == 5
        assert app.model.error is None
        await pilot.press("q")
    assert app.return_value == 0


def _headless(monkeypatch, auto_pilot) -> None:
    original_run = DashboardApp.run

    def headless_run(self, **kwargs):
        self.poll_interval = 0.05
        return original_run(self, headless=True, size=SIZE, auto_pilot=auto_pilot)

    monkeypatch.setattr(DashboardApp, "run", headless_run)


@pytest.mark.slow  # a real trainer process: 7-12 s each
def test_quitting_with_stop_waits_for_the_trainer(tmp_path, start_fake_trainer, monkeypatch):
    run_dir = tmp_path / "run"
    trainer = start_fake_trainer(run_dir, "--steps", "100000", "--step-time", "0.1")

    async def quit_and_stop(pilot):
        await wait_until(pilot, lambda: pilot.app.model.step >= 2)
        await pilot.press("q")
        await pilot.pause()
        assert "Leave it running" in screen_text(pilot.app)
        await pilot.press("s")
        # The app now waits for the trainer to save and exit, then closes by itself.
        assert pilot.app.stopping_to_quit

    _headless(monkeypatch, quit_and_stop)
    assert run_dashboard(run_dir, trainer) == 0
    # run_dashboard returned only after the trainer saved and exited.
    assert trainer.poll() == 0
    assert read_events(run_dir)[-1]["status"] == "stopped"
    assert sent_commands(run_dir) == ["stop"]


@pytest.mark.slow
def test_quitting_can_leave_the_trainer_running(tmp_path, start_fake_trainer, monkeypatch):
    run_dir = tmp_path / "run"
    trainer = start_fake_trainer(run_dir, "--steps", "100000", "--step-time", "0.1")

    async def quit_and_leave(pilot):
        await wait_until(pilot, lambda: pilot.app.model.step >= 2)
        await pilot.press("q")
        await pilot.pause()
        await pilot.press("l")

    _headless(monkeypatch, quit_and_leave)
    assert run_dashboard(run_dir, trainer) == 0
    assert trainer.poll() is None  # still training in the background
    assert not (run_dir / CONTROL_FILE).exists()
