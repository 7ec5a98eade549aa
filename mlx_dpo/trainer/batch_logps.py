"""The log-probs of a batch: its model inputs, the policy's summed response log-probs and the
reference's (the same weights with every LoRA branch switched off), with what the loss options
need beside the sums (LD-DPO's tail sums, WPO's terms).

A batch of pairs has 2B rows, B chosen then B rejected. A KTO batch has the same layout: row i
is completion i, row B + i its KL row (prompt i with the completion of the row before,
mlx_dpo/unpaired.py), so prefix sharing and every function here serve both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from mlx_dpo import loss_catalog
from mlx_dpo.batching import Batch, collate_rows
from mlx_dpo.config import TrainConfig
from mlx_dpo.data import TokenizedSplit
from mlx_dpo.logprobs import response_token_logps, shared_prompt_token_logps
from mlx_dpo.losses import PairLogps, response_sums
from mlx_dpo.model import reference_mode
from mlx_dpo.session import Session


@dataclass
class RowSums:
    """Per-row sums over the response tokens (R,): the log-probs, and where asked their
    tails past the pair's shorter response (LD-DPO) and WPO's terms."""

    sums: mx.array
    tails: mx.array | None = None
    wpo: mx.array | None = None


def batch_arrays(batch: Batch) -> tuple[mx.array, ...]:
    """The model inputs of the batch's layout: 3 arrays for rows, 4 for a shared prompt."""
    return tuple(mx.array(a) for a in batch.model_inputs())


def _token_logps(
    session: Session, inputs: tuple[mx.array, ...], wpo: bool = False
) -> tuple[mx.array, mx.array | None]:
    """Masked per-token log-probs (R, W) of the rows (and WPO's terms), in either layout."""
    if len(inputs) == 4:
        return shared_prompt_token_logps(session.model, *inputs, session.head_split, wpo)
    return response_token_logps(session.model, *inputs, session.head_split, wpo=wpo)


def row_sums(
    session: Session, inputs: tuple[mx.array, ...], tails: bool = False, wpo: bool = False
) -> RowSums:
    """The rows' summed response log-probs; with `tails` their LD-DPO tail sums (pairs
    only: the rows are B chosen then B rejected), with `wpo` their summed WPO terms."""
    values, terms = _token_logps(session, inputs, wpo)
    mask = inputs[-1]
    if tails:
        sums, tail_sums = response_sums(values, mask)
    else:
        sums, tail_sums = values.sum(axis=-1), None
    return RowSums(sums, tail_sums, None if terms is None else terms.sum(axis=-1))


def rows_logps(session: Session, *inputs: mx.array) -> mx.array:
    """Summed response log-probs of the rows, in whichever layout the batch has."""
    return row_sums(session, inputs).sums


def reference_row_sums(
    session: Session, inputs: tuple[mx.array, ...], tails: bool = False
) -> RowSums:
    """row_sums of the reference: LoRA switched off (the init adapter's frozen copy on), no
    gradient through it."""
    with reference_mode(session.model, session.frozen_adapter):
        found = row_sums(session, inputs, tails)
        return RowSums(
            mx.stop_gradient(found.sums),
            None if found.tails is None else mx.stop_gradient(found.tails),
        )


def reference_rows_logps(session: Session, *inputs: mx.array) -> mx.array:
    """rows_logps of the reference (no gradient)."""
    return reference_row_sums(session, inputs).sums


def second_half(inputs: tuple[mx.array, ...]) -> tuple[mx.array, ...]:
    """The model inputs of a batch's last B rows only (a KTO batch's KL rows), in the same
    layout: rows keep their own tokens, a shared prompt keeps its B prompts."""
    if len(inputs) == 4:
        prompt_tokens, padding, responses, mask = inputs
        n = prompt_tokens.shape[0]
        return prompt_tokens, padding, responses[n:], mask[n:]
    n = inputs[0].shape[0] // 2
    return tuple(a[n:] for a in inputs)


def pair_logps(
    policy: RowSums,
    reference: dict[str, mx.array] | None,
    chosen_tokens: mx.array,
    rejected_tokens: mx.array,
) -> PairLogps:
    """PairLogps of a batch of pairs from its rows' sums and its reference columns
    (`reference_columns`' names; None for a reference-free loss)."""
    n = chosen_tokens.shape[0]
    reference = reference or {}

    def halves(values: mx.array | None) -> tuple[mx.array | None, mx.array | None]:
        return (None, None) if values is None else (values[:n], values[n:])

    policy_tails = halves(policy.tails)
    wpo = halves(policy.wpo)
    return PairLogps(
        policy.sums[:n],
        policy.sums[n:],
        reference.get("chosen"),
        reference.get("rejected"),
        chosen_tokens,
        rejected_tokens,
        policy_chosen_tail=policy_tails[0],
        policy_rejected_tail=policy_tails[1],
        reference_chosen_tail=reference.get("chosen_tail"),
        reference_rejected_tail=reference.get("rejected_tail"),
        chosen_wpo=wpo[0],
        rejected_wpo=wpo[1],
    )


def reference_columns(config: TrainConfig) -> tuple[str, ...]:
    """What the reference pass computes for each pair (or completion) of a run: nothing for a
    reference-free loss; kto: the completion's log-prob (its KL rows change with every batch,
    so the step computes their reference live); pairs: chosen and rejected, plus their tail
    sums with ld_alpha."""
    if not loss_catalog.needs_reference(config.loss):
        return ()
    if loss_catalog.is_unpaired(config.loss):
        return ("completion",)
    tails = ("chosen_tail", "rejected_tail") if config.ld_alpha is not None else ()
    return ("chosen", "rejected", *tails)


def reference_of_rows(
    session: Session, inputs: tuple[mx.array, ...], columns: tuple[str, ...]
) -> dict[str, mx.array]:
    """The reference columns of a batch of pairs computed now (a live reference)."""
    if not columns:
        return {}
    n = inputs[-1].shape[0] // 2
    found = reference_row_sums(session, inputs, tails="chosen_tail" in columns)
    values = {"chosen": found.sums[:n], "rejected": found.sums[n:]}
    if found.tails is not None:
        values["chosen_tail"], values["rejected_tail"] = found.tails[:n], found.tails[n:]
    return values


def compute_reference(
    session: Session, split: TokenizedSplit, columns: tuple[str, ...] = ("chosen", "rejected")
) -> Callable[[list[int]], tuple[np.ndarray, ...]]:
    """`compute(positions)` -> the reference's `columns` of those pairs (or completions) of
    the split, in column order, as reference.reference_logps asks for them. A completion
    ("completion" column: kto) is one row: its prompt and its answer."""

    def compute(positions: list[int]) -> tuple[np.ndarray, ...]:
        pairs = [split.pairs[i] for i in positions]
        if columns == ("completion",):
            rows = collate_rows([(p.prompt_ids, p.chosen_ids) for p in pairs], session.pad_id)
            found = reference_row_sums(session, tuple(mx.array(a) for a in rows))
            mx.eval(found.sums)
            return (np.array(found.sums),)
        values = reference_of_rows(session, batch_arrays(session.collate(pairs)), columns)
        mx.eval(values)
        return tuple(np.array(values[name]) for name in columns)

    return compute


def response_token_counts(batch: Batch) -> tuple[mx.array, mx.array]:
    """Response tokens of each pair: (chosen, rejected), for the length-normalised losses."""
    counts = batch.response_mask.sum(axis=1)
    n = batch.num_pairs
    return mx.array(counts[:n]), mx.array(counts[n:])
