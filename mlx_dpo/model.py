"""Loading the base model, applying LoRA with mlx-lm's own layers, and the reference switch.

The reference model is the same weights with every LoRA branch switched off (scale 0): no
second copy of the weights is ever loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from mlx_dpo.adapter_config import read_adapter_config
from mlx_dpo.errors import UserError, read_json_object
from mlx_dpo.events import ADAPTER_CONFIG_FILE, ADAPTER_FILE, Progress, atomic_write_json
from mlx_dpo.gguf import find_gguf, load_gguf
from mlx_dpo.platform import is_metal
from mlx_dpo.safetensors_header import check_safetensors

ADAPTER_LEAVES = ("lora_a", "lora_b")


def print_note(line: str) -> None:
    """Where loading notes go by default: stderr, so that --json output stays clean."""
    print(f"note: {line}", file=sys.stderr, flush=True)


def _looks_like_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith(("/", ".", "~"))


def resolve_model_path(model: str) -> Path:
    """A local folder or GGUF file, or a Hugging Face id fetched (or found in the local hub
    cache) through mlx-lm. A path that does not exist is an error here, never a hub request."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir() and find_gguf(path) is None:
            raise UserError(
                f"{model}: not a model folder (expected a folder with config.json, or a .gguf file)"
            )
        return path
    if not _looks_like_hub_id(model):
        raise UserError(f"{model}: no such model folder (and not a Hugging Face id 'org/name')")
    from mlx_lm.utils import _download

    try:
        return Path(_download(model))
    except Exception as err:  # the hub client raises many kinds; all mean "not available"
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = " (HF_HUB_OFFLINE=1 is set and it is not in the local cache)" if offline else ""
        raise UserError(
            f"{model}: could not get this model from the Hugging Face hub{hint}: {err}"
        ) from None


# The JSON files of a model folder that mlx-lm and transformers read, when present.
MODEL_JSON_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.json",
)


def check_model_folder(path: Path) -> None:
    """A UserError naming the file for a folder that is not a whole model: no config.json, no
    safetensors weights, a weights file cut short or with a damaged header, a JSON file that
    is not a JSON object."""
    if find_gguf(path) is not None:
        return
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: not a model folder (no config.json)")
    weights = sorted(path.glob("model*.safetensors"))
    if not weights:
        raise UserError(
            f"{path}: no model*.safetensors weights (only safetensors weights are loaded)"
        )
    for name in MODEL_JSON_FILES:
        if (path / name).is_file():
            read_json_object(path / name)
    for file in weights:
        check_safetensors(file, "the model's weights")


def config_value(path: Path, key: str) -> Any:
    try:
        return json.loads((path / "config.json").read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None


def _model_args_fields(config: dict) -> set[str] | None:
    """The fields of mlx-lm's ModelArgs for this config's model_type (None when unknown)."""
    import inspect

    from mlx_lm.utils import _get_classes

    try:
        _, args_class = _get_classes(config)
    except (ValueError, KeyError):
        return None
    return set(inspect.signature(args_class).parameters)


def _hoist_rope(
    rope: dict, config: dict, fields: set[str], where: str, notes: list[str]
) -> dict[str, Any]:
    """Top-level keys for one flat transformers-5 `rope_parameters` dict."""
    out: dict[str, Any] = {}
    if "rope_theta" in rope and config.get("rope_theta") is None and "rope_theta" in fields:
        out["rope_theta"] = rope["rope_theta"]
        notes.append(f"rope_theta {rope['rope_theta']} taken from {where}")
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default" and config.get("rope_scaling") is None and "rope_scaling" in fields:
        scaling = {
            k: v for k, v in rope.items() if k not in ("rope_theta", "partial_rotary_factor")
        }
        out["rope_scaling"] = {**scaling, "rope_type": kind, "type": kind}
        notes.append(f"rope scaling {kind!r} taken from {where}")
    factor = rope.get("partial_rotary_factor")
    wanted = "partial_rotary_factor" in fields and config.get("partial_rotary_factor") is None
    if factor is not None and wanted:
        out["partial_rotary_factor"] = factor
        notes.append(f"partial_rotary_factor {factor} taken from {where}")
    return out


def normalize_model_config(config: dict, source: str) -> tuple[dict[str, Any], list[str]]:
    """Keys to set on a model config written by transformers 5 so that mlx-lm reads it as
    transformers does, and a note for each. mlx-lm's ModelArgs take `rope_theta`,
    `rope_scaling`, `partial_rotary_factor` and `sliding_window_pattern` at the top level and
    silently fall back to their defaults when absent; transformers 5 writes them inside
    `rope_parameters` (flat, or one dict per layer type such as Gemma 3's full/sliding
    attention) and as `_sliding_window_pattern`. Models whose ModelArgs read
    `rope_parameters` themselves are left alone. UserError for a shape that cannot be mapped."""
    rope = config.get("rope_parameters")
    fields = _model_args_fields(config)
    updates: dict[str, Any] = {}
    notes: list[str] = []
    if fields is None:
        return updates, notes
    if isinstance(rope, dict) and rope and "rope_parameters" not in fields:
        if all(isinstance(v, dict) for v in rope.values()):
            unknown = set(rope) - {"full_attention", "sliding_attention"}
            if unknown:
                raise UserError(
                    f"{source}: 'rope_parameters' for layer types {sorted(unknown)} cannot be "
                    f"given to mlx-lm's {config.get('model_type')} model"
                )
            full = rope.get("full_attention", {})
            updates.update(
                _hoist_rope(full, config, fields, "rope_parameters.full_attention", notes)
            )
            sliding = rope.get("sliding_attention")
            if sliding is not None:
                if sliding.get("rope_type", "default") != "default":
                    raise UserError(
                        f"{source}: rope_parameters.sliding_attention has rope_type "
                        f"{sliding.get('rope_type')!r}; mlx-lm's {config.get('model_type')} "
                        "model has no scaling for its sliding layers"
                    )
                if "rope_local_base_freq" in fields and "rope_local_base_freq" not in config:
                    updates["rope_local_base_freq"] = sliding["rope_theta"]
                    notes.append(
                        f"rope_local_base_freq {sliding['rope_theta']} taken from "
                        "rope_parameters.sliding_attention"
                    )
                elif "full_attention" not in rope:
                    updates.update(_hoist_rope(sliding, config, fields, "rope_parameters", notes))
        else:
            updates.update(_hoist_rope(rope, config, fields, "rope_parameters", notes))
    pattern = config.get("_sliding_window_pattern")
    wanted = "sliding_window_pattern" in fields and "sliding_window_pattern" not in config
    if pattern is not None and wanted:
        updates["sliding_window_pattern"] = pattern
        notes.append(f"sliding_window_pattern {pattern} taken from _sliding_window_pattern")
    notes = [f"{source}: transformers-5 config: {note}" for note in notes]
    return updates, notes


def read_model_config(path: Path) -> dict:
    return read_json_object(path / "config.json")


def load_model(
    model: str,
    quantize: int | None = None,
    trust_remote_code: bool = False,
    *,
    on_note: Callable[[str], None] = print_note,
    progress: Progress | None = None,
) -> tuple[nn.Module, Any, Path, dict]:
    """(model, tokenizer, local path, model config). Quantizes at load time if asked.

    `model` is a model folder, a Hugging Face id, or a GGUF file (or a folder holding one);
    `on_note` receives what was changed or converted on the way (a config written by
    transformers 5, dequantized GGUF tensors); `progress` hears the "loading" phase: the
    weights read into memory, in MB."""
    from mlx_lm.utils import load_model as mlx_load_model

    path = resolve_model_path(model)
    check_model_folder(path)
    gguf_file = find_gguf(path)
    if gguf_file is not None:
        net, tokenizer, config = load_gguf(gguf_file, on_note)
        check_finite_weights(read_weights(net, progress), model)
        return _noted_if_slow(
            _quantize_at_load(net, tokenizer, gguf_file, config, model, quantize), on_note
        )
    updates, notes = normalize_model_config(read_model_config(path), str(path / "config.json"))
    for note in notes:
        on_note(note)
    try:
        # Lazily: the weights are read below, a chunk at a time, so the reading can be told.
        net, config = mlx_load_model(
            path, lazy=True, model_config=updates or None, trust_remote_code=trust_remote_code
        )
    except ValueError as err:
        if "trust_remote_code" in str(err):
            raise UserError(
                f"{path}: this model's config asks to import and run its own Python file "
                f"({config_value(path, 'model_file')!r}); that is refused unless you pass "
                "--trust-remote-code (only do so for a model you trust)"
            ) from None
        raise UserError(f"{path}: cannot load this model: {one_line(err)}") from None
    except (TypeError, KeyError, AttributeError, RuntimeError) as err:
        # mlx-lm builds the model from config.json's values: one of the wrong type or missing.
        raise UserError(
            f"{path / 'config.json'}: cannot build the model from it ({type(err).__name__}: "
            f"{one_line(err)})"
        ) from None
    check_finite_weights(read_weights(net, progress), model)
    tokenizer = _load_tokenizer(path, trust_remote_code, config.get("eos_token_id"))
    return _noted_if_slow(_quantize_at_load(net, tokenizer, path, config, model, quantize), on_note)


# Said when a quantized model runs on MLX's CPU backend (measured: benchmarks/README.md, W4).
QUANTIZED_ON_CPU_NOTE = (
    "quantized weights on MLX's CPU backend: its quantized matrix products run ~70x slower than "
    "float32 ones (2.5 against ~170 GFLOP/s measured on a 2-core Linux Xeon, mlx 0.32), so on a "
    "CPU a full-precision copy of the model trains far faster (`mlx_lm.convert --dequantize` "
    "makes one; a Mac's GPU has fast quantized kernels)"
)


def _noted_if_slow(
    loaded: tuple[nn.Module, Any, Path, dict], on_note: Callable[[str], None]
) -> tuple[nn.Module, Any, Path, dict]:
    """`loaded`, after telling `on_note` when its quantized weights will run on a CPU."""
    if "quantization" in loaded[3] and not is_metal():
        on_note(QUANTIZED_ON_CPU_NOTE)
    return loaded


def one_line(err: BaseException, limit: int = 300) -> str:
    """An error's message on one line, cut to `limit` characters (mlx-lm lists every missing
    parameter of a model on a line of its own)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _load_tokenizer(path: Path, trust_remote_code: bool, eos_token_ids: Any = None) -> Any:
    """mlx-lm's tokenizer of a model folder; a UserError naming the folder's tokenizer files
    when they cannot make one (transformers raises many kinds of errors for them)."""
    from mlx_lm.utils import load_tokenizer

    try:
        return load_tokenizer(
            path, {"trust_remote_code": trust_remote_code}, eos_token_ids=eos_token_ids
        )
    except Exception as err:
        if "trust_remote_code" in str(err):
            raise UserError(
                f"{path}: this model's tokenizer needs its own Python code; that is refused "
                "unless you pass --trust-remote-code (only do so for a model you trust)"
            ) from None
        files = [f.name for f in sorted(path.glob("*token*")) if f.is_file()]
        raise UserError(
            f"{path}: cannot load its tokenizer from {', '.join(files) or 'its files'} "
            f"({type(err).__name__}: {one_line(err)})"
        ) from None


# No trained model holds a weight this large (outliers of real LLMs stay within thousands);
# a value beyond it is a damaged file (random bytes read as floats reach 1e38) whose first
# step overflows, and without this check that overflow was blamed on the learning rate.
MAX_SANE_WEIGHT = 1e6


def check_finite_weights(non_finite: list[str], model: str) -> None:
    """NaN or inf in the base weights: every number trained against them is meaningless, and
    without this the first step's non-finite loss would be blamed on the data."""
    if non_finite:
        shown = ", ".join(non_finite[:3]) + (
            f" and {len(non_finite) - 3} more" if len(non_finite) > 3 else ""
        )
        raise UserError(
            f"{model}: the model's weights are not finite (NaN, inf or beyond ±{MAX_SANE_WEIGHT:g} "
            f"in {shown}); the model is broken: fetch it again or use another"
        )


def _quantize_at_load(
    net: nn.Module, tokenizer: Any, path: Path, config: dict, model: str, quantize: int | None
) -> tuple[nn.Module, Any, Path, dict]:
    if quantize is not None:
        if "quantization" in config:
            raise UserError(
                f"{model}: already quantized; --quantize applies to a full-precision model"
            )
        from mlx_lm.utils import quantize_model

        net, config = quantize_model(net, config, group_size=64, bits=quantize)
    return net, tokenizer, path, config


# Read at most this many bytes between two progress reports while loading.
LOAD_CHUNK_BYTES = 256 * 2**20


def read_weights(model: nn.Module, progress: Progress | None = None) -> list[str]:
    """Evaluate a lazily loaded model's parameters (reading them from disk), a chunk of
    about LOAD_CHUNK_BYTES (or a fiftieth of the model) at a time, telling `progress` the MB
    read: at the start, after each chunk, and at the end (done == total). Returns the names
    of the floating-point parameters that hold NaN, inf or a value beyond MAX_SANE_WEIGHT
    (checked as each chunk is read)."""
    named = tree_flatten(model.parameters())
    total = sum(a.nbytes for _, a in named)
    chunk_bytes = max(1, min(LOAD_CHUNK_BYTES, total // 50))
    non_finite: list[str] = []

    def report(done: int) -> None:
        if progress is not None:
            progress("loading", round(done / 1e6, 1), round(total / 1e6, 1), "MB")

    def evaluate(chunk: list[tuple[str, mx.array]]) -> None:
        floats = [(n, a) for n, a in chunk if mx.issubdtype(a.dtype, mx.floating)]
        # NaN and inf fail the comparison too (abs(NaN) <= x is false).
        finite = [(mx.abs(a) <= MAX_SANE_WEIGHT).all() for _, a in floats]
        mx.eval([a for _, a in chunk], finite)
        non_finite.extend(n for (n, _), ok in zip(floats, finite, strict=True) if not ok.item())

    report(0)
    done, chunk, pending = 0, [], 0
    for name, array in named:
        chunk.append((name, array))
        pending += array.nbytes
        if pending >= chunk_bytes:
            evaluate(chunk)
            done += pending
            chunk, pending = [], 0
            report(done)
    if chunk or not named:
        evaluate(chunk)
        report(total)
    return non_finite


def is_quantized(model: nn.Module) -> bool:
    """Whether any of the model's layers hold quantized weights (as loaded, or by --quantize):
    export's --dequantize applies then."""
    return any(isinstance(m, QUANTIZED_LAYERS) for _, m in model.named_modules())


# MLX's quantized layers: QuantizedLinear, QuantizedEmbedding, QQLinear, the sharded ones.
QUANTIZED_LAYERS = tuple(getattr(nn, n) for n in dir(nn) if n.startswith(("Quantized", "QQ")))


def load_model_tokenizer(model: str, trust_remote_code: bool = False) -> Any:
    """Only the tokenizer of a model folder, hub id or GGUF file (for counting tokens)."""
    from mlx_dpo.gguf_tokenizer import load_gguf_tokenizer

    path = resolve_model_path(model)
    check_model_folder(path)
    gguf_file = find_gguf(path)
    if gguf_file is None:
        return _load_tokenizer(path, trust_remote_code)
    if (gguf_file.parent / "tokenizer.json").is_file():
        return _load_tokenizer(gguf_file.parent, False)
    _, metadata = mx.load(str(gguf_file), return_metadata=True)
    metadata = {k: v.tolist() if isinstance(v, mx.array) else v for k, v in metadata.items()}
    return load_gguf_tokenizer(metadata, str(gguf_file))


def num_layers(model: nn.Module) -> int:
    return len(model.layers)


def apply_lora(
    model: nn.Module,
    rank: int,
    scale: float,
    dropout: float,
    layers: int | None = None,
    keys: list[str] | None = None,
) -> dict:
    """Freeze the model and wrap linears in the last `layers` blocks (all by default) with
    mlx-lm's LoRA layers. Returns the lora_parameters as mlx-lm's adapter_config wants them."""
    total = num_layers(model)
    layers = total if layers is None else layers
    if layers > total:
        raise UserError(f"'lora_layers' is {layers} but the model has {total} layers")
    hidden = getattr(getattr(model, "args", None), "hidden_size", None)
    if isinstance(hidden, int) and rank > hidden:
        raise UserError(
            f"'lora_rank' is {rank} but the model's hidden size is {hidden}: a LoRA of a rank "
            "above it is no smaller than the layers it adapts"
        )
    lora_parameters = {"rank": rank, "scale": scale, "dropout": dropout}
    if keys:
        available = set()
        for block in model.layers:
            available.update(name for name, _ in block.named_modules())
        unknown = [k for k in keys if k not in available]
        if unknown:
            linears = sorted(
                name
                for name, m in model.layers[0].named_modules()
                if isinstance(m, (nn.Linear, nn.QuantizedLinear))
            )
            raise UserError(
                f"'lora_keys' {unknown} not found in the model's layers; "
                f"its linear layers are: {', '.join(linears)}"
            )
        lora_parameters["keys"] = list(keys)
    model.freeze()
    to_lora_layers(model, layers, lora_parameters, "'lora_keys'")
    return lora_parameters


def to_lora_layers(model: nn.Module, layers: int, parameters: dict, where: str) -> None:
    """mlx-lm's linear_to_lora_layers; a key that names a module it cannot wrap (a whole
    block, an attention module) is a UserError said from `where` (the flag or the file)."""
    from mlx_lm.tuner.utils import linear_to_lora_layers

    try:
        linear_to_lora_layers(model, layers, parameters)
    except ValueError as err:
        raise UserError(
            f"{where}: {one_line(err)} (name linear layers, e.g. self_attn.q_proj)"
        ) from None


@contextlib.contextmanager
def reference_mode(
    model: nn.Module, frozen_adapter: dict[str, tuple[mx.array, mx.array]] | None = None
) -> Iterator[None]:
    """Make the model the reference, and restore it afterwards, even on error.

    Without `frozen_adapter` every LoRA branch is switched off (scale 0): the reference is
    the base. With it (training that started from --init-adapter), each LoRA layer's
    lora_a/lora_b are swapped for the frozen initial ones: the reference is base + that
    adapter. Inside mx.compile the scale is read when the function is traced, so this must
    be used inside the traced function, not around the call. The reference is deterministic:
    LoRA dropout is off in it (with an init adapter the branch is live, and training mode
    would otherwise drop its inputs)."""
    modules = dict(named_lora_modules(model))
    saved = {name: (m.scale, m.lora_a, m.lora_b, m.get("dropout")) for name, m in modules.items()}
    try:
        for name, m in modules.items():
            if frozen_adapter is None:
                m.scale = 0.0
            else:
                m.lora_a, m.lora_b = frozen_adapter[name]
                if "dropout" in m:
                    m.dropout = nn.Identity()
        yield
    finally:
        for name, m in modules.items():
            m.scale, m.lora_a, m.lora_b, dropout = saved[name]
            if dropout is not None:
                m.dropout = dropout


def named_lora_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        (name, m)
        for name, m in model.named_modules()
        if hasattr(m, "lora_a") and hasattr(m, "lora_b") and hasattr(m, "scale")
    ]


def snapshot_adapter(model: nn.Module) -> dict[str, tuple[mx.array, mx.array]]:
    """Copies of every LoRA layer's current lora_a/lora_b (the frozen init adapter)."""
    frozen = {
        name: (mx.array(m.lora_a), mx.array(m.lora_b)) for name, m in named_lora_modules(model)
    }
    mx.eval(frozen)
    return frozen


def adapter_weights(model: nn.Module) -> dict[str, mx.array]:
    return {
        name: value
        for name, value in tree_flatten(model.trainable_parameters())
        if name.rsplit(".", 1)[-1] in ADAPTER_LEAVES
    }


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; quantized weights count their logical size."""
    from mlx_lm.utils import get_total_parameters

    trainable = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    return trainable, get_total_parameters(model)


def load_adapter_into(model: nn.Module, adapter_path: str | Path) -> dict:
    """Apply LoRA layers as described by an mlx-lm adapter folder and load its tensors.
    Returns the adapter config. Clear errors for a missing or mismatched adapter."""
    adapter_path = Path(adapter_path).expanduser()
    config_file = adapter_path / ADAPTER_CONFIG_FILE
    weights_file = adapter_path / ADAPTER_FILE
    config = read_adapter_config(adapter_path)
    check_safetensors(weights_file, "the adapter's weights")
    if config.get("fine_tune_type", "lora") != "lora":
        raise UserError(
            f"{adapter_path}: fine_tune_type {config.get('fine_tune_type')!r} is not supported "
            "(only LoRA: DoRA and full fine-tuning cannot switch the reference off)"
        )
    params = config.get("lora_parameters") or {}
    if not {"rank", "scale"} <= set(params):
        raise UserError(f"{config_file}: 'lora_parameters' needs 'rank' and 'scale'")
    layers = int(config.get("num_layers", num_layers(model)))
    if layers > num_layers(model):
        raise UserError(
            f"{adapter_path}: made for a model with at least {layers} layers; this one has "
            f"{num_layers(model)}"
        )
    model.freeze()
    to_lora_layers(model, layers, {"dropout": 0.0, **params}, str(config_file))
    weights = mx.load(str(weights_file))
    non_finite = [name for name, value in weights.items() if not mx.isfinite(value).all().item()]
    if non_finite:
        raise UserError(f"{weights_file}: NaN or inf in {', '.join(non_finite[:3])}")
    expected = {
        name: value.shape
        for name, value in tree_flatten(model.parameters())
        if name.rsplit(".", 1)[-1] in ADAPTER_LEAVES
    }
    problems = []
    for name, value in weights.items():
        if name not in expected:
            problems.append(f"{name}: not a LoRA parameter of this model")
        elif tuple(value.shape) != tuple(expected[name]):
            problems.append(
                f"{name}: shape {tuple(value.shape)} but the model needs {tuple(expected[name])}"
            )
    if problems:
        raise UserError(f"{adapter_path}: this adapter does not fit the model", problems)
    model.load_weights(list(weights.items()), strict=False)
    return config


def fingerprint_files(paths: list[Path], memo_dir: Path | None = None) -> str:
    """SHA-256 over file contents; memoised by (path, size, mtime) so repeated runs on the
    same multi-gigabyte weights do not hash them again."""
    digest = hashlib.sha256()
    memo: dict[str, str] = {}
    memo_file = memo_dir / "file-hashes.json" if memo_dir else None
    if memo_file and memo_file.exists():
        with contextlib.suppress(ValueError, OSError, RecursionError):
            memo = json.loads(memo_file.read_text())
        # Only what could be a digest is used: a damaged memo costs a second hashing.
        memo = (
            {k: v for k, v in memo.items() if re.fullmatch(r"[0-9a-f]{64}", str(v))}
            if (isinstance(memo, dict))
            else {}
        )
    changed = False
    for path in sorted(paths):
        stat = path.stat()
        key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        if key not in memo:
            file_digest = hashlib.sha256()
            with open(path, "rb") as handle:
                while chunk := handle.read(1 << 24):
                    file_digest.update(chunk)
            memo[key] = file_digest.hexdigest()
            changed = True
        digest.update(path.name.encode() + memo[key].encode())
    if memo_file and changed:
        with contextlib.suppress(OSError):  # a memo that cannot be kept is hashed again
            atomic_write_json(memo_file, memo)
    return digest.hexdigest()


def model_fingerprint(path: Path, memo_dir: Path | None = None) -> str:
    """The weights' (and config's) fingerprint; for a GGUF, the file and any tokenizer beside."""
    gguf_file = find_gguf(path)
    if gguf_file is not None:
        beside = [gguf_file.parent / "tokenizer.json", gguf_file.parent / "tokenizer_config.json"]
        return fingerprint_files([gguf_file] + [f for f in beside if f.is_file()], memo_dir)
    files = list(path.glob("model*.safetensors")) + [path / "config.json"]
    return fingerprint_files(files, memo_dir)
