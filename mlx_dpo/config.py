"""One configuration dataclass, read from YAML and command-line flags (flags win).

Unknown keys, wrong types and out-of-range values are refused before anything is loaded,
with the file and line of the offending key.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlx_dpo.errors import UserError

LOSSES = ("sigmoid", "robust", "ipo", "hinge", "simpo")
SCHEDULES = ("constant", "linear", "cosine")
REFERENCE_MODES = ("cached", "live")
FIELD_NAMES = ("prompt", "chosen", "rejected", "system")


@dataclass
class TrainConfig:
    model: str | None = None
    # A file, a folder or a Hugging Face dataset id; or a list of sets mixed by weight, each
    # {path, split, config, revision, weight, fields, valid_split} (mlx_dpo.sources).
    data: str | list[dict[str, Any]] | None = None
    data_split: str | None = None  # the set's own name of the split to train on (default train)
    data_config: str | None = None  # a Hub set's config (subset)
    data_revision: str | None = None  # a Hub set's branch, tag or commit
    valid_split: str | None = None  # the set's own name of the validation split
    # Share of train carved for validation when the data has none; None: 5% (at most 256
    # pairs) for sets of 200 pairs or more; 0: never.
    valid_fraction: float | None = None
    max_pairs: int | None = None  # a seeded sample of this many train pairs
    adapter_path: str | None = None
    iters: int | None = None
    epochs: float | None = None
    batch_size: int | str = 4  # or "auto": the largest batch the memory plan fits
    grad_accumulation: int = 1
    learning_rate: float = 1e-5
    lr_schedule: str = "linear"
    warmup: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    beta: float = 0.1
    loss: str = "sigmoid"
    label_smoothing: float = 0.0
    simpo_gamma: float | None = None
    sft_weight: float = 0.0
    lora_rank: int = 8
    lora_scale: float = 20.0
    lora_dropout: float = 0.0
    lora_layers: int | None = None
    lora_keys: list[str] | None = None
    max_length: int = 1024
    reference: str = "cached"
    init_adapter: str | None = None
    quantize: int | None = None
    grad_checkpoint: bool = False
    prefix_sharing: bool = True
    seed: int = 0
    eval_every: int = 50
    save_every: int = 100
    fields: dict[str, str] = field(default_factory=dict)
    health: dict[str, Any] = field(default_factory=dict)
    trust_remote_code: bool = False
    memory_limit_gb: float | None = None  # overrides the device's memory (the plan, the guard)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


CONFIG_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig))


def _type_of(name: str) -> Any:
    hints = typing.get_type_hints(TrainConfig)
    return hints[name]


def _check_type(value: Any, expected: Any) -> bool:
    if expected is Any:
        return True
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_check_type(value, arm) for arm in typing.get_args(expected))
    if expected is type(None):
        return value is None
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is str:
        return isinstance(value, str)
    if origin is list:
        (item,) = typing.get_args(expected)
        return isinstance(value, list) and all(_check_type(v, item) for v in value)
    if origin is dict:
        key_type, value_type = typing.get_args(expected)
        return isinstance(value, dict) and all(
            _check_type(k, key_type) and _check_type(v, value_type) for k, v in value.items()
        )
    return isinstance(value, expected)


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _type_name(expected: Any) -> str:
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        arms = [_type_name(a) for a in typing.get_args(expected) if a is not type(None)]
        return " or ".join(arms) + " (or null)"
    if origin is list:
        (item,) = typing.get_args(expected)
        return "a list of mappings" if typing.get_origin(item) is dict else "a list of strings"
    if origin is dict:
        return "a mapping"
    return _TYPE_NAMES.get(expected, str(expected))


def _key_lines(text: str) -> dict[str, int]:
    """Line number (1-based) of each top-level key, for error messages."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    lines = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, _ in node.value:
            lines[str(key_node.value)] = key_node.start_mark.line + 1
    return lines


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into checked key/value pairs (types not yet merged)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not valid UTF-8 ({err.reason} at byte {err.start})") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err)
        raise UserError(f"{where}: not valid YAML ({problem})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UserError(f"{path}: a config must be a mapping of keys to values")
    lines = _key_lines(text)
    values = {str(k): _coerce_float(str(k), v) for k, v in values.items()}
    problems = []
    for key, value in values.items():
        where = f"{path}:{lines.get(str(key), '?')}"
        problems += [f"{where}: {p}" for p in check_value(str(key), value)]
    if problems:
        raise UserError(f"{path}: invalid configuration", problems)
    return values


def _coerce_float(key: str, value: Any) -> Any:
    """PyYAML (YAML 1.1) reads `1e-5` as a string; accept it where a float is expected."""
    if key in CONFIG_KEYS and isinstance(value, str) and _type_of(key) in (float, float | None):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def check_value(key: str, value: Any) -> list[str]:
    if key not in CONFIG_KEYS:
        suggestion = difflib.get_close_matches(key.replace("-", "_"), CONFIG_KEYS, n=1)
        hint = f" (did you mean '{suggestion[0]}'?)" if suggestion else ""
        return [f"unknown key '{key}'{hint}"]
    expected = _type_of(key)
    if key == "batch_size" and not (_check_type(value, int) or value == "auto"):
        return [f"'batch_size' must be an integer or 'auto', got {value!r}"]
    if not _check_type(value, expected):
        return [f"'{key}' must be {_type_name(expected)}, got {value!r}"]
    return []


def _range_problems(config: TrainConfig) -> list[str]:
    c = config
    problems = []

    def need(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    need(c.beta > 0, f"'beta' must be > 0, got {c.beta}")
    need(c.lora_rank > 0, f"'lora_rank' must be > 0, got {c.lora_rank}")
    need(0 <= c.lora_dropout < 1, f"'lora_dropout' must be in [0, 1), got {c.lora_dropout}")
    need(
        0 <= c.label_smoothing < 0.5,
        f"'label_smoothing' must be in [0, 0.5), got {c.label_smoothing}",
    )
    need(
        c.batch_size == "auto" or c.batch_size > 0, f"'batch_size' must be > 0, got {c.batch_size}"
    )
    need(c.grad_accumulation > 0, f"'grad_accumulation' must be > 0, got {c.grad_accumulation}")
    need(c.learning_rate > 0, f"'learning_rate' must be > 0, got {c.learning_rate}")
    need(c.warmup >= 0, f"'warmup' must be >= 0, got {c.warmup}")
    need(c.weight_decay >= 0, f"'weight_decay' must be >= 0, got {c.weight_decay}")
    need(c.max_grad_norm >= 0, "'max_grad_norm' must be >= 0 (0 = no clipping)")
    need(c.sft_weight >= 0, f"'sft_weight' must be >= 0, got {c.sft_weight}")
    need(c.max_length >= 8, f"'max_length' must be >= 8, got {c.max_length}")
    need(c.eval_every >= 0, "'eval_every' must be >= 0 (0 = only at the end)")
    need(c.save_every >= 0, "'save_every' must be >= 0 (0 = only at the end)")
    need(c.iters is None or c.iters > 0, f"'iters' must be > 0, got {c.iters}")
    need(c.epochs is None or c.epochs > 0, f"'epochs' must be > 0, got {c.epochs}")
    need(c.iters is None or c.epochs is None, "give 'iters' or 'epochs', not both")
    need(c.lora_layers is None or c.lora_layers > 0, "'lora_layers' must be > 0")
    need(
        c.valid_fraction is None or 0 <= c.valid_fraction < 1,
        f"'valid_fraction' must be in [0, 1), got {c.valid_fraction}",
    )
    need(c.max_pairs is None or c.max_pairs > 0, f"'max_pairs' must be > 0, got {c.max_pairs}")
    need(
        c.memory_limit_gb is None or c.memory_limit_gb > 0,
        f"'memory_limit_gb' must be > 0, got {c.memory_limit_gb}",
    )
    need(c.quantize in (None, 4, 8), f"'quantize' must be 4 or 8, got {c.quantize}")
    need(c.loss in LOSSES, f"'loss' must be one of {', '.join(LOSSES)}, got {c.loss!r}")
    need(
        c.lr_schedule in SCHEDULES,
        f"'lr_schedule' must be one of {', '.join(SCHEDULES)}, got {c.lr_schedule!r}",
    )
    need(
        c.reference in REFERENCE_MODES,
        f"'reference' must be one of {', '.join(REFERENCE_MODES)}, got {c.reference!r}",
    )
    need(
        c.label_smoothing == 0 or c.loss in ("sigmoid", "robust"),
        f"'label_smoothing' applies to the sigmoid and robust losses, not {c.loss!r}",
    )
    need(
        c.simpo_gamma is None or c.loss == "simpo",
        f"'simpo_gamma' applies to the simpo loss, not {c.loss!r}",
    )
    for key in c.fields:
        need(key in FIELD_NAMES, f"'fields' maps {', '.join(FIELD_NAMES)}; unknown '{key}'")
    return problems


def build_config(yaml_values: dict[str, Any], flag_values: dict[str, Any]) -> TrainConfig:
    """Merge YAML values and flags (flags win; a flag left unset is None and does not count)."""
    merged = dict(yaml_values)
    merged.update({k: v for k, v in flag_values.items() if v is not None})
    problems = []
    for key, value in merged.items():
        problems += check_value(key, value)
    if problems:
        raise UserError("invalid configuration", problems)
    # Ints are fine where floats are expected.
    for key, value in merged.items():
        if _type_of(key) in (float, float | None) and isinstance(value, int):
            merged[key] = float(value)
    config = TrainConfig(**merged)
    problems = _range_problems(config)
    if problems:
        raise UserError("invalid configuration", problems)
    if config.health:
        from mlx_dpo.health import thresholds_from_dict

        thresholds_from_dict(config.health)
    return config


def save_config(config: TrainConfig, path: str | Path) -> None:
    from mlx_dpo.events import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


def load_config_file(path: str | Path) -> TrainConfig:
    return build_config(read_yaml(path), {})
