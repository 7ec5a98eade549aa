"""SVG snapshots of the dashboard's main states (pytest-textual-snapshot), on realistic noisy
series: per-batch noise, a health finding, a checkpoint on a tick (every 20 steps), a resumed
run, and an 80x24 terminal down to its footer.

Reproducible by construction: recorded streams with fixed event times, a frozen clock for
elapsed/ETA, and a relative run directory. Regenerate after a deliberate change with
`python -m pytest tests/tui/pilot/test_snapshots.py --snapshot-update` and look at them."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import FROZEN_CLOCK
from mlx_dpo.tui.app import DashboardApp
from tui_runs import MODEL, at, noisy_step_metrics, write_run

from mlx_dpo.events import LOG_FILE, EventWriter, truncate_events_after

WIDE = (120, 36)
NARROW = (80, 24)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def dashboard(run: str = "run", clock: float = FROZEN_CLOCK) -> DashboardApp:
    return DashboardApp(Path(run), clock=lambda: clock)


def test_training(in_tmp, snap_compare):
    write_run(Path("run"), steps=40, health=True, noisy=True)
    assert snap_compare(dashboard(), terminal_size=WIDE)


def test_log_probs_panel(in_tmp, snap_compare):
    write_run(Path("run"), steps=40, health=True, noisy=True)
    assert snap_compare(dashboard(), terminal_size=WIDE, press=["2"])


def test_paused(in_tmp, snap_compare):
    write_run(Path("run"), steps=40, paused=True, noisy=True)
    assert snap_compare(dashboard(clock=at(41) + 75), terminal_size=WIDE)


def test_finished_with_a_finding(in_tmp, snap_compare):
    write_run(Path("run"), steps=100, end="completed", health=True, noisy=True)
    assert snap_compare(dashboard(), terminal_size=WIDE)


def test_stopped_run_summary_has_the_resume_command(in_tmp, snap_compare):
    write_run(Path("run"), steps=60, end="stopped", noisy=True)
    assert snap_compare(dashboard(), terminal_size=NARROW)


def test_failed(in_tmp, snap_compare):
    write_run(Path("run"), steps=30, end="failed", noisy=True)
    Path("run", LOG_FILE).write_text(
        "step 29/100 | loss 0.4210 | accuracy 0.81\n"
        "Traceback (most recent call last):\n"
        "RuntimeError: NaN loss at step 30\n"
    )
    assert snap_compare(dashboard(), terminal_size=WIDE)


def test_resumed_run(in_tmp, snap_compare):
    """Stopped at 30, resumed from the checkpoint at 20 ten minutes later: the view is the
    new session's (no stopped summary), elapsed adds both sessions' wall time."""
    write_run(Path("run"), steps=30, end="stopped", noisy=True)
    truncate_events_after(Path("run"), 20)
    writer = EventWriter(Path("run"))
    later = 600.0
    writer.write("run_start", 20, time=at(31) + later, model=MODEL, data="demo",
                 total_steps=100, beta=0.1, resumed_from=20, run_dir="run")  # fmt: skip
    for step in range(21, 36):
        writer.write("step", step, time=at(step + 11) + later, elapsed=10.0 + (step - 20) * 2,
                     eta=(100 - step) * 2.0, **noisy_step_metrics(step))  # fmt: skip
    writer.close()
    assert snap_compare(dashboard(clock=at(47) + later), terminal_size=WIDE)


def test_narrow_terminal(in_tmp, snap_compare):
    write_run(Path("run"), steps=40, health=True, noisy=True)
    assert snap_compare(dashboard(), terminal_size=NARROW)


def test_narrow_terminal_log_panel(in_tmp, snap_compare):
    write_run(Path("run"), steps=40, health=True, noisy=True)
    assert snap_compare(dashboard(), terminal_size=NARROW, press=["4"])


def test_kto_run(in_tmp, snap_compare):
    """No pairs: the accuracy tile and chart are "Right side", the log-ratio tile KTO's z."""
    write_run(Path("run"), steps=40, noisy=True, loss="kto")
    assert snap_compare(dashboard(), terminal_size=WIDE)


def test_orpo_run_log_probs_panel(in_tmp, snap_compare):
    """No reference: ORPO's chosen NLL where the log-ratio to the reference would be."""
    write_run(Path("run"), steps=40, noisy=True, loss="orpo")
    assert snap_compare(dashboard(), terminal_size=WIDE, press=["2"])
