"""How answers are sampled: the settings and their defaults, checked as flags give them.

Plain Python (the CLI's flags and the collect screen read it without loading MLX); the
sampling itself is mlx_dpo/generation.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from mlx_dpo.errors import UserError

DEFAULT_TEMP = 0.8
DEFAULT_TOP_P = 0.95
DEFAULT_MAX_TOKENS = 256
# `mlx-dpo pairs`: answers sampled per prompt (every two of them are compared).
DEFAULT_CANDIDATES = 4


@dataclass(frozen=True)
class Sampling:
    """temp 0 is greedy; top_p 0 or 1 is off (mlx-lm's make_sampler convention)."""

    temp: float = DEFAULT_TEMP
    top_p: float = DEFAULT_TOP_P
    max_tokens: int = DEFAULT_MAX_TOKENS

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return describe_sampling(self.as_dict())


def describe_sampling(sampling: dict[str, Any]) -> str:
    """`temp 0.8, top-p 0.95, up to 256 tokens` (or `greedy, ...`)."""
    temp, top_p, max_tokens = sampling["temp"], sampling["top_p"], sampling["max_tokens"]
    if temp == 0:
        return f"greedy, up to {max_tokens} tokens"
    top = f", top-p {top_p:g}" if 0 < top_p < 1 else ""
    return f"temp {temp:g}{top}, up to {max_tokens} tokens"


def check_sampling(temp: float, top_p: float, max_tokens: int) -> Sampling:
    """The settings as flags give them, or a UserError naming the flag."""
    if temp < 0:
        raise UserError(f"--temp must be >= 0, got {temp}")
    if not 0 <= top_p <= 1:
        raise UserError(f"--top-p must be between 0 and 1, got {top_p}")
    if max_tokens <= 0:
        raise UserError(f"--max-tokens must be > 0, got {max_tokens}")
    return Sampling(temp, top_p, max_tokens)
