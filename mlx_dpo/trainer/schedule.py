"""How long a run is and how fast it learns: its number of optimizer steps, the learning-rate
schedule (warmup, then constant, linear or cosine decay to 0) and the AdamW optimizer."""

from __future__ import annotations

import math
from collections.abc import Callable

import mlx.optimizers as optim

from mlx_dpo.batching import steps_per_epoch
from mlx_dpo.config import TrainConfig

Schedule = Callable | float  # step (0-based) -> learning rate, or one constant rate


def total_steps(config: TrainConfig, num_pairs: int, world_size: int = 1) -> int:
    """Optimizer steps of a run: `iters` when given, else `epochs` (default 1) over the
    train pairs, in steps of batch_size × grad_accumulation × world_size pairs (a last,
    smaller step in each epoch counts; batching.epoch_steps)."""
    if config.iters is not None:
        return config.iters
    epochs = 1.0 if config.epochs is None else config.epochs
    per_epoch = steps_per_epoch(num_pairs, config.batch_size, config.grad_accumulation, world_size)
    return max(1, math.ceil(epochs * per_epoch))


def build_schedule(config: TrainConfig, steps: int) -> Schedule:
    """The learning rate by step: `warmup` steps rising linearly to learning_rate, then
    lr_schedule over the remaining steps (a constant run without warmup is a plain float)."""
    lr = config.learning_rate
    decay_steps = max(1, steps - config.warmup)
    if config.lr_schedule == "constant":
        main = lambda _: lr  # noqa: E731
    elif config.lr_schedule == "linear":
        main = optim.linear_schedule(lr, 0.0, decay_steps)
    else:
        main = optim.cosine_decay(lr, decay_steps, 0.0)
    if config.warmup:
        warm = optim.linear_schedule(lr / max(config.warmup, 1), lr, config.warmup)
        return optim.join_schedules([warm, main], [config.warmup])
    if config.lr_schedule == "constant":
        return lr
    return main


def build_optimizer(config: TrainConfig, schedule: Schedule) -> optim.AdamW:
    """AdamW on the schedule, with the config's weight decay (initialised by the caller on
    the trainable parameters). Bias-corrected like PyTorch's AdamW (MLX's default is not), so
    learning rates mean what they mean in TRL (tests/unit/test_optimizer.py)."""
    return optim.AdamW(
        learning_rate=schedule, weight_decay=config.weight_decay, bias_correction=True
    )


def learning_rate_at(schedule: Schedule, step: int) -> float:
    """The learning rate optimizer step `step` (1-based) used: the schedule at step - 1."""
    return float(schedule(step - 1)) if callable(schedule) else float(schedule)
