"""Loss formulas against plain-Python computations, and the numbers DESIGN.md fixes."""

import math

import mlx.core as mx
import pytest

from mlx_dpo.losses import (
    LOSSES,
    LossSettings,
    PairLogps,
    pair_metrics,
    pair_rewards,
    preference_loss,
)


def logps(pc, pr, rc, rr, nc=4.0, nr=5.0) -> PairLogps:
    a = lambda v: mx.array(v if isinstance(v, list) else [v], dtype=mx.float32)  # noqa: E731
    return PairLogps(a(pc), a(pr), a(rc), a(rr), a(nc), a(nr))


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_sigmoid_reference_number():
    pair = logps(-3.5, -6.0, -4.0, -5.0)
    loss, _ = preference_loss("sigmoid", pair, LossSettings(beta=0.5))
    metrics = pair_metrics(pair, 0.5)
    assert loss.item() == pytest.approx(0.3868, abs=1e-4)
    assert metrics["rewards/margins"].item() == pytest.approx(0.75, abs=1e-6)
    assert metrics["rewards/chosen"].item() == pytest.approx(0.25)
    assert metrics["rewards/rejected"].item() == pytest.approx(-0.5)


@pytest.mark.parametrize("name", ["sigmoid", "robust"])
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_sigmoid_family_is_ln2_at_start(name, eps):
    pair = logps([-3.0, -7.0], [-5.0, -2.0], [-3.0, -7.0], [-5.0, -2.0])
    loss, per_pair = preference_loss(name, pair, LossSettings(beta=0.3, label_smoothing=eps))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    metrics = pair_metrics(pair, 0.3)
    assert metrics["rewards/chosen"].item() == 0
    assert metrics["rewards/rejected"].item() == 0
    assert metrics["rewards/accuracies"].item() == 0


@pytest.mark.parametrize("beta,eps", [(0.1, 0.0), (0.5, 0.2), (2.0, 0.45)])
def test_formulas_match_plain_python(beta, eps):
    pc, pr, rc, rr, nc, nr = -3.1, -5.7, -4.0, -5.2, 3.0, 7.0
    pair = logps(pc, pr, rc, rr, nc, nr)
    delta = (pc - rc) - (pr - rr)
    z = beta * delta
    expected = {
        "sigmoid": -(1 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z),
        "robust": (-(1 - eps) * log_sigmoid(z) + eps * log_sigmoid(-z)) / (1 - 2 * eps),
        "hinge": max(0.0, 1 - z),
        "ipo": ((pc - rc) / nc - (pr - rr) / nr - 1 / (2 * beta)) ** 2,
        "simpo": -log_sigmoid(beta * (pc / nc - pr / nr) - 0.7),
    }
    settings = LossSettings(beta=beta, label_smoothing=eps, simpo_gamma=0.7)
    for name, value in expected.items():
        if name in ("hinge", "ipo", "simpo") and eps:
            continue
        assert LOSSES[name](pair, settings).item() == pytest.approx(value, rel=1e-5), name


def test_sft_term_is_chosen_mean_nll():
    pair = logps(-6.0, -5.0, -6.0, -5.0, nc=3.0)
    loss, _ = preference_loss("sigmoid", pair, LossSettings(beta=0.1), sft_weight=0.5)
    assert loss.item() == pytest.approx(math.log(2) + 0.5 * 2.0, rel=1e-6)


def test_accuracy_is_per_pair_not_from_means():
    # One pair strongly right, one weakly wrong: mean rewards favour chosen, but only half
    # of the pairs are right (mlx-lm-lora would report 1.0 here).
    pair = logps([0.0, 0.0], [0.0, 0.0], [-10.0, 0.0], [0.0, -1.0])
    metrics = pair_metrics(pair, 1.0)
    assert metrics["rewards/chosen"].item() > metrics["rewards/rejected"].item()
    assert metrics["rewards/accuracies"].item() == pytest.approx(0.5)


def test_kl_is_mean_log_ratio():
    pair = logps([-1.0, -2.0], [-3.0, -4.0], [-1.5, -2.0], [-3.0, -5.0])
    assert pair_metrics(pair, 0.1)["kl"].item() == pytest.approx((0.5 + 0 + 0 + 1.0) / 4)


def test_pair_rewards_are_beta_times_the_log_ratios_per_pair():
    pair = logps([-3.5, -2.0], [-6.0, -1.0], [-4.0, -2.5], [-5.0, -3.0])
    chosen, rejected = pair_rewards(pair, 0.5)
    assert chosen.tolist() == pytest.approx([0.25, 0.25])
    assert rejected.tolist() == pytest.approx([-0.5, 1.0])
    # The metrics are their means; accuracy counts pairs, never means.
    metrics = pair_metrics(pair, 0.5)
    assert metrics["rewards/chosen"].item() == pytest.approx(0.25)
    assert metrics["rewards/accuracies"].item() == pytest.approx(0.5)
