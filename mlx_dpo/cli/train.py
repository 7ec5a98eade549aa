"""`mlx-dpo train`: the configuration from YAML, flags and a resumed run; the memory plan
(--plan); the built-in demo (no arguments); the run itself, headless or with the dashboard.

The trainer (MLX) and the dashboard (Textual) are imported inside the functions that start
them, so `mlx-dpo --help` and the other commands do not load either.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from mlx_dpo import demo, paths, rundir
from mlx_dpo.cli import rounds
from mlx_dpo.cli.exit_codes import EXIT_FAILED, EXIT_USER_ERROR
from mlx_dpo.cli.flags import add_rounds_flags, add_train_flags, train_flag_values
from mlx_dpo.cli.terminal import terminal_attached
from mlx_dpo.config import (
    TrainConfig,
    build_config,
    locate_problems,
    read_yaml,
    save_config,
    yaml_key_places,
)
from mlx_dpo.errors import UserError
from mlx_dpo.events import CONFIG_FILE, DASHBOARD_PID_ENV, LAUNCH_CONFIG_FILE, LOG_FILE, read_status


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser = sub.add_parser("train", help="train LoRA adapters with DPO (no arguments: the demo)")
    parser.add_argument(
        "config", nargs="?", help="YAML config (keys = flag names with underscores)"
    )
    add_train_flags(parser)
    add_rounds_flags(parser)
    parser.add_argument("--resume", action="store_true", help="continue the run in --adapter-path")
    parser.add_argument("--no-tui", action="store_true", help="plain progress lines, no dashboard")
    parser.add_argument(
        "--plan",
        action="store_true",
        help="print the memory plan (after loading the model and data) and exit",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    if rounds.wanted(args):  # iterative DPO: cli/rounds.py
        return rounds.run(args, use_tui=not args.no_tui and is_terminal())
    config, is_demo = train_config(args)
    if args.plan:
        if is_demo:
            config.model = str(demo.ensure_demo_model(print))
        return plan_command(config)
    run_dir = Path(config.adapter_path)
    # Before anything loads or the dashboard opens: the folder is ours to write, no trainer is
    # running on it, and a resume changes nothing the run trains toward (the trainer checks
    # again under its lock).
    rundir.prepare_for_training(run_dir, config.init_adapter)
    # config.yaml is written once the model and data are loaded: before that (a bad input, or a
    # kill while loading) nothing of a run is here, and starting again is the way on.
    if not args.resume and (run_dir / CONFIG_FILE).exists():
        raise UserError(
            f"{run_dir}: already holds a run; use --resume to continue it or another --adapter-path"
        )
    if args.resume:
        rundir.check_resumed_config(run_dir, config)
    use_tui = not args.no_tui and is_terminal()
    if is_demo:
        return run_demo(config, use_tui)
    return launch(config, use_tui, resume=args.resume)


def train_config(args: argparse.Namespace) -> tuple[TrainConfig, bool]:
    """(config, is_demo): a resumed run's saved config, then the YAML file, then the flags
    (each wins over the one before); the demo's settings when none of them names a model or
    data."""
    flags = train_flag_values(args)
    yaml_values: dict[str, Any] = {}
    places: dict[str, str] = {}  # where each setting came from, for its problems
    if args.resume:
        if not args.adapter_path:
            raise UserError("--resume needs --adapter-path (the run directory to continue)")
        saved = Path(args.adapter_path) / CONFIG_FILE
        if not saved.is_file():
            raise UserError(
                f"{args.adapter_path}: no run has started here (no {CONFIG_FILE}); "
                "run the same command without --resume"
            )
        # Running a model's own code is allowed by the person at the keyboard, each time: a
        # run directory (perhaps copied from elsewhere) cannot grant it (run_record ignores it).
        yaml_values = read_yaml(saved, run_record=True)
        places = yaml_key_places(saved)
    if args.config:
        yaml_values.update(read_yaml(args.config))
        places.update(yaml_key_places(args.config))
    is_demo = (
        not args.config and not args.resume and flags["model"] is None and flags["data"] is None
    )
    if is_demo:
        yaml_values = demo.demo_config_values()
        if flags["iters"] is not None:
            yaml_values.pop("epochs")
    places.update({key: f"--{key.replace('_', '-')}" for key, v in flags.items() if v is not None})
    try:
        config = build_config(yaml_values, flags)
    except UserError as err:
        raise locate_problems(err, places) from None
    if config.adapter_path is None:
        config.adapter_path = default_run_dir()
    return config, is_demo


def default_run_dir() -> str:
    return paths.expand_local(str(Path("adapters") / time.strftime("run-%Y%m%d-%H%M%S")), "")


def is_terminal() -> bool:
    """Whether a dashboard is shown by default: a terminal is attached and CI is unset."""
    return terminal_attached() and not os.environ.get("CI")


def launch(config: TrainConfig, use_tui: bool, resume: bool = False) -> int:
    if use_tui:
        return run_with_dashboard(config, resume=resume)
    return run_headless(config, resume=resume)


def run_demo(config: TrainConfig, use_tui: bool) -> int:
    """The demo: its model and config, the test split before, the run, what changed after;
    only for a finished run (one left running, paused or stopped says where its results will
    be instead)."""
    config = demo.prepare_demo(config)
    before = demo.test_report(config, adapter_path=None, examples=0)
    code = launch(config, use_tui)
    if code != 0:
        return code
    demo.report_or_defer(config, before, read_status(config.adapter_path))
    return 0


def plan_command(config: TrainConfig, say: Callable[[str], None] = print) -> int:
    """`mlx-dpo train --plan`: load the model and the data (the plan needs their real shapes
    and the longest batch), print the plan, train nothing."""
    from mlx_dpo.memory.arithmetic import format_plan
    from mlx_dpo.memory.guard import plan_for_session, resolve_auto_batch
    from mlx_dpo.session import open_session

    session = open_session(config, splits=("train", "valid"))
    if config.batch_size == "auto":
        config = resolve_auto_batch(session, config)
        say(
            f"--batch-size auto: batch {config.batch_size} with gradient accumulation "
            f"{config.grad_accumulation}"
        )
    for line in format_plan(plan_for_session(session, config)):
        say(line)
    return 0


def run_headless(config: TrainConfig, resume: bool = False) -> int:
    """The run in this process, with plain progress lines; exit 1 when it failed."""
    from mlx_dpo.trainer.run import RunOptions, train

    status = train(
        config,
        RunOptions(Path(config.adapter_path), resume=resume, on_line=partial(print, flush=True)),
    )
    if status == "completed":
        print(
            f"done. chat with it: mlx_lm.chat --model {config.model} --adapter-path "
            f"{paths.shown(config.adapter_path)}"
        )
    return EXIT_FAILED if status == "failed" else 0


def run_with_dashboard(config: TrainConfig, resume: bool = False) -> int:
    """The trainer in a child process (its own session, so closing the dashboard can leave it
    running), the dashboard in this one."""
    from mlx_dpo.tui.app import run_dashboard

    run_dir = Path(config.adapter_path)
    run_dir.mkdir(parents=True, exist_ok=True)
    launch_config = run_dir / LAUNCH_CONFIG_FILE
    save_config(config, launch_config)
    command = [sys.executable, "-m", "mlx_dpo.cli", "train", str(launch_config), "--no-tui"]
    if config.trust_remote_code:  # granted on this command line; the file cannot say it
        command.append("--trust-remote-code")
    if resume:
        command += ["--resume", "--adapter-path", str(run_dir)]
    # The trainer counts this process as its dashboard while it lives (trainer/control.py).
    env = {**os.environ, "PYTHONUNBUFFERED": "1", DASHBOARD_PID_ENV: str(os.getpid())}
    with open(run_dir / LOG_FILE, "ab") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
    code = run_dashboard(run_dir, process)
    if process.poll() is not None and process.returncode not in (0, None):
        tail = (run_dir / LOG_FILE).read_text(errors="replace").strip().splitlines()[-5:]
        print("\n".join(tail), file=sys.stderr)
        return EXIT_USER_ERROR if process.returncode == EXIT_USER_ERROR else EXIT_FAILED
    return code
