"""Asks where to write the fused model, and (for a quantized base) whether to dequantize.
It says which step's adapters it exports."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Switch

from ..messages import ExportRequest


def check_save_path(text: str) -> str | None:
    """Why this output folder will not do, or None when it will."""
    if not text.strip():
        return "Give an output folder."
    path = Path(text.strip()).expanduser()
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        return f"{path} already exists and is not empty; choose a new folder."
    return None


def export_text(adapter_step: int | None) -> str:
    which = (
        f"the adapters of step {adapter_step}" if adapter_step is not None else "the saved adapters"
    )
    return (
        f"Fuses {which} (adapters.safetensors in the run directory) into the base model and "
        "saves a standalone model (mlx-dpo export), in its own process."
    )


class ExportScreen(ModalScreen[ExportRequest | None]):
    """Dismisses with an ExportRequest, or None when cancelled. `quantized_base` None means
    the run does not say: the switch is offered, worded for that."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(
        self,
        default_path: str,
        adapter_step: int | None = None,
        quantized_base: bool | None = None,
    ) -> None:
        super().__init__()
        self.default_path = default_path
        self.adapter_step = adapter_step
        self.quantized_base = quantized_base

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="export-dialog"):
            yield Label("Export fused weights", classes="dialog-title")
            yield Label(export_text(self.adapter_step), classes="dialog-text", id="export-text")
            yield Label("Output folder")
            yield Input(value=self.default_path, id="save-path")
            if self.quantized_base is not False:
                with Horizontal(id="dequantize-row"):
                    yield Switch(value=False, id="dequantize")
                    label = (
                        "Dequantize: full-precision weights from the quantized base"
                        if self.quantized_base
                        else "Dequantize (only for a quantized base)"
                    )
                    yield Label(label, id="dequantize-label")
            yield Label("", id="export-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Export", variant="primary", id="export")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#save-path", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "export":
            self.submit()
        else:
            self.dismiss(None)

    def submit(self) -> None:
        text = self.query_one("#save-path", Input).value
        problem = check_save_path(text)
        if problem is not None:
            self.query_one("#export-error", Label).update(problem)
            return
        switches = self.query("#dequantize")
        dequantize = bool(switches) and switches.first(Switch).value
        self.dismiss(ExportRequest(str(Path(text.strip()).expanduser()), dequantize))

    def action_cancel(self) -> None:
        self.dismiss(None)
