"""`mlx-dpo train` (mlx_dpo/cli/train.py): the configuration from YAML, flags and a resumed
run; bad input exits 2 with its location and no traceback; a run directory is never
overwritten; the demo's settings and the order of its steps around the run; --plan."""

from __future__ import annotations

import os
import shlex

import pytest

import mlx_dpo.cli.train as train_command
from mlx_dpo import demo
from mlx_dpo.cli import build_parser, main
from mlx_dpo.cli.train import train_config
from mlx_dpo.config import build_config
from mlx_dpo.events import read_events, write_status
from tests.shared import train_args


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
    path = tmp_path / "c.yaml"
    path.write_text("model: m\ndata: d\nbeta: 0.3\nlearning_rate: 1e-4\n")
    args = build_parser().parse_args(["train", str(path), "--beta", "0.7"])
    config, is_demo = train_config(args)
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


def test_the_default_configuration_is_the_documented_one():
    config, is_demo = train_config(build_parser().parse_args(["train"]))
    assert is_demo
    for key, value in demo.DEMO_SETTINGS.items():
        assert getattr(config, key) == value, key
    assert config.data == str(demo.demo_data_dir())


def test_the_demo_with_iters_drops_its_epochs():
    config, is_demo = train_config(build_parser().parse_args(["train", "--iters", "3"]))
    assert is_demo and config.iters == 3 and config.epochs is None


def test_resume_needs_a_run_that_started(tmp_path, capsys):
    assert main(["train", "--resume", "--no-tui"]) == 2
    assert "--resume needs --adapter-path" in capsys.readouterr().err
    assert main(["train", "--resume", "--adapter-path", str(tmp_path), "--no-tui"]) == 2
    assert "no run has started here (no config.yaml)" in capsys.readouterr().err


def test_resume_reads_the_saved_config_but_never_its_trust(tmp_path):
    (tmp_path / "config.yaml").write_text("model: m\ndata: d\nbeta: 0.3\ntrust_remote_code: true\n")
    args = ["train", "--resume", "--adapter-path", str(tmp_path), "--beta", "0.4"]
    config, is_demo = train_config(build_parser().parse_args(args))
    assert not is_demo and config.model == "m" and config.beta == 0.4
    assert config.trust_remote_code is False
    config, _ = train_config(build_parser().parse_args([*args, "--trust-remote-code"]))
    assert config.trust_remote_code is True


@pytest.mark.parametrize(
    ("code", "state", "reported"),
    [(0, "finished", "after"), (1, "failed", None), (0, "training", "later"),
     (0, "paused", "later"), (0, "stopped", "later")],
)  # fmt: skip
def test_the_demo_reports_around_the_run(monkeypatch, tmp_path, code, state, reported):
    """prepare (model and config), the test split before, the run, the report after: the
    report only when the run finished; a run left going in the background (the dashboard's
    "leave running"), paused or stopped gets where its results will be instead."""
    steps = []
    monkeypatch.setattr(demo, "prepare_demo", lambda config: steps.append("prepare") or config)
    monkeypatch.setattr(
        demo, "test_report", lambda config, adapter_path, examples: steps.append("before") or {}
    )
    monkeypatch.setattr(demo, "report_demo", lambda config, before: steps.append("after"))
    monkeypatch.setattr(demo, "report_later", lambda config, before, status: steps.append("later"))

    def launch(config, use_tui, resume=False):
        steps.append(("run", use_tui, resume))
        write_status(config.adapter_path, state=state, step=20, total_steps=40)
        return code

    monkeypatch.setattr(train_command, "launch", launch)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--no-tui"]) == code
    expected = ["prepare", "before", ("run", False, False)] + ([reported] if reported else [])
    assert steps == expected


@pytest.mark.parametrize("state", ["training", "paused", "stopped"])
def test_an_unfinished_demo_says_where_its_results_will_be(capsys, state):
    config = build_config({**demo.demo_config_values(), "adapter_path": "adapters/run x"}, {})
    status = {"state": state, "step": 88, "total_steps": 176, "pid": 4242}
    assert demo.report_or_defer(config, {"prefers_chosen": 0.59}, status) is False
    out = capsys.readouterr().out
    assert "What changed on the held-out test split" not in out
    assert "step 88/176" in out and "0.59 of the held-out test pairs" in out
    data = demo.demo_data_dir()
    run = shlex.quote(os.path.abspath("adapters/run x"))  # hints name it absolute
    assert f"mlx-dpo eval --adapter-path {run} --data {data} --split test" in out
    assert f"mlx-dpo compare --adapter-path {run} --data {data} --split test" in out
    if state == "stopped":
        assert "stopped" in out and f"mlx-dpo train --resume --adapter-path {run}" in out
    else:
        assert "process 4242" in out and f"mlx-dpo view {run}" in out
        assert ("paused" if state == "paused" else "still training in the background") in out


def test_plan_flag_says_it_will_not_fit_and_how_to(llama_chatml, preference_data, capsys, tmp_path):
    run_dir = tmp_path / "run"
    code = main(
        [
            "train",
            "--model",
            str(llama_chatml),
            "--data",
            str(preference_data),
            "--adapter-path",
            str(run_dir),
            "--batch-size",
            "24",
            "--max-length",
            "4096",
            "--memory-limit-gb",
            "0.02",
            "--plan",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "will not fit" in out
    # Smaller batches with accumulation keep the effective batch of 24.
    suggestion = next(line for line in out.splitlines() if "--grad-accumulation" in line)
    batch, accumulation = (int(w) for w in suggestion.split()[1:4:2])
    assert "to fit:" in out and batch * accumulation == 24 and batch < 24
    for name in ("base weights", "LoRA parameters", "optimizer state", "activations", "logits"):
        assert name in out
    assert not (run_dir / "metrics.jsonl").exists()  # nothing was trained


def test_a_tilde_in_the_adapter_path_is_the_home_folder(
    llama_chatml, preference_data, tmp_path, monkeypatch, capsys
):
    """`--adapter-path ~/runs/x` (quoted, or from a YAML) made a literal ./~ folder, and the
    hint printed a `~` the shell would expand elsewhere."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert main(train_args(llama_chatml, preference_data, "~/runs/x")) == 0
    run_dir = tmp_path / "home" / "runs" / "x"
    assert (run_dir / "adapters.safetensors").is_file()
    assert not (tmp_path / "~").exists()
    hint = capsys.readouterr().out.strip().splitlines()[-1]
    assert hint.endswith(f"--adapter-path {run_dir}") and "~" not in hint


@pytest.mark.parametrize("flag", ["--adapter-path", "--init-adapter", "--model", "--data"])
def test_an_empty_path_is_refused(llama_chatml, preference_data, tmp_path, capsys, flag):
    args = train_args(llama_chatml, preference_data, tmp_path / "run")
    args = [*args, flag, ""]
    assert main(args) == 2
    assert f"{flag}: an empty path" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("mode", ["cached", "live"])
def test_a_read_only_cache_folder_is_no_cache_with_one_warning(
    llama_chatml, preference_data, tmp_path, read_only_folder, monkeypatch, capsys, mode
):
    """The run went on to write the cache (the reference log-probs, the weights' hash memo)
    and ended in a traceback, with --reference live too."""
    monkeypatch.setenv("MLX_DPO_CACHE", str(read_only_folder / "cache"))
    run_dir = tmp_path / "run"
    assert main(train_args(llama_chatml, preference_data, run_dir, "--reference", mode)) == 0
    out = capsys.readouterr().out
    warnings = [e["message"] for e in read_events(run_dir) if e.get("level") == "warning"]
    cache_warnings = [w for w in warnings if "cache" in w]
    assert cache_warnings == [
        f"cache folder {read_only_folder / 'cache'}: Read-only file system; going on without a "
        "cache (nothing is kept between runs; set MLX_DPO_CACHE to a folder you can write)"
    ]
    assert out.count("warning: cache folder") == 1
    assert list(read_only_folder.iterdir()) == []


def test_a_damaged_reference_cache_is_said_and_recomputed(
    llama_chatml, preference_data, tmp_path, monkeypatch, capsys
):
    """A single damaged number in the cache trained against a wrong reference and ended
    with "No problems seen"; now the entry fails its checksum, the run says so (console and
    a warning event) and computes the reference again: the same adapters as the first run."""
    monkeypatch.setenv("MLX_DPO_CACHE", str(tmp_path / "cache"))
    assert main(train_args(llama_chatml, preference_data, tmp_path / "first")) == 0
    entries = sorted((tmp_path / "cache" / "reference").glob("*.ref"))
    assert len(entries) == 2  # train and valid
    for entry in entries:
        data = bytearray(entry.read_bytes())
        data[-5] ^= 0x40
        entry.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(train_args(llama_chatml, preference_data, tmp_path / "second")) == 0
    out = capsys.readouterr().out
    warned = [e["message"] for e in read_events(tmp_path / "second") if e.get("level") == "warning"]
    assert len(warned) == 2 and all("checksum does not match" in w for w in warned)
    assert out.count("checksum does not match") == 2
    first = (tmp_path / "first" / "adapters.safetensors").read_bytes()
    assert (tmp_path / "second" / "adapters.safetensors").read_bytes() == first


def test_a_setting_out_of_range_names_its_yaml_line_or_its_flag(
    llama_chatml, preference_data, tmp_path, capsys
):
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {llama_chatml}\ndata: {preference_data}\nbeta: .inf\n")
    assert main(["train", str(config), "--no-tui", "--adapter-path", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err == (
        f"mlx-dpo: error: invalid configuration: {config}:3: 'beta' must be a finite number, "
        "got inf\n"
    )
    argv = [*train_args(llama_chatml, preference_data, tmp_path / "r"), "--lora-keys", ""]
    assert main(argv) == 2
    assert "invalid configuration: --lora-keys: 'lora_keys' must name" in capsys.readouterr().err
