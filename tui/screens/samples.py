"""Watching the model learn: answers to fixed prompts, the reference's next to the policy's
at an evaluation, with the words that changed marked. The trainer generates them (`samples`
events); nothing is generated here."""

from __future__ import annotations

from typing import ClassVar

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Static

from ...formatting import finite_number, format_duration
from ..run_model import RunModel
from ..samples import Sample, samples_at, word_diff


def _pieces_markup(pieces: list[tuple[str, bool]], style: str) -> str:
    return "".join(
        f"[{style}]{escape(text)}[/]" if changed else escape(text) for text, changed in pieces
    )


def sample_markup(sample: Sample) -> tuple[str, str]:
    """The reference and policy answers as markup: in the reference, words the policy dropped
    struck through in red; in the policy, words it added underlined in green."""
    reference = sample.reference if sample.reference is not None else ""
    if sample.policy is None:
        return escape(reference) or "[dim]–[/]", "[dim]no answer at this step[/]"
    old, new = word_diff(reference, sample.policy)
    return _pieces_markup(old, "strike red"), _pieces_markup(new, "underline green")


class SamplesScreen(ModalScreen[None]):
    """Opened with a; left/right step through the evaluations; esc goes back."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,a", "back", "Back"),
        Binding("left", "step(-1)", "Earlier eval"),
        Binding("right", "step(1)", "Later eval"),
    ]

    def __init__(self, model: RunModel) -> None:
        super().__init__()
        self.model = model
        steps = model.sample_steps()
        self.step: int | None = steps[-1] if steps else None

    def compose(self) -> ComposeResult:
        with Vertical(id="samples-dialog", classes="dialog wide-dialog"):
            yield Static(id="samples-title")
            yield VerticalScroll(id="samples-body")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#samples-dialog").border_title = "Answers: reference vs policy"
        self.refresh_samples()

    def refresh_samples(self) -> None:
        body = self.query_one("#samples-body", VerticalScroll)
        body.remove_children()
        title = self.query_one("#samples-title", Static)
        if not self.model.sample_prompts:
            title.update(
                "No answers yet: the trainer writes the reference's answers to a few fixed "
                "prompts at the start and the policy's at each evaluation (`samples` events)."
            )
            return
        steps = self.model.sample_steps()
        if self.step is None:
            title.update("Reference answers; the policy's come at the first evaluation.")
        else:
            event = self.model.samples.get(self.step) or {}
            seconds = finite_number(event.get("seconds"))
            cost = f" (generated in {format_duration(seconds)})" if seconds is not None else ""
            position = f"{steps.index(self.step) + 1}/{len(steps)}"
            title.update(
                f"Step {self.step}: eval {position}{cost} · ←/→ other evals · "
                "[strike red]dropped[/] [underline green]added[/]"
            )
        for sample in samples_at(self.model, self.step if self.step is not None else 0):
            reference, policy = sample_markup(sample)
            block = Vertical(classes="sample")
            body.mount(block)
            block.mount(Static(f"[b]Prompt[/] {escape(sample.prompt)}", classes="sample-prompt"))
            row = Grid(classes="sample-row")
            block.mount(row)
            row.mount(Static(f"[b]Reference[/]\n{reference}", classes="sample-answer"))
            label = f"Policy at step {self.step}" if self.step is not None else "Policy"
            row.mount(Static(f"[b]{label}[/]\n{policy}", classes="sample-answer"))

    def action_step(self, delta: int) -> None:
        steps = self.model.sample_steps()
        if not steps or self.step is None:
            return
        index = min(max(steps.index(self.step) + delta, 0), len(steps) - 1)
        if steps[index] != self.step:
            self.step = steps[index]
            self.refresh_samples()

    def action_back(self) -> None:
        self.dismiss(None)
