"""Unit tests of the summary's and the findings screen's text (pure functions of the model;
tui/screens/summary.py, tui/screens/health.py, tui/widgets/health_banner.py)."""

from __future__ import annotations

from mlx_dpo.tui.run_model import RunModel
from mlx_dpo.tui.screens.health import findings_markup
from mlx_dpo.tui.screens.summary import summary_lines
from mlx_dpo.tui.widgets.health_banner import banner_text
from rich.text import Text
from tui_runs import earlier_round, make_round, write_run

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


def test_a_round_lists_each_rounds_held_out_eval(tmp_path):
    earlier = [earlier_round(1, 0.61, 0.7), earlier_round(2, 0.52, 0.8)]
    model = model_of(make_round(write_run(tmp_path, steps=100, end="completed"), 3, 3, earlier))
    text = plain(summary_lines(model, "run"))
    at = text.index("Round 3 of 3 (held-out: each round's validation pairs)")
    final = model.run_end["final_eval"]
    assert text[at + 1].startswith("  round 1  loss 0.610  accuracy 70.0%")
    assert text[at + 2].startswith("  round 2  loss 0.520  accuracy 80.0%")
    assert text[at + 3].startswith(f"  round 3  loss {final['loss']:.3f}")
    assert text[at + 3].endswith("← this run")


def test_a_stopped_round_says_the_rounds_continue_with_their_command(tmp_path):
    model = model_of(make_round(write_run(tmp_path, steps=40, end="stopped"), 1, 2))
    lines = summary_lines(model, "rounds/round-1")
    assert ("command", "mlx-dpo train --resume --adapter-path rounds/round-1") in lines
    text = plain(lines)
    assert any("the same mlx-dpo train --rounds command again" in line for line in text)
    # A stopped round has no final evaluation: its line shows the last one.
    last = model.latest_eval()
    assert f"  round 1  loss {last['loss']:.3f}" in next(s for s in text if "← this run" in s)
