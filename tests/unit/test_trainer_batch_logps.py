"""A batch's log-probs (mlx_dpo/trainer/batch_logps.py): the reference is the base model with
LoRA switched off, whatever the LoRA weights; model inputs and token counts of both layouts."""

from __future__ import annotations

import numpy as np
from mlx.utils import tree_map

from mlx_dpo.batching import collate
from mlx_dpo.session import open_session
from mlx_dpo.trainer.batch_logps import (
    batch_arrays,
    compute_reference,
    reference_rows_logps,
    response_token_counts,
    rows_logps,
)
from tests.interop import logps_of
from tests.training import config_for


def test_reference_is_the_base_model_before_and_after_training(
    llama_chatml, preference_data, tmp_path
):
    from mlx_lm.utils import load

    config = config_for(llama_chatml, preference_data, tmp_path / "run", iters=4)
    session = open_session(config)
    batch = collate(session.splits["train"].pairs[:4])
    arrays = batch_arrays(batch)
    base, _ = load(str(llama_chatml))
    from mlx_dpo.logprobs import find_head_split, response_logps

    base_logps = np.array(response_logps(base, *arrays, find_head_split(base)))
    np.testing.assert_allclose(
        np.array(reference_rows_logps(session, *arrays)), base_logps, rtol=1e-5
    )
    # Train the LoRA weights away from zero, then switch them off again.
    session.model.update(tree_map(lambda p: p + 0.05, session.model.trainable_parameters()))
    policy = np.array(rows_logps(session, *arrays))
    assert np.abs(policy - base_logps).max() > 1e-3
    np.testing.assert_allclose(
        np.array(reference_rows_logps(session, *arrays)), base_logps, rtol=1e-5
    )
    # The switch is restored: the policy is unchanged after a reference pass.
    np.testing.assert_allclose(np.array(rows_logps(session, *arrays)), policy, rtol=1e-6)


def test_model_inputs_of_both_layouts(llama_chatml, preference_data):
    session = open_session(config_for(llama_chatml, preference_data), splits=("train",))
    pairs = session.splits["train"].pairs[:3]
    rows, shared = collate(pairs), collate(pairs, shared_prompt=True)
    for batch, count in ((rows, 3), (shared, 4)):
        arrays = batch_arrays(batch)
        assert len(arrays) == count
        for array, expected in zip(arrays, batch.model_inputs(), strict=True):
            np.testing.assert_array_equal(np.array(array), expected)
    # Token counts are the responses' lengths, in either layout.
    for batch in (rows, shared):
        chosen, rejected = response_token_counts(batch)
        assert np.array(chosen).tolist() == [len(p.chosen_ids) for p in pairs]
        assert np.array(rejected).tolist() == [len(p.rejected_ids) for p in pairs]


def test_compute_reference_gives_the_base_models_logps_of_the_asked_pairs(
    llama_chatml, preference_data
):
    from mlx_lm.utils import load

    session = open_session(config_for(llama_chatml, preference_data), splits=("train",))
    assert session.prefix_sharing  # the session's shared-prompt batches, against plain rows
    session.model.update(tree_map(lambda p: p + 0.05, session.model.trainable_parameters()))
    split = session.splits["train"]
    positions = [5, 0, 11]
    chosen, rejected = compute_reference(session, split)(positions)
    base, _ = load(str(llama_chatml))
    expected = logps_of(base, batch_arrays(collate([split.pairs[i] for i in positions])))
    np.testing.assert_allclose(chosen, expected[:3], rtol=1e-5)
    np.testing.assert_allclose(rejected, expected[3:], rtol=1e-5)
