"""What the dashboard shows where the run's loss changes the meaning of a number.

Paired losses with a reference: pair accuracy and the log-ratio to the reference, as TRL logs
them. Reference-free losses (simpo, orpo, cpo) have no reference, so no log-ratio (`kl` is
null): ORPO shows its chosen NLL there instead, the others say "no reference". KTO has no
pairs: its `rewards/accuracies` is the share of completions on the side of its reference
point that the loss pushes them to (desirable above, undesirable below), and its `kl` is that
reference point. Plain Python (mlx_dpo/loss_catalog.py says which loss is which).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .. import loss_catalog
from ..events import KL, NLL_LOSS, REWARDS_ACCURACIES
from .panels import ChartSpec


@dataclass(frozen=True)
class LossView:
    accuracy_title: str
    accuracy_meaning: str
    log_ratio_title: str  # the tile's
    log_ratio_metric: str  # the series the log-ratio tile and chart show
    log_ratio_detail: str  # the tile's second line
    log_ratio_chart_title: str | None = None  # None: the chart's own
    log_ratio_meaning: str | None = None  # None: the chart's own

    def adapt(self, spec: ChartSpec) -> ChartSpec:
        """A chart of the dashboard as this loss shows it."""
        metrics = {line.metric for line in spec.lines}
        if REWARDS_ACCURACIES in metrics:
            return dataclasses.replace(
                spec, title=self.accuracy_title, meaning=self.accuracy_meaning
            )
        if KL in metrics:
            lines = tuple(
                dataclasses.replace(line, metric=self.log_ratio_metric) for line in spec.lines
            )
            return dataclasses.replace(
                spec,
                title=self.log_ratio_chart_title or spec.title,
                meaning=self.log_ratio_meaning or spec.meaning,
                lines=lines,
            )
        return spec


PAIRS = LossView(
    "Accuracy", "share of pairs whose chosen reward beats the rejected one.", "Log-ratio", KL,
    "π − ref",
)  # fmt: skip
KTO = LossView(
    "Right side",
    "KTO has no pairs: share of completions on the side of its reference point the loss "
    "pushes them to (desirable above it, undesirable below).",
    "KL point",
    KL,
    "KTO's z",
    "KTO reference point z",
    "KTO's reference point z: the batch's mean log-ratio of mismatched prompt/completion "
    "rows, clamped at 0.",
)
ORPO = LossView(
    PAIRS.accuracy_title, PAIRS.accuracy_meaning, "Chosen NLL", NLL_LOSS, "no reference",
    "Chosen NLL (orpo)",
    "ORPO has no reference model: the chosen answers' mean token NLL, its SFT part.",
)  # fmt: skip
NO_REFERENCE = dataclasses.replace(
    PAIRS,
    log_ratio_detail="no reference",
    log_ratio_meaning="this loss uses no reference model: there is no log-ratio (kl is null).",
)


def loss_view(loss: Any) -> LossView:
    """The view of a run's loss (run_start's `loss`: a name or a list; unknown: pairs)."""
    if isinstance(loss, str):
        names: Sequence[str] = (loss,)
    elif isinstance(loss, list):
        names = [str(n) for n in loss]
    else:
        return PAIRS
    if any(n not in loss_catalog.CATALOG for n in names):
        return PAIRS
    if loss_catalog.is_unpaired(names):
        return KTO
    if not loss_catalog.needs_reference(names):
        return ORPO if "orpo" in names else NO_REFERENCE
    return PAIRS
