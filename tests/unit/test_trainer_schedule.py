"""Steps, learning-rate schedules and the optimizer (mlx_dpo/trainer/schedule.py), against
values worked out by hand."""

from __future__ import annotations

import math

import mlx.optimizers as optim
import pytest

from mlx_dpo.config import build_config
from mlx_dpo.trainer.schedule import (
    build_optimizer,
    build_schedule,
    learning_rate_at,
    total_steps,
)


def config(**values):
    return build_config({}, {"learning_rate": 1e-3, **values})


def rates(schedule, steps: int) -> list[float]:
    """The learning rate of optimizer steps 1..steps, as the run reports them."""
    return [learning_rate_at(schedule, step) for step in range(1, steps + 1)]


def test_total_steps_from_iters_or_epochs():
    assert total_steps(config(iters=7), 1000) == 7
    # 24 pairs in steps of 4 × 4: one of 16 pairs and a last one of 8.
    assert total_steps(config(batch_size=4, grad_accumulation=4), 24) == 2
    assert total_steps(config(batch_size=2, grad_accumulation=8, epochs=2), 24) == 4
    # 25 pairs in steps of 8 (4 × 2 or 2 × 4): 3 full and a last one of 1 pair.
    assert total_steps(config(batch_size=4, grad_accumulation=2), 25) == 4
    assert total_steps(config(batch_size=2, grad_accumulation=4), 25) == 4
    assert total_steps(config(batch_size=4, epochs=2.5), 24) == 15
    # 2 ranks: global batches of 8 -> 3 an epoch.
    assert total_steps(config(batch_size=4), 24, world_size=2) == 3
    # 25 pairs: the last, smaller batch counts.
    assert total_steps(config(batch_size=4), 25) == 7
    assert total_steps(config(batch_size=4, epochs=0.01), 24) == 1


def test_constant_schedule_is_a_plain_rate():
    schedule = build_schedule(config(lr_schedule="constant"), 10)
    assert schedule == 1e-3
    assert rates(schedule, 3) == [1e-3] * 3


def test_linear_decays_to_zero_over_the_run():
    schedule = build_schedule(config(lr_schedule="linear"), 5)
    # Step s (1-based) is at s - 1 of 5 decay steps: 1e-3 · (1 - (s - 1) / 5).
    assert rates(schedule, 5) == pytest.approx([1e-3, 8e-4, 6e-4, 4e-4, 2e-4], rel=1e-6)


def test_cosine_decays_to_zero_over_the_run():
    schedule = build_schedule(config(lr_schedule="cosine"), 4)
    expected = [0.5e-3 * (1 + math.cos(math.pi * s / 4)) for s in range(4)]
    assert rates(schedule, 4) == pytest.approx(expected, rel=1e-5, abs=1e-12)


def test_warmup_rises_linearly_then_the_schedule_takes_over():
    schedule = build_schedule(config(lr_schedule="linear", warmup=4), 8)
    # Warmup from lr/4 to lr over 4 steps, then linear decay over the remaining 4.
    assert rates(schedule, 8) == pytest.approx(
        [2.5e-4, 4.375e-4, 6.25e-4, 8.125e-4, 1e-3, 7.5e-4, 5e-4, 2.5e-4], rel=1e-5
    )
    constant = build_schedule(config(lr_schedule="constant", warmup=2), 5)
    assert rates(constant, 5) == pytest.approx([5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3], rel=1e-6)


def test_the_optimizer_is_adamw_with_the_configs_weight_decay():
    schedule = build_schedule(config(lr_schedule="constant"), 3)
    optimizer = build_optimizer(config(weight_decay=0.05), schedule)
    assert isinstance(optimizer, optim.AdamW)
    assert optimizer.weight_decay == 0.05
    assert optimizer.learning_rate.item() == pytest.approx(1e-3)
