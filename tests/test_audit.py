"""`mlx-dpo data audit`: exact figures on a data set built with known lengths, the same
length-bias verdict as the run's health check, token counts and cuts exactly as training
makes them, and bad records reported instead of refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlx_dpo.audit import audit, length_bias_figures
from mlx_dpo.cli import main
from mlx_dpo.health import HealthMonitor
from tests.conftest import preference_rows, write_jsonl


def pair(prompt: str, chosen: str, rejected: str) -> dict:
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


@pytest.fixture
def known(tmp_path) -> Path:
    """train: 20 pairs with 6-word chosen / 3-word rejected, 5 with 2 / 4, two copies of the
    first pair, one pair with chosen == rejected, a line that is not JSON and a record with a
    missing field. valid: 3 balanced pairs, one of whose prompts is also in train."""
    folder = tmp_path / "known"
    rows = [pair(f"p{i} q", "a b c d e f", "x y z") for i in range(20)]
    rows += [pair(f"r{i} q", "c d", "r s t u") for i in range(5)]
    rows += [rows[0], rows[0]]
    rows += [pair("same q", "one two", "one two")]
    write_jsonl(folder / "train.jsonl", rows)
    with open(folder / "train.jsonl", "a") as handle:
        handle.write("{not json\n")
        handle.write(json.dumps({"prompt": "no rejected", "chosen": "c"}) + "\n")
    write_jsonl(
        folder / "valid.jsonl",
        [pair("p1 q", "a b", "c d"), pair("v2 q", "a b c", "d e f"), pair("v3", "a", "b")],
    )
    return folder


def test_figures_on_a_data_set_with_known_lengths(known):
    result = audit(known)
    train = result["splits"]["train"]
    assert result["length_unit"] == "words"
    assert train["records"] == 30
    assert train["valid_pairs"] == 27
    assert train["invalid_records"] == 2
    assert train["problems"] == [
        f"{known / 'train.jsonl'}:29: not valid JSON (Expecting property name enclosed in "
        "double quotes, column 2)",
        f"{known / 'train.jsonl'}:30: field 'rejected': missing",
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


def test_cli_report_json_and_plot(known, llama_chatml, tmp_path, capsys):
    assert main(["data", "audit", str(known)]) == 0  # bad records are reported, not fatal
    text = capsys.readouterr().out
    assert "WARNING" in text and "too few pairs to judge" in text
    assert "train.jsonl:30: field 'rejected': missing" in text
    assert "pass --model for exact token counts" in text

    plot = tmp_path / "lengths.png"
    assert main(["data", "audit", str(known), "--json", "--plot", str(plot)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["train"]["duplicate_records"] == 2
    assert "pair_lengths" not in out["splits"]["train"]
    from PIL import Image

    with Image.open(plot) as image:
        assert image.format == "PNG" and image.size == (900, 700)

    code = main(["data", "audit", str(known), "--model", str(llama_chatml), "--max-length", "16"])
    text = capsys.readouterr().out
    assert code == 0 and "lengths in tokens" in text and "cut at max_length 16" in text


@pytest.mark.parametrize(
    "args,expected",
    [
        (["/no/such/data"], "no such data file or folder"),
        (["{data}", "--plot", "out.svg"], "PNG"),
        (["{data}", "--model", "/no/such/model"], "no such model folder"),
    ],
)
def test_mistakes_exit_2(known, capsys, args, expected):
    code = main(["data", "audit", *[a.replace("{data}", str(known)) for a in args]])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err


def test_fixture_data_is_length_biased_in_words(preference_data):
    """The tests' own preference rows: chosen has 6 words, rejected 5, in every pair."""
    train = audit(preference_data)["train"]
    assert train["chosen_longer_share"] == 1.0
    assert train["mean_length_ratio"] == pytest.approx(6 / 5)
    assert train["length_bias"] is True
    assert len(preference_rows(24)) == train["pairs"]
