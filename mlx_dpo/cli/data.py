"""`mlx-dpo data audit`: what a preference data set holds before anything trains on it
(mlx_dpo/audit.py)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from mlx_dpo.cli.flags import DATA_HELP, add_data_source, add_json, add_max_length, add_model
from mlx_dpo.config import TrainConfig
from mlx_dpo.errors import UserError


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """`mlx-dpo data audit ...` (a `data` command with its own subcommands)."""
    data = sub.add_parser("data", help="inspect preference data")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    parser = data_sub.add_parser(
        "audit", help="length bias, duplicates, chosen==rejected, truncation counts"
    )
    parser.add_argument("data", help=DATA_HELP)
    add_data_source(parser)
    add_model(parser, "count tokens with this model's tokenizer and template")
    add_max_length(
        parser,
        f"count the pairs it would cut; needs --model, default {TrainConfig().max_length} with it",
    )
    add_json(parser)
    parser.add_argument("--plot", help="write a length histogram to this PNG file")
    return data


def run(args: argparse.Namespace) -> int:
    if args.data_command == "audit":
        return run_audit(args)
    raise UserError(f"unknown data command {args.data_command!r}")


def run_audit(args: argparse.Namespace) -> int:
    if args.max_length is not None and args.max_length < 8:
        raise UserError(f"--max-length must be >= 8, got {args.max_length}")
    if args.plot and not args.plot.lower().endswith(".png"):
        raise UserError(f"--plot {args.plot}: the histogram is written as PNG (name it .png)")
    # The audit reads data sets (pyarrow, the hub client): loaded when it runs.
    from mlx_dpo.audit import audit, format_report, plot_lengths, summary
    from mlx_dpo.model import load_model_tokenizer

    tokenizer = None
    max_length = args.max_length
    if args.model:
        tokenizer = load_model_tokenizer(args.model)
        max_length = max_length or TrainConfig().max_length
    result = audit(
        args.data, tokenizer, max_length, config=args.data_config, revision=args.data_revision
    )
    if args.plot:
        plot_lengths(result, args.plot)
    if args.json:
        print(json.dumps(summary(result)))
    else:
        print(format_report(result, args.model))
        if args.plot:
            print(f"\nlength histogram: {args.plot}")
    return 0
