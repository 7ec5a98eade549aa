"""What `mlx-dpo train` does with a terminal, with fake_trainer.py as the trainer: start it in
its own session (output to train.log), run the dashboard on its run directory, and exit with
the dashboard's code. For the end-to-end tests under tmux.

    python launch_dashboard.py RUN_DIR [fake trainer arguments...]
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mlx_dpo.tui.app import run_dashboard

from mlx_dpo.events import LOG_FILE

HERE = Path(__file__).parent


def main() -> int:
    run_dir = Path(sys.argv[1])
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOG_FILE, "ab") as log:
        trainer = subprocess.Popen(
            [sys.executable, str(HERE / "fake_trainer.py"), str(run_dir), *sys.argv[2:]],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return run_dashboard(run_dir, trainer)


if __name__ == "__main__":
    sys.exit(main())
