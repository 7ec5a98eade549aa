"""The command line as a user meets it: exit codes, messages without tracebacks, eval output,
and adapters that mlx-lm loads as they are."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mlx_dpo.cli import main
from mlx_dpo.events import read_events


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mlx_dpo.cli", *args], capture_output=True, text=True, timeout=300
    )


def train_args(model, data, run_dir, *extra):
    return [
        "train",
        "--model",
        str(model),
        "--data",
        str(data),
        "--adapter-path",
        str(run_dir),
        "--iters",
        "4",
        "--learning-rate",
        "2e-3",
        "--beta",
        "0.5",
        "--no-tui",
        *extra,
    ]


@pytest.mark.parametrize(
    "content,expected",
    [
        (b'{"prompt": "a", "chosen": "b"}\n', "train.jsonl:1: field 'rejected': missing"),
        (b"{not json\n", "train.jsonl:1: not valid JSON"),
        (b"", "train.jsonl: empty"),
        (
            b'{"prompt": "a", "chosen": "b", "rejected": "b"}\n',
            "train.jsonl:1: fields 'chosen' and 'rejected': identical",
        ),
    ],
)
def test_bad_data_exits_2_with_location_and_no_traceback(
    llama_chatml, tmp_path, capsys, content, expected
):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_bytes(content)
    code = main(train_args(llama_chatml, tmp_path / "data", tmp_path / "run"))
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "yaml_text,expected",
    [
        (
            "lerning_rate: 0.1\n",
            "config.yaml:1: unknown key 'lerning_rate' (did you mean 'learning_rate'?)",
        ),
        ("beta: 0\n", "'beta' must be > 0"),
        ("model: m\nlora_rank: -1\n", "'lora_rank' must be > 0"),
        ("label_smoothing: 0.5\n", "'label_smoothing' must be in [0, 0.5)"),
        (
            "batch_size: four\n",
            "config.yaml:1: 'batch_size' must be an integer or 'auto', got 'four'",
        ),
        (
            "loss: hinge\nlabel_smoothing: 0.1\n",
            "'label_smoothing' applies to the sigmoid, robust,",
        ),
        ("beta: 0.1\nmodel: a: b\n", "config.yaml:2: not valid YAML"),
    ],
)
def test_bad_config_is_refused(tmp_path, capsys, yaml_text, expected):
    path = tmp_path / "config.yaml"
    path.write_text(yaml_text)
    code = main(["train", str(path), "--no-tui"])
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err
    assert "Traceback" not in err


def test_flags_win_over_yaml(tmp_path):
    from mlx_dpo.cli import _train_config, build_parser

    path = tmp_path / "c.yaml"
    path.write_text("model: m\ndata: d\nbeta: 0.3\nlearning_rate: 1e-4\n")
    args = build_parser().parse_args(["train", str(path), "--beta", "0.7"])
    config, is_demo = _train_config(args)
    assert config.beta == 0.7 and config.learning_rate == 1e-4 and not is_demo


@pytest.mark.parametrize("model_arg", ["/no/such/folder", "./missing-model"])
def test_missing_model_folder(model_arg, preference_data, tmp_path, capsys):
    code = main(train_args(model_arg, preference_data, tmp_path / "run"))
    err = capsys.readouterr().err
    assert code == 2 and "no such model folder" in err


def test_folder_that_is_not_a_model(preference_data, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = main(train_args(tmp_path / "empty", preference_data, tmp_path / "run"))
    assert code == 2 and "not a model folder" in capsys.readouterr().err


def test_train_then_eval_then_mlx_lm_loads_the_adapter(llama_chatml, preference_data, tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(*train_args(llama_chatml, preference_data, run_dir))
    assert result.returncode == 0, result.stderr
    assert "step 4/4" in result.stdout
    config = json.loads((run_dir / "adapter_config.json").read_text())
    assert config["fine_tune_type"] == "lora"
    assert config["num_layers"] == 2
    assert {"rank", "scale", "dropout"} <= set(config["lora_parameters"])

    out = tmp_path / "pairs.jsonl"
    result = run_cli(
        "eval",
        "--adapter-path",
        str(run_dir),
        "--data",
        str(preference_data),
        "--split",
        "test",
        "--json",
        "--output",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["pairs"] == 8
    assert {"loss", "rewards/accuracies", "rewards/margins", "kl"} <= set(metrics)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 8
    row = rows[0]
    assert row["reward_chosen"] == pytest.approx(
        0.5 * (row["policy_chosen_logp"] - row["reference_chosen_logp"]), rel=1e-5
    )
    accuracy = sum(r["reward_chosen"] > r["reward_rejected"] for r in rows) / 8
    assert metrics["rewards/accuracies"] == pytest.approx(accuracy)

    check = (
        "import mlx_lm, sys; m, t = mlx_lm.load(sys.argv[1], adapter_path=sys.argv[2]); "
        "print(mlx_lm.generate(m, t, 'what color', max_tokens=3))"
    )
    result = subprocess.run(
        [sys.executable, "-c", check, str(llama_chatml), str(run_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_existing_run_directory_is_not_overwritten(llama_chatml, preference_data, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("")
    (run_dir / "config.yaml").write_text(f"model: {llama_chatml}\n")  # a run started here
    code = main(train_args(llama_chatml, preference_data, run_dir))
    assert code == 2 and "--resume" in capsys.readouterr().err


def test_an_attempt_that_never_started_is_run_again(
    llama_chatml, preference_data, tmp_path, capsys
):
    """A bad input (or a kill while loading) left events but no run: --resume has nothing to
    continue and says so; the same command again starts the run afresh."""
    run_dir = tmp_path / "run"
    missing = tmp_path / "nowhere"
    assert main(train_args(llama_chatml, missing, run_dir)) == 2
    assert read_events(run_dir)[-1]["status"] == "failed"
    assert main(train_args(llama_chatml, preference_data, run_dir) + ["--resume"]) == 2
    assert "without --resume" in capsys.readouterr().err
    assert main(train_args(llama_chatml, preference_data, run_dir)) == 0
    events = read_events(run_dir)
    assert [e["event"] for e in events].count("run_start") == 1
    assert events[-1]["status"] == "completed"


def test_no_tui_without_a_terminal(llama_chatml, preference_data, tmp_path):
    # No --no-tui: stdin/stdout are pipes, so plain lines are printed.
    args = [
        a for a in train_args(llama_chatml, preference_data, tmp_path / "run") if a != "--no-tui"
    ]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert "step 4/4 | loss" in result.stdout
