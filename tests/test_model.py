"""Model configs written by transformers 5 load as transformers reads them: each shape that
mlx-lm's ModelArgs would silently misread (rope_theta, rope scaling and partial_rotary_factor
inside `rope_parameters`, per-layer-type rope parameters, `_sliding_window_pattern`) gives the
same logits as the same model with the legacy top-level keys, with a note; shapes that cannot
be mapped are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlx_dpo.errors import UserError
from mlx_dpo.model import load_model
from tests.interop import TOKENIZER_FILES, logits_of

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
