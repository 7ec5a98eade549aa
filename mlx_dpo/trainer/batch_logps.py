"""The log-probs of a batch: its model inputs, the policy's summed response log-probs and the
reference's (the same weights with every LoRA branch switched off)."""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
import numpy as np

from mlx_dpo.batching import Batch
from mlx_dpo.data import TokenizedSplit
from mlx_dpo.logprobs import response_logps, shared_prompt_logps
from mlx_dpo.model import reference_mode
from mlx_dpo.session import Session


def batch_arrays(batch: Batch) -> tuple[mx.array, ...]:
    """The model inputs of the batch's layout: 3 arrays for rows, 4 for a shared prompt."""
    return tuple(mx.array(a) for a in batch.model_inputs())


def rows_logps(session: Session, *inputs: mx.array) -> mx.array:
    """Summed response log-probs of the 2B rows, in whichever layout the batch has."""
    if len(inputs) == 4:
        return shared_prompt_logps(session.model, *inputs, session.head_split)
    return response_logps(session.model, *inputs, session.head_split)


def reference_rows_logps(session: Session, *inputs: mx.array) -> mx.array:
    """rows_logps of the reference: LoRA switched off (the init adapter's frozen copy on),
    no gradient through it."""
    with reference_mode(session.model, session.frozen_adapter):
        return mx.stop_gradient(rows_logps(session, *inputs))


def compute_reference(
    session: Session, split: TokenizedSplit
) -> Callable[[list[int]], tuple[np.ndarray, np.ndarray]]:
    """`compute(pair_positions)` -> the reference's (chosen, rejected) log-probs of those
    pairs of the split, as reference.reference_logps asks for them."""

    def compute(positions: list[int]) -> tuple[np.ndarray, np.ndarray]:
        batch = session.collate([split.pairs[i] for i in positions])
        rows = reference_rows_logps(session, *batch_arrays(batch))
        mx.eval(rows)
        rows = np.array(rows)
        return rows[: len(positions)], rows[len(positions) :]

    return compute


def response_token_counts(batch: Batch) -> tuple[mx.array, mx.array]:
    """Response tokens of each pair: (chosen, rejected), for the length-normalised losses."""
    counts = batch.response_mask.sum(axis=1)
    n = batch.num_pairs
    return mx.array(counts[:n]), mx.array(counts[n:])
