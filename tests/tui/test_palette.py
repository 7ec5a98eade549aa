"""Unit tests of tui/palette.py: every colour is one Textual parses (legends are Textual
markup; Rich-only names such as dodger_blue1 left them uncoloured)."""

from __future__ import annotations

import pytest
from mlx_dpo.tui import palette
from mlx_dpo.tui.panels import PANEL_SETS
from textual.color import Color


@pytest.mark.parametrize("color", [*palette.LINE_COLORS, palette.CHECKPOINT, palette.BACKGROUND])
def test_every_palette_colour_parses(color):
    Color.parse(color)
    Color.parse(palette.faint(color))


def test_every_chart_line_uses_a_parsable_colour_and_lines_of_a_chart_differ():
    for panel in PANEL_SETS:
        for chart in panel.charts:
            colors = [line.color for line in chart.lines]
            for color in colors:
                Color.parse(color)
            assert len(set(colors)) == len(colors), chart.title


def test_faint_is_between_the_colour_and_the_background():
    line, faint, background = (
        Color.parse(palette.CHOSEN),
        Color.parse(palette.faint(palette.CHOSEN)),
        Color.parse(palette.BACKGROUND),
    )
    assert background.brightness < faint.brightness < line.brightness
