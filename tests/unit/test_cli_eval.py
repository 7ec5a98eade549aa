"""`mlx-dpo eval` (mlx_dpo/cli/eval.py): the flags reach the evaluation with their defaults,
the result prints as a table or one JSON object, and a mistake exits 2. The evaluation itself
runs end to end in test_cli.py."""

from __future__ import annotations

import json

import pytest

from mlx_dpo import evaluate
from mlx_dpo.cli import main

RESULT = {"pairs": 8, "loss": 0.6931, "rewards/accuracies": 0.625}


@pytest.fixture
def calls(monkeypatch) -> list[dict]:
    calls = []

    def fake_evaluate(**options):
        calls.append(options)
        return dict(RESULT)

    monkeypatch.setattr(evaluate, "evaluate_command", fake_evaluate)
    return calls


def test_defaults_reach_the_evaluation(calls, capsys):
    assert main(["eval", "--data", "d"]) == 0
    assert calls == [
        {
            "model": None,
            "adapter_path": None,
            "data": "d",
            "split": "test",
            "beta": None,  # the adapter's, else TrainConfig's
            "batch_size": None,  # the forward batch the memory plan allows
            "max_length": None,
            "output": None,
            "trust_remote_code": False,
            "data_config": None,
            "data_revision": None,
            "reference_mode": "cached",
        }
    ]
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "8 pairs (test split of d)",
        "  loss                   0.6931",
        "  rewards/accuracies     0.6250",
    ]


def test_flags_reach_the_evaluation_and_json_prints_one_object(calls, capsys):
    args = ["eval", "--model", "m", "--adapter-path", "a", "--data", "d", "--split", "valid",
            "--beta", "0.2", "--batch-size", "2", "--max-length", "64", "--output", "o.jsonl",
            "--trust-remote-code", "--data-config", "c", "--data-revision", "r",
            "--reference", "live", "--json"]  # fmt: skip
    assert main(args) == 0
    assert calls[0] == {
        "model": "m",
        "adapter_path": "a",
        "data": "d",
        "split": "valid",
        "beta": 0.2,
        "batch_size": 2,
        "max_length": 64,
        "output": "o.jsonl",
        "trust_remote_code": True,
        "data_config": "c",
        "data_revision": "r",
        "reference_mode": "live",
    }
    assert json.loads(capsys.readouterr().out) == RESULT


def test_data_is_required(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--model", "m"])
    assert exit_.value.code == 2
    assert "the following arguments are required: --data" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--beta", "0"], "--beta must be > 0, got 0.0"),
    ],
)
def test_mistakes_exit_2_before_anything_loads(capsys, args, expected):
    assert main(["eval", "--model", "/no/such/model", "--data", "d", *args]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_without_a_model_or_an_adapter_that_records_one(capsys):
    assert main(["eval", "--data", "d"]) == 2
    assert "no model given: pass --model" in capsys.readouterr().err


def test_paths_expand_the_home_folder_and_variables(calls, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RUNS", str(tmp_path / "runs"))
    args = ["eval", "--adapter-path", "$RUNS/a", "--data", "~/d", "--output", "~/o.jsonl"]
    assert main(args) == 0
    assert calls[0]["adapter_path"] == f"{tmp_path}/runs/a"
    assert calls[0]["data"] == f"{tmp_path}/d"
    assert calls[0]["output"] == f"{tmp_path}/o.jsonl"


@pytest.mark.parametrize("flag", ["--output", "--adapter-path", "--data"])
def test_an_empty_path_exits_2(calls, capsys, flag):
    args = {"--data": "d", flag: ""}
    assert main(["eval", *[part for item in args.items() for part in item]]) == 2
    assert f"{flag}: an empty path" in capsys.readouterr().err
    assert calls == []


def test_json_is_strict_json_with_null_for_non_finite_numbers(monkeypatch, capsys):
    """`eval --json` printed NaN, which is not JSON."""
    monkeypatch.setattr(
        evaluate,
        "evaluate_command",
        lambda **_: {"pairs": 8, "loss": float("nan"), "kl": float("inf")},
    )
    assert main(["eval", "--data", "d", "--json"]) == 0

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    printed = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert printed == {"pairs": 8, "loss": None, "kl": None}


def test_train_then_eval_reads_the_cached_reference(
    llama_chatml, preference_data, tmp_path, monkeypatch, capsys
):
    """`mlx-dpo train` cached the valid split's reference; `mlx-dpo eval` of its adapter on
    that split runs no reference pass, and reports the model's own log-prob preference."""
    from mlx_dpo.trainer import batch_logps
    from tests.shared import train_args

    monkeypatch.setenv("MLX_DPO_CACHE", str(tmp_path / "cache"))
    run_dir = tmp_path / "run"
    assert main(train_args(llama_chatml, preference_data, run_dir)) == 0
    capsys.readouterr()
    passes = []
    reference_mode = batch_logps.reference_mode
    monkeypatch.setattr(
        batch_logps, "reference_mode", lambda *a: passes.append(a) or reference_mode(*a)
    )
    args = ["eval", "--adapter-path", str(run_dir), "--data", str(preference_data)]
    assert main([*args, "--split", "valid", "--json"]) == 0
    out, err = capsys.readouterr()
    assert passes == [] and "reference log-probs of 8 pairs read from the cache" in err
    printed = json.loads(out)
    assert 0 <= printed["logps/preference_accuracy"] <= 1
    assert 0 <= printed["logps/preference_accuracy_per_token"] <= 1
    assert main([*args, "--split", "valid", "--reference", "live"]) == 0
    out, _ = capsys.readouterr()
    assert len(passes) == 1  # live: the reference of each batch, all 8 pairs in one here
    assert main([*args, "--split", "valid", "--reference", "live", "--batch-size", "4"]) == 0
    out, _ = capsys.readouterr()
    assert len(passes) == 1 + 2  # two batches of 4
    lines = out.splitlines()
    assert lines[0] == f"8 pairs (valid split of {preference_data})"
    shown = {line.split()[0]: float(line.split()[1]) for line in lines[1:]}
    assert shown["logps/preference_accuracy"] == round(printed["logps/preference_accuracy"], 4)
    assert len({line.rindex(" ") for line in lines[1:]}) == 1  # one column of numbers
