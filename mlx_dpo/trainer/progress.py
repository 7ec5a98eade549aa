"""How far the long phases before the first step are: loading the model, tokenizing the data
(`progress` events) and the reference precompute (`reference` events), each written at its
start, every EVENT_SECONDS and at its end, with a console line every LINE_SECONDS (with an ETA)
while one goes on. mlx_dpo/events.py describes the events."""

from __future__ import annotations

import time
from collections.abc import Callable

from mlx_dpo.events import EventWriter
from mlx_dpo.formatting import format_duration

# A progress event at most this often (seconds) while a phase goes on, besides its start and end.
EVENT_SECONDS = 2.0
# A console line at most this often (seconds) while a phase goes on.
LINE_SECONDS = 10.0


def _count(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


class PhaseProgress:
    """A events.Progress callback (phase, done, total, unit) that writes `progress` events:
    the first report of a phase (a new phase or unit, or a count that went back), then every
    EVENT_SECONDS, and the last (done >= total). While a phase goes on it says a line with its
    ETA every LINE_SECONDS, and how long it took when it said any. `clock` is for tests."""

    def __init__(
        self,
        events: EventWriter,
        say: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ):
        self.events, self.say, self.clock = events, say, clock
        self.current: tuple[str, str] | None = None
        self.began = self.last_event = self.last_line = 0.0
        self.first_done = self.last_done = 0.0
        self.lines = 0
        self.ended = False

    def __call__(self, phase: str, done: float, total: float, unit: str) -> None:
        now = self.clock()
        if (phase, unit) != self.current or done < self.last_done:
            self.current = (phase, unit)
            self.began = self.last_line = now
            self.last_event = float("-inf")
            self.first_done = done
            self.lines = 0
            self.ended = False
        elif self.ended:
            return  # its end is written already
        first = self.last_event == float("-inf")
        last = self.ended = done >= total
        self.last_done = done
        if first or last or now - self.last_event >= EVENT_SECONDS:
            self.events.write("progress", 0, phase=phase, done=done, total=total, unit=unit)
            self.last_event = now
        if not last and now - self.last_line >= LINE_SECONDS:
            self.last_line = now
            self.lines += 1
            eta = eta_seconds(self.first_done, done, total, now - self.began)
            left = "" if eta is None else f", ETA {format_duration(eta)}"
            self.say(f"{phase}: {_count(done)}/{_count(total)} {unit}{left}")
        elif last and self.lines:
            self.lines = 0
            self.say(f"{phase}: {_count(total)} {unit} in {format_duration(now - self.began)}")


def eta_seconds(first_done: float, done: float, total: float, seconds: float) -> float | None:
    """Seconds left at the rate since the phase began; None before there is a rate."""
    rate_done = done - first_done
    if rate_done <= 0 or seconds <= 0:
        return None
    return (total - done) * seconds / rate_done


class ReferenceProgress:
    """The reference precompute's progress (reference.reference_logps' callback) as `reference`
    events: its start, every EVENT_SECONDS, its end, and one event for a split read from the
    cache; a console line with the ETA every LINE_SECONDS while computing."""

    def __init__(
        self,
        split: str,
        events: EventWriter,
        say: Callable[[str], None],
        unit: str = "pairs",
        clock: Callable[[], float] = time.monotonic,
    ):
        self.split, self.events, self.say, self.clock = split, events, say, clock
        self.unit = unit  # "completions" for kto
        self.last_event = float("-inf")
        self.last_line = clock()

    def __call__(self, done: int, total: int, from_cache: bool, eta: float | None) -> None:
        now = self.clock()
        if done >= total or now - self.last_event >= EVENT_SECONDS:
            self.last_event = now
            self.events.write(
                "reference", 0, split=self.split, done=done, total=total, cached=from_cache, eta=eta
            )
        if not from_cache and done < total and now - self.last_line >= LINE_SECONDS:
            self.last_line = now
            left = "" if eta is None else f", ETA {format_duration(eta)}"
            self.say(f"reference log-probs for {self.split}: {done}/{total} {self.unit}{left}")
