"""`mlx-dpo collect`: a person judges two answers per prompt; each verdict is saved at once.

The model runs in the generation worker (mlx_dpo/collect_worker.py, a child process): this
app never imports MLX. A thread reads the worker's lines and posts them as messages
(messages.py); the app keeps what is on screen (mlx_dpo.collect.Shown) and writes each
verdict as one fsynced line (mlx_dpo.journal.VerdictFiles), so quitting, a crash or a kill
loses nothing but a line being written, and running the same command again continues with
the first prompt without a verdict.
"""

from __future__ import annotations

import sys
from typing import Any, ClassVar

from textual import work
from textual.app import App
from textual.binding import Binding, BindingType
from textual.widgets import Static

from ...collect import (
    VERDICTS,
    Shown,
    VerdictRefused,
    next_prompt,
    other,
    progress,
    shown_from_record,
    verdict_record,
)
from ...errors import UserError
from ...journal import VerdictFiles
from ...prompts import Prompt, pair_seeds
from .messages import (
    AnswerFinished,
    AnswerPiece,
    PreferenceFound,
    RequestDone,
    WorkerExited,
    WorkerFailed,
    WorkerReady,
    message_for,
)
from .screens import CollectScreen, EditAnswerScreen
from .widgets import AnswerPane, CollectHeader, PromptPanel
from .worker_process import WorkerProcess

EXIT_FAILED = 1
EXIT_USER_ERROR = 2
VERDICT_ACTIONS = ("verdict", "edit")


class CollectApp(App[int]):
    """Judge `prompts`, writing to `files` (opened by the caller). `worker_command` starts
    the generation worker; `seed` is the base of every answer's seed (mlx_dpo.prompts)."""

    CSS_PATH = "collect.tcss"
    TITLE = "mlx-dpo collect"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+q", "quit", "quit", show=False, priority=True),
    ]

    def __init__(
        self,
        prompts: list[Prompt],
        files: VerdictFiles,
        worker_command: list[str],
        *,
        seed: int = 0,
        model: str | None = None,
        adapter: str | None = None,
    ) -> None:
        super().__init__()
        self.prompts = prompts
        self.prompts_by_key = {p.key: p for p in prompts}
        self.files = files
        self.worker = WorkerProcess(worker_command)
        self.seed = seed
        self.model_name = model
        self.adapter = adapter
        self.info: dict[str, Any] | None = None  # the worker's "ready" line
        self.shown: Shown | None = None
        self.request_id = 0
        self.active: int | None = None  # the request whose answers are coming
        self.edit_side = "a"
        self.worker_gone: str | None = None
        self.startup_error: str | None = None
        self.closing = False
        self.main = CollectScreen()

    # -- lifecycle ---------------------------------------------------------------------

    async def on_mount(self) -> None:
        await self.push_screen(self.main)
        self.refresh_progress()
        self.select_side("a")
        if self.files.torn_bytes:
            self.set_note(
                f"Dropped a torn last line ({self.files.torn_bytes} bytes) left by an "
                "interrupted write; every complete verdict is kept."
            )
        try:
            self.worker.start()
        except OSError as error:
            self.startup_error = f"could not start the generation worker: {error}"
            self.exit(EXIT_FAILED)
            return
        self.read_worker()

    @work(thread=True, exit_on_error=False, group="worker")
    def read_worker(self) -> None:
        """Posts each line the worker writes; when its output ends, that it exited."""
        for line in self.worker.lines():
            message = message_for(line)
            if message is not None:
                self.post_message(message)
        returncode = self.worker.wait()
        self.post_message(WorkerExited(returncode, self.worker.stderr_tail()))

    def exit(self, *args: Any, **kwargs: Any) -> None:
        self.closing = True
        self.worker.stop()
        super().exit(*args, **kwargs)

    def on_unmount(self) -> None:
        self.worker.stop()

    # -- what the worker says ----------------------------------------------------------

    def on_worker_ready(self, message: WorkerReady) -> None:
        self.info = message.info
        self.main.query_one(CollectHeader).show_identity(message.info, str(self.files.out))
        self.advance()

    def pane(self, side: str) -> AnswerPane:
        return self.main.query_one(f"#answer-{side}", AnswerPane)

    def on_answer_piece(self, message: AnswerPiece) -> None:
        if message.request_id == self.active:
            self.pane(message.side).add_text(message.text)

    def on_answer_finished(self, message: AnswerFinished) -> None:
        if message.request_id != self.active or self.shown is None:
            return
        self.shown.answers[message.side] = message.text
        self.shown.finish[message.side] = message.finish_reason
        self.shown.tokens[message.side] = message.tokens
        pane = self.pane(message.side)
        pane.set_text(message.text)
        pane.set_status(finish_text(message.finish_reason, message.tokens))

    def on_preference_found(self, message: PreferenceFound) -> None:
        if message.request_id == self.active and self.shown is not None:
            self.shown.preference = message.preference
            self.show_finish()

    def on_request_done(self, message: RequestDone) -> None:
        if message.request_id == self.active:
            self.active = None
            self.refresh_keys()

    def on_worker_failed(self, message: WorkerFailed) -> None:
        if self.info is None and message.fatal:
            self.startup_error = message.message
            self.exit(EXIT_USER_ERROR)
            return
        if message.fatal:
            self.worker_gone = message.message
        if message.request_id == self.active:
            self.active = None
        self.set_note(f"The model failed: {message.message}", error=True)
        self.refresh_keys()

    def on_worker_exited(self, message: WorkerExited) -> None:
        if self.closing:
            return
        tail = " | ".join(message.stderr_tail[-3:])
        reason = f"the generation worker stopped (exit code {message.returncode})" + (
            f": {tail}" if tail else ""
        )
        if self.info is None:
            self.startup_error = self.startup_error or reason
            self.exit(EXIT_FAILED)
            return
        self.worker_gone = reason
        self.active = None
        self.set_note(
            f"{reason[0].upper()}{reason[1:]}. Every verdict given is saved; quit (q) and run "
            "the same command again to continue.",
            error=True,
        )
        self.refresh_keys()

    # -- showing -----------------------------------------------------------------------

    def set_note(self, text: str, error: bool = False) -> None:
        note = self.main.query_one("#note", Static)
        note.update(text)
        note.set_class(error, "-error")

    def refresh_progress(self) -> None:
        self.main.query_one(CollectHeader).show_progress(progress(self.files, self.prompts))

    def refresh_keys(self) -> None:
        self.main.refresh_bindings()

    def show_prompt(self, prompt: Prompt) -> None:
        try:
            place = f"Prompt {self.prompts.index(prompt) + 1}/{len(self.prompts)}"
        except ValueError:
            place = "Prompt (not in this prompts file)"
        self.main.query_one(PromptPanel).show(f"{place}  {prompt.source}", prompt.messages)

    def show_answers(self, shown: Shown, status: str) -> None:
        labels = (self.info or {}).get("labels", {"a": "A", "b": "B"})
        for side in ("a", "b"):
            pane = self.pane(side)
            pane.set_title(labels.get(side, side.upper()), shown.seeds.get(side))
            pane.set_text(shown.answers.get(side, ""))
            pane.set_status(status)
            pane.scroll.scroll_home(animate=False)

    def show_finish(self) -> None:
        """Each answer's status: how it ended, and whether the model prefers it."""
        if self.shown is None:
            return
        preference = self.shown.preference or {}
        prefers = preference.get("prefers")
        for side in ("a", "b"):
            status = finish_text(self.shown.finish.get(side), self.shown.tokens.get(side))
            # First, so a narrow pane still shows it.
            marker = "model prefers · " if prefers == side else ""
            self.pane(side).set_status(marker + status, preferred=prefers == side)

    # -- the flow ----------------------------------------------------------------------

    def advance(self) -> None:
        """On to the first prompt without a verdict (or say that all have one)."""
        prompt = next_prompt(self.prompts, self.files.done_items())
        if prompt is None:
            self.cancel_active()
            self.shown = None
            self.main.query_one(PromptPanel).show("All prompts have a verdict.", [])
            for side in ("a", "b"):
                self.pane(side).set_text("")
                self.pane(side).set_status("")
            self.set_note(
                f"Every prompt has a verdict. Train on the pairs: mlx-dpo train --data "
                f"{self.files.out} --model {self.model_name or '…'}   (q quits, u undoes the last)"
            )
            self.refresh_keys()
            return
        self.draw(prompt, 0)

    def draw(self, prompt: Prompt, draw: int) -> None:
        """Ask the worker for the prompt's answers of this draw (regenerating draws again)."""
        self.cancel_active()
        same = (self.info or {}).get("mode") == "adapter"
        seed_a, seed_b = pair_seeds(self.seed, prompt.key, draw, same)
        self.shown = Shown(prompt, draw, {"a": seed_a, "b": seed_b})
        self.show_prompt(prompt)
        self.show_answers(self.shown, "waiting for the model…")
        if self.worker_gone:
            self.refresh_keys()
            return
        self.request_id += 1
        request = {
            "op": "generate",
            "id": self.request_id,
            "prompt": prompt.messages,
            "seeds": {"a": seed_a, "b": seed_b},
            "score": True,
        }
        if self.worker.send(request):
            self.active = self.request_id
        self.refresh_keys()

    def cancel_active(self) -> None:
        if self.active is not None:
            self.worker.send({"op": "cancel", "id": self.active})
            self.active = None

    # ---- the keys of the collect screen (it binds them as app.<action>) -------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # None greys the key out in the footer (False would hide it).
        return True if self.action_available(action) else None

    def action_verdict(self, verdict: str) -> None:
        self.give_verdict(verdict)

    def action_edit(self) -> None:
        self.edit_answer()

    def action_regenerate(self) -> None:
        self.regenerate()

    def action_undo(self) -> None:
        self.undo()

    def action_switch_side(self) -> None:
        self.select_side("b" if self.edit_side == "a" else "a")

    def action_select_side(self, side: str) -> None:
        self.select_side(side)

    def action_quit_collect(self) -> None:
        self.quit_collect()

    def action_available(self, action: str) -> bool:
        shown_complete = self.shown is not None and self.shown.complete and self.active is None
        if action in VERDICT_ACTIONS:
            return shown_complete
        if action == "regenerate":
            return self.shown is not None and self.info is not None and not self.worker_gone
        if action == "undo":
            return any(True for _ in self.files.verdicts())
        return True

    def settings(self) -> dict[str, Any]:
        info = self.info or {}
        return {
            "model": self.model_name,
            "adapter": self.adapter,
            "mode": info.get("mode"),
            "labels": info.get("labels"),
            "sampling": info.get("sampling"),
            "seed": self.seed,
        }

    def give_verdict(self, verdict: str, edited: tuple[str, str] | None = None) -> None:
        if not self.action_available("verdict") or self.shown is None:
            return
        try:
            record, is_pair = verdict_record(self.shown, verdict, self.settings(), edited)
        except VerdictRefused as refused:
            self.set_note(f"Not saved: {refused}.", error=True)
            return
        try:
            self.files.add(record, is_pair)
        except OSError as error:
            self.set_note(f"Could not write {self.files.out}: {error}", error=True)
            return
        agrees = record["meta"].get("agrees")
        agreement = (
            "" if agrees is None else (" (as the model)" if agrees else " (unlike the model)")
        )
        self.set_note(f"Saved: {VERDICTS[verdict]}{agreement}.")
        self.refresh_progress()
        self.advance()

    def edit_answer(self) -> None:
        if not self.action_available("edit") or self.shown is None:
            return
        side = self.edit_side

        def edited(text: str | None) -> None:
            if text is not None:
                self.give_verdict("edit", (side, text))

        self.push_screen(EditAnswerScreen(side, self.shown.answers[side], other(side)), edited)

    def regenerate(self) -> None:
        if self.action_available("regenerate") and self.shown is not None:
            self.draw(self.shown.prompt, self.shown.draw + 1)
            self.set_note(f"Drawing again (draw {self.shown.draw}).")

    def undo(self) -> None:
        self.cancel_active()
        try:
            record = self.files.undo()
        except (UserError, OSError) as error:
            self.set_note(f"Cannot undo: {error}", error=True)
            return
        if record is None:
            self.set_note("Nothing to undo.")
            return
        self.shown = shown_from_record(record, self.prompts_by_key)
        self.show_prompt(self.shown.prompt)
        self.show_answers(self.shown, "")
        self.show_finish()
        self.set_note(f"Undone: {VERDICTS[record['meta']['verdict']]}. Give this one again.")
        self.refresh_progress()
        self.refresh_keys()

    def select_side(self, side: str) -> None:
        self.edit_side = side
        for pane_side in ("a", "b"):
            self.pane(pane_side).set_selected(pane_side == side)

    def quit_collect(self) -> None:
        self.exit(0)


def finish_text(finish_reason: str | None, tokens: int | None = None) -> str:
    count = f"{tokens} tokens · " if tokens is not None else ""
    if finish_reason == "length":
        return f"{count}cut at max tokens"
    if finish_reason == "stop":
        return f"{count}complete"
    return ""


def run_collect_app(
    prompts: list[Prompt],
    files: VerdictFiles,
    worker_command: list[str],
    *,
    seed: int = 0,
    model: str | None = None,
    adapter: str | None = None,
) -> int:
    """Run the collect screen until the person quits; 0, or 2/1 when the model could not be
    loaded (the reason printed)."""
    app = CollectApp(prompts, files, worker_command, seed=seed, model=model, adapter=adapter)
    result = app.run()
    if app.startup_error:
        print(f"mlx-dpo: error: {app.startup_error}", file=sys.stderr)
    return result if isinstance(result, int) else (app.return_code or 0)
