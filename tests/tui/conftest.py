"""Fixtures for the dashboard tests: run directories, a fake trainer process, waiting."""

from __future__ import annotations

import asyncio
import inspect
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mlx_dpo.tui.app import DashboardApp
from mlx_dpo.tui.widgets import MetricChart, MetricTile
from rich.console import Console
from textual.widgets._footer import FooterKey

from mlx_dpo.events import CONTROL_FILE, LOG_FILE

HERE = Path(__file__).parent
FAKE_TRAINER = HERE / "fake_trainer.py"
FROZEN_CLOCK = 1_700_000_000.0 + 10.0 + 41 * 2.0  # two seconds after step 40 of tui_runs
WIDE = (110, 32)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run `async def` tests in a fresh event loop (no pytest-asyncio needed: the project
    declares no async test plugin, and Textual's pilot only needs a running loop)."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    arguments = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    asyncio.run(pyfuncitem.obj(**arguments))
    return True


def screen_text(app) -> str:
    """The screen as plain text (what a user would read)."""
    width, height = app.size
    console = Console(
        width=width,
        height=height,
        file=io.StringIO(),
        force_terminal=True,
        color_system="truecolor",
        record=True,
        legacy_windows=False,
    )
    console.print(
        app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    )
    return console.export_text()


async def wait_until(pilot, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Let the app run until `predicate()` holds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")
        await pilot.pause(0.05)
    # Let the screen catch up with what the predicate saw (a pushed screen renders next).
    if pilot.app.is_running:
        await pilot.pause()


@pytest.fixture
def start_fake_trainer(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start fake_trainer.py on a run directory (output to train.log, own session, like the
    CLI starts the real one); kills whatever is left at the end of the test."""
    processes: list[subprocess.Popen] = []

    def start(run_dir: Path, *args: str) -> subprocess.Popen:
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / LOG_FILE, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, str(FAKE_TRAINER), str(run_dir), *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


# -- pilot helpers ---------------------------------------------------------------------


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
    """The summary's text, each line whole (on screen long lines wrap)."""
    return app.screen.summary_text()


def footer_keys(app: DashboardApp) -> dict[str, bool]:
    """Footer key -> whether it is enabled (greyed-out keys carry -disabled)."""
    return {key.key: not key.has_class("-disabled") for key in app.screen.query(FooterKey)}
