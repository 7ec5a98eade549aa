"""The long phases' progress (mlx_dpo/trainer/progress.py): `progress` and `reference` events
at a phase's start, every few seconds and at its end, console lines with an ETA."""

from __future__ import annotations

import pytest

from mlx_dpo.events import EventWriter, read_events
from mlx_dpo.trainer import progress as progress_module
from mlx_dpo.trainer.progress import PhaseProgress, ReferenceProgress, eta_seconds


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def fields(events: list[dict], *names: str) -> list[tuple]:
    return [tuple(e[n] for n in names) for e in events]


def test_a_phase_is_written_at_its_start_every_few_seconds_and_at_its_end(tmp_path):
    clock, lines = Clock(), []
    tell = PhaseProgress(EventWriter(tmp_path), lines.append, clock=clock)
    tell("tokenizing", 0, 100, "train pairs")
    for done in range(10, 100, 10):  # one report a second
        clock.now += 1.0
        tell("tokenizing", done, 100, "train pairs")
    clock.now += 1.0
    tell("tokenizing", 100, 100, "train pairs")
    tell("tokenizing", 100, 100, "train pairs")  # a repeated end is not written again
    events = read_events(tmp_path)
    assert {e["event"] for e in events} == {"progress"}
    assert fields(events, "phase", "done", "total", "unit") == [
        ("tokenizing", 0, 100, "train pairs"),
        ("tokenizing", 20, 100, "train pairs"),  # 2 s after the start
        ("tokenizing", 40, 100, "train pairs"),
        ("tokenizing", 60, 100, "train pairs"),
        ("tokenizing", 80, 100, "train pairs"),
        ("tokenizing", 100, 100, "train pairs"),
    ]
    assert lines == []  # under LINE_SECONDS: nothing on the console


def test_a_new_phase_or_split_starts_over(tmp_path):
    clock = Clock()
    tell = PhaseProgress(EventWriter(tmp_path), lambda _: None, clock)
    tell("loading", 0, 5.5, "MB")
    tell("loading", 5.5, 5.5, "MB")
    tell("tokenizing", 0, 24, "train pairs")
    tell("tokenizing", 24, 24, "train pairs")
    tell("tokenizing", 0, 8, "valid pairs")
    tell("tokenizing", 8, 8, "valid pairs")
    assert fields(read_events(tmp_path), "phase", "done", "unit") == [
        ("loading", 0, "MB"),
        ("loading", 5.5, "MB"),
        ("tokenizing", 0, "train pairs"),
        ("tokenizing", 24, "train pairs"),
        ("tokenizing", 0, "valid pairs"),
        ("tokenizing", 8, "valid pairs"),
    ]


def test_a_long_phase_says_lines_with_its_eta_and_how_long_it_took(tmp_path):
    clock, lines = Clock(), []
    tell = PhaseProgress(EventWriter(tmp_path), lines.append, clock=clock)
    tell("loading", 0, 1000.0, "MB")
    clock.now += 12.0
    tell("loading", 300.0, 1000.0, "MB")  # 300 MB in 12 s: 700 more take 28 s
    clock.now += 3.0
    tell("loading", 400.0, 1000.0, "MB")  # under LINE_SECONDS since the last line
    clock.now += 25.0
    tell("loading", 1000.0, 1000.0, "MB")
    assert lines == ["loading: 300/1000 MB, ETA 28s", "loading: 1000 MB in 40s"]


def test_eta_needs_a_rate():
    assert eta_seconds(0, 0, 10, 5.0) is None
    assert eta_seconds(0, 5, 10, 0.0) is None
    assert eta_seconds(2, 4, 10, 4.0) == pytest.approx(12.0)  # 2 done in 4 s, 6 to go


def test_reference_progress_writes_its_start_every_few_seconds_and_its_end(tmp_path):
    clock, lines = Clock(), []
    tell = ReferenceProgress("train", EventWriter(tmp_path), lines.append, clock=clock)
    tell(0, 40, False, None)
    for done in range(4, 40, 4):
        clock.now += 0.5
        tell(done, 40, False, 10.0)
    clock.now += 11.0
    tell(40, 40, False, 0.0)
    events = read_events(tmp_path)
    assert {e["event"] for e in events} == {"reference"}
    assert fields(events, "split", "done", "total", "cached") == [
        ("train", 0, 40, False),
        ("train", 16, 40, False),  # 2 s after the start
        ("train", 32, 40, False),
        ("train", 40, 40, False),
    ]
    assert events[-1]["eta"] == 0.0
    assert lines == []  # the end is said by the run ("... pairs in Ns"), not here


def test_reference_progress_says_a_line_every_ten_seconds_while_computing(tmp_path, monkeypatch):
    monkeypatch.setattr(progress_module, "LINE_SECONDS", 10.0)
    clock, lines = Clock(), []
    tell = ReferenceProgress("valid", EventWriter(tmp_path), lines.append, clock=clock)
    clock.now += 11.0
    tell(10, 40, False, 33.0)
    clock.now += 1.0
    tell(12, 40, False, 30.0)
    assert lines == ["reference log-probs for valid: 10/40 pairs, ETA 33s"]


def test_a_cached_reference_is_one_event(tmp_path):
    tell = ReferenceProgress("valid", EventWriter(tmp_path), lambda _: None, clock=Clock())
    tell(8, 8, True, 0.0)
    (event,) = read_events(tmp_path)
    assert event["done"] == event["total"] == 8 and event["cached"] is True
