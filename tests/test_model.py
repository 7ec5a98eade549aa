"""Loading the base model, LoRA and the reference switch (mlx_dpo/model.py): what is refused
and how, LoRA where asked and nothing else trainable, the switch restored even on error,
adapter folders checked before loading, and content fingerprints."""

from __future__ import annotations

import hashlib
import json

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlx_dpo.errors import UserError
from mlx_dpo.model import (
    adapter_weights,
    apply_lora,
    check_model_folder,
    fingerprint_files,
    is_quantized,
    load_adapter_into,
    load_model,
    named_lora_modules,
    reference_mode,
    resolve_model_path,
)


def test_model_paths_that_are_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a model folder"):
        resolve_model_path(str(tmp_path / "file"))
    with pytest.raises(UserError, match="no such model folder"):
        resolve_model_path(str(tmp_path / "missing" / "deeper"))
    # An id of the hub form is looked up there; offline and not cached, it says so.
    with pytest.raises(UserError, match="HF_HUB_OFFLINE=1 is set"):
        resolve_model_path("nobody-here/no-such-model")
    with pytest.raises(UserError, match="no config.json"):
        check_model_folder(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.bin").write_bytes(b"")
    with pytest.raises(UserError, match="only safetensors weights are loaded"):
        check_model_folder(tmp_path)


def test_lora_on_the_last_layers_and_keys_asked(llama_chatml):
    model, _, _, _ = load_model(str(llama_chatml))
    params = apply_lora(model, rank=4, scale=2.0, dropout=0.0, layers=1, keys=["self_attn.q_proj"])
    assert params == {"rank": 4, "scale": 2.0, "dropout": 0.0, "keys": ["self_attn.q_proj"]}
    trainable = sorted(name for name, _ in tree_flatten(model.trainable_parameters()))
    assert trainable == [
        "model.layers.1.self_attn.q_proj.lora_a",
        "model.layers.1.self_attn.q_proj.lora_b",
    ]
    assert sorted(adapter_weights(model)) == trainable
    with pytest.raises(UserError, match="'lora_layers' is 3 but the model has 2 layers"):
        apply_lora(load_model(str(llama_chatml))[0], 4, 2.0, 0.0, layers=3)
    with pytest.raises(UserError, match=r"'lora_keys' \['nope'\] not found") as info:
        apply_lora(load_model(str(llama_chatml))[0], 4, 2.0, 0.0, keys=["nope"])
    assert "self_attn.q_proj" in str(info.value)  # names the linears there are


def test_reference_mode_switches_lora_off_and_back_even_on_error(llama_chatml):
    model, _, _, _ = load_model(str(llama_chatml))
    apply_lora(model, rank=4, scale=2.0, dropout=0.0)
    modules = dict(named_lora_modules(model))
    assert len(modules) == 2 * 7  # q, k, v, o, gate, up, down in each of 2 layers
    with reference_mode(model):
        assert all(m.scale == 0.0 for m in modules.values())
    assert all(m.scale == 2.0 for m in modules.values())
    frozen = {name: (mx.ones_like(m.lora_a), mx.ones_like(m.lora_b)) for name, m in modules.items()}
    with pytest.raises(RuntimeError), reference_mode(model, frozen):
        assert all(np.array(m.lora_a).min() == 1.0 for m in modules.values())
        raise RuntimeError("inside")
    assert all(m.scale == 2.0 and np.array(m.lora_b).max() == 0.0 for m in modules.values())


def write_adapter(folder, config: dict | str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    text = config if isinstance(config, str) else json.dumps(config)
    (folder / "adapter_config.json").write_text(text)
    mx.save_safetensors(str(folder / "adapters.safetensors"), {"x": mx.zeros(1)})


def test_adapter_folders_that_are_refused(llama_chatml, tmp_path):
    model, _, _, _ = load_model(str(llama_chatml))
    with pytest.raises(UserError, match="no such adapter folder"):
        load_adapter_into(model, tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="needs adapter_config.json and adapters.safetensors"):
        load_adapter_into(model, tmp_path / "empty")
    write_adapter(tmp_path / "torn", '{"lora_parameters": ')
    with pytest.raises(UserError, match=r"adapter_config.json:1: not valid JSON"):
        load_adapter_into(model, tmp_path / "torn")
    write_adapter(tmp_path / "dora", {"fine_tune_type": "dora"})
    with pytest.raises(UserError, match="'dora' is not supported"):
        load_adapter_into(model, tmp_path / "dora")
    write_adapter(tmp_path / "no-rank", {"lora_parameters": {"scale": 1.0}})
    with pytest.raises(UserError, match="'lora_parameters' needs 'rank' and 'scale'"):
        load_adapter_into(model, tmp_path / "no-rank")


def test_fingerprints_hash_the_contents_and_remember_them(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"first")
    b.write_bytes(b"second")
    expected = hashlib.sha256()
    for path in (a, b):
        expected.update(path.name.encode() + hashlib.sha256(path.read_bytes()).hexdigest().encode())
    memo = tmp_path / "memo"
    memo.mkdir()
    assert fingerprint_files([b, a], memo) == expected.hexdigest()
    remembered = json.loads((memo / "file-hashes.json").read_text())
    assert sorted(remembered.values()) == sorted(
        hashlib.sha256(p.read_bytes()).hexdigest() for p in (a, b)
    )
    # The memo is read by (path, size, mtime): a planted entry is used without hashing.
    key = next(k for k in remembered if k.startswith(str(a.resolve())))
    remembered[key] = "planted"
    (memo / "file-hashes.json").write_text(json.dumps(remembered))
    assert fingerprint_files([a, b], memo) != expected.hexdigest()
    # A changed file is hashed again.
    a.write_bytes(b"first, changed")
    assert fingerprint_files([a, b]) != expected.hexdigest()


def test_weights_are_read_in_chunks_and_the_reading_told(llama_chatml, monkeypatch):
    from mlx_dpo import model as model_module

    monkeypatch.setattr(model_module, "LOAD_CHUNK_BYTES", 64 * 1024)
    told = []
    net, _, _, _ = load_model(str(llama_chatml), progress=lambda *a: told.append(a))
    total = sum(v.nbytes for _, v in tree_flatten(net.parameters()))
    assert {(phase, unit) for phase, _, _, unit in told} == {("loading", "MB")}
    done = [d for _, d, _, _ in told]
    assert done[0] == 0 and done[-1] == told[-1][2] == round(total / 1e6, 1)
    assert len(told) > 3 and done == sorted(done)
    # Read, not lazy: the same numbers as mlx-lm's own eager load.
    from mlx_lm.utils import load_model as mlx_load_model

    eager, _ = mlx_load_model(llama_chatml)
    expected = dict(tree_flatten(eager.parameters()))
    for name, value in tree_flatten(net.parameters()):
        np.testing.assert_array_equal(np.array(value), np.array(expected[name]))


def test_is_quantized(llama_chatml):
    net, *_ = load_model(str(llama_chatml))
    assert not is_quantized(net)
    quantized, *_ = load_model(str(llama_chatml), quantize=8)
    assert is_quantized(quantized)
