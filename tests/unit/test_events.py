"""The run-directory contract: whole lines, atomic status, the control channel."""

from __future__ import annotations

import json
import math

from mlx_dpo.events import (
    METRICS_FILE,
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


def test_a_field_of_the_wrong_type_reads_as_absent(tmp_path):
    """Well-formed lines with wrong types (a hand edit, another tool) reached the dashboard
    as they were and crashed it; each field the contract types is checked as it is read."""
    lines = [
        {"event": "eval", "step": 2, "time": 1.0, "loss": "low", "split": "valid", "pairs": 8},
        {"event": "run_end", "step": "4", "status": 3, "final_eval": 1, "best_eval": {"loss": 0.5}},
        {"event": "run_start", "step": 0, "memory_plan": {"total_gb": "x"}, "loss": ["a", 1],
         "truncated": {"train": {"pairs": 2}}, "pid": True, "epochs": 2**2000},
        {"event": "samples", "step": 0, "prompts": [{"prompt": "p", "policy": 3}]},
        {"event": 7, "step": 1},
    ]  # fmt: skip
    (tmp_path / METRICS_FILE).write_text(
        "\n".join(json.dumps(x) for x in lines)
        + "\n"
        + '{"event": "log", "n": '
        + "9" * 5000
        + "}\n"
    )
    evaluation, end, start, samples = read_events(tmp_path)
    assert evaluation == {**lines[0], "loss": None}
    assert end == {**lines[1], "step": None, "status": None, "final_eval": None}
    assert start["memory_plan"] is None and start["loss"] is None and start["pid"] is None
    assert start["truncated"] == {"train": {"pairs": 2}} and start["epochs"] is None
    assert samples["prompts"] is None
    (tmp_path / "status.json").write_text("[1, 2]")
    assert read_status(tmp_path) == {}
