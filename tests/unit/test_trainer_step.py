"""The training step (mlx_dpo/trainer/step.py): the batch objective against finite
differences and against the DPO formula in NumPy, the compiled step's accumulation and
gradient norm, the micro-batch order, and an optimizer step's failure on a non-finite loss."""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from mlx_dpo.batching import collate, epoch_steps, steps_per_epoch
from mlx_dpo.distributed import Ranks
from mlx_dpo.events import METRIC_NAMES
from mlx_dpo.loss_catalog import metric_names
from mlx_dpo.losses import LossSettings, settings_from_config
from mlx_dpo.session import open_session
from mlx_dpo.trainer.batch_logps import (
    batch_arrays,
    compute_reference,
    reference_rows_logps,
    response_token_counts,
    rows_logps,
    second_half,
)
from mlx_dpo.trainer.schedule import build_optimizer
from mlx_dpo.trainer.step import (
    MetricTotals,
    StepBatches,
    TrainingStep,
    compiled_step,
    make_loss_fn,
    step_extras,
)
from tests.training import config_for


@pytest.mark.parametrize("reference", ["cached", "live"])
def test_gradients_match_finite_differences(llama_chatml, preference_data, tmp_path, reference):
    config = config_for(
        llama_chatml,
        preference_data,
        tmp_path / "run",
        beta=2.0,
        reference=reference,
        lora_scale=4.0,
    )
    session = open_session(config)
    model = session.model
    # Non-zero B so both A and B have gradients; the policy then differs from the reference.
    rng = np.random.default_rng(0)
    model.update(
        tree_map(
            lambda p: p + mx.array(rng.normal(0, 0.05, p.shape).astype(np.float32)),
            model.trainable_parameters(),
        )
    )
    batch = collate(session.splits["train"].pairs[:4])
    arrays = batch_arrays(batch)
    chosen_tokens, rejected_tokens = response_token_counts(batch)
    ref = np.array(reference_rows_logps(session, *arrays))
    extras = {
        "chosen_tokens": chosen_tokens,
        "rejected_tokens": rejected_tokens,
        "reference_chosen": mx.array(ref[:4]),
        "reference_rejected": mx.array(ref[4:]),
    }
    loss_fn = make_loss_fn(session, config)
    inputs = (arrays, extras, {})
    (loss, _), grads = nn.value_and_grad(model, loss_fn)(*inputs)
    assert loss.item() != pytest.approx(math.log(2), abs=1e-3)
    assert_central_differences(model, grads, lambda: loss_fn(*inputs)[0].item())


def test_loss_settings_come_from_the_config():
    settings = settings_from_config(config_for("m", "d", beta=0.3, label_smoothing=0.1))
    assert settings == LossSettings(beta=0.3, label_smoothing=0.1, simpo_gamma=0.5)
    simpo = settings_from_config(config_for("m", "d", loss="simpo", simpo_gamma=1.5))
    assert simpo.simpo_gamma == 1.5


def perturbed_session(llama_chatml, preference_data, **overrides):
    config = config_for(llama_chatml, preference_data, **overrides)
    session = open_session(config, splits=("train",))
    rng = np.random.default_rng(1)
    session.model.update(
        tree_map(
            lambda p: p + mx.array(rng.normal(0, 0.05, p.shape).astype(np.float32)),
            session.model.trainable_parameters(),
        )
    )
    return session, config


def test_loss_and_metrics_are_the_dpo_formula_of_the_log_probs(llama_chatml, preference_data):
    session, config = perturbed_session(llama_chatml, preference_data, beta=0.7)
    batch = session.collate(session.splits["train"].pairs[:4])
    arrays = batch_arrays(batch)
    chosen_tokens, rejected_tokens = response_token_counts(batch)
    ref = np.array([-40.0, -41.0, -39.5, -42.0, -44.0, -43.0, -45.5, -41.0], dtype=np.float32)
    extras = {
        "chosen_tokens": chosen_tokens,
        "rejected_tokens": rejected_tokens,
        "reference_chosen": mx.array(ref[:4]),
        "reference_rejected": mx.array(ref[4:]),
    }
    loss, (metrics, _) = make_loss_fn(session, config)(arrays, extras, {})
    rows = np.array(rows_logps(session, *arrays), dtype=np.float64)
    ratio_chosen, ratio_rejected = rows[:4] - ref[:4], rows[4:] - ref[4:]
    z = 0.7 * (ratio_chosen - ratio_rejected)
    rewards_chosen, rewards_rejected = 0.7 * ratio_chosen, 0.7 * ratio_rejected
    expected = {
        "rewards/chosen": rewards_chosen.mean(),
        "rewards/rejected": rewards_rejected.mean(),
        "rewards/margins": (rewards_chosen - rewards_rejected).mean(),
        "rewards/accuracies": (rewards_chosen > rewards_rejected).mean(),
        "logps/chosen": rows[:4].mean(),
        "logps/rejected": rows[4:].mean(),
        "kl": np.concatenate([ratio_chosen, ratio_rejected]).mean(),
    }
    assert loss.item() == pytest.approx(np.log1p(np.exp(-z)).mean(), rel=1e-5)
    got = dict(zip(METRIC_NAMES[1:], np.array(metrics).tolist(), strict=True))
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-4, abs=1e-5), name


def test_compiled_step_accumulates_averages_and_reports_the_norm(llama_chatml, preference_data):
    session, config = perturbed_session(llama_chatml, preference_data, max_grad_norm=0.0)
    batch = session.collate(session.splits["train"].pairs[:4])
    ref = reference_rows_logps(session, *batch_arrays(batch))
    chosen_tokens, rejected_tokens = response_token_counts(batch)
    extras = {
        "chosen_tokens": chosen_tokens,
        "rejected_tokens": rejected_tokens,
        "reference_chosen": ref[:4],
        "reference_rejected": ref[4:],
    }
    inputs = (batch_arrays(batch), extras, {})
    (_, _), plain = nn.value_and_grad(session.model, make_loss_fn(session, config))(*inputs)
    plain = {k: np.array(v) for k, v in tree_flatten(plain)}
    optimizer = build_optimizer(config, 0.0)  # learning rate 0: the weights stay
    optimizer.init(session.model.trainable_parameters())
    accumulate, apply = compiled_step(session, config, optimizer)
    _, _, once, _ = accumulate(None, *inputs)
    _, _, twice, _ = accumulate(once, *inputs)
    mx.eval(once, twice)
    # The gradient of the loss summed over the pairs: 4 pairs, twice.
    for name, value in tree_flatten(twice):
        np.testing.assert_allclose(np.array(value), 8 * plain[name], rtol=1e-4, atol=1e-6)
    # The mean over the 8 pairs: the norm of one batch's gradient (no clipping).
    norm = apply(twice, mx.array(8.0)).item()
    expected = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in plain.values()))
    assert norm == pytest.approx(expected, rel=1e-4)


def test_a_steps_micro_batches_follow_the_epoch_order(llama_chatml, preference_data):
    config = config_for(llama_chatml, preference_data, batch_size=5, grad_accumulation=2, seed=3)
    session = open_session(config, splits=("train",))
    split = session.splits["train"]
    per_epoch = steps_per_epoch(len(split), 5, 2)
    assert per_epoch == 3  # 24 pairs in steps of 10: 10, 10 and 4 (one micro-batch)
    batches = StepBatches(session, split, config, Ranks(None, 0, 1), per_epoch)
    for step in (0, 1, per_epoch - 1, per_epoch, per_epoch + 2, 1):
        epoch, position = divmod(step, per_epoch)
        order = epoch_steps(split.pairs, 5, 2, 3, epoch, True)[position]
        got = [batch.pair_indices.tolist() for batch in batches(step)]
        assert got == [[split.pairs[i].index for i in micro] for micro in order]


def test_a_non_finite_loss_is_a_failure_naming_the_pairs(llama_chatml, preference_data):
    config = config_for(llama_chatml, preference_data, grad_accumulation=2)
    session = open_session(config, splits=("train",))
    split = session.splits["train"]
    batches = StepBatches(session, split, config, Ranks(None, 0, 1), 3)
    optimizer = build_optimizer(config, config.learning_rate)
    optimizer.init(session.model.trainable_parameters())
    reference = {
        "chosen": np.zeros(len(split), np.float32) - 40,
        "rejected": np.zeros(len(split), np.float32) - 40,
    }
    step = TrainingStep(session, config, optimizer, batches, reference)
    good = step.accumulate(0)
    assert good.failure is None and good.pairs == 8
    assert good.tokens == sum(batch.num_tokens for batch in batches(0))
    assert len(good.pair_indices) == 8
    metrics, pairs, tokens = good.totals(Ranks(None, 0, 1))
    assert (pairs, tokens) == (good.pairs, good.tokens) and list(metrics) == list(METRIC_NAMES)
    assert math.isfinite(step.apply(good.grads, pairs))
    reference["chosen"][:] = math.nan
    bad = step.accumulate(1)
    first = batches(1)[0]
    assert bad.failure.startswith("non-finite loss at step 2 (pairs ")
    assert split.pairs[int(first.pair_indices[0])].source in bad.failure
    assert bad.pairs == 0  # the first micro-batch already failed


# ---------------------------------------------------------------------------------------------
# The whole step of the losses beyond DPO against finite differences of the numpy formula
# (tests/unit/test_losses.py's independent implementation), through the model's LoRA weights.


def check_step_gradient(session, loss_fn, inputs, numpy_loss_now, min_checked=12):
    """The step's gradient of each of the largest entries of two LoRA weights against central
    differences of `numpy_loss_now()` (the numpy formula on the model's log-probs now)."""
    model = session.model
    (loss, _), grads = nn.value_and_grad(model, loss_fn)(*inputs)
    assert loss.item() == pytest.approx(numpy_loss_now(), rel=1e-4)
    assert_central_differences(model, grads, numpy_loss_now, min_checked)


def assert_central_differences(model, grads, loss_now, min_checked=12):
    """Each of the 3 largest gradient entries of two LoRA weights (q_proj of layer 0,
    down_proj of layer 1) equals the central difference of `loss_now()` around it."""
    grads = dict(tree_flatten(grads))
    params = dict(tree_flatten(model.trainable_parameters()))
    checked = 0
    for name in [
        n for n in params if "layers.0.self_attn.q_proj" in n or "layers.1.mlp.down_proj" in n
    ]:
        flat = np.array(params[name]).reshape(-1)
        g = np.array(grads[name]).reshape(-1)
        for index in np.argsort(-np.abs(g))[:3]:
            eps = 1e-2
            values = []
            for sign in (1, -1):
                perturbed = flat.copy()
                perturbed[index] += sign * eps
                model.update(
                    tree_unflatten([(name, mx.array(perturbed.reshape(params[name].shape)))])
                )
                values.append(loss_now())
            model.update(tree_unflatten([(name, params[name])]))
            numeric = (values[0] - values[1]) / (2 * eps)
            assert numeric == pytest.approx(g[index], rel=0.05, abs=1e-4), (name, index)
            checked += 1
    assert checked >= min_checked


def test_orpo_step_gradient_is_the_numpy_formulas(llama_chatml, preference_data):
    from tests.unit.test_losses import Knobs, numpy_loss

    session, config = perturbed_session(
        llama_chatml, preference_data, loss="orpo", beta=0.5, lora_scale=4.0
    )
    split = session.splits["train"]
    batch = session.collate(split.pairs[:4])
    arrays = batch_arrays(batch)
    extras = step_extras(batch, split, None)
    counts = [np.array(c, dtype=np.float64) for c in response_token_counts(batch)]
    zeros = np.zeros(4)

    def numpy_loss_now() -> float:
        rows = np.array(rows_logps(session, *arrays), dtype=np.float64)
        return numpy_loss(["orpo"], [1.0], rows[:4], rows[4:], zeros, zeros, *counts, Knobs(0.5))

    check_step_gradient(
        session, make_loss_fn(session, config), (arrays, extras, {}), numpy_loss_now
    )


def test_kto_step_gradient_is_the_numpy_formulas(llama_chatml, thumbs_data):
    """KTO through the whole step: completions and their KL rows in one batch, the KL rows'
    reference computed in the step, the completions' from the cache; z held at its value
    (it is detached), desirable and undesirable weighted differently."""
    from tests.unit.test_losses import kto_numpy

    session, config = perturbed_session(
        llama_chatml, thumbs_data, loss="kto", beta=0.5, lora_scale=4.0,
        desirable_weight=1.3, undesirable_weight=0.7,
    )  # fmt: skip
    split = session.splits["train"]
    positions = list(range(6))
    desirable = split.desirable[positions]
    assert desirable.any() and not desirable.all()
    batch = session.collate_split(split, positions)
    arrays = batch_arrays(batch)
    cached = compute_reference(session, split, ("completion",))(list(range(len(split))))[0]
    reference = cached - 0.3  # a reference the policy has moved away from
    extras = step_extras(batch, split, {"completion": reference})
    kl_reference = np.array(reference_rows_logps(session, *second_half(arrays)), np.float64)
    rows = np.array(rows_logps(session, *arrays), dtype=np.float64)
    _, z = kto_numpy(rows[:6], reference[:6], desirable, rows[6:], kl_reference, 0.5, 1.3, 0.7)
    assert z > 0  # the reference point is not clamped: it takes part

    def numpy_loss_now() -> float:
        policy = np.array(rows_logps(session, *arrays), dtype=np.float64)[:6]
        return kto_numpy(policy, reference[:6], desirable, None, None, 0.5, 1.3, 0.7, z=z)[0]

    check_step_gradient(
        session, make_loss_fn(session, config), (arrays, extras, {}), numpy_loss_now
    )


def test_a_steps_kto_metrics_are_means_over_what_they_are_means_of():
    """Over micro-batches: kto's chosen figures are means over the desirable completions (a
    micro-batch without any does not count, its NaN neither), the margin their difference,
    counts are summed; pair losses weigh by pairs; bco's shift is the last one's."""
    names = metric_names("kto")
    totals = MetricTotals(names)
    nan = math.nan
    # loss, r/chosen, r/rejected, r/margins, r/accuracies, l/chosen, l/rejected, kl, counts
    totals.add(np.array([0.4, 1.0, nan, nan, 0.5, -10.0, nan, 0.2, 4.0, 0.0]), 4)
    totals.add(np.array([0.2, 4.0, -2.0, 6.0, 1.0, -20.0, -30.0, 0.4, 1.0, 3.0]), 4)
    values = totals.means(Ranks(None, 0, 1))
    assert values["rewards/chosen"] == pytest.approx((4 * 1.0 + 1 * 4.0) / 5)
    assert values["rewards/rejected"] == pytest.approx(-2.0)
    assert values["rewards/margins"] == pytest.approx(values["rewards/chosen"] + 2.0)
    assert values["logps/chosen"] == pytest.approx((4 * -10.0 - 20.0) / 5)
    assert values["loss"] == pytest.approx(0.3) and values["kl"] == pytest.approx(0.3)
    assert (values["count/desirable"], values["count/undesirable"]) == (5.0, 3.0)
    empty = MetricTotals(names)
    empty.add(np.array([0.4, 1.0, nan, nan, 0.5, -10.0, nan, 0.2, 4.0, 0.0]), 4)
    assert math.isnan(empty.means(Ranks(None, 0, 1))["rewards/rejected"])

    bco = MetricTotals(metric_names(["sigmoid", "bco_pair"]))
    bco.add(np.array([0.7, 0.1, 0.0, 0.1, 1.0, -5.0, -6.0, 0.05, 0.02]), 3)
    bco.add(np.array([0.5, 0.3, 0.1, 0.2, 0.0, -7.0, -8.0, 0.15, 0.04]), 1)
    values = bco.means(Ranks(None, 0, 1))
    assert values["loss"] == pytest.approx((3 * 0.7 + 0.5) / 4)
    assert values["bco_reward_shift"] == pytest.approx(0.04)


def test_a_steps_gradient_and_metrics_are_per_pair_means_whatever_the_split(
    llama_chatml, preference_data
):
    """15 pairs a step as 5 × 3, 3 × 5 or 15 × 1: each step's gradient is the mean over its
    pairs, equal for every split, and so are its metrics; also for the last, smaller step
    (24 = 15 + 9: 9 pairs as 5 + 4, 3 + 3 + 3 or 9), whose micro-batches weigh what their
    pairs weigh. Checked against the plain gradient of the mean loss of the step's pairs in
    one batch."""
    config = config_for(llama_chatml, preference_data, batch_size=15)
    session = open_session(config, splits=("train",))
    split = session.splits["train"]
    reference = {"chosen": np.linspace(-60, -20, len(split)).astype(np.float32)}
    reference["rejected"] = reference["chosen"][::-1].copy()
    loss_fn = nn.value_and_grad(session.model, make_loss_fn(session, config))
    results = {}
    for batch_size, accumulation in ((15, 1), (5, 3), (3, 5)):
        split_config = config_for(
            llama_chatml, preference_data, batch_size=batch_size, grad_accumulation=accumulation
        )
        batches = StepBatches(session, split, split_config, Ranks(None, 0, 1), 2)
        optimizer = build_optimizer(split_config, 0.0)  # learning rate 0: the weights stay
        optimizer.init(session.model.trainable_parameters())
        step = TrainingStep(session, split_config, optimizer, batches, reference)
        for s in (0, 1):
            done = step.accumulate(s)
            metrics, pairs, _ = done.totals(Ranks(None, 0, 1))
            sizes = [len(micro) for micro in batches.positions(s)]
            grads = {k: np.array(v) / pairs for k, v in tree_flatten(done.grads)}
            results[(batch_size, s)] = (sorted(done.pair_indices), grads, metrics, sizes,
                                        step.apply(done.grads, pairs))  # fmt: skip
    assert [results[(b, 1)][3] for b in (15, 5, 3)] == [[9], [5, 4], [3, 3, 3]]
    for s in (0, 1):
        indices, grads, metrics, _, norm = results[(15, s)]
        positions = [i for i, p in enumerate(split.pairs) if p.index in indices]
        whole = session.collate_split(split, positions)
        _, plain = loss_fn(batch_arrays(whole), step_extras(whole, split, reference), {})
        for name, value in tree_flatten(plain):
            np.testing.assert_allclose(grads[name], np.array(value), rtol=1e-4, atol=1e-7)
        for batch_size in (5, 3):
            other = results[(batch_size, s)]
            assert other[0] == indices
            for name in grads:
                np.testing.assert_allclose(other[1][name], grads[name], rtol=1e-4, atol=1e-7)
            for name, value in metrics.items():
                assert other[2][name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
            assert other[4] == pytest.approx(norm, rel=1e-4)
