"""The run-directory contract: whole lines, atomic status, the control channel."""

from __future__ import annotations

import json
import math

from mlx_dpo.events import (
    ControlReader,
    EventFollower,
    EventWriter,
    read_events,
    read_status,
    send_command,
    truncate_events_after,
    write_status,
)


def test_non_finite_numbers_are_null(tmp_path):
    writer = EventWriter(tmp_path)
    writer.write("step", 1, loss=math.nan, kl=math.inf, grad_norm=1.5)
    line = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert line["loss"] is None and line["kl"] is None and line["grad_norm"] == 1.5


def test_follower_waits_for_whole_lines(tmp_path):
    follower = EventFollower(tmp_path)
    assert follower.poll() == []
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"event": "step", "step": 1}\n{"event": "st')
    assert [e["step"] for e in follower.poll()] == [1]
    with open(path, "a") as handle:
        handle.write('ep", "step": 2}\n')
    assert [e["step"] for e in follower.poll()] == [2]


def test_follower_starts_over_when_the_file_shrinks(tmp_path):
    writer = EventWriter(tmp_path)
    for step in range(1, 6):
        writer.write("step", step, loss=0.5)
    follower = EventFollower(tmp_path)
    assert len(follower.poll()) == 5
    truncate_events_after(tmp_path, 2)
    events = follower.poll()
    assert follower.reset and [e["step"] for e in events] == [1, 2]


def test_control_reader_sees_only_new_commands(tmp_path):
    send_command(tmp_path, "stop")  # from an earlier run: ignored
    reader = ControlReader(tmp_path)
    assert reader.poll() == []
    send_command(tmp_path, "pause")
    send_command(tmp_path, "checkpoint")
    assert reader.poll() == ["pause", "checkpoint"]
    assert reader.poll() == []


def test_status_is_replaced_whole(tmp_path):
    write_status(tmp_path, state="training", step=3)
    write_status(tmp_path, state="paused", step=4)
    assert read_status(tmp_path)["state"] == "paused"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_torn_lines_are_skipped(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        '{"event": "step", "step": 1}\ngarbage\n{"event": "run_end", "step": 1}\n'
    )
    assert [e["event"] for e in read_events(tmp_path)] == ["step", "run_end"]
