"""Adapters and checkpoints on disk (mlx_dpo/checkpoints.py): what a checkpoint holds and
loads back, a step saved again replaces the old one whole, torn writes are never taken for a
checkpoint and are tidied, the adapter config is what mlx-lm reads (with the run's fields
mapping, for eval), a damaged checkpoint is named."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlx_dpo.checkpoints import (
    DamagedCheckpoint,
    adapter_config,
    checkpoint_name,
    checkpoint_step,
    latest_checkpoint,
    load_checkpoint,
    remove_torn_writes,
    save_adapters,
    save_checkpoint,
)


def test_torn_checkpoint_is_ignored(tmp_path):
    (tmp_path / "checkpoints" / "step-0000004").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step-0000004" / "state.json").write_text('{"step": 4}')
    (tmp_path / "checkpoints" / ".step-0000006.abc").mkdir()  # a write that never finished
    (tmp_path / "checkpoints" / "step-0000008").mkdir()  # no state.json: incomplete
    assert latest_checkpoint(tmp_path).name == "step-0000004"


def weights(value: float) -> dict[str, mx.array]:
    return {
        "model.layers.0.self_attn.q_proj.lora_a": mx.full((4, 2), value),
        "model.layers.0.self_attn.q_proj.lora_b": mx.full((2, 4), -value),
    }


def test_a_checkpoint_loads_back_what_was_saved(tmp_path):
    optimizer_state = {"step": mx.array(3), "layers": [{"m": mx.arange(4.0), "v": mx.ones(4)}]}
    config = {"fine_tune_type": "lora", "num_layers": 1, "lora_parameters": {"rank": 2}}
    path = save_checkpoint(tmp_path, 12, weights(0.5), optimizer_state, config, {"seed": 7})
    assert path == tmp_path / "checkpoints" / "step-0000012"
    assert sorted(p.name for p in path.iterdir()) == [
        "adapter_config.json", "adapters.safetensors", "optimizer.safetensors", "state.json",
    ]  # fmt: skip
    loaded_weights, loaded_state, state = load_checkpoint(path)
    assert state == {"step": 12, "seed": 7}
    for name, value in weights(0.5).items():
        np.testing.assert_array_equal(np.array(loaded_weights[name]), np.array(value))
    assert loaded_state["step"].item() == 3
    np.testing.assert_array_equal(np.array(loaded_state["layers"][0]["m"]), [0, 1, 2, 3])
    assert json.loads((path / "adapter_config.json").read_text()) == config
    assert latest_checkpoint(tmp_path) == path


def test_a_step_saved_again_replaces_the_old_checkpoint_whole(tmp_path):
    save_checkpoint(tmp_path, 2, weights(1.0), {}, {}, {"n": 1})
    path = save_checkpoint(tmp_path, 2, weights(2.0), {}, {}, {"n": 2})
    assert load_checkpoint(path)[2] == {"step": 2, "n": 2}
    assert np.array(load_checkpoint(path)[0]["model.layers.0.self_attn.q_proj.lora_a"]).max() == 2
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-0000002"]


def test_checkpoint_names_sort_by_step_and_read_back():
    assert checkpoint_name(7) == "step-0000007"
    assert checkpoint_name(7) < checkpoint_name(12) < checkpoint_name(100)
    assert checkpoint_step(Path("run/checkpoints") / checkpoint_name(1234)) == 1234
    assert checkpoint_step(None) is None


def test_torn_writes_are_tidied_and_complete_checkpoints_kept(tmp_path):
    kept = save_checkpoint(tmp_path, 2, weights(1.0), {}, {}, {})
    torn = [
        tmp_path / "checkpoints" / ".step-0000004.abc",  # a checkpoint folder half written
        tmp_path / ".adapters.xyz.safetensors",  # the run directory's adapters
        tmp_path / ".status.json.123.tmp",  # an atomic JSON write
    ]
    torn[0].mkdir()
    (torn[0] / "adapters.safetensors").write_bytes(b"half")
    torn[1].write_bytes(b"half")
    torn[2].write_text("{")
    (tmp_path / ".launch.yaml").write_text("kept: true\n")  # not a temporary
    remove_torn_writes(tmp_path)
    assert not any(path.exists() for path in torn)
    assert kept.is_dir() and (tmp_path / ".launch.yaml").exists()


def test_adapters_are_what_mlx_lm_reads_with_the_runs_settings(tmp_path):
    run_config = {"beta": 0.2, "model": "m", "fields": {"prompt": "q"}, "health": {"patience": 3}}
    config = adapter_config(2, {"rank": 4, "scale": 20.0, "dropout": 0.0}, run_config)
    assert config == {
        "beta": 0.2, "model": "m", "fields": {"prompt": "q"}, "fine_tune_type": "lora",
        "num_layers": 2, "lora_parameters": {"rank": 4, "scale": 20.0, "dropout": 0.0},
    }  # fmt: skip
    save_adapters(tmp_path, weights(1.0), config)
    assert json.loads((tmp_path / "adapter_config.json").read_text()) == config
    assert set(mx.load(str(tmp_path / "adapters.safetensors"))) == set(weights(1.0))


def test_files_get_the_permissions_of_a_plain_write(tmp_path):
    old = os.umask(0o027)
    try:
        path = save_checkpoint(tmp_path, 1, weights(1.0), {}, {}, {})
    finally:
        os.umask(old)
    assert (path / "adapters.safetensors").stat().st_mode & 0o777 == 0o640
    assert (path / "state.json").stat().st_mode & 0o777 == 0o640
    assert path.stat().st_mode & 0o777 == 0o750


@pytest.mark.parametrize("missing", ["state.json", None])
def test_latest_checkpoint_needs_a_state_file(tmp_path, missing):
    path = save_checkpoint(tmp_path, 3, weights(1.0), {}, {}, {})
    if missing:
        (path / missing).unlink()
    assert latest_checkpoint(tmp_path) == (None if missing else path)


def damage(path: Path, how: str) -> None:
    """A checkpoint file damaged as a power cut or a full disk leaves it."""
    if how == "truncated adapters":
        target = path / "adapters.safetensors"
        os.truncate(target, target.stat().st_size // 2)
    elif how == "truncated optimizer":
        target = path / "optimizer.safetensors"
        os.truncate(target, 10)
    elif how == "bad JSON":
        (path / "state.json").write_text('{"step": ')
    elif how == "another step":
        (path / "state.json").write_text('{"step": 99}')
    else:
        raise ValueError(how)


@pytest.mark.parametrize(
    "how", ["truncated adapters", "truncated optimizer", "bad JSON", "another step"]
)
def test_a_damaged_checkpoint_is_named_not_a_traceback(tmp_path, how):
    path = save_checkpoint(tmp_path, 4, weights(1.0), {"step": mx.array(1)}, {}, {})
    damage(path, how)
    with pytest.raises(DamagedCheckpoint) as err:
        load_checkpoint(path)
    assert err.value.path == path
    file = {"truncated adapters": "adapters.safetensors", "truncated optimizer":
            "optimizer.safetensors"}.get(how, "state.json")  # fmt: skip
    assert err.value.reason.startswith(file)
