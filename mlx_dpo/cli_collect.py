"""`mlx-dpo collect` and `mlx-dpo pairs`: their flags and what they run.

collect: a person judges two answers per prompt on a screen (tui/collect); the model runs
in a worker process (mlx_dpo/collect_worker.py). pairs: a local judge model does it
(mlx_dpo/pairs.py). Both write OUT.jsonl, which `mlx-dpo train --data OUT.jsonl` trains on,
and continue where they stopped when run again.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from mlx_dpo.errors import UserError
from mlx_dpo.journal import JsonLines, VerdictFiles, check_out_path, sidecar_path
from mlx_dpo.prompts import Prompt, load_prompts, unique_prompts
from mlx_dpo.sampling import (
    DEFAULT_CANDIDATES,
    DEFAULT_MAX_TOKENS,
    DEFAULT_TEMP,
    DEFAULT_TOP_P,
    check_sampling,
)

PROMPTS_HELP = (
    "a text file (one prompt a line), a .jsonl of records with 'prompt' (a string or "
    "messages), or a data folder as --data takes it"
)


def _add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompts", metavar="PROMPTS", help=PROMPTS_HELP)
    parser.add_argument("--out", required=True, help="the pairs file to write (.jsonl)")
    parser.add_argument("--model", help="model to answer (default: the adapter's base model)")
    parser.add_argument("--split", help="with a data folder: train (default), valid or test")
    parser.add_argument(
        "--temp", type=float, default=DEFAULT_TEMP, help=f"sampling temperature ({DEFAULT_TEMP})"
    )
    parser.add_argument(
        "--top-p", type=float, default=DEFAULT_TOP_P, help=f"nucleus sampling ({DEFAULT_TOP_P})"
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=DEFAULT_MAX_TOKENS,
        help=f"per answer ({DEFAULT_MAX_TOKENS})",
    )
    parser.add_argument("--seed", type=int, default=0, help="base sampling seed (0)")
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow a model that ships its own Python code (never inherited from an adapter)",
    )


def add_collect_parser(sub: Any) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "collect", help="judge two answers per prompt yourself; writes preference pairs"
    )
    _add_common_flags(parser)
    parser.add_argument(
        "--adapter-path",
        help="a trained run: show the reference's answer (A) beside the policy's (B)",
    )
    return parser


def add_pairs_parser(sub: Any) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "pairs", help="sample candidates and let a local judge model make preference pairs"
    )
    _add_common_flags(parser)
    parser.add_argument("--adapter-path", help="sample from this trained run's policy")
    parser.add_argument("--judge", required=True, help="the judge model (any mlx-lm model)")
    parser.add_argument(
        "--judge-prompt",
        help="a file with the judging prompt ({prompt}, {answer_a}, {answer_b}; "
        "default: mlx_dpo/judge.py JUDGE_PROMPT)",
    )
    parser.add_argument(
        "--candidates",
        type=int,
        default=DEFAULT_CANDIDATES,
        help=f"answers sampled per prompt; every two are compared ({DEFAULT_CANDIDATES})",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser


def _prompts(args: argparse.Namespace) -> list[Prompt]:
    prompts, repeats = unique_prompts(load_prompts(args.prompts, args.split))
    if repeats:
        print(f"{args.prompts}: {repeats} repeated prompt(s) appear once", file=sys.stderr)
    return prompts


def _check_model_flags(args: argparse.Namespace) -> None:
    if not args.model and not args.adapter_path:
        raise UserError("--model is needed (or an --adapter-path that records its model)")
    if args.adapter_path:
        from mlx_dpo.export import read_adapter_config

        read_adapter_config(args.adapter_path)  # a missing or broken folder fails before loading


def model_name(model: str | None) -> str | None:
    """A local model folder as an absolute path (the same folder named another way is the
    same model); a hub id as it is."""
    if model and Path(model).expanduser().exists():
        return str(Path(model).expanduser().resolve())
    return model


def _is_terminal() -> bool:
    streams = (sys.stdin, sys.stdout, sys.stderr)
    return all(s is not None and s.isatty() for s in streams) and os.environ.get("TERM") != "dumb"


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


def run_collect(args: argparse.Namespace) -> int:
    out = check_out_path(args.out)
    sampling = check_sampling(args.temp, args.top_p, args.max_tokens)
    if sampling.temp == 0 and not args.adapter_path:
        raise UserError(
            "--temp 0 (greedy) gives the same answer twice; two samples need --temp > 0 "
            "(or --adapter-path to compare the reference with the policy)"
        )
    _check_model_flags(args)
    prompts = _prompts(args)
    with VerdictFiles(out) as files:  # a broken file is reported before anything starts
        if not _is_terminal():
            raise UserError("collect is interactive: run it in a terminal")
        from mlx_dpo.tui.collect import run_collect_app

        return run_collect_app(
            prompts,
            files,
            worker_command(args),
            seed=args.seed,
            model=model_name(args.model),
            adapter=args.adapter_path,
        )


def run_pairs(args: argparse.Namespace) -> int:
    from mlx_dpo.generation import load_generator
    from mlx_dpo.judge import JUDGE_PROMPT, read_judge_prompt
    from mlx_dpo.logprobs import find_head_split
    from mlx_dpo.model import load_model
    from mlx_dpo.pairs import Judge, PairsSettings, make_pairs

    out = check_out_path(args.out)
    sampling = check_sampling(args.temp, args.top_p, args.max_tokens)
    if args.candidates < 2:
        raise UserError(f"--candidates must be at least 2, got {args.candidates}")
    if sampling.temp == 0:
        raise UserError("--temp 0 (greedy) makes every candidate the same; use --temp > 0")
    _check_model_flags(args)
    template = read_judge_prompt(args.judge_prompt) if args.judge_prompt else JUDGE_PROMPT
    prompts = _prompts(args)
    # The files are read (and a torn last line repaired) before the models load: a broken
    # file is reported at once.
    with JsonLines(sidecar_path(out, "candidates")), VerdictFiles(out):
        pass
    generator = load_generator(args.model, args.adapter_path, args.trust_remote_code)
    if model_name(args.judge) == model_name(args.model) and not args.adapter_path:
        judge_model, judge_tokenizer = generator.model, generator.tokenizer  # one copy
    else:
        judge_model, judge_tokenizer, _, _ = load_model(args.judge, None, args.trust_remote_code)
        judge_model.eval()
    judge = Judge(judge_model, judge_tokenizer, find_head_split(judge_model), template)
    settings = PairsSettings(
        model=model_name(args.model) or "",
        judge=model_name(args.judge) or "",
        sampling=sampling,
        candidates=args.candidates,
        seed=args.seed,
        adapter=args.adapter_path,
        judge_prompt=template,
    )
    say = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else _say
    summary = make_pairs(prompts, generator, judge, out, settings, say)
    if args.json:
        print(json.dumps(summary.as_dict()))
    else:
        share = summary.consistent_share
        print(
            f"done: {summary.consistent} new pairs in {out}; "
            f"{summary.inconsistent} inconsistent, {summary.identical} identical, "
            f"{summary.invalid} invalid"
            + (f"; {share:.0%} of judged comparisons consistent" if share is not None else "")
        )
        print(f"train on them: mlx-dpo train --data {out} --model {args.model or '...'}")
    return 0


def _say(line: str) -> None:
    print(line, flush=True)
