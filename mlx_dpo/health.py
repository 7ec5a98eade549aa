"""Run health: the known DPO failure modes, caught from the event stream while the run happens.

`HealthMonitor.observe` takes each event as the trainer writes it and returns the findings it
newly raises; the trainer writes each one as a `health` event and stops the run on severity
"error". `check_events` replays a finished stream for `mlx-dpo view`. Plain Python only: no
MLX, no Textual, no numpy, so the trainer and the dashboard can both import it.

A finding is a dict with the fields of a `health` event plus the step it was raised at:
    kind        one of KINDS
    severity    "warning", or "error" for reference_mismatch (the trainer stops the run)
    message     what was seen, in plain words, with the numbers
    suggestion  the fix
    values      the numbers that triggered it (JSON-safe: non-finite numbers are None)
    step        the step of the event that raised it (0 for the start-of-run data check)

What is checked (the thresholds are the fields of `config.HealthThresholds`; docs/health.md explains
each finding for users):
    reference_mismatch    the first step of a fresh run does not have the loss a policy equal to
                          its reference has (expected_initial_loss), or its rewards are not 0
    orientation           rewards/chosen not above rewards/rejected and accuracy <= 0.5 while
                          the loss falls; or a validation accuracy far below 0.5
    chosen_logp_collapse  the margin grows while the chosen log-probability falls steadily
                          below its starting value
    kl_drift              |kl| above a limit and still growing
    not_learning          margin and accuracy flat near 0 / 0.5 for a long stretch at full
                          learning rate
    overfitting           train accuracy near 1 while validation accuracy falls and validation
                          loss rises
    length_bias           chosen responses systematically longer than rejected ones in the data
                          (`HealthMonitor.length_bias`, called with the data audit's figures)

How noise is handled: every trend check works on the median of the last `smoothing_window`
step events (a median, so one wild step barely moves it), and a condition must hold on
`patience` consecutive step events before it is raised. Each kind is raised at most once per
monitor: a finding that clears and comes back is not repeated. The reference check is the one
exception to smoothing: at the first step the policy equals its reference exactly, so one
step is enough. Windows are counted in step events (the trainer writes one per optimizer step).

Left out: the policy's response-length drift (the other half of length bias) needs many generated
responses; the few greedy answers a run writes (mlx_dpo/trainer/samples.py) are too few and cut
at a token cap, so only the data's length bias is checked. `checks_off` says which checks cannot
run in a run (severity "off" events: not findings).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from mlx_dpo import loss_catalog
from mlx_dpo.config import HealthThresholds, TrainConfig
from mlx_dpo.formatting import finite_number

LN2 = math.log(2.0)

KINDS = (
    "reference_mismatch",
    "orientation",
    "chosen_logp_collapse",
    "kl_drift",
    "not_learning",
    "overfitting",
    "length_bias",
)
ERROR_KINDS = frozenset({"reference_mismatch"})
# The severity of a `health` event that says a check is off in this run (not a finding).
OFF = "off"

# How each kind reads in a sentence (summaries, dashboard titles).
KIND_TITLES = {
    "reference_mismatch": "policy does not start from the reference",
    "orientation": "chosen/rejected look swapped",
    "chosen_logp_collapse": "chosen log-probability collapsing",
    "kl_drift": "drifting far from the reference",
    "not_learning": "not learning",
    "overfitting": "overfitting",
    "length_bias": "length bias in the data",
}

# Losses that have no reference model: their rewards are not log-ratios to a reference.
REFERENCE_FREE_LOSSES = loss_catalog.REFERENCE_FREE
# The config keys (besides loss, beta, label_smoothing) that the first-step loss depends on.
_INITIAL_LOSS_OPTIONS = ("loss_weights", "desirable_weight", "undesirable_weight", "use_weighting")


def severity_of(kind: str) -> str:
    return "error" if kind in ERROR_KINDS else "warning"


def expected_initial_loss(
    loss: str | Sequence[str], beta: float, label_smoothing: float = 0.0, **options: Any
) -> float | None:
    """The loss a policy equal to its reference has (every log-ratio 0), or None when there is
    no such value to check (a reference-free loss, an NLL term, WPO weights, an unknown loss).
    `options`: loss_weights, desirable_weight, undesirable_weight, use_weighting.
    mlx_dpo/loss_catalog.py has each loss's value (sigmoid ln 2, hinge 1, ipo (1/(2β))², ...)."""
    return loss_catalog.expected_initial_loss(loss, beta, label_smoothing, **options)


def _rounded(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, 4)


def _robust_median(values: Iterable[float | None], size: int) -> float | None:
    """Median of the numbers among `values`, or None when fewer than half of the `size`
    expected are numbers (a mostly-null window says nothing)."""
    numbers = [v for v in values if v is not None]
    if len(numbers) * 2 < size:
        return None
    return statistics.median(numbers)


def _finding(kind: str, step: int, message: str, suggestion: str, values: dict) -> dict:
    return {
        "kind": kind,
        "severity": severity_of(kind),
        "message": message,
        "suggestion": suggestion,
        "values": {key: _rounded(finite_number(v)) for key, v in values.items()},
        "step": int(step),
    }


def finding_from_event(event: dict) -> dict:
    """A `health` event of a stream as a finding (the same fields, without event/time)."""
    kind = str(event.get("kind", ""))
    return {
        "kind": kind,
        "severity": event.get("severity") or severity_of(kind),
        "message": event.get("message", ""),
        "suggestion": event.get("suggestion", ""),
        "values": dict(event.get("values") or {}),
        "step": int(event.get("step", 0) or 0),
    }


class HealthMonitor:
    """Watches one run's events and raises each kind of finding at most once.

    Give it every event in order (`observe`); call `length_bias` once with the training data's
    audit figures at the start. A `health` event fed back in (a resumed run replaying its
    stream) marks its kind as already raised. The trainer writes each returned finding as a
    `health` event and stops the run when one has severity "error"."""

    def __init__(
        self,
        thresholds: HealthThresholds | None = None,
        loss: str | Sequence[str] = TrainConfig.loss,
        beta: float = TrainConfig.beta,
        label_smoothing: float = 0.0,
        sft_weight: float = 0.0,
        loss_options: dict[str, Any] | None = None,
    ):
        self.thresholds = thresholds or HealthThresholds()
        self.loss = loss if isinstance(loss, str) else ", ".join(loss_catalog.loss_names(loss))
        self.loss_names = loss_catalog.loss_names(loss)
        self.loss_options = {
            k: v for k, v in (loss_options or {}).items() if k in _INITIAL_LOSS_OPTIONS
        }
        self.beta = beta
        self.label_smoothing = label_smoothing
        self.sft_weight = sft_weight
        self.raised: set[str] = set()
        t = self.thresholds
        self._recent: deque[dict] = deque(
            maxlen=max(t.smoothing_window + t.trend_window, t.not_learning_steps)
        )
        self._baseline: list[dict] = []  # the first smoothing_window step events
        self._steps_seen = 0
        self._resumed = False
        self._first_step_checked = False
        self._streaks: dict[str, int] = {}
        self._lr_peak: float | None = None
        self._steps_at_full_lr = 0
        self._valid_best: tuple[float, int] | None = None  # (accuracy, step)
        self._valid_lowest_loss: float | None = None
        self._valid_swapped = False
        self._overfit_streak = 0

    @classmethod
    def from_run_start(
        cls, run_start: dict | None, thresholds: HealthThresholds | None = None
    ) -> HealthMonitor:
        """A monitor set up from a `run_start` event: fields `loss`, `beta`, and the config's
        `label_smoothing`, `sft_weight` and the options the first-step loss depends on
        (falling back to the config for loss and beta)."""
        run_start = run_start or {}
        config = run_start.get("config") or {}

        def setting(name: str, default: Any) -> Any:
            value = run_start.get(name, config.get(name))
            return default if value is None else value

        loss = setting("loss", TrainConfig.loss)
        return cls(
            thresholds,
            loss=loss if isinstance(loss, list) else str(loss),
            beta=finite_number(setting("beta", TrainConfig.beta)) or 0.0,
            label_smoothing=finite_number(config.get("label_smoothing")) or 0.0,
            sft_weight=finite_number(config.get("sft_weight")) or 0.0,
            loss_options={k: config[k] for k in _INITIAL_LOSS_OPTIONS if config.get(k) is not None},
        )

    # ---- the loss's starting point -------------------------------------------------------

    @property
    def reference_free(self) -> bool:
        """No reference model: rewards are β times policy log-probs, not log-ratios."""
        known = all(n in loss_catalog.CATALOG for n in self.loss_names)
        return (known and not loss_catalog.needs_reference(self.loss_names)) or self.beta <= 0

    def _expected_first_loss(self) -> float | None:
        """The first step's expected loss; None when an SFT term is added (its NLL is not
        known in advance) or the loss has no such value."""
        if self.sft_weight:
            return None
        return expected_initial_loss(
            self.loss_names, self.beta, self.label_smoothing, **self.loss_options
        )

    # ---- events ---------------------------------------------------------------------------

    def observe(self, event: dict) -> list[dict]:
        """Findings newly raised by this event (usually none)."""
        name = event.get("event")
        if name == "health":
            if event.get("severity") != OFF:  # a check that is off raised nothing
                self.raised.add(str(event.get("kind")))
            return []
        if name == "run_start":
            if self._steps_seen == 0:
                self._resumed = event.get("resumed_from") is not None
            return []
        if name == "step":
            return self._observe_step(event)
        if name == "eval" and event.get("split") == "valid":
            return self._observe_valid(event)
        return []

    def length_bias(
        self,
        chosen_longer_share: float,
        mean_chosen_tokens: float,
        mean_rejected_tokens: float,
        pairs: int,
    ) -> list[dict]:
        """The start-of-run data check: chosen responses systematically longer than rejected
        ones teach "longer is better" instead of the preference. (How the policy's own
        response lengths drift is not checked: a run generates too few answers for it.)"""
        t = self.thresholds
        if "length_bias" in self.raised or pairs < t.length_bias_min_pairs:
            return []
        if mean_rejected_tokens > 0:
            ratio = mean_chosen_tokens / mean_rejected_tokens
        else:
            ratio = math.inf if mean_chosen_tokens > 0 else 1.0
        if chosen_longer_share < t.length_bias_share or ratio < t.length_bias_ratio:
            return []
        if loss_catalog.is_unpaired(self.loss_names):
            message = (
                f"In the training data the desirable completion is longer than the "
                f"undesirable one in {chosen_longer_share:.0%} of the (desirable, undesirable) "
                f"combinations (mean {mean_chosen_tokens:.0f} vs {mean_rejected_tokens:.0f} "
                f"tokens, {ratio:.2f}x). KTO can learn 'longer is better' instead of what the "
                f"labels mean."
            )
        else:
            message = (
                f"In the training data the chosen response is longer than the rejected one in "
                f"{chosen_longer_share:.0%} of {pairs} pairs (mean {mean_chosen_tokens:.0f} vs "
                f"{mean_rejected_tokens:.0f} tokens, {ratio:.2f}x). DPO can learn 'longer is "
                f"better' instead of the preference you mean."
            )
        suggestion = (
            "Balance the lengths in the data (drop or rewrite the pairs where only length "
            "differs, add pairs where the shorter answer wins), or keep beta high and check "
            "the trained model's answer lengths; `mlx-dpo data audit` shows the figures."
        )
        values = {
            "chosen_longer_share": chosen_longer_share,
            "mean_chosen_tokens": mean_chosen_tokens,
            "mean_rejected_tokens": mean_rejected_tokens,
            "length_ratio": ratio,
            "pairs": pairs,
        }
        return self._raise([_finding("length_bias", 0, message, suggestion, values)])

    def checks_off(self, run_start: dict) -> list[dict]:
        """The checks that cannot run in this run, one `health` event's fields each (severity
        "off", step 0; message: why, in words that follow the check's title; suggestion: how
        to have it), from the run_start event's total_steps, train_pairs, valid_pairs and the
        loss. Only what certainly will not run: a check that has not run yet is not off."""
        t = self.thresholds
        reasons: dict[str, list[str]] = {}
        how: dict[str, str] = {}

        def off(kind: str, reason: str, suggestion: str) -> None:
            reasons.setdefault(kind, []).append(reason)
            how.setdefault(kind, suggestion)

        if self.reference_free:
            for kind in ("reference_mismatch", "kl_drift"):
                off(
                    kind,
                    f"the {self.loss} loss uses no reference model, so there is none to start "
                    "from or drift from",
                    "a loss with a reference model (sigmoid, ...) has this check",
                )
        valid_pairs = int(finite_number(run_start.get("valid_pairs")) or 0)
        if valid_pairs < t.valid_min_pairs:
            have = (
                "there is no validation split"
                if valid_pairs == 0
                else f"the validation split has {valid_pairs} pairs, under "
                f"health.valid_min_pairs ({t.valid_min_pairs}): too few to judge"
            )
            more = (
                f"a validation split of at least {t.valid_min_pairs} pairs (--valid-split, "
                "--valid-fraction), or a lower health.valid_min_pairs"
            )
            off("overfitting", f"it reads the validation evals, and {have}", more)
            off("orientation", f"on the validation evals, {have}", more)
        train_pairs = int(finite_number(run_start.get("train_pairs")) or 0)
        if train_pairs < t.length_bias_min_pairs:
            off(
                "length_bias",
                f"the training data has {train_pairs} pairs, under "
                f"health.length_bias_min_pairs ({t.length_bias_min_pairs})",
                "more pairs, or a lower health.length_bias_min_pairs",
            )
        steps = int(finite_number(run_start.get("total_steps")) or 0)
        needs = {
            "orientation": max(t.warmup_steps, t.smoothing_window),
            "chosen_logp_collapse": max(t.warmup_steps, t.smoothing_window + t.trend_window),
            "kl_drift": max(t.warmup_steps, t.smoothing_window + t.trend_window),
            "not_learning": max(t.warmup_steps, t.not_learning_steps),
        }
        for kind, need in needs.items():
            if steps < need:
                where = "on training steps, " if kind == "orientation" else ""
                off(
                    kind,
                    f"{where}the run has {steps} steps and the check needs {need} "
                    "(health.warmup_steps and its windows)",
                    "a longer run, or smaller health windows",
                )
        return [
            {
                "kind": kind,
                "severity": OFF,
                "message": "; ".join(reasons[kind]),
                "suggestion": how[kind],
                "values": {},
                "step": 0,
            }
            for kind in KINDS
            if kind in reasons
        ]

    def _raise(self, findings: list[dict]) -> list[dict]:
        new = [f for f in findings if f["kind"] not in self.raised]
        self.raised.update(f["kind"] for f in new)
        return new

    # ---- step events ----------------------------------------------------------------------

    def _observe_step(self, event: dict) -> list[dict]:
        entry = self._entry(event)
        self._steps_seen += 1
        self._recent.append(entry)
        if len(self._baseline) < self.thresholds.smoothing_window:
            self._baseline.append(entry)
        self._track_learning_rate(entry["learning_rate"])

        found = []
        if not self._first_step_checked:
            self._first_step_checked = True
            finding = self._reference_check(entry)
            if finding:
                found.append(finding)
        step_checks = (
            ("orientation", self._orientation_in_training),
            ("chosen_logp_collapse", self._chosen_logp_collapse),
            ("kl_drift", self._kl_drift),
            ("not_learning", self._not_learning),
        )
        for kind, check in step_checks:
            if kind in self.raised:
                continue
            finding = check(entry["step"])
            self._streaks[kind] = self._streaks.get(kind, 0) + 1 if finding else 0
            if finding and self._streaks[kind] >= self.thresholds.patience:
                found.append(finding)
        return self._raise(found)

    def _entry(self, event: dict) -> dict:
        """The numbers of one step event, plus what the checks derive from them."""
        entry = {
            name: finite_number(event.get(name))
            for name in (
                "loss",
                "rewards/chosen",
                "rewards/rejected",
                "rewards/margins",
                "rewards/accuracies",
                "logps/chosen",
                "kl",
                "learning_rate",
            )
        }
        entry["step"] = int(event.get("step", 0) or 0)
        if entry["rewards/margins"] is None and None not in (
            entry["rewards/chosen"],
            entry["rewards/rejected"],
        ):
            entry["rewards/margins"] = entry["rewards/chosen"] - entry["rewards/rejected"]
        entry["abs_kl"] = abs(entry["kl"]) if entry["kl"] is not None else None
        # Rewards are β·(log π - log π_ref) per pair, so -rewards/chosen/β is how many nats the
        # chosen answers fell below their reference (= starting) log-prob, and logps/chosen
        # minus that gap is the starting log-prob of the same batch. Both are free of the
        # batch-to-batch swings of logps/chosen itself (long answers have lower log-probs).
        reward, logp = entry["rewards/chosen"], entry["logps/chosen"]
        if not self.reference_free and reward is not None:
            entry["chosen_drop"] = -reward / self.beta
            entry["chosen_start"] = logp - reward / self.beta if logp is not None else None
        else:
            entry["chosen_drop"] = entry["chosen_start"] = None
        return entry

    def _track_learning_rate(self, learning_rate: float | None) -> None:
        """Counts step events since the learning rate last rose, so warmup (where a flat
        margin is expected) never counts toward not_learning."""
        if learning_rate is not None and (
            self._lr_peak is None or learning_rate > self._lr_peak * (1 + 1e-6)
        ):
            self._lr_peak = learning_rate
            self._steps_at_full_lr = 0
        self._steps_at_full_lr += 1

    def _smoothed(self, key: str, back: int = 0) -> float | None:
        """Median of `key` over the smoothing window that ends `back` step events ago; None
        until there is that much history."""
        size = self.thresholds.smoothing_window
        end = len(self._recent) - back
        if end - size < 0:
            return None
        window = list(self._recent)[end - size : end]
        return _robust_median((e[key] for e in window), size)

    def _baseline_median(self, key: str) -> float | None:
        size = self.thresholds.smoothing_window
        if len(self._baseline) < size:
            return None
        return _robust_median((e[key] for e in self._baseline), size)

    def _trend_ready(self) -> bool:
        t = self.thresholds
        return (
            self._steps_seen >= t.warmup_steps
            and len(self._recent) >= t.smoothing_window + t.trend_window
        )

    # ---- the checks (each returns the finding its condition would raise, or None) --------

    def _reference_check(self, entry: dict) -> dict | None:
        """At the first step of a fresh run the policy is its reference: every log-ratio is 0,
        so the rewards are 0 and the loss is expected_initial_loss. Anything else means the
        reference is not the policy's starting point. Exact, so no smoothing."""
        t = self.thresholds
        if self._resumed or entry["step"] > 1:
            return None  # not the first step of the run
        if self.reference_free or any(n not in loss_catalog.CATALOG for n in self.loss_names):
            return None  # no reference to start from, or a loss we know nothing about
        expected = self._expected_first_loss()  # None: only the rewards are checked
        loss = entry["loss"]
        chosen, rejected = entry["rewards/chosen"], entry["rewards/rejected"]
        problems = []
        loss_off = (
            expected is not None
            and loss is not None
            and abs(loss - expected) > t.reference_loss_tolerance * max(1.0, abs(expected))
        )
        if loss_off:
            problems.append(
                f"the loss at the first step is {loss:.4f} where a policy that starts from "
                f"its reference gives {expected:.4f} for the {self.loss} loss"
            )
        off_rewards = [
            f"{name} {value:.4f}"
            for name, value in (("rewards/chosen", chosen), ("rewards/rejected", rejected))
            if value is not None and abs(value) > t.reference_reward_tolerance
        ]
        if off_rewards:
            problems.append(
                f"the rewards at the first step are {' and '.join(off_rewards)} where both "
                f"should be 0"
            )
        if not problems:
            return None
        seen = "; ".join(problems)
        message = (
            f"{seen[0].upper()}{seen[1:]}. The policy does not start from the reference "
            f"model, so every reward and the loss are measured against the wrong baseline."
        )
        suggestion = (
            "Make the reference the exact weights the policy starts from: the same model, "
            "quantization and --init-adapter. Delete a stale reference cache or try "
            "--reference live, and check that LoRA starts with B = 0."
        )
        values = {
            "loss": loss,
            "expected_loss": expected,
            "rewards/chosen": chosen,
            "rewards/rejected": rejected,
        }
        return _finding("reference_mismatch", entry["step"], message, suggestion, values)

    def _start_loss(self) -> float | None:
        expected = self._expected_first_loss()
        return expected if expected is not None else self._baseline_median("loss")

    def _orientation_in_training(self, step: int) -> dict | None:
        """With a convex loss, a mean margin <= 0 cannot bring the loss below its starting
        value; a loss that falls anyway is minimised in the wrong direction."""
        t = self.thresholds
        if self._steps_seen < t.warmup_steps:
            return None
        chosen, rejected = self._smoothed("rewards/chosen"), self._smoothed("rewards/rejected")
        accuracy, loss = self._smoothed("rewards/accuracies"), self._smoothed("loss")
        start = self._start_loss()
        if None in (chosen, rejected, accuracy, loss, start):
            return None
        if chosen > rejected or accuracy > t.orientation_train_accuracy:
            return None
        if start - loss < t.orientation_loss_drop * abs(start):
            return None
        message = (
            f"After {self._steps_seen} steps the chosen reward ({chosen:.3f}) is not above the "
            f"rejected reward ({rejected:.3f}) and accuracy is {accuracy:.2f}, yet the loss "
            f"fell from {start:.4f} to {loss:.4f}: training is pushing toward the rejected "
            f"answers."
        )
        suggestion = (
            "Check that chosen and rejected are not swapped in the data or in the config's "
            "field mapping, and that the loss is not computed with the opposite sign."
        )
        values = {
            "rewards/chosen": chosen,
            "rewards/rejected": rejected,
            "rewards/accuracies": accuracy,
            "loss": loss,
            "start_loss": start,
        }
        return _finding("orientation", step, message, suggestion, values)

    def _chosen_drop(self, back: int) -> tuple[float, float] | None:
        """(nats the chosen log-prob is below its start, the start) smoothed, `back` step
        events ago. Reference-free losses compare logps/chosen with its first window."""
        if not self.reference_free:
            drop, start = self._smoothed("chosen_drop", back), self._smoothed("chosen_start", back)
        else:
            start, now = self._baseline_median("logps/chosen"), self._smoothed("logps/chosen", back)
            drop = start - now if None not in (start, now) else None
        if drop is None or start is None or start == 0:
            return None
        return drop, start

    def _chosen_logp_collapse(self, step: int) -> dict | None:
        t = self.thresholds
        if not self._trend_ready():
            return None
        now, then = self._chosen_drop(0), self._chosen_drop(t.trend_window)
        margin = self._smoothed("rewards/margins")
        margin_then = self._smoothed("rewards/margins", t.trend_window)
        if None in (now, then, margin, margin_then):
            return None
        drop, start = now
        share = drop / abs(start)
        still_falling = drop > then[0]
        margin_grows = margin > 0 and margin > margin_then
        if share < t.collapse_fraction or not still_falling or not margin_grows:
            return None
        message = (
            f"The margin grows ({margin_then:.2f} -> {margin:.2f}) but the chosen answers' "
            f"log-probability keeps falling: it is {drop:.1f} nats ({share:.0%}) below its "
            f"starting value of {start:.1f}. The policy is unlearning both answers, the "
            f"rejected ones faster."
        )
        suggestion = (
            f"Raise beta (now {self.beta:g}), lower the learning rate, or add an SFT term on "
            f"the chosen answers with --sft-weight."
        )
        values = {
            "chosen_logp_drop": drop,
            "chosen_logp_start": start,
            "drop_share": share,
            "rewards/margins": margin,
            "rewards/margins_before": margin_then,
        }
        return _finding("chosen_logp_collapse", step, message, suggestion, values)

    def _kl_drift(self, step: int) -> dict | None:
        t = self.thresholds
        if not self._trend_ready():
            return None
        now, then = self._smoothed("abs_kl"), self._smoothed("abs_kl", t.trend_window)
        if now is None or then is None:
            return None
        if now < t.kl_limit or now - then < t.kl_growth * t.kl_limit:
            return None
        message = (
            f"The policy's log-ratio to the reference (kl) is {now:.1f} nats and still growing "
            f"(up from {then:.1f} over the last {t.trend_window} steps): it is drifting far "
            f"from the reference model, which usually degrades its answers."
        )
        suggestion = (
            f"Raise beta (now {self.beta:g}) or lower the learning rate; an earlier checkpoint "
            f"may be the better adapter."
        )
        values = {"kl": now, "kl_before": then, "kl_limit": t.kl_limit}
        return _finding("kl_drift", step, message, suggestion, values)

    def _not_learning(self, step: int) -> dict | None:
        t = self.thresholds
        size = t.not_learning_steps
        if self._steps_seen < t.warmup_steps or self._steps_at_full_lr < size:
            return None
        stretch = list(self._recent)[-size:]
        margin = _robust_median((e["rewards/margins"] for e in stretch), size)
        # Accuracy is bounded (one step moves a mean of 50 by at most 0.02) and comes in
        # coarse steps of 1/batch size, where a median would jump; so it is averaged.
        accuracies = [
            e["rewards/accuracies"] for e in stretch if e["rewards/accuracies"] is not None
        ]
        accuracy = sum(accuracies) / len(accuracies) if len(accuracies) * 2 >= size else None
        if margin is None or accuracy is None:
            return None
        if abs(margin) > t.not_learning_margin or accuracy > t.not_learning_accuracy:
            return None
        message = (
            f"Over the last {size} steps the margin stayed at {margin:.3f} and accuracy at "
            f"{accuracy:.2f}: the policy is barely moving away from the reference."
        )
        suggestion = (
            f"Raise the learning rate, or lower beta (now {self.beta:g}); check that the "
            f"LoRA layers train (trainable parameters in the run summary)."
        )
        values = {"rewards/margins": margin, "rewards/accuracies": accuracy, "steps": size}
        return _finding("not_learning", step, message, suggestion, values)

    # ---- validation evals -------------------------------------------------------------------

    def _observe_valid(self, event: dict) -> list[dict]:
        """Validation evals average many pairs already, so they are judged one by one."""
        t = self.thresholds
        pairs = finite_number(event.get("pairs"))
        if pairs is not None and pairs < t.valid_min_pairs:
            return []
        step = int(event.get("step", 0) or 0)
        accuracy = finite_number(event.get("rewards/accuracies"))
        margin = finite_number(event.get("rewards/margins"))
        loss = finite_number(event.get("loss"))
        found = []
        swapped = self._valid_orientation(step, accuracy, margin)
        if swapped:
            self._valid_swapped = True
            found.append(swapped)
        # One eval is still a sample; a real decline shows on consecutive evals.
        overfit = self._overfitting(step, accuracy, loss)
        self._overfit_streak = self._overfit_streak + 1 if overfit else 0
        if overfit and self._overfit_streak >= t.overfit_evals:
            found.append(overfit)
        if accuracy is not None and (self._valid_best is None or accuracy > self._valid_best[0]):
            self._valid_best = (accuracy, step)
        if loss is not None and (self._valid_lowest_loss is None or loss < self._valid_lowest_loss):
            self._valid_lowest_loss = loss
        return self._raise(found)

    def _valid_orientation(
        self, step: int, accuracy: float | None, margin: float | None
    ) -> dict | None:
        t = self.thresholds
        # Before training moves every reward is 0 and ties count as misses (accuracy 0), so
        # an early eval, or one with no negative margin, says nothing about orientation.
        if self._steps_seen < t.warmup_steps or accuracy is None or margin is None:
            return None
        if accuracy > t.orientation_valid_accuracy or margin >= 0:
            return None
        message = (
            f"Validation accuracy is {accuracy:.2f} (margin {margin:.3f}) at step {step}: the "
            f"model prefers the rejected validation answers far more often than chance, "
            f"which points to chosen and rejected being swapped in that data."
        )
        suggestion = (
            "Check a few validation records: chosen and rejected look swapped in the "
            "validation file or in how its fields are mapped in the config."
        )
        values = {"rewards/accuracies": accuracy, "rewards/margins": margin}
        return _finding("orientation", step, message, suggestion, values)

    def _overfitting(self, step: int, accuracy: float | None, loss: float | None) -> dict | None:
        t = self.thresholds
        # A swapped validation set gets worse as training works; that is not overfitting.
        if self._valid_swapped or self._valid_best is None or self._valid_lowest_loss is None:
            return None
        train_accuracy = self._smoothed("rewards/accuracies")
        if None in (train_accuracy, accuracy, loss):
            return None
        best, best_step = self._valid_best
        lowest = self._valid_lowest_loss
        if (
            train_accuracy < t.overfit_train_accuracy
            or best - accuracy < t.overfit_valid_accuracy_drop
            or loss < lowest * (1 + t.overfit_valid_loss_rise)
        ):
            return None
        message = (
            f"Train accuracy is {train_accuracy:.2f} but validation accuracy fell from its "
            f"best {best:.2f} (step {best_step}) to {accuracy:.2f} and validation loss rose "
            f"from {lowest:.4f} to {loss:.4f}: the adapter is memorising the training pairs."
        )
        suggestion = (
            f"Use the checkpoint from around step {best_step}, train for fewer steps or "
            f"epochs, lower the learning rate, raise beta or LoRA dropout, or add data."
        )
        values = {
            "train_accuracy": train_accuracy,
            "valid_accuracy": accuracy,
            "best_valid_accuracy": best,
            "best_valid_step": best_step,
            "valid_loss": loss,
            "lowest_valid_loss": lowest,
        }
        return _finding("overfitting", step, message, suggestion, values)


def check_events(events: Sequence[dict], thresholds: HealthThresholds | None = None) -> list[dict]:
    """Replay a whole event stream (a finished run in `mlx-dpo view`) and return its findings
    in stream order. Settings come from the first run_start. `health` events already in the
    stream are kept as they are, and their kinds are not checked again; those of checks that
    are off (severity "off") are not findings."""
    run_start = next((e for e in events if e.get("event") == "run_start"), None)
    monitor = HealthMonitor.from_run_start(run_start, thresholds)
    # Marked up front: the stream holds each finding after the step that raised it, so a
    # replay would otherwise raise it again one event before reaching it.
    written = [e for e in events if e.get("event") == "health" and e.get("severity") != OFF]
    monitor.raised.update(str(e.get("kind")) for e in written)
    findings = []
    for event in events:
        if event.get("event") == "health":
            if event.get("severity") != OFF:
                findings.append(finding_from_event(event))
        else:
            findings.extend(monitor.observe(event))
    return findings


def summarize(findings: Sequence[dict]) -> str:
    """A short summary for the end of a run: one line a finding, errors first. Checks that
    are off (severity "off") are not findings and are left out."""
    findings = [f for f in findings if f.get("severity") != OFF]
    if not findings:
        return "No problems seen."
    errors = sum(1 for f in findings if f.get("severity") == "error")
    warnings = len(findings) - errors
    counts = [
        f"{n} {word}{'s' if n != 1 else ''}"
        for n, word in ((errors, "error"), (warnings, "warning"))
        if n
    ]
    lines = [f"Run health: {' and '.join(counts)}."]
    ordered = sorted(findings, key=lambda f: (f.get("severity") != "error", f.get("step", 0)))
    for f in ordered:
        title = KIND_TITLES.get(f.get("kind", ""), f.get("kind", ""))
        lines.append(
            f"- {f.get('severity', 'warning')} at step {f.get('step', 0)}, {title}: "
            f"{f.get('message', '')} Fix: {f.get('suggestion', '')}"
        )
    return "\n".join(lines)
