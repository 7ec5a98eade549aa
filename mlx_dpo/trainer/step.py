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

from mlx_dpo import loss_catalog
from mlx_dpo.batching import Batch, epoch_steps
from mlx_dpo.config import TrainConfig
from mlx_dpo.data import TokenizedSplit
from mlx_dpo.distributed import Ranks
from mlx_dpo.events import (
    COUNT_DESIRABLE,
    COUNT_UNDESIRABLE,
    LOGPS_CHOSEN,
    LOGPS_REJECTED,
    REWARDS_CHOSEN,
    REWARDS_MARGINS,
    REWARDS_REJECTED,
)
from mlx_dpo.losses import (
    LossState,
    RankMean,
    UnpairedLogps,
    initial_loss_state,
    kto_objective,
    pair_objective,
    settings_from_config,
)
from mlx_dpo.session import Session
from mlx_dpo.trainer.batch_logps import (
    batch_arrays,
    pair_logps,
    reference_columns,
    reference_of_rows,
    reference_row_sums,
    response_token_counts,
    row_sums,
    second_half,
)
from mlx_dpo.unpaired import CompletionSplit

# Dropout noise of micro-batch m of step s is drawn from seed * DROPOUT_SEED_STRIDE + k, with
# k = s * grad_accumulation + m: a function of the step, so a resumed run draws the same (one
# resumed with another split of its steps draws other noise of the same kind).
DROPOUT_SEED_STRIDE = 1_000_003

LossFn = Callable[..., tuple[mx.array, tuple[mx.array, LossState]]]


def make_loss_fn(
    session: Session, config: TrainConfig, rank_mean: RankMean | None = None
) -> LossFn:
    """The training objective of one batch: `loss_fn(inputs, extras, state)` -> (mean loss,
    (the run's other metrics stacked in loss_catalog.metric_names order, the loss state
    after this batch)). `inputs` are the batch's model inputs (batch_arrays); `extras`
    (step_extras) its token counts, KTO's labels and the cached reference columns; with a
    live reference those are computed inside (LoRA switched off inside the traced
    function), and a reference-free loss computes no reference at all."""
    if loss_catalog.is_unpaired(config.loss):
        return _kto_loss_fn(session, config, rank_mean)
    settings = settings_from_config(config)
    columns = reference_columns(config)
    live = config.reference == "live"
    names = loss_catalog.metric_names(config.loss)[1:]

    def loss_fn(inputs, extras, state):
        policy = row_sums(
            session, inputs, tails=settings.ld_alpha is not None, wpo=settings.use_weighting
        )
        if live:
            reference = reference_of_rows(session, inputs, columns)
        else:
            reference = {name: extras[f"reference_{name}"] for name in columns}
        logps = pair_logps(policy, reference, extras["chosen_tokens"], extras["rejected_tokens"])
        result = pair_objective(logps, settings, state, rank_mean=rank_mean)
        return result.loss, (mx.stack([result.metrics[k] for k in names]), result.state)

    return loss_fn


def _kto_loss_fn(session: Session, config: TrainConfig, rank_mean: RankMean | None) -> LossFn:
    """KTO's objective of a batch of completions with their KL rows (rows B..2B-1): the KL
    rows' policy log-probs carry no gradient, and their reference is always computed here
    (which completion a prompt meets changes with every batch); the completions' reference
    comes from the cache unless the reference is live."""
    settings = settings_from_config(config)
    live = config.reference == "live"
    names = loss_catalog.metric_names(config.loss)[1:]

    def loss_fn(inputs, extras, state):
        desirable = extras["desirable"]
        n = desirable.shape[0]
        policy = row_sums(session, inputs).sums
        if live:
            reference = reference_row_sums(session, inputs).sums
            completion_reference, kl_reference = reference[:n], reference[n:]
        else:
            completion_reference = extras["reference_completion"]
            kl_reference = reference_row_sums(session, second_half(inputs)).sums
        logps = UnpairedLogps(
            policy[:n], completion_reference, desirable, mx.stop_gradient(policy[n:]), kl_reference
        )
        result = kto_objective(logps, settings, rank_mean)
        return result.loss, (mx.stack([result.metrics[k] for k in names]), state)

    return loss_fn


def rank_mean_of(ranks: Ranks) -> RankMean | None:
    """The mean over data-parallel ranks of a scalar (None with one process)."""
    if ranks.size == 1:
        return None
    return lambda x: mx.distributed.all_sum(x, group=ranks.group, stream=mx.cpu) / ranks.size


def compiled_step(
    session: Session,
    config: TrainConfig,
    optimizer: optim.Optimizer,
    rank_mean: RankMean | None = None,
) -> tuple[Callable, Callable]:
    """The training step, compiled once with the model's, optimizer's and RNG state explicit:
    `accumulate(grads_so_far, inputs, extras, loss_state)` -> (loss, metrics, grads, the
    loss state after this micro-batch), where grads is the gradient of the loss summed over
    the pairs (kto: completions) so far, and `apply(grads, items)` -> grad norm: the sum
    divided by `items` (the step's pairs over every rank, divided by the number of ranks,
    which the mean over ranks then undoes), clipped. So a step's gradient is the mean over
    its pairs however they were split into micro-batches: 2 micro-batches of 2 pairs update
    the weights as 1 of 4 does, and a last, smaller micro-batch weighs what its pairs
    weigh. The loss state (bco_pair's running reward mean; {} for other losses) goes in and
    out as arrays, like the other state."""
    model = session.model
    value_and_grad = nn.value_and_grad(model, make_loss_fn(session, config, rank_mean))
    state = [model.state, optimizer.state, mx.random.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def accumulate(accumulated, inputs, extras, loss_state):
        (loss, (metrics, loss_state)), grads = value_and_grad(inputs, extras, loss_state)
        items = _items(extras)  # a shape, fixed for each compiled trace
        grads = tree_map(lambda g: g * items, grads)
        if accumulated is not None:
            grads = tree_map(lambda a, b: a + b, accumulated, grads)
        return loss, metrics, grads, loss_state

    @partial(mx.compile, inputs=state, outputs=state)
    def apply(grads, items):
        grads = average_gradients(tree_map(lambda g: g / items, grads))
        if config.max_grad_norm > 0:
            grads, grad_norm = optim.clip_grad_norm(grads, config.max_grad_norm)
        else:
            grad_norm = mx.sqrt(sum((g.astype(mx.float32) ** 2).sum() for g in _leaves(grads)))
        optimizer.update(model, grads)
        return grad_norm

    return accumulate, apply


def _items(extras: dict[str, mx.array]) -> int:
    """The pairs (kto: completions) of a micro-batch, from its extras."""
    return (extras["desirable"] if "desirable" in extras else extras["chosen_tokens"]).shape[0]


def _leaves(tree: Any) -> list[mx.array]:
    return [v for _, v in tree_flatten(tree)]


class StepBatches:
    """The micro-batches of optimizer step s of a run: step s % per_epoch of epoch
    s // per_epoch (batching.epoch_steps), a pure function of the seed, the epoch and the
    pairs per step, so a resumed run reads the same pairs in each step even with another
    batch size and accumulation of the same product. The current epoch's order is kept.
    Pairs are grouped in length buckets; kto's completions shuffled plainly, and collated
    with their KL rows (Session.collate_split)."""

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
        self._orders: dict[int, list[list[list[int]]]] = {}

    def positions(self, step: int) -> list[list[int]]:
        """The split positions of step `step`'s micro-batches on this rank."""
        epoch, position = divmod(step, self.per_epoch)
        order = self._orders.get(epoch)
        if order is None:
            self._orders.clear()
            order = self._orders[epoch] = epoch_steps(
                self.split.pairs,
                self.config.batch_size,
                self.config.grad_accumulation,
                self.config.seed,
                epoch,
                # Not for kto's completions: their length often goes with their label, and
                # length buckets would then make batches of one label only.
                not isinstance(self.split, CompletionSplit),
                self.ranks.rank,
                self.ranks.size,
            )
        return order[position]

    def collate(self, positions: list[int]) -> Batch:
        return self.session.collate_split(self.split, positions)

    def __call__(self, step: int) -> list[Batch]:
        return [self.collate(positions) for positions in self.positions(step)]


class MetricTotals:
    """A step's metrics over its micro-batches (and ranks), each a mean over what it is a
    mean of: pairs (kto: completions); kto's chosen and rejected figures over the desirable
    and undesirable completions (micro-batches without any do not count) with the margin
    their difference; counts (count/*) summed; bco's reward shift as it stands after the
    last micro-batch. `names` are loss_catalog.metric_names of the run, loss first."""

    def __init__(self, names: tuple[str, ...]):
        self.names = names
        self.sums = np.zeros(len(names), dtype=np.float64)
        self.weights = np.zeros(len(names), dtype=np.float64)
        self.unpaired = COUNT_DESIRABLE in names

    def _weight(self, name: str, values: dict[str, float], items: int) -> float:
        if self.unpaired and name in (REWARDS_CHOSEN, LOGPS_CHOSEN):
            return values[COUNT_DESIRABLE]
        if self.unpaired and name in (REWARDS_REJECTED, LOGPS_REJECTED):
            return values[COUNT_UNDESIRABLE]
        return float(items)

    def add(self, values: np.ndarray, items: int) -> None:
        """One micro-batch's metrics (loss first) over `items` pairs or completions."""
        named = dict(zip(self.names, values.tolist(), strict=True))
        for i, name in enumerate(self.names):
            value = named[name]
            if name.startswith("count/"):
                self.sums[i] += value
                self.weights[i] = 1.0
            elif name == "bco_reward_shift":
                self.sums[i], self.weights[i] = value, 1.0
            else:
                weight = self._weight(name, named, items)
                if weight > 0 and math.isfinite(value):
                    self.sums[i] += weight * value
                    self.weights[i] += weight

    def means(self, ranks: Ranks) -> dict[str, float]:
        """The step's value of each metric over every rank (NaN where nothing counted)."""
        summed = ranks.sum(np.concatenate([self.sums, self.weights]))
        sums, weights = summed[: len(self.names)], summed[len(self.names) :]
        out = {}
        for name, total, weight in zip(self.names, sums, weights, strict=True):
            if name.startswith("count/"):
                out[name] = float(total)
            else:
                out[name] = float(total / weight) if weight > 0 else math.nan
        if self.unpaired:
            out[REWARDS_MARGINS] = out[REWARDS_CHOSEN] - out[REWARDS_REJECTED]
        return out


@dataclass
class Accumulated:
    """One rank's micro-batches of an optimizer step: the summed gradients, the metrics, the
    work (pairs, or completions for kto) and the pairs' indices. `failure` says why the step
    cannot be applied (a non-finite loss), with the pairs to look at."""

    grads: Any
    metrics: MetricTotals
    pairs: int
    tokens: int
    pair_indices: list[int]
    failure: str | None = None

    def totals(self, ranks: Ranks) -> tuple[dict[str, float], int, int]:
        """(metric values, pairs, tokens) over every rank."""
        summed = ranks.sum(np.array([self.pairs, self.tokens], dtype=np.float64))
        return self.metrics.means(ranks), int(summed[0]), int(summed[1])


def step_extras(
    batch: Batch, split: TokenizedSplit, reference: dict[str, np.ndarray] | None
) -> dict[str, mx.array]:
    """What the loss reads besides the model inputs: the pairs' response token counts, KTO's
    labels, and the batch's rows of the cached reference columns (`reference_<column>`)."""
    chosen_tokens, rejected_tokens = response_token_counts(batch)
    extras = {"chosen_tokens": chosen_tokens, "rejected_tokens": rejected_tokens}
    if isinstance(split, CompletionSplit):
        extras["desirable"] = mx.array(split.desirable[batch.pair_indices].astype(np.float32))
    for name, values in (reference or {}).items():
        extras[f"reference_{name}"] = mx.array(values[batch.pair_indices])
    return extras


class TrainingStep:
    """One optimizer step: `accumulate(step)` runs its micro-batches through the compiled
    step, `apply(grads)` averages, clips and updates. The reference log-probs of the train
    split come from the cache (`train_reference`: column -> per-entry array), or are computed
    inside the step when it is None (a live reference, or none for a reference-free loss).
    `loss_state` is the loss's state between micro-batches (bco_pair's reward shift): the
    initial one, or a checkpoint's; it advances once per micro-batch."""

    def __init__(
        self,
        session: Session,
        config: TrainConfig,
        optimizer: optim.Optimizer,
        batches: StepBatches,
        train_reference: dict[str, np.ndarray] | None,
        loss_state: LossState | None = None,
    ):
        self.model = session.model
        self.config = config
        self.optimizer = optimizer
        self.batches = batches
        self.train_reference = train_reference
        self.metric_names = loss_catalog.metric_names(config.loss)
        if loss_state is None:
            loss_state = initial_loss_state(settings_from_config(config))
        self.loss_state = loss_state
        self.accumulate_fn, self.apply_fn = compiled_step(
            session, config, optimizer, rank_mean_of(batches.ranks)
        )

    def accumulate(self, step: int) -> Accumulated:
        """The micro-batches of optimizer step `step` (0-based); stops at a non-finite loss."""
        accumulation = self.config.grad_accumulation
        split = self.batches.split
        done = Accumulated(None, MetricTotals(self.metric_names), 0, 0, [])
        for micro, positions in enumerate(self.batches.positions(step)):
            k = step * accumulation + micro
            batch = self.batches.collate(positions)
            mx.random.seed(self.config.seed * DROPOUT_SEED_STRIDE + k)
            extras = step_extras(batch, split, self.train_reference)
            loss, metrics, done.grads, self.loss_state = self.accumulate_fn(
                done.grads, batch_arrays(batch), extras, self.loss_state
            )
            mx.eval(loss, metrics, done.grads, self.loss_state)
            loss_value = loss.item()
            done.pair_indices += [split.pairs[i].index for i in batch.pair_indices]
            if not math.isfinite(loss_value):
                sources = ", ".join(split.pairs[i].source for i in batch.pair_indices[:8])
                done.failure = (
                    f"non-finite loss at step {step + 1} (pairs {sources}); try a lower "
                    "learning rate or check these pairs"
                )
                return done
            done.metrics.add(np.array([loss_value, *np.array(metrics).tolist()]), batch.num_pairs)
            done.pairs += batch.num_pairs
            done.tokens += batch.num_tokens
        return done

    def apply(self, grads: Any, pairs: int) -> float:
        """The mean gradient over the step's `pairs` (kto: completions; every rank's, as
        Accumulated.totals counts them), clipped, applied to the LoRA weights; the gradient
        norm."""
        items = mx.array(pairs / self.batches.ranks.size, dtype=mx.float32)
        grad_norm = self.apply_fn(grads, items)
        mx.eval(self.model.state, self.optimizer.state, grad_norm)
        return grad_norm.item()
