"""The built-in default: `mlx-dpo train` with no arguments (mlx_dpo/demo.py). Its
configuration and the order of its steps around the run are checked in test_cli_train.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from mlx_dpo import demo
from mlx_dpo.audit import audit, length_bias_figures
from mlx_dpo.config import build_config
from mlx_dpo.health import HealthMonitor


def test_demo_data_passes_the_audit():
    result = audit(demo.demo_data_dir())
    assert set(result["splits"]) == {"train", "valid", "test"}
    assert result["train"]["valid_pairs"] >= 150
    assert result["train"]["invalid_records"] == 0
    assert result["warnings"] == []
    assert HealthMonitor().length_bias(**length_bias_figures(result["train"])) == []


def test_the_shipped_model_matches_the_demo_data():
    # A changed data file or warm-up setting makes the shipped model stale: it would then be
    # rebuilt on first use (slowly). Rebuild and ship it again: see mlx_dpo/demo.py.
    assert demo.demo_model_path() == demo.SHIPPED_MODEL


def test_prepare_demo_points_the_config_at_the_demo_model():
    config = build_config({**demo.demo_config_values(), "adapter_path": "adapters/run-x"}, {})
    lines = []
    prepared = demo.prepare_demo(config, say=lines.append)
    assert prepared.model == str(demo.SHIPPED_MODEL)
    assert {**prepared.to_dict(), "model": None} == {**config.to_dict(), "model": None}
    assert lines[0].startswith("mlx-dpo demo: teaching a tiny model (demo_model)")
    # The run directory is said absolute (a relative one would be copied somewhere else).
    assert f"run directory: {os.path.abspath('adapters/run-x')}" in lines[1]


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
