"""Helpers for the tests of the trainer package: a small run's configuration, running it in
this process, and reading what it left."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np

from mlx_dpo.config import TrainConfig, build_config
from mlx_dpo.events import read_events
from mlx_dpo.trainer.run import RunOptions, train


def config_for(model: Path, data: Path, run_dir: Path | None = None, **overrides) -> TrainConfig:
    values = dict(
        model=str(model),
        data=str(data),
        adapter_path=None if run_dir is None else str(run_dir),
        iters=6,
        batch_size=4,
        learning_rate=2e-3,
        beta=0.5,
        eval_every=0,
        save_every=0,
        lora_rank=4,
        # The answers written at the start and each evaluation: tiny models rarely stop early.
        sample_max_tokens=8,
    )
    values.update(overrides)
    return build_config({}, values)


def run(config: TrainConfig, **options) -> tuple[str, list[dict]]:
    lines: list[str] = []
    status = train(
        config,
        RunOptions(
            Path(config.adapter_path), on_line=lines.append, handle_signals=False, **options
        ),
    )
    return status, read_events(config.adapter_path)


def run_with_lines(config: TrainConfig) -> tuple[str, list[dict], list[str]]:
    """run, and the console lines it said."""
    lines: list[str] = []
    status = train(
        config, RunOptions(Path(config.adapter_path), on_line=lines.append, handle_signals=False)
    )
    return status, read_events(config.adapter_path), lines


def run_start(events: list[dict]) -> dict:
    """The (first) run_start of a stream: the progress of loading comes before it."""
    return next(e for e in events if e["event"] == "run_start")


def steps(events: list[dict]) -> list[dict]:
    return [e for e in events if e["event"] == "step"]


def adapters(run_dir: Path) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in mx.load(str(run_dir / "adapters.safetensors")).items()}
