"""Every loss's value and gradient against an independent plain-numpy implementation written
from TRL's trainers and the papers (float64; gradients by central finite differences of the
numpy loss), never against our own code; and the numbers docs/architecture.md fixes."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import mlx.core as mx
import numpy as np
import pytest

from mlx_dpo import loss_catalog
from mlx_dpo.config import TrainConfig
from mlx_dpo.losses import (
    LOSSES,
    LossSettings,
    PairLogps,
    UnpairedLogps,
    advance_loss_state,
    initial_loss_state,
    kto_objective,
    orpo_log_odds,
    pair_metrics,
    pair_objective,
    pair_rewards,
    preference_loss,
    response_sums,
    settings_from_config,
    wpo_token_terms,
)

# ---------------------------------------------------------------------------------------------
# The independent implementation (numpy, float64)


def log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class Knobs:
    beta: float = 0.1
    eps: float = 0.0
    gamma: float = 0.5
    tau: float = 0.05
    cpo_alpha: float = 1.0
    shift: float = 0.0  # BCO's reward shift δ, held fixed (it carries no gradient)


def numpy_terms(name, pc, pr, rc, rr, nc, nr, k: Knobs):
    """Per-pair (aot: per-quantile) loss terms from TRL's formulas."""
    b, eps = k.beta, k.eps
    ratio_c, ratio_r = pc - rc, pr - rr
    z = b * (ratio_c - ratio_r)
    nll = -pc.sum() / nc.sum() * np.ones_like(pc)  # cross entropy over all chosen tokens
    smoothed = lambda x: -(1 - eps) * log_sigmoid(x) - eps * log_sigmoid(-x)  # noqa: E731
    if name == "sigmoid":
        return smoothed(z)
    if name == "robust":
        return (-(1 - eps) * log_sigmoid(z) + eps * log_sigmoid(-z)) / (1 - 2 * eps)
    if name == "hinge":
        return np.maximum(0.0, 1 - z)
    if name == "ipo":
        return (ratio_c / nc - ratio_r / nr - 1 / (2 * b)) ** 2
    if name == "sigmoid_norm":
        return -log_sigmoid(b * (ratio_c / nc - ratio_r / nr))
    if name == "exo_pair":
        return sigmoid(z) * (log_sigmoid(z) - np.log(1 - eps)) + sigmoid(-z) * (
            log_sigmoid(-z) - np.log(eps)
        )
    if name == "nca_pair":
        rc_, rr_ = b * ratio_c, b * ratio_r
        return -log_sigmoid(rc_) - 0.5 * log_sigmoid(-rc_) - 0.5 * log_sigmoid(-rr_)
    if name == "bco_pair":
        return -log_sigmoid(b * ratio_c - k.shift) - log_sigmoid(-(b * ratio_r - k.shift))
    if name == "sppo_hard":
        return (ratio_c - 0.5 / b) ** 2 + (ratio_r + 0.5 / b) ** 2
    if name == "aot":
        return smoothed(b * (np.sort(pc - pr) - np.sort(rc - rr)))
    if name in ("aot_unpaired", "aot_pair"):
        return smoothed(b * (np.sort(ratio_c) - np.sort(ratio_r)))
    if name == "apo_zero":
        return (1 - sigmoid(b * ratio_c)) + sigmoid(b * ratio_r)
    if name == "apo_down":
        return sigmoid(b * ratio_c) + (1 - sigmoid(z))
    if name == "discopop":
        mix = sigmoid(z / k.tau)
        return (1 - mix) * -log_sigmoid(z) + mix * np.exp(-z)
    if name == "simpo":
        return -log_sigmoid(b * (pc / nc - pr / nr) - k.gamma)
    if name == "orpo":
        mc, mr = pc / nc, pr / nr
        log_odds = (mc - mr) - (np.log(1 - np.exp(mc)) - np.log(1 - np.exp(mr)))
        return nll - b * log_sigmoid(log_odds)
    if name == "cpo":
        return smoothed(b * (pc - pr)) + k.cpo_alpha * nll
    if name == "sft":
        return nll
    raise KeyError(name)


def numpy_loss(names, weights, pc, pr, rc, rr, nc, nr, k: Knobs) -> float:
    return float(
        sum(
            w * numpy_terms(n, pc, pr, rc, rr, nc, nr, k).mean()
            for n, w in zip(names, weights, strict=True)
        )
    )


def finite_difference(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    grad = np.zeros_like(x)
    for i in range(x.size):
        up, down = x.copy(), x.copy()
        up.flat[i] += h
        down.flat[i] -= h
        grad.flat[i] = (f(up) - f(down)) / (2 * h)
    return grad


# ---------------------------------------------------------------------------------------------
# Hand-picked log-probs: no ties in sorted margins or ratios, no hinge kink.

PC = np.array([-3.5, -7.2, -11.7])
PR = np.array([-6.0, -5.1, -11.0])
RC = np.array([-4.0, -7.0, -12.5])
RR = np.array([-5.0, -5.5, -10.3])
NC = np.array([4.0, 6.0, 9.0])
NR = np.array([5.0, 3.0, 9.0])

PAIRED = [n for n in loss_catalog.LOSSES if n not in loss_catalog.UNPAIRED]


def a(values) -> mx.array:
    if isinstance(values, mx.array):
        return values  # a traced input: keep it in the graph
    return mx.array(np.asarray(values, dtype=np.float32))


def pair(pc=PC, pr=PR, rc=RC, rr=RR, nc=NC, nr=NR, reference=True, **extra) -> PairLogps:
    return PairLogps(
        a(pc),
        a(pr),
        a(rc) if reference else None,
        a(rr) if reference else None,
        a(nc),
        a(nr),
        **extra,
    )


def settings_for(names, k: Knobs, **more) -> LossSettings:
    return LossSettings(
        beta=k.beta,
        label_smoothing=k.eps,
        simpo_gamma=k.gamma,
        discopop_tau=k.tau,
        cpo_alpha=k.cpo_alpha,
        losses=tuple(names),
        **more,
    )


def state_with_shift(names, shift: float) -> dict:
    """A BCO state whose running mean is `shift` (count large, so one more batch barely moves
    it); checked without advancing so the shift is exactly `shift`."""
    if "bco_pair" not in names:
        return {}
    return {"bco_reward_mean": mx.array(shift), "bco_reward_count": mx.array(10.0)}


def knobs_for(name: str, beta: float, eps: float) -> Knobs:
    uses_eps = "label_smoothing" in loss_catalog.CATALOG[name].options
    eps = eps if uses_eps else 0.0
    if name == "exo_pair" and eps == 0:
        eps = 1e-3  # EXO needs ε > 0
    return Knobs(beta=beta, eps=eps, gamma=0.7, tau=0.05, cpo_alpha=0.6, shift=0.13)


@pytest.mark.parametrize("beta,eps", [(0.1, 0.0), (0.5, 0.2), (2.0, 0.001)])
@pytest.mark.parametrize("name", [n for n in PAIRED if n != "sft"])  # sft: in the list test
def test_value_and_gradient_match_numpy(name, beta, eps):
    k = knobs_for(name, beta, eps)
    settings = settings_for([name], k)
    state = state_with_shift([name], k.shift)
    reference = loss_catalog.CATALOG[name].needs_reference

    def ours(pc, pr):
        logps = PairLogps(
            pc, pr, a(RC) if reference else None, a(RR) if reference else None, a(NC), a(NR)
        )
        return pair_objective(logps, settings, state, advance=False).loss

    value = ours(a(PC), a(PR)).item()
    expected = numpy_loss([name], [1.0], PC, PR, RC, RR, NC, NR, k)
    assert value == pytest.approx(expected, rel=2e-5, abs=1e-6)

    grad_c, grad_r = mx.grad(ours, argnums=(0, 1))(a(PC), a(PR))
    numeric_c = finite_difference(lambda x: numpy_loss([name], [1.0], x, PR, RC, RR, NC, NR, k), PC)
    numeric_r = finite_difference(lambda x: numpy_loss([name], [1.0], PC, x, RC, RR, NC, NR, k), PR)
    np.testing.assert_allclose(np.array(grad_c), numeric_c, rtol=1e-3, atol=2e-5)
    np.testing.assert_allclose(np.array(grad_r), numeric_r, rtol=1e-3, atol=2e-5)


def test_settings_from_config_carry_every_option():
    config = TrainConfig(
        loss=["sigmoid", "bco_pair", "sft"],
        loss_weights=[0.8, 0.2, 1.0],
        beta=0.3,
        label_smoothing=0.1,
        sft_weight=0.5,
        discopop_tau=0.2,
        cpo_alpha=0.7,
        ld_alpha=0.4,
        use_weighting=True,
        desirable_weight=1.3,
        undesirable_weight=0.9,
    )
    assert settings_from_config(config) == LossSettings(
        beta=0.3,
        label_smoothing=0.1,
        simpo_gamma=0.5,
        losses=("sigmoid", "bco_pair", "sft"),
        loss_weights=(0.8, 0.2, 1.0),
        sft_weight=0.5,
        discopop_tau=0.2,
        cpo_alpha=0.7,
        ld_alpha=0.4,
        use_weighting=True,
        desirable_weight=1.3,
        undesirable_weight=0.9,
    )
    assert settings_from_config(TrainConfig(loss="simpo", simpo_gamma=1.5)).simpo_gamma == 1.5


def test_registry_is_the_catalog():
    assert set(LOSSES) == {n for n in loss_catalog.LOSSES if n not in loss_catalog.UNPAIRED}


# ---------------------------------------------------------------------------------------------
# The numbers docs/architecture.md fixes, and the start of a run


def test_sigmoid_reference_number():
    logps = pair([-3.5], [-6.0], [-4.0], [-5.0], [1.0], [1.0])
    loss, _ = preference_loss("sigmoid", logps, LossSettings(beta=0.5))
    metrics = pair_metrics(logps, 0.5)
    assert loss.item() == pytest.approx(0.3868, abs=1e-4)
    assert loss.item() == pytest.approx(-log_sigmoid(0.75), rel=1e-6)
    assert metrics["rewards/margins"].item() == pytest.approx(0.75, abs=1e-6)
    assert metrics["rewards/chosen"].item() == pytest.approx(0.25)
    assert metrics["rewards/rejected"].item() == pytest.approx(-0.5)


@pytest.mark.parametrize("name", ["sigmoid", "robust", "sigmoid_norm", "aot", "aot_unpaired"])
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_sigmoid_family_is_ln2_at_start(name, eps):
    logps = pair(PC, PR, PC, PR)  # the policy is its reference
    settings = LossSettings(beta=0.3, label_smoothing=eps, losses=(name,))
    assert pair_objective(logps, settings).loss.item() == pytest.approx(math.log(2), abs=1e-6)
    metrics = pair_metrics(logps, 0.3)
    assert metrics["rewards/chosen"].item() == 0
    assert metrics["rewards/rejected"].item() == 0
    assert metrics["rewards/accuracies"].item() == 0


@pytest.mark.parametrize("name", [n for n in PAIRED if loss_catalog.CATALOG[n].needs_reference])
def test_first_step_loss_is_the_catalogs(name):
    """The value the health check expects at step 0 (loss_catalog, derived by hand) is what
    the loss gives, and what numpy gives, when every log-ratio is 0."""
    k = knobs_for(name, 0.4, 0.2)
    k.shift = 0.0  # a fresh run: the reward shift is the mean of zero rewards
    settings = settings_for([name], k)
    ours = pair_objective(pair(PC, PR, PC, PR), settings, initial_loss_state(settings)).loss.item()
    expected = loss_catalog.expected_initial_loss(name, k.beta, k.eps)
    assert expected is not None
    assert ours == pytest.approx(expected, rel=1e-5)
    assert numpy_loss([name], [1.0], PC, PR, PC, PR, NC, NR, k) == pytest.approx(expected, rel=1e-9)


# ---------------------------------------------------------------------------------------------
# Reference-free losses


@pytest.mark.parametrize("name", ["simpo", "orpo", "cpo"])
def test_reference_free_losses_never_read_the_reference(name):
    settings = settings_for([name], Knobs(beta=0.5, gamma=0.7))
    without = pair_objective(pair(reference=False), settings)
    other = pair_objective(pair(rc=RC - 3.0, rr=RR + 2.0), settings)
    assert without.loss.item() == pytest.approx(other.loss.item(), rel=1e-7)
    assert math.isnan(without.metrics["kl"].item())  # no reference, no KL: written as null


def test_reference_free_rewards_are_what_trl_logs():
    logps = pair(reference=False)
    simpo = pair_objective(logps, settings_for(["simpo"], Knobs(beta=2.0))).metrics
    cpo = pair_objective(logps, settings_for(["cpo"], Knobs(beta=2.0))).metrics
    assert simpo["rewards/chosen"].item() == pytest.approx(2.0 * np.mean(PC / NC), rel=1e-6)
    assert cpo["rewards/chosen"].item() == pytest.approx(2.0 * np.mean(PC), rel=1e-6)
    accuracy = np.mean(PC / NC > PR / NR)
    assert simpo["rewards/accuracies"].item() == pytest.approx(accuracy)


def test_a_loss_with_a_reference_refuses_a_batch_without_one():
    with pytest.raises(ValueError, match="reference"):
        pair_objective(pair(reference=False), LossSettings(losses=("sigmoid",)))


def test_orpo_odds_ratio_at_known_values():
    # Mean chosen probability 1/2 (odds 1), mean rejected 1/5 (odds 1/4): log odds ratio ln 4.
    nc, nr = np.array([3.0]), np.array([7.0])
    pc, pr = nc * math.log(0.5), nr * math.log(0.2)
    logps = pair(pc, pr, nc=nc, nr=nr, reference=False)
    assert orpo_log_odds(logps).item() == pytest.approx(math.log(4.0), rel=1e-5)
    result = pair_objective(logps, LossSettings(beta=0.25, losses=("orpo",)))
    nll = math.log(2.0)  # −ln(1/2) per chosen token
    assert result.loss.item() == pytest.approx(nll - 0.25 * math.log(0.8), rel=1e-5)
    assert result.metrics["nll_loss"].item() == pytest.approx(nll, rel=1e-6)
    assert result.metrics["log_odds_ratio"].item() == pytest.approx(math.log(0.8), rel=1e-5)
    assert result.metrics["log_odds_chosen"].item() == pytest.approx(math.log(4.0), rel=1e-5)


def test_orpo_stays_finite_near_certainty():
    """A mean log-prob of ~0 (the model is sure of the whole answer) would make the odds
    infinite; the loss and its gradient stay finite."""
    settings = LossSettings(beta=0.1, losses=("orpo",))

    def ours(pc):
        return pair_objective(pair(pc, [-5.0], nc=[4.0], nr=[4.0], reference=False), settings).loss

    for value in (0.0, -1e-9, -1e-4, -40.0):
        loss, grad = mx.value_and_grad(ours)(a([value]))
        assert math.isfinite(loss.item()) and math.isfinite(grad.item()), value


# ---------------------------------------------------------------------------------------------
# The weighted list (MPO), the SFT term, WPO, LD-DPO


def test_weighted_list_is_the_weighted_sum_mpo():
    names, weights = ["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0]
    k = Knobs(beta=0.3, shift=0.13)
    settings = settings_for(names, k, loss_weights=tuple(weights))
    state = state_with_shift(names, k.shift)

    def ours(pc, pr):
        return pair_objective(pair(pc, pr), settings, state, advance=False).loss

    value, (grad_c, grad_r) = mx.value_and_grad(ours, argnums=(0, 1))(a(PC), a(PR))
    expected = numpy_loss(names, weights, PC, PR, RC, RR, NC, NR, k)
    assert value.item() == pytest.approx(expected, rel=2e-5)
    f = lambda pc, pr: numpy_loss(names, weights, pc, pr, RC, RR, NC, NR, k)  # noqa: E731
    np.testing.assert_allclose(
        np.array(grad_c), finite_difference(lambda x: f(x, PR), PC), rtol=1e-3
    )
    np.testing.assert_allclose(
        np.array(grad_r), finite_difference(lambda x: f(PC, x), PR), rtol=1e-3, atol=1e-6
    )


def test_sft_weight_adds_the_chosen_mean_token_nll_per_pair():
    logps = pair([-6.0], [-5.0], [-6.0], [-5.0], nc=[3.0])
    loss, _ = preference_loss("sigmoid", logps, LossSettings(beta=0.1), sft_weight=0.5)
    assert loss.item() == pytest.approx(math.log(2) + 0.5 * 2.0, rel=1e-6)


def test_wpo_weights_each_pair_by_its_policy_probability():
    chosen_wpo, rejected_wpo = np.array([-2.0, -0.3, -4.5]), np.array([-1.0, -0.6, -0.9])
    weights = np.exp(chosen_wpo / NC + rejected_wpo / NR)  # WPO eq. 2, no gradient
    k = Knobs(beta=0.5)
    settings = settings_for(["sigmoid"], k, use_weighting=True)

    def ours(pc):
        logps = pair(pc, PR, chosen_wpo=a(chosen_wpo), rejected_wpo=a(rejected_wpo))
        return pair_objective(logps, settings).loss

    def theirs(pc):
        return float((weights * numpy_terms("sigmoid", pc, PR, RC, RR, NC, NR, k)).mean())

    value, grad = mx.value_and_grad(ours)(a(PC))
    assert value.item() == pytest.approx(theirs(PC), rel=2e-5)
    np.testing.assert_allclose(np.array(grad), finite_difference(theirs, PC), rtol=1e-3)


def test_wpo_token_terms_from_logits():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 11)) * 3
    targets = rng.integers(0, 11, size=(2, 5))
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    target_probs = np.take_along_axis(probs, targets[..., None], -1)[..., 0]
    expected = np.log(target_probs) - np.log((probs**2).sum(-1))
    ours = wpo_token_terms(a(logits), mx.array(targets.astype(np.int32)))
    np.testing.assert_allclose(np.array(ours), expected, rtol=1e-4, atol=1e-5)


def test_wpo_refuses_sorting_losses():
    with pytest.raises(ValueError, match="quantile"):
        logps = pair(chosen_wpo=a(PC), rejected_wpo=a(PR))
        pair_objective(logps, LossSettings(losses=("aot",), use_weighting=True))


def ld_numpy(tokens: np.ndarray, lengths: np.ndarray, alpha: float) -> np.ndarray:
    """LD-DPO's log-probs from per-token log-probs: Σ_{t<l_p} + α·Σ_{t>=l_p}, l_p the pair's
    shorter response length (rows: chosen then rejected)."""
    n = len(lengths) // 2
    shared = np.minimum(lengths[:n], lengths[n:])
    shared = np.concatenate([shared, shared])
    out = []
    for row, length, lp in zip(tokens, lengths, shared, strict=True):
        out.append(row[:lp].sum() + alpha * row[lp:length].sum())
    return np.array(out)


def test_ld_dpo_desensitises_the_tail_past_the_shorter_response():
    rng = np.random.default_rng(1)
    lengths = np.array([3, 7, 5, 2])  # pairs (3 vs 5) and (7 vs 2)
    width = 8
    mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.float64)
    policy = -rng.uniform(0.1, 3.0, size=(4, width))
    reference = -rng.uniform(0.1, 3.0, size=(4, width))
    alpha, k = 0.35, Knobs(beta=0.4)
    settings = settings_for(["sigmoid"], k, ld_alpha=alpha)
    ref_sums, ref_tails = response_sums(a(reference), a(mask))

    def ours(tokens):
        sums, tails = response_sums(tokens, a(mask))
        logps = PairLogps(
            sums[:2], sums[2:], ref_sums[:2], ref_sums[2:], a(lengths[:2]), a(lengths[2:]),
            policy_chosen_tail=tails[:2], policy_rejected_tail=tails[2:],
            reference_chosen_tail=ref_tails[:2], reference_rejected_tail=ref_tails[2:],
        )  # fmt: skip
        return pair_objective(logps, settings).loss

    def theirs(tokens):
        p, r = ld_numpy(tokens * mask, lengths, alpha), ld_numpy(reference * mask, lengths, alpha)
        z = k.beta * ((p[:2] - r[:2]) - (p[2:] - r[2:]))
        return float(-log_sigmoid(z).mean())

    value, grad = mx.value_and_grad(ours)(a(policy))
    assert value.item() == pytest.approx(theirs(policy), rel=2e-5)
    np.testing.assert_allclose(
        np.array(grad), finite_difference(theirs, policy), rtol=1e-3, atol=1e-6
    )
    # Tokens past the shorter response get α of the gradient of a shared token; padding none.
    assert np.array(grad)[1, 3] == pytest.approx(alpha * np.array(grad)[1, 0], rel=1e-5)
    assert np.array(grad)[0, 5] == 0


def test_response_sums_at_alpha_1_are_plain_sums():
    tokens = a([[-1.0, -2.0, -3.0], [-0.5, 0.0, 0.0]])
    mask = a([[1, 1, 1], [1, 0, 0]])
    sums, tails = response_sums(tokens, mask)
    assert sums.tolist() == [-6.0, -0.5]
    assert tails.tolist() == [-5.0, 0.0]  # chosen is 3 tokens, rejected 1: 2 tail tokens


# ---------------------------------------------------------------------------------------------
# BCO's running reward shift: state across steps, checkpoints and ranks


def running_shift(batches, beta):
    """TRL's RunningMoments over scalar batch means (count starts ~0)."""
    mean, count, shifts = 0.0, 0.0, []
    for pc, pr, rc, rr in batches:
        rewards = beta * np.concatenate([pc - rc, pr - rr])
        count += 1
        mean += (rewards.mean() - mean) / count
        shifts.append(mean)
    return shifts


BATCHES = [
    (PC, PR, RC, RR),
    (PC + 0.4, PR - 0.3, RC, RR),
    (PC - 1.0, PR + 0.2, RC + 0.1, RR),
]


def test_bco_shift_is_the_running_mean_of_batch_rewards():
    k = Knobs(beta=0.5)
    settings = settings_for(["bco_pair"], k)
    state = initial_loss_state(settings)
    for (pc, pr, rc, rr), shift in zip(BATCHES, running_shift(BATCHES, k.beta), strict=True):
        result = pair_objective(pair(pc, pr, rc, rr), settings, state)
        state = result.state
        assert state["bco_reward_mean"].item() == pytest.approx(shift, rel=1e-5)
        assert result.metrics["bco_reward_shift"].item() == pytest.approx(shift, rel=1e-5)
        expected = numpy_loss(["bco_pair"], [1.0], pc, pr, rc, rr, NC, NR, replace(k, shift=shift))
        assert result.loss.item() == pytest.approx(expected, rel=2e-5)
    assert state["bco_reward_count"].item() == 3


def test_bco_shift_carries_no_gradient():
    """δ includes this batch's rewards but is detached (TRL: .detach()): the gradient is the
    numpy one with δ held at its value."""
    k = Knobs(beta=0.5)
    settings = settings_for(["bco_pair"], k)
    start = {"bco_reward_mean": mx.array(0.2), "bco_reward_count": mx.array(2.0)}
    shift = advance_loss_state(start, pair(), settings)["bco_reward_mean"].item()

    def ours(pc):
        return pair_objective(pair(pc), settings, start).loss

    grad = mx.grad(ours)(a(PC))
    f = lambda x: numpy_loss(["bco_pair"], [1.0], x, PR, RC, RR, NC, NR, replace(k, shift=shift))  # noqa: E731
    np.testing.assert_allclose(np.array(grad), finite_difference(f, PC), rtol=1e-3)


def test_bco_state_survives_a_checkpoint_and_a_compiled_step(tmp_path):
    settings = settings_for(["bco_pair"], Knobs(beta=0.5))

    def step(state, pc):
        result = pair_objective(pair(pc), settings, state)
        return result.loss, result.state

    compiled = mx.compile(step)
    state = initial_loss_state(settings)
    eager_state = initial_loss_state(settings)
    for pc, *_ in BATCHES[:2]:
        loss, state = compiled(state, a(pc))
        eager_loss, eager_state = step(eager_state, a(pc))
        assert loss.item() == pytest.approx(eager_loss.item(), rel=1e-6)
    mx.save_safetensors(str(tmp_path / "loss_state.safetensors"), state)
    resumed = mx.load(str(tmp_path / "loss_state.safetensors"))
    uninterrupted, _ = compiled(state, a(BATCHES[2][0]))
    after_resume, _ = compiled(resumed, a(BATCHES[2][0]))
    assert after_resume.item() == uninterrupted.item()


def test_bco_evaluation_leaves_the_state_alone_and_missing_state_is_refused():
    settings = settings_for(["bco_pair"], Knobs(beta=0.5))
    state = {"bco_reward_mean": mx.array(0.3), "bco_reward_count": mx.array(4.0)}
    assert pair_objective(pair(), settings, state, advance=False).state[
        "bco_reward_mean"
    ].item() == pytest.approx(0.3)
    with pytest.raises(ValueError, match="reward shift"):
        pair_objective(pair(), settings)  # a fresh state every call would be silently wrong


def test_bco_shift_is_a_mean_over_ranks():
    settings = settings_for(["bco_pair"], Knobs(beta=0.5))
    other_rank = 0.9  # the other rank's batch-mean reward
    state = advance_loss_state(
        initial_loss_state(settings), pair(), settings, rank_mean=lambda x: (x + other_rank) / 2
    )
    mine = 0.5 * np.concatenate([PC - RC, PR - RR]).mean()
    assert state["bco_reward_mean"].item() == pytest.approx((mine + other_rank) / 2, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# KTO


def kto_numpy(policy, reference, desirable, kl_policy, kl_reference, beta, w_d, w_u, z=None):
    """TRL's KTOTrainer loss: KL from the mismatched rows, clamped at 0 and detached."""
    if z is None:
        z = max(0.0, float((kl_policy - kl_reference).mean()))
    ratio = policy - reference
    chosen = w_d * (1 - sigmoid(beta * (ratio - z)))
    rejected = w_u * (1 - sigmoid(beta * (z - ratio)))
    return float(np.where(desirable, chosen, rejected).mean()), z


POLICY = np.array([-10.0, -14.0, -9.0, -20.0, -7.5])
REFERENCE = np.array([-11.0, -12.5, -9.4, -19.0, -8.0])
DESIRABLE = np.array([True, False, True, False, True])
KL_POLICY = np.array([-15.0, -16.0, -12.0, -25.0, -11.0])
KL_REFERENCE = np.array([-15.6, -16.9, -12.2, -25.4, -11.9])  # mean log-ratio 0.6: non-trivial


def unpaired(policy=POLICY, kl_policy=KL_POLICY, kl_reference=KL_REFERENCE, desirable=DESIRABLE):
    return UnpairedLogps(a(policy), a(REFERENCE), a(desirable), a(kl_policy), a(kl_reference))


@pytest.mark.parametrize("w_d,w_u,beta", [(1.0, 1.0, 0.1), (1.33, 0.7, 0.5)])
def test_kto_value_and_gradient_match_numpy(w_d, w_u, beta):
    settings = LossSettings(
        beta=beta, losses=("kto",), desirable_weight=w_d, undesirable_weight=w_u
    )

    def ours(policy, kl_policy):
        return kto_objective(unpaired(policy, kl_policy), settings).loss

    value = ours(a(POLICY), a(KL_POLICY)).item()
    expected, z = kto_numpy(POLICY, REFERENCE, DESIRABLE, KL_POLICY, KL_REFERENCE, beta, w_d, w_u)
    assert z == pytest.approx(0.6)
    assert value == pytest.approx(expected, rel=2e-5)
    grad, kl_grad = mx.grad(ours, argnums=(0, 1))(a(POLICY), a(KL_POLICY))
    # The KL estimate is detached: the gradient holds z at its value and none reaches its rows.
    f = lambda x: kto_numpy(x, REFERENCE, DESIRABLE, None, None, beta, w_d, w_u, z=z)[0]  # noqa: E731
    np.testing.assert_allclose(np.array(grad), finite_difference(f, POLICY), rtol=1e-3)
    assert np.all(np.array(kl_grad) == 0)


def test_kto_kl_is_clamped_at_zero():
    settings = LossSettings(beta=0.5, losses=("kto",))
    below = KL_POLICY - 2.0  # mean log-ratio 0.6 − 2 < 0
    result = kto_objective(unpaired(kl_policy=below), settings)
    expected, z = kto_numpy(POLICY, REFERENCE, DESIRABLE, below, KL_REFERENCE, 0.5, 1.0, 1.0)
    assert z == 0.0 and result.metrics["kl"].item() == 0.0
    assert result.loss.item() == pytest.approx(expected, rel=2e-5)


def test_kto_metrics_are_trls():
    beta = 0.5
    result = kto_objective(unpaired(), LossSettings(beta=beta, losses=("kto",)))
    m = {k: v.item() for k, v in result.metrics.items()}
    ratio = POLICY - REFERENCE
    assert m["rewards/chosen"] == pytest.approx(beta * ratio[DESIRABLE].mean(), rel=1e-5)
    assert m["rewards/rejected"] == pytest.approx(beta * ratio[~DESIRABLE].mean(), rel=1e-5)
    assert m["rewards/margins"] == pytest.approx(
        m["rewards/chosen"] - m["rewards/rejected"], rel=1e-5
    )
    assert m["logps/chosen"] == pytest.approx(POLICY[DESIRABLE].mean(), rel=1e-6)
    assert m["logps/rejected"] == pytest.approx(POLICY[~DESIRABLE].mean(), rel=1e-6)
    assert m["kl"] == pytest.approx(0.6, rel=1e-5)
    # Right side of the reference point z = 0.6: desirable ratios 1.0, 0.4, 0.5 -> 1 of 3;
    # undesirable −1.5, −1.0 -> both.
    assert m["rewards/accuracies"] == pytest.approx(3 / 5)
    assert (m["count/desirable"], m["count/undesirable"]) == (3, 2)


def test_kto_batch_without_undesirable_completions():
    all_good = np.ones(5, dtype=bool)
    result = kto_objective(unpaired(desirable=all_good), LossSettings(beta=0.5, losses=("kto",)))
    expected, _ = kto_numpy(POLICY, REFERENCE, all_good, KL_POLICY, KL_REFERENCE, 0.5, 1.0, 1.0)
    assert result.loss.item() == pytest.approx(expected, rel=2e-5)
    assert math.isnan(result.metrics["rewards/rejected"].item())  # written as null
    assert math.isfinite(result.metrics["rewards/chosen"].item())


def test_kto_starts_at_half_its_weight():
    settings = LossSettings(beta=0.1, losses=("kto",), desirable_weight=0.8, undesirable_weight=0.8)
    logps = UnpairedLogps(a(POLICY), a(POLICY), a(DESIRABLE), a(KL_POLICY), a(KL_POLICY))
    assert kto_objective(logps, settings).loss.item() == pytest.approx(0.4)
    assert (
        loss_catalog.expected_initial_loss("kto", 0.1, desirable_weight=0.8, undesirable_weight=0.8)
        == 0.4
    )


def test_kto_kl_is_a_mean_over_ranks_before_the_clamp():
    settings = LossSettings(beta=0.5, losses=("kto",))
    result = kto_objective(unpaired(), settings, rank_mean=lambda x: (x - 1.6) / 2)
    assert result.metrics["kl"].item() == 0.0  # (0.6 − 1.6) / 2 < 0


def test_kl_is_mean_log_ratio():
    logps = pair([-1.0, -2.0], [-3.0, -4.0], [-1.5, -2.0], [-3.0, -5.0], [4.0, 4.0], [5.0, 5.0])
    assert pair_metrics(logps, 0.1)["kl"].item() == pytest.approx((0.5 + 0 + 0 + 1.0) / 4)


def test_pair_rewards_are_beta_times_the_log_ratios_per_pair():
    logps = pair([-3.5, -2.0], [-6.0, -1.0], [-4.0, -2.5], [-5.0, -3.0], [4.0, 4.0], [5.0, 5.0])
    chosen, rejected = pair_rewards(logps, 0.5)
    assert chosen.tolist() == pytest.approx([0.25, 0.25])
    assert rejected.tolist() == pytest.approx([-0.5, 1.0])
    # The metrics are their means; accuracy counts pairs, never means.
    metrics = pair_metrics(logps, 0.5)
    assert metrics["rewards/chosen"].item() == pytest.approx(0.25)
    assert metrics["rewards/accuracies"].item() == pytest.approx(0.5)
