"""Unit tests of tui/commands.py: the commands the dashboard prints, and its closing lines."""

from __future__ import annotations

from mlx_dpo.tui.commands import closing_message, resume_command, view_command
from mlx_dpo.tui.run_model import RunModel
from tui_runs import MODEL, write_run

from mlx_dpo.events import read_events


def model_of(run_dir) -> RunModel:
    model = RunModel()
    model.apply_all(read_events(run_dir))
    return model


def test_commands_are_shell_quoted_and_keep_the_path_as_given():
    assert view_command("runs/a b") == "mlx-dpo view 'runs/a b'"
    assert resume_command("runs/a") == "mlx-dpo train --resume --adapter-path runs/a"


def test_closing_message_of_a_stopped_run_has_view_and_resume(tmp_path):
    model = model_of(write_run(tmp_path, steps=30, end="stopped"))
    lines = closing_message(model, "runs/x", still_running=False)
    assert lines[0] == "Run runs/x: stopped at step 30/100"
    assert "  watch it:   mlx-dpo view runs/x" in lines
    assert "  resume it:  mlx-dpo train --resume --adapter-path runs/x" in lines
    assert f"  chat:       mlx_lm.chat --model {MODEL} --adapter-path runs/x" in lines


def test_closing_message_of_a_run_left_going(tmp_path):
    model = model_of(write_run(tmp_path, steps=30, pid=4321))
    model.merge_status({"pid": 4321, "state": "training"})
    lines = closing_message(model, "runs/x", still_running=True)
    assert lines[0] == "Run runs/x: training in the background (step 30/100, pid 4321)"
    assert not any("resume it" in line for line in lines)  # it is still going
    model.apply({"event": "state", "step": 30, "state": "paused"})
    lines = closing_message(model, "runs/x", still_running=True)
    assert lines[0].startswith("Run runs/x: paused in the background")
    assert any("press r" in line for line in lines)


def test_closing_message_of_a_failed_run_offers_resume(tmp_path):
    model = model_of(write_run(tmp_path, steps=30, end="failed"))
    lines = closing_message(model, "r", still_running=False)
    assert lines[0] == "Run r: failed at step 30/100"
    assert "  resume it:  mlx-dpo train --resume --adapter-path r" in lines
