"""`mlx-dpo train --rounds N --prompts P --judge J --adapter-path PARENT`: iterative DPO
(mlx_dpo/rounds.py runs the rounds). Here: the rounds' flags read and checked, the prompts
read before anything starts (a bad file is exit 2 with its file and line), and each round's
training shown with the dashboard when a person is at a terminal.

The flags are train-command flags (cli/flags.py add_rounds_flags), not TrainConfig fields: a
TrainConfig is one run, and every round's run is an ordinary one; the rounds are the driver
above them. Each is refused without --rounds rather than ignored.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from mlx_dpo.cli.flags import ROUNDS_FLAG_KEYS, train_flag_values
from mlx_dpo.config import TrainConfig, build_config, read_yaml
from mlx_dpo.errors import UserError
from mlx_dpo.events import LOG_FILE
from mlx_dpo.prompts import load_prompts, unique_prompts
from mlx_dpo.rounds import ChildProcesses, Round, RoundsSettings, check_rounds, run_rounds
from mlx_dpo.sampling import (
    DEFAULT_CANDIDATES,
    DEFAULT_MAX_TOKENS,
    DEFAULT_TEMP,
    DEFAULT_TOP_P,
    check_sampling,
)


def wanted(args: argparse.Namespace) -> bool:
    """Whether the train command runs rounds; a rounds flag without --rounds is refused."""
    if args.rounds is not None:
        return True
    given = [key for key in ROUNDS_FLAG_KEYS if getattr(args, key) is not None]
    if given:
        flags = ", ".join("--" + key.replace("_", "-") for key in given)
        raise UserError(f"{flags}: only with --rounds N (iterative DPO)")
    return False


def rounds_settings(args: argparse.Namespace) -> RoundsSettings:
    def value(name: str, default):
        given = getattr(args, name)
        return default if given is None else given

    if not args.prompts:
        raise UserError("--rounds needs --prompts (the prompts every round answers)")
    if not args.judge:
        raise UserError("--rounds needs --judge (the model that compares the answers)")
    sampling = check_sampling(
        value("temp", DEFAULT_TEMP),
        value("top_p", DEFAULT_TOP_P),
        value("max_tokens", DEFAULT_MAX_TOKENS),
    )
    return RoundsSettings(
        rounds=args.rounds,
        prompts=args.prompts,
        judge=args.judge,
        candidates=value("candidates", DEFAULT_CANDIDATES),
        sampling=sampling,
        judge_prompt=args.judge_prompt,
    )


def rounds_config(args: argparse.Namespace) -> TrainConfig:
    """The training settings every round shares: the YAML file, then the flags."""
    if args.resume:
        raise UserError(
            "--rounds continues by itself: run the same command again, without --resume"
        )
    if args.plan:
        raise UserError("--plan with --rounds: plan one round's run with train --plan --data")
    yaml_values = read_yaml(args.config) if args.config else {}
    return build_config(yaml_values, train_flag_values(args))


def run(args: argparse.Namespace, use_tui: bool) -> int:
    settings = rounds_settings(args)
    config = rounds_config(args)
    check_rounds(config, settings)
    # Every problem of the prompts file (file:line) before anything starts or loads.
    prompts, repeats = unique_prompts(load_prompts(settings.prompts))
    if repeats:
        print(f"{settings.prompts}: {repeats} repeated prompt(s) appear once", file=sys.stderr)
    print(f"rounds: {len(prompts)} prompts from {settings.prompts}", flush=True)
    phases = DashboardPhases() if use_tui else ChildProcesses()
    return run_rounds(config, settings, phases, say=lambda line: print(line, flush=True))


class DashboardPhases(ChildProcesses):
    """The pairs on the console; each round's training with the dashboard, which closes by
    itself when a round that is not the last has finished (the next round's pairs follow)."""

    def train(self, round_: Round, argv: list[str]) -> int:
        # Textual is loaded only when a dashboard is shown.
        from mlx_dpo.tui.app import run_dashboard

        run_dir = round_.run_dir
        with open(run_dir / LOG_FILE, "ab") as log:
            process = subprocess.Popen(
                self.command(argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # the dashboard's Ctrl-C stops it through control.jsonl
                env=self.environment(),
            )
        last = round_.number == round_.rounds
        code = run_dashboard(run_dir, process, close_when_finished=not last)
        if process.poll() is None:
            return code  # left running: the rounds say so and end; the trainer goes on
        if process.returncode != 0:
            tail = (run_dir / LOG_FILE).read_text(errors="replace").strip().splitlines()[-5:]
            print("\n".join(tail), file=sys.stderr)
        return process.returncode


__all__ = ["DashboardPhases", "run", "wanted"]
