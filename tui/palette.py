"""The dashboard's colours, one place: chart lines, their faint raw copies, marks.

Every colour is a hex string so both Rich (the chart canvases) and Textual (`Color.parse`,
legend markup in borders) read it; Rich names such as `dodger_blue1` are not Textual colours
and left the legends uncoloured. tests/tui/test_palette.py parses each one.
"""

from __future__ import annotations

from textual.color import Color

CHOSEN = "#5fd75f"
REJECTED = "#ff5f5f"
TRAIN = "#5fafff"
EVAL = "#ffaf00"
MARGIN = "#af87ff"
LOG_RATIO = "#5fd7d7"
OPTIMIZER = "#d7af5f"
SPEED = "#87d7af"
MEMORY = "#d787d7"
CHECKPOINT = "#e4e4e4"

# The dark background the faint copies fade into (Textual's default dark theme).
BACKGROUND = "#121212"
# How far a raw series fades towards the background behind its smoothed line.
FAINT_AMOUNT = 0.65

LINE_COLORS = (CHOSEN, REJECTED, TRAIN, EVAL, MARGIN, LOG_RATIO, OPTIMIZER, SPEED, MEMORY)


def faint(color: str) -> str:
    """The colour of a raw series drawn behind its smoothed line."""
    return Color.parse(color).blend(Color.parse(BACKGROUND), FAINT_AMOUNT).hex
