"""The top of the dashboard: what is trained on what, where, how far along, and how fast."""

from __future__ import annotations

from rich.markup import escape
from textual.app import ComposeResult
from textual.containers import Grid, Vertical
from textual.widgets import ProgressBar, Static

from ...formatting import format_duration
from ..formatting import STATE_LABELS, state_label
from ..run_model import RunModel


def _count(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


class RunHeader(Vertical):
    """Model, data and run directory; state, step, epoch, elapsed, ETA and a progress bar."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._texts: dict[str, str] = {}
        self._progress: tuple[float, float] | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="run-identity")
        with Grid(id="run-progress-row"):
            yield Static(id="run-state")
            yield Static(id="run-counters")
            yield ProgressBar(id="run-progress", show_eta=False)
        yield Static(id="run-note")

    def show(self, model: RunModel, now: float, run_dir: str, note: str = "") -> None:
        """Redraw from the model; `now` comes from the app's clock, `note` says what the
        dashboard is waiting for (a requested pause, an export). Called a few times a
        second, so only what changed is updated."""
        model_name = model.model_name or "…"
        data_name = model.data_name or "…"
        world_size = model.info.get("world_size")
        # A data-parallel run (mlx.launch): the global batch spans every rank.
        ranks = (
            f"  [b]ranks[/] {world_size}" if isinstance(world_size, int) and world_size > 1 else ""
        )
        beta = model.info.get("beta")
        beta_text = f"  [b]β[/] {beta:g}" if isinstance(beta, (int, float)) else ""
        self._set(
            "#run-identity",
            f"[b]model[/] {escape(model_name)}  [b]data[/] {escape(data_name)}{ranks}{beta_text}"
            f"  [b]run[/] {escape(run_dir)}",
        )
        if self._set("#run-state", f" {state_label(model.state).upper()} ", layout=True):
            state = self.query_one("#run-state", Static)
            for known in STATE_LABELS:
                state.set_class(known == model.state, f"-{known.replace('_', '-')}")

        parts: list[str] = []
        if model.round is not None:
            parts.append("round {}/{}".format(*model.round))
        phase = model.phase_progress()
        if phase is not None:
            unit = f" {phase.unit}" if phase.unit else ""
            parts.append(f"{phase.label} {_count(phase.done)}/{_count(phase.total)}{unit}")
            eta = phase.eta(now)
            if eta is not None:
                parts.append(f"ETA {format_duration(eta)}")
            progress: tuple[float, float] = (max(phase.total, 1), phase.done)
        else:
            total_steps = model.total_steps
            parts.append(f"step {model.step}/{total_steps if total_steps else '?'}")
            # Unknown totals show an empty bar: an indeterminate one animates (and redraws)
            # without end while a run is starting.
            progress = (total_steps or 1, model.step if total_steps else 0)
        if progress != self._progress:
            self._progress = progress
            self.query_one("#run-progress", ProgressBar).update(
                total=progress[0], progress=progress[1]
            )
        if model.epoch is not None:
            epochs = model.info.get("epochs")
            of = f"/{epochs:.1f}" if isinstance(epochs, (int, float)) and epochs else ""
            parts.append(f"epoch {model.epoch:.1f}{of}")
        elapsed = f"elapsed {format_duration(model.elapsed(now))}"
        paused = model.paused(now)
        if paused >= 1:
            elapsed += f" (paused {format_duration(paused)})"
        parts.append(elapsed)
        if not model.is_final and phase is None:
            parts.append(f"ETA {format_duration(model.eta(now))}")
        self._set("#run-counters", " · ".join(parts))

        if self._set("#run-note", escape(note)):
            self.query_one("#run-note", Static).display = bool(note)

    def _set(self, selector: str, text: str, layout: bool = False) -> bool:
        """Update a line if its text changed; True when it did. Fixed-size lines skip the
        layout pass an update would otherwise cost."""
        if self._texts.get(selector) == text:
            return False
        self._texts[selector] = text
        self.query_one(selector, Static).update(text, layout=layout)
        return True
