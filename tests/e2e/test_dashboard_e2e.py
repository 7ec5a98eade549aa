"""End to end: a real tiny training run with the dashboard on a pseudo-terminal (tmux),
paused, checkpointed and stopped by key presses, the run directory showing each of them; and
a dashboard killed outright while the run goes on to its end."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlx_dpo.events import read_events, read_status

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=False).stdout


def wait_until(condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def events_of(run_dir: Path, name: str) -> list[dict]:
    return [e for e in read_events(run_dir) if e["event"] == name]


def start_in_tmux(session: str, model, data, run_dir: Path, iters: int, save_every: int) -> None:
    """`mlx-dpo train` on a terminal without CI set, so the dashboard opens."""
    command = [
        sys.executable, "-m", "mlx_dpo.cli", "train", "--model", str(model), "--data", str(data),
        "--adapter-path", str(run_dir), "--iters", str(iters), "--learning-rate", "1e-4",
        "--eval-every", "0", "--save-every", str(save_every), "--lora-rank", "4",
    ]  # fmt: skip
    shell = f"env -u CI TERM=xterm-256color {shlex.join(command)}; sleep 60"
    tmux("new-session", "-d", "-s", session, "-x", "130", "-y", "45", shell)


def test_keys_pause_checkpoint_and_stop_a_real_run(llama_chatml, preference_data, tmp_path):
    run_dir = tmp_path / "run"
    session = f"mlx-dpo-e2e-{tmp_path.name}"
    start_in_tmux(session, llama_chatml, preference_data, run_dir, iters=100000, save_every=0)
    try:
        wait_until(lambda: read_status(run_dir).get("state") == "training", "training")
        wait_until(lambda: "Pause" in tmux("capture-pane", "-t", session, "-p"), "the dashboard")
        wait_until(lambda: len(events_of(run_dir, "step")) >= 2, "two steps")

        tmux("send-keys", "-t", session, "p")
        wait_until(lambda: read_status(run_dir).get("state") == "paused", "pause")
        paused_at = len(events_of(run_dir, "step"))
        time.sleep(1.5)
        assert len(events_of(run_dir, "step")) == paused_at  # no step while paused

        tmux("send-keys", "-t", session, "c")
        wait_until(lambda: events_of(run_dir, "checkpoint"), "a checkpoint")
        assert (run_dir / "checkpoints").is_dir()

        tmux("send-keys", "-t", session, "r")
        wait_until(lambda: read_status(run_dir).get("state") == "training", "resume")
        wait_until(lambda: len(events_of(run_dir, "step")) > paused_at, "steps after resume")

        tmux("send-keys", "-t", session, "s")
        wait_until(lambda: "Stop (y)" in tmux("capture-pane", "-t", session, "-p"), "confirm")
        tmux("send-keys", "-t", session, "y")
        wait_until(lambda: events_of(run_dir, "run_end"), "the run to end")
        end = events_of(run_dir, "run_end")[-1]
        assert end["status"] == "stopped"
        states = [e["state"] for e in events_of(run_dir, "state")]
        assert "paused" in states and "resumed" in states and "stopping" in states
        assert (run_dir / "adapters.safetensors").exists()
        # The dashboard stays up after the run ends and says so.
        wait_until(
            lambda: "STOPPED" in tmux("capture-pane", "-t", session, "-p").upper(), "final state"
        )
    finally:
        tmux("kill-session", "-t", session)


def test_killing_the_dashboard_leaves_training_running(llama_chatml, preference_data, tmp_path):
    run_dir = tmp_path / "run"
    session = f"mlx-dpo-e2e-kill-{tmp_path.name}"
    start_in_tmux(session, llama_chatml, preference_data, run_dir, iters=60, save_every=20)
    try:
        wait_until(lambda: "Pause" in tmux("capture-pane", "-t", session, "-p"), "the dashboard")
        wait_until(lambda: len(events_of(run_dir, "step")) >= 2, "two steps")
        trainer = read_status(run_dir)["pid"]
        dashboard = int(Path(f"/proc/{trainer}/stat").read_text().rsplit(")", 1)[1].split()[1])
        assert "mlx_dpo.cli" in Path(f"/proc/{dashboard}/cmdline").read_text()
        os.kill(dashboard, signal.SIGKILL)
        wait_until(lambda: not Path(f"/proc/{dashboard}").exists(), "the dashboard to die")
        wait_until(lambda: events_of(run_dir, "run_end"), "the run to end", timeout=240)
        end = events_of(run_dir, "run_end")[-1]
        assert end["status"] == "completed" and end["step"] == 60
        assert [e["step"] for e in events_of(run_dir, "step")] == list(range(1, 61))
        assert (run_dir / "adapters.safetensors").exists()
    finally:
        tmux("kill-session", "-t", session)


LAUNCHER = Path(__file__).parent.parent / "tui" / "launch_dashboard.py"


def start_fake_in_tmux(session: str, run_dir: Path, *trainer_args: str) -> None:
    """tests/tui/launch_dashboard.py: the dashboard over fake_trainer.py, as `mlx-dpo train`
    runs it; the pane stays open after it exits so its last lines can be read."""
    command = [sys.executable, str(LAUNCHER), str(run_dir), *trainer_args]
    shell = f"env -u CI TERM=xterm-256color {shlex.join(command)}; echo EXIT=$?; sleep 60"
    tmux("new-session", "-d", "-s", session, "-x", "100", "-y", "30", shell)


def pane(session: str) -> str:
    return tmux("capture-pane", "-t", session, "-p", "-J")


def test_ctrl_c_stops_and_saves_then_resume_shows_the_new_session(tmp_path):
    """Ctrl-C stops the run and saves (as without the dashboard), the close message names the
    run, its state and the view/resume commands; --resume then shows the live session, not
    the previous one's "stopped" summary."""
    run_dir = tmp_path / "run"
    session = f"mlx-dpo-e2e-life-{tmp_path.name}"
    start_fake_in_tmux(session, run_dir, "--steps", "100000", "--step-time", "0.05")
    try:
        wait_until(lambda: "Pause" in pane(session), "the dashboard", timeout=60)
        wait_until(lambda: len(events_of(run_dir, "step")) >= 5, "five steps", timeout=60)
        tmux("send-keys", "-t", session, "C-c")
        wait_until(lambda: "EXIT=" in pane(session), "the dashboard to close", timeout=60)
        end = events_of(run_dir, "run_end")[-1]
        assert end["status"] == "stopped"  # Ctrl-C stopped the run, with a save
        stopped_at = end["step"]
        text = pane(session)
        assert f"Run {run_dir}: stopped at step {stopped_at}/100000" in text
        assert f"mlx-dpo view {run_dir}" in text
        assert f"mlx-dpo train --resume --adapter-path {run_dir}" in text
        assert "EXIT=0" in text
    finally:
        tmux("kill-session", "-t", session)

    session = f"mlx-dpo-e2e-resume-{tmp_path.name}"
    start_fake_in_tmux(session, run_dir, "--steps", "100000", "--step-time", "0.05", "--resume")
    try:
        seen: list[str] = []

        def resumed_and_training() -> bool:
            seen.append(pane(session))
            steps = [e["step"] for e in events_of(run_dir, "step")]
            return bool(steps) and steps[-1] > stopped_at + 3 and "TRAINING" in seen[-1]

        wait_until(resumed_and_training, "the resumed session to train", timeout=60)
        assert not any("Training stopped" in screen or "Run summary" in screen for screen in seen)
        tmux("send-keys", "-t", session, "q")
        wait_until(lambda: "Leave it running" in pane(session), "the quit dialog")
        tmux("send-keys", "-t", session, "l")
        wait_until(lambda: "EXIT=" in pane(session), "the dashboard to close", timeout=60)
        text = pane(session)
        assert f"Run {run_dir}: training in the background" in text
        assert f"mlx-dpo view {run_dir}" in text
        pid = read_status(run_dir)["pid"]
        assert Path(f"/proc/{pid}").exists()  # left running
        os.kill(pid, signal.SIGKILL)
    finally:
        tmux("kill-session", "-t", session)
