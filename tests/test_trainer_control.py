"""Stopping and steering a run (mlx_dpo/trainer/control.py): signals request a stop and the
old handlers come back; control.jsonl commands are read once, in order, and pause/resume
only when they change something."""

from __future__ import annotations

import os
import signal

import pytest

from mlx_dpo.events import send_command
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
