"""Preference losses: a registry from name to a function returning the per-pair loss.

ρ = log π − log π_ref summed over response tokens, Δ = ρ_chosen − ρ_rejected.
Rewards are always β·ρ, whatever the loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from mlx_dpo.config import TrainConfig
from mlx_dpo.events import (
    KL,
    LOGPS_CHOSEN,
    LOGPS_REJECTED,
    REWARDS_ACCURACIES,
    REWARDS_CHOSEN,
    REWARDS_MARGINS,
    REWARDS_REJECTED,
)


@dataclass
class PairLogps:
    """Per-pair summed log-probabilities (B,) and response token counts (B,)."""

    policy_chosen: mx.array
    policy_rejected: mx.array
    reference_chosen: mx.array
    reference_rejected: mx.array
    chosen_tokens: mx.array
    rejected_tokens: mx.array

    @property
    def chosen_ratio(self) -> mx.array:
        return self.policy_chosen - self.reference_chosen

    @property
    def rejected_ratio(self) -> mx.array:
        return self.policy_rejected - self.reference_rejected


@dataclass(frozen=True)
class LossSettings:
    beta: float = TrainConfig.beta
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5


LossFn = Callable[[PairLogps, LossSettings], mx.array]
LOSSES: dict[str, LossFn] = {}


def register(name: str) -> Callable[[LossFn], LossFn]:
    def wrap(fn: LossFn) -> LossFn:
        LOSSES[name] = fn
        return fn

    return wrap


def _log_sigmoid(x: mx.array) -> mx.array:
    return -nn.softplus(-x)


@register("sigmoid")
def sigmoid_loss(logps: PairLogps, s: LossSettings) -> mx.array:
    """DPO; with label smoothing ε it is conservative DPO (cDPO)."""
    z = s.beta * (logps.chosen_ratio - logps.rejected_ratio)
    eps = s.label_smoothing
    return -(1 - eps) * _log_sigmoid(z) - eps * _log_sigmoid(-z)


@register("robust")
def robust_loss(logps: PairLogps, s: LossSettings) -> mx.array:
    """Robust DPO (Chowdhury et al., 2024): unbiased under label noise of rate ε."""
    z = s.beta * (logps.chosen_ratio - logps.rejected_ratio)
    eps = s.label_smoothing
    return (-(1 - eps) * _log_sigmoid(z) + eps * _log_sigmoid(-z)) / (1 - 2 * eps)


@register("hinge")
def hinge_loss(logps: PairLogps, s: LossSettings) -> mx.array:
    z = s.beta * (logps.chosen_ratio - logps.rejected_ratio)
    return nn.relu(1 - z)


@register("ipo")
def ipo_loss(logps: PairLogps, s: LossSettings) -> mx.array:
    """IPO (Azar et al., 2023) on length-averaged log-ratios."""
    delta = logps.chosen_ratio / logps.chosen_tokens - logps.rejected_ratio / logps.rejected_tokens
    return (delta - 1 / (2 * s.beta)) ** 2


@register("simpo")
def simpo_loss(logps: PairLogps, s: LossSettings) -> mx.array:
    """SimPO (Meng et al., 2024): reference-free, length-normalised, with a margin γ."""
    z = s.beta * (
        logps.policy_chosen / logps.chosen_tokens - logps.policy_rejected / logps.rejected_tokens
    )
    return -_log_sigmoid(z - s.simpo_gamma)


def pair_rewards(logps: PairLogps, beta: float) -> tuple[mx.array, mx.array]:
    """The implicit rewards of each pair, (chosen, rejected): β·ρ, whatever the loss."""
    return beta * logps.chosen_ratio, beta * logps.rejected_ratio


def pair_metrics(logps: PairLogps, beta: float) -> dict[str, mx.array]:
    """TRL-named metrics, each the mean over pairs; accuracy is per pair, never from means."""
    chosen_rewards, rejected_rewards = pair_rewards(logps, beta)
    return {
        REWARDS_CHOSEN: chosen_rewards.mean(),
        REWARDS_REJECTED: rejected_rewards.mean(),
        REWARDS_MARGINS: (chosen_rewards - rejected_rewards).mean(),
        REWARDS_ACCURACIES: (chosen_rewards > rejected_rewards).astype(mx.float32).mean(),
        LOGPS_CHOSEN: logps.policy_chosen.mean(),
        LOGPS_REJECTED: logps.policy_rejected.mean(),
        KL: mx.concatenate([logps.chosen_ratio, logps.rejected_ratio]).mean(),
    }


def preference_loss(
    name: str, logps: PairLogps, settings: LossSettings, sft_weight: float = 0.0
) -> tuple[mx.array, mx.array]:
    """(mean loss, per-pair loss). The SFT term is the chosen response's mean token NLL."""
    per_pair = LOSSES[name](logps, settings)
    if sft_weight:
        per_pair = per_pair + sft_weight * (-logps.policy_chosen / logps.chosen_tokens)
    return per_pair.mean(), per_pair
