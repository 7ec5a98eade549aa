"""`mlx-dpo eval`: preference metrics of a model (and adapter) on a data split."""

from __future__ import annotations

import argparse
import math
from typing import Any

from mlx_dpo.cli.flags import (
    BASE_MODEL_HELP,
    add_adapter,
    add_batch_size,
    add_beta,
    add_data,
    add_data_source,
    add_json,
    add_max_length,
    add_model,
    add_split,
    add_trust_remote_code,
)
from mlx_dpo.config import REFERENCE_MODES, TrainConfig


def add_parser(sub: Any) -> argparse.ArgumentParser:
    d = TrainConfig()
    parser = sub.add_parser("eval", help="preference metrics of a model (+ adapter) on data")
    add_model(parser, BASE_MODEL_HELP)
    add_adapter(parser, required=False)
    add_data(parser, required=True)
    add_data_source(parser)
    add_split(parser, "default test", default="test")
    add_beta(parser, f"for rewards; default: the adapter's, else {d.beta}")
    add_batch_size(parser, allow_auto=False)
    add_max_length(parser, f"default: the adapter's, else {d.max_length}")
    add_json(parser)
    parser.add_argument(
        "--output",
        help="write per-pair (kto: per-completion) log-probs and rewards (JSON lines)",
    )
    parser.add_argument(
        "--reference",
        choices=REFERENCE_MODES,
        default="cached",
        help="cached: the reference log-probs from the on-disk cache training fills (computed "
        "and kept there when missing); live: computed batch by batch, no cache (default cached)",
    )
    add_trust_remote_code(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    # MLX loads with the command that uses it, not with `mlx-dpo --help`.
    from mlx_dpo.evaluate import evaluate_command, json_line

    result = evaluate_command(
        model=args.model,
        adapter_path=args.adapter_path,
        data=args.data,
        split=args.split,
        beta=args.beta,
        batch_size=args.batch_size,
        max_length=args.max_length,
        output=args.output,
        trust_remote_code=args.trust_remote_code,
        data_config=args.data_config,
        data_revision=args.data_revision,
        reference_mode=args.reference,
    )
    if args.json:
        print(json_line(result))
    else:
        # kto counts completions; a reference-free loss has no kl (NaN: printed as "-").
        unit = "completions" if "count/desirable" in result else "pairs"
        print(f"{result['pairs']} {unit} ({args.split} split of {args.data})")
        width = max(22, *(len(key) for key in result))
        for key, value in result.items():
            if key != "pairs":
                shown = f"{value:.4f}" if math.isfinite(value) else "-"
                print(f"  {key:{width}s} {shown}")
    return 0
