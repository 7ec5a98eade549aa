"""`mlx-dpo export` (mlx_dpo/cli/export.py): the flags reach export_model, the command runs as
the dashboard runs it (`python -m mlx_dpo.cli export`), and every mistake exits 2 with the
reason and no traceback, before anything is written."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

import mlx_dpo.cli.export as export_command
from mlx_dpo.cli import main
from tests.interop import build_quantizable


def test_flags_reach_export_model(monkeypatch, tmp_path):
    calls = []

    def fake_export_model(adapter_path, save_path, **options):
        calls.append((adapter_path, save_path, options))
        options["on_line"]("done: fake")

    monkeypatch.setattr(export_command, "export_model", fake_export_model)
    args = ["export", "--adapter-path", "run", "--save-path", "out"]
    assert main(args) == 0
    assert main([*args, "--model", "base", "--quantize", "--overwrite", "--trust-remote-code"]) == 0
    plain, flagged = calls
    assert plain[:2] == flagged[:2] == ("run", "out")
    assert {k: v for k, v in plain[2].items() if k != "on_line"} == {
        "model": None,
        "quantize": False,
        "overwrite": False,
        "trust_remote_code": False,
    }
    assert {k: v for k, v in flagged[2].items() if k != "on_line"} == {
        "model": "base",
        "quantize": True,
        "overwrite": True,
        "trust_remote_code": True,
    }


def test_dequantize_and_quantize_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["export", "--adapter-path", "r", "--save-path", "o", "--dequantize", "--quantize"])
    assert exit_.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_cli_as_the_dashboard_runs_it(export_runs, tmp_path):
    out = tmp_path / "fused"
    command = [
        sys.executable,
        "-m",
        "mlx_dpo.cli",
        "export",
        "--adapter-path",
        str(export_runs["llama-q4"]),
    ]
    result = subprocess.run(
        [*command, "--save-path", str(out), "--dequantize"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "loading" in result.stdout and "fusing LoRA layers (dequantizing)" in result.stdout
    assert "done:" in result.stdout
    assert re.search(r"\(\d+\.\d [KMG]B on disk", result.stdout), result.stdout
    # A second export to the same folder is refused, then replaced with --overwrite.
    again = subprocess.run(
        [*command, "--save-path", str(out)], capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 2 and "already exists" in again.stderr
    assert "Traceback" not in again.stderr
    assert main(["export", "--adapter-path", str(export_runs["llama-q4"]), "--save-path", str(out),
                 "--overwrite"]) == 0  # fmt: skip
    assert (out / "model.safetensors").is_file()
    assert not list(tmp_path.glob("fused.*"))


@pytest.mark.parametrize(
    "save_path,expected",
    [
        (".", "inside the adapter folder"),
        ("fused", "inside the adapter folder"),
        ("..", "contains the adapter folder"),
    ],
)
def test_save_path_in_or_around_the_run_is_refused(export_runs, save_path, expected, capsys):
    run_dir = export_runs["llama-fp"]
    before = sorted(p.name for p in run_dir.iterdir())
    code = main(["export", "--adapter-path", str(run_dir), "--save-path", str(run_dir / save_path)])
    assert code == 2 and expected in capsys.readouterr().err
    assert sorted(p.name for p in run_dir.iterdir()) == before


def test_adapter_folder_mistakes(export_bases, export_runs, tmp_path, capsys):
    def refused(*args: str) -> str:
        code = main(["export", *args, "--save-path", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err
        assert not (tmp_path / "out").exists()
        return err

    assert "no such adapter folder" in refused("--adapter-path", str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    assert "not an adapter folder" in refused("--adapter-path", str(tmp_path / "empty"))
    # Trained on a 64-wide model, fused into a 128-wide one.
    wide = build_quantizable(tmp_path / "wide", hidden_size=128, intermediate_size=256)
    err = refused("--adapter-path", str(export_runs["llama-fp"]), "--model", str(wide))
    assert "does not fit the model" in err and "lora_a" in err
    # --quantize means "keep it quantized": a full-precision base has nothing to keep.
    assert "is not quantized" in refused(
        "--adapter-path", str(export_runs["llama-fp"]), "--quantize"
    )
    # An adapter that does not say which base it belongs to needs --model.
    bare = tmp_path / "bare"
    bare.mkdir()
    config = json.loads((export_runs["llama-fp"] / "adapter_config.json").read_text())
    for key in ("base_model", "model"):
        config.pop(key)
    (bare / "adapter_config.json").write_text(json.dumps(config))
    (bare / "adapters.safetensors").write_bytes(
        (export_runs["llama-fp"] / "adapters.safetensors").read_bytes()
    )
    assert "pass --model" in refused("--adapter-path", str(bare))
    assert main(["export", "--adapter-path", str(bare), "--model", str(export_bases["llama-fp"]),
                 "--save-path", str(tmp_path / "out")]) == 0  # fmt: skip
