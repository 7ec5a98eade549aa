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
from tests.damage import MODEL_DAMAGE, copy_folder, write_adapter
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


# ---------------------------------------------------------------------------------------------
# About twenty user mistakes that ended in a traceback (exit 1): each is exit 2 now, with one
# line that names the file (and line or field) or the flag.


def one_line_error(argv: list[str], capsys) -> str:
    """main's exit status must be 2; the error line it printed (only one, no traceback)."""
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("damage", list(MODEL_DAMAGE))
def test_a_damaged_model_folder_is_one_line_naming_its_file(
    damage, llama_chatml, preference_data, tmp_path, capsys
):
    folder = copy_folder(llama_chatml, tmp_path / "model")
    MODEL_DAMAGE[damage](folder)
    line = one_line_error(train_args(folder, preference_data, tmp_path / "run"), capsys)
    named = {
        "NaN": str(folder),
        "config.json": "config.json",
        "tokenizer": "tokenizer",
        "weights": "model.safetensors",
        "template": "train.jsonl:1: the chat template refuses",  # the first pair, file:line
    }
    expected = next(v for k, v in named.items() if k in damage)
    assert expected in line, line
    if "NaN" in damage:  # blamed on the model, not on the pairs or the learning rate
        assert "weights are not finite" in line and "pairs" not in line


def test_a_model_whose_own_log_probs_overflow_is_blamed_not_the_pairs(
    llama_chatml, preference_data, tmp_path, monkeypatch, capsys
):
    """Non-finite reference log-probs, before any step, are the model's fault: they ended in
    "non-finite loss at step 1 ... check these pairs" (exit 1)."""
    import numpy as np

    from mlx_dpo.trainer import run as trainer_run

    def overflowing(session, split, columns):
        return lambda positions: (np.full(len(positions), -np.inf), np.zeros(len(positions)))

    monkeypatch.setattr(trainer_run, "compute_reference", overflowing)
    monkeypatch.setenv("MLX_DPO_CACHE", str(tmp_path / "cache"))
    line = one_line_error(train_args(llama_chatml, preference_data, tmp_path / "run"), capsys)
    assert line.startswith(
        f"mlx-dpo: error: {llama_chatml}: the model's own log-probs are not finite"
    )
    assert "its weights are broken" in line
    assert not list((tmp_path / "cache").rglob("*.ref"))  # not kept for the next run


@pytest.mark.parametrize(
    ("flags", "expected"),
    [(["--epochs", "inf"], "--epochs: not a finite number"),
     (["--beta", "inf"], "--beta: not a finite number"),
     (["--lora-scale", "nan"], "--lora-scale: not a finite number"),
     (["--learning-rate", "nan"], "--learning-rate: not a finite number"),
     (["--seed", "-1"], "--seed: a seed is in [0, 4294967295]"),
     (["--seed", str(2**64)], "--seed: a seed is in [0, 4294967295]"),
     (["--lora-keys", ""], "'lora_keys' must name at least one module"),
     (["--lora-rank", "9" * 5000], "--lora-rank: not a whole number: a 5000-character value"),
     (["--iters", str(2**40)], "--iters: at most 2147483647"),
     (["--memory-limit-gb", "1e300"], "'memory_limit_gb' must be at most"),
     (["--lora-scale", "0"], "'lora_scale' must be > 0")],
    ids=lambda v: " ".join(v)[:30] if isinstance(v, list) else None,
)  # fmt: skip
def test_a_bad_flag_is_refused_where_it_is_typed(
    flags, expected, llama_chatml, preference_data, tmp_path, capsys
):
    argv = train_args(llama_chatml, preference_data, tmp_path / "run", *flags)
    assert expected in one_line_error(argv, capsys)
    assert not (tmp_path / "run").exists()


def test_eval_mistakes_are_found_before_the_work(llama_chatml, preference_data, tmp_path, capsys):
    base = ["eval", "--model", str(llama_chatml), "--data", str(preference_data)]
    assert "--batch-size must be > 0" in one_line_error([*base, "--batch-size", "0"], capsys)
    (tmp_path / "folder").mkdir()
    line = one_line_error([*base, "--output", str(tmp_path / "folder")], capsys)
    assert line.endswith(
        f"--output {tmp_path / 'folder'}: is a folder; give a file name (e.g. pairs.jsonl)"
    )


@pytest.mark.parametrize(
    ("config", "expected"),
    [({"num_layers": "2"}, "'num_layers' must be a whole number > 0, got '2'"),
     ({"lora_parameters": {"rank": "4", "scale": 20.0}}, "'lora_parameters.rank' must be a whole"),
     ({"lora_parameters": [1]}, "'lora_parameters' must be a mapping"),
     ({"lora_parameters": {"rank": 4, "scale": "big"}}, "'lora_parameters.scale' must be a finite"),
     ({"beta": "x"}, "'beta' must be a number, got 'x'"),
     ({"base_model": 3}, "'base_model' must be a model path or id")],
    ids=["num_layers", "rank", "lora_parameters", "scale", "beta", "base_model"],
)  # fmt: skip
def test_an_adapter_config_of_wrong_types_names_the_file_and_field(
    config, expected, llama_chatml, preference_data, tmp_path, capsys
):
    whole = {"base_model": str(llama_chatml), "num_layers": 2,
             "lora_parameters": {"rank": 4, "scale": 20.0, "dropout": 0.0}}  # fmt: skip
    adapter = write_adapter(tmp_path / "adapter", {**whole, **config})
    config_file = adapter / "adapter_config.json"
    for argv in (
        ["eval", "--adapter-path", str(adapter), "--data", str(preference_data)],
        ["export", "--adapter-path", str(adapter), "--save-path", str(tmp_path / "out")],
        train_args(llama_chatml, preference_data, tmp_path / "run", "--init-adapter", str(adapter)),
    ):
        line = one_line_error(argv, capsys)
        assert f"{config_file}: invalid adapter configuration: {expected}" in line, argv
    assert not (tmp_path / "out").exists()


def test_a_damaged_adapter_weights_file_is_named(llama_chatml, preference_data, tmp_path, capsys):
    whole = {"base_model": str(llama_chatml), "num_layers": 2,
             "lora_parameters": {"rank": 4, "scale": 20.0, "dropout": 0.0}}  # fmt: skip
    adapter = write_adapter(tmp_path / "adapter", whole, b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    line = one_line_error(
        ["eval", "--adapter-path", str(adapter), "--data", str(preference_data)], capsys
    )
    assert f"{adapter / 'adapters.safetensors'}: the adapter's weights are damaged" in line


def test_an_adapter_path_that_is_a_file_or_read_only_is_refused(
    llama_chatml, preference_data, tmp_path, read_only_folder, capsys
):
    (tmp_path / "a-file").write_text("mine")
    line = one_line_error(train_args(llama_chatml, preference_data, tmp_path / "a-file"), capsys)
    assert line.endswith(
        f"--adapter-path {tmp_path / 'a-file'}: is a file; a run directory is a folder"
    )
    assert (tmp_path / "a-file").read_text() == "mine"
    for run_dir in (read_only_folder, read_only_folder / "run"):
        line = one_line_error(train_args(llama_chatml, preference_data, run_dir), capsys)
        assert f"--adapter-path {run_dir}: cannot write there" in line


def test_a_yaml_cannot_grant_remote_code(llama_chatml, preference_data, tmp_path, capsys):
    """The README says only the flag on the command grants it; a YAML's
    `trust_remote_code: true` did. Refused, naming the file and line."""
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {llama_chatml}\ndata: {preference_data}\ntrust_remote_code: true\n")
    line = one_line_error(
        ["train", str(config), "--no-tui", "--adapter-path", str(tmp_path / "r")], capsys
    )
    assert line == (
        f"mlx-dpo: error: {config}:3: 'trust_remote_code' is granted only by "
        "--trust-remote-code on the command line, never by a file"
    )


def test_a_health_threshold_names_the_yaml_line(llama_chatml, preference_data, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {llama_chatml}\ndata: {preference_data}\nhealth:\n  kl_limit: -1\n")
    line = one_line_error(["train", str(config), "--no-tui"], capsys)
    assert line.startswith(f"mlx-dpo: error: {config}:3: health.kl_limit: must be")


def test_a_line_break_quoted_from_a_file_stays_on_the_line(tmp_path, capsys):
    """A YAML key "\\r" split the one-line message in two (found by tests/e2e/test_fuzz.py)."""
    config = tmp_path / "run.yaml"
    config.write_text('health:\n  "\\r\\n": 1\n')
    line = one_line_error(["train", str(config), "--no-tui"], capsys)
    assert "health.\\r\\n: unknown threshold" in line
