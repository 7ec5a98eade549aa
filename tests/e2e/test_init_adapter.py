"""--init-adapter: the policy starts from an adapter and the reference is base + that adapter,
frozen. The first step is then at the reference (loss ln 2, rewards 0), the reference equals
what mlx-lm computes for base + adapter, and an adapter that does not fit is refused before
anything trains."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_map

from mlx_dpo import reference
from mlx_dpo.batching import collate
from mlx_dpo.cli import main
from mlx_dpo.config import build_config
from mlx_dpo.errors import UserError
from mlx_dpo.session import open_session
from mlx_dpo.trainer.batch_logps import batch_arrays, reference_rows_logps, rows_logps
from tests.conftest import preference_rows, write_jsonl
from tests.interop import build_quantizable, logps_of, step_events, train_run


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return build_quantizable(tmp_path_factory.mktemp("base") / "model")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    write_jsonl(folder / "train.jsonl", preference_rows(12))
    write_jsonl(folder / "valid.jsonl", preference_rows(4, seed=1, start=100))
    return folder


@pytest.fixture(scope="module")
def init_adapter(base, data, tmp_path_factory) -> Path:
    """A non-trivial adapter: a few steps of training move lora_b away from zero."""
    run_dir = tmp_path_factory.mktemp("init") / "run"
    status, _ = train_run(base, data, run_dir, iters=4)
    assert status == "completed"
    weights = mx.load(str(run_dir / "adapters.safetensors"))
    assert max(float(mx.abs(v).max()) for k, v in weights.items() if k.endswith("lora_b")) > 1e-3
    return run_dir


def mlx_lm_logps(base: Path, adapter: Path, arrays) -> np.ndarray:
    import mlx_lm

    model, _ = mlx_lm.load(str(base), adapter_path=str(adapter))
    return logps_of(model, arrays)


@pytest.mark.parametrize("mode", ["cached", "live"])
def test_first_step_is_at_the_reference(base, data, init_adapter, tmp_path, mode):
    run_dir = tmp_path / "run"
    status, events = train_run(
        base, data, run_dir, iters=2, init_adapter=str(init_adapter), reference=mode
    )
    assert status == "completed"
    first = step_events(events)[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert first["rewards/chosen"] == pytest.approx(0, abs=1e-5)
    assert first["rewards/rejected"] == pytest.approx(0, abs=1e-5)
    assert first["kl"] == pytest.approx(0, abs=1e-5)
    # Training continued from the init adapter: the saved adapter is neither zero nor it.
    config = json.loads((run_dir / "adapter_config.json").read_text())
    assert config["init_adapter_provenance"]["path"] == str(init_adapter.resolve())
    assert config["init_adapter_provenance"]["base_model"] == str(base)
    assert config["lora_parameters"]["rank"] == 4


def test_reference_equals_mlx_lm_base_plus_adapter(base, data, init_adapter, tmp_path):
    """Live: base + init adapter through the reference switch, also in training mode with
    LoRA dropout, and after the policy moved. Cached: the on-disk values of a run."""
    config = build_config(
        {},
        dict(
            model=str(base),
            data=str(data),
            init_adapter=str(init_adapter),
            lora_dropout=0.3,
        ),
    )
    session = open_session(config, splits=("train",))
    split = session.splits["train"]
    arrays = batch_arrays(collate(split.pairs[:4]))
    expected = mlx_lm_logps(base, init_adapter, arrays)
    session.model.train()  # dropout on: the reference must not see it
    np.testing.assert_allclose(
        np.array(reference_rows_logps(session, *arrays)), expected, rtol=1e-5, atol=1e-4
    )
    session.model.eval()
    np.testing.assert_allclose(
        np.array(rows_logps(session, *arrays)), expected, rtol=1e-5, atol=1e-4
    )
    session.model.update(tree_map(lambda p: p + 0.05, session.model.trainable_parameters()))
    assert np.abs(np.array(rows_logps(session, *arrays)) - expected).max() > 1e-2
    session.model.train()
    np.testing.assert_allclose(
        np.array(reference_rows_logps(session, *arrays)), expected, rtol=1e-5, atol=1e-4
    )

    # The cached reference a run stores holds the same numbers, for every train pair.
    status, _ = train_run(base, data, tmp_path / "run", iters=1, init_adapter=str(init_adapter))
    assert status == "completed"
    cached = reference.load_cached(
        reference.cache_key(session.weights_fingerprint, split), len(split)
    )
    assert cached is not None
    all_arrays = batch_arrays(collate(split.pairs))
    expected_all = mlx_lm_logps(base, init_adapter, all_arrays)
    n = len(split)
    np.testing.assert_allclose(cached[0], expected_all[:n], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(cached[1], expected_all[n:], rtol=1e-5, atol=1e-4)


def adapter_from(model: Path, data: Path, run_dir: Path) -> Path:
    """A fresh rank-4 adapter folder for `model`, as a run writes it."""
    from mlx_dpo.checkpoints import adapter_config, save_adapters
    from mlx_dpo.model import adapter_weights

    config = build_config({}, dict(model=str(model), data=str(data), lora_rank=4))
    session = open_session(config, splits=("train",))
    save_adapters(
        run_dir,
        adapter_weights(session.model),
        adapter_config(session.lora_layers, session.lora_parameters, {"base_model": str(model)}),
    )
    return run_dir


def refused(base: Path, data: Path, run_dir: Path, init: Path, **overrides) -> str:
    from mlx_dpo.events import read_events

    with pytest.raises(UserError) as info:
        train_run(base, data, run_dir, iters=2, init_adapter=str(init), **overrides)
    events = read_events(run_dir)
    assert not step_events(events) and events[-1]["status"] == "failed"
    return str(info.value)


def test_mismatched_init_adapters_are_refused(base, data, init_adapter, tmp_path):
    # Another rank than the one asked for.
    message = refused(base, data, tmp_path / "a", init_adapter, lora_rank=16)
    assert "'lora_rank' is 16 but the init adapter has 4" in message
    # An adapter whose config says one rank and whose tensors have another.
    edited = tmp_path / "edited"
    edited.mkdir()
    config = json.loads((init_adapter / "adapter_config.json").read_text())
    config["lora_parameters"]["rank"] = 8
    (edited / "adapter_config.json").write_text(json.dumps(config))
    (edited / "adapters.safetensors").write_bytes(
        (init_adapter / "adapters.safetensors").read_bytes()
    )
    message = refused(base, data, tmp_path / "b", edited)
    assert "does not fit the model" in message and "shape (64, 4)" in message
    # Trained on a model with more layers.
    deeper = build_quantizable(tmp_path / "deeper", num_layers=3)
    message = refused(base, data, tmp_path / "c", adapter_from(deeper, data, tmp_path / "d3"))
    assert "at least 3 layers; this one has 2" in message
    # Trained on a wider model.
    wider = build_quantizable(tmp_path / "wider", hidden_size=128, intermediate_size=256)
    message = refused(base, data, tmp_path / "e", adapter_from(wider, data, tmp_path / "w"))
    assert "does not fit the model" in message and "(128, 4)" in message
    # A folder that is not there.
    message = refused(base, data, tmp_path / "f", tmp_path / "missing")
    assert "no such adapter folder" in message


def test_cli_reports_a_mismatched_init_adapter(base, data, init_adapter, tmp_path, capsys):
    code = main(
        [
            "train",
            "--model",
            str(base),
            "--data",
            str(data),
            "--adapter-path",
            str(tmp_path / "run"),
            "--init-adapter",
            str(init_adapter),
            "--lora-layers",
            "1",
            "--no-tui",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "'lora_layers' is 1 but the init adapter has 2" in err
