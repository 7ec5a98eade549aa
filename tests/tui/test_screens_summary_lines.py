"""Unit tests of the summary's and the findings screen's text (pure functions of the model;
tui/screens/summary.py, tui/screens/health.py, tui/widgets/health_banner.py)."""

from __future__ import annotations

from mlx_dpo.tui.run_model import RunModel
from mlx_dpo.tui.screens.health import findings_markup
from mlx_dpo.tui.screens.summary import summary_lines
from mlx_dpo.tui.widgets.health_banner import banner_text
from rich.text import Text
from tui_runs import write_run

from mlx_dpo.events import read_events


def model_of(run_dir) -> RunModel:
    model = RunModel()
    model.apply_all(read_events(run_dir))
    return model


def plain(lines) -> list[str]:
    return [Text.from_markup(m).plain if kind == "text" else m for kind, m in lines]


def test_a_finished_run_with_findings_leads_with_them(tmp_path):
    model = model_of(write_run(tmp_path, steps=100, end="completed", health=True))
    text = plain(summary_lines(model, "run"))
    assert text[0].startswith("⚠ Training finished with 1 health finding")
    assert "✓" not in text[0]
    findings_at = text.index("Health findings (h lists them with their numbers; docs/health.md)")
    eval_at = next(i for i, line in enumerate(text) if line.startswith("Final eval"))
    assert findings_at < eval_at
    assert "   → lower the learning rate or raise beta" in text


def test_a_clean_finished_run_reads_as_success(tmp_path):
    model = model_of(write_run(tmp_path, steps=100, end="completed"))
    assert plain(summary_lines(model, "run"))[0].startswith("✓ Training finished")


def test_a_stopped_run_says_how_to_resume_on_a_line_of_its_own(tmp_path):
    model = model_of(write_run(tmp_path, steps=40, end="stopped"))
    lines = summary_lines(model, "runs/my run")
    assert ("command", "mlx-dpo train --resume --adapter-path 'runs/my run'") in lines
    assert all(kind == "text" or "\n" not in text for kind, text in lines)


def test_checks_that_are_off_are_said_with_their_reason():
    model = RunModel()
    model.apply({"event": "run_start", "step": 0})
    model.apply({"event": "health", "step": 0, "kind": "overfitting", "severity": "off",
                 "message": "the validation split has 12 pairs (health.valid_min_pairs 20)"})  # fmt: skip
    model.apply({"event": "run_end", "step": 5, "status": "completed"})
    text = plain(summary_lines(model, "r"))
    assert text[0].startswith("✓ Training finished")  # off is not a finding
    assert any("Check off: overfitting: the validation split has 12 pairs" in line for line in text)
    findings = Text.from_markup(findings_markup(model)).plain
    assert "No findings" in findings and "overfitting: the validation split has 12" in findings
    assert banner_text([], model.checks_off) == "1 health check off — h to see why"


def test_banner_counts_findings_and_names_the_key():
    findings = [
        {"kind": "orientation", "step": 40, "severity": "warning"},
        {"kind": "chosen_logp_collapse", "step": 87, "severity": "warning"},
    ]
    assert banner_text(findings, []) == (
        "⚠ 2 findings — h to list · latest (step 87): chosen log-probability collapsing"
    )
