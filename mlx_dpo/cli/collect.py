"""`mlx-dpo collect`: a person judges two answers per prompt on a screen (tui/collect) while
the model runs in a worker process (mlx_dpo/collect_worker.py). It writes OUT.jsonl, which
`mlx-dpo train --data OUT.jsonl` trains on, and continues where it stopped when run again.
The flags it shares with `mlx-dpo pairs` are declared here once."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mlx_dpo.adapter_config import read_adapter_config
from mlx_dpo.cli.flags import PROMPTS_HELP, add_sampling, add_trust_remote_code, seed_number
from mlx_dpo.cli.terminal import terminal_attached
from mlx_dpo.errors import UserError
from mlx_dpo.journal import VerdictFiles, check_out_path
from mlx_dpo.prompts import Prompt, load_prompts, unique_prompts
from mlx_dpo.sampling import check_sampling


def add_sampling_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompts", metavar="PROMPTS", help=PROMPTS_HELP)
    parser.add_argument("--out", required=True, help="the pairs file to write (.jsonl)")
    parser.add_argument("--model", help="model to answer (default: the adapter's base model)")
    parser.add_argument("--split", help="with a data folder: train (default), valid or test")
    add_sampling(parser)
    parser.add_argument("--seed", type=seed_number, default=0, help="base sampling seed (0)")
    add_trust_remote_code(parser)


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "collect", help="judge two answers per prompt yourself; writes preference pairs"
    )
    add_sampling_flags(parser)
    parser.add_argument(
        "--adapter-path",
        help="a trained run: show the reference's answer (A) beside the policy's (B)",
    )
    return parser


def read_prompts(args: argparse.Namespace) -> list[Prompt]:
    prompts, repeats = unique_prompts(load_prompts(args.prompts, args.split))
    if repeats:
        print(f"{args.prompts}: {repeats} repeated prompt(s) appear once", file=sys.stderr)
    return prompts


def check_model_flags(args: argparse.Namespace) -> None:
    if not args.model and not args.adapter_path:
        raise UserError("--model is needed (or an --adapter-path that records its model)")
    if args.adapter_path:
        read_adapter_config(args.adapter_path)  # a missing or broken folder fails before loading


def model_name(model: str | None) -> str | None:
    """A local model folder as an absolute path (the same folder named another way is the
    same model); a hub id as it is."""
    if model and Path(model).expanduser().exists():
        return str(Path(model).expanduser().resolve())
    return model


def worker_command(args: argparse.Namespace) -> list[str]:
    command = [sys.executable, "-m", "mlx_dpo.collect_worker"]
    if args.model:
        command += ["--model", args.model]
    if args.adapter_path:
        command += ["--adapter-path", args.adapter_path]
    command += ["--temp", str(args.temp), "--top-p", str(args.top_p)]
    command += ["--max-tokens", str(args.max_tokens)]
    if args.trust_remote_code:
        command.append("--trust-remote-code")
    return command


def run(args: argparse.Namespace) -> int:
    out = check_out_path(args.out)
    sampling = check_sampling(args.temp, args.top_p, args.max_tokens)
    if sampling.temp == 0 and not args.adapter_path:
        raise UserError(
            "--temp 0 (greedy) gives the same answer twice; two samples need --temp > 0 "
            "(or --adapter-path to compare the reference with the policy)"
        )
    check_model_flags(args)
    prompts = read_prompts(args)
    with VerdictFiles(out) as files:  # a broken file is reported before anything starts
        if not terminal_attached():
            raise UserError("collect is interactive: run it in a terminal")
        # The app (Textual) is loaded only when it is shown.
        from mlx_dpo.tui.collect import run_collect_app

        return run_collect_app(
            prompts,
            files,
            worker_command(args),
            seed=args.seed,
            model=model_name(args.model),
            adapter=args.adapter_path,
        )
