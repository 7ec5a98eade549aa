"""Exporting (mlx_dpo/export.py): the fused model is what base + adapter computes, mlx-lm
uses it as it is, quantized bases are dequantized by default, the adapter folder is left
alone, and mistakes are refused before anything is written. The command line's own checks
are in test_cli_export.py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import mlx.nn as nn
import numpy as np
import pytest

from mlx_dpo.errors import UserError
from mlx_dpo.events import read_events
from mlx_dpo.export import export_model
from tests.interop import logits_of, train_run

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


def load(path: Path, adapter: Path | None = None):
    import mlx_lm

    return mlx_lm.load(str(path), adapter_path=str(adapter) if adapter else None)


@pytest.mark.parametrize("name", ["llama-fp", "qwen2-fp", "llama-q4", "qwen2-q4"])
def test_fused_model_equals_base_plus_adapter(export_bases, export_runs, tmp_path, name):
    run_dir = export_runs[name]
    before = snapshot(run_dir)
    out = tmp_path / "fused"
    lines = []
    result = export_model(run_dir, out, on_line=lines.append)

    base_model, tokenizer = load(export_bases[name])
    with_adapter, _ = load(export_bases[name], run_dir)
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


def test_quantize_keeps_a_quantized_base_quantized(export_bases, export_runs, tmp_path):
    run_dir = export_runs["llama-q4"]
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
    with_adapter, _ = load(export_bases["llama-q4"], run_dir)
    tokens = tokenizer.encode(PROBE)
    error = np.abs(logits_of(fused, tokens) - logits_of(with_adapter, tokens)).max()
    assert 1e-5 < error < 1.0


def test_run_quantized_at_load_exports_what_it_trained(export_bases, tmp_path, export_data):
    """A run trained with --quantize 8 on a full-precision base: the export holds the
    8-bit base weights + adapter, dequantized."""
    from mlx_dpo.model import load_adapter_into, load_model

    run_dir = tmp_path / "run"
    status, _ = train_run(export_bases["llama-fp"], export_data, run_dir, iters=2, quantize=8)
    assert status == "completed"
    result = export_model(run_dir, tmp_path / "fused", on_line=lambda s: None)
    assert result["dequantized"]
    trained, tokenizer, _, _ = load_model(str(export_bases["llama-fp"]), quantize=8)
    load_adapter_into(trained, run_dir)
    fused, _ = load(tmp_path / "fused")
    tokens = tokenizer.encode(PROBE)
    np.testing.assert_allclose(
        logits_of(fused, tokens), logits_of(trained, tokens), atol=2e-4, rtol=1e-4
    )


def test_a_failed_write_leaves_no_model_behind(export_runs, tmp_path, monkeypatch):
    import mlx_dpo.export as export

    def crash(folder, *args):
        (folder / "model.safetensors").write_bytes(b"half a model")
        raise OSError("disk full")

    monkeypatch.setattr(export, "_write_model_folder", crash)
    with pytest.raises(OSError):
        export_model(export_runs["qwen2-fp"], tmp_path / "fused", on_line=lambda s: None)
    assert list(tmp_path.iterdir()) == []
    last = [e for e in read_events(export_runs["qwen2-fp"]) if e["event"] == "export"][-1]
    assert last["status"] == "failed" and "disk full" in last["message"]


def test_user_error_is_recorded_as_failed_export(export_runs, tmp_path):
    with pytest.raises(UserError):
        export_model(
            export_runs["llama-fp"], tmp_path / "out", quantize=True, on_line=lambda s: None
        )
    last = [e for e in read_events(export_runs["llama-fp"]) if e["event"] == "export"][-1]
    assert last["status"] == "failed" and "not quantized" in last["message"]
