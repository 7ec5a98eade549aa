"""Errors caused by the user's input: reported as a message, never as a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in a file, flag or folder the user gave us. `problems` lists every finding."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = problems or []

    def __str__(self) -> str:
        text = self.args[0]
        if self.problems:
            shown = self.problems[:30]
            text += "\n" + "\n".join(f"  {p}" for p in shown)
            if len(self.problems) > len(shown):
                text += f"\n  ... and {len(self.problems) - len(shown)} more"
        return text
