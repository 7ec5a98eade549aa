"""Evaluating a split (mlx_dpo/trainer/evaluation.py): per-pair log-probs against the base
model and the policy's rows, the metrics and rewards against the DPO formulas in NumPy, the
same numbers whatever the batch size, and cached reference log-probs used as given."""

from __future__ import annotations

import dataclasses

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_map

from mlx_dpo.batching import collate
from mlx_dpo.session import open_session
from mlx_dpo.trainer.batch_logps import batch_arrays, rows_logps
from mlx_dpo.trainer.evaluation import evaluate_split
from tests.interop import logps_of
from tests.training import config_for


@pytest.fixture
def trained_session(llama_chatml, preference_data):
    """A session whose LoRA weights moved away from zero, and its config (β 0.7)."""
    config = config_for(llama_chatml, preference_data, beta=0.7, batch_size=3)
    session = open_session(config, splits=("valid",))
    rng = np.random.default_rng(2)
    session.model.update(
        tree_map(
            lambda p: p + mx.array(rng.normal(0, 0.05, p.shape).astype(np.float32)),
            session.model.trainable_parameters(),
        )
    )
    return session, config


def test_metrics_and_per_pair_rows_are_the_formulas(trained_session, llama_chatml):
    from mlx_lm.utils import load

    session, config = trained_session
    split = session.splits["valid"]
    result = evaluate_split(session, split, config, per_pair=True)
    rows = result.pop("per_pair")
    n = len(split)
    assert result["pairs"] == n == len(rows) == 8
    arrays = batch_arrays(collate(split.pairs))
    policy = np.array(rows_logps(session, *arrays), dtype=np.float64)
    base, _ = load(str(llama_chatml))
    reference = logps_of(base, arrays).astype(np.float64)
    for i, row in enumerate(rows):
        assert row["index"] == i and row["source"] == split.pairs[i].source
        assert row["policy_chosen_logp"] == pytest.approx(policy[i], rel=1e-5)
        assert row["policy_rejected_logp"] == pytest.approx(policy[n + i], rel=1e-5)
        assert row["reference_chosen_logp"] == pytest.approx(reference[i], rel=1e-5)
        assert row["reference_rejected_logp"] == pytest.approx(reference[n + i], rel=1e-5)
        expected_chosen = 0.7 * (policy[i] - reference[i])
        assert row["reward_chosen"] == pytest.approx(expected_chosen, rel=1e-3, abs=1e-5)
        expected_rejected = 0.7 * (policy[n + i] - reference[n + i])
        assert row["reward_rejected"] == pytest.approx(expected_rejected, rel=1e-3, abs=1e-5)
    chosen = np.array([r["reward_chosen"] for r in rows])
    rejected = np.array([r["reward_rejected"] for r in rows])
    z = chosen - rejected
    assert result["loss"] == pytest.approx(np.log1p(np.exp(-z)).mean(), rel=1e-4)
    assert result["rewards/margins"] == pytest.approx(z.mean(), rel=1e-4, abs=1e-6)
    assert result["rewards/accuracies"] == pytest.approx((chosen > rejected).mean())
    assert result["logps/chosen"] == pytest.approx(policy[:n].mean(), rel=1e-5)


def test_the_batch_size_changes_nothing(trained_session):
    session, config = trained_session
    split = session.splits["valid"]
    by_three = evaluate_split(session, split, config)  # batches of 3, 3 and 2
    whole = evaluate_split(session, split, dataclasses.replace(config, batch_size=8))
    assert by_three.keys() == whole.keys()
    for name, value in by_three.items():
        assert value == pytest.approx(whole[name], rel=1e-4, abs=1e-6), name


def test_cached_reference_log_probs_are_used_as_given(trained_session):
    session, config = trained_session
    split = session.splits["valid"]
    computed = evaluate_split(session, split, config, per_pair=True)["per_pair"]
    chosen = np.array([r["reference_chosen_logp"] for r in computed], dtype=np.float32)
    rejected = np.array([r["reference_rejected_logp"] for r in computed], dtype=np.float32)
    given = evaluate_split(session, split, config, (chosen, rejected), per_pair=True)["per_pair"]
    assert given == computed
    shifted = evaluate_split(session, split, config, (chosen + 1.0, rejected), per_pair=True)
    for row, before in zip(shifted["per_pair"], computed, strict=True):
        assert row["reference_chosen_logp"] == pytest.approx(before["reference_chosen_logp"] + 1)
        assert row["reward_chosen"] == pytest.approx(before["reward_chosen"] - 0.7, abs=1e-4)


def test_kto_evaluation_is_the_formula_over_the_split(llama_chatml, thumbs_data):
    """A split of rated completions: every completion's log-ratio and one reference point z
    from the whole split's KL rows (completion i-1 with prompt i), against TRL's formula in
    numpy; the cached completions' reference gives the same numbers."""
    from tests.unit.test_losses import kto_numpy

    config = config_for(llama_chatml, thumbs_data, loss="kto", beta=0.4, batch_size=5)
    session = open_session(config, splits=("valid",))
    rng = np.random.default_rng(4)
    session.model.update(
        tree_map(
            lambda p: p + mx.array(rng.normal(0, 0.05, p.shape).astype(np.float32)),
            session.model.trainable_parameters(),
        )
    )
    split = session.splits["valid"]
    result = evaluate_split(session, split, config, per_pair=True)
    n = len(split)
    prompts = [split.pairs[i].prompt_ids for i in range(n)]
    completions = [split.pairs[i].chosen_ids for i in range(n)]
    rows = [(prompts[i], completions[i]) for i in range(n)]
    kl_rows = [(prompts[i], completions[i - 1]) for i in range(n)]
    policy, reference = logps_of_rows(session, rows)
    kl_policy, kl_reference = logps_of_rows(session, kl_rows)
    desirable = split.desirable
    expected, _ = kto_numpy(policy, reference, desirable, kl_policy, kl_reference, 0.4, 1.0, 1.0)
    assert result["loss"] == pytest.approx(expected, rel=1e-4)
    assert result["pairs"] == n == 12
    assert result["count/desirable"] == desirable.sum()
    rewards = 0.4 * (policy - reference)
    assert result["rewards/chosen"] == pytest.approx(rewards[desirable].mean(), rel=1e-4)
    assert result["rewards/rejected"] == pytest.approx(rewards[~desirable].mean(), rel=1e-4)
    assert [r["desirable"] for r in result["per_pair"]] == desirable.tolist()
    np.testing.assert_allclose([r["reward"] for r in result["per_pair"]], rewards, rtol=1e-4)
    cached = evaluate_split(session, split, config, {"completion": reference.astype(np.float32)})
    assert cached["loss"] == pytest.approx(result["loss"], rel=1e-5)


def logps_of_rows(session, rows):
    """The policy's and the reference's summed response log-probs of (prompt, response) rows,
    one row at a time (no batching, no KL pairing)."""
    from mlx_dpo.batching import collate_rows
    from mlx_dpo.trainer.batch_logps import reference_rows_logps

    policy, reference = [], []
    for row in rows:
        arrays = tuple(mx.array(a) for a in collate_rows([row]))
        policy.append(rows_logps(session, *arrays).item())
        reference.append(reference_rows_logps(session, *arrays).item())
    return np.array(policy, np.float64), np.array(reference, np.float64)


# ---------------------------------------------------------------------------------------------
# One forward pass: the policy as its own reference, a cached reference


@pytest.fixture
def forwards(monkeypatch):
    """Counts the model's forward passes (calls of its backbone, however a batch is laid
    out) and, among them, the reference's (LoRA switched off)."""
    from mlx_dpo.trainer import batch_logps

    counts = {"backbone": 0, "reference": 0}
    reference_mode = batch_logps.reference_mode

    def counting_reference_mode(*args, **kwargs):
        counts["reference"] += 1
        return reference_mode(*args, **kwargs)

    monkeypatch.setattr(batch_logps, "reference_mode", counting_reference_mode)

    def count(session):
        backbone = session.head_split.backbone

        def counting_backbone(*args, **kwargs):
            counts["backbone"] += 1
            return backbone(*args, **kwargs)

        session.head_split = dataclasses.replace(session.head_split, backbone=counting_backbone)
        return counts

    return count


def test_a_policy_that_is_its_own_reference_runs_once_a_batch(
    llama_chatml, preference_data, forwards
):
    """A model without an adapter: one forward pass a batch gives the policy's and the
    reference's log-probs (they are the same model); the old path ran two. The numbers are
    the old path's."""
    config = config_for(llama_chatml, preference_data, batch_size=3)
    session = open_session(config, splits=("valid",))
    counts = forwards(session)
    split = session.splits["valid"]
    per_forward = 2 if session.prefix_sharing else 1  # a shared prompt runs, then its answers
    batches = 3  # 8 pairs in batches of 3
    own = evaluate_split(session, split, config, per_pair=True, reference_is_policy=True)
    assert counts == {"backbone": batches * per_forward, "reference": 0}
    live = evaluate_split(session, split, config, per_pair=True)
    assert counts == {"backbone": 3 * batches * per_forward, "reference": batches}
    for mine, old in zip(own.pop("per_pair"), live.pop("per_pair"), strict=True):
        for name, value in mine.items():
            assert value == pytest.approx(old[name], rel=1e-5, abs=1e-5), name
        assert mine["reward_chosen"] == mine["reward_rejected"] == 0
    assert own.keys() == live.keys()
    for name, value in own.items():
        assert value == pytest.approx(live[name], rel=1e-5, abs=1e-6), name


def test_a_cached_reference_means_no_reference_pass(trained_session, forwards):
    session, config = trained_session
    counts = forwards(session)
    split = session.splits["valid"]
    live = evaluate_split(session, split, config, per_pair=True)
    counts.update(backbone=0, reference=0)
    reference = {
        "chosen": np.array([r["reference_chosen_logp"] for r in live["per_pair"]], np.float32),
        "rejected": np.array([r["reference_rejected_logp"] for r in live["per_pair"]], np.float32),
    }
    cached = evaluate_split(session, split, config, reference, per_pair=True)
    assert counts["reference"] == 0 and counts["backbone"] > 0
    assert cached == live


def test_the_log_prob_preference_is_the_policys_own(trained_session):
    """logps/preference_accuracy: the share of pairs whose chosen answer the policy gives the
    higher summed log-prob, and per token; against log-probs of one plain batch."""
    session, config = trained_session
    split = session.splits["valid"]
    result = evaluate_split(session, split, config)
    n = len(split)
    policy = np.array(rows_logps(session, *batch_arrays(collate(split.pairs))), np.float64)
    chosen, rejected = policy[:n], policy[n:]
    chosen_tokens = np.array([len(p.chosen_ids) for p in split.pairs])
    rejected_tokens = np.array([len(p.rejected_ids) for p in split.pairs])
    assert result["logps/preference_accuracy"] == pytest.approx(np.mean(chosen > rejected))
    per_token = chosen / chosen_tokens > rejected / rejected_tokens
    assert result["logps/preference_accuracy_per_token"] == pytest.approx(np.mean(per_token))
    # These chosen answers are the longer ones: summed, the model prefers none of them.
    assert np.mean(chosen > rejected) == 0 and chosen_tokens.sum() > rejected_tokens.sum()


def test_the_log_prob_preference_against_numpy_with_ties_and_lengths():
    """preference_metrics on log-probs made up here: a tie is no preference, and per token
    a longer answer's sum is divided by its length."""
    from mlx_dpo.losses import PairLogps
    from mlx_dpo.trainer.evaluation import preference_metrics

    rng = np.random.default_rng(0)
    chosen = rng.normal(-30, 8, 64).astype(np.float32)
    rejected = rng.normal(-30, 8, 64).astype(np.float32)
    rejected[:5] = chosen[:5]  # ties
    chosen_tokens = rng.integers(1, 40, 64).astype(np.float32)
    rejected_tokens = rng.integers(1, 40, 64).astype(np.float32)
    logps = PairLogps(
        *(mx.array(a) for a in (chosen, rejected)), None, None,
        *(mx.array(a) for a in (chosen_tokens, rejected_tokens)),
    )  # fmt: skip
    found = preference_metrics(logps)
    summed = np.mean(chosen.astype(np.float64) > rejected)
    per_token = np.mean(chosen / chosen_tokens > rejected / rejected_tokens)
    assert found["logps/preference_accuracy"] == pytest.approx(summed)
    assert found["logps/preference_accuracy_per_token"] == pytest.approx(per_token)
    assert 0.3 < summed < 0.7 and summed != per_token


def test_kto_without_an_adapter_runs_once_a_batch_and_has_no_pair_preference(
    llama_chatml, thumbs_data, forwards
):
    config = config_for(llama_chatml, thumbs_data, loss="kto", batch_size=5)
    session = open_session(config, splits=("valid",))
    counts = forwards(session)
    split = session.splits["valid"]
    per_forward = 2 if session.prefix_sharing else 1
    own = evaluate_split(session, split, config, reference_is_policy=True)
    assert counts == {"backbone": 3 * per_forward, "reference": 0}  # 12 completions by 5
    live = evaluate_split(session, split, config)
    for name, value in own.items():
        assert value == pytest.approx(live[name], rel=1e-5, abs=1e-5), name
    assert own["rewards/chosen"] == 0 and "logps/preference_accuracy" not in own
