"""`mlx-dpo`: train, eval, view, export, compare, data audit.

User mistakes end with a message and exit status 2, never a traceback. A run that fails
while training exits 1; completed and stopped runs exit 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mlx_dpo.audit import add_data_parser, run_data
from mlx_dpo.compare import add_compare_parser, run_compare
from mlx_dpo.config import LOSSES, REFERENCE_MODES, SCHEDULES, TrainConfig, build_config, read_yaml
from mlx_dpo.errors import UserError
from mlx_dpo.events import CONFIG_FILE
from mlx_dpo.export import add_export_parser, run_export

EXIT_FAILED = 1
EXIT_USER_ERROR = 2


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    # Every default is None: a flag counts only when given, so YAML values are never
    # silently overridden by argparse defaults. The real defaults live in TrainConfig.
    d = TrainConfig()
    g = parser.add_argument_group("model and data")
    g.add_argument("--model", help="Hugging Face id, local MLX/HF model folder, or GGUF file")
    g.add_argument("--data", help="folder with train/valid/test .jsonl, or one .jsonl/.json file")
    g.add_argument(
        "--adapter-path",
        help="run directory (adapters, checkpoints, metrics); default adapters/run-<time>",
    )
    g.add_argument("--max-length", type=int, help=f"tokens per sequence (default {d.max_length})")
    g.add_argument(
        "--quantize", type=int, choices=(4, 8), help="quantize a full-precision base at load"
    )
    g.add_argument("--init-adapter", help="start from this LoRA adapter (reference = base + it)")
    g.add_argument(
        "--trust-remote-code",
        action="store_const",
        const=True,
        help="allow a model folder's own Python code to run",
    )
    g = parser.add_argument_group("schedule")
    g.add_argument("--iters", type=int, help="optimizer steps (default: one epoch)")
    g.add_argument("--epochs", type=float, help="epochs over the train split")
    g.add_argument(
        "--batch-size",
        type=_batch_size,
        help=f"pairs per batch (default {d.batch_size}), or auto: the largest the memory plan fits",
    )
    g.add_argument("--grad-accumulation", type=int, help="batches per optimizer step (default 1)")
    g.add_argument(
        "--learning-rate", type=float, help=f"peak learning rate (default {d.learning_rate})"
    )
    g.add_argument("--lr-schedule", choices=SCHEDULES, help=f"default {d.lr_schedule}")
    g.add_argument("--warmup", type=int, help="linear warmup steps (default 0)")
    g.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0)")
    g.add_argument(
        "--max-grad-norm", type=float, help=f"clip gradients (default {d.max_grad_norm}; 0 = off)"
    )
    g.add_argument("--seed", type=int, help="data order, LoRA init and dropout (default 0)")
    g = parser.add_argument_group("objective")
    g.add_argument("--beta", type=float, help=f"DPO β (default {d.beta})")
    g.add_argument("--loss", choices=LOSSES, help=f"default {d.loss}")
    g.add_argument("--label-smoothing", type=float, help="ε for sigmoid (cDPO) and robust")
    g.add_argument("--simpo-gamma", type=float, help="SimPO target margin γ (default 0.5)")
    g.add_argument("--sft-weight", type=float, help="weight of an SFT term on chosen (RPO)")
    g.add_argument(
        "--reference",
        choices=REFERENCE_MODES,
        help="cached: reference log-probs computed once and kept on disk (default); live: every step",
    )
    g = parser.add_argument_group("LoRA")
    g.add_argument("--lora-rank", type=int, help=f"default {d.lora_rank}")
    g.add_argument(
        "--lora-scale",
        type=float,
        help=f"mlx-lm's scale, not PEFT's alpha (default {d.lora_scale})",
    )
    g.add_argument("--lora-dropout", type=float, help="default 0")
    g.add_argument("--lora-layers", type=int, help="last N layers (default all)")
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
    g = parser.add_argument_group("evaluation and checkpoints")
    g.add_argument(
        "--eval-every",
        type=int,
        help=f"steps between evaluations (default {d.eval_every}; 0 = end only)",
    )
    g.add_argument(
        "--save-every", type=int, help=f"steps between checkpoints (default {d.save_every})"
    )
    g = parser.add_argument_group("memory")
    g.add_argument(
        "--memory-limit-gb",
        type=float,
        help="memory the run may use (default: the device's); the plan and the guard use it",
    )


def _batch_size(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"an integer or 'auto', not {text!r}") from None


TRAIN_FLAG_KEYS = [
    "model",
    "data",
    "adapter_path",
    "max_length",
    "quantize",
    "init_adapter",
    "trust_remote_code",
    "iters",
    "epochs",
    "batch_size",
    "grad_accumulation",
    "learning_rate",
    "lr_schedule",
    "warmup",
    "weight_decay",
    "max_grad_norm",
    "seed",
    "beta",
    "loss",
    "label_smoothing",
    "simpo_gamma",
    "sft_weight",
    "reference",
    "lora_rank",
    "lora_scale",
    "lora_dropout",
    "lora_layers",
    "lora_keys",
    "grad_checkpoint",
    "prefix_sharing",
    "eval_every",
    "save_every",
    "memory_limit_gb",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlx-dpo",
        description="Direct Preference Optimization with LoRA on MLX.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train LoRA adapters with DPO (no arguments: the demo)")
    train.add_argument("config", nargs="?", help="YAML config (keys = flag names with underscores)")
    _add_train_flags(train)
    train.add_argument("--resume", action="store_true", help="continue the run in --adapter-path")
    train.add_argument("--no-tui", action="store_true", help="plain progress lines, no dashboard")
    train.add_argument(
        "--plan",
        action="store_true",
        help="print the memory plan (after loading the model and data) and exit",
    )

    view = sub.add_parser("view", help="the dashboard on a run directory (live or finished)")
    view.add_argument("run_dir")

    evaluate = sub.add_parser("eval", help="preference metrics of a model (+ adapter) on data")
    evaluate.add_argument("--model", help="model (default: the adapter's base model)")
    evaluate.add_argument("--adapter-path", help="run directory or adapter folder")
    evaluate.add_argument("--data", required=True)
    evaluate.add_argument("--split", default="test", help="train, valid or test (default test)")
    evaluate.add_argument(
        "--beta", type=float, help="β for rewards (default: the adapter's, else 0.1)"
    )
    evaluate.add_argument("--batch-size", type=int, default=4)
    evaluate.add_argument("--max-length", type=int, help="default: the adapter's, else 1024")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument("--output", help="write per-pair log-probs and rewards (JSON lines)")
    evaluate.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow a model that ships its own Python code (never inherited from an adapter)",
    )
    add_export_parser(sub)
    add_compare_parser(sub)
    add_data_parser(sub)
    return parser


def _is_terminal() -> bool:
    streams = (sys.stdin, sys.stdout, sys.stderr)
    return (
        all(s is not None and s.isatty() for s in streams)
        and os.environ.get("TERM", "") != "dumb"
        and not os.environ.get("CI")
    )


def _default_run_dir() -> str:
    return str(Path("adapters") / time.strftime("run-%Y%m%d-%H%M%S"))


def _train_config(args: argparse.Namespace) -> tuple[TrainConfig, bool]:
    """(config, is_demo)."""
    flags = {key: getattr(args, key) for key in TRAIN_FLAG_KEYS}
    yaml_values: dict[str, Any] = {}
    if args.resume:
        if not args.adapter_path:
            raise UserError("--resume needs --adapter-path (the run directory to continue)")
        saved = Path(args.adapter_path) / CONFIG_FILE
        if not saved.is_file():
            raise UserError(
                f"{args.adapter_path}: no run has started here (no config.yaml); "
                "run the same command without --resume"
            )
        yaml_values = read_yaml(saved)
        # Running a model's own code is allowed by the person at the keyboard, each time: a
        # run directory (perhaps copied from elsewhere) cannot grant it.
        yaml_values.pop("trust_remote_code", None)
    if args.config:
        yaml_values.update(read_yaml(args.config))
    is_demo = (
        not args.config and not args.resume and flags["model"] is None and flags["data"] is None
    )
    if is_demo:
        from mlx_dpo import demo

        yaml_values = demo.demo_config_values()
        if flags["iters"] is not None:
            yaml_values.pop("epochs")
    config = build_config(yaml_values, flags)
    if config.adapter_path is None:
        config.adapter_path = _default_run_dir()
    return config, is_demo


def cmd_train(args: argparse.Namespace) -> int:
    config, is_demo = _train_config(args)
    if args.plan:
        from mlx_dpo.memory import plan_command

        if is_demo:
            from mlx_dpo import demo

            config.model = str(demo.ensure_demo_model(print))
        return plan_command(config)
    run_dir = Path(config.adapter_path)
    # config.yaml is written once the model and data are loaded: before that (a bad input, or a
    # kill while loading) nothing of a run is here, and starting again is the way on.
    if not args.resume and (run_dir / CONFIG_FILE).exists():
        raise UserError(
            f"{run_dir}: already holds a run; use --resume to continue it or another --adapter-path"
        )
    use_tui = not args.no_tui and _is_terminal()
    if is_demo:
        from mlx_dpo import demo

        return demo.run_demo(config, use_tui=use_tui)
    if use_tui:
        return run_with_dashboard(config, resume=args.resume)
    return run_headless(config, resume=args.resume)


def run_headless(config: TrainConfig, resume: bool = False) -> int:
    from mlx_dpo.trainer import RunOptions, train

    status = train(
        config, RunOptions(Path(config.adapter_path), resume=resume, on_line=_print_flush)
    )
    if status == "completed":
        print(
            f"done. chat with it: mlx_lm.chat --model {config.model} --adapter-path {config.adapter_path}"
        )
    return EXIT_FAILED if status == "failed" else 0


def _print_flush(line: str) -> None:
    print(line, flush=True)


def run_with_dashboard(config: TrainConfig, resume: bool = False) -> int:
    """The trainer in a child process (its own session, so closing the dashboard can leave it
    running), the dashboard in this one."""
    from mlx_dpo.config import save_config
    from mlx_dpo.events import LOG_FILE
    from mlx_dpo.tui.app import run_dashboard

    run_dir = Path(config.adapter_path)
    run_dir.mkdir(parents=True, exist_ok=True)
    launch_config = run_dir / ".launch.yaml"
    save_config(config, launch_config)
    command = [sys.executable, "-m", "mlx_dpo.cli", "train", str(launch_config), "--no-tui"]
    if resume:
        command += ["--resume", "--adapter-path", str(run_dir)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
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


def cmd_view(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    if not (run_dir / "metrics.jsonl").is_file():
        raise UserError(f"{run_dir}: not a run directory (no metrics.jsonl)")
    from mlx_dpo.tui.app import run_dashboard

    return run_dashboard(run_dir)


def cmd_eval(args: argparse.Namespace) -> int:
    from mlx_dpo.evaluate import evaluate_command

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
    )
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['pairs']} pairs ({args.split} split of {args.data})")
        for key, value in result.items():
            if key != "pairs":
                print(f"  {key:22s} {value:.4f}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    if args.gguf is None:
        return run_export(args)
    if args.save_path is not None:
        raise UserError("export: --save-path (a model folder) and --gguf (one file): give one")
    # Imported here: it loads MLX, which the other commands' start-up does not need.
    from mlx_dpo.export_gguf import export_gguf

    export_gguf(
        args.adapter_path,
        args.gguf,
        model=args.model,
        tensor_type=args.gguf_type,
        overwrite=args.overwrite,
        on_line=lambda line: print(line, flush=True),
        trust_remote_code=args.trust_remote_code,
    )
    return 0


COMMANDS = {
    "train": cmd_train,
    "view": cmd_view,
    "eval": cmd_eval,
    "export": cmd_export,
    "compare": run_compare,
    "data": run_data,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return COMMANDS[args.command](args)
    except UserError as err:
        print(f"mlx-dpo: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("mlx-dpo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
