"""Pilot tests of tui/widgets/metric_chart.py: what lands in which cell of the plot."""

from __future__ import annotations

from mlx_dpo.tui.panels import ChartData, ChartLine
from mlx_dpo.tui.widgets import MetricChart
from mlx_dpo.tui.widgets.metric_chart import CHECKPOINT_MARK, EVAL_MARKER
from textual.app import App, ComposeResult
from textual_hires_canvas import Canvas

CHOSEN, REJECTED, EVAL = "#00ff00", "#ff0000", "#ffaa00"


class ChartApp(App):
    def compose(self) -> ComposeResult:
        yield MetricChart("Test", id="chart")


def cells(chart: MetricChart) -> list[list[tuple[str, str]]]:
    canvas = chart.plot.query_one("#plot", Canvas)
    return [
        list(zip(row, styles, strict=True))
        for row, styles in zip(canvas._buffer, canvas._styles, strict=True)
    ]


def braille_bits(char: str) -> int:
    return ord(char) - 0x2800 if "\u2800" <= char <= "\u28ff" else 0


async def test_crossing_lines_keep_both_lines_dots_and_the_first_colour():
    app = ChartApp()
    async with app.run_test(size=(60, 20)) as pilot:
        chart = app.query_one(MetricChart)
        steps = list(range(0, 41))
        rising = [s / 40 for s in steps]
        falling = [1 - s / 40 for s in steps]
        chart.show(ChartData([ChartLine("chosen", steps, rising, CHOSEN),
                              ChartLine("rejected", steps, falling, REJECTED)], [20]))  # fmt: skip
        chart.redraw()
        await pilot.pause()
        grid = cells(chart)
        colours = {style for row in grid for char, style in row if braille_bits(char)}
        assert colours == {CHOSEN, REJECTED}
        # Draw each line alone and check that every dot of each survives in the pair.
        alone = {}
        for label, values, colour in (("c", rising, CHOSEN), ("r", falling, REJECTED)):
            chart.show(ChartData([ChartLine(label, steps, values, colour)], [20]))
            chart.redraw()
            await pilot.pause()
            alone[colour] = {(y, x): braille_bits(ch) for y, row in enumerate(cells(chart))
                             for x, (ch, _) in enumerate(row) if braille_bits(ch)}  # fmt: skip
        shared = set(alone[CHOSEN]) & set(alone[REJECTED])
        assert shared  # the lines cross
        for y, x in shared:
            char, style = grid[y][x]
            assert braille_bits(char) == alone[CHOSEN][(y, x)] | alone[REJECTED][(y, x)]
            assert style == CHOSEN  # the first line in the legend keeps the cell


async def test_checkpoints_are_marks_on_the_axis_and_eval_markers_sit_on_their_line():
    app = ChartApp()
    async with app.run_test(size=(60, 20)) as pilot:
        chart = app.query_one(MetricChart)
        steps = [10, 20, 30, 40]
        values = [0.2, 0.9, 0.4, 0.7]
        chart.show(ChartData([ChartLine("eval", steps, values, EVAL, markers=True)], [20, 40]))
        chart.redraw()
        await pilot.pause()
        grid = cells(chart)
        plot = chart.plot
        axis_row = plot._scale_rectangle.bottom
        marks = [x for x, (char, _) in enumerate(grid[axis_row]) if char == CHECKPOINT_MARK]
        assert len(marks) == 2
        # Nothing is drawn over the data for a checkpoint (no vertical lines).
        assert not any(char == "│" for row in grid[1:axis_row] for char, _ in row[1:-1])
        markers = {(y, x) for y, row in enumerate(grid) for x, (char, _) in enumerate(row)
                   if char == EVAL_MARKER}  # fmt: skip
        assert len(markers) == 4
        # Each marker sits in the cell its line's dot for that point falls in.
        for step, value in zip(steps, values, strict=True):
            hx, hy = plot.get_hires_pixel_from_coordinate(step, value)
            column = min(int(hx), plot._scale_rectangle.right - 1)
            row = int(hy) if int(hy) < axis_row else axis_row - 1
            assert (row, column) in markers
