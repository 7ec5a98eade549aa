"""Preference metrics of a whole split: the loss and the TRL metrics as means over its pairs,
and per pair on request (`mlx-dpo eval --output`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mlx.core as mx
import numpy as np

from mlx_dpo.config import TrainConfig
from mlx_dpo.data import TokenizedSplit
from mlx_dpo.events import LOSS
from mlx_dpo.losses import PairLogps, pair_metrics, pair_rewards, preference_loss
from mlx_dpo.session import Session
from mlx_dpo.trainer.batch_logps import batch_arrays, reference_rows_logps, rows_logps
from mlx_dpo.trainer.step import loss_settings


class EvaluationStopped(Exception):
    """A stop was requested between the batches of an evaluation; its result is dropped."""


def evaluate_split(
    session: Session,
    split: TokenizedSplit,
    config: TrainConfig,
    reference_logps: tuple[np.ndarray, np.ndarray] | None = None,
    per_pair: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Preference metrics over a whole split (means over pairs). With per_pair, also the
    per-pair log-probs and rewards (for `mlx-dpo eval --output`). `reference_logps` are the
    cached (chosen, rejected) reference log-probs of the split; without them the reference
    is computed batch by batch. `should_stop()` is asked between batches: when true,
    EvaluationStopped is raised."""
    logps = split_logps(session, split, config.batch_size, reference_logps, should_stop)
    loss, _ = preference_loss(config.loss, logps, loss_settings(config), config.sft_weight)
    metrics = {
        LOSS: loss.item(),
        **{k: v.item() for k, v in pair_metrics(logps, config.beta).items()},
    }
    metrics["pairs"] = len(split)
    if per_pair:
        metrics["per_pair"] = pair_rows(split, logps, config.beta)
    return metrics


def split_logps(
    session: Session,
    split: TokenizedSplit,
    batch_size: int,
    reference_logps: tuple[np.ndarray, np.ndarray] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> PairLogps:
    """The policy's (and, unless given, the reference's) summed response log-probs and the
    response token counts of every pair of the split, in the split's order."""
    policy = np.zeros((len(split), 2), dtype=np.float32)
    ref = np.zeros((len(split), 2), dtype=np.float32)
    tokens = np.zeros((len(split), 2), dtype=np.float32)
    for start in range(0, len(split), batch_size):
        if should_stop is not None and should_stop():
            raise EvaluationStopped
        positions = list(range(start, min(start + batch_size, len(split))))
        batch = session.collate([split.pairs[i] for i in positions])
        arrays = batch_arrays(batch)
        rows = rows_logps(session, *arrays)
        ref_rows = reference_rows_logps(session, *arrays) if reference_logps is None else None
        mx.eval(rows, ref_rows)
        n = len(positions)
        rows = np.array(rows)
        policy[positions] = np.stack([rows[:n], rows[n:]], axis=1)
        if ref_rows is not None:
            ref_rows = np.array(ref_rows)
            ref[positions] = np.stack([ref_rows[:n], ref_rows[n:]], axis=1)
        counts = batch.response_mask.sum(axis=1)
        tokens[positions] = np.stack([counts[:n], counts[n:]], axis=1)
    if reference_logps is not None:
        ref = np.stack(reference_logps, axis=1)
    return PairLogps(
        policy_chosen=mx.array(policy[:, 0]),
        policy_rejected=mx.array(policy[:, 1]),
        reference_chosen=mx.array(ref[:, 0]),
        reference_rejected=mx.array(ref[:, 1]),
        chosen_tokens=mx.array(tokens[:, 0]),
        rejected_tokens=mx.array(tokens[:, 1]),
    )


def pair_rows(split: TokenizedSplit, logps: PairLogps, beta: float) -> list[dict[str, Any]]:
    """One record a pair: where it comes from, its four log-probs and its two rewards."""
    chosen_rewards, rejected_rewards = (np.array(r) for r in pair_rewards(logps, beta))
    columns = {
        "policy_chosen_logp": np.array(logps.policy_chosen),
        "policy_rejected_logp": np.array(logps.policy_rejected),
        "reference_chosen_logp": np.array(logps.reference_chosen),
        "reference_rejected_logp": np.array(logps.reference_rejected),
        "reward_chosen": chosen_rewards,
        "reward_rejected": rejected_rewards,
    }
    return [
        {
            "index": i,
            "source": split.pairs[i].source,
            **{name: float(values[i]) for name, values in columns.items()},
        }
        for i in range(len(split))
    ]
