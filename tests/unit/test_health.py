"""Run-health checks on synthetic but realistic event streams.

Each stream is simulated pair by pair the way a DPO step computes its metrics: every pair has
reference log-probs (answers of different lengths) and policy log-ratios ρ drawn around a
trajectory, and the step event carries the batch means of rewards = β·ρ, margins, per-pair
accuracy, the loss, logps = reference + ρ and kl = mean (ρ_c + ρ_r)/2. The noise comes from a
seeded random.Random, so each failure mode shows up through batch noise as it would in a run.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import pytest

from mlx_dpo.config import HealthThresholds, thresholds_from_dict
from mlx_dpo.errors import UserError
from mlx_dpo.events import METRIC_NAMES
from mlx_dpo.health import (
    KINDS,
    LN2,
    HealthMonitor,
    check_events,
    expected_initial_loss,
    summarize,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "health.md"

Trajectory = Callable[[int], float]


def softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def pair_loss(loss: str, beta_delta: float, beta: float) -> float:
    """Per-pair loss of a reference-based DPO loss at log-ratio difference βΔ."""
    if loss == "sigmoid":
        return softplus(-beta_delta)
    if loss == "hinge":
        return max(0.0, 1.0 - beta_delta)
    if loss == "ipo":
        return (beta_delta / beta - 1.0 / (2.0 * beta)) ** 2
    raise ValueError(loss)


def batch_metrics(
    rng: random.Random,
    rho_chosen: float,
    rho_rejected: float,
    spread: float,
    pairs: int,
    beta: float,
    loss: str = "sigmoid",
    ref_logp: float = -120.0,
    wrong_sign: bool = False,
) -> dict:
    """The metric names of a step or eval event for one batch of `pairs` pairs."""
    rows = []
    for _ in range(pairs):
        ref_c = min(-2.0, rng.gauss(ref_logp, abs(ref_logp) * 0.3))
        ref_r = min(-2.0, rng.gauss(ref_logp, abs(ref_logp) * 0.3))
        rho_c = rng.gauss(rho_chosen, spread) if spread else rho_chosen
        rho_r = rng.gauss(rho_rejected, spread) if spread else rho_rejected
        delta = beta * (rho_c - rho_r)
        # A sign bug: the loss minimised is the one of the swapped pair.
        term = pair_loss(loss, -delta if wrong_sign else delta, beta)
        rows.append((ref_c + rho_c, ref_r + rho_r, beta * rho_c, beta * rho_r, term))

    def mean(values) -> float:
        values = list(values)
        return sum(values) / len(values)

    return {
        "loss": mean(r[4] for r in rows),
        "rewards/chosen": mean(r[2] for r in rows),
        "rewards/rejected": mean(r[3] for r in rows),
        "rewards/margins": mean(r[2] - r[3] for r in rows),
        "rewards/accuracies": mean(1.0 if r[2] > r[3] else 0.0 for r in rows),
        "logps/chosen": mean(r[0] for r in rows),
        "logps/rejected": mean(r[1] for r in rows),
        "kl": mean((r[2] + r[3]) / (2 * beta) for r in rows),
    }


def simulate(
    seed: int,
    steps: int,
    rho_chosen: Trajectory,
    rho_rejected: Trajectory,
    *,
    beta: float = 0.1,
    loss: str = "sigmoid",
    spread_share: float = 0.5,
    spread_floor: float = 1.0,
    batch_size: int = 8,
    ref_logp: float = -120.0,
    wrong_sign: bool = False,
    warmup: int = 10,
    learning_rate: float = 5e-6,
    eval_every: int = 25,
    valid: tuple[Trajectory, Trajectory, Trajectory] | None = None,
    valid_pairs: int = 200,
    run_start: dict | None = None,
) -> list[dict]:
    """run_start, then one step event a step and a valid eval every `eval_every` steps (and at
    step 0). `valid` gives the validation set's (ρ_c, ρ_r, spread) trajectories; by default it
    follows training. Step 1 is at the reference exactly: ρ = 0 for every pair."""
    rng = random.Random(seed)
    events = [
        run_start
        or {"event": "run_start", "step": 0, "loss": loss, "beta": beta, "resumed_from": None}
    ]

    def spread(t: int) -> float:
        return spread_share * max(abs(rho_chosen(t)), abs(rho_rejected(t))) + spread_floor

    valid = valid or (rho_chosen, rho_rejected, spread)

    def eval_event(t: int) -> dict:
        rc, rr, sd = (f(t) for f in valid)
        metrics = batch_metrics(rng, rc, rr, sd if t else 0.0, valid_pairs, beta, loss, ref_logp)
        return {"event": "eval", "step": t, "split": "valid", "pairs": valid_pairs, **metrics}

    events.append(eval_event(0))
    for t in range(1, steps + 1):
        at_reference = t == 1
        metrics = batch_metrics(
            rng,
            0.0 if at_reference else rho_chosen(t),
            0.0 if at_reference else rho_rejected(t),
            0.0 if at_reference else spread(t),
            batch_size,
            beta,
            loss,
            ref_logp,
            wrong_sign,
        )
        events.append(
            {
                "event": "step",
                "step": t,
                "epoch": t / steps,
                **metrics,
                "grad_norm": abs(rng.gauss(1.0, 0.3)),
                "learning_rate": learning_rate * min(1.0, t / warmup),
            }
        )
        if t % eval_every == 0:
            events.append(eval_event(t))
    return events


def progress(t: int, scale: float = 60.0) -> float:
    return 1.0 - math.exp(-t / scale)


def healthy_stream(seed: int = 0, steps: int = 200) -> list[dict]:
    """Accuracy rising to ~0.9, margin to ~3, chosen log-prob ~3% below its start, kl ~ -19
    and levelling off; validation tracks training a little below."""
    return simulate(
        seed,
        steps,
        lambda t: -4.0 * progress(t),
        lambda t: -34.0 * progress(t),
        valid=(
            lambda t: -3.5 * progress(t),
            lambda t: -30.0 * progress(t),
            lambda t: 0.5 * 30.0 * progress(t) + 1.0,
        ),
    )


def run_monitor(
    events: list[dict], thresholds: HealthThresholds | None = None, **settings
) -> list[dict]:
    """Feed the events one by one, as the trainer does, to a monitor set up with the run's
    loss and beta (a test may override them through `settings`)."""
    run_start = events[0]
    settings = {"loss": run_start["loss"], "beta": run_start["beta"], **settings}
    monitor = HealthMonitor(thresholds, **settings)
    return [finding for event in events for finding in monitor.observe(event)]


def kinds(findings: list[dict]) -> list[str]:
    return [f["kind"] for f in findings]


# ---- the healthy run ------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_healthy_run_raises_nothing(seed):
    events = healthy_stream(seed)
    steps = [e for e in events if e["event"] == "step"]
    # The stream really is the healthy shape the test claims.
    last = steps[-20:]
    assert 0.8 <= sum(e["rewards/accuracies"] for e in last) / 20 <= 0.97
    assert sum(e["rewards/margins"] for e in last) / 20 > 2.5
    assert run_monitor(events) == []
    assert check_events(events) == []


def test_first_healthy_step_is_exactly_at_the_reference():
    first = next(e for e in healthy_stream() if e["event"] == "step")
    assert first["loss"] == pytest.approx(LN2)
    assert first["rewards/chosen"] == first["rewards/rejected"] == 0.0


# ---- each failure mode: exactly its finding -------------------------------------------------


def collapse_stream(seed: int = 0) -> list[dict]:
    # Both answers unlearned linearly, the rejected faster: the margin grows to ~2.4 while the
    # chosen log-prob ends ~40% below its start (short answers, ~-60 nats); kl stays < 50.
    return simulate(
        seed, 160, lambda t: -0.15 * t, lambda t: -0.3 * t, ref_logp=-60.0, spread_share=0.3
    )


def orientation_stream(seed: int = 0) -> list[dict]:
    # The loss is minimised for the swapped pair while the metrics use the true one.
    return simulate(
        seed, 150, lambda t: -20.0 * progress(t), lambda t: 10.0 * progress(t), wrong_sign=True
    )


def swapped_valid_stream(seed: int = 0) -> list[dict]:
    # Training is healthy but the validation file has chosen and rejected swapped.
    return simulate(
        seed,
        150,
        lambda t: -4.0 * progress(t),
        lambda t: -34.0 * progress(t),
        valid=(
            lambda t: -34.0 * progress(t),
            lambda t: -4.0 * progress(t),
            lambda t: 15.0 * progress(t) + 1.0,
        ),
    )


def kl_drift_stream(seed: int = 0) -> list[dict]:
    # β too small: the rejected log-ratio runs away linearly and kl with it (-115 at step 200).
    return simulate(seed, 200, lambda t: 0.05 * t, lambda t: -1.2 * t, beta=0.02, spread_share=0.3)


def not_learning_stream(seed: int = 0, warmup: int = 10) -> list[dict]:
    # Learning rate far too low: the log-ratios barely move from 0.
    return simulate(
        seed,
        150,
        lambda t: 0.0005 * t,
        lambda t: -0.0005 * t,
        spread_share=0.0,
        spread_floor=0.3,
        warmup=warmup,
    )


def overfitting_stream(seed: int = 0) -> list[dict]:
    # Training pairs separated perfectly; validation improves until ~step 75, then its margin
    # shrinks and spreads out (accuracy falls, loss rises).
    def valid_level(t: int) -> float:
        return min(1.0, t / 75) - max(0.0, (t - 100) / 100) * 0.8

    return simulate(
        seed,
        200,
        lambda t: 10.0 * progress(t, 30),
        lambda t: -50.0 * progress(t, 30),
        spread_share=0.2,
        valid=(
            lambda t: 5.0 * valid_level(t),
            lambda t: -5.0 * valid_level(t),
            lambda t: 5.0 + 0.1 * t,
        ),
    )


def mismatch_stream(seed: int = 0, loss: str = "sigmoid") -> list[dict]:
    # The reference was computed from other weights: every log-ratio starts ~-6 nats off,
    # so the first step's rewards are ~-0.6 (the trainer stops after the error).
    events = simulate(seed, 5, lambda t: -6.0, lambda t: -6.0, loss=loss, spread_floor=3.0)
    first = next(e for e in events if e["event"] == "step")
    rng = random.Random(seed)
    first.update(batch_metrics(rng, -6.0, -6.0, 3.0, 8, 0.1, loss))
    return events


FAILURES = {
    "chosen_logp_collapse": collapse_stream,
    "orientation": orientation_stream,
    "kl_drift": kl_drift_stream,
    "not_learning": not_learning_stream,
    "overfitting": overfitting_stream,
    "reference_mismatch": mismatch_stream,
}


@pytest.mark.parametrize("kind", sorted(FAILURES))
@pytest.mark.parametrize("seed", range(3))
def test_each_failure_mode_raises_exactly_its_finding(kind, seed):
    findings = run_monitor(FAILURES[kind](seed))
    assert kinds(findings) == [kind]
    finding = findings[0]
    assert set(finding) == {"kind", "severity", "message", "suggestion", "values", "step"}
    assert finding["message"] and finding["suggestion"] and finding["values"]
    assert all(v is None or math.isfinite(v) for v in finding["values"].values())


def test_swapped_validation_data_is_an_orientation_finding():
    findings = run_monitor(swapped_valid_stream())
    assert kinds(findings) == ["orientation"]
    assert "validation" in findings[0]["message"].lower()
    assert findings[0]["values"]["rewards/accuracies"] < 0.3


def test_only_the_reference_mismatch_is_an_error():
    severities = {}
    for make in (*FAILURES.values(), swapped_valid_stream):
        for finding in run_monitor(make()):
            severities[finding["kind"]] = finding["severity"]
    severities["length_bias"] = HealthMonitor().length_bias(0.8, 240, 150, 1000)[0]["severity"]
    assert set(severities) == set(KINDS)
    assert severities == {k: "error" if k == "reference_mismatch" else "warning" for k in KINDS}


def test_findings_carry_the_numbers_that_triggered_them():
    (collapse,) = run_monitor(collapse_stream())
    assert collapse["values"]["drop_share"] >= 0.2
    assert f"{collapse['values']['drop_share']:.0%}" in collapse["message"]
    assert "--sft-weight" in collapse["suggestion"]
    (drift,) = run_monitor(kl_drift_stream())
    assert drift["values"]["kl"] >= 50 and drift["values"]["kl"] > drift["values"]["kl_before"]
    (mismatch,) = run_monitor(mismatch_stream())
    assert mismatch["step"] == 1
    assert mismatch["values"]["rewards/chosen"] < -0.05


def test_a_kind_is_raised_once():
    # The collapse goes on for ~80 more steps after it is first raised.
    monitor = HealthMonitor()
    raised = [f for e in collapse_stream() for f in monitor.observe(e)]
    assert kinds(raised) == ["chosen_logp_collapse"]
    assert monitor.observe({"event": "step", "step": 999, **{m: 0.0 for m in METRIC_NAMES}}) == []


# ---- noise, warmup and configurable thresholds -----------------------------------------------


def spiky_healthy_stream() -> list[dict]:
    events = healthy_stream(seed=1)
    spike = next(e for e in events if e.get("step") == 120 and e["event"] == "step")
    spike.update(
        {
            "loss": 6.0,
            "rewards/chosen": -8.0,
            "rewards/rejected": 5.0,
            "rewards/margins": -13.0,
            "rewards/accuracies": 0.0,
            "logps/chosen": -900.0,
            "kl": -400.0,
        }
    )
    return events


def test_a_single_noisy_step_does_not_trigger():
    assert run_monitor(spiky_healthy_stream()) == []


def test_the_spike_would_trigger_without_smoothing():
    # Proof that the spike above is big enough to matter: with no window and no patience it
    # is raised at once.
    no_smoothing = HealthThresholds(smoothing_window=1, patience=1, trend_window=1)
    findings = run_monitor(spiky_healthy_stream(), thresholds=no_smoothing)
    assert ("kl_drift", 120) in [(f["kind"], f["step"]) for f in findings]


def test_learning_rate_warmup_is_not_called_not_learning():
    # The same flat run, but the learning rate is still rising for 120 of its 150 steps.
    assert run_monitor(not_learning_stream(warmup=120)) == []


def test_thresholds_are_configurable():
    assert run_monitor(kl_drift_stream(), thresholds=HealthThresholds(kl_limit=500.0)) == []
    lax_collapse = thresholds_from_dict({"collapse_fraction": 0.9})
    assert run_monitor(collapse_stream(), thresholds=lax_collapse) == []


def test_nulls_in_the_stream_are_skipped():
    events = healthy_stream(seed=2)
    rng = random.Random(7)
    for event in events:
        if event["event"] == "step" and rng.random() < 0.1:
            event["kl"] = None
            event["loss"] = float("nan")
    assert run_monitor(events) == []


# ---- reference mismatch per loss ------------------------------------------------------------


@pytest.mark.parametrize(
    ("loss", "beta", "smoothing", "expected"),
    [
        ("sigmoid", 0.1, 0.0, LN2),
        ("sigmoid", 0.1, 0.2, LN2),
        ("robust", 0.5, 0.3, LN2),
        ("hinge", 0.1, 0.0, 1.0),
        ("ipo", 0.1, 0.0, 25.0),
        ("ipo", 0.5, 0.0, 1.0),
        ("simpo", 2.0, 0.0, None),
        ("robust", 0.1, 0.5, None),
        ("no_such_loss", 0.1, 0.0, None),
    ],
)
def test_expected_initial_loss(loss, beta, smoothing, expected):
    got = expected_initial_loss(loss, beta, smoothing)
    assert got == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.parametrize("loss", ["hinge", "ipo"])
def test_other_losses_start_at_their_own_value(loss):
    events = simulate(0, 5, lambda t: -0.5 * t, lambda t: -1.5 * t, loss=loss)
    first = next(e for e in events if e["event"] == "step")
    assert first["loss"] == pytest.approx(expected_initial_loss(loss, 0.1))
    assert run_monitor(events, loss=loss) == []
    # Judged as a sigmoid run, the same first step is a mismatch.
    assert kinds(run_monitor(events, loss="sigmoid")) == ["reference_mismatch"]


def test_reference_mismatch_on_the_loss_alone():
    events = mismatch_stream(loss="sigmoid")
    first = next(e for e in events if e["event"] == "step")
    first.update({"rewards/chosen": 0.0, "rewards/rejected": 0.0, "loss": 0.9})
    (finding,) = run_monitor(events)
    assert finding["kind"] == "reference_mismatch"
    assert finding["values"]["loss"] == 0.9
    assert "0.6931" in finding["message"]


def test_sft_term_skips_the_loss_but_not_the_rewards():
    events = simulate(0, 5, lambda t: -0.5 * t, lambda t: -1.5 * t)
    first = next(e for e in events if e["event"] == "step")
    first["loss"] += 1.7  # the chosen answers' NLL, weighted
    assert run_monitor(events, sft_weight=1.0) == []
    assert kinds(run_monitor(mismatch_stream(), sft_weight=1.0)) == ["reference_mismatch"]


def test_resumed_and_reference_free_runs_skip_the_reference_check():
    events = mismatch_stream()
    events[0]["resumed_from"] = 400
    assert run_monitor(events) == []
    assert run_monitor(mismatch_stream(), loss="simpo") == []


@pytest.mark.parametrize(
    ("loss", "options", "expected"),
    [
        (["sigmoid", "bco_pair"], {"loss_weights": [0.8, 0.2]}, 0.8 * LN2 + 0.2 * 2 * LN2),
        (["sigmoid", "bco_pair", "sft"], {}, None),  # the NLL is not known in advance
        ("sigmoid", {"use_weighting": True}, None),  # WPO weights depend on the model
        ("kto", {"desirable_weight": 0.8, "undesirable_weight": 0.8}, 0.4),
        ("kto", {"desirable_weight": 1.0, "undesirable_weight": 0.5}, None),  # batch's mix
        ("apo_zero", {}, 1.0),
        ("orpo", {}, None),
    ],
)
def test_expected_initial_loss_of_lists_and_other_losses(loss, options, expected):
    got = expected_initial_loss(loss, 0.1, 0.0, **options)
    assert got == (pytest.approx(expected) if expected is not None else None)


def weighted_first_step_stream(weights: list[float]) -> list[dict]:
    """A healthy start of a [sigmoid, nca_pair] run: at the reference every per-pair term is
    its starting value, ln 2 and 2 ln 2."""
    events = simulate(0, 5, lambda t: -0.5 * t, lambda t: -1.5 * t)
    events[0]["loss"] = ["sigmoid", "nca_pair"]
    events[0]["config"] = {"loss_weights": weights}
    next(e for e in events if e["event"] == "step")["loss"] = (weights[0] + 2 * weights[1]) * LN2
    return events


def test_check_events_reads_a_loss_list_and_its_weights():
    assert check_events(weighted_first_step_stream([0.5, 1.5])) == []
    wrong = weighted_first_step_stream([0.5, 1.5])
    wrong[0]["config"] = {}  # judged with weights 1 and 1: the first loss is off
    assert kinds(check_events(wrong)) == ["reference_mismatch"]


@pytest.mark.parametrize("loss", ["simpo", "orpo", "cpo", ["simpo", "sft"]])
def test_reference_free_losses_have_no_reference_check(loss):
    assert run_monitor(mismatch_stream(), loss=loss) == []
    assert HealthMonitor(loss=loss).reference_free


def test_kto_starts_from_its_reference_like_dpo():
    events = simulate(0, 5, lambda t: -0.5 * t, lambda t: -1.5 * t)
    next(e for e in events if e["event"] == "step")["loss"] = 0.5  # λ·(1 − σ(0)), λ = 1
    assert run_monitor(events, loss="kto") == []
    assert kinds(run_monitor(mismatch_stream(), loss="kto")) == ["reference_mismatch"]


# ---- length bias ----------------------------------------------------------------------------


def test_length_bias_warns_once_with_the_figures():
    monitor = HealthMonitor()
    (finding,) = monitor.length_bias(0.81, 240.0, 150.0, 1200)
    assert finding["kind"] == "length_bias" and finding["severity"] == "warning"
    assert "81%" in finding["message"] and "1200" in finding["message"]
    assert finding["values"]["length_ratio"] == pytest.approx(1.6)
    assert monitor.length_bias(0.81, 240.0, 150.0, 1200) == []


@pytest.mark.parametrize(
    ("share", "chosen", "rejected", "pairs"),
    [
        (0.52, 201.0, 198.0, 1200),  # balanced
        (0.70, 151.0, 150.0, 1200),  # chosen longer often, but only by a token
        (0.90, 240.0, 150.0, 8),  # too few pairs to judge
    ],
)
def test_no_length_bias(share, chosen, rejected, pairs):
    assert HealthMonitor().length_bias(share, chosen, rejected, pairs) == []


# ---- check_events (mlx-dpo view on a finished run) ------------------------------------------


def test_check_events_reads_the_loss_from_run_start():
    events = simulate(0, 5, lambda t: -0.5 * t, lambda t: -1.5 * t, loss="ipo")
    assert check_events(events) == []
    events[0]["loss"] = "sigmoid"
    assert kinds(check_events(events)) == ["reference_mismatch"]


def test_check_events_reads_sft_weight_from_the_config():
    events = simulate(0, 5, lambda t: -0.5 * t, lambda t: -1.5 * t)
    next(e for e in events if e["event"] == "step")["loss"] += 1.7
    assert kinds(check_events(events)) == ["reference_mismatch"]
    events[0]["config"] = {"sft_weight": 1.0, "label_smoothing": 0.1}
    assert check_events(events) == []


def test_check_events_keeps_health_events_already_written():
    events = kl_drift_stream()
    (live,) = run_monitor(events)
    written = {
        "event": "health",
        "time": 1.0,
        **live,
        "message": "written by the trainer",
    }
    position = next(i for i, e in enumerate(events) if e.get("step") == live["step"]) + 1
    events.insert(position, written)
    findings = check_events(events)
    assert kinds(findings) == ["kl_drift"]
    assert findings[0]["message"] == "written by the trainer"
    assert findings[0]["step"] == live["step"]


def test_check_events_adds_new_findings_beside_written_ones():
    events = mismatch_stream()
    events.append(
        {
            "event": "health",
            "step": 3,
            "time": 1.0,
            "kind": "length_bias",
            "severity": "warning",
            "message": "m",
            "suggestion": "s",
            "values": {"chosen_longer_share": 0.8},
        }
    )
    assert kinds(check_events(events)) == ["reference_mismatch", "length_bias"]


def test_a_health_event_fed_to_the_monitor_marks_its_kind_raised():
    monitor = HealthMonitor()
    monitor.observe({"event": "health", "step": 0, "kind": "kl_drift"})
    assert [f for e in kl_drift_stream() for f in monitor.observe(e)] == []


# ---- thresholds from the config ---------------------------------------------------------------


def test_thresholds_from_dict_applies_values():
    assert thresholds_from_dict(None) == HealthThresholds()
    got = thresholds_from_dict({"kl_limit": 80, "patience": 3})
    assert got.kl_limit == 80.0 and isinstance(got.kl_limit, float)
    assert got.patience == 3
    assert got.smoothing_window == HealthThresholds().smoothing_window


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"kl_limt": 80}, "kl_limt"),
        ({"kl_limit": "80"}, "kl_limit"),
        ({"patience": True}, "patience"),
        ({"patience": 2.5}, "patience"),
        ({"patience": 0}, "patience"),
        ({"collapse_fraction": 1.5}, "collapse_fraction"),
        ({"kl_limit": -1.0}, "kl_limit"),
        ({"kl_limit": 0}, "kl_limit"),
        ({"overfit_train_accuracy": float("nan")}, "overfit_train_accuracy"),
    ],
)
def test_thresholds_from_dict_errors_name_the_key(values, key):
    with pytest.raises(UserError) as caught:
        thresholds_from_dict(values)
    assert f"health.{key}" in str(caught.value)


def test_thresholds_from_dict_reports_every_problem_and_rejects_non_mappings():
    with pytest.raises(UserError) as caught:
        thresholds_from_dict({"nope": 1, "patience": -1})
    assert len(caught.value.problems) == 2
    with pytest.raises(UserError, match="health"):
        thresholds_from_dict([("patience", 3)])


def test_every_threshold_is_documented():
    text = DOCS.read_text(encoding="utf-8")
    for spec in fields(HealthThresholds):
        assert spec.metadata["help"]
        assert f"`{spec.name}`" in text, spec.name
        assert str(spec.default) in text, spec.name
    for kind in KINDS:
        assert f"`{kind}`" in text, kind


# ---- summary --------------------------------------------------------------------------------


def test_summarize():
    assert summarize([]) == "No problems seen."
    findings = run_monitor(collapse_stream()) + run_monitor(mismatch_stream())
    text = summarize(findings)
    assert text.splitlines()[0] == "Run health: 1 error and 1 warning."
    # Errors first, each line with its step and fix.
    assert "error at step 1" in text.splitlines()[1]
    assert "--sft-weight" in text.splitlines()[2]


# ---- checks that are off --------------------------------------------------------------------


def off_kinds(run_start: dict, thresholds: HealthThresholds | None = None, **settings) -> dict:
    checks = HealthMonitor(thresholds, **settings).checks_off(run_start)
    assert all(c["severity"] == "off" and c["step"] == 0 and c["suggestion"] for c in checks)
    return {c["kind"]: c["message"] for c in checks}


# A run long enough, with data enough, for every check to run.
LONG_RUN = {"total_steps": 200, "train_pairs": 500, "valid_pairs": 40}


def test_a_long_run_with_enough_data_has_every_check_on():
    assert off_kinds(LONG_RUN) == {}


def test_a_small_validation_split_turns_the_validation_checks_off():
    off = off_kinds({"total_steps": 200, "train_pairs": 500, "valid_pairs": 12})
    assert set(off) == {"overfitting", "orientation"}
    assert (
        "the validation split has 12 pairs, under health.valid_min_pairs (20)" in off["overfitting"]
    )
    assert off["orientation"].startswith("on the validation evals, ")
    none = off_kinds({"total_steps": 200, "train_pairs": 500, "valid_pairs": 0})
    assert "there is no validation split" in none["overfitting"]
    lower = thresholds_from_dict({"valid_min_pairs": 10})
    assert off_kinds({"total_steps": 200, "train_pairs": 500, "valid_pairs": 12}, lower) == {}


def test_a_short_run_turns_the_trend_checks_off_and_says_what_they_need():
    off = off_kinds({"total_steps": 35, "train_pairs": 500, "valid_pairs": 40})
    # warmup_steps 30; smoothing_window 10 + trend_window 20; not_learning_steps 50.
    assert set(off) == {"not_learning"}
    off = off_kinds({"total_steps": 6, "train_pairs": 500, "valid_pairs": 40})
    assert set(off) == {"orientation", "chosen_logp_collapse", "kl_drift", "not_learning"}
    assert off["kl_drift"] == (
        "the run has 6 steps and the check needs 30 (health.warmup_steps and its windows)"
    )
    assert off["orientation"].startswith("on training steps, the run has 6 steps")


def test_small_training_data_turns_length_bias_off():
    off = off_kinds({"total_steps": 200, "train_pairs": 12, "valid_pairs": 40})
    assert off == {
        "length_bias": "the training data has 12 pairs, under health.length_bias_min_pairs (20)"
    }


def test_a_reference_free_loss_turns_the_reference_checks_off():
    run_start = {"total_steps": 200, "train_pairs": 500, "valid_pairs": 40}
    off = off_kinds(run_start, loss="simpo")
    assert set(off) == {"reference_mismatch", "kl_drift"}
    assert "the simpo loss uses no reference model" in off["kl_drift"]


def test_checks_that_are_off_are_not_findings():
    """An "off" event fed back (a resumed run's stream) does not mark its kind as raised, and
    neither the replay of a stream nor the end-of-run summary counts it."""
    off = {"event": "health", "step": 0, "time": 1.0, "kind": "kl_drift", "severity": "off",
           "message": "m", "suggestion": "s", "values": {}}  # fmt: skip
    monitor = HealthMonitor()
    assert monitor.observe(off) == [] and monitor.raised == set()
    events = kl_drift_stream()
    events.insert(1, off)
    assert kinds(check_events(events)) == ["kl_drift"]  # still raised by the stream itself
    assert summarize([{**off, "severity": "off"}]) == "No problems seen."
    (finding,) = run_monitor(kl_drift_stream())
    assert summarize([off, finding]).splitlines()[0] == "Run health: 1 warning."


@pytest.mark.parametrize(
    ("loss", "off"),
    [
        ("orpo", {"reference_mismatch", "kl_drift"}),
        (["simpo", "sft"], {"reference_mismatch", "kl_drift"}),
        ("sigmoid", set()),
        ("kto", set()),  # every check applies to kto (docs/health.md's table)
    ],
)
def test_the_checks_a_loss_turns_off_are_the_docs(loss, off):
    checks = HealthMonitor(loss=loss).checks_off(LONG_RUN)
    assert {c["kind"] for c in checks} == off
    assert all(c["severity"] == "off" and "no reference model" in c["message"] for c in checks)
    text = DOCS.read_text()
    assert "| `kl_drift` | `kl` = the batch's mean log-ratio | not checked" in text
    assert "| `reference_mismatch` | yes (table above) | no:" in text


def test_off_checks_in_a_stream_are_not_findings():
    events = simulate(0, 5, lambda t: -0.5 * t, lambda t: -1.5 * t)
    events[0]["loss"] = "orpo"
    for check in HealthMonitor(loss="orpo").checks_off(LONG_RUN):
        events.insert(1, {"event": "health", "time": 0.0, **check})
    assert check_events(events) == []


def test_kto_length_bias_speaks_of_desirable_and_undesirable_completions():
    (finding,) = HealthMonitor(loss="kto").length_bias(0.9, 240.0, 150.0, 300)
    assert "desirable completion is longer than the undesirable one in 90%" in finding["message"]
    assert "pairs" not in finding["message"]
