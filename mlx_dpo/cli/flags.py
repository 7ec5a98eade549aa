"""Flags that several subcommands share, each declared once, and the train flags: one per
TrainConfig field that a command line can set.

A train flag's default is always None: a flag counts only when given, so it never silently
overrides a YAML value. The defaults a help text prints are read from TrainConfig, the one
owner of every default.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any

from mlx_dpo.config import INT_LIMIT, LOSSES, REFERENCE_MODES, SCHEDULES, SEED_MAX, TrainConfig
from mlx_dpo.sampling import DEFAULT_CANDIDATES, DEFAULT_MAX_TOKENS, DEFAULT_TEMP, DEFAULT_TOP_P

# TrainConfig fields that are mappings: they are written in a config file, not on a command line.
YAML_ONLY_KEYS = ("fields", "health")
# Every other field is a train flag (tests/unit/test_cli_flags.py checks that each has one).
TRAIN_FLAG_KEYS = tuple(
    f.name for f in dataclasses.fields(TrainConfig) if f.name not in YAML_ONLY_KEYS
)

MODEL_HELP = "Hugging Face id or local MLX/HF model folder"
# --model of the commands that read an adapter (eval, export, compare).
BASE_MODEL_HELP = (
    "base model: Hugging Face id or local folder (default: the one the adapter records)"
)
DATA_HELP = "a Hugging Face dataset id (org/name), a folder, or a .jsonl/.json/.parquet file"
PROMPTS_HELP = (
    "a text file (one prompt a line), a .jsonl of records with 'prompt' (a string or "
    "messages), or a data folder as --data takes it"
)


def finite_number(text: str) -> float:
    """A flag's number: inf and NaN are refused where they are typed (not blamed on the data
    later, as a non-finite loss)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def whole_number(text: str) -> int:
    """A flag's whole number, at most config.INT_LIMIT in size."""
    try:
        value = int(text)
    except ValueError:
        shown = repr(text) if len(text) <= 40 else f"a {len(text)}-character value"
        raise argparse.ArgumentTypeError(f"not a whole number: {shown}") from None
    if abs(value) > INT_LIMIT:
        raise argparse.ArgumentTypeError(f"at most {INT_LIMIT}, got {len(text)} digits")
    return value


def seed_number(text: str) -> int:
    """A seed: a whole number in MLX's range [0, config.SEED_MAX]."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text[:40]!r}") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"a seed is in [0, {SEED_MAX}], got {text[:40]}")
    return value


# Every number a flag takes is parsed by one of these (tests/unit/test_cli_flags.py checks it).
NUMBER_TYPES = (finite_number, whole_number, seed_number)

# A parser or one of its argument groups: what add_argument is called on (the base class the
# standard library gives both; typeshed names it the same).
Parser = argparse._ActionsContainer


def add_model(parser: Parser, help: str = MODEL_HELP) -> None:
    parser.add_argument("--model", help=help)


def add_data(parser: Parser, help: str = DATA_HELP, required: bool = False) -> None:
    parser.add_argument("--data", required=required, help=help)


def add_data_source(parser: Parser) -> None:
    """Which version of a Hub data set: its config (subset) and revision."""
    parser.add_argument("--data-config", help="a Hub dataset's config (subset)")
    parser.add_argument("--data-revision", help="a Hub dataset's branch, tag or commit")


def add_adapter(parser: Parser, required: bool) -> None:
    """--adapter-path of the commands that read a trained adapter (eval, export, compare)."""
    parser.add_argument("--adapter-path", required=required, help="run directory or adapter folder")


def add_split(parser: Parser, note: str, default: str | None = None) -> None:
    parser.add_argument(
        "--split",
        "--data-split",
        default=default,
        help=f"the split to read, by the data's own name: train, valid, test, test_prefs... ({note})",
    )


def add_trust_remote_code(parser: Parser, default: bool | None = False) -> None:
    """Running a model's own code is the user's to allow on this command line, each time. The
    train flag defaults to None (unset: a YAML config may say false, never true, read_yaml);
    the others to False."""
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        default=default,
        help="allow a model that ships its own Python code to run (never inherited from an "
        "adapter or a run directory, never granted by a config file)",
    )


def add_max_length(parser: Parser, note: str) -> None:
    parser.add_argument("--max-length", type=whole_number, help=f"tokens per sequence ({note})")


def add_beta(parser: Parser, note: str) -> None:
    parser.add_argument("--beta", type=finite_number, help=f"DPO β ({note})")


def add_batch_size(parser: Parser, allow_auto: bool) -> None:
    """Train takes an integer or `auto` and defaults to None (unset); eval takes an integer
    and defaults to None: the forward batch the memory plan allows."""
    if allow_auto:
        parser.add_argument(
            "--batch-size",
            type=_batch_size,
            help=f"pairs per batch (default {TrainConfig().batch_size}), or auto: the largest "
            "the memory plan fits",
        )
    else:
        parser.add_argument(
            "--batch-size",
            type=whole_number,
            help="pairs per batch (default: the most whose memory stays within a training "
            f"step's at batch size {TrainConfig().batch_size}, up to 16)",
        )


def _batch_size(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return whole_number(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"an integer or 'auto', not {text[:40]!r}") from None


def add_sampling(parser: Parser, unset: bool = False) -> None:
    """How answers are sampled (collect, pairs, train --rounds). `unset`: the flags default to
    None, so that a command can tell whether they were given (train takes them only with
    --rounds); the defaults printed are mlx_dpo/sampling.py's either way."""
    parser.add_argument(
        "--temp",
        type=finite_number,
        default=None if unset else DEFAULT_TEMP,
        help=f"sampling temperature ({DEFAULT_TEMP})",
    )
    parser.add_argument(
        "--top-p",
        type=finite_number,
        default=None if unset else DEFAULT_TOP_P,
        help=f"nucleus sampling ({DEFAULT_TOP_P})",
    )
    parser.add_argument(
        "--max-tokens",
        type=whole_number,
        default=None if unset else DEFAULT_MAX_TOKENS,
        help=f"per answer ({DEFAULT_MAX_TOKENS})",
    )


def add_judge(parser: Parser, required: bool, unset: bool = False) -> None:
    """The local judge model of `pairs` and `train --rounds`, its prompt and the candidates it
    compares (`unset` as in add_sampling)."""
    parser.add_argument("--judge", required=required, help="the judge model (any mlx-lm model)")
    parser.add_argument(
        "--judge-prompt",
        help="a file with the judging prompt ({prompt}, {answer_a}, {answer_b}; "
        "default: mlx_dpo/judge.py JUDGE_PROMPT)",
    )
    parser.add_argument(
        "--candidates",
        type=whole_number,
        default=None if unset else DEFAULT_CANDIDATES,
        help=f"answers sampled per prompt; every two are compared ({DEFAULT_CANDIDATES})",
    )


# The train command's flags of iterative DPO: not TrainConfig fields (they drive the rounds
# above the runs, mlx_dpo/rounds.py; each round's run is an ordinary run), and each only with
# --rounds.
ROUNDS_FLAG_KEYS = (
    "rounds",
    "prompts",
    "judge",
    "judge_prompt",
    "candidates",
    "temp",
    "top_p",
    "max_tokens",
)


def add_rounds_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        "rounds (iterative DPO: sample from the policy, judge, train; docs/collect.md)"
    )
    g.add_argument(
        "--rounds",
        type=whole_number,
        help="train N rounds under --adapter-path PARENT (PARENT/round-1, ...); round k "
        "trains on pairs sampled from round k-1's policy and judged by --judge",
    )
    g.add_argument("--prompts", help=f"with --rounds: the prompts to answer; {PROMPTS_HELP}")
    add_judge(g, required=False, unset=True)
    add_sampling(g, unset=True)


def add_json(parser: Parser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def add_train_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per key of TRAIN_FLAG_KEYS, in groups; the defaults printed are TrainConfig's."""
    defaults = TrainConfig()
    _model_and_data_flags(parser.add_argument_group("model and data"), defaults)
    _schedule_flags(parser.add_argument_group("schedule"), defaults)
    _objective_flags(parser.add_argument_group("objective"), defaults)
    _lora_flags(parser.add_argument_group("LoRA"), defaults)
    _evaluation_flags(parser.add_argument_group("evaluation and checkpoints"), defaults)
    _memory_flags(parser.add_argument_group("memory"), defaults)
    _control_flags(parser.add_argument_group("control"), defaults)


def _model_and_data_flags(g: Parser, d: TrainConfig) -> None:
    """The "model and data" train flags."""
    add_model(g)
    add_data(g)
    g.add_argument(
        "--data-split",
        help="the data's own name of the split to train on (default train)",
    )
    add_data_source(g)
    g.add_argument(
        "--valid-split", help="the data's own name of the validation split (e.g. test_prefs)"
    )
    g.add_argument(
        "--valid-fraction",
        type=finite_number,
        help="share of train carved for validation when the data has none (default 5%%, at "
        "most 256 pairs, for sets of 200+ pairs; 0 = none)",
    )
    g.add_argument(
        "--max-pairs", type=whole_number, help="train on a seeded sample of this many pairs"
    )
    g.add_argument(
        "--adapter-path",
        help="run directory (adapters, checkpoints, metrics); default adapters/run-<time>",
    )
    add_max_length(g, f"default {d.max_length}")
    g.add_argument(
        "--quantize",
        type=whole_number,
        choices=(4, 8),
        help="quantize a full-precision base at load",
    )
    g.add_argument("--init-adapter", help="start from this LoRA adapter (reference = base + it)")
    add_trust_remote_code(g, default=None)


def _schedule_flags(g: Parser, d: TrainConfig) -> None:
    """The "schedule" train flags."""
    g.add_argument("--iters", type=whole_number, help="optimizer steps (default: one epoch)")
    g.add_argument("--epochs", type=finite_number, help="epochs over the train split")
    add_batch_size(g, allow_auto=True)
    g.add_argument(
        "--grad-accumulation",
        type=whole_number,
        help=f"batches per optimizer step (default {d.grad_accumulation})",
    )
    g.add_argument(
        "--learning-rate",
        type=finite_number,
        help=f"peak learning rate (default {d.learning_rate})",
    )
    g.add_argument("--lr-schedule", choices=SCHEDULES, help=f"default {d.lr_schedule}")
    g.add_argument("--warmup", type=whole_number, help=f"linear warmup steps (default {d.warmup})")
    g.add_argument(
        "--weight-decay", type=finite_number, help=f"AdamW weight decay (default {d.weight_decay})"
    )
    g.add_argument(
        "--max-grad-norm",
        type=finite_number,
        help=f"clip gradients (default {d.max_grad_norm}; 0 = off)",
    )
    g.add_argument(
        "--seed", type=seed_number, help=f"data order, LoRA init and dropout (default {d.seed})"
    )


def _objective_flags(g: Parser, d: TrainConfig) -> None:
    """The "objective" train flags."""
    add_beta(g, f"default {d.beta}")
    g.add_argument(
        "--loss",
        nargs="+",
        choices=LOSSES,
        metavar="LOSS",
        help=f"a loss, or several whose terms are added (default {d.loss}; README lists them)",
    )
    g.add_argument(
        "--loss-weights",
        nargs="+",
        type=finite_number,
        help="one weight per --loss term (default 1 each)",
    )
    g.add_argument(
        "--label-smoothing",
        type=finite_number,
        help="ε for sigmoid (cDPO), robust, exo_pair and cpo",
    )
    # The simpo loss's own default margin (mlx_dpo/losses.py, LossSettings) when unset.
    g.add_argument("--simpo-gamma", type=finite_number, help="SimPO target margin γ (default 0.5)")
    g.add_argument("--sft-weight", type=finite_number, help="weight of an SFT term on chosen (RPO)")
    g.add_argument(
        "--discopop-tau",
        type=finite_number,
        help=f"discopop's temperature τ (default {d.discopop_tau})",
    )
    g.add_argument(
        "--cpo-alpha", type=finite_number, help=f"weight of cpo's NLL term (default {d.cpo_alpha})"
    )
    g.add_argument(
        "--ld-alpha",
        type=finite_number,
        help="LD-DPO: weight of the response tokens past the shorter response (default off)",
    )
    g.add_argument(
        "--use-weighting",
        action="store_const",
        const=True,
        help="WPO: weigh each pair by its probability under the policy",
    )
    g.add_argument(
        "--desirable-weight", type=finite_number, help=f"KTO's λ_D (default {d.desirable_weight})"
    )
    g.add_argument(
        "--undesirable-weight",
        type=finite_number,
        help=f"KTO's λ_U (default {d.undesirable_weight})",
    )
    g.add_argument(
        "--reference",
        choices=REFERENCE_MODES,
        help="cached: reference log-probs computed once and kept on disk; live: every step "
        f"(default {d.reference})",
    )


def _lora_flags(g: Parser, d: TrainConfig) -> None:
    """The "LoRA" train flags."""
    g.add_argument("--lora-rank", type=whole_number, help=f"default {d.lora_rank}")
    g.add_argument(
        "--lora-scale",
        type=finite_number,
        help=f"mlx-lm's scale, not PEFT's alpha (default {d.lora_scale})",
    )
    g.add_argument("--lora-dropout", type=finite_number, help=f"default {d.lora_dropout}")
    g.add_argument("--lora-layers", type=whole_number, help="last N layers (default all)")
    g.add_argument("--lora-keys", nargs="+", help="module names in a layer, e.g. self_attn.q_proj")
    g.add_argument(
        "--grad-checkpoint",
        action="store_const",
        const=True,
        help="recompute layer activations in the backward pass (less memory, slower)",
    )
    g.add_argument(
        "--no-prefix-sharing",
        dest="prefix_sharing",
        action="store_const",
        const=False,
        help="run each prompt twice (with chosen and rejected) instead of once",
    )


def _evaluation_flags(g: Parser, d: TrainConfig) -> None:
    """The "evaluation and checkpoints" train flags."""
    g.add_argument(
        "--eval-every",
        type=whole_number,
        help=f"steps between evaluations (default {d.eval_every}; 0 = end only)",
    )
    g.add_argument(
        "--save-every",
        type=whole_number,
        help=f"steps between checkpoints (default {d.save_every})",
    )
    g.add_argument(
        "--sample-count",
        type=whole_number,
        help=f"greedy answers to this many fixed prompts at each evaluation, to watch the model "
        f"learn (default {d.sample_count}; 0 = off)",
    )
    g.add_argument(
        "--sample-prompts",
        metavar="FILE",
        help="their prompts: a text file (one a line), a .jsonl of records with 'prompt', or a "
        "data folder (default: the validation split's)",
    )
    g.add_argument(
        "--sample-max-tokens",
        type=whole_number,
        help=f"tokens per answer (default {d.sample_max_tokens})",
    )


def _memory_flags(g: Parser, d: TrainConfig) -> None:
    """The "memory" train flags."""
    g.add_argument(
        "--memory-limit-gb",
        type=finite_number,
        help="memory the run may use (default: the device's); the plan and the guard use it",
    )


def _control_flags(g: Parser, d: TrainConfig) -> None:
    """The "control" train flags."""
    g.add_argument(
        "--pause-timeout-minutes",
        type=finite_number,
        help="a paused run with no dashboard attached saves and stops after this long without "
        f"a command (default {d.pause_timeout_minutes:g}; 0 = never)",
    )


def train_flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The train flags of parsed arguments, by TrainConfig key (None: not given)."""
    values = {key: getattr(args, key) for key in TRAIN_FLAG_KEYS}
    if values["loss"] is not None and len(values["loss"]) == 1:
        values["loss"] = values["loss"][0]  # one loss is written as a name, as in YAML
    return values
