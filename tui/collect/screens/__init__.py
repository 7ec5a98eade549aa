"""The collect screens: the main one and the answer editor."""

from .collect_screen import CollectScreen
from .edit_answer import EditAnswerScreen

__all__ = ["CollectScreen", "EditAnswerScreen"]
