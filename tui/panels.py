"""What each chart draws, and the sets of charts the keys 1-3 switch between.

Plain data and functions over a `RunModel` (no widgets), so what a chart shows is tested
without a terminal. `chart_data(spec, model, weight)` builds what `MetricChart` draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from . import palette
from .run_model import RunModel


@dataclass
class ChartLine:
    """One line of a chart. `raw` is the unsmoothed series, drawn faint behind the line;
    eval lines are few points and get a marker on each."""

    label: str
    steps: Sequence[float]
    values: Sequence[float]
    color: str
    markers: bool = False
    raw: Sequence[float] | None = None


@dataclass
class ChartData:
    lines: list[ChartLine] = field(default_factory=list)
    checkpoints: list[int] = field(default_factory=list)
    subtitle: str = ""


@dataclass(frozen=True)
class LineSpec:
    """A line: a training series (smoothed, raw faint behind) or an eval series (markers)."""

    label: str
    metric: str
    color: str
    source: str = "train"  # "train" | "eval"
    # Exact schedules and counters (learning rate, peak memory) are drawn as they are: an
    # EMA would only make them lag.
    smooth: bool = True


@dataclass(frozen=True)
class ChartSpec:
    chart_id: str
    title: str
    lines: tuple[LineSpec, ...]
    # What the chart means, for the help screen.
    meaning: str
    y_range: tuple[float, float] | None = None


@dataclass(frozen=True)
class PanelSet:
    key: str
    name: str
    charts: tuple[ChartSpec, ...]


# The first line listed wins a cell both lines pass through (its dots and the other's are
# both drawn): chosen first, the signal of the chosen-collapse warning.
PREFERENCES = PanelSet(
    "1",
    "Preferences",
    (
        ChartSpec(
            "chart-rewards",
            "Rewards",
            (
                LineSpec("chosen", "rewards/chosen", palette.CHOSEN),
                LineSpec("rejected", "rewards/rejected", palette.REJECTED),
            ),
            "β × (policy − reference) log-prob of the chosen and rejected answers: chosen "
            "should rise above rejected; both falling is the chosen-collapse sign.",
        ),
        ChartSpec(
            "chart-margin",
            "Reward margin",
            (LineSpec("margin", "rewards/margins", palette.MARGIN),),
            "chosen − rejected reward: grows while the policy learns the preference.",
        ),
        ChartSpec(
            "chart-accuracy",
            "Accuracy",
            (
                LineSpec("train", "rewards/accuracies", palette.TRAIN),
                LineSpec("eval", "rewards/accuracies", palette.EVAL, "eval"),
            ),
            "share of pairs whose chosen reward beats the rejected one.",
            (0.0, 1.0),
        ),
        ChartSpec(
            "chart-loss",
            "Loss",
            (
                LineSpec("train", "loss", palette.TRAIN),
                LineSpec("eval", "loss", palette.EVAL, "eval"),
            ),
            "the DPO loss (ln 2 = 0.693 at the start for sigmoid).",
        ),
    ),
)

LOG_PROBS = PanelSet(
    "2",
    "Log-probs & eval",
    (
        ChartSpec(
            "chart-logps",
            "Log-probs",
            (
                LineSpec("chosen", "logps/chosen", palette.CHOSEN),
                LineSpec("rejected", "logps/rejected", palette.REJECTED),
            ),
            "the policy's log-probability of each answer (summed over its tokens): a "
            "falling chosen line is the collapse signal.",
        ),
        ChartSpec(
            "chart-log-ratio",
            "Log-ratio π−ref",
            (LineSpec("mean", "kl", palette.LOG_RATIO),),
            "mean policy − reference log-ratio of the batch (nats a sequence; `kl` in the "
            "stream): how far the policy moved from the reference.",
        ),
        ChartSpec(
            "chart-eval-rewards",
            "Eval rewards",
            (
                LineSpec("chosen", "rewards/chosen", palette.CHOSEN, "eval"),
                LineSpec("rejected", "rewards/rejected", palette.REJECTED, "eval"),
            ),
            "rewards on the validation split at each evaluation.",
        ),
        ChartSpec(
            "chart-eval-margin",
            "Eval margin",
            (LineSpec("margin", "rewards/margins", palette.MARGIN, "eval"),),
            "reward margin on the validation split at each evaluation.",
        ),
    ),
)

OPTIMIZER = PanelSet(
    "3",
    "Optimizer & speed",
    (
        ChartSpec(
            "chart-lr",
            "Learning rate",
            (LineSpec("lr", "learning_rate", palette.OPTIMIZER, smooth=False),),
            "the schedule's learning rate at each step.",
        ),
        ChartSpec(
            "chart-grad-norm",
            "Grad norm",
            (LineSpec("norm", "grad_norm", palette.OPTIMIZER),),
            "global gradient norm before clipping: spikes come before divergence.",
        ),
        ChartSpec(
            "chart-step-time",
            "Seconds per step",
            (LineSpec("s/step", "seconds_per_step", palette.SPEED),),
            "the trainer's time for one optimizer step (pauses not counted).",
        ),
        ChartSpec(
            "chart-memory",
            "Peak memory GB",
            (LineSpec("peak", "peak_memory_gb", palette.MEMORY, smooth=False),),
            "MLX's peak memory since the first step.",
        ),
    ),
)

PANEL_SETS = (PREFERENCES, LOG_PROBS, OPTIMIZER)
# Key 4 shows the events log across the whole body.
LOG_PANEL_KEY = "4"


def chart_data(spec: ChartSpec, model: RunModel, weight: float) -> ChartData:
    """The lines of one chart: training series smoothed by `weight` (EMA; 0 is raw) with the
    raw series behind, eval series as they are. Copies: the series grow after this returns,
    and the chart draws later."""
    lines = []
    for line in spec.lines:
        if line.source == "eval":
            series = model.eval_series(line.metric)
            lines.append(
                ChartLine(line.label, list(series.steps), list(series.values), line.color, True)
            )
        else:
            series = model.train[line.metric]
            line_weight = weight if line.smooth else 0.0
            smoothed = list(series.smoothed(line_weight))
            raw = list(series.values) if line_weight > 0 else None
            lines.append(ChartLine(line.label, list(series.steps), smoothed, line.color, raw=raw))
    checkpoints = [step for step, _ in model.checkpoints]
    return ChartData(lines, checkpoints, smoothing_label(weight))


def smoothing_label(weight: float) -> str:
    return "raw" if weight <= 0 else f"EMA {weight:g}"
