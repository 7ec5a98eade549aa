"""`mlx-dpo view RUN_DIR`: the dashboard on a run directory, live or finished."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mlx_dpo.errors import UserError
from mlx_dpo.events import METRICS_FILE
from mlx_dpo.rounds import ROUNDS_FILE, round_dir


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser = sub.add_parser("view", help="the dashboard on a run directory (live or finished)")
    parser.add_argument("run_dir", help="a run directory, or the folder of train --rounds")
    return parser


def latest_round(folder: Path) -> Path:
    """The folder of `train --rounds` stands for its latest round that has begun training."""
    if not (folder / ROUNDS_FILE).is_file():
        return folder
    number = 1
    while (round_dir(folder, number + 1) / METRICS_FILE).is_file():
        number += 1
    return round_dir(folder, number)


def run(args: argparse.Namespace) -> int:
    run_dir = latest_round(Path(args.run_dir))
    if not (run_dir / METRICS_FILE).is_file():
        raise UserError(f"{run_dir}: not a run directory (no {METRICS_FILE})")
    # Textual loads only when a dashboard is shown, not for every command.
    from mlx_dpo.tui.app import run_dashboard

    return run_dashboard(run_dir)
