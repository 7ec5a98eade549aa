"""The configuration (mlx_dpo/config.py)."""

from __future__ import annotations

import pytest

from mlx_dpo.config import build_config
from mlx_dpo.errors import UserError


def test_config_accepts_auto_and_checks_the_limit():
    assert build_config({}, {"batch_size": "auto"}).batch_size == "auto"
    with pytest.raises(UserError) as err:
        build_config({"batch_size": "big"}, {})
    assert "'batch_size' must be an integer or 'auto', got 'big'" in str(err.value)
    with pytest.raises(UserError) as err:
        build_config({}, {"memory_limit_gb": 0})
    assert "'memory_limit_gb' must be > 0" in str(err.value)
    assert build_config({"memory_limit_gb": 8}, {}).memory_limit_gb == 8.0
