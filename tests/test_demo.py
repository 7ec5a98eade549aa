"""The built-in default: `mlx-dpo train` with no arguments."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from mlx_dpo import demo
from mlx_dpo.audit import audit, length_bias_figures
from mlx_dpo.health import HealthMonitor


def test_demo_data_passes_the_audit():
    result = audit(demo.demo_data_dir())
    assert set(result["splits"]) == {"train", "valid", "test"}
    assert result["train"]["valid_pairs"] >= 150
    assert result["train"]["invalid_records"] == 0
    assert result["warnings"] == []
    assert HealthMonitor().length_bias(**length_bias_figures(result["train"])) == []


def test_the_default_configuration_is_the_documented_one():
    from mlx_dpo.cli import _train_config, build_parser

    config, is_demo = _train_config(build_parser().parse_args(["train"]))
    assert is_demo
    for key, value in demo.DEMO_SETTINGS.items():
        assert getattr(config, key) == value, key
    assert config.data == str(demo.demo_data_dir())


def test_the_shipped_model_matches_the_demo_data():
    # A changed data file or warm-up setting makes the shipped model stale: it would then be
    # rebuilt on first use (slowly). Rebuild and ship it again: see mlx_dpo/demo.py.
    assert demo.demo_model_path() == demo.SHIPPED_MODEL


@pytest.mark.slow
def test_the_demo_teaches_the_model(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mlx_dpo.cli", "train"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    before, after = map(float, re.search(r"\(log p\): ([\d.]+) -> ([\d.]+)", out).groups())
    assert before <= 0.7 and after >= 0.8
    accuracy = float(re.search(r"DPO reward accuracy: ([\d.]+)", out).group(1))
    assert accuracy >= 0.8
    reference, policy = map(
        int, re.search(r"reference (\d+)/\d+, trained policy (\d+)", out).groups()
    )
    assert policy > reference
    assert list((tmp_path / "adapters").glob("run-*/adapters.safetensors"))
