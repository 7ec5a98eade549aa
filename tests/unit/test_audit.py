"""The data audit (mlx_dpo/audit.py): exact figures on a data set built with known lengths,
the same length-bias verdict as the run's health check, token counts and cuts exactly as
training makes them, and bad records reported instead of refused. The command line's own
checks are in test_cli_data.py."""

from __future__ import annotations

import pytest

from mlx_dpo.audit import audit, length_bias_figures
from mlx_dpo.health import HealthMonitor
from tests.conftest import preference_rows, write_jsonl
from tests.shared import pair


def test_figures_on_a_data_set_with_known_lengths(known_data):
    result = audit(known_data)
    train = result["splits"]["train"]
    assert result["length_unit"] == "words"
    assert train["records"] == 30
    assert train["valid_pairs"] == 27
    assert train["invalid_records"] == 2
    assert train["problems"] == [
        f"{known_data / 'train.jsonl'}:29: not valid JSON (Expecting property name enclosed in "
        "double quotes, column 2)",
        f"{known_data / 'train.jsonl'}:30: field 'rejected': missing",
    ]
    assert train["chosen_equals_rejected"] == 1
    assert train["duplicate_records"] == 2
    assert train["repeated_prompts"] == 1
    assert train["records_with_repeated_prompt"] == 3
    assert train["pairs"] == 27
    chosen, rejected = train["lengths"]["chosen"], train["lengths"]["rejected"]
    assert chosen["mean"] == pytest.approx((22 * 6 + 5 * 2) / 27)
    assert rejected["mean"] == pytest.approx((22 * 3 + 5 * 4) / 27)
    assert (chosen["median"], chosen["p95"], chosen["max"], chosen["min"]) == (6, 6, 6, 2)
    assert (rejected["median"], rejected["p95"], rejected["max"]) == (3, 4, 4)
    assert train["lengths"]["prompt"]["mean"] == 2
    assert train["chosen_longer_share"] == pytest.approx(22 / 27)
    assert train["rejected_longer_share"] == pytest.approx(5 / 27)
    assert train["mean_length_ratio"] == pytest.approx(142 / 86)
    assert train["truncation"] is None  # no tokenizer, no token counts

    # The verdict is the health check's own.
    assert HealthMonitor().length_bias(**length_bias_figures(train))
    assert train["length_bias"] is True
    valid = result["splits"]["valid"]
    assert valid["length_bias"] is False and valid["chosen_longer_share"] == 0
    assert result["prompts_shared_with_train"] == {"valid": 1}
    warnings = "\n".join(result["warnings"])
    for text in (
        "2 invalid",
        "1 pair(s) with chosen == rejected",
        "2 duplicate",
        "valid: 1 prompt",
    ):
        assert text in warnings
    assert "train: length bias: the chosen response is longer in 81% of 27 pairs" in warnings
    assert "(mean 5.3 vs 3.2 words, 1.65x)" in warnings


def test_balanced_data_has_no_length_warning(tmp_path):
    rows = [
        pair(f"q{i}", "a b c" if i % 2 else "a b", "x y" if i % 2 else "x y z") for i in range(30)
    ]
    result = audit(write_jsonl(tmp_path / "d.jsonl", rows))
    train = result["train"]
    assert train["chosen_longer_share"] == 0.5 and train["mean_length_ratio"] == 1.0
    assert train["length_bias"] is False and result["warnings"] == []


def test_token_lengths_and_cuts_are_trainings(llama_chatml, preference_data):
    from mlx_lm.utils import load_tokenizer

    from mlx_dpo.data import load_splits

    tokenizer = load_tokenizer(llama_chatml)
    result = audit(preference_data, tokenizer, max_length=24)
    train = result["splits"]["train"]
    assert result["length_unit"] == "tokens" and train["pairs"] == 24
    full = load_splits(preference_data, tokenizer, max_length=4096)["train"]
    chosen = [len(p.chosen_ids) for p in full.pairs]
    assert train["lengths"]["chosen"]["mean"] == pytest.approx(sum(chosen) / len(chosen))
    assert train["lengths"]["chosen"]["max"] == max(chosen)
    prompts = [len(p.prompt_ids) for p in full.pairs]
    assert train["lengths"]["prompt"]["max"] == max(prompts)
    cut = load_splits(preference_data, tokenizer, max_length=24)["train"].truncation
    assert cut["pairs"] > 0
    assert {k: train["truncation"][k] for k in ("pairs", "prompt", "response")} == {
        k: cut[k] for k in ("pairs", "prompt", "response")
    }


def test_fixture_data_is_length_biased_in_words(preference_data):
    """The tests' own preference rows: chosen has 6 words, rejected 5, in every pair."""
    train = audit(preference_data)["train"]
    assert train["chosen_longer_share"] == 1.0
    assert train["mean_length_ratio"] == pytest.approx(6 / 5)
    assert train["length_bias"] is True
    assert len(preference_rows(24)) == train["pairs"]
