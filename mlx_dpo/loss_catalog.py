"""What each loss is, in plain Python: the names a config accepts, which losses need the
reference model, which take pairs and which unpaired completions, how their rewards are
measured, the loss a fresh run starts from, and when to use each one.

No MLX here (the configuration, the health checks and the dashboard read it); the formulas
live in mlx_dpo/losses.py, whose registry must name exactly the losses listed here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from mlx_dpo.events import (
    BCO_REWARD_SHIFT,
    COUNT_DESIRABLE,
    COUNT_UNDESIRABLE,
    LOG_ODDS_CHOSEN,
    LOG_ODDS_RATIO,
    METRIC_NAMES,
    NLL_LOSS,
)

LN2 = math.log(2.0)

# How a loss's rewards (the `rewards/*` metrics) are measured.
REWARD_RATIO = "ratio"  # β·(log π − log π_ref), summed over the response
REWARD_MEAN_LOGP = "mean_logp"  # β·(log π / response tokens): reference-free, length-averaged
REWARD_SUM_LOGP = "sum_logp"  # β·log π: reference-free, summed
REWARD_NONE = "none"  # a term that is not a preference (sft)


@dataclass(frozen=True)
class LossInfo:
    name: str
    paper: str  # short citation
    when: str  # one line: when to use it, from the paper
    needs_reference: bool
    unpaired: bool = False  # trains on {prompt, completion, label} records (KTO)
    reward: str = REWARD_RATIO
    options: tuple[str, ...] = ()  # config keys it reads besides beta


_LOSSES = (
    LossInfo(
        "sigmoid",
        "DPO, Rafailov et al. 2023",
        "The default for paired preferences: a logistic loss on the margin of implicit "
        "rewards, kept near the reference by β.",
        needs_reference=True,
        options=("label_smoothing",),
    ),
    LossInfo(
        "robust",
        "rDPO, Chowdhury et al. 2024",
        "Pairs whose labels you believe are flipped at a known rate ε (label_smoothing): "
        "an unbiased DPO loss under that noise.",
        needs_reference=True,
        options=("label_smoothing",),
    ),
    LossInfo(
        "hinge",
        "SLiC-HF, Zhao et al. 2023",
        "A margin loss: stops pushing a pair once its reward margin passes 1 (1/β in "
        "log-ratio), so confident pairs stop moving the model.",
        needs_reference=True,
    ),
    LossInfo(
        "ipo",
        "IPO, Azar et al. 2023",
        "Near-deterministic preferences, where DPO overfits by driving margins to infinity: "
        "regresses the length-averaged margin to 1/(2β).",
        needs_reference=True,
    ),
    LossInfo(
        "sigmoid_norm",
        "length-normalised DPO (TRL)",
        "DPO on per-token log-ratios: long answers do not get larger margins for free.",
        needs_reference=True,
    ),
    LossInfo(
        "exo_pair",
        "EXO, Ji et al. 2024",
        "Mode-seeking alignment: minimises the reverse KL as RLHF does, where DPO's objective "
        "is mean-seeking; needs label_smoothing ε > 0 (the paper uses 1e-3).",
        needs_reference=True,
        options=("label_smoothing",),
    ),
    LossInfo(
        "nca_pair",
        "NCA, Chen et al. 2024",
        "Raises the chosen answers' likelihood in absolute terms, not only relative to the "
        "rejected ones (DPO often lowers both); suited to reasoning and math data.",
        needs_reference=True,
    ),
    LossInfo(
        "bco_pair",
        "BCO, Jung et al. 2024",
        "A binary classifier (chosen -> 1, rejected -> 0) on rewards shifted by their running "
        "mean; part of the MPO recipe [sigmoid, bco_pair, sft].",
        needs_reference=True,
    ),
    LossInfo(
        "sppo_hard",
        "SPPO, Wu et al. 2024",
        "Self-play data (answers sampled from the model and ranked): regresses the chosen "
        "log-ratio to +1/(2β) and the rejected to −1/(2β) (hard-label SPPO).",
        needs_reference=True,
    ),
    LossInfo(
        "aot",
        "AOT, Melnyk et al. 2024",
        "Distributional alignment: the batch's sorted margins must dominate the reference's "
        "sorted margins quantile by quantile; wants large batches.",
        needs_reference=True,
        options=("label_smoothing",),
    ),
    LossInfo(
        "aot_unpaired",
        "AOT, Melnyk et al. 2024",
        "AOT when chosen and rejected are not really paired: sorted chosen rewards must beat "
        "sorted rejected rewards quantile by quantile; wants large batches.",
        needs_reference=True,
        options=("label_smoothing",),
    ),
    LossInfo(
        "aot_pair",
        "AOT, Melnyk et al. 2024",
        "The older TRL name of aot_unpaired (same loss).",
        needs_reference=True,
        options=("label_smoothing",),
    ),
    LossInfo(
        "apo_zero",
        "APO, D'Oosterlinck et al. 2024",
        "The chosen answers are better than what the model writes now (e.g. from a stronger "
        "model): raises chosen likelihood and lowers rejected, each anchored at the reference.",
        needs_reference=True,
    ),
    LossInfo(
        "apo_down",
        "APO, D'Oosterlinck et al. 2024",
        "The model is already better than the chosen answers: lowers both, the rejected more.",
        needs_reference=True,
    ),
    LossInfo(
        "discopop",
        "DiscoPOP, Lu et al. 2024",
        "An LLM-discovered blend of the logistic and exponential losses, modulated by the "
        "margin (temperature discopop_tau); beat DPO on Alpaca Eval 2 in the paper.",
        needs_reference=True,
        options=("discopop_tau",),
    ),
    LossInfo(
        "simpo",
        "SimPO, Meng et al. 2024",
        "No reference model: a length-averaged log-prob margin with a target γ (simpo_gamma); "
        "the paper uses β 2-10.",
        needs_reference=False,
        reward=REWARD_MEAN_LOGP,
        options=("simpo_gamma",),
    ),
    LossInfo(
        "orpo",
        "ORPO, Hong et al. 2024",
        "No reference model and no SFT stage first: NLL on the chosen answers plus β (λ) times "
        "an odds-ratio preference term, from a base model in one stage.",
        needs_reference=False,
        reward=REWARD_MEAN_LOGP,
    ),
    LossInfo(
        "cpo",
        "CPO, Xu et al. 2024",
        "No reference model: DPO's logistic loss on summed policy log-probs plus cpo_alpha "
        "times the chosen NLL (behaviour cloning); from machine translation.",
        needs_reference=False,
        reward=REWARD_SUM_LOGP,
        options=("label_smoothing", "cpo_alpha"),
    ),
    LossInfo(
        "sft",
        "NLL of the chosen answers (TRL's sft)",
        "A term to add to a preference loss in a list (the MPO recipe, or [simpo, sft] for "
        "CPO-SimPO) to keep the chosen answers likely.",
        needs_reference=False,
        reward=REWARD_NONE,
    ),
    LossInfo(
        "kto",
        "KTO, Ethayarajh et al. 2024",
        "Thumbs-up/down data rather than pairs: each answer is judged against a reference "
        "point (a KL estimate), with desirable_weight/undesirable_weight for imbalance.",
        needs_reference=True,
        unpaired=True,
        options=("desirable_weight", "undesirable_weight"),
    ),
)

CATALOG: dict[str, LossInfo] = {info.name: info for info in _LOSSES}
LOSSES: tuple[str, ...] = tuple(CATALOG)
REFERENCE_FREE: frozenset[str] = frozenset(n for n, i in CATALOG.items() if not i.needs_reference)
UNPAIRED: frozenset[str] = frozenset(n for n, i in CATALOG.items() if i.unpaired)
# Losses whose terms are per quantile of the batch (sorted), not per pair.
SORTING: frozenset[str] = frozenset({"aot", "aot_unpaired", "aot_pair"})


def loss_names(loss: str | Sequence[str]) -> tuple[str, ...]:
    """A config's `loss` (one name or a list) as a tuple of names, exactly as written (the
    config refuses names that are not the catalog's)."""
    if isinstance(loss, str):
        return (loss,)
    return tuple(str(name) for name in loss)


def needs_reference(loss: str | Sequence[str]) -> bool:
    """Whether a run with these losses needs reference log-probs (a pass, or the cache)."""
    return any(CATALOG[name].needs_reference for name in loss_names(loss) if name in CATALOG)


def is_unpaired(loss: str | Sequence[str]) -> bool:
    """Whether the run trains on unpaired completions (kto, which takes no other loss)."""
    return any(name in UNPAIRED for name in loss_names(loss))


# The metrics beyond METRIC_NAMES that a loss's objective reports (mlx_dpo/events.py).
_EXTRA_METRICS = {
    "orpo": (NLL_LOSS, LOG_ODDS_RATIO, LOG_ODDS_CHOSEN),
    "bco_pair": (BCO_REWARD_SHIFT,),
    "kto": (COUNT_DESIRABLE, COUNT_UNDESIRABLE),
}


def extra_metrics(loss: str | Sequence[str]) -> tuple[str, ...]:
    """The extra metrics of a run with these losses, in a fixed order."""
    names = loss_names(loss)
    return tuple(m for name in names for m in _EXTRA_METRICS.get(name, ()))


def metric_names(loss: str | Sequence[str]) -> tuple[str, ...]:
    """Every metric a step or eval event of such a run carries: METRIC_NAMES, then extras."""
    return (*METRIC_NAMES, *extra_metrics(loss))


def reward_kind(loss: str | Sequence[str]) -> str:
    """How the run's `rewards/*` metrics are measured: β·(log-ratio to the reference) when any
    loss uses the reference, else the reference-free losses' own kind (they must agree)."""
    names = [n for n in loss_names(loss) if n in CATALOG]
    if needs_reference(names):
        return REWARD_RATIO
    kinds = {CATALOG[n].reward for n in names} - {REWARD_NONE}
    return kinds.pop() if len(kinds) == 1 else REWARD_NONE


def _initial_term(name: str, beta: float, label_smoothing: float) -> float | None:
    """One loss's value when every log-ratio is 0 (the policy is its reference)."""
    eps = label_smoothing
    if name in ("sigmoid", "sigmoid_norm", "aot", "aot_unpaired", "aot_pair"):
        return LN2  # −(1−ε)·logσ(0) − ε·logσ(0) = ln 2 for any ε
    if name == "robust":
        return LN2 if eps < 0.5 else None
    if name in ("hinge", "apo_zero", "apo_down"):
        return 1.0  # relu(1 − 0); (1 − σ(0)) + σ(0); σ(0) + (1 − σ(0))
    if name == "ipo":
        return (1.0 / (2.0 * beta)) ** 2 if beta > 0 else None
    if name == "sppo_hard":
        return 2.0 * (0.5 / beta) ** 2 if beta > 0 else None
    if name in ("nca_pair", "bco_pair"):
        return 2.0 * LN2  # bco_pair: its reward shift starts at the mean of zero rewards, 0
    if name == "exo_pair":
        # σ(0)·(logσ(0) − log(1−ε)) + σ(0)·(logσ(0) − log ε)
        return -LN2 - 0.5 * math.log(eps * (1.0 - eps)) if 0 < eps < 1 else None
    if name == "discopop":
        return 0.5 * LN2 + 0.5  # the modulation σ(0/τ) = 1/2 mixes ln 2 and exp(0)
    return None  # reference-free (no such starting value), sft (its NLL), or unknown


def expected_initial_loss(
    loss: str | Sequence[str],
    beta: float,
    label_smoothing: float = 0.0,
    loss_weights: Sequence[float] | None = None,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    use_weighting: bool = False,
) -> float | None:
    """The first-step loss of a fresh run, where the policy equals its reference; None when
    there is no fixed value: a reference-free loss, an NLL term (sft), WPO weights (they
    depend on the model's probabilities), KTO with unequal weights (it depends on the batch's
    mix), or an unknown loss. A list's value is the weighted sum of its losses' values."""
    names = loss_names(loss)
    weights = list(loss_weights) if loss_weights else [1.0] * len(names)
    if use_weighting or len(weights) != len(names) or not names:
        return None
    total = 0.0
    for name, weight in zip(names, weights, strict=True):
        if name == "kto":
            # Every log-ratio and the KL estimate are 0: each completion's loss is λ·(1 − σ(0)).
            if desirable_weight != undesirable_weight:
                return None
            value = 0.5 * desirable_weight
        else:
            value = _initial_term(name, beta, label_smoothing)
        if value is None:
            return None
        total += weight * value
    return total
