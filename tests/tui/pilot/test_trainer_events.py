"""The dashboard on what the trainer really writes: a tiny run's metrics.jsonl (the answers to
fixed prompts, the checks that are off, the progress before the first step, quantized_base),
not a hand-written stream."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
from conftest import WIDE, make_app, screen_text, wait_until
from mlx_dpo.tui.screens import ExportScreen, HealthScreen, SamplesScreen

from mlx_dpo.events import METRICS_FILE, read_events
from mlx_dpo.trainer import samples
from tests.conftest import preference_rows, write_jsonl
from tests.training import config_for, run


@pytest.fixture(scope="module")
def trained(llama_chatml, tmp_path_factory) -> Path:
    """A 4-step run with evaluations at steps 2 and 4 and an 8-pair validation split."""
    data = tmp_path_factory.mktemp("data")
    write_jsonl(data / "train.jsonl", preference_rows(24))
    write_jsonl(data / "valid.jsonl", preference_rows(8, seed=1, start=100))
    run_dir = tmp_path_factory.mktemp("runs") / "run"
    config = config_for(
        llama_chatml, data, run_dir, iters=4, eval_every=2, sample_max_tokens=8, learning_rate=2e-2
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(samples, "MAX_SHARE", math.inf)  # tiny steps: no round skipped
        status, _ = run(config)
    assert status == "completed"
    return run_dir


async def test_the_answers_screen_shows_a_real_runs_answers(trained):
    events = read_events(trained)
    reference, _, last = (e for e in events if e["event"] == "samples")
    app = make_app(trained)
    async with app.run_test(size=WIDE) as pilot:
        await wait_until(pilot, lambda: app.model.run_end is not None)
        assert app.model.sample_steps() == [2, 4]
        await pilot.press("escape")  # the finished run's summary
        await pilot.pause()
        await pilot.press("a")
        await wait_until(pilot, lambda: isinstance(app.screen, SamplesScreen))
        text = screen_text(app)
        assert "Step 4: eval 2/2" in text
        for before, after in zip(reference["prompts"], last["prompts"], strict=True):
            assert before["prompt"] in text
            # Answers are shown whole (word-wrapped), so compare their first words.
            assert before["reference"].split()[0] in text or not before["reference"].split()
            assert after["policy"].split()[0] in text or not after["policy"].split()
        await pilot.press("left")
        await pilot.pause()
        assert "Step 2: eval 1/2" in screen_text(app)


async def test_checks_that_are_off_and_a_float_base_on_the_dashboard(trained, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)  # the app may write (screenshots); keep the fixture clean
    app = make_app(run_dir)
    async with app.run_test(size=WIDE) as pilot:
        await wait_until(pilot, lambda: app.model.run_end is not None)
        assert {c["kind"] for c in app.model.checks_off} == {
            "orientation",
            "chosen_logp_collapse",
            "kl_drift",
            "not_learning",
            "overfitting",
        }
        assert app.model.quantized_base is False
        await pilot.press("escape")
        await pilot.pause()
        await pilot.press("h")
        await wait_until(pilot, lambda: isinstance(app.screen, HealthScreen))
        text = " ".join(screen_text(app).split())
        assert "Checks that are off in this run" in text
        assert "overfitting: it reads the validation evals, and the validation split has 8" in text
        await pilot.press("escape")
        await pilot.pause()
        await pilot.press("e")
        await wait_until(pilot, lambda: isinstance(app.screen, ExportScreen))
        assert not app.screen.query("#dequantize")
    assert (run_dir / METRICS_FILE).read_text() == (trained / METRICS_FILE).read_text()
