"""The memory plan's arithmetic (mlx_dpo/memory/arithmetic.py) on known shapes, checked against
numbers worked out by hand, and the plan as text and as the run_start event's dict."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mlx_dpo.data import truncate
from mlx_dpo.memory.arithmetic import (
    COMPONENTS,
    FORWARD_BATCH_MAX,
    LOGITS_CHUNK_BYTES,
    Lengths,
    ModelShape,
    Settings,
    choose_batch_size,
    cut_lengths,
    estimate_memory,
    format_plan,
    forward_batch_size,
    forward_memory,
    longest_batch,
    plan_dict,
    plan_memory,
    summary_lines,
    verdict,
)

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


def test_the_plan_as_text():
    plan = plan_memory(MODEL, LENGTHS, Settings(batch_size=2), 5_000_000, "memory_limit_gb")
    lines = format_plan(plan)
    assert lines[0] == (
        "memory plan (MLX memory, as mx.get_peak_memory() measures it; the Python process adds "
        "its own): batch 2 × 1 accumulation, max_length 1024"
    )
    # One line a component (name, size, what it is), in COMPONENTS order, then the total.
    assert [line.split("  ")[1].strip() for line in lines[1:8]] == list(COMPONENTS)
    assert lines[1].split() == [
        "base",
        "weights",
        "0.6",
        "MB",
        "at",
        "their",
        "loaded",
        "precision",
    ]
    assert lines[5].split()[:3] == ["activations", "4.5", "MB"]
    assert (
        "longest batch: 4 rows of 64 tokens" in lines[5]
        and "3.7 MB with --grad-checkpoint" in lines[5]
    )
    assert lines[8].split() == ["total", "5.6", "MB"]
    # The forward-only passes: 3 pairs a batch (all there are) in 3,952,336 bytes
    # (test_forward_pass_memory_by_hand), within the step's 5,574,860.
    assert lines[9] == (
        "  forward passes       4.0 MB   reference and evaluation, no gradient: 3 pairs a batch "
        "(at most the step's peak)"
    )
    # 5,574,860 of 5,000,000 bytes: 111%.
    assert lines[10] == (
        "  available 5.0 MB (memory_limit_gb): will not fit (111% of it; tight above 70%, "
        "stopped above 90%)"
    )
    assert lines[11] == "  to fit:"
    assert lines[12].split() == [
        "--batch-size", "1", "--grad-accumulation", "2", "3.1", "MB", "(same", "effective",
        "batch", "of", "2)",
    ]  # fmt: skip
    assert lines[13].split()[:4] == ["--max-length", "32", "3.1", "MB"]
    assert lines[13].endswith("(cuts 2 of 3 pairs)")
    assert summary_lines(plan) == [
        "memory plan: 5.6 MB of 5.0 MB (memory_limit_gb): will not fit",
        "  weights 0.6 MB, LoRA + optimizer + gradients 40.0 KB, activations 4.5 MB, logits 0.4 MB",
        "  forward passes 4.0 MB: reference and evaluation, no gradient: 3 pairs a batch (at "
        "most the step's peak)",
        *lines[11:],
    ]
    fits = plan_memory(MODEL, LENGTHS, Settings(batch_size=2), 10**9, "physical memory")
    assert format_plan(fits)[-1].endswith("fits (1% of it; tight above 70%, stopped above 90%)")
    assert len(summary_lines(fits)) == 3  # nothing to suggest
    hopeless = plan_memory(MODEL, LENGTHS, Settings(batch_size=2), 1_000_000)
    assert format_plan(hopeless)[-1].startswith("  no change tried here fits it")


def test_forward_pass_memory_by_hand():
    # Rows layout, 3 pairs: 6 rows × 64 positions, one layer's working set at a time:
    #   6 · 64 · (8·64 + 3·128) · 4 = 1376256, scores 2 · 6 · 4 heads · 64 · 64 · 4 = 786432
    # logits 6 rows × 32 × 512 × 4 = 393216, 3 times; weights 600000 + LoRA 10000.
    rows = Settings(batch_size=2)
    assert forward_memory(MODEL, LENGTHS, rows, 3) == 610_000 + 2_162_688 + 3 * 393_216
    # Shared prompt, 2 pairs: the larger working set is the responses' pass,
    #   4 · 32 · 896 · 4 = 458752 + 2 · 4 · 4 · 32 · 80 · 4 = 327680;
    # the KV caches of both passes stay for every layer: 2 layers × (2 rows × 256 + 4 rows ×
    # 304 positions) × (2 · 2 heads · 16 · 4 bytes) = 884736; logits 4 × 32 × 512 × 4, 3 times.
    shared = Settings(batch_size=2, shared_prompt=True)
    assert forward_memory(MODEL, LENGTHS, shared, 2) == 610_000 + 786_432 + 884_736 + 786_432
    # The head's logits count one chunk at most: 6 × 32 × 10⁶ × 4 bytes are 768 MB, the head
    # goes through them 256 MB at a time.
    wide = dataclasses.replace(MODEL, vocab=10**6)
    assert forward_memory(wide, LENGTHS, rows, 3) == 610_000 + 2_162_688 + 3 * (1 << 28)


def test_forward_batch_is_the_most_the_budget_allows():
    lengths = Lengths(prompt=np.full(40, 20), chosen=np.full(40, 10), rejected=np.full(40, 12))
    settings = Settings(batch_size=2)
    sizes = [forward_memory(MODEL, lengths, settings, b) for b in range(1, 20)]
    assert sizes == sorted(sizes)  # more pairs, more memory
    assert forward_batch_size(MODEL, lengths, settings, sizes[5 - 1]) == 5
    assert forward_batch_size(MODEL, lengths, settings, sizes[5 - 1] - 1) == 4
    # Never fewer than the training batch, never more than FORWARD_BATCH_MAX or the pairs.
    assert forward_batch_size(MODEL, lengths, settings, 0) == 2
    assert forward_batch_size(MODEL, lengths, settings, 10**12) == FORWARD_BATCH_MAX
    assert forward_batch_size(MODEL, LENGTHS, settings, 10**12) == 3
    # The plan's forward batch stays within the step's own estimate.
    plan = plan_memory(MODEL, lengths, settings, 10**9)
    assert plan.forward_bytes <= plan.estimate.total
    assert plan.forward_batch > settings.batch_size


def test_the_logits_chunk_is_the_heads():
    from mlx_dpo.logprobs import LOGITS_BUDGET_BYTES

    assert LOGITS_CHUNK_BYTES == LOGITS_BUDGET_BYTES


def test_the_plan_as_the_run_start_events_dict():
    plan = plan_memory(MODEL, LENGTHS, Settings(batch_size=2), 5_000_000, "memory_limit_gb")
    record = plan_dict(plan)
    # 5,574,884 bytes less the 24 of cached reference log-probs (no reference_pairs here).
    assert record["total_gb"] == pytest.approx(5_574_860 / 1e9)
    assert record["limit_gb"] == pytest.approx(0.005)
    assert (record["limit_source"], record["verdict"]) == ("memory_limit_gb", "will not fit")
    assert list(record["components_gb"]) == list(COMPONENTS)
    assert record["components_gb"]["activations"] == pytest.approx(4_515_430 / 1e9)
    assert record["activations_checkpointed_gb"] == pytest.approx(3_706_061 / 1e9)
    assert record["batch"] == {
        "pairs": 2, "rows": 4, "length": 65, "window": 32, "prompt": 0, "shared_prompt": False,
    }  # fmt: skip
    assert [s["change"] for s in record["suggestions"]] == [
        "--batch-size 1 --grad-accumulation 2",
        "--max-length 32",
    ]
    assert record["suggestions"][1]["note"] == "cuts 2 of 3 pairs"
