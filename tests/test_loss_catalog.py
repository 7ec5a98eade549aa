"""The catalog of losses agrees with what users read: README's loss table and docs/health.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlx_dpo.loss_catalog import CATALOG, LOSSES, needs_reference, reward_kind

ROOT = Path(__file__).resolve().parents[1]


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
