"""The collect screen's widgets, one a file."""

from .answer_pane import AnswerPane
from .collect_header import CollectHeader
from .prompt_panel import PromptPanel

__all__ = ["AnswerPane", "CollectHeader", "PromptPanel"]
