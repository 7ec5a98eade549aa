"""OpenBLAS is loaded before MLX on Linux, and can be turned off."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mlx_dpo import platform

PROBE = "import mlx_dpo, mlx_dpo.platform as p; print(p._loaded_blas)"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
def test_openblas_is_loaded_and_can_be_disabled():
    env = {k: v for k, v in os.environ.items() if k != platform.DISABLE_BLAS_ENV}
    loaded = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env)
    assert "openblas" in loaded.stdout.lower()
    env[platform.DISABLE_BLAS_ENV] = "1"
    disabled = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=env
    )
    assert disabled.stdout.strip() == "None"


def test_metal_only_calls_are_guarded():
    platform.set_wired_limit()  # no Metal here: must not raise
    assert platform.device_memory_limit() > 0
