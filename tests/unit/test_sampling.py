"""Unit tests of mlx_dpo/sampling.py: the sampling settings, checked as flags give them, and
how they are described (the sampling itself: test_generation.py)."""

from __future__ import annotations

import pytest

from mlx_dpo.errors import UserError
from mlx_dpo.sampling import Sampling, check_sampling, describe_sampling


def test_sampling_flags_are_checked():
    assert check_sampling(0.7, 0.9, 5) == Sampling(0.7, 0.9, 5)
    for args, flag in (((-1, 0.9, 5), "--temp"), ((1, 1.5, 5), "--top-p"), ((1, 1, 0), "--max")):
        with pytest.raises(UserError, match=flag):
            check_sampling(*args)
    assert describe_sampling(Sampling(0.8, 0.95, 256).as_dict()) == (
        "temp 0.8, top-p 0.95, up to 256 tokens"
    )
    assert Sampling(0.0, 1.0, 9).describe() == "greedy, up to 9 tokens"
    assert Sampling(0.5, 1.0, 9).describe() == "temp 0.5, up to 9 tokens"
