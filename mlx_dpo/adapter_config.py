"""An adapter folder's adapter_config.json, read and checked once for every command that takes
an adapter (eval, export, compare, collect, train --init-adapter).

The folder may come from anywhere (mlx-lm, another tool, a copy someone edited), so every
value this package reads from it is checked for its type and range here: a wrong one is a
UserError naming the file and the field, never a traceback from deep inside MLX.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from mlx_dpo.config import INT_LIMIT, build_config
from mlx_dpo.errors import UserError, read_json_object
from mlx_dpo.events import ADAPTER_CONFIG_FILE, ADAPTER_FILE

# The run's settings that eval, export and compare read back from an adapter folder (mlx-dpo
# writes every TrainConfig key there; mlx-lm writes its own training arguments, some under
# the same names with other meanings, which nothing here reads).
READ_SETTINGS = (
    "beta",
    "loss",
    "label_smoothing",
    "simpo_gamma",
    "max_length",
    "fields",
    "quantize",
)


def read_adapter_config(adapter_path: str | Path) -> dict[str, Any]:
    """The folder's adapter_config.json as a checked mapping; a UserError for a missing
    folder, a folder that is not an adapter's, a file that is not JSON or a field of the
    wrong type or range (each named with the file)."""
    path = Path(adapter_path).expanduser()
    if not path.is_dir():
        raise UserError(f"{adapter_path}: no such adapter folder")
    config_file = path / ADAPTER_CONFIG_FILE
    if not config_file.is_file() or not (path / ADAPTER_FILE).is_file():
        raise UserError(
            f"{adapter_path}: not an adapter folder (needs {ADAPTER_CONFIG_FILE} and {ADAPTER_FILE})"
        )
    config = read_json_object(config_file)
    problems = adapter_config_problems(config)
    if problems:
        raise UserError(f"{config_file}: invalid adapter configuration", problems)
    # A setting written as null is one not written: its default applies (eval, export).
    return {k: v for k, v in config.items() if not (k in READ_SETTINGS and v is None)}


def _whole(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= INT_LIMIT


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def adapter_config_problems(config: dict[str, Any]) -> list[str]:
    """What is wrong with the fields of an adapter config that this package reads."""
    problems = []
    if not isinstance(config.get("fine_tune_type", "lora"), str):
        problems.append(f"'fine_tune_type' must be a string, got {config['fine_tune_type']!r}")
    if "num_layers" in config and not _whole(config["num_layers"], 1):
        problems.append(f"'num_layers' must be a whole number > 0, got {config['num_layers']!r}")
    for key in ("model", "base_model"):
        if config.get(key) is not None and not isinstance(config[key], str):
            problems.append(f"'{key}' must be a model path or id (a string), got {config[key]!r}")
    problems += _lora_problems(config.get("lora_parameters"))
    provenance = config.get("init_adapter_provenance")
    if provenance is not None and not (
        isinstance(provenance, dict) and isinstance(provenance.get("path", ""), str | None)
    ):
        problems.append("'init_adapter_provenance' must be a mapping with a 'path' string")
    settings = {key: config[key] for key in READ_SETTINGS if config.get(key) is not None}
    try:
        build_config(settings, {})
    except UserError as err:
        problems += err.problems or [str(err)]
    return problems


def _lora_problems(params: Any) -> list[str]:
    if params is None:
        return []
    if not isinstance(params, dict):
        return [f"'lora_parameters' must be a mapping, got {params!r}"]
    problems = []
    if "rank" in params and not _whole(params["rank"], 1):
        problems.append(
            f"'lora_parameters.rank' must be a whole number > 0, got {params['rank']!r}"
        )
    if "scale" in params and not _number(params["scale"]):
        problems.append(f"'lora_parameters.scale' must be a finite number, got {params['scale']!r}")
    dropout = params.get("dropout", 0.0)
    if not (_number(dropout) and 0 <= dropout < 1):
        problems.append(f"'lora_parameters.dropout' must be in [0, 1), got {dropout!r}")
    keys = params.get("keys")
    if keys is not None and not (
        isinstance(keys, list) and keys and all(isinstance(k, str) and k for k in keys)
    ):
        problems.append(f"'lora_parameters.keys' must be a list of module names, got {keys!r}")
    return problems
