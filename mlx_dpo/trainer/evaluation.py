"""Preference metrics of a whole split: the loss and the TRL metrics (and the loss's extras)
over its pairs, or for kto over its completions, and per pair or completion on request
(`mlx-dpo eval --output`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mlx.core as mx
import numpy as np

from mlx_dpo import loss_catalog
from mlx_dpo.batching import length_sorted_batches
from mlx_dpo.config import TrainConfig
from mlx_dpo.data import TokenizedSplit
from mlx_dpo.errors import UserError
from mlx_dpo.events import (
    LOGPS_PREFERENCE_ACCURACY,
    LOGPS_PREFERENCE_ACCURACY_PER_TOKEN,
    LOSS,
)
from mlx_dpo.losses import (
    LossSettings,
    LossState,
    PairLogps,
    UnpairedLogps,
    initial_loss_state,
    kto_objective,
    pair_objective,
    pair_rewards,
    settings_from_config,
)
from mlx_dpo.session import Session
from mlx_dpo.trainer.batch_logps import (
    RowSums,
    batch_arrays,
    pair_logps,
    reference_columns,
    reference_of_rows,
    reference_rows_logps,
    row_sums,
    rows_logps,
    second_half,
)
from mlx_dpo.unpaired import CompletionSplit, kl_pairs

ReferenceColumns = dict[str, np.ndarray]


class EvaluationStopped(Exception):
    """A stop was requested between the batches of an evaluation; its result is dropped."""


def evaluate_split(
    session: Session,
    split: TokenizedSplit,
    config: TrainConfig,
    reference_logps: ReferenceColumns | tuple[np.ndarray, ...] | None = None,
    per_pair: bool = False,
    loss_state: LossState | None = None,
    should_stop: Callable[[], bool] | None = None,
    reference_is_policy: bool = False,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """The loss and metrics over a whole split (means over its pairs, or completions for
    kto), and for pairs the policy's own log-prob preference (preference_metrics). With
    per_pair, also one record a pair (or completion) with its log-probs and rewards.
    `reference_logps` are the split's cached reference columns (batch_logps.
    reference_columns; a tuple in that order also works); without them the reference is
    computed batch by batch, and a reference-free loss computes none. `reference_is_policy`:
    the policy is its own reference (a model evaluated without an adapter), so one forward
    pass gives both. `loss_state` is the run's loss state (bco_pair's reward shift), used as
    it is: evaluating never advances it; None starts from the initial state. `should_stop()`
    is asked between batches: when true, EvaluationStopped is raised. `batch_size`: pairs a
    forward batch (memory.session.forward_batch_for), else config.batch_size."""
    if isinstance(reference_logps, tuple):
        reference_logps = dict(zip(reference_columns(config), reference_logps, strict=True))
    logps = evaluation_logps(
        session, split, config, reference_logps, should_stop, reference_is_policy, batch_size
    )
    return evaluation_metrics(split, logps, config, loss_state, per_pair)


def evaluation_logps(
    session: Session,
    split: TokenizedSplit,
    config: TrainConfig,
    reference_logps: ReferenceColumns | None = None,
    should_stop: Callable[[], bool] | None = None,
    reference_is_policy: bool = False,
    batch_size: int | None = None,
) -> PairLogps | UnpairedLogps:
    """The log-probs an evaluation of the split reads: split_logps for pairs,
    completion_logps for kto's completions, `batch_size` pairs (or completions) a forward
    batch (default config.batch_size)."""
    batches = length_sorted_batches(split.pair_lengths(), batch_size or config.batch_size)
    if isinstance(split, CompletionSplit):
        return completion_logps(
            session, split, config, reference_logps, should_stop, reference_is_policy, batches
        )
    return split_logps(
        session, split, config, reference_logps, should_stop, reference_is_policy, batches
    )


def evaluation_metrics(
    split: TokenizedSplit,
    logps: PairLogps | UnpairedLogps,
    config: TrainConfig,
    loss_state: LossState | None = None,
    per_pair: bool = False,
) -> dict[str, Any]:
    """evaluate_split's result from the split's log-probs (evaluation_logps)."""
    settings = settings_from_config(config)
    if isinstance(logps, UnpairedLogps):
        return _completion_metrics(split, logps, settings, per_pair)
    state = initial_loss_state(settings) if loss_state is None else loss_state
    result = pair_objective(logps, settings, state, advance=False)
    metrics = {LOSS: result.loss.item(), **{k: v.item() for k, v in result.metrics.items()}}
    metrics.update(preference_metrics(logps))
    metrics["pairs"] = len(split)
    if per_pair:
        metrics["per_pair"] = pair_rows(split, logps, settings)
    return metrics


def preference_metrics(logps: PairLogps) -> dict[str, float]:
    """How often the policy itself prefers the chosen answer, whatever the loss: the share of
    pairs whose summed response log-prob is higher for the chosen answer than for the
    rejected one (LOGPS_PREFERENCE_ACCURACY), and the same with each side's log-prob
    divided by its response tokens (LOGPS_PREFERENCE_ACCURACY_PER_TOKEN: long answers are
    not penalised for their length). A tie counts as no preference. Unlike
    rewards/accuracies, which is 0 before training (every reward is 0), it says where the
    model starts."""
    chosen, rejected = np.array(logps.policy_chosen), np.array(logps.policy_rejected)
    chosen_tokens = np.maximum(np.array(logps.chosen_tokens), 1)
    rejected_tokens = np.maximum(np.array(logps.rejected_tokens), 1)
    per_token = chosen / chosen_tokens > rejected / rejected_tokens
    return {
        LOGPS_PREFERENCE_ACCURACY: float(np.mean(chosen > rejected)),
        LOGPS_PREFERENCE_ACCURACY_PER_TOKEN: float(np.mean(per_token)),
    }


def split_logps(
    session: Session,
    split: TokenizedSplit,
    config: TrainConfig,
    reference_logps: ReferenceColumns | None = None,
    should_stop: Callable[[], bool] | None = None,
    reference_is_policy: bool = False,
    batches: list[np.ndarray] | None = None,
) -> PairLogps:
    """The policy's (and, unless given, the reference's) summed response log-probs of every
    pair of the split, in the split's order, with what the loss's options read (LD-DPO's
    tails, WPO's terms) and the response token counts. No reference for a reference-free
    loss. Each batch runs its chosen and rejected rows through the model together, in
    batches of similar length (little padding). With `reference_is_policy` the policy's
    values are the reference's too: one forward pass a batch; otherwise the reference is
    `reference_logps` (cached) or a second, live pass a batch."""
    settings = settings_from_config(config)
    columns = reference_columns(config)
    if reference_is_policy and reference_logps is not None:
        raise ValueError("reference_logps given for a policy that is its own reference")
    tails = settings.ld_alpha is not None
    n_pairs = len(split)
    policy = {name: np.zeros(2 * n_pairs, np.float32) for name in ("sums", "tails", "wpo")}
    reference = {name: np.zeros(n_pairs, np.float32) for name in columns}
    tokens = np.zeros(2 * n_pairs, np.float32)
    live_reference = reference_logps is None and not reference_is_policy
    if batches is None:
        batches = length_sorted_batches(split.pair_lengths(), config.batch_size)
    for positions in batches:
        if should_stop is not None and should_stop():
            raise EvaluationStopped
        rows = np.concatenate([positions, positions + n_pairs])
        batch = session.collate_split(split, positions.tolist())
        arrays = batch_arrays(batch)
        found = row_sums(session, arrays, tails=tails, wpo=settings.use_weighting)
        live = reference_of_rows(session, arrays, columns) if live_reference else {}
        mx.eval(found.sums, found.tails, found.wpo, live)
        for name in ("sums", "tails", "wpo"):
            if getattr(found, name) is not None:
                policy[name][rows] = np.array(getattr(found, name))
        for name, values in live.items():
            reference[name][positions] = np.array(values)
        tokens[rows] = batch.response_mask.sum(axis=1)
    if reference_logps is not None:
        reference = {name: np.asarray(reference_logps[name], np.float32) for name in columns}
    elif reference_is_policy:
        sums, tail_sums = policy["sums"], policy["tails"]
        own = {
            "chosen": sums[:n_pairs],
            "rejected": sums[n_pairs:],
            "chosen_tail": tail_sums[:n_pairs],
            "rejected_tail": tail_sums[n_pairs:],
        }
        reference = {name: own[name] for name in columns}

    def column(values: np.ndarray | None) -> mx.array | None:
        return None if values is None else mx.array(values)

    return pair_logps(
        RowSums(  # the whole split's rows: chosen, then rejected
            column(policy["sums"]),
            column(policy["tails"]) if tails else None,
            column(policy["wpo"]) if settings.use_weighting else None,
        ),
        {name: mx.array(values) for name, values in reference.items()} or None,
        mx.array(tokens[:n_pairs]),
        mx.array(tokens[n_pairs:]),
    )


def pair_rows(
    split: TokenizedSplit, logps: PairLogps, settings: LossSettings
) -> list[dict[str, Any]]:
    """One record a pair: where it comes from, its four log-probs (the reference's null for a
    reference-free loss) and its two rewards (measured as the loss measures them)."""
    kind = loss_catalog.reward_kind(settings.losses)
    if kind == loss_catalog.REWARD_NONE:
        kind = loss_catalog.REWARD_MEAN_LOGP
    chosen_rewards, rejected_rewards = (
        np.array(r) for r in pair_rewards(logps, settings.beta, kind)
    )

    def values(array: mx.array | None) -> list[float | None]:
        return [None] * len(split) if array is None else np.array(array).tolist()

    columns = {
        "policy_chosen_logp": values(logps.policy_chosen),
        "policy_rejected_logp": values(logps.policy_rejected),
        "reference_chosen_logp": values(logps.reference_chosen),
        "reference_rejected_logp": values(logps.reference_rejected),
        "reward_chosen": chosen_rewards.tolist(),
        "reward_rejected": rejected_rewards.tolist(),
    }
    return [
        {
            "index": i,
            "source": split.pairs[i].source,
            **{name: column[i] for name, column in columns.items()},
        }
        for i in range(len(split))
    ]


# ---------------------------------------------------------------------------------------------
# KTO: completions


def _completion_metrics(
    split: CompletionSplit, logps: UnpairedLogps, settings: LossSettings, per_pair: bool
) -> dict[str, Any]:
    """KTO's loss and metrics over a split. Its reference point z is estimated from the whole
    split's KL rows (completion i-1 with prompt i, in the split's order): the same estimate
    as a training batch's, over more rows. No log-prob preference: completions are unpaired,
    so there is no chosen and rejected answer of one prompt to compare."""
    result = kto_objective(logps, settings)
    metrics = {LOSS: result.loss.item(), **{k: v.item() for k, v in result.metrics.items()}}
    metrics["pairs"] = len(split)
    if per_pair:
        rewards = (settings.beta * (np.array(logps.policy) - np.array(logps.reference))).tolist()
        policy, reference = np.array(logps.policy).tolist(), np.array(logps.reference).tolist()
        metrics["per_pair"] = [
            {
                "index": i,
                "source": split.sources[i],
                "desirable": bool(split.desirable[i]),
                "policy_logp": policy[i],
                "reference_logp": reference[i],
                "reward": rewards[i],
            }
            for i in range(len(split))
        ]
    return metrics


def completion_logps(
    session: Session,
    split: CompletionSplit,
    config: TrainConfig,
    reference_logps: ReferenceColumns | None = None,
    should_stop: Callable[[], bool] | None = None,
    reference_is_policy: bool = False,
    batches: list[np.ndarray] | None = None,
) -> UnpairedLogps:
    """The policy's and the reference's log-probs of every completion of the split and of
    its KL row, in the split's order; the completions' reference from `reference_logps`
    ("completion") when given, the KL rows' always computed. With `reference_is_policy` the
    policy's values are the reference's too (one forward pass a batch)."""
    if len(split) < 2:
        raise UserError(
            f"{split.path}: kto needs at least 2 completions to evaluate (its reference point "
            "comes from mismatched prompt/completion rows)"
        )
    if reference_is_policy and reference_logps is not None:
        raise ValueError("reference_logps given for a policy that is its own reference")
    pairs = kl_pairs(split.pairs[:], config.max_length)
    n_items = len(split)
    policy = np.zeros(2 * n_items, np.float32)
    reference = np.zeros(2 * n_items, np.float32)
    if batches is None:
        batches = length_sorted_batches(split.pair_lengths(), config.batch_size)
    for positions in batches:
        if should_stop is not None and should_stop():
            raise EvaluationStopped
        rows = np.concatenate([positions, positions + n_items])
        arrays = batch_arrays(session.collate([pairs[i] for i in positions]))
        found = rows_logps(session, *arrays)
        if reference_is_policy:
            mx.eval(found)
        elif reference_logps is None:
            live = reference_rows_logps(session, *arrays)
            mx.eval(found, live)
            reference[rows] = np.array(live)
        else:
            live = reference_rows_logps(session, *second_half(arrays))
            mx.eval(found, live)
            reference[positions + n_items] = np.array(live)
        policy[rows] = np.array(found)
    if reference_is_policy:
        reference = policy
    elif reference_logps is not None:
        reference[:n_items] = reference_logps["completion"]
    return UnpairedLogps(
        mx.array(policy[:n_items]),
        mx.array(reference[:n_items]),
        mx.array(split.desirable.astype(np.float32)),
        mx.array(policy[n_items:]),
        mx.array(reference[n_items:]),
    )
