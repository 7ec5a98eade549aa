"""Loading the base model, LoRA and the reference switch (mlx_dpo/model.py): what is refused
and how, LoRA where asked and nothing else trainable, the switch restored even on error,
adapter folders checked before loading, and content fingerprints. Model configs written by
transformers 5 load as transformers reads them: each shape that mlx-lm's ModelArgs would
silently misread (rope_theta, rope scaling and partial_rotary_factor inside `rope_parameters`,
per-layer-type rope parameters, `_sliding_window_pattern`) gives the same logits as the same
model with the legacy top-level keys, with a note; shapes that cannot be mapped are refused."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

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
    load_model_tokenizer,
    named_lora_modules,
    reference_mode,
    resolve_model_path,
)
from tests.interop import TOKENIZER_FILES, logits_of


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
    remembered[key] = "0" * 64
    (memo / "file-hashes.json").write_text(json.dumps(remembered))
    assert fingerprint_files([a, b], memo) != expected.hexdigest()
    # An entry that is no digest (a damaged memo), or a memo that is no mapping, is hashed
    # again, not a traceback.
    for damaged in ({**remembered, key: "planted"}, {**remembered, key: 7}, [1, 2]):
        (memo / "file-hashes.json").write_text(json.dumps(damaged))
        assert fingerprint_files([a, b], memo) == expected.hexdigest()
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


def test_the_tokenizer_alone_is_mlx_lms(llama_chatml, tmp_path):
    from mlx_lm.utils import load_tokenizer

    tokenizer = load_model_tokenizer(str(llama_chatml))
    expected = load_tokenizer(llama_chatml)
    assert tokenizer.chat_template == expected.chat_template
    assert tokenizer.encode("what color is item 3?") == expected.encode("what color is item 3?")
    with pytest.raises(UserError, match="no such model folder"):
        load_model_tokenizer(str(tmp_path / "missing"))


# ---------------------------------------------------------------------------------------------
# Configs written by transformers 5


TOKENS = list(range(3, 40))

BASE = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
}


def tiny_pair(tmp_path: Path, tokenizer_dir: Path, legacy: dict, v5: dict) -> tuple[Path, Path]:
    """The same random weights in two folders: one config with the legacy keys, one with the
    transformers-5 shape."""
    from mlx_lm.utils import _get_classes, save_config, save_model

    vocab = json.loads((tokenizer_dir / "config.json").read_text())["vocab_size"]
    config = {**BASE, "vocab_size": vocab, **legacy}
    model_class, args_class = _get_classes(config)
    mx.random.seed(0)
    model = model_class(args_class.from_dict(config))
    mx.eval(model.parameters())
    folders = []
    for name, values in (("legacy", config), ("v5", {**BASE, "vocab_size": vocab, **v5})):
        folder = tmp_path / name
        folder.mkdir()
        save_model(folder, model)
        save_config(values, folder / "config.json")
        for file in TOKENIZER_FILES:
            if (tokenizer_dir / file).exists():
                shutil.copy(tokenizer_dir / file, folder / file)
        folders.append(folder)
    return folders[0], folders[1]


def load_with_notes(folder: Path):
    seen: list[str] = []
    model, _, _, _ = load_model(str(folder), on_note=seen.append)
    return model, seen


def mlx_lm_reading(folder: Path):
    """What mlx-lm makes of the folder on its own."""
    from mlx_lm.utils import load_model as mlx_load

    return mlx_load(folder)[0]


LLAMA3_SCALING = {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}

SHAPES = {
    "rope_theta": (
        {"model_type": "llama", "rope_theta": 500000.0},
        {
            "model_type": "llama",
            "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"},
        },
        ["rope_theta 500000.0"],
    ),
    "rope scaling": (
        {
            "model_type": "llama",
            "rope_theta": 500000.0,
            "rope_scaling": {"rope_type": "llama3", **LLAMA3_SCALING},
        },
        {
            "model_type": "llama",
            "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, **LLAMA3_SCALING},
        },
        ["rope_theta 500000.0", "rope scaling 'llama3'"],
    ),
    "qwen2 rope_theta": (
        {"model_type": "qwen2", "rope_theta": 5000.0},
        {"model_type": "qwen2", "rope_parameters": {"rope_theta": 5000.0, "rope_type": "default"}},
        ["rope_theta 5000.0"],
    ),
    "partial_rotary_factor": (
        {"model_type": "phi", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
        {
            "model_type": "phi",
            "rope_parameters": {
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.5,
                "rope_type": "default",
            },
        },
        ["partial_rotary_factor 0.5"],
    ),
    "per-layer-type rope and _sliding_window_pattern": (
        {
            "model_type": "gemma3_text",
            "head_dim": 16,
            "num_hidden_layers": 6,
            "rope_theta": 50000.0,
            "rope_local_base_freq": 500.0,
            "sliding_window_pattern": 2,
            "sliding_window": 4,
        },
        {
            "model_type": "gemma3_text",
            "head_dim": 16,
            "num_hidden_layers": 6,
            "rope_parameters": {
                "full_attention": {"rope_theta": 50000.0, "rope_type": "default"},
                "sliding_attention": {"rope_theta": 500.0, "rope_type": "default"},
            },
            "_sliding_window_pattern": 2,
            "sliding_window": 4,
        },
        ["rope_theta 50000.0", "rope_local_base_freq 500.0", "sliding_window_pattern 2"],
    ),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_transformers5_config_loads_as_the_legacy_one(shape, llama_chatml, tmp_path):
    legacy, v5, expected_notes = SHAPES[shape]
    legacy_dir, v5_dir = tiny_pair(tmp_path, llama_chatml, legacy, v5)
    reference, legacy_notes = load_with_notes(legacy_dir)
    model, notes = load_with_notes(v5_dir)
    assert legacy_notes == []
    for expected in expected_notes:
        assert any(expected in note for note in notes), (expected, notes)
    assert all("transformers-5 config" in note and "config.json" in note for note in notes)
    np.testing.assert_allclose(logits_of(model, TOKENS), logits_of(reference, TOKENS), atol=1e-5)
    # The shape matters: mlx-lm alone reads the v5 config into a different model.
    unfixed = logits_of(mlx_lm_reading(v5_dir), TOKENS)
    assert np.abs(unfixed - logits_of(reference, TOKENS)).max() > 1e-3


def test_a_model_reading_rope_parameters_itself_is_left_alone(llama_chatml, tmp_path):
    rope = {"rope_theta": 5000.0, "rope_type": "default"}
    common = {"model_type": "qwen3", "head_dim": 16}
    _, v5_dir = tiny_pair(
        tmp_path,
        llama_chatml,
        {**common, "rope_theta": 5000.0},
        {**common, "rope_parameters": rope},
    )
    _, notes = load_with_notes(v5_dir)
    assert notes == []


@pytest.mark.parametrize(
    "rope_parameters, message",
    [
        (
            {"full_attention": {"rope_theta": 1.0}, "chunked_attention": {"rope_theta": 2.0}},
            "layer types \\['chunked_attention'\\]",
        ),
        (
            {
                "full_attention": {"rope_theta": 1e6},
                "sliding_attention": {"rope_theta": 1e4, "rope_type": "linear", "factor": 2.0},
            },
            "sliding_attention has rope_type 'linear'",
        ),
    ],
)
def test_shapes_that_cannot_be_mapped_are_refused(rope_parameters, message, llama_chatml, tmp_path):
    common = {"model_type": "gemma3_text", "head_dim": 16}
    _, v5_dir = tiny_pair(
        tmp_path, llama_chatml, common, {**common, "rope_parameters": rope_parameters}
    )
    with pytest.raises(UserError, match=message):
        load_model(str(v5_dir))
