"""`mlx-dpo export`: the fused model is what base + adapter computes, mlx-lm uses it as it
is, quantized bases are dequantized by default, the adapter folder is left alone, and
mistakes are refused before anything is written."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import mlx.nn as nn
import numpy as np
import pytest

from mlx_dpo.cli import main
from mlx_dpo.errors import UserError
from mlx_dpo.events import read_events
from mlx_dpo.export import export_model
from tests.conftest import preference_rows, write_jsonl
from tests.interop import build_quantizable, logits_of, quantize_folder, train_run

PROBE = "what color is item 3? the item is red and nice."


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(run_dir: Path) -> dict[str, str]:
    """Every file of the run except metrics.jsonl (which gets the export event)."""
    return {
        str(p.relative_to(run_dir)): digest(p)
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.name != "metrics.jsonl"
    }


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    """Full-precision and 4-bit llama and qwen2 tiny models (dimensions that quantize)."""
    root = tmp_path_factory.mktemp("bases")
    out = {}
    for model_type in ("llama", "qwen2"):
        full = build_quantizable(root / f"{model_type}-fp", model_type)
        out[f"{model_type}-fp"] = full
        out[f"{model_type}-q4"] = quantize_folder(full, root / f"{model_type}-q4", 4)
    return out


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    write_jsonl(folder / "train.jsonl", preference_rows(12))
    return folder


@pytest.fixture(scope="module")
def runs(bases, small_data, tmp_path_factory) -> dict[str, Path]:
    """A short training run on each base (adapters far from zero)."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, base in bases.items():
        status, _ = train_run(base, small_data, root / name, iters=3)
        assert status == "completed"
        out[name] = root / name
    return out


def load(path: Path, adapter: Path | None = None):
    import mlx_lm

    return mlx_lm.load(str(path), adapter_path=str(adapter) if adapter else None)


@pytest.mark.parametrize("name", ["llama-fp", "qwen2-fp", "llama-q4", "qwen2-q4"])
def test_fused_model_equals_base_plus_adapter(bases, runs, tmp_path, name):
    run_dir = runs[name]
    before = snapshot(run_dir)
    out = tmp_path / "fused"
    lines = []
    result = export_model(run_dir, out, on_line=lines.append)

    base_model, tokenizer = load(bases[name])
    with_adapter, _ = load(bases[name], run_dir)
    fused, fused_tokenizer = load(out)
    tokens = tokenizer.encode(PROBE)
    expected = logits_of(with_adapter, tokens)
    # The adapter matters: without it the logits are far from the fused ones.
    assert np.abs(logits_of(base_model, tokens) - expected).max() > 1e-2
    np.testing.assert_allclose(logits_of(fused, tokens), expected, atol=2e-4, rtol=1e-4)

    # A quantized base is written dequantized by default: plain linears, no quantization keys.
    config = json.loads((out / "config.json").read_text())
    assert "quantization" not in config and "quantization_config" not in config
    assert result["dequantized"] == name.endswith("q4")
    assert type(fused.layers[0].self_attn.q_proj) is nn.Linear
    assert fused_tokenizer.chat_template == tokenizer.chat_template
    assert result["fused_layers"] == 2 * 7

    # mlx-lm's own generate gives the same greedy answer as base + adapter.
    import mlx_lm

    assert mlx_lm.generate(fused, fused_tokenizer, PROBE, max_tokens=8) == mlx_lm.generate(
        with_adapter, tokenizer, PROBE, max_tokens=8
    )

    # The adapter folder is untouched; the run's stream records the export.
    assert snapshot(run_dir) == before
    exports = [e for e in read_events(run_dir) if e["event"] == "export"]
    assert [e["status"] for e in exports[-2:]] == ["started", "done"]
    assert exports[-1]["path"] == str(out) and exports[-1]["step"] == 3
    assert [line.split()[0] for line in lines] == [
        "loading",
        "loading",
        "fusing",
        "saving",
        "done:",
    ]
    assert not list(tmp_path.glob("fused.tmp-*"))


def test_quantize_keeps_a_quantized_base_quantized(bases, runs, tmp_path):
    run_dir = runs["llama-q4"]
    export_model(run_dir, tmp_path / "dequantized", on_line=lambda s: None)
    result = export_model(run_dir, tmp_path / "q4", quantize=True, on_line=lambda s: None)
    assert result["quantization"]["bits"] == 4
    config = json.loads((tmp_path / "q4" / "config.json").read_text())
    assert config["quantization"]["bits"] == 4
    fused, tokenizer = load(tmp_path / "q4")
    assert isinstance(fused.layers[0].self_attn.q_proj, nn.QuantizedLinear)
    assert result["size_bytes"] < 0.5 * (
        sum(p.stat().st_size for p in (tmp_path / "dequantized").iterdir())
    )
    # Re-quantized: close to base + adapter, but only to quantization error.
    with_adapter, _ = load(bases["llama-q4"], run_dir)
    tokens = tokenizer.encode(PROBE)
    error = np.abs(logits_of(fused, tokens) - logits_of(with_adapter, tokens)).max()
    assert 1e-5 < error < 1.0


def test_run_quantized_at_load_exports_what_it_trained(bases, tmp_path, small_data):
    """A run trained with --quantize 8 on a full-precision base: the export holds the
    8-bit base weights + adapter, dequantized."""
    from mlx_dpo.model import load_adapter_into, load_model

    run_dir = tmp_path / "run"
    status, _ = train_run(bases["llama-fp"], small_data, run_dir, iters=2, quantize=8)
    assert status == "completed"
    result = export_model(run_dir, tmp_path / "fused", on_line=lambda s: None)
    assert result["dequantized"]
    trained, tokenizer, _, _ = load_model(str(bases["llama-fp"]), quantize=8)
    load_adapter_into(trained, run_dir)
    fused, _ = load(tmp_path / "fused")
    tokens = tokenizer.encode(PROBE)
    np.testing.assert_allclose(
        logits_of(fused, tokens), logits_of(trained, tokens), atol=2e-4, rtol=1e-4
    )


def test_cli_as_the_dashboard_runs_it(runs, tmp_path):
    out = tmp_path / "fused"
    command = [
        sys.executable,
        "-m",
        "mlx_dpo.cli",
        "export",
        "--adapter-path",
        str(runs["llama-q4"]),
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
    assert main(["export", "--adapter-path", str(runs["llama-q4"]), "--save-path", str(out),
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
def test_save_path_in_or_around_the_run_is_refused(runs, save_path, expected, capsys):
    run_dir = runs["llama-fp"]
    before = sorted(p.name for p in run_dir.iterdir())
    code = main(["export", "--adapter-path", str(run_dir), "--save-path", str(run_dir / save_path)])
    assert code == 2 and expected in capsys.readouterr().err
    assert sorted(p.name for p in run_dir.iterdir()) == before


def test_adapter_folder_mistakes(bases, runs, tmp_path, capsys):
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
    err = refused("--adapter-path", str(runs["llama-fp"]), "--model", str(wide))
    assert "does not fit the model" in err and "lora_a" in err
    # --quantize means "keep it quantized": a full-precision base has nothing to keep.
    assert "is not quantized" in refused("--adapter-path", str(runs["llama-fp"]), "--quantize")
    # An adapter that does not say which base it belongs to needs --model.
    bare = tmp_path / "bare"
    bare.mkdir()
    config = json.loads((runs["llama-fp"] / "adapter_config.json").read_text())
    for key in ("base_model", "model"):
        config.pop(key)
    (bare / "adapter_config.json").write_text(json.dumps(config))
    (bare / "adapters.safetensors").write_bytes(
        (runs["llama-fp"] / "adapters.safetensors").read_bytes()
    )
    assert "pass --model" in refused("--adapter-path", str(bare))
    assert main(["export", "--adapter-path", str(bare), "--model", str(bases["llama-fp"]),
                 "--save-path", str(tmp_path / "out")]) == 0  # fmt: skip


def test_a_failed_write_leaves_no_model_behind(runs, tmp_path, monkeypatch):
    import mlx_dpo.export as export

    def crash(folder, *args):
        (folder / "model.safetensors").write_bytes(b"half a model")
        raise OSError("disk full")

    monkeypatch.setattr(export, "_write_model_folder", crash)
    with pytest.raises(OSError):
        export_model(runs["qwen2-fp"], tmp_path / "fused", on_line=lambda s: None)
    assert list(tmp_path.iterdir()) == []
    last = [e for e in read_events(runs["qwen2-fp"]) if e["event"] == "export"][-1]
    assert last["status"] == "failed" and "disk full" in last["message"]


def test_user_error_is_recorded_as_failed_export(runs, tmp_path):
    with pytest.raises(UserError):
        export_model(runs["llama-fp"], tmp_path / "out", quantize=True, on_line=lambda s: None)
    last = [e for e in read_events(runs["llama-fp"]) if e["event"] == "export"][-1]
    assert last["status"] == "failed" and "not quantized" in last["message"]
