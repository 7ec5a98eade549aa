"""Epochs, seeded shuffling, length buckets, padding and rank sharding.

The order of the data is a pure function of (seed, epoch) and the effective batch (pairs per
optimizer step), so a resumed run only needs the step number to continue exactly where the
interrupted one was, with the same or another split of each step into micro-batches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mlx_dpo.data import TokenizedPair

# Padded lengths are rounded up so the compiled step is reused rather than traced again.
PAD_MULTIPLE = 32
# Bucketing window: sort by length inside windows of this many batches, then shuffle batches.
BUCKET_WINDOW = 8


@dataclass
class Batch:
    """B pairs as 2B rows: chosen rows first, then rejected rows, in one of two layouts.

    Rows (every row holds its own copy of the prompt):
    tokens              (2B, L) int32, each row prompt + response, right-padded
    response_positions  (2B, W) int32, target positions (in tokens[:, 1:]) of response tokens

    Shared prompt (prefix sharing: each prompt once, both responses continue from it):
    prompt_tokens       (B, P)  int32, prompts left-padded so they all end at column P - 1
    prompt_padding      (B,)    int32, left padding of each prompt
    response_tokens     (2B, W) int32, responses right-padded

    Both:
    response_mask       (2B, W) float32, 1 where the position is a real response token
    prompt_lengths      (B,)    int32, prompt length of each pair
    pair_indices        (B,)    the pairs' indices in their split
    """

    response_mask: np.ndarray
    prompt_lengths: np.ndarray
    pair_indices: np.ndarray
    tokens: np.ndarray | None = None
    response_positions: np.ndarray | None = None
    prompt_tokens: np.ndarray | None = None
    prompt_padding: np.ndarray | None = None
    response_tokens: np.ndarray | None = None

    @property
    def shared_prompt(self) -> bool:
        return self.prompt_tokens is not None

    def model_inputs(self) -> tuple[np.ndarray, ...]:
        if self.shared_prompt:
            return (
                self.prompt_tokens,
                self.prompt_padding,
                self.response_tokens,
                self.response_mask,
            )
        return (self.tokens, self.response_positions, self.response_mask)

    @property
    def num_pairs(self) -> int:
        return len(self.pair_indices)

    @property
    def num_tokens(self) -> int:
        """Real tokens of the 2B sequences (prompt counted for both responses)."""
        return int(self.response_mask.sum() + self.prompt_lengths.sum() * 2)


def round_up(n: int, multiple: int = PAD_MULTIPLE) -> int:
    return max(multiple, multiple * math.ceil(n / multiple))


def pair_length(pair: TokenizedPair) -> int:
    return len(pair.prompt_ids) + max(len(pair.chosen_ids), len(pair.rejected_ids))


def pair_lengths(pairs: Sequence[TokenizedPair]) -> np.ndarray:
    """pair_length of every pair: from a split's length arrays when `pairs` is a
    TokenizedSplit's view (no pair objects built), else pair by pair."""
    if hasattr(pairs, "lengths"):
        lengths = pairs.lengths()
        return lengths[:, 0] + np.maximum(lengths[:, 1], lengths[:, 2])
    return np.array([pair_length(p) for p in pairs], dtype=np.int64)


def collate(pairs: list[TokenizedPair], pad_id: int = 0, shared_prompt: bool = False) -> Batch:
    if shared_prompt:
        return _collate_shared(pairs, pad_id)
    rows = [(p.prompt_ids, p.chosen_ids) for p in pairs] + [
        (p.prompt_ids, p.rejected_ids) for p in pairs
    ]
    tokens, positions, mask = collate_rows(rows, pad_id)
    return _pairs_batch(pairs, mask, tokens=tokens, response_positions=positions)


def _pairs_batch(pairs: list[TokenizedPair], mask: np.ndarray, **layout: np.ndarray) -> Batch:
    """A Batch of `pairs` in either layout (`layout`: its token arrays), with what every
    batch of pairs records: the response mask, prompt lengths and the pairs' indices."""
    return Batch(
        response_mask=mask,
        prompt_lengths=np.array([len(p.prompt_ids) for p in pairs], dtype=np.int32),
        pair_indices=np.array([p.index for p in pairs], dtype=np.int64),
        **layout,
    )


def collate_rows(
    rows: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens, response_positions, response_mask) of (prompt, response) rows, each row
    prompt + response right-padded (Batch's rows layout, for rows that are not pairs)."""
    # +1: inputs are tokens[:, :-1], so L-1 positions hold the longest sequence.
    length = round_up(max(len(a) + len(b) for a, b in rows)) + 1
    window = round_up(max(len(b) for _, b in rows), 16)
    tokens = np.full((len(rows), length), pad_id, dtype=np.int32)
    positions = np.zeros((len(rows), window), dtype=np.int32)
    mask = np.zeros((len(rows), window), dtype=np.float32)
    for row, (prompt, response) in enumerate(rows):
        tokens[row, : len(prompt)] = prompt
        tokens[row, len(prompt) : len(prompt) + len(response)] = response
        # Target position t predicts tokens[t + 1]: the first response token is predicted at
        # len(prompt) - 1.
        start = len(prompt) - 1
        positions[row] = np.minimum(start + np.arange(window), length - 2)
        mask[row, : len(response)] = 1.0
    return tokens, positions, mask


def _collate_shared(pairs: list[TokenizedPair], pad_id: int) -> Batch:
    prompt_length = round_up(max(len(p.prompt_ids) for p in pairs), 16)
    responses = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    window = round_up(max(len(r) for r in responses), 16)
    prompt_tokens = np.full((len(pairs), prompt_length), pad_id, dtype=np.int32)
    padding = np.zeros(len(pairs), dtype=np.int32)
    for row, pair in enumerate(pairs):
        padding[row] = prompt_length - len(pair.prompt_ids)
        prompt_tokens[row, padding[row] :] = pair.prompt_ids
    response_tokens = np.full((len(responses), window), pad_id, dtype=np.int32)
    mask = np.zeros((len(responses), window), dtype=np.float32)
    for row, response in enumerate(responses):
        response_tokens[row, : len(response)] = response
        mask[row, : len(response)] = 1.0
    return _pairs_batch(
        pairs,
        mask,
        prompt_tokens=prompt_tokens,
        prompt_padding=padding,
        response_tokens=response_tokens,
    )


def epoch_batches(
    pairs: Sequence[TokenizedPair],
    batch_size: int,
    seed: int,
    epoch: int,
    bucket: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> list[list[int]]:
    """Batches of pair positions for one epoch without gradient accumulation: the steps of
    epoch_steps, one batch each."""
    steps = epoch_steps(pairs, batch_size, 1, seed, epoch, bucket, rank, world_size)
    return [micro for step in steps for micro in step]


def epoch_steps(
    pairs: Sequence[TokenizedPair],
    batch_size: int,
    grad_accumulation: int,
    seed: int,
    epoch: int,
    bucket: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> list[list[list[int]]]:
    """One epoch as optimizer steps, each a list of this rank's micro-batches (pair
    positions). The epoch is cut into groups of E = batch_size × grad_accumulation ×
    world_size pairs, one per step: a seeded shuffle, then (optionally) length buckets inside
    windows of BUCKET_WINDOW groups, then a seeded shuffle of the group order. Each group is
    dealt to the ranks (rank r takes every world_size-th pair) and cut into micro-batches of
    at most batch_size pairs.

    So which pairs each step sees, and in which order the steps come, is a function of
    (seed, epoch, E) alone: batch 2 × accumulation 4 trains on exactly the groups of batch
    4 × accumulation 2, which is what lets a run that ran out of memory go on with a smaller
    batch (mlx_dpo/rundir.py). With accumulation 1 a group is a batch, as before
    accumulation was part of the order. Every pair appears once per epoch; the last group
    may be smaller (with several ranks, one smaller than the number of ranks is left out of
    the epoch, since every rank needs a pair)."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(pairs))
    step_pairs = batch_size * grad_accumulation * world_size
    if bucket:
        # Windows of whole groups: each group is a slice of a length-sorted window, so its
        # micro-batches hold pairs of similar length and pad little.
        window = step_pairs * BUCKET_WINDOW
        lengths = pair_lengths(pairs)
        chunks = []
        for start in range(0, len(order), window):
            chunk = order[start : start + window]
            chunks.append(chunk[np.argsort(lengths[chunk], kind="stable")])
        order = np.concatenate(chunks) if chunks else order
    groups = [order[i : i + step_pairs] for i in range(0, len(order), step_pairs)]
    if world_size > 1 and groups and len(groups[-1]) < world_size:
        groups.pop()
    if bucket:
        groups = [groups[i] for i in rng.permutation(len(groups))]
    return [_micro_batches(group, batch_size, rank, world_size) for group in groups]


def _micro_batches(
    group: np.ndarray, batch_size: int, rank: int, world_size: int
) -> list[list[int]]:
    """This rank's share of a step's group, cut into micro-batches of at most batch_size
    pairs. Every rank runs as many micro-batches as the largest share needs (a collective in
    the step waits for all), never more than the smallest share has pairs: only a last group
    with batch_size 1 on several ranks can give a rank one pair more than batch_size."""
    share = group[rank::world_size]
    largest, smallest = -(-len(group) // world_size), len(group) // world_size
    count = max(1, min(-(-largest // batch_size), smallest))
    return [[int(i) for i in part] for part in np.array_split(share, count)]


def batches_per_epoch(num_pairs: int, batch_size: int, world_size: int = 1) -> int:
    return steps_per_epoch(num_pairs, batch_size, 1, world_size)


def steps_per_epoch(
    num_pairs: int, batch_size: int, grad_accumulation: int = 1, world_size: int = 1
) -> int:
    """Optimizer steps of an epoch (epoch_steps' groups): a last, smaller group counts."""
    full, rest = divmod(num_pairs, batch_size * grad_accumulation * world_size)
    return full + (1 if rest and (world_size == 1 or rest >= world_size) else 0)


def length_sorted_batches(
    lengths: np.ndarray, batch_size: int, rank: int = 0, world_size: int = 1
) -> list[np.ndarray]:
    """The forward-only passes' batches (reference precompute, evaluation): positions
    sorted by length, `batch_size` at a time, so a batch pads little; each pass puts the
    results back at their positions. With several ranks, rank r takes every world_size-th
    position of the sorted order."""
    order = np.argsort(lengths, kind="stable")[rank::world_size]
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
