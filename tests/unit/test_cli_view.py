"""`mlx-dpo view` (mlx_dpo/cli/view.py): a run directory opens the dashboard on it; anything
else exits 2 saying why."""

from __future__ import annotations

import mlx_dpo.tui.app as tui_app

from mlx_dpo.cli import main
from mlx_dpo.events import METRICS_FILE


def test_a_folder_without_events_is_not_a_run(tmp_path, capsys):
    assert main(["view", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path}: not a run directory (no {METRICS_FILE})" in err
    assert main(["view", str(tmp_path / "missing")]) == 2


def test_a_run_directory_opens_the_dashboard(tmp_path, monkeypatch):
    (tmp_path / METRICS_FILE).write_text("")
    opened = []
    monkeypatch.setattr(tui_app, "run_dashboard", lambda run_dir: opened.append(run_dir) or 7)
    assert main(["view", str(tmp_path)]) == 7  # the dashboard's own exit status
    assert opened == [tmp_path]


def test_the_run_directory_is_expanded_and_absolute(tmp_path, monkeypatch):
    """The dashboard's closing hints name the run directory: never with a literal `~`."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / METRICS_FILE).write_text("")
    opened = []
    monkeypatch.setattr(tui_app, "run_dashboard", lambda run_dir: opened.append(run_dir) or 0)
    assert main(["view", "~/run"]) == 0
    assert opened == [tmp_path / "run"]


def test_a_rounds_folder_opens_its_latest_round(tmp_path, monkeypatch):
    (tmp_path / "rounds.json").write_text("{}")
    opened = []
    monkeypatch.setattr(tui_app, "run_dashboard", lambda run_dir: opened.append(run_dir) or 0)
    for number in (1, 2):
        (tmp_path / f"round-{number}").mkdir()
        (tmp_path / f"round-{number}" / METRICS_FILE).write_text("")
    (tmp_path / "round-3").mkdir()  # making its pairs: no run yet
    assert main(["view", str(tmp_path)]) == 0
    assert opened == [tmp_path / "round-2"]
