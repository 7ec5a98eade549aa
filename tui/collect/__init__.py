"""`mlx-dpo collect`: the screen where a person judges two answers per prompt."""

from .app import CollectApp, run_collect_app

__all__ = ["CollectApp", "run_collect_app"]
