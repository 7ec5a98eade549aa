"""The training step: the objective of one batch, the compiled step that accumulates and
applies its gradients, and one optimizer step's work over its micro-batches.

`compiled_step` is the one compiled step: the run, the memory calibration and the benchmarks
all time and measure this same function.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.nn.utils import average_gradients
from mlx.utils import tree_flatten, tree_map

from mlx_dpo.batching import Batch, epoch_batches
from mlx_dpo.config import TrainConfig
from mlx_dpo.data import TokenizedSplit
from mlx_dpo.distributed import Ranks
from mlx_dpo.events import METRIC_NAMES
from mlx_dpo.losses import LossSettings, PairLogps, pair_metrics, preference_loss
from mlx_dpo.session import Session
from mlx_dpo.trainer.batch_logps import (
    batch_arrays,
    reference_rows_logps,
    response_token_counts,
    rows_logps,
)

# Dropout noise of micro-batch k is drawn from seed * DROPOUT_SEED_STRIDE + k: a function of the
# step, so a resumed run draws the same.
DROPOUT_SEED_STRIDE = 1_000_003


def loss_settings(config: TrainConfig) -> LossSettings:
    """The loss's settings of a run (simpo's γ, when the config leaves it unset, is
    LossSettings')."""
    return LossSettings(
        beta=config.beta,
        label_smoothing=config.label_smoothing,
        simpo_gamma=LossSettings.simpo_gamma if config.simpo_gamma is None else config.simpo_gamma,
    )


def make_loss_fn(session: Session, config: TrainConfig) -> Callable[..., tuple[mx.array, mx.array]]:
    """The training objective of one batch: (mean loss, the other METRIC_NAMES stacked).
    With a live reference the reference log-probs are computed inside (LoRA switched off
    inside the traced function); otherwise they are inputs from the cache."""
    settings = loss_settings(config)
    live = config.reference == "live"

    def loss_fn(inputs, ref_chosen, ref_rejected, chosen_tokens, rejected_tokens):
        rows = rows_logps(session, *inputs)
        n = chosen_tokens.shape[0]
        if live:
            ref_rows = reference_rows_logps(session, *inputs)
            ref_chosen, ref_rejected = ref_rows[:n], ref_rows[n:]
        logps = PairLogps(
            rows[:n], rows[n:], ref_chosen, ref_rejected, chosen_tokens, rejected_tokens
        )
        loss, _ = preference_loss(config.loss, logps, settings, config.sft_weight)
        metrics = pair_metrics(logps, config.beta)
        return loss, mx.stack([metrics[k] for k in METRIC_NAMES[1:]])

    return loss_fn


def compiled_step(
    session: Session, config: TrainConfig, optimizer: optim.Optimizer
) -> tuple[Callable, Callable]:
    """The training step, compiled once with the model's, optimizer's and RNG state explicit:
    `accumulate(grads_so_far, inputs, ...)` -> (loss, metrics, summed grads), and
    `apply(grads, count)` -> grad norm (averaged over micro-batches and ranks, clipped)."""
    model = session.model
    value_and_grad = nn.value_and_grad(model, make_loss_fn(session, config))
    state = [model.state, optimizer.state, mx.random.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def accumulate(accumulated, *batch):
        (loss, metrics), grads = value_and_grad(*batch)
        if accumulated is not None:
            grads = tree_map(lambda a, b: a + b, accumulated, grads)
        return loss, metrics, grads

    @partial(mx.compile, inputs=state, outputs=state)
    def apply(grads, count):
        grads = average_gradients(tree_map(lambda g: g / count, grads))
        if config.max_grad_norm > 0:
            grads, grad_norm = optim.clip_grad_norm(grads, config.max_grad_norm)
        else:
            grad_norm = mx.sqrt(sum((g.astype(mx.float32) ** 2).sum() for g in _leaves(grads)))
        optimizer.update(model, grads)
        return grad_norm

    return accumulate, apply


def _leaves(tree: Any) -> list[mx.array]:
    return [v for _, v in tree_flatten(tree)]


class MicroBatches:
    """Micro-batch k of a run: position k % per_epoch of epoch k // per_epoch's order, which is
    a pure function of the seed and the epoch (so a resumed run reads the same batches). The
    current epoch's order is kept."""

    def __init__(
        self,
        session: Session,
        split: TokenizedSplit,
        config: TrainConfig,
        ranks: Ranks,
        per_epoch: int,
    ):
        self.session = session
        self.split = split
        self.config = config
        self.ranks = ranks
        self.per_epoch = per_epoch
        self._orders: dict[int, list[list[int]]] = {}

    def __call__(self, k: int) -> Batch:
        epoch, position = divmod(k, self.per_epoch)
        order = self._orders.get(epoch)
        if order is None:
            self._orders.clear()
            order = self._orders[epoch] = epoch_batches(
                self.split.pairs,
                self.config.batch_size,
                self.config.seed,
                epoch,
                True,
                self.ranks.rank,
                self.ranks.size,
            )
        return self.session.collate([self.split.pairs[i] for i in order[position]])


@dataclass
class Accumulated:
    """One rank's micro-batches of an optimizer step: the summed gradients, the metric sums
    (weighted by pairs, METRIC_NAMES order), the work, and the pairs' indices. `failure` says
    why the step cannot be applied (a non-finite loss), with the pairs to look at."""

    grads: Any
    metric_sums: np.ndarray
    pairs: int
    tokens: int
    pair_indices: list[int]
    failure: str | None = None

    def totals(self, ranks: Ranks) -> tuple[np.ndarray, int, int]:
        """(metric sums, pairs, tokens) over every rank."""
        summed = ranks.sum(np.array([*self.metric_sums, self.pairs, self.tokens], dtype=np.float64))
        return summed[:-2], int(summed[-2]), int(summed[-1])


class TrainingStep:
    """One optimizer step: `accumulate(step)` runs its micro-batches through the compiled
    step, `apply(grads)` averages, clips and updates. The reference log-probs of the train
    split come from the cache, or are computed inside the step when `train_reference` is
    None (a live reference)."""

    def __init__(
        self,
        session: Session,
        config: TrainConfig,
        optimizer: optim.Optimizer,
        batches: MicroBatches,
        train_reference: tuple[np.ndarray, np.ndarray] | None,
    ):
        self.model = session.model
        self.config = config
        self.optimizer = optimizer
        self.batches = batches
        self.train_reference = train_reference
        self.accumulate_fn, self.apply_fn = compiled_step(session, config, optimizer)

    def accumulate(self, step: int) -> Accumulated:
        """The micro-batches of optimizer step `step` (0-based); stops at a non-finite loss."""
        accumulation = self.config.grad_accumulation
        split = self.batches.split
        done = Accumulated(None, np.zeros(len(METRIC_NAMES), dtype=np.float64), 0, 0, [])
        for micro in range(accumulation):
            k = step * accumulation + micro
            batch = self.batches(k)
            mx.random.seed(self.config.seed * DROPOUT_SEED_STRIDE + k)
            arrays = batch_arrays(batch)
            chosen_tokens, rejected_tokens = response_token_counts(batch)
            ref_chosen, ref_rejected = self._reference(batch)
            loss, metrics, done.grads = self.accumulate_fn(
                done.grads, arrays, ref_chosen, ref_rejected, chosen_tokens, rejected_tokens
            )
            mx.eval(loss, metrics, done.grads)
            loss_value = loss.item()
            done.pair_indices += [split.pairs[i].index for i in batch.pair_indices]
            if not math.isfinite(loss_value):
                sources = ", ".join(split.pairs[i].source for i in batch.pair_indices[:8])
                done.failure = (
                    f"non-finite loss at step {step + 1} (pairs {sources}); try a lower "
                    "learning rate or check these pairs"
                )
                return done
            done.metric_sums += batch.num_pairs * np.array(
                [loss_value, *np.array(metrics).tolist()]
            )
            done.pairs += batch.num_pairs
            done.tokens += batch.num_tokens
        return done

    def _reference(self, batch: Batch) -> tuple[mx.array, mx.array]:
        if self.train_reference is None:  # live: the loss computes it; a placeholder
            placeholder = mx.zeros(batch.num_pairs)
            return placeholder, placeholder
        chosen, rejected = self.train_reference
        return mx.array(chosen[batch.pair_indices]), mx.array(rejected[batch.pair_indices])

    def apply(self, grads: Any) -> float:
        """Average the accumulated gradients (over micro-batches and ranks), clip, update the
        LoRA weights; the gradient norm."""
        grad_norm = self.apply_fn(grads, self.config.grad_accumulation)
        mx.eval(self.model.state, self.optimizer.state, grad_norm)
        return grad_norm.item()
