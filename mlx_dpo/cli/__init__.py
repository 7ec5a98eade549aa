"""`mlx-dpo`: train, view, eval, export, compare, data audit, collect, pairs. One module per subcommand
(each with `add_parser(subparsers)` and `run(args) -> exit status`), the flags they share in
flags.py, the exit statuses in exit_codes.py.

User mistakes end with a message and exit status 2, never a traceback. A run that fails
while training exits 1; completed and stopped runs exit 0.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from mlx_dpo import paths
from mlx_dpo.cli import collect, compare, data, export, pairs, train, view
from mlx_dpo.cli import eval as eval_
from mlx_dpo.cli.exit_codes import EXIT_INTERRUPTED, EXIT_USER_ERROR
from mlx_dpo.errors import UserError, one_line

# In the order `mlx-dpo --help` lists them.
SUBCOMMANDS = {
    "train": train,
    "view": view,
    "eval": eval_,
    "export": export,
    "compare": compare,
    "data": data,
    "collect": collect,
    "pairs": pairs,
}


# Arguments that name files or folders, by their argparse name: `~` and $VARS expanded and an
# empty one refused (mlx_dpo/paths.py), so no command makes a literal `~` folder. A run
# directory is made absolute too: the dashboard's hints name it. (train's paths are expanded
# again, with the YAML's, by config.build_config.)
PATH_ARGS = {
    "config": "the config file",
    "model": "--model",
    "data": "--data",
    "adapter_path": "--adapter-path",
    "init_adapter": "--init-adapter",
    "output": "--output",
    "save_path": "--save-path",
    "out": "--out",
    "plot": "--plot",
    "prompts": "PROMPTS",
    "judge": "--judge",
    "judge_prompt": "--judge-prompt",
}
ABSOLUTE_PATH_ARGS = {"run_dir": "the run directory"}


def expand_path_args(args: argparse.Namespace) -> None:
    """Expand, in place, every path argument that was given."""
    for table, expand in ((PATH_ARGS, paths.expand), (ABSOLUTE_PATH_ARGS, paths.expand_local)):
        for name, what in table.items():
            value = getattr(args, name, None)
            if isinstance(value, str):
                setattr(args, name, expand(value, what))


class OneLineErrors(argparse.ArgumentParser):
    """A usage mistake is one line naming the flag (argparse would print the whole usage of
    the command first: dozens of lines for train), exit 2 as for every user mistake."""

    def error(self, message: str) -> NoReturn:
        self.exit(
            EXIT_USER_ERROR, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(
        prog="mlx-dpo",
        description="Direct Preference Optimization with LoRA on MLX.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS.values():
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        expand_path_args(args)
        return SUBCOMMANDS[args.command].run(args)
    except UserError as err:
        print(f"mlx-dpo: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("mlx-dpo: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
