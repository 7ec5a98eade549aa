"""The memory plan's inputs read from a loaded session (mlx_dpo/memory/session.py): the model's
shape is what was loaded (and what --quantize 4 would load), the settings are the run's, and
the plan of a real session is within 25% of the peak its run measures."""

from __future__ import annotations

import gc

import mlx.core as mx
import pytest

from mlx_dpo.config import build_config
from mlx_dpo.memory.arithmetic import Settings
from mlx_dpo.memory.session import data_lengths, session_lengths, session_settings, session_shape
from mlx_dpo.session import open_session
from tests.training import config_for, run_with_lines


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
    status, events, _ = run_with_lines(config)
    assert status == "completed"
    plan = next(e for e in events if e["event"] == "run_start")["memory_plan"]
    peak = max(e["peak_memory_gb"] for e in events if e["event"] == "step") - other_arrays / 1e9
    assert plan["total_gb"] == pytest.approx(peak, rel=0.25)
    assert plan["verdict"] == "fits"


def test_settings_and_lengths_are_the_runs(llama_chatml, preference_data):
    config = config_for(
        llama_chatml, preference_data, batch_size=3, grad_accumulation=2, reference="live",
        max_length=512, grad_checkpoint=True,
    )  # fmt: skip
    session = open_session(config, splits=("train", "valid"))
    assert session_settings(session, config) == Settings(
        batch_size=3, grad_accumulation=2, grad_checkpoint=True, live_reference=True,
        shared_prompt=True, max_length=512, quantize=None, reference_pairs=24 + 8,
    )  # fmt: skip
    # `batch_size: auto` is planned at the batch it is given.
    assert session_settings(session, config, batch_size=16).batch_size == 16
    lengths = session_lengths(session)
    pairs = session.splits["train"].pairs
    assert lengths.pairs == 24
    assert lengths.prompt.tolist() == [len(p.prompt_ids) for p in pairs]
    assert lengths.chosen.tolist() == [len(p.chosen_ids) for p in pairs]
    assert lengths.rejected.tolist() == [len(p.rejected_ids) for p in pairs]
    assert data_lengths(pairs[:2]).pairs == 2
