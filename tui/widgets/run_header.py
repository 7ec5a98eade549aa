"""The top of the dashboard: what is trained on what, where, how far along, and how fast."""

from __future__ import annotations

from rich.markup import escape
from textual.app import ComposeResult
from textual.containers import Grid, Vertical
from textual.widgets import ProgressBar, Static

from ...formatting import format_duration
from ..run_model import RunModel

STATE_LABELS = {
    "starting": "starting",
    "computing_reference": "computing reference",
    "training": "training",
    "paused": "paused",
    "evaluating": "evaluating",
    "stopping": "stopping",
    "finished": "finished",
    "stopped": "stopped",
    "failed": "failed",
}


def state_label(state: str) -> str:
    return STATE_LABELS.get(state, state.replace("_", " "))


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
        self._set(
            "#run-identity",
            f"[b]model[/] {escape(model_name)}  [b]data[/] {escape(data_name)}{ranks}  "
            f"[b]run[/] {escape(run_dir)}",
        )
        if self._set("#run-state", f" {state_label(model.state).upper()} ", layout=True):
            state = self.query_one("#run-state", Static)
            for known in STATE_LABELS:
                state.set_class(known == model.state, f"-{known.replace('_', '-')}")

        parts: list[str] = []
        reference = model.reference
        if model.state == "computing_reference" and reference:
            done, total = reference.get("done") or 0, reference.get("total") or 0
            eta = reference.get("eta")
            left = f", ETA {format_duration(eta)}" if isinstance(eta, int | float) else ""
            parts.append(f"reference {done}/{total} pairs{left}")
            progress: tuple[float, float] = (max(total, 1), done)
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
        parts.append(f"elapsed {format_duration(model.elapsed(now))}")
        if not model.is_final:
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
