"""The memory plan: its arithmetic on known shapes, against the measured peak of real runs on
tiny models, `--plan`, `--batch-size auto` and the guard that stops a run near the limit."""

from __future__ import annotations

import dataclasses
import gc
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import yaml

from mlx_dpo.cli import main
from mlx_dpo.config import build_config
from mlx_dpo.data import truncate
from mlx_dpo.events import read_events
from mlx_dpo.memory import (
    Lengths,
    ModelShape,
    Settings,
    choose_batch_size,
    cut_lengths,
    estimate_memory,
    longest_batch,
    plan_memory,
    session_shape,
    verdict,
)
from mlx_dpo.trainer import RunOptions, open_session, train

# A Llama-like shape: 2 layers, hidden 64, MLP 128, 4 heads of 16, 2 KV heads, vocab 512,
# float32 activations.
MODEL = ModelShape(
    layers=2,
    hidden=64,
    intermediate=128,
    heads=4,
    kv_heads=2,
    head_dim=16,
    vocab=512,
    activation_bytes=4,
    base_weight_bytes=600_000,
    lora_bytes=10_000,
    head_split=True,
    base_weight_bytes_4bit=150_000,
)
# Three pairs of 10+8, 20+30 and 40+12 tokens: the longest pair has 52 tokens, the longest
# response 30, the longest prompt 40.
LENGTHS = Lengths(
    prompt=np.array([10, 20, 40]), chosen=np.array([5, 30, 10]), rejected=np.array([8, 3, 12])
)


# ---------------------------------------------------------------------------------------------
# Arithmetic, checked against numbers worked out by hand


def test_longest_batch_pads_as_collate_does():
    rows = longest_batch(LENGTHS, Settings(batch_size=2))
    # 52 tokens round up to 64 (+1: inputs are tokens[:, :-1]); responses to multiples of 16.
    assert (rows.pairs, rows.rows, rows.length, rows.window) == (2, 4, 65, 32)
    assert rows.passes() == [(4, 64, 64, 64)]
    shared = longest_batch(LENGTHS, Settings(batch_size=2, shared_prompt=True))
    # Prompts (40 -> 48 columns) once, then 4 responses of 32 attending to 48 + 32 keys; the
    # KV cache holds whole steps of 256 positions.
    assert (shared.prompt, shared.window) == (48, 32)
    assert shared.passes() == [(2, 48, 48, 256), (4, 32, 80, 48 + 256)]
    # Gradient checkpointing keeps prefix sharing.
    checkpointed = longest_batch(LENGTHS, Settings(2, grad_checkpoint=True, shared_prompt=True))
    assert checkpointed.passes() == shared.passes()


def test_estimate_rows_layout_by_hand():
    estimate = estimate_memory(MODEL, LENGTHS, Settings(batch_size=2, reference_pairs=3))
    # One layer keeps, for 4 rows × 64 positions:
    #   per token 5.5·64·4 + 5.1·128·4 = 4019.2 bytes   -> 256 × 4019.2 = 1028915.2
    #   keys/values 2.5 · 4 rows · 64 · (2 × 16) · 4     = 81920
    #   attention 1.5 · 4 rows · 4 heads · 64 · 64 · 4   = 393216
    # = 1504051.2 a layer, × 2 layers = 3008102.4; one layer's working set
    #   4 · 64 · (14·64 + 4.5·128) · 4 = 256 · 1472 · 4 = 1507328
    # activations = 4515430.4
    # Logits of 4 rows × 32 response positions × 512: 262144 bytes in float32, kept 1.6 times
    # (419430.4); the head's backward (1.4 × 262144) fits in the layers' working set.
    assert estimate.components == {
        "base weights": 600_000,
        "LoRA parameters": 10_000,
        "optimizer state": 20_000,  # AdamW: two moments
        "gradients": 10_000,
        "activations": 4_515_430,
        "logits": 419_430,
        "reference": 24,  # 3 pairs × 2 float32 log-probs
    }
    assert estimate.total == 5_574_884
    # With checkpointing: inputs 2.7 · 2 layers · (4·64·64) · 4 = 353894.4, plus one layer
    # recomputed (1504051.2), its working set (1507328) and its float32 attention
    # 1.3 · 4·4·64·64 · 4 = 340787.2 -> 3706060.8
    assert estimate.activations_checkpointed == 3_706_061


def test_estimate_shared_prompt_by_hand():
    estimate = estimate_memory(MODEL, LENGTHS, Settings(batch_size=2, shared_prompt=True))
    # Prompt pass (2 rows × 48, keys 48, 256 held):
    #   2·48·4019.2 + 2.5·2·256·32·4 + 1.5·2·4·48·48·4 = 385843.2 + 163840 + 110592
    # Response pass (4 rows × 32, keys 80, 304 held):
    #   4·32·4019.2 + 2.5·4·304·32·4 + 1.5·4·4·32·80·4 = 514457.6 + 389120 + 245760
    # Both layers: 2 × 1809612.8 = 3619225.6; working set (the larger pass, 128 tokens):
    #   128 · 1472 · 4 = 753664.  Total 4372889.6
    assert estimate.components["activations"] == 4_372_890
    assert estimate.components["logits"] == 419_430


def test_estimate_options_by_hand():
    live = estimate_memory(MODEL, LENGTHS, Settings(batch_size=2, live_reference=True))
    # One layer's float32 attention weights in the reference forward: 0.63 · 4·4·64·64 · 4
    assert live.components["reference"] == 165_151
    accumulating = estimate_memory(MODEL, LENGTHS, Settings(batch_size=2, grad_accumulation=2))
    assert accumulating.components["gradients"] == 20_000  # accumulated + new
    quantized = estimate_memory(MODEL, LENGTHS, Settings(batch_size=2, quantize=4))
    assert quantized.components["base weights"] == 150_000
    # Without a head split the head sees all 64 positions: 1.6 · 4 · 64 · 512 · 4
    no_split = dataclasses.replace(MODEL, head_split=False)
    logits = estimate_memory(no_split, LENGTHS, Settings(batch_size=2)).components["logits"]
    assert logits == 838_861
    # A large vocabulary: the head's backward (1.4 × 4·32·65536·4 = 46976204.8) outgrows the
    # layers' working set (1507328) by 45468876.8, on top of 1.6 × 33554432 kept.
    large = dataclasses.replace(MODEL, vocab=65536)
    logits = estimate_memory(large, LENGTHS, Settings(batch_size=2)).components["logits"]
    assert logits == 53_687_091 + 45_468_877
    # A bfloat16 model also holds 2 copies of its 2-byte logits: 2 · 4·32·512 · 2 = 262144.
    bfloat16 = dataclasses.replace(MODEL, activation_bytes=2)
    logits = estimate_memory(bfloat16, LENGTHS, Settings(batch_size=2)).components["logits"]
    assert logits == 419_430 + 262_144


def test_cut_lengths_matches_data_truncate():
    cut = cut_lengths(LENGTHS, 32)
    for i in range(LENGTHS.pairs):
        prompt, chosen, rejected, _, _ = truncate(
            [0] * int(LENGTHS.prompt[i]),
            [0] * int(LENGTHS.chosen[i]),
            [0] * int(LENGTHS.rejected[i]),
            32,
        )
        assert (cut.prompt[i], cut.chosen[i], cut.rejected[i]) == (
            len(prompt),
            len(chosen),
            len(rejected),
        )
    # A prompt keeps one token; the responses are cut after it.
    cut = cut_lengths(Lengths(np.array([3]), np.array([40]), np.array([10])), 16)
    assert (cut.prompt[0], cut.chosen[0], cut.rejected[0]) == (1, 15, 10)


def test_verdicts():
    assert verdict(70, 100) == "fits"
    assert verdict(71, 100) == "tight"
    assert verdict(90, 100) == "tight"
    assert verdict(91, 100) == "will not fit"


def test_plan_suggests_the_changes_that_fit():
    # Batch 2 needs 5.57 MB: over 90% of 5 MB. Batch 1 with accumulation 2 (3.12 MB) fits, as
    # does max_length 32 (3.12 MB); checkpointing (4.77 MB) and a 4-bit base (5.12 MB) do not.
    plan = plan_memory(MODEL, LENGTHS, Settings(batch_size=2), limit=5_000_000)
    assert plan.verdict == "will not fit"
    changes = [s.change for s in plan.suggestions]
    assert changes == ["--batch-size 1 --grad-accumulation 2", "--max-length 32"]
    assert plan.suggestions[1].note == "cuts 2 of 3 pairs"
    for suggestion in plan.suggestions:
        assert suggestion.estimate.total <= 0.7 * 5_000_000
    assert plan_memory(MODEL, LENGTHS, Settings(batch_size=2), limit=10**9).suggestions == []
    # Nothing fits 1 MB: the base weights alone are 0.6 MB.
    hopeless = plan_memory(MODEL, LENGTHS, Settings(batch_size=2), limit=1_000_000)
    assert hopeless.verdict == "will not fit" and hopeless.suggestions == []


def test_plan_combines_changes_when_none_is_enough():
    # 4 MB (fits below 2.8 MB): batch 1 alone needs 3.12 MB, checkpointing alone 4.77 MB,
    # max_length 32 alone 3.12 MB; batch 1 with checkpointing 2.71 MB.
    plan = plan_memory(MODEL, LENGTHS, Settings(batch_size=2), limit=4_000_000)
    assert [(s.change, s.estimate.total) for s in plan.suggestions] == [
        ("--batch-size 1 --grad-accumulation 2 --grad-checkpoint", 2_712_745)
    ]
    # 3.5 MB (below 2.45 MB) takes the 4-bit base as well.
    plan = plan_memory(MODEL, LENGTHS, Settings(batch_size=2), limit=3_500_000)
    assert [s.change for s in plan.suggestions] == [
        "--batch-size 1 --grad-accumulation 2 --grad-checkpoint --quantize 4"
    ]


def test_choose_batch_size_takes_the_largest_that_fits():
    lengths = Lengths(np.full(16, 30), np.full(16, 30), np.full(16, 20))
    totals = {
        b: estimate_memory(MODEL, lengths, Settings(b, grad_accumulation=8 // b)).total
        for b in (1, 2, 4, 8)
    }
    limit = int(totals[2] / 0.7) + 1  # batch 2 fits, batch 4 does not
    assert choose_batch_size(MODEL, lengths, Settings(batch_size=8), 8, limit) == (2, 4)
    assert choose_batch_size(MODEL, lengths, Settings(batch_size=8), 8, 10**12) == (8, 1)
    assert choose_batch_size(MODEL, lengths, Settings(batch_size=8), 8, 10) == (1, 8)


# ---------------------------------------------------------------------------------------------
# Reading shapes from a loaded model


def test_model_shape_counts_the_loaded_weights(llama_chatml, preference_data):
    from mlx.utils import tree_flatten

    config = build_config({}, {"model": str(llama_chatml), "data": str(preference_data)})
    session = open_session(config, splits=("train",))
    shape = session_shape(session, config)
    params = dict(tree_flatten(session.model.parameters()))
    lora = sum(v.nbytes for k, v in params.items() if k.endswith(("lora_a", "lora_b")))
    assert shape.lora_bytes == lora > 0
    assert shape.base_weight_bytes == sum(v.nbytes for v in params.values()) - lora
    assert (shape.layers, shape.hidden, shape.heads, shape.kv_heads) == (2, 64, 4, 2)
    assert shape.activation_bytes == 4 and shape.head_split
    # The 4-bit estimate is what --quantize 4 really loads.
    quantized_config = build_config({}, {**config.to_dict(), "quantize": 4})
    quantized = session_shape(open_session(quantized_config, splits=("train",)), quantized_config)
    assert shape.base_weight_bytes_4bit == quantized.base_weight_bytes
    assert quantized.base_weight_bytes_4bit is None


# ---------------------------------------------------------------------------------------------
# Plan against measurement, and the run-time behaviour


def run(config) -> tuple[str, list[dict], list[str]]:
    lines: list[str] = []
    status = train(
        config, RunOptions(Path(config.adapter_path), on_line=lines.append, handle_signals=False)
    )
    return status, read_events(config.adapter_path), lines


@pytest.mark.parametrize(
    "fixture,overrides",
    [
        ("llama_chatml", {"batch_size": 4}),  # prefix sharing
        ("qwen2_llama3", {"batch_size": 8, "prefix_sharing": False}),  # rows, tied embeddings
    ],
)
def test_plan_is_within_25_percent_of_the_measured_peak(
    request, preference_data, tmp_path, fixture, overrides
):
    """MLX's own peak (mx.get_peak_memory, reset before the first step), not the process RSS:
    the interpreter and libraries are not in the plan. One epoch, so the longest batch runs."""
    model = request.getfixturevalue(fixture)
    config = build_config(
        {},
        {
            "model": str(model),
            "data": str(preference_data),
            "adapter_path": str(tmp_path / "run"),
            "epochs": 1,
            "eval_every": 0,
            "save_every": 0,
            "lora_rank": 4,
            **overrides,
        },
    )
    gc.collect()
    other_arrays = mx.get_active_memory()  # left by earlier tests in this process
    status, events, _ = run(config)
    assert status == "completed"
    plan = next(e for e in events if e["event"] == "run_start")["memory_plan"]
    peak = max(e["peak_memory_gb"] for e in events if e["event"] == "step") - other_arrays / 1e9
    assert plan["total_gb"] == pytest.approx(peak, rel=0.25)
    assert plan["verdict"] == "fits"


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


def test_batch_size_auto_picks_a_batch_the_plan_accepts(
    llama_chatml, preference_data, tmp_path, capsys
):
    values = {
        "model": str(llama_chatml),
        "data": str(preference_data),
        "adapter_path": str(tmp_path / "run"),
        "iters": 1,
        "eval_every": 0,
        "save_every": 0,
        "batch_size": "auto",
        "grad_accumulation": 4,  # effective batch 4 × 4 = 16
        "memory_limit_gb": 0.02,
    }
    status, events, _ = run(build_config({}, values))
    assert status == "completed"
    start = next(e for e in events if e["event"] == "run_start")
    batch, accumulation = start["batch_size"], start["grad_accumulation"]
    assert batch * accumulation == 16 and batch < 16
    assert start["memory_plan"]["verdict"] == "fits"
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert (saved["batch_size"], saved["grad_accumulation"]) == (batch, accumulation)
    # The next larger batch would not fit.
    capsys.readouterr()
    code = main(
        ["train", "--model", str(llama_chatml), "--data", str(preference_data), "--plan"]
        + ["--batch-size", str(batch * 2), "--memory-limit-gb", "0.02"]
    )
    out = capsys.readouterr().out
    assert code == 0 and "memory_limit_gb): fits" not in out


def test_memory_guard_stops_the_run_with_a_checkpoint(llama_chatml, preference_data, tmp_path):
    config = build_config(
        {},
        {
            "model": str(llama_chatml),
            "data": str(preference_data),
            "adapter_path": str(tmp_path / "run"),
            "iters": 5,
            "eval_every": 0,
            "save_every": 0,
            "memory_limit_gb": 0.001,
        },
    )
    status, events, lines = run(config)
    assert status == "stopped"
    errors = [e for e in events if e["event"] == "log" and e["level"] == "error"]
    assert errors and "out of memory" in errors[0]["message"]
    assert "memory_limit_gb" in errors[0]["message"]
    end = events[-1]
    assert end["event"] == "run_end" and end["status"] == "stopped" and end["step"] == 1
    assert Path(end["last_checkpoint"]).is_dir()
    assert (tmp_path / "run" / "adapters.safetensors").is_file()
    assert any("memory plan" in line for line in lines)
