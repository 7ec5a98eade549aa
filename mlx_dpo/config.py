"""One configuration dataclass, read from YAML and command-line flags (flags win).

Unknown keys, wrong types and out-of-range values are refused before anything is loaded,
with the file and line of the offending key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import sys
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from mlx_dpo import loss_catalog, paths
from mlx_dpo.errors import UserError
from mlx_dpo.events import atomic_write_text

LOSSES = loss_catalog.LOSSES
# Whole numbers of a config or a flag (steps, tokens, sizes, thresholds) are at most this: any
# real setting fits, and every value can reach MLX and numpy as a 32-bit integer.
INT_LIMIT = 2**31 - 1
# Python refuses to read integers longer than this (sys.get_int_max_str_digits, 3.11+).
INT_DIGITS_LIMIT = getattr(sys, "get_int_max_str_digits", lambda: 4300)() or 4300
# Seeds: MLX takes an unsigned 64-bit seed; per-micro-batch dropout seeds are derived as
# seed * 1_000_003 + k (trainer/step.py), which stays in MLX's range for seeds below 2**32.
SEED_MAX = 2**32 - 1
# A memory limit above this many GB is a typo, not a machine (and overflows MLX's limit).
MEMORY_LIMIT_GB_MAX = 2.0**20
SCHEDULES = ("constant", "linear", "cosine")
REFERENCE_MODES = ("cached", "live")
FIELD_NAMES = ("prompt", "chosen", "rejected", "system", "completion", "label")


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
    loss: str | list[str] = "sigmoid"  # one loss, or a list whose terms are added
    label_smoothing: float = 0.0
    simpo_gamma: float | None = None
    sft_weight: float = 0.0
    # Losses beyond DPO's (mlx_dpo/loss_catalog.py): TRL's names and defaults.
    loss_weights: list[float] | None = None  # one per loss of a list; 1 each by default
    discopop_tau: float = 0.05
    cpo_alpha: float = 1.0
    ld_alpha: float | None = None  # LD-DPO: weight of the tokens past the shorter response
    use_weighting: bool = False  # WPO: weigh each pair by its probability under the policy
    desirable_weight: float = 1.0  # KTO's λ_D
    undesirable_weight: float = 1.0  # KTO's λ_U
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
    # Watching the model learn (mlx_dpo/trainer/samples.py): greedy answers to this many fixed
    # prompts at each evaluation (0: off), from this prompts file (as `mlx-dpo collect` reads
    # one) or else the validation split, each at most sample_max_tokens long.
    sample_prompts: str | None = None
    sample_count: int = 4
    sample_max_tokens: int = 48
    fields: dict[str, str] = field(default_factory=dict)
    health: dict[str, Any] = field(default_factory=dict)
    trust_remote_code: bool = False
    memory_limit_gb: float | None = None  # overrides the device's memory (the plan, the guard)
    # A paused run with no dashboard attached checkpoints and stops after this many minutes
    # without a command (mlx_dpo/trainer/control.py); 0: it waits for ever.
    pause_timeout_minutes: float = 30.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


CONFIG_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig))


def _type_of(name: str) -> Any:
    hints = typing.get_type_hints(TrainConfig)
    return hints[name]


def _check_type(value: Any, expected: Any) -> bool:
    if expected is Any:  # e.g. the values of `health:`, which thresholds_from_dict checks
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
        if item is float:
            return "a list of numbers"
        return "a list of mappings" if typing.get_origin(item) is dict else "a list of strings"
    if origin is dict:
        return "a mapping"
    return _TYPE_NAMES.get(expected, str(expected))


def yaml_key_places(path: str | Path) -> dict[str, str]:
    """Each top-level key of a YAML file as "file:line", to say where a value came from."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, ValueError):
        return {}
    return {key: f"{path}:{line}" for key, line in _key_lines(text).items()}


def locate_problems(err: UserError, places: dict[str, str]) -> UserError:
    """A config's problems, each led by where its setting came from (`places`: key ->
    "file:line" or the flag) when it names one; the same error otherwise."""
    problems = []
    for problem in err.problems:
        key = re.match(r"'(\w+)'", problem)
        place = places.get(key.group(1)) if key else None
        problems.append(f"{place}: {problem}" if place else problem)
    return UserError(str(err.args[0]), problems)


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


def _parse_yaml(path: Path, text: str) -> Any:
    """The YAML's value, or a UserError naming the file and line."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err)
        raise UserError(f"{where}: not valid YAML ({problem})") from None
    except ValueError as err:  # an integer past Python's limit on digits (4300)
        digits = re.search(rf"\d{{{INT_DIGITS_LIMIT + 1},}}", text)
        if digits is None:
            raise UserError(f"{path}: not valid YAML ({err})") from None
        line = text.count("\n", 0, digits.start()) + 1
        raise UserError(
            f"{path}:{line}: a number of {len(digits.group())} digits; no setting takes one "
            "that long"
        ) from None
    except RecursionError:
        raise UserError(f"{path}: not valid YAML (nested too deeply)") from None


def read_yaml(path: str | Path, run_record: bool = False) -> dict[str, Any]:
    """Read a YAML config file into checked key/value pairs (types not yet merged).
    A file cannot grant remote code: `trust_remote_code: true` is refused, except in a run's
    own record (`run_record`: its config.yaml, read on --resume), where it is ignored."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not valid UTF-8 ({err.reason} at byte {err.start})") from None
    values = _parse_yaml(path, text)
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UserError(f"{path}: a config must be a mapping of keys to values")
    lines = _key_lines(text)
    values = {str(k): _coerce_float(str(k), v) for k, v in values.items()}
    if run_record:
        values.pop("trust_remote_code", None)
    problems = []
    for key, value in values.items():
        where = f"{path}:{lines.get(str(key), '?')}"
        problems += [
            f"{where}: {p}" for p in check_value(str(key), value) + path_problems(key, value)
        ]
        if key == "health" and isinstance(value, dict):
            try:
                thresholds_from_dict(value)
            except UserError as err:
                problems += [f"{where}: {p}" for p in err.problems]
        if key == "trust_remote_code" and value is True and not run_record:
            problems.append(
                f"{where}: 'trust_remote_code' is granted only by --trust-remote-code on the "
                "command line, never by a file"
            )
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


def _number_problems(config: TrainConfig) -> list[str]:
    """Numbers that no setting may hold: inf and NaN anywhere (they would surface later as a
    non-finite loss, blamed on the data), whole numbers beyond INT_LIMIT, seeds outside
    [0, SEED_MAX]."""
    problems = []
    for key in CONFIG_KEYS:
        value = getattr(config, key)
        values = value if isinstance(value, list) else [value]
        for item in values:
            if isinstance(item, bool) or not isinstance(item, int | float):
                continue
            if isinstance(item, float) and not math.isfinite(item):
                if key != "pause_timeout_minutes":  # its own rule says its range (0 = never)
                    problems.append(f"'{key}' must be a finite number, got {item}")
            elif key == "seed" and not 0 <= item <= SEED_MAX:
                problems.append(f"'seed' must be in [0, {SEED_MAX}] (MLX's seeds), got {item}")
            elif isinstance(item, int) and abs(item) > INT_LIMIT:
                problems.append(f"'{key}' must be at most {INT_LIMIT}, got {_short(item)}")
    return problems


def _short(value: Any) -> str:
    """A value for a message: a number thousands of digits long is shown by its size."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**30 else ""
    return text or f"a {len(str(abs(value)))}-digit number"


def first_per_key(problems: list[str]) -> list[str]:
    """One problem per setting: a value is one mistake, said once (the first rule it breaks:
    a 'desirable_weight' of 0 for the sigmoid loss is foremost one the loss does not use)."""
    seen: set[str] = set()
    kept = []
    for problem in problems:
        key = re.match(r"'(\w+)'", problem)
        if key is None or key.group(1) not in seen:
            kept.append(problem)
        if key is not None:
            seen.add(key.group(1))
    return kept


def _pause_timeout_problem(c: TrainConfig) -> list[str]:
    if math.isfinite(c.pause_timeout_minutes) and c.pause_timeout_minutes >= 0:
        return []
    return [f"'pause_timeout_minutes' must be >= 0 (0 = never), got {c.pause_timeout_minutes}"]


def _range_problems(config: TrainConfig) -> list[str]:
    c = config
    problems = _number_problems(c)
    if problems:
        return problems + _pause_timeout_problem(c)

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
    need(c.sample_count >= 0, f"'sample_count' must be >= 0 (0 = off), got {c.sample_count}")
    need(c.sample_max_tokens > 0, f"'sample_max_tokens' must be > 0, got {c.sample_max_tokens}")
    need(c.iters is None or c.iters > 0, f"'iters' must be > 0, got {c.iters}")
    need(c.epochs is None or c.epochs > 0, f"'epochs' must be > 0, got {c.epochs}")
    need(c.iters is None or c.epochs is None, "give 'iters' or 'epochs', not both")
    need(c.lora_layers is None or c.lora_layers > 0, "'lora_layers' must be > 0")
    need(c.lora_scale > 0, f"'lora_scale' must be > 0, got {c.lora_scale}")
    need(
        c.lora_keys is None or (bool(c.lora_keys) and all(k.strip() for k in c.lora_keys)),
        f"'lora_keys' must name at least one module, none of them empty, got {c.lora_keys!r}",
    )
    need(
        c.valid_fraction is None or 0 <= c.valid_fraction < 1,
        f"'valid_fraction' must be in [0, 1), got {c.valid_fraction}",
    )
    need(c.max_pairs is None or c.max_pairs > 0, f"'max_pairs' must be > 0, got {c.max_pairs}")
    need(
        c.memory_limit_gb is None or c.memory_limit_gb > 0,
        f"'memory_limit_gb' must be > 0, got {c.memory_limit_gb}",
    )
    need(
        c.memory_limit_gb is None or c.memory_limit_gb <= MEMORY_LIMIT_GB_MAX,
        f"'memory_limit_gb' must be at most {MEMORY_LIMIT_GB_MAX:.0f}, got {c.memory_limit_gb}",
    )
    problems += _pause_timeout_problem(c)
    need(c.quantize in (None, 4, 8), f"'quantize' must be 4 or 8, got {c.quantize}")
    need(
        c.lr_schedule in SCHEDULES,
        f"'lr_schedule' must be one of {', '.join(SCHEDULES)}, got {c.lr_schedule!r}",
    )
    need(
        c.reference in REFERENCE_MODES,
        f"'reference' must be one of {', '.join(REFERENCE_MODES)}, got {c.reference!r}",
    )
    for key in c.fields:
        need(key in FIELD_NAMES, f"'fields' maps {', '.join(FIELD_NAMES)}; unknown '{key}'")
    return problems + loss_problems(c)


# ---------------------------------------------------------------------------------------------
# The loss and its options (mlx_dpo/loss_catalog.py says what each loss is and reads)

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


def _names_text(names: list[str] | tuple[str, ...]) -> str:
    return ", ".join(names)


def loss_problems(c: TrainConfig) -> list[str]:
    """What is wrong with the loss, its list and weights, and the options that go with it.
    An option set for a loss that does not read it is refused (never silently ignored)."""
    names = loss_catalog.loss_names(c.loss)
    unknown = [n for n in names if n not in loss_catalog.CATALOG]
    if unknown:
        return [f"'loss' must be one of {', '.join(LOSSES)}, got {', '.join(map(repr, unknown))}"]
    if not names:
        return ["'loss' must name at least one loss"]
    problems = _list_problems(c, names)

    def need(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    shown = c.loss if isinstance(c.loss, str) else names

    def reads(option: str) -> list[str]:
        return [n for n in LOSSES if option in loss_catalog.CATALOG[n].options]

    for option in ("label_smoothing", "discopop_tau", "cpo_alpha"):
        users = reads(option)
        need(
            getattr(c, option) == _DEFAULTS[option] or any(n in users for n in names),
            f"'{option}' applies to the {_names_text(users)} losses, not {shown!r}",
        )
    kto = "kto" in names
    for option in ("desirable_weight", "undesirable_weight"):
        need(kto or getattr(c, option) == 1.0, f"'{option}' applies to the kto loss only")
        need(getattr(c, option) > 0, f"'{option}' must be > 0, got {getattr(c, option)}")
    need(
        c.simpo_gamma is None or "simpo" in names,
        f"'simpo_gamma' applies to the simpo loss, not {shown!r}",
    )
    need(c.discopop_tau > 0, f"'discopop_tau' must be > 0, got {c.discopop_tau}")
    need(c.cpo_alpha >= 0, f"'cpo_alpha' must be >= 0, got {c.cpo_alpha}")
    need(
        "exo_pair" not in names or c.label_smoothing > 0,
        "'exo_pair' needs 'label_smoothing' > 0 (the EXO paper uses 1e-3)",
    )
    need(
        not kto or c.batch_size == "auto" or c.batch_size >= 2,
        "'kto' estimates its KL term from the other completions of a batch: "
        "'batch_size' must be at least 2",
    )
    reference = loss_catalog.needs_reference(names)
    need(
        reference or c.reference == _DEFAULTS["reference"],
        f"'reference' does not apply: {shown!r} uses no reference model",
    )
    if c.ld_alpha is not None:
        need(0 <= c.ld_alpha <= 1, f"'ld_alpha' must be in [0, 1], got {c.ld_alpha}")
        need(
            reference and not kto,
            f"'ld_alpha' (LD-DPO) applies to pair losses with a reference, not {shown!r}",
        )
    if c.use_weighting:
        need(not kto, "'use_weighting' (WPO) weighs pairs; kto has none")
        sorting = [n for n in names if n in loss_catalog.SORTING]
        need(
            not sorting,
            f"'use_weighting' (WPO) weighs each pair, and {_names_text(sorting)} sorts the "
            f"batch's pairs",
        )
    return problems


def _list_problems(c: TrainConfig, names: tuple[str, ...]) -> list[str]:
    problems = []
    if len(set(names)) != len(names):
        problems.append(f"'loss' names a loss twice: {_names_text(names)}")
    if c.loss_weights is not None:
        if len(c.loss_weights) != len(names):
            problems.append(
                f"'loss_weights' needs one weight per loss ({len(names)}: "
                f"{_names_text(names)}), got {len(c.loss_weights)}"
            )
        if any(not math.isfinite(w) or w < 0 for w in c.loss_weights):
            problems.append(f"'loss_weights' must be >= 0, got {c.loss_weights}")
    if "kto" in names and len(names) > 1:
        problems.append(
            "'kto' trains on unpaired completions and cannot be combined with other losses"
        )
    if names == ("sft",):
        problems.append(
            "'sft' alone is supervised fine-tuning, not preference tuning: add it to a "
            "preference loss, e.g. loss: [sigmoid, sft]"
        )
    preference = [n for n in names if n != "sft"]
    free = [n for n in preference if n in loss_catalog.REFERENCE_FREE]
    if free and len(free) < len(preference):
        problems.append(
            f"'loss' mixes reference-free ({_names_text(free)}) and reference-based losses: a "
            f"list uses the reference model for all its losses or for none"
        )
    elif free and loss_catalog.reward_kind(free) == loss_catalog.REWARD_NONE:
        problems.append(
            f"'loss' mixes {_names_text(free)}, whose rewards are measured differently "
            f"(length-averaged vs summed log-probs)"
        )
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
        if _type_of(key) == list[float] | None and isinstance(value, list):
            merged[key] = [float(v) for v in value]
    expand_paths(merged)
    config = TrainConfig(**merged)
    problems = first_per_key(_range_problems(config))
    if problems:
        raise UserError("invalid configuration", problems)
    if config.health:
        thresholds_from_dict(config.health)
    return config


# Keys that name files or folders: `~` and $VARS expanded, empty refused (mlx_dpo/paths.py).
# Always local (made absolute) / a local path or a Hugging Face id.
LOCAL_PATH_KEYS = ("adapter_path", "init_adapter", "sample_prompts")
SOURCE_PATH_KEYS = ("model", "data")


def path_problems(key: str, value: Any) -> list[str]:
    """Why a path key's value cannot be expanded (empty, an unset variable), for read_yaml to
    name with its file and line; [] when it can (or the key is no path)."""
    try:
        expand_paths({key: value})
    except UserError as err:
        return [str(err)]
    return []


def expand_paths(values: dict[str, Any]) -> None:
    """Expand, in place, every path among the values of a config (a data list's entries too)."""
    for key in LOCAL_PATH_KEYS:
        if isinstance(values.get(key), str):
            values[key] = paths.expand_local(values[key], f"'{key}'")
    for key in SOURCE_PATH_KEYS:
        if isinstance(values.get(key), str):
            values[key] = paths.expand_source(values[key], f"'{key}'")
    if isinstance(values.get("data"), list):
        values["data"] = [
            {**entry, "path": paths.expand_source(entry["path"], "'data' path")}
            if isinstance(entry, dict) and isinstance(entry.get("path"), str)
            else entry
            for entry in values["data"]
        ]


def save_config(config: TrainConfig, path: str | Path) -> None:
    """The config as YAML, with `trust_remote_code: false` whatever it was: a file never
    grants remote code (read_yaml refuses it), so whoever starts a trainer from a saved
    config passes --trust-remote-code on its command line."""
    values = dataclasses.replace(config, trust_remote_code=False).to_dict()
    atomic_write_text(path, yaml.safe_dump(values, sort_keys=False))


def load_config_file(path: str | Path, run_record: bool = False) -> TrainConfig:
    return build_config(read_yaml(path, run_record), {})


# ---------------------------------------------------------------------------------------------
# Run-health thresholds: the `health:` mapping of a config (mlx_dpo.health applies them)


def _threshold(
    default: float | int, help: str, low: float, high: float | None = None, low_open: bool = False
) -> Any:
    """A dataclass field carrying its documentation and allowed range (checked when users set
    it in the config). `low_open` makes the lower bound exclusive."""
    metadata = {"help": help, "low": low, "high": high, "low_open": low_open}
    return field(default=default, metadata=metadata)


@dataclass
class HealthThresholds:
    """Every threshold of the run-health checks; users override them under `health:` in the
    YAML config. Each field's `metadata["help"]` says what it means; docs/health.md has the
    same table for users. Windows count step events."""

    smoothing_window: int = _threshold(10, "step events whose median is each smoothed value", low=1)
    patience: int = _threshold(
        5, "consecutive step events a condition must hold before it is raised", low=1
    )
    warmup_steps: int = _threshold(
        30, "step events before the trend checks (orientation, collapse, kl) start", low=1
    )
    trend_window: int = _threshold(
        20,
        "'rising'/'falling' compares the smoothed value now with this many step events ago",
        low=1,
    )
    reference_loss_tolerance: float = _threshold(
        0.02,
        "allowed |first loss - expected| (times max(1, expected)) before reference_mismatch",
        low=0.0,
        low_open=True,
    )
    reference_reward_tolerance: float = _threshold(
        0.05,
        "allowed |rewards/chosen| and |rewards/rejected| at the first step",
        low=0.0,
        low_open=True,
    )
    orientation_train_accuracy: float = _threshold(
        0.5, "orientation: smoothed train accuracy at or below this", low=0.0, high=1.0
    )
    orientation_loss_drop: float = _threshold(
        0.05,
        "orientation: the loss fell by at least this share of its starting value",
        low=0.0,
        high=1.0,
        low_open=True,
    )
    orientation_valid_accuracy: float = _threshold(
        0.3,
        "orientation: a validation accuracy at or below this (with a negative margin)",
        low=0.0,
        high=0.5,
    )
    valid_min_pairs: int = _threshold(
        20, "validation evals with fewer pairs are too noisy to judge and are skipped", low=1
    )
    collapse_fraction: float = _threshold(
        0.2,
        "chosen_logp_collapse: chosen log-prob fell by this share of its starting value",
        low=0.0,
        high=1.0,
        low_open=True,
    )
    kl_limit: float = _threshold(
        50.0, "kl_drift: smoothed |kl| (nats per sequence) above this", low=0.0, low_open=True
    )
    kl_growth: float = _threshold(
        0.1,
        "kl_drift: and it rose by at least this share of kl_limit over trend_window steps",
        low=0.0,
        low_open=True,
    )
    not_learning_steps: int = _threshold(
        50, "not_learning: length of the stretch at full learning rate (step events)", low=1
    )
    not_learning_margin: float = _threshold(
        0.05,
        "not_learning: |median margin| over the stretch at or below this (reward units)",
        low=0.0,
    )
    not_learning_accuracy: float = _threshold(
        0.6,
        "not_learning: mean accuracy over the stretch at or below this",
        low=0.0,
        high=1.0,
    )
    overfit_train_accuracy: float = _threshold(
        0.95, "overfitting: smoothed train accuracy at or above this", low=0.0, high=1.0
    )
    overfit_valid_accuracy_drop: float = _threshold(
        0.05,
        "overfitting: validation accuracy at least this far below its best",
        low=0.0,
        high=1.0,
        low_open=True,
    )
    overfit_valid_loss_rise: float = _threshold(
        0.1,
        "overfitting: validation loss at least this share above its lowest",
        low=0.0,
        low_open=True,
    )
    overfit_evals: int = _threshold(
        2, "overfitting: consecutive validation evals that must show it", low=1
    )
    length_bias_share: float = _threshold(
        0.65,
        "length_bias: share of pairs whose chosen response has more tokens",
        low=0.0,
        high=1.0,
    )
    length_bias_ratio: float = _threshold(
        1.1,
        "length_bias: and mean chosen tokens / mean rejected tokens at or above this",
        low=0.0,
    )
    length_bias_min_pairs: int = _threshold(
        20, "length_bias: fewer pairs than this are not judged", low=1
    )


def _range_text(meta: dict) -> str:
    low = f"above {meta['low']}" if meta["low_open"] else f"at least {meta['low']}"
    if meta["high"] is None:
        return low
    return f"{low} and at most {meta['high']}"


def _threshold_problem(name: str, wanted: type, meta: dict, value: Any) -> str | None:
    """Why `value` cannot be threshold `name`, or None when it can."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "a whole number" if wanted is int else "a number"
        return f"health.{name}: must be {kind}, got {value!r}"
    if wanted is int and not isinstance(value, int):
        return f"health.{name}: must be a whole number, got {value!r}"
    if not math.isfinite(value):
        return f"health.{name}: must be a finite number, got {value!r}"
    too_low = value <= meta["low"] if meta["low_open"] else value < meta["low"]
    too_high = meta["high"] is not None and value > meta["high"]
    if too_low or too_high:
        return f"health.{name}: must be {_range_text(meta)}, got {value!r}"
    return None


def thresholds_from_dict(values: dict | None) -> HealthThresholds:
    """The `health:` mapping of a config as thresholds; unset ones keep their defaults.
    Unknown keys, wrong types and out-of-range values are a UserError that names each key."""
    if values is None:
        return HealthThresholds()
    if not isinstance(values, dict):
        raise UserError(f"health: expected a mapping of threshold names to numbers, got {values!r}")
    known = {f.name: f for f in fields(HealthThresholds)}
    problems = []
    chosen: dict[str, float | int] = {}
    for name, value in values.items():
        spec = known.get(name)
        if spec is None:
            problems.append(f"health.{name}: unknown threshold; known ones are {', '.join(known)}")
            continue
        wanted = int if isinstance(spec.default, int) else float
        problem = _threshold_problem(name, wanted, spec.metadata, value)
        if problem:
            problems.append(problem)
        else:
            chosen[name] = wanted(value)
    if problems:
        raise UserError("invalid run-health thresholds", problems)
    return HealthThresholds(**chosen)
