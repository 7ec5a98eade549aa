"""The optimizer means what PyTorch's AdamW (and so TRL) means: MLX's AdamW with bias correction,
checked step by step against PyTorch's AdamW update written out in numpy (decoupled weight
decay `p -= lr*wd*p`, then the bias-corrected Adam step with ε outside the square root), with a
constant learning rate and with the run's schedules."""

from __future__ import annotations

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import pytest

from mlx_dpo.config import build_config
from mlx_dpo.trainer.schedule import build_optimizer, build_schedule

BETA1, BETA2, EPS = 0.9, 0.999, 1e-8


def torch_adamw(param, grads, lrs, weight_decay):
    """PyTorch's AdamW (torch.optim.AdamW, amsgrad off) in numpy, float64."""
    p = param.astype(np.float64).copy()
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    path = []
    for t, (g, lr) in enumerate(zip(grads, lrs, strict=True), start=1):
        p = p - lr * weight_decay * p
        m = BETA1 * m + (1 - BETA1) * g
        v = BETA2 * v + (1 - BETA2) * g * g
        m_hat = m / (1 - BETA1**t)
        v_hat = v / (1 - BETA2**t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + EPS)
        path.append(p.copy())
    return path


def mlx_adamw(param, grads, learning_rate, weight_decay, bias_correction=True):
    optimizer = optim.AdamW(
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        betas=[BETA1, BETA2],
        eps=EPS,
        bias_correction=bias_correction,
    )
    return optimizer_path(optimizer, param, grads)


def optimizer_path(optimizer, param, grads):
    params = {"w": mx.array(param)}
    optimizer.init(params)
    path = []
    for g in grads:
        params = optimizer.apply_gradients({"w": mx.array(g.astype(np.float32))}, params)
        mx.eval(params)
        path.append(np.array(params["w"], dtype=np.float64))
    return path


def _problem(steps: int = 12):
    rng = np.random.default_rng(0)
    param = rng.standard_normal((4, 5)).astype(np.float32)
    # Gradients of changing scale and sign, as in training.
    grads = [rng.standard_normal((4, 5)) * (0.5 + 0.2 * t) for t in range(steps)]
    return param, grads


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adamw_matches_pytorch_formula_step_by_step(weight_decay):
    param, grads = _problem()
    lr = 1e-2
    expected = torch_adamw(param, grads, [lr] * len(grads), weight_decay)
    got = mlx_adamw(param, grads, lr, weight_decay)
    for step, (a, b) in enumerate(zip(got, expected, strict=True), start=1):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-6, err_msg=f"step {step}")


@pytest.mark.parametrize(
    "schedule, warmup", [("cosine", 0), ("cosine", 3), ("linear", 2), ("constant", 4)]
)
def test_adamw_with_the_run_schedules(schedule, warmup):
    """The k-th update (k = 0, 1, ...) uses the schedule's value at k, as PyTorch's LR
    schedulers do for the k-th optimizer.step()."""
    param, grads = _problem(10)
    config = build_config(
        {},
        {"learning_rate": 5e-3, "lr_schedule": schedule, "warmup": warmup, "weight_decay": 0.01},
    )
    lr_schedule = build_schedule(config, len(grads))
    lrs = [
        float(lr_schedule(mx.array(k))) if callable(lr_schedule) else lr_schedule
        for k in range(len(grads))
    ]
    assert len(set(lrs)) > 1 or schedule == "constant"
    expected = torch_adamw(param, grads, lrs, 0.01)
    # The trainer's own optimizer (mlx_dpo/trainer/schedule.py), with MLX's default betas and ε.
    got = optimizer_path(build_optimizer(config, lr_schedule), param, grads)
    for step, (a, b) in enumerate(zip(got, expected, strict=True), start=1):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-6, err_msg=f"step {step}")


def test_without_bias_correction_early_steps_are_larger():
    """Why the trainer turns bias correction on: MLX's default makes the first step about 3x
    PyTorch's (1/sqrt(1-β2) · (1-β1) ≈ 3.16 for a steady gradient)."""
    param = np.zeros((3,), dtype=np.float32)
    grads = [np.ones(3)]
    plain = mlx_adamw(param, grads, 1e-3, 0.0, bias_correction=False)[0]
    corrected = mlx_adamw(param, grads, 1e-3, 0.0, bias_correction=True)[0]
    ratio = np.abs(plain).mean() / np.abs(corrected).mean()
    assert ratio == pytest.approx(0.1 / np.sqrt(0.001), rel=1e-3)
