"""QLoRA: training on a 4-bit or 8-bit base, pre-quantized or quantized at load. The
reference is the same quantized weights with LoRA switched off."""

from __future__ import annotations

import math
from pathlib import Path

import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_map

from mlx_dpo.batching import collate
from mlx_dpo.config import build_config
from mlx_dpo.errors import UserError
from mlx_dpo.session import open_session
from mlx_dpo.trainer.batch_logps import batch_arrays, reference_rows_logps, rows_logps
from tests.conftest import preference_rows, write_jsonl
from tests.interop import build_quantizable, logps_of, quantize_folder, step_events, train_run


@pytest.fixture(scope="module")
def full_precision(tmp_path_factory) -> Path:
    return build_quantizable(tmp_path_factory.mktemp("fp") / "model")


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    write_jsonl(folder / "train.jsonl", preference_rows(12))
    return folder


def session_for(model: Path, data: Path, **overrides):
    values = dict(model=str(model), data=str(data), lora_rank=4, **overrides)
    return open_session(build_config({}, values), splits=("train",))


def check_reference_is_quantized_base(session, quantized_base) -> None:
    """Reference log-probs (LoRA off) equal the quantized base's, even with LoRA weights far
    from zero; the policy then differs."""
    assert isinstance(session.model.layers[0].self_attn.q_proj.linear, nn.QuantizedLinear)
    arrays = batch_arrays(collate(session.splits["train"].pairs[:4]))
    session.model.update(tree_map(lambda p: p + 0.05, session.model.trainable_parameters()))
    expected = logps_of(quantized_base, arrays)
    reference = np.array(reference_rows_logps(session, *arrays))
    np.testing.assert_allclose(reference, expected, rtol=1e-5, atol=1e-4)
    policy = np.array(rows_logps(session, *arrays))
    assert np.abs(policy - expected).max() > 1e-2


@pytest.mark.parametrize("bits", [4, 8])
def test_prequantized_base_reference_and_first_step(full_precision, small_data, tmp_path, bits):
    import mlx_lm

    quantized = quantize_folder(full_precision, tmp_path / f"q{bits}", bits)
    session = session_for(quantized, small_data)
    base, _ = mlx_lm.load(str(quantized))
    check_reference_is_quantized_base(session, base)

    status, events = train_run(quantized, small_data, tmp_path / "run", iters=2)
    assert status == "completed"
    # The export dialog offers --dequantize because the run says its base is quantized.
    assert next(e for e in events if e["event"] == "run_start")["quantized_base"] is True
    first = step_events(events)[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert first["rewards/chosen"] == pytest.approx(0, abs=1e-5)
    assert first["rewards/rejected"] == pytest.approx(0, abs=1e-5)
    # The adapter learned something and mlx-lm loads it onto the quantized base as it is.
    trained, _ = mlx_lm.load(str(quantized), adapter_path=str(tmp_path / "run"))
    arrays = batch_arrays(collate(session.splits["train"].pairs[:4]))
    assert np.abs(logps_of(trained, arrays) - logps_of(base, arrays)).max() > 1e-3


def test_quantize_at_load(full_precision, small_data, tmp_path):
    """--quantize 4 on a full-precision base: the reference is that base quantized with
    mlx-lm's own quantize_model, and the run records it for export and compare."""
    import json

    import mlx_lm
    from mlx_lm.utils import quantize_model

    session = session_for(full_precision, small_data, quantize=4)
    base, _, config = mlx_lm.load(str(full_precision), return_config=True)
    quantized, _ = quantize_model(base, config, group_size=64, bits=4)
    check_reference_is_quantized_base(session, quantized)

    status, events = train_run(full_precision, small_data, tmp_path / "run", iters=2, quantize=4)
    assert status == "completed"
    assert next(e for e in events if e["event"] == "run_start")["quantized_base"] is True
    assert step_events(events)[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    adapter_config = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert adapter_config["quantize"] == 4


def test_quantizing_a_quantized_base_is_refused(full_precision, small_data, tmp_path):
    quantized = quantize_folder(full_precision, tmp_path / "q4", 4)
    with pytest.raises(UserError, match="already quantized"):
        session_for(quantized, small_data, quantize=8)


def test_quantized_weights_on_a_cpu_are_said_to_be_slow(full_precision, tmp_path):
    """MLX's CPU quantized matrix products are ~70x slower than float32 ones (benchmarks/
    README.md, W4): a user loading a quantized model on a CPU hears it, once; a full-precision
    model says nothing of the kind."""
    from mlx_dpo.model import QUANTIZED_ON_CPU_NOTE, load_model
    from mlx_dpo.platform import is_metal

    if is_metal():
        pytest.skip("Metal has fast quantized kernels: nothing to say")
    notes: list[str] = []
    load_model(str(full_precision), on_note=notes.append)
    assert QUANTIZED_ON_CPU_NOTE not in notes
    load_model(str(full_precision), quantize=4, on_note=notes.append)
    assert notes.count(QUANTIZED_ON_CPU_NOTE) == 1
    load_model(str(quantize_folder(full_precision, tmp_path / "q8", 8)), on_note=notes.append)
    assert notes.count(QUANTIZED_ON_CPU_NOTE) == 2
