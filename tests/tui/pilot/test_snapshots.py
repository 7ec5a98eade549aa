"""SVG snapshots of the dashboard's main states (pytest-textual-snapshot).

Reproducible by construction: recorded streams with fixed event times, a frozen clock for
elapsed/ETA, and a relative run directory. Regenerate after a deliberate change with
`python -m pytest tests/tui/pilot/test_snapshots.py --snapshot-update` and look at them."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import FROZEN_CLOCK
from mlx_dpo.tui.app import DashboardApp
from tui_runs import write_run

from mlx_dpo.events import LOG_FILE

WIDE = (120, 36)
NARROW = (80, 24)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def dashboard(run: str = "run") -> DashboardApp:
    return DashboardApp(Path(run), clock=lambda: FROZEN_CLOCK)


def test_training(in_tmp, snap_compare):
    write_run(Path("run"), steps=40, health=True)
    assert snap_compare(dashboard(), terminal_size=WIDE)


def test_paused(in_tmp, snap_compare):
    write_run(Path("run"), steps=40, paused=True)
    assert snap_compare(dashboard(), terminal_size=WIDE)


def test_finished(in_tmp, snap_compare):
    write_run(Path("run"), steps=100, end="completed")
    assert snap_compare(dashboard(), terminal_size=WIDE)


def test_failed(in_tmp, snap_compare):
    write_run(Path("run"), steps=30, end="failed")
    Path("run", LOG_FILE).write_text(
        "step 29/100 | loss 0.4210 | accuracy 0.81\n"
        "Traceback (most recent call last):\n"
        "RuntimeError: NaN loss at step 30\n"
    )
    assert snap_compare(dashboard(), terminal_size=WIDE)


def test_narrow_terminal(in_tmp, snap_compare):
    write_run(Path("run"), steps=40)
    assert snap_compare(dashboard(), terminal_size=NARROW)
