"""Stopping and steering a run (mlx_dpo/trainer/control.py): signals request a stop and the
old handlers come back; control.jsonl commands are read once, in order, and pause/resume
only when they change something; a paused run nobody watches asks to stop after its timeout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from mlx_dpo.events import DASHBOARD_PID_ENV, send_command
from mlx_dpo.trainer.control import RunControl, StopRequest, stop_on_signals


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_requests_a_stop_and_the_old_handler_comes_back(sig):
    before = signal.getsignal(sig)
    stop = StopRequest()
    with stop_on_signals(stop):
        assert signal.getsignal(sig) is stop
        os.kill(os.getpid(), sig)
    assert stop.requested and stop.reason == signal.Signals(sig).name
    assert signal.getsignal(sig) is before


def test_handlers_are_left_alone_when_disabled():
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals(StopRequest(), enabled=False):
        assert signal.getsignal(signal.SIGTERM) is before


def test_handlers_come_back_after_an_error():
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(RuntimeError), stop_on_signals(StopRequest()):
        raise RuntimeError("inside")
    assert signal.getsignal(signal.SIGINT) is before


def test_a_reason_is_kept_by_a_later_plain_request():
    stop = StopRequest()
    assert not stop.requested and stop.reason is None
    stop.request("memory limit")
    stop.request()
    assert stop.requested and stop.reason == "memory limit"


def test_commands_before_the_run_are_skipped_and_new_ones_read_once(tmp_path):
    send_command(tmp_path, "stop")  # a previous run's
    stop = StopRequest()
    control = RunControl(tmp_path, stop)
    assert control.poll() == [] and not stop.requested
    send_command(tmp_path, "checkpoint")
    send_command(tmp_path, "checkpoint")
    assert control.poll() == ["checkpoint", "checkpoint"]
    assert control.poll() == []


def test_pause_and_resume_only_when_they_change_something(tmp_path):
    stop = StopRequest()
    control = RunControl(tmp_path, stop)
    send_command(tmp_path, "resume")  # not paused: nothing to resume
    send_command(tmp_path, "pause")
    send_command(tmp_path, "pause")  # already paused
    send_command(tmp_path, "checkpoint")  # taken while paused
    assert control.poll() == ["pause", "checkpoint"] and control.paused
    send_command(tmp_path, "resume")
    send_command(tmp_path, "resume")
    assert control.poll() == ["resume"] and not control.paused


def test_stop_goes_to_the_stop_request(tmp_path):
    stop = StopRequest()
    control = RunControl(tmp_path, stop)
    send_command(tmp_path, "pause")
    send_command(tmp_path, "stop")
    assert control.poll() == ["pause"]
    assert stop.requested and stop.reason is None


def test_a_stop_is_read_between_steps_and_the_other_commands_wait(tmp_path):
    """stop_requested (asked between the batches of the reference pass and of evaluations)
    reads the new commands: a stop at once, the others kept for the next poll."""
    stop = StopRequest()
    control = RunControl(tmp_path, stop)
    send_command(tmp_path, "pause")
    send_command(tmp_path, "checkpoint")
    assert not control.stop_requested()
    send_command(tmp_path, "stop")
    assert control.stop_requested()
    assert control.poll() == ["pause", "checkpoint"] and control.paused


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_paused_run_nobody_watches_requests_a_stop_after_the_timeout(tmp_path, monkeypatch):
    monkeypatch.delenv(DASHBOARD_PID_ENV, raising=False)
    clock, stop = Clock(), StopRequest()
    control = RunControl(tmp_path, stop, pause_timeout=60, clock=clock)
    assert control.auto_stop_at() is None  # running
    send_command(tmp_path, "pause", pid=dead_pid())  # sent by a dashboard that is gone
    control.poll()
    assert control.auto_stop_at() == 1060
    clock.now = 1030
    send_command(tmp_path, "checkpoint", pid=dead_pid())  # any command counts as activity
    control.poll()
    assert control.auto_stop_at() == 1090 and not stop.requested
    clock.now = 1090
    assert control.auto_stop_at() == 1090
    assert stop.requested and stop.reason == "paused 1 min with no dashboard attached"


def test_a_live_dashboard_keeps_a_paused_run_waiting(tmp_path, monkeypatch):
    monkeypatch.delenv(DASHBOARD_PID_ENV, raising=False)
    clock, stop = Clock(), StopRequest()
    control = RunControl(tmp_path, stop, pause_timeout=60, clock=clock)
    send_command(tmp_path, "pause")  # this process: alive
    control.poll()
    clock.now = 5000
    assert control.auto_stop_at() is None and not stop.requested
    # Once it is gone the timeout counts from when that was seen.
    control.dashboards = {dead_pid()}
    assert control.auto_stop_at() == 5060 and not stop.requested


def test_the_dashboard_that_launched_the_trainer_counts(tmp_path, monkeypatch):
    monkeypatch.setenv(DASHBOARD_PID_ENV, str(os.getpid()))
    control = RunControl(tmp_path, StopRequest(), pause_timeout=60, clock=Clock())
    send_command(tmp_path, "pause", pid=dead_pid())
    control.poll()
    assert control.auto_stop_at() is None


def test_without_a_timeout_a_pause_waits_for_ever(tmp_path, monkeypatch):
    monkeypatch.delenv(DASHBOARD_PID_ENV, raising=False)
    clock, stop = Clock(), StopRequest()
    control = RunControl(tmp_path, stop, pause_timeout=0, clock=clock)
    send_command(tmp_path, "pause", pid=dead_pid())
    control.poll()
    clock.now = 10**9
    assert control.auto_stop_at() is None and not stop.requested
