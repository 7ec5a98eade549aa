"""Batches (mlx_dpo/batching.py): both layouts hold exactly the pairs' tokens where the model
reads them, padding rounds up, and the data order is a seeded function of the epoch that
covers every pair once, the same steps of pairs for every split of the same effective batch."""

from __future__ import annotations

import numpy as np
import pytest

from mlx_dpo.batching import (
    PAD_MULTIPLE,
    batches_per_epoch,
    collate,
    epoch_batches,
    epoch_steps,
    length_sorted_batches,
    round_up,
    steps_per_epoch,
)
from mlx_dpo.data import TokenizedPair

PAD = 0


def pair(index: int, prompt: int, chosen: int, rejected: int) -> TokenizedPair:
    """Token ids that say where they come from: prompt 100+, chosen 200+, rejected 300+."""
    return TokenizedPair(
        index,
        f"train.jsonl:{index + 1}",
        list(range(100, 100 + prompt)),
        list(range(200, 200 + chosen)),
        list(range(300, 300 + rejected)),
    )


PAIRS = [pair(0, 5, 3, 7), pair(1, 9, 4, 2)]


def test_round_up():
    assert [round_up(n) for n in (0, 1, 32, 33)] == [32, 32, 32, 64]
    assert round_up(17, 16) == 32 and PAD_MULTIPLE == 32


def test_rows_layout_holds_each_prompt_and_response_where_the_targets_point():
    batch = collate(PAIRS, pad_id=PAD)
    assert not batch.shared_prompt and batch.num_pairs == 2
    assert batch.tokens.shape == (4, round_up(9 + 4) + 1)
    rows = [(p, p.chosen_ids) for p in PAIRS] + [(p, p.rejected_ids) for p in PAIRS]
    for row, (p, response) in enumerate(rows):
        sequence = p.prompt_ids + response
        assert batch.tokens[row, : len(sequence)].tolist() == sequence
        assert (batch.tokens[row, len(sequence) :] == PAD).all()
        # Position t predicts tokens[t + 1]: the masked positions predict the response.
        targets = batch.tokens[row, batch.response_positions[row] + 1]
        mask = batch.response_mask[row].astype(bool)
        assert targets[mask].tolist() == response
        assert mask.sum() == len(response)
    assert batch.prompt_lengths.tolist() == [5, 9]
    assert batch.pair_indices.tolist() == [0, 1]
    # Real tokens of the 2B sequences: each prompt counts once for each response.
    assert batch.num_tokens == 2 * (5 + 9) + (3 + 4 + 7 + 2)
    assert len(batch.model_inputs()) == 3


def test_shared_prompt_layout_holds_each_prompt_once_left_padded():
    batch = collate(PAIRS, pad_id=PAD, shared_prompt=True)
    assert batch.shared_prompt and batch.tokens is None
    assert batch.prompt_tokens.shape == (2, 16)
    assert batch.prompt_padding.tolist() == [11, 7]
    for row, p in enumerate(PAIRS):
        assert batch.prompt_tokens[row, batch.prompt_padding[row] :].tolist() == p.prompt_ids
        assert (batch.prompt_tokens[row, : batch.prompt_padding[row]] == PAD).all()
    responses = [p.chosen_ids for p in PAIRS] + [p.rejected_ids for p in PAIRS]
    for row, response in enumerate(responses):
        mask = batch.response_mask[row].astype(bool)
        assert batch.response_tokens[row][mask].tolist() == response
    assert batch.num_tokens == collate(PAIRS).num_tokens
    assert len(batch.model_inputs()) == 4


def lengths_pairs(n: int) -> list[TokenizedPair]:
    rng = np.random.default_rng(0)
    return [pair(i, *rng.integers(1, 40, 3).tolist()) for i in range(n)]


@pytest.mark.parametrize("n,batch_size", [(23, 4), (24, 4), (5, 8)])
def test_an_epoch_covers_every_pair_once(n, batch_size):
    pairs = lengths_pairs(n)
    batches = epoch_batches(pairs, batch_size, seed=1, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(n))
    assert all(len(b) <= batch_size for b in batches)
    assert len(batches) == batches_per_epoch(n, batch_size)


def test_the_order_is_a_function_of_seed_and_epoch():
    pairs = lengths_pairs(40)
    first = epoch_batches(pairs, 4, seed=1, epoch=0)
    assert epoch_batches(pairs, 4, seed=1, epoch=0) == first
    assert epoch_batches(pairs, 4, seed=1, epoch=1) != first
    assert epoch_batches(pairs, 4, seed=2, epoch=0) != first


def test_buckets_group_similar_lengths():
    pairs = lengths_pairs(64)

    def padding(batches):
        lengths = [
            [len(pairs[i].prompt_ids) + len(pairs[i].chosen_ids) for i in b] for b in batches
        ]
        return sum(len(b) * max(b) - sum(b) for b in lengths)

    assert padding(epoch_batches(pairs, 4, 0, 0, bucket=True)) < padding(
        epoch_batches(pairs, 4, 0, 0, bucket=False)
    )


def test_batches_per_epoch_with_ranks():
    assert batches_per_epoch(24, 4) == 6
    assert batches_per_epoch(25, 4) == 7
    # 2 ranks: global batches of 8; a last one of 1 pair cannot feed both ranks.
    assert batches_per_epoch(25, 4, world_size=2) == 3
    assert batches_per_epoch(26, 4, world_size=2) == 4
    assert len(epoch_batches(lengths_pairs(25), 4, 0, 0, True, 0, 2)) == 3


def test_forward_batches_are_length_sorted_and_cover_every_position():
    lengths = np.array([50, 10, 40, 20, 30, 10, 60])
    batches = length_sorted_batches(lengths, 3)
    assert [b.tolist() for b in batches] == [[1, 5, 3], [4, 2, 0], [6]]
    assert length_sorted_batches(np.array([], dtype=np.int64), 3) == []
    shards = [length_sorted_batches(lengths, 2, rank, 2) for rank in (0, 1)]
    assert [b.tolist() for b in shards[0]] == [[1, 3], [2, 6]]
    assert [b.tolist() for b in shards[1]] == [[5, 4], [0]]
    every = sorted(int(i) for shard in shards for b in shard for i in b)
    assert every == list(range(7))


def test_without_accumulation_the_order_is_the_one_runs_were_made_with():
    """Written down from the code before accumulation was part of the order: runs made then
    with accumulation 1 resume with the same batches."""
    assert epoch_batches(lengths_pairs(23), 4, 7, 1) == [
        [19, 3, 18], [9, 13, 10, 16], [17, 11, 22, 4], [8, 21, 15, 5], [14, 2, 12, 1],
        [6, 7, 0, 20],
    ]  # fmt: skip
    assert epoch_batches(lengths_pairs(25), 2, 7, 1, True, 1, 2) == [
        [17, 11], [20, 3], [2, 1], [24, 21], [4, 6], [13, 10],
    ]  # fmt: skip


def step_groups(n, batch_size, accumulation, world_size=1, bucket=True, seed=5, epoch=2):
    """Each step's pairs over every rank, in order (rank by rank, micro-batch by micro-batch)."""
    pairs = lengths_pairs(n)
    ranks = [
        epoch_steps(pairs, batch_size, accumulation, seed, epoch, bucket, rank, world_size)
        for rank in range(world_size)
    ]
    assert len({len(steps) for steps in ranks}) == 1
    groups = []
    for step in zip(*ranks, strict=True):
        assert len({len(micros) for micros in step}) == 1  # every rank as many micro-batches
        # At most batch_size pairs; batch 1 on several ranks may hold 2 in a last step whose
        # pairs the ranks cannot share evenly (batching._micro_batches).
        most = batch_size + (batch_size == 1 and world_size > 1)
        assert all(micro and len(micro) <= most for micros in step for micro in micros)
        groups.append(sorted(i for micros in step for micro in micros for i in micro))
    return groups


@pytest.mark.parametrize("n", [23, 24, 25, 64])
@pytest.mark.parametrize("bucket", [True, False])
def test_the_steps_are_the_same_pairs_for_every_split_of_the_effective_batch(n, bucket):
    """8 pairs a step as 8 × 1, 4 × 2, 2 × 4 or 1 × 8: the same pairs in each step, the
    steps in the same order, every pair once; a last, smaller step holds the same pairs too."""
    splits = [(8, 1), (4, 2), (2, 4), (1, 8)]
    expected = step_groups(n, 8, 1, bucket=bucket)
    assert sorted(i for group in expected for i in group) == list(range(n))
    assert len(expected) == steps_per_epoch(n, 8) == -(-n // 8)
    for batch_size, accumulation in splits[1:]:
        assert step_groups(n, batch_size, accumulation, bucket=bucket) == expected
        assert steps_per_epoch(n, batch_size, accumulation) == len(expected)
    # Two ranks, 4 pairs each a step, as 4 × 1 or 2 × 2 or 1 × 4: the same steps again.
    two_ranks = step_groups(n, 4, 1, world_size=2, bucket=bucket)
    for batch_size, accumulation in ((2, 2), (1, 4)):
        assert step_groups(n, batch_size, accumulation, 2, bucket) == two_ranks
    assert len(two_ranks) == steps_per_epoch(n, 2, 2, world_size=2)
    # Another effective batch is another order.
    assert step_groups(n, 4, 3, bucket=bucket) != expected


def test_a_steps_micro_batches_are_its_pairs_by_length():
    pairs = lengths_pairs(40)
    for step in epoch_steps(pairs, 2, 4, seed=0, epoch=0):
        lengths = [len(pairs[i].prompt_ids) + max(len(pairs[i].chosen_ids),
                   len(pairs[i].rejected_ids)) for micro in step for i in micro]  # fmt: skip
        assert lengths == sorted(lengths)


def test_a_last_smaller_step_is_cut_into_even_micro_batches():
    # 26 pairs in steps of 16: the last step's 10 pairs as 4 + 3 + 3 (batch 4), not 4 + 4 + 2.
    last = [s for s in epoch_steps(lengths_pairs(26), 4, 4, 0, 0) if sum(map(len, s)) == 10]
    assert [len(micro) for micro in last[0]] == [4, 3, 3]
