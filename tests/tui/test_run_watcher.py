"""Unit tests of tui/run_watcher.py (plain Python: no Textual app runs here)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from mlx_dpo.tui.run_watcher import RunWatcher, describe_exit, pid_alive, tail_lines
from tui_runs import write_run

from mlx_dpo.events import LOG_FILE, write_status

# -- run watcher -------------------------------------------------------------------------


def test_describe_exit():
    assert "SIGKILL" in describe_exit(-signal.SIGKILL) and "out of memory" in describe_exit(-9)
    assert "SIGTERM" in describe_exit(-signal.SIGTERM)
    assert describe_exit(3) == "The trainer exited with code 3"
    assert "without ending the run" in describe_exit(0)


def test_tail_lines(tmp_path):
    path = tmp_path / "train.log"
    path.write_text("".join(f"line {i}\n" for i in range(100)) + "\n\n")
    assert tail_lines(path, 3) == ["line 97", "line 98", "line 99"]
    assert tail_lines(tmp_path / "missing.log") == []


def test_watcher_sees_a_dead_popen_once_and_reads_the_log(tmp_path):
    (tmp_path / LOG_FILE).write_text("Traceback (most recent call last):\nMemoryError\n")
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    process.wait()
    watcher = RunWatcher(tmp_path, trainer=process)
    update = watcher.poll()
    assert update.trainer_gone == "The trainer exited with code 3"
    assert update.log_tail == ["Traceback (most recent call last):", "MemoryError"]
    assert watcher.poll().trainer_gone is None


def test_watcher_checks_the_status_pid_without_a_popen(tmp_path):
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()  # reaped: the pid no longer exists
    assert not pid_alive(process.pid)
    assert pid_alive(os.getpid())
    write_status(tmp_path, state="training", step=3, pid=process.pid)
    update = RunWatcher(tmp_path).poll()
    assert update.trainer_gone is not None and str(process.pid) in update.trainer_gone
    # A finished run is not checked: its trainer is meant to be gone.
    write_status(tmp_path, state="finished", step=3, pid=process.pid)
    assert RunWatcher(tmp_path).poll().trainer_gone is None
    write_status(tmp_path, state="training", step=3, pid=os.getpid())
    assert RunWatcher(tmp_path).poll().trainer_gone is None


def test_watcher_reports_a_rewritten_stream(tmp_path):
    write_run(tmp_path, steps=20)
    watcher = RunWatcher(tmp_path)
    assert len(watcher.poll().events) > 20
    (tmp_path / "metrics.jsonl").write_text('{"event": "run_start", "step": 0}\n')
    update = watcher.poll()
    assert update.reset and [event["event"] for event in update.events] == ["run_start"]
