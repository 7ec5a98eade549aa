"""Exporting (mlx_dpo/export.py): the fused model is what base + adapter computes, mlx-lm
uses it as it is, quantized bases are dequantized by default, the adapter folder is left
alone, mistakes are refused before anything is written, and what a killed export left is
cleaned up by the next one to the same place. The command line's own checks
are in test_cli_export.py."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import mlx.nn as nn
import numpy as np
import pytest

from mlx_dpo.errors import UserError
from mlx_dpo.events import read_events
from mlx_dpo.export import TEMPORARY_MARKER, clean_up_killed_exports, export_model
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


REPO = Path(__file__).resolve().parents[2]


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.glob(f"{out.name}.*"))


@pytest.mark.slow
@pytest.mark.parametrize("killed_before_rename", [1, 2])
def test_a_killed_export_is_cleaned_up_by_the_next_one_to_the_same_place(
    export_runs, tmp_path, killed_before_rename
):
    """`export --overwrite` killed before it moves the old model aside (1) or before it puts
    the new one in (2, the old one is then only in OUT.old-*): the next export removes exactly
    what that export left, puts the old model back first where it was moved, and never touches
    folders of the same names that are not a dead export's."""
    import mlx_lm

    run_dir, out = export_runs["llama-fp"], tmp_path / "fused"
    export_model(run_dir, out, on_line=lambda _: None)
    before = snapshot(out)
    (tmp_path / "fused.tmp-mine").mkdir()  # the user's, no marker
    (tmp_path / "fused.tmp-mine" / "notes.txt").write_text("mine")
    (tmp_path / "fused.old-notes").write_text("mine too")
    live = tmp_path / "fused.tmp-running"  # a running export's (this process is alive)
    live.mkdir()
    (live / TEMPORARY_MARKER).write_text(json.dumps({"pid": os.getpid(), "target": "fused"}))
    ours = ["fused.old-notes", "fused.tmp-mine", "fused.tmp-running"]
    command = [sys.executable, "-m", "tests.faults", f"rename:{killed_before_rename}", "--",
               "export", "--adapter-path", str(run_dir), "--save-path", str(out), "--overwrite"]  # fmt: skip
    killed = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = [name for name in leftovers(out) if name not in ours]
    assert [name.split("-")[0] for name in left] == ["fused.old", "fused.tmp"]
    assert out.exists() == (killed_before_rename == 1)

    if killed_before_rename == 2:
        # Without --overwrite the old model is put back, and kept.
        lines: list[str] = []
        with pytest.raises(UserError, match="already exists"):
            export_model(run_dir, out, on_line=lines.append)
        assert snapshot(out) == before
        assert f"put back {out}, which an export that was cut short had moved aside" in lines
    lines = []
    export_model(run_dir, out, overwrite=True, on_line=lines.append)
    assert leftovers(out) == ours
    assert (tmp_path / "fused.tmp-mine" / "notes.txt").read_text() == "mine"
    assert (tmp_path / "fused.old-notes").read_text() == "mine too"
    assert not (out / TEMPORARY_MARKER).exists()
    mlx_lm.load(str(out))
    if killed_before_rename == 1:
        assert sum("left by an export that was cut short" in line for line in lines) == 2


def test_only_the_marked_temporaries_of_dead_exports_are_removed(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()

    def folder(name: str, marker: dict | None) -> Path:
        path = tmp_path / name
        path.mkdir()
        if marker is not None:
            (path / TEMPORARY_MARKER).write_text(json.dumps(marker))
        return path

    old = folder("fused.old-a1", {"pid": gone.pid, "target": "fused"})
    (old / "fused").mkdir()
    (old / "fused" / "model.safetensors").write_text("the previous model")
    folder("fused.tmp-b2", {"pid": gone.pid, "target": "fused"})
    kept = [
        folder("fused.tmp-c3", {"pid": os.getpid(), "target": "fused"}),  # still running
        folder("fused.tmp-d4", {"pid": gone.pid, "target": "other"}),  # another export's
        folder("fused.tmp-e5", None),  # not an export's
        folder("fused2.tmp-f6", {"pid": gone.pid, "target": "fused2"}),  # another place
    ]
    lines: list[str] = []
    clean_up_killed_exports(tmp_path / "fused", lines.append)
    assert (tmp_path / "fused" / "model.safetensors").read_text() == "the previous model"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["fused", *(p.name for p in kept)])
    assert lines == [
        f"put back {tmp_path / 'fused'}, which an export that was cut short had moved aside",
        f"removed {old}, left by an export that was cut short",
        f"removed {tmp_path / 'fused.tmp-b2'}, left by an export that was cut short",
    ]


def test_a_live_run_can_be_exported(export_runs, tmp_path):
    """export reads the run without its lock (the dashboard exports while the trainer runs)."""
    from mlx_dpo.rundir import RunLock

    with RunLock(export_runs["llama-fp"]).acquire():
        result = export_model(export_runs["llama-fp"], tmp_path / "fused", on_line=lambda _: None)
    assert result["fused_layers"] > 0 and (tmp_path / "fused" / "config.json").is_file()
