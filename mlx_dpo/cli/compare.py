"""`mlx-dpo compare`: answers of the reference and of the trained policy, side by side
(mlx_dpo/compare.py)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from mlx_dpo.adapter_config import read_adapter_config
from mlx_dpo.cli.flags import (
    BASE_MODEL_HELP,
    add_adapter,
    add_data,
    add_json,
    add_model,
    add_split,
    add_trust_remote_code,
    finite_number,
    seed_number,
    whole_number,
)
from mlx_dpo.compare import (
    DEFAULT_LIMIT,
    DEFAULT_MAX_TOKENS,
    compare_answers,
    compare_records,
    format_comparison,
    read_prompts,
    run_fields,
    user_prompts,
)
from mlx_dpo.errors import UserError


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "compare", help="answers of the reference and of the trained policy, side by side"
    )
    add_adapter(parser, required=True)
    add_model(parser, BASE_MODEL_HELP)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--prompt", action="append", help="a user message (repeat for several prompts)"
    )
    add_data(source, "preference data: compare on the pairs' prompts")
    add_split(parser, "with a data folder; default: test, else valid, else train")
    parser.add_argument(
        "--limit", type=whole_number, default=DEFAULT_LIMIT, help=f"pairs (default {DEFAULT_LIMIT})"
    )
    parser.add_argument(
        "--system", help="a system message before each --prompt (as the data's 'system')"
    )
    parser.add_argument(
        "--max-tokens",
        type=whole_number,
        default=DEFAULT_MAX_TOKENS,
        help=f"per answer (default {DEFAULT_MAX_TOKENS})",
    )
    parser.add_argument(
        "--temp", type=finite_number, default=0.0, help="sampling temperature (default 0: greedy)"
    )
    parser.add_argument(
        "--seed", type=seed_number, default=0, help="sampling seed (with --temp > 0)"
    )
    add_json(parser)
    add_trust_remote_code(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.max_tokens <= 0:
        raise UserError(f"--max-tokens must be > 0, got {args.max_tokens}")
    if args.temp < 0:
        raise UserError(f"--temp must be >= 0, got {args.temp}")
    if args.limit <= 0:
        raise UserError(f"--limit must be > 0, got {args.limit}")
    if args.prompt and any(not p.strip() for p in args.prompt):
        raise UserError("--prompt: empty prompt")
    read_adapter_config(args.adapter_path)  # a missing or broken folder fails before loading
    records = None
    if args.data:
        records = read_prompts(args.data, args.split, args.limit, run_fields(args.adapter_path))
    from mlx_dpo.generation import load_policy  # loads MLX: not for --help

    policy = load_policy(args.adapter_path, args.model, args.trust_remote_code)
    settings = (args.max_tokens, args.temp, args.seed)
    if records is not None:
        rows = compare_records(policy, records, *settings)
    else:
        rows = compare_answers(policy, user_prompts(args.prompt, args.system), *settings)
    if args.json:
        print(
            json.dumps(
                {
                    "adapter_path": args.adapter_path,
                    "reference": policy.reference_name,
                    "max_tokens": args.max_tokens,
                    "temp": args.temp,
                    "seed": args.seed,
                    "results": rows,
                }
            )
        )
    else:
        mode = "greedy" if args.temp == 0 else f"temp {args.temp}, seed {args.seed}"
        print(f"reference: {policy.reference_name}; policy: {args.adapter_path} ({mode})\n")
        print(format_comparison(rows, policy.reference_name))
    return 0
