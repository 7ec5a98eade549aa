"""The catalog of losses agrees with what users read: README's loss table and docs/health.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlx_dpo.events import EXTRA_METRIC_NAMES
from mlx_dpo.loss_catalog import (
    CATALOG,
    LOSSES,
    extra_metrics,
    is_unpaired,
    metric_names,
    needs_reference,
    reward_kind,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", LOSSES)
def test_readme_lists_every_loss_with_when_to_use_it(name):
    info = CATALOG[name]
    rows = [
        line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `")
    ]
    (row,) = [r for r in rows if r.startswith(f"| `{name}` |")]
    assert info.when in row and info.paper in row
    assert ("| yes |" in row) == info.needs_reference


@pytest.mark.parametrize("name", LOSSES)
def test_health_docs_name_every_loss(name):
    assert f"`{name}`" in (ROOT / "docs" / "health.md").read_text()


def test_reference_and_rewards_of_lists():
    assert needs_reference(["sigmoid", "sft"]) and not needs_reference(["simpo", "sft"])
    assert reward_kind(["sigmoid", "sft"]) == "ratio"
    assert reward_kind(["simpo", "orpo"]) == "mean_logp"
    assert reward_kind("cpo") == "sum_logp"
    assert reward_kind(["simpo", "cpo"]) == "none"  # the config refuses this mix


def test_the_extra_metrics_are_the_objectives():
    """What each loss's objective reports beyond METRIC_NAMES (mlx_dpo/losses.py) is what
    the trainer streams (events.EXTRA_METRIC_NAMES), in the catalog's order."""
    import mlx.core as mx

    from mlx_dpo.losses import (
        LossSettings,
        PairLogps,
        UnpairedLogps,
        initial_loss_state,
        kto_objective,
        pair_objective,
    )

    assert set(EXTRA_METRIC_NAMES) == {m for n in LOSSES for m in extra_metrics(n)}
    a = lambda *v: mx.array(v)  # noqa: E731
    pairs = PairLogps(a(-3.5, -4.0), a(-6.0, -5.0), a(-4.0, -4.5), a(-5.0, -5.2), a(4.0, 5.0),
                      a(5.0, 6.0))  # fmt: skip
    for loss in [n for n in LOSSES if n not in ("kto", "exo_pair", "sft")] + [["sigmoid", "sft"]]:
        names = loss if isinstance(loss, list) else [loss]
        settings = LossSettings(losses=tuple(names))
        result = pair_objective(pairs, settings, initial_loss_state(settings))
        assert tuple(result.metrics) == metric_names(loss)[1:], loss
    unpaired = UnpairedLogps(
        a(-3.0, -4.0), a(-3.5, -3.8), a(1.0, 0.0), a(-6.0, -5.0), a(-6.2, -5.1)
    )
    result = kto_objective(unpaired, LossSettings(losses=("kto",)))
    assert tuple(result.metrics) == metric_names("kto")[1:]
    assert is_unpaired("kto") and not is_unpaired(["sigmoid", "sft"])
