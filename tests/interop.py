"""Helpers for the export, QLoRA, init-adapter and compare tests: tiny models whose sizes
quantize (dimensions divisible by the group size 64), quantized copies made with mlx-lm's own
pieces, and short training runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np

from mlx_dpo.logprobs import find_head_split, response_logps
from tests.conftest import corpus
from tests.training import config_for, run

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def build_quantizable(path: Path, model_type: str = "llama", **kwargs) -> Path:
    """A tiny model whose linear layers quantize with group size 64."""
    from mlx_dpo.tiny import build_model

    settings = dict(model_type=model_type, texts=corpus(), hidden_size=64, intermediate_size=128)
    if model_type == "qwen2":
        settings.update(template="llama3", tie_word_embeddings=True, seed=2)
    settings.update(kwargs)
    return build_model(path, **settings)


def quantize_folder(source: Path, destination: Path, bits: int) -> Path:
    """What `mlx_lm.convert -q --q-bits BITS` does: load, quantize, save with the
    quantization recorded in config.json, tokenizer files beside."""
    from mlx_lm.utils import load_model, quantize_model, save_config, save_model

    model, config = load_model(source)
    model, config = quantize_model(model, config, group_size=64, bits=bits)
    save_model(destination, model)
    save_config(config, destination / "config.json")
    for name in TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copy(source / name, destination / name)
    return destination


def train_run(model: Path, data: Path, run_dir: Path, **overrides) -> tuple[str, list[dict]]:
    """A short run (4 steps at learning rate 5e-3 unless `overrides` say otherwise) in this
    process: its final state and its events."""
    settings = dict(iters=4, learning_rate=5e-3)
    settings.update(overrides)
    return run(config_for(model, data, run_dir, **settings))


def step_events(events: list[dict]) -> list[dict]:
    return [e for e in events if e["event"] == "step"]


def logps_of(model, arrays) -> np.ndarray:
    """Summed response log-probs of a collated batch under any mlx-lm model."""
    rows = response_logps(model, *arrays, find_head_split(model))
    mx.eval(rows)
    return np.array(rows)


def logits_of(model, tokens: list[int]) -> np.ndarray:
    out = model(mx.array([tokens]))
    mx.eval(out)
    return np.array(out.astype(mx.float32))
