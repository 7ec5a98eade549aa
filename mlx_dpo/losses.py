"""Preference losses: a registry from name to a function returning per-pair loss terms, the
objective that combines them, and KTO's loss over unpaired completions.

ρ = log π − log π_ref summed over response tokens, Δ = ρ_chosen − ρ_rejected, ℓ = log π
summed over the response, |y| its token count. Formulas follow TRL's trainers (DPOTrainer's
loss types, ORPO, CPO, KTO) and the papers named in mlx_dpo/loss_catalog.py.

The objective (`pair_objective`) is what a training step differentiates:
    Σ_k w_k · loss_k  (a weighted list, TRL's `loss_type` + `loss_weights`; the MPO recipe is
                       [sigmoid, bco_pair, sft])
    + sft_weight · (the chosen answer's mean token NLL, per pair: RPO)
    all times the WPO weight of each pair when `use_weighting` is on,
on log-probs that LD-DPO desensitises to length when `ld_alpha` is set. BCO's reward shift is
state that lives from step to step: `initial_loss_state` makes it, the objective returns the
advanced state, and the trainer passes it to the next call and keeps it in checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import mlx.core as mx
import mlx.nn as nn

from mlx_dpo import loss_catalog
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
from mlx_dpo.loss_catalog import REWARD_MEAN_LOGP, REWARD_RATIO, REWARD_SUM_LOGP

LossState = dict[str, mx.array]
# A mean over data-parallel ranks (identity with one process): BCO's batch reward and KTO's
# KL estimate are means over the global batch, as TRL gathers them.
RankMean = Callable[[mx.array], mx.array]


@dataclass
class PairLogps:
    """Per-pair log-probabilities (B,) of a batch, chosen and rejected.

    policy_*/reference_*: log-probs summed over response tokens; the reference is None in a
    reference-free run (simpo, orpo, cpo, sft). *_tokens: response token counts.
    *_tail (LD-DPO, only with ld_alpha): the same sums over the response tokens past the
    pair's shorter response (positions >= min(|y_c|, |y_r|)); `response_sums` computes both.
    chosen_wpo/rejected_wpo (WPO, only with use_weighting): Σ over response tokens of
    log p(y_t) − log Σ_v p(v)² under the policy, no gradient; `wpo_token_terms` computes the
    per-token terms from logits."""

    policy_chosen: mx.array
    policy_rejected: mx.array
    reference_chosen: mx.array | None
    reference_rejected: mx.array | None
    chosen_tokens: mx.array
    rejected_tokens: mx.array
    policy_chosen_tail: mx.array | None = None
    policy_rejected_tail: mx.array | None = None
    reference_chosen_tail: mx.array | None = None
    reference_rejected_tail: mx.array | None = None
    chosen_wpo: mx.array | None = None
    rejected_wpo: mx.array | None = None

    @property
    def has_reference(self) -> bool:
        return self.reference_chosen is not None and self.reference_rejected is not None

    def _need_reference(self) -> None:
        if not self.has_reference:
            raise ValueError("this loss needs reference log-probs, and the batch has none")

    @property
    def chosen_ratio(self) -> mx.array:
        self._need_reference()
        return self.policy_chosen - self.reference_chosen

    @property
    def rejected_ratio(self) -> mx.array:
        self._need_reference()
        return self.policy_rejected - self.reference_rejected

    @property
    def chosen_mean(self) -> mx.array:
        """Length-averaged policy log-prob of the chosen response."""
        return self.policy_chosen / self.chosen_tokens

    @property
    def rejected_mean(self) -> mx.array:
        return self.policy_rejected / self.rejected_tokens


@dataclass(frozen=True)
class LossSettings:
    """Everything a loss reads besides the log-probs (TRL's names and defaults). `losses` and
    `loss_weights` are the weighted list (weights default to 1 each)."""

    beta: float = TrainConfig.beta
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5
    losses: tuple[str, ...] = ("sigmoid",)
    loss_weights: tuple[float, ...] | None = None
    sft_weight: float = 0.0
    discopop_tau: float = 0.05
    cpo_alpha: float = 1.0
    ld_alpha: float | None = None
    use_weighting: bool = False
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0

    @property
    def weights(self) -> tuple[float, ...]:
        return self.loss_weights or (1.0,) * len(self.losses)


def settings_from_config(config: TrainConfig) -> LossSettings:
    """The loss settings of a validated TrainConfig."""
    return LossSettings(
        beta=config.beta,
        label_smoothing=config.label_smoothing,
        simpo_gamma=0.5 if config.simpo_gamma is None else config.simpo_gamma,
        losses=loss_catalog.loss_names(config.loss),
        loss_weights=tuple(config.loss_weights) if config.loss_weights else None,
        sft_weight=config.sft_weight,
        discopop_tau=config.discopop_tau,
        cpo_alpha=config.cpo_alpha,
        ld_alpha=config.ld_alpha,
        use_weighting=config.use_weighting,
        desirable_weight=config.desirable_weight,
        undesirable_weight=config.undesirable_weight,
    )


LossFn = Callable[[PairLogps, LossSettings, LossState], mx.array]
LOSSES: dict[str, LossFn] = {}


def register(*names: str) -> Callable[[LossFn], LossFn]:
    def wrap(fn: LossFn) -> LossFn:
        for name in names:
            LOSSES[name] = fn
        return fn

    return wrap


def _log_sigmoid(x: mx.array) -> mx.array:
    return -nn.softplus(-x)


def _smoothed_logistic(z: mx.array, eps: float) -> mx.array:
    """−(1−ε)·logσ(z) − ε·logσ(−z): the logistic loss with label smoothing ε (cDPO)."""
    return -(1 - eps) * _log_sigmoid(z) - eps * _log_sigmoid(-z)


def _chosen_nll(logps: PairLogps) -> mx.array:
    """The chosen responses' NLL averaged over all their tokens in the batch (TRL's cross
    entropy for sft, ORPO and CPO), repeated per pair so it sums like the other terms."""
    nll = -logps.policy_chosen.sum() / logps.chosen_tokens.sum()
    return mx.broadcast_to(nll, logps.policy_chosen.shape)


# ---------------------------------------------------------------------------------------------
# Losses with a reference model


@register("sigmoid")
def sigmoid_loss(logps: PairLogps, s: LossSettings, state: LossState) -> mx.array:
    """DPO; with label smoothing ε it is conservative DPO (cDPO)."""
    return _smoothed_logistic(
        s.beta * (logps.chosen_ratio - logps.rejected_ratio), s.label_smoothing
    )


@register("robust")
def robust_loss(logps: PairLogps, s: LossSettings, state: LossState) -> mx.array:
    """Robust DPO (Chowdhury et al., 2024): unbiased under label noise of rate ε."""
    z = s.beta * (logps.chosen_ratio - logps.rejected_ratio)
    eps = s.label_smoothing
    return (-(1 - eps) * _log_sigmoid(z) + eps * _log_sigmoid(-z)) / (1 - 2 * eps)


@register("hinge")
def hinge_loss(logps: PairLogps, s: LossSettings, state: LossState) -> mx.array:
    z = s.beta * (logps.chosen_ratio - logps.rejected_ratio)
    return nn.relu(1 - z)


@register("ipo")
def ipo_loss(logps: PairLogps, s: LossSettings, state: LossState) -> mx.array:
    """IPO (Azar et al., 2023) on length-averaged log-ratios."""
    delta = logps.chosen_ratio / logps.chosen_tokens - logps.rejected_ratio / logps.rejected_tokens
    return (delta - 1 / (2 * s.beta)) ** 2


@register("sigmoid_norm")
def sigmoid_norm_loss(logps: PairLogps, s: LossSettings, state: LossState) -> mx.array:
    """DPO on length-averaged log-ratios (TRL's sigmoid_norm)."""
    delta = logps.chosen_ratio / logps.chosen_tokens - logps.rejected_ratio / logps.rejected_tokens
    return -_log_sigmoid(s.beta * delta)


@register("exo_pair")
def exo_pair_loss(logps: PairLogps, s: LossSettings, state: LossState) -> mx.array:
    """EXO (Ji et al., 2024, eq. 16): KL(p_θ ‖ p_label) over {chosen, rejected}, where
    p_θ = softmax of β·ρ and the label distribution is (1−ε, ε). Needs 0 < ε < 1."""
    z = s.beta * (logps.chosen_ratio - logps.rejected_ratio)
    eps = s.label_smoothing
    return mx.sigmoid(z) * (_log_sigmoid(z) - math.log1p(-eps)) + mx.sigmoid(-z) * (
        _log_sigmoid(-z) - math.log(eps)
    )


@register("nca_pair")
def nca_pair_loss(logps: PairLogps, s: LossSettings, state: LossState) -> mx.array:
    """NCA (Chen et al., 2024), pairwise: −logσ(r_c) − ½logσ(−r_c) − ½logσ(−r_r), r = β·ρ."""
    chosen, rejected = s.beta * logps.chosen_ratio, s.beta * logps.rejected_ratio
    return -_log_sigmoid(chosen) - 0.5 * _log_sigmoid(-chosen) - 0.5 * _log_sigmoid(-rejected)


@register("bco_pair")
def bco_pair_loss(logps: PairLogps, s: LossSettings, state: LossState) -> mx.array:
    """BCO (Jung et al., 2024), pairwise: −logσ(r_c − δ) − logσ(−(r_r − δ)), r = β·ρ, with δ
    the running mean of the batches' mean reward (state "bco_reward_mean", no gradient)."""
    if "bco_reward_mean" not in state:
        raise ValueError("bco_pair needs its reward shift: pass initial_loss_state(settings)")
    shift = mx.stop_gradient(state["bco_reward_mean"])
    chosen, rejected = s.beta * logps.chosen_ratio, s.beta * logps.rejected_ratio
    return -_log_sigmoid(chosen - shift) - _log_sigmoid(-(rejected - shift))


@register("sppo_hard")
def sppo_hard_loss(logps: PairLogps, s: LossSettings, state: LossState) -> mx.array:
    """SPPO with hard labels (Wu et al., 2024): (ρ_c − 1/(2β))² + (ρ_r + 1/(2β))²."""
    target = 0.5 / s.beta
    return (logps.chosen_ratio - target) ** 2 + (logps.rejected_ratio + target) ** 2


@register("aot")
def aot_loss(logps: PairLogps, s: LossSettings, state: LossState) -> mx.array:
    """AOT (Melnyk et al., 2024), paired: the logistic loss on sorted policy margins minus
    sorted reference margins. Its terms are per quantile of the batch, not per pair."""
    policy = mx.sort(logps.policy_chosen - logps.policy_rejected)
    logps._need_reference()
    reference = mx.sort(logps.reference_chosen - logps.reference_rejected)
    return _smoothed_logistic(s.beta * (policy - reference), s.label_smoothing)


@register("aot_unpaired", "aot_pair")
def aot_unpaired_loss(logps: PairLogps, s: LossSettings, state: LossState) -> mx.array:
    """AOT for unpaired data: sorted chosen log-ratios against sorted rejected log-ratios
    (TRL's aot_unpaired, formerly aot_pair). Terms are per quantile, not per pair."""
    delta = mx.sort(logps.chosen_ratio) - mx.sort(logps.rejected_ratio)
    return _smoothed_logistic(s.beta * delta, s.label_smoothing)


@register("apo_zero")
def apo_zero_loss(logps: PairLogps, s: LossSettings, state: LossState) -> mx.array:
    """APO-zero (D'Oosterlinck et al., 2024, eq. 7): (1 − σ(β·ρ_c)) + σ(β·ρ_r)."""
    return (1 - mx.sigmoid(s.beta * logps.chosen_ratio)) + mx.sigmoid(s.beta * logps.rejected_ratio)


@register("apo_down")
def apo_down_loss(logps: PairLogps, s: LossSettings, state: LossState) -> mx.array:
    """APO-down (eq. 8): σ(β·ρ_c) + (1 − σ(β·Δ))."""
    delta = logps.chosen_ratio - logps.rejected_ratio
    return mx.sigmoid(s.beta * logps.chosen_ratio) + (1 - mx.sigmoid(s.beta * delta))


@register("discopop")
def discopop_loss(logps: PairLogps, s: LossSettings, state: LossState) -> mx.array:
    """DiscoPOP / log-ratio modulated loss (Lu et al., 2024, eq. 5), z = β·Δ:
    (1 − σ(z/τ))·(−logσ(z)) + σ(z/τ)·exp(−z)."""
    z = s.beta * (logps.chosen_ratio - logps.rejected_ratio)
    mix = mx.sigmoid(z / s.discopop_tau)
    return (1 - mix) * -_log_sigmoid(z) + mix * mx.exp(-z)


# ---------------------------------------------------------------------------------------------
# Reference-free losses and the NLL term


@register("simpo")
def simpo_loss(logps: PairLogps, s: LossSettings, state: LossState) -> mx.array:
    """SimPO (Meng et al., 2024): reference-free, length-normalised, with a margin γ."""
    return -_log_sigmoid(s.beta * (logps.chosen_mean - logps.rejected_mean) - s.simpo_gamma)


def log1mexp(x: mx.array) -> mx.array:
    """log(1 − exp(x)) for x < 0, without cancellation: log1p(−eˣ) below −ln 2,
    log(−expm1(x)) above. Each branch only sees the inputs it is accurate on, so the branch
    not taken has a finite gradient (where() passes it zero, and 0·inf would be NaN)."""
    cut = -math.log(2.0)
    low = mx.minimum(x, cut)
    high = mx.clip(x, cut, -1e-30)
    return mx.where(x < cut, mx.log1p(-mx.exp(low)), mx.log(-mx.expm1(high)))


def orpo_log_odds(logps: PairLogps) -> mx.array:
    """ORPO's log odds ratio of chosen over rejected, on length-averaged log-probs p:
    log(p_c/(1−p_c)) − log(p_r/(1−p_r)). A mean log-prob of exactly 0 (a response the model
    is certain of, in float32) is held just below 0, where the odds are huge but finite."""
    chosen = mx.minimum(logps.chosen_mean, -1e-6)
    rejected = mx.minimum(logps.rejected_mean, -1e-6)
    return (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))


@register("orpo")
def orpo_loss(logps: PairLogps, s: LossSettings, state: LossState) -> mx.array:
    """ORPO (Hong et al., 2024): chosen NLL − λ·logσ(log odds ratio), λ = beta. The NLL is
    over response tokens only (TRL's also counts the prompt's tokens)."""
    return _chosen_nll(logps) - s.beta * _log_sigmoid(orpo_log_odds(logps))


@register("cpo")
def cpo_loss(logps: PairLogps, s: LossSettings, state: LossState) -> mx.array:
    """CPO (Xu et al., 2024): −logσ(β(ℓ_c − ℓ_r)) (with label smoothing) + cpo_alpha·NLL."""
    z = s.beta * (logps.policy_chosen - logps.policy_rejected)
    return _smoothed_logistic(z, s.label_smoothing) + s.cpo_alpha * _chosen_nll(logps)


@register("sft")
def sft_loss(logps: PairLogps, s: LossSettings, state: LossState) -> mx.array:
    """The chosen responses' NLL, token mean over the batch (TRL's sft loss type)."""
    return _chosen_nll(logps)


# ---------------------------------------------------------------------------------------------
# Inputs the options need: LD-DPO sums, WPO terms


def response_sums(token_logps: mx.array, mask: mx.array) -> tuple[mx.array, mx.array]:
    """(sums, tail sums) per row of per-token log-probs (R, W) with their response mask
    (R, W), rows being B chosen then B rejected responses (both of the trainer's layouts).
    The tail is each response past the pair's shorter one: LD-DPO's "verbose" part."""
    mask = mask.astype(token_logps.dtype)
    position = mx.cumsum(mask, axis=1)  # 1-based index among the response tokens
    counts = mask.sum(axis=1)
    n = counts.shape[0] // 2
    shared = mx.minimum(counts[:n], counts[n:])
    shared = mx.concatenate([shared, shared])[:, None]
    tail = mask * (position > shared)
    return (token_logps * mask).sum(axis=1), (token_logps * tail).sum(axis=1)


def desensitised(logps: PairLogps, alpha: float) -> PairLogps:
    """LD-DPO (Liu et al., 2024): log-probs with the tail past the shorter response scaled by
    α, ℓ − (1 − α)·tail, for policy and reference alike (as TRL does)."""
    tails = (logps.policy_chosen_tail, logps.policy_rejected_tail)
    if any(t is None for t in tails):
        raise ValueError("ld_alpha needs the tail sums of the policy log-probs (response_sums)")
    scale = 1.0 - alpha
    values = {
        "policy_chosen": logps.policy_chosen - scale * logps.policy_chosen_tail,
        "policy_rejected": logps.policy_rejected - scale * logps.policy_rejected_tail,
    }
    if logps.has_reference:
        if logps.reference_chosen_tail is None or logps.reference_rejected_tail is None:
            raise ValueError("ld_alpha needs the tail sums of the reference log-probs too")
        values["reference_chosen"] = logps.reference_chosen - scale * logps.reference_chosen_tail
        values["reference_rejected"] = (
            logps.reference_rejected - scale * logps.reference_rejected_tail
        )
    return replace(logps, **values)


def wpo_token_terms(logits: mx.array, targets: mx.array) -> mx.array:
    """WPO's per-token term log p(y_t) − log Σ_v p(v)² = z_t + lse(z) − lse(2z) for logits z
    (..., V) and targets (...), float32, no gradient. Sum it over response tokens into
    PairLogps.chosen_wpo/rejected_wpo."""
    z = mx.stop_gradient(logits).astype(mx.float32)
    target = mx.take_along_axis(z, targets[..., None], axis=-1)[..., 0]
    return target + mx.logsumexp(z, axis=-1) - mx.logsumexp(2 * z, axis=-1)


def wpo_weights(logps: PairLogps) -> mx.array:
    """WPO (Zhou et al., 2024, eq. 2): each pair weighs exp(mean term of chosen + mean term
    of rejected), i.e. how likely the policy is to write this pair now; no gradient."""
    if logps.chosen_wpo is None or logps.rejected_wpo is None:
        raise ValueError("use_weighting needs chosen_wpo/rejected_wpo (wpo_token_terms)")
    log_weight = logps.chosen_wpo / logps.chosen_tokens + logps.rejected_wpo / logps.rejected_tokens
    return mx.stop_gradient(mx.exp(log_weight))


# ---------------------------------------------------------------------------------------------
# State carried between steps (BCO's reward shift)


def initial_loss_state(settings: LossSettings) -> LossState:
    """The state a fresh run starts with: BCO's running mean of rewards and its count (both
    0), or nothing. Arrays, so a compiled step can take it in and hand the next one out."""
    if "bco_pair" not in settings.losses:
        return {}
    return {
        "bco_reward_mean": mx.array(0.0, dtype=mx.float32),
        "bco_reward_count": mx.array(0.0, dtype=mx.float32),
    }


def advance_loss_state(
    state: LossState, logps: PairLogps, settings: LossSettings, rank_mean: RankMean | None = None
) -> LossState:
    """The state after one batch: BCO's running mean takes in the batch's mean reward β·ρ over
    chosen and rejected (a mean over ranks too), each batch counting once, as TRL's
    RunningMoments.update does with a scalar."""
    if "bco_reward_mean" not in state:
        return state
    rewards = settings.beta * mx.concatenate([logps.chosen_ratio, logps.rejected_ratio])
    batch_mean = mx.stop_gradient(rewards.mean())
    if rank_mean is not None:
        batch_mean = rank_mean(batch_mean)
    count = state["bco_reward_count"] + 1
    mean = state["bco_reward_mean"] + (batch_mean - state["bco_reward_mean"]) / count
    return {**state, "bco_reward_mean": mean, "bco_reward_count": count}


# ---------------------------------------------------------------------------------------------
# The objective


@dataclass
class LossResult:
    """loss: the scalar to differentiate. per_item: the per-pair (KTO: per-completion) terms
    whose mean is the loss (aot's are per quantile). metrics: METRIC_NAMES other than loss,
    plus extras (orpo: nll_loss, log_odds_ratio, log_odds_chosen; bco_pair:
    bco_reward_shift; kto: count/desirable, count/undesirable). state: the state to pass to
    the next call."""

    loss: mx.array
    per_item: mx.array
    metrics: dict[str, mx.array]
    state: LossState = field(default_factory=dict)


def pair_rewards(
    logps: PairLogps, beta: float, kind: str = REWARD_RATIO
) -> tuple[mx.array, mx.array]:
    """The implicit rewards of each pair, (chosen, rejected): β·ρ, or for a reference-free
    loss β times what it measures (the mean or summed policy log-prob)."""
    if kind == REWARD_RATIO:
        return beta * logps.chosen_ratio, beta * logps.rejected_ratio
    if kind == REWARD_MEAN_LOGP:
        return beta * logps.chosen_mean, beta * logps.rejected_mean
    if kind == REWARD_SUM_LOGP:
        return beta * logps.policy_chosen, beta * logps.policy_rejected
    raise ValueError(f"no rewards of kind {kind!r}")


def pair_metrics(logps: PairLogps, beta: float, reward: str = REWARD_RATIO) -> dict[str, mx.array]:
    """TRL-named metrics, each the mean over pairs; accuracy is per pair, never from means.
    Rewards are β·ρ, or for a reference-free run what its loss measures (β times the mean or
    summed policy log-prob, as TRL's CPO and ORPO trainers log them); `kl` is NaN without a
    reference (written as null)."""
    chosen_rewards, rejected_rewards = pair_rewards(logps, beta, reward)
    if logps.has_reference:
        kl = mx.concatenate([logps.chosen_ratio, logps.rejected_ratio]).mean()
    else:
        kl = mx.array(float("nan"), dtype=mx.float32)
    return {
        REWARDS_CHOSEN: chosen_rewards.mean(),
        REWARDS_REJECTED: rejected_rewards.mean(),
        REWARDS_MARGINS: (chosen_rewards - rejected_rewards).mean(),
        REWARDS_ACCURACIES: (chosen_rewards > rejected_rewards).astype(mx.float32).mean(),
        LOGPS_CHOSEN: logps.policy_chosen.mean(),
        LOGPS_REJECTED: logps.policy_rejected.mean(),
        KL: kl,
    }


def pair_objective(
    logps: PairLogps,
    settings: LossSettings,
    state: LossState | None = None,
    *,
    advance: bool = True,
    rank_mean: RankMean | None = None,
) -> LossResult:
    """The training objective of a batch of pairs (see the module docstring). `advance`
    updates the loss state with this batch (training); evaluation passes False and uses the
    state as it is. With ld_alpha every preference term, reward and log-prob metric uses the
    desensitised log-probs (as TRL logs them); the NLL terms use the plain ones."""
    names = settings.losses
    unknown = [n for n in names if n not in LOSSES]
    if unknown or any(n in loss_catalog.UNPAIRED for n in names):
        raise ValueError(f"not losses over pairs: {', '.join(unknown or names)}")
    plain = logps
    if settings.ld_alpha is not None:
        logps = desensitised(logps, settings.ld_alpha)
    state = dict(state or {})  # bco_pair refuses to run without its state: never a silent fresh one
    if advance:
        state = advance_loss_state(state, logps, settings, rank_mean)
    per_pair = mx.zeros(plain.policy_chosen.shape, dtype=mx.float32)
    for name, weight in zip(names, settings.weights, strict=True):
        per_pair = per_pair + weight * LOSSES[name](
            plain if name == "sft" else logps, settings, state
        )
    if settings.sft_weight:
        per_pair = per_pair + settings.sft_weight * (-plain.policy_chosen / plain.chosen_tokens)
    if settings.use_weighting:
        if any(n in loss_catalog.SORTING for n in names):
            raise ValueError("WPO weights are per pair, and aot's terms are per quantile")
        per_pair = per_pair * wpo_weights(plain)
    metrics = pair_metrics(logps, settings.beta, loss_catalog.reward_kind(names))
    if "orpo" in names:
        log_odds = orpo_log_odds(plain)
        metrics["nll_loss"] = -plain.policy_chosen.sum() / plain.chosen_tokens.sum()
        metrics["log_odds_ratio"] = _log_sigmoid(log_odds).mean()
        metrics["log_odds_chosen"] = log_odds.mean()
    if "bco_reward_mean" in state:
        metrics["bco_reward_shift"] = state["bco_reward_mean"]
    return LossResult(per_pair.mean(), per_pair, metrics, state)


def preference_loss(
    name: str, logps: PairLogps, settings: LossSettings, sft_weight: float = 0.0
) -> tuple[mx.array, mx.array]:
    """(mean loss, per-pair loss) of one stateless loss plus an SFT term of weight
    sft_weight (the chosen response's mean token NLL, per pair). The trainer's call before
    the step calls pair_objective; kept so that it works unchanged."""
    result = pair_objective(logps, replace(settings, losses=(name,), sft_weight=sft_weight))
    return result.loss, result.per_item


# ---------------------------------------------------------------------------------------------
# KTO: unpaired completions


@dataclass
class UnpairedLogps:
    """Per-completion log-probs (B,) of a batch of unpaired completions.

    policy/reference: summed over the completion's tokens. desirable: 1.0 for a thumbs-up
    completion, 0.0 for a thumbs-down one. kl_policy/kl_reference: the same sums for the
    mismatched rows (prompt i with the completion of row i−1 of the batch,
    mlx_dpo.unpaired.kl_completions); only their mean is used, with no gradient."""

    policy: mx.array
    reference: mx.array
    desirable: mx.array
    kl_policy: mx.array
    kl_reference: mx.array


def kto_kl(logps: UnpairedLogps, rank_mean: RankMean | None = None) -> mx.array:
    """KTO's reference point z: the mean policy − reference log-ratio of the mismatched rows
    (over ranks too), clamped at 0 and detached, as TRL computes it."""
    kl = mx.stop_gradient((logps.kl_policy - logps.kl_reference).mean())
    if rank_mean is not None:
        kl = rank_mean(kl)
    return mx.maximum(kl, 0.0)


def kto_objective(
    logps: UnpairedLogps, settings: LossSettings, rank_mean: RankMean | None = None
) -> LossResult:
    """KTO (Ethayarajh et al., 2024, eq. 7 as TRL implements it), per completion with ρ its
    log-ratio and z = kto_kl: desirable λ_D·(1 − σ(β(ρ − z))), undesirable
    λ_U·(1 − σ(β(z − ρ))); the loss is the mean over the batch.

    Metrics (TRL's): rewards/chosen and logps/chosen are means over the desirable
    completions, rewards/rejected and logps/rejected over the undesirable ones (NaN when the
    batch has none: written as null), rewards/margins their difference, kl = z. There are
    no pairs, so rewards/accuracies is the share of completions on the right side of the
    reference point (desirable ρ > z, undesirable ρ < z): what the loss pushes towards.
    count/desirable and count/undesirable let a trainer weight micro-batches."""
    desirable = logps.desirable.astype(mx.float32)
    undesirable = 1.0 - desirable
    ratio = logps.policy - logps.reference
    z = kto_kl(logps, rank_mean)
    beta = settings.beta
    chosen_terms = settings.desirable_weight * (1 - mx.sigmoid(beta * (ratio - z)))
    rejected_terms = settings.undesirable_weight * (1 - mx.sigmoid(beta * (z - ratio)))
    per_item = desirable * chosen_terms + undesirable * rejected_terms
    n_desirable, n_undesirable = desirable.sum(), undesirable.sum()
    rewards = mx.stop_gradient(beta * ratio)
    chosen_reward = (desirable * rewards).sum() / n_desirable
    rejected_reward = (undesirable * rewards).sum() / n_undesirable
    right_side = desirable * (ratio > z) + undesirable * (ratio < z)
    metrics = {
        REWARDS_CHOSEN: chosen_reward,
        REWARDS_REJECTED: rejected_reward,
        REWARDS_MARGINS: chosen_reward - rejected_reward,
        REWARDS_ACCURACIES: right_side.astype(mx.float32).mean(),
        LOGPS_CHOSEN: (desirable * logps.policy).sum() / n_desirable,
        LOGPS_REJECTED: (undesirable * logps.policy).sum() / n_undesirable,
        KL: z,
        "count/desirable": n_desirable,
        "count/undesirable": n_undesirable,
    }
    return LossResult(per_item.mean(), per_item, metrics, {})
