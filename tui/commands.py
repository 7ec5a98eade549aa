"""The shell commands the dashboard tells the user, and what it prints when it closes.

Plain Python. Paths are shell-quoted and printed as given (a relative run directory stays
relative), so each command can be copied and run from where the dashboard was started.
"""

from __future__ import annotations

import shlex

from .formatting import state_label
from .run_model import RunModel


def view_command(run_dir: str) -> str:
    return f"mlx-dpo view {shlex.quote(run_dir)}"


def resume_command(run_dir: str) -> str:
    return f"mlx-dpo train --resume --adapter-path {shlex.quote(run_dir)}"


def chat_command(model: str, run_dir: str) -> str:
    return f"mlx_lm.chat --model {shlex.quote(model)} --adapter-path {shlex.quote(run_dir)}"


def can_resume(model: RunModel) -> bool:
    """A run that ended before its last step (stopped, failed, killed) goes on with --resume."""
    return model.state in ("stopped", "failed")


def closing_message(model: RunModel, run_dir: str, still_running: bool) -> list[str]:
    """What run_dashboard prints after the dashboard closes: the run, its state, and the
    exact commands that show it again or carry it on."""
    steps = f"step {model.step}/{model.total_steps}" if model.total_steps else f"step {model.step}"
    if still_running:
        pid = f", pid {model.pid}" if model.pid else ""
        state = f"{state_label(model.state)} in the background ({steps}{pid})"
    else:
        state = f"{state_label(model.state)} at {steps}"
    lines = [f"Run {run_dir}: {state}", f"  watch it:   {view_command(run_dir)}"]
    if model.state == "paused" and still_running:
        lines.append("  resume it:  press r in the dashboard (the trainer waits, paused)")
    if can_resume(model):
        lines.append(f"  resume it:  {resume_command(run_dir)}")
    if model.state in ("finished", "stopped") and model.model_name:
        lines.append(f"  chat:       {chat_command(model.model_name, run_dir)}")
    return lines
