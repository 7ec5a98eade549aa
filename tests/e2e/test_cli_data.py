"""`mlx-dpo data audit` (mlx_dpo/cli/data.py): the readable report, --json and --plot, the
default max_length with --model, and every mistake exits 2 with the reason and no
traceback."""

from __future__ import annotations

import json

import pytest

from mlx_dpo.cli import main
from mlx_dpo.config import TrainConfig


def test_cli_report_json_and_plot(known_data, llama_chatml, tmp_path, capsys):
    assert main(["data", "audit", str(known_data)]) == 0  # bad records are reported, not fatal
    text = capsys.readouterr().out
    assert "WARNING" in text and "too few pairs to judge" in text
    assert "train.jsonl:30: field 'rejected': missing" in text
    assert "pass --model for exact token counts" in text

    plot = tmp_path / "lengths.png"
    assert main(["data", "audit", str(known_data), "--json", "--plot", str(plot)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["train"]["duplicate_records"] == 2
    assert "pair_lengths" not in out["splits"]["train"]
    from PIL import Image

    with Image.open(plot) as image:
        assert image.format == "PNG" and image.size == (900, 700)

    code = main(
        ["data", "audit", str(known_data), "--model", str(llama_chatml), "--max-length", "16"]
    )
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
def test_mistakes_exit_2(known_data, capsys, args, expected):
    code = main(["data", "audit", *[a.replace("{data}", str(known_data)) for a in args]])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err


def test_max_length_with_a_model_defaults_to_trainings(known_data, llama_chatml, capsys):
    assert main(["data", "audit", str(known_data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["max_length"] is None  # words: nothing is cut
    assert main(["data", "audit", str(known_data), "--model", str(llama_chatml), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["max_length"] == TrainConfig().max_length
    assert out["train"]["truncation"]["max_length"] == TrainConfig().max_length


def test_a_max_length_below_8_is_refused(known_data, capsys):
    assert main(["data", "audit", str(known_data), "--max-length", "7"]) == 2
    assert "--max-length must be >= 8, got 7" in capsys.readouterr().err
