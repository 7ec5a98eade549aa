"""`mlx-dpo compare` (mlx_dpo/cli/compare.py): the JSON and text output, and every mistake
exits 2 with the reason and no traceback, the flags' own before anything is loaded."""

from __future__ import annotations

import json

import pytest

from mlx_dpo.cli import main
from tests.conftest import preference_rows


def test_compare_on_data_shows_the_pair(compare_run, compare_data, capsys):
    code = main(
        [
            "compare",
            "--adapter-path",
            str(compare_run),
            "--data",
            str(compare_data),
            "--limit",
            "2",
            "--max-tokens",
            "6",
            "--json",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["reference"] == "base" and len(out["results"]) == 2
    first = out["results"][0]
    # A data folder compares on its test split by default.
    assert first["source"].endswith("test.jsonl:1")
    expected = preference_rows(3, seed=2, start=200)[0]  # plain strings (200 % 3 == 2)
    assert first["chosen"] == expected["chosen"]
    assert first["rejected"] == expected["rejected"]
    assert first["policy_match"]["closer_to"] in ("chosen", "rejected", "neither")

    assert (
        main(["compare", "--adapter-path", str(compare_run), "--prompt", "hi", "--max-tokens", "4"])
        == 0
    )
    text = capsys.readouterr().out
    assert "reference: base" in text and "  policy " in text and "[user] hi" in text


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--adapter-path", "/no/such/run", "--prompt", "hi"], "no such adapter folder"),
        (["--adapter-path", "{run}", "--prompt", "hi", "--max-tokens", "0"], "--max-tokens"),
        (["--adapter-path", "{run}", "--data", "/no/such/data"], "no such data file or folder"),
    ],
)
def test_mistakes_exit_2(compare_run, capsys, args, expected):
    code = main(["compare", *[a.replace("{run}", str(compare_run)) for a in args]])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--prompt", "hi", "--temp", "-1"], "--temp must be >= 0, got -1.0"),
        (["--prompt", "hi", "--limit", "0"], "--limit must be > 0, got 0"),
        (["--prompt", "hi", "--prompt", "  "], "--prompt: empty prompt"),
    ],
)
def test_flag_mistakes_are_refused_before_the_adapter_is_read(capsys, args, expected):
    code = main(["compare", "--adapter-path", "/no/such/run", *args])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "no such adapter folder" not in err


def test_prompts_or_data_one_of_them(capsys):
    for args in ([], ["--prompt", "hi", "--data", "d"]):
        with pytest.raises(SystemExit) as exit_:
            main(["compare", "--adapter-path", "run", *args])
        assert exit_.value.code == 2
    assert "one of the arguments --prompt --data is required" in capsys.readouterr().err
