"""Pilot tests of tui/screens/summary.py: the end-of-run summary of finished and failed runs."""

from __future__ import annotations

from conftest import (
    WIDE,
    commands,
    footer_keys,
    make_app,
    screen_text,
    summary_text,
)
from mlx_dpo.tui.formatting import format_number
from mlx_dpo.tui.screens import SummaryScreen
from tui_runs import MODEL, eval_metrics, write_run

from mlx_dpo.events import (
    LOG_FILE,
)


async def test_finished_run_shows_the_summary_and_greys_out_run_keys(tmp_path):
    write_run(tmp_path, steps=60, end="completed")
    app = make_app(tmp_path)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, SummaryScreen)
        text = summary_text(app)
        assert "Training finished" in screen_text(app)
        assert f"mlx_lm.chat --model {MODEL} --adapter-path {tmp_path}" in text
        final = eval_metrics(60)
        assert f"loss {format_number(final['loss'])}" in text
        assert "Best eval" in text and "at step 50" in text
        assert "checkpoints/0000060" in text

        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is app.dashboard
        keys = footer_keys(app)
        assert keys["p"] is False and keys["r"] is False and keys["c"] is False
        assert keys["s"] is False
        assert keys["e"] is True and keys["u"] is True
        await pilot.press("p", "c", "s")
        assert commands(tmp_path) == []

        await pilot.press("u")
        await pilot.pause()
        assert isinstance(app.screen, SummaryScreen)
        await pilot.press("q")
        await pilot.pause()
    assert app.return_value == 0


async def test_failed_run_shows_error_log_tail_and_exits_1(tmp_path):
    write_run(tmp_path, steps=30, end="failed")
    (tmp_path / LOG_FILE).write_text("step 30 loss nan\nRuntimeError: NaN loss at step 30\n")
    app = make_app(tmp_path)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, SummaryScreen)
        text = summary_text(app)
        assert "Training failed" in screen_text(app)
        assert "RuntimeError: NaN loss at step 30" in text
        assert "step 30 loss nan" in text  # from train.log
        assert "checkpoints/0000020" in text
        await pilot.press("q")
    assert app.return_value == 1
