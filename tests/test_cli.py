"""The command line as a user meets it (mlx_dpo/cli/__init__.py): the subcommands, the exit
statuses, messages without tracebacks; end to end through `python -m mlx_dpo.cli` (as the
dashboard starts it): train, eval output, and adapters that mlx-lm loads as they are. Each
subcommand's own checks are in test_cli_<subcommand>.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import mlx_dpo.cli as cli
from mlx_dpo.cli import build_parser, main
from mlx_dpo.errors import UserError
from tests.shared import train_args


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mlx_dpo.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_the_subcommands_in_the_order_help_lists_them(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "{train,view,eval,export,compare,data,collect,pairs}" in out
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert list(sub.choices) == list(cli.SUBCOMMANDS) == [
        "train", "view", "eval", "export", "compare", "data", "collect", "pairs",
    ]  # fmt: skip


def raising(error: BaseException):
    """A subcommand's run that raises `error`."""

    def run(args) -> int:
        raise error

    return run


def test_a_user_error_exits_2_with_one_message(monkeypatch, tmp_path, capsys):
    error = UserError("data.jsonl:3: field 'chosen': missing", ["first", "second"])
    monkeypatch.setattr(cli.view, "run", raising(error))
    assert main(["view", str(tmp_path)]) == cli.EXIT_USER_ERROR == 2
    err = capsys.readouterr().err
    assert err.startswith("mlx-dpo: error: data.jsonl:3: field 'chosen': missing\n  first\n")
    assert "Traceback" not in err


def test_ctrl_c_exits_130(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cli.view, "run", raising(KeyboardInterrupt()))
    assert main(["view", str(tmp_path)]) == 130
    assert capsys.readouterr().err == "mlx-dpo: interrupted\n"


def test_a_bug_is_not_hidden_as_a_user_error(monkeypatch, tmp_path):
    monkeypatch.setattr(cli.view, "run", raising(ValueError("a bug")))
    with pytest.raises(ValueError, match="a bug"):
        main(["view", str(tmp_path)])


def test_no_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 2
    assert "the following arguments are required: command" in capsys.readouterr().err


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


def test_no_tui_without_a_terminal(llama_chatml, preference_data, tmp_path):
    # No --no-tui: stdin/stdout are pipes, so plain lines are printed.
    args = [
        a for a in train_args(llama_chatml, preference_data, tmp_path / "run") if a != "--no-tui"
    ]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert "step 4/4 | loss" in result.stdout


def test_importing_the_cli_loads_no_mlx():
    # `mlx-dpo --help` and the user-error paths stay fast: MLX loads with the command using it.
    code = (
        "import sys, mlx_dpo.cli\n"
        "print(sorted(m for m in sys.modules if m == 'mlx' or m.startswith(('mlx.', 'mlx_lm'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "[]"
