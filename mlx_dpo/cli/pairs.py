"""`mlx-dpo pairs`: the model samples candidates for each prompt and a local judge model
compares them in both orders (mlx_dpo/pairs.py); consistent verdicts become pairs in
OUT.jsonl. It continues where it stopped when run again."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mlx_dpo.cli.collect import add_sampling_flags, check_model_flags, model_name, read_prompts
from mlx_dpo.cli.flags import add_json, add_judge
from mlx_dpo.errors import UserError
from mlx_dpo.journal import JsonLines, VerdictFiles, check_out_path, sidecar_path
from mlx_dpo.sampling import check_sampling


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "pairs", help="sample candidates and let a local judge model make preference pairs"
    )
    add_sampling_flags(parser)
    parser.add_argument("--adapter-path", help="sample from this trained run's policy")
    add_judge(parser, required=True)
    add_json(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    # MLX is loaded only once the flags and files are checked.
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
    check_model_flags(args)
    template = read_judge_prompt(args.judge_prompt) if args.judge_prompt else JUDGE_PROMPT
    prompts = read_prompts(args)
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
