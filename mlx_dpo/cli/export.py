"""`mlx-dpo export`: fuse a run's adapters into a standalone model folder (mlx_dpo/export.py),
or into one GGUF file for llama.cpp, Ollama and LM Studio (mlx_dpo/export_gguf.py)."""

from __future__ import annotations

import argparse
from functools import partial
from typing import Any

from mlx_dpo.cli.flags import BASE_MODEL_HELP, add_adapter, add_model, add_trust_remote_code
from mlx_dpo.errors import UserError
from mlx_dpo.export import export_model


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "export", help="fuse a run's adapters into a standalone model folder for mlx-lm"
    )
    add_adapter(parser, required=True)
    parser.add_argument("--save-path", help="the new model folder (mlx-lm)")
    parser.add_argument(
        "--gguf", metavar="OUT.gguf", help="write one GGUF file instead (llama.cpp, Ollama)"
    )
    parser.add_argument(
        "--gguf-type", default="f16", help="GGUF tensor type: f16 (default), f32, bf16, q8_0, ..."
    )
    add_model(parser, BASE_MODEL_HELP)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--dequantize",
        action="store_true",
        help="write full-precision weights (the default for a quantized base)",
    )
    mode.add_argument(
        "--quantize",
        action="store_true",
        help="keep a quantized base quantized (re-quantizing can erase a light fine-tune)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing --save-path folder"
    )
    add_trust_remote_code(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.gguf is not None:
        if args.save_path is not None:
            raise UserError("export: --save-path (a model folder) and --gguf (one file): give one")
        return run_gguf(args)
    if args.save_path is None:
        raise UserError("export: give --save-path FOLDER (mlx-lm) or --gguf OUT.gguf")
    # --dequantize is the default for a quantized base; the flag only says so explicitly.
    export_model(
        args.adapter_path,
        args.save_path,
        model=args.model,
        quantize=args.quantize,
        overwrite=args.overwrite,
        # The dashboard streams this output from a pipe: each line as soon as it is printed.
        on_line=partial(print, flush=True),
        trust_remote_code=args.trust_remote_code,
    )
    return 0


def run_gguf(args: argparse.Namespace) -> int:
    # Loaded here: it loads MLX, which `mlx-dpo --help` does not need.
    from mlx_dpo.export_gguf import export_gguf

    export_gguf(
        args.adapter_path,
        args.gguf,
        model=args.model,
        tensor_type=args.gguf_type,
        overwrite=args.overwrite,
        on_line=partial(print, flush=True),
        trust_remote_code=args.trust_remote_code,
    )
    return 0
