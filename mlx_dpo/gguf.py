"""GGUF models in and out: llama.cpp's file format (Ollama, LM Studio) for the llama family.

Reading: MLX reads the file itself (`mx.load`), keeping Q4_0, Q4_1 and Q8_0 tensors as MLX
quantized weights (group size 32, the GGUF block). Files with other tensor types (the K-quants,
Q5_x, BF16, ...) are read with the `gguf` package (llama.cpp's own Python reader) and those
tensors dequantized, with a note saying so. The tensors are renamed to mlx-lm's names and put
into mlx-lm's model class; llama.cpp's convert script permutes the rows of the llama
architecture's q/k projections (its rope rotates interleaved pairs, Hugging Face's rotates
halves), so the reader undoes that permutation and the writer applies it. The model config
comes from the GGUF metadata, the tokenizer and chat template too (mlx_dpo/gguf_tokenizer.py),
or from a tokenizer folder beside the file.

Writing (`write_gguf`): a dequantized mlx-lm model as a float16 GGUF with the tokenizer and
chat template, written with the `gguf` package's GGUFWriter. mlx-lm's own GGUF writer covers
the llama architecture only, writes every tokenizer as SentencePiece without merges and no chat
template, and `mx.save_gguf` cannot write the boolean keys llama.cpp reads.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from mlx_dpo.errors import UserError

# GGUF architecture -> mlx-lm model_type. Mistral's GGUFs use the llama architecture.
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
# Architectures whose q/k rows llama.cpp's converter permutes (rope type "norm").
PERMUTED_QK = {"llama"}
# Tensor types MLX's GGUF reader loads as they are (quantized ones as MLX quantized weights).
MLX_TYPES = {"F32", "F16", "Q4_0", "Q4_1", "Q8_0"}
GGUF_BLOCK = 32
# Metadata (under the architecture's prefix) without which there is no model config.
REQUIRED_KEYS = ("embedding_length", "block_count", "feed_forward_length", "attention.head_count")

# GGUF tensor name parts -> mlx-lm module paths.
_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_LEAVES = ("weight", "bias", "scales", "biases")


def find_gguf(path: Path) -> Path | None:
    """The GGUF file that `path` names: the file itself, or the one .gguf in a folder that has
    no safetensors model. None when `path` is not a GGUF model. UserError for a folder with
    several GGUF files (which one is meant cannot be guessed)."""
    if path.is_file():
        return path if path.suffix.lower() == ".gguf" else None
    if not path.is_dir() or list(path.glob("model*.safetensors")):
        return None
    found = sorted(p for p in path.glob("*.gguf") if p.is_file())
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise UserError(f"{path}: holds several GGUF files ({names}); pass --model with one")
    return found[0] if found else None


# ---------------------------------------------------------------------------------------------
# Reading


def _plain(value: Any) -> Any:
    """GGUF metadata values as plain Python (MLX's reader gives arrays for numbers)."""
    if isinstance(value, mx.array):
        return value.item() if value.ndim == 0 else value.tolist()
    return value


def read_gguf(path: Path, on_note: Callable[[str], None]) -> tuple[dict[str, mx.array], dict]:
    """(tensors by GGUF name, metadata as plain Python). Quantized tensors MLX supports come
    as `name.weight`, `name.scales`, `name.biases`; others are dequantized (with a note)."""
    try:
        tensors, metadata = mx.load(str(path), return_metadata=True)
        return tensors, {k: _plain(v) for k, v in metadata.items()}
    except (RuntimeError, ValueError) as err:
        if "load_gguf" not in str(err) and "gguf" not in str(err).lower():
            raise UserError(f"{path}: not a readable GGUF file ({err})") from None
    return _read_with_gguf_package(path, on_note)


def _read_with_gguf_package(
    path: Path, on_note: Callable[[str], None]
) -> tuple[dict[str, mx.array], dict]:
    """The fallback for tensor types MLX cannot read: llama.cpp's reader, dequantizing."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as err:  # the reader raises ValueError, struct errors, ...
        raise UserError(f"{path}: not a readable GGUF file ({err})") from None
    metadata = {name: field.contents() for name, field in reader.fields.items()}
    tensors: dict[str, mx.array] = {}
    dequantized: Counter[str] = Counter()
    for tensor in reader.tensors:
        kind = tensor.tensor_type.name
        try:
            values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        except NotImplementedError:
            raise UserError(
                f"{path}: tensor {tensor.name} is of type {kind}, which neither MLX nor the "
                "gguf package can read; convert the model to Q8_0, Q4_0, F16 or F32 first"
            ) from None
        if kind not in ("F32", "F16"):
            dequantized[kind] += 1
        # GGUF lists dimensions innermost first; numpy's shape is the reverse.
        shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
        tensors[tensor.name] = mx.array(np.asarray(values, dtype=np.float32).reshape(shape))
    if dequantized:
        kinds = ", ".join(f"{k} ({n} tensors)" for k, n in sorted(dequantized.items()))
        on_note(
            f"{path.name}: MLX keeps only Q4_0, Q4_1 and Q8_0 GGUF tensors quantized; "
            f"dequantized {kinds} to full precision (add --quantize 4 or 8 to train on "
            "quantized weights)"
        )
    return tensors, metadata


def gguf_config(metadata: dict, tensor_names: set[str], source: str) -> dict[str, Any]:
    """The mlx-lm config.json equivalent of a GGUF's metadata. UserError for an architecture
    or a rope variant mlx-dpo does not map."""
    arch = metadata.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise UserError(
            f"{source}: GGUF architecture {arch!r} is not supported "
            f"(supported: {', '.join(sorted(ARCHITECTURES))})"
        )

    def get(key: str, default: Any = None) -> Any:
        value = metadata.get(f"{arch}.{key}", default)
        if value is None and default is None and key in REQUIRED_KEYS:
            raise UserError(f"{source}: GGUF metadata has no {arch}.{key}")
        return value

    heads = int(get("attention.head_count"))
    hidden = int(get("embedding_length"))
    head_dim = int(get("attention.key_length", hidden // heads))
    rope_dims = int(get("rope.dimension_count", head_dim))
    if rope_dims != head_dim:
        raise UserError(f"{source}: partial rotary embeddings ({rope_dims} of {head_dim} dims)")
    vocab = metadata.get(f"{arch}.vocab_size") or len(metadata.get("tokenizer.ggml.tokens", []))
    if not vocab:
        raise UserError(f"{source}: GGUF metadata gives no vocabulary size (and no tokens)")
    config: dict[str, Any] = {
        "model_type": ARCHITECTURES[arch],
        "hidden_size": hidden,
        "num_hidden_layers": int(get("block_count")),
        "intermediate_size": int(get("feed_forward_length")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(get("attention.head_count_kv", heads)),
        "head_dim": head_dim,
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(get("context_length", 4096)),
        "vocab_size": int(vocab),
        "tie_word_embeddings": "output.weight" not in tensor_names,
    }
    if arch == "llama":
        config["attention_bias"] = "blk.0.attn_q.bias" in tensor_names
    scaling = get("rope.scaling.type")
    if scaling not in (None, "none"):
        if scaling != "linear":
            raise UserError(f"{source}: rope scaling {scaling!r} is not supported (only linear)")
        config["rope_scaling"] = {"type": "linear", "factor": float(get("rope.scaling.factor"))}
    for key, name in (("eos_token_id", "eos_token_id"), ("bos_token_id", "bos_token_id")):
        if f"tokenizer.ggml.{name}" in metadata:
            config[key] = int(metadata[f"tokenizer.ggml.{name}"])
    return config


def llama3_rope_factors(config: dict) -> np.ndarray:
    """Per-dimension rope frequency divisors of Llama 3.1-style scaling (llama.cpp's
    `rope_freqs` tensor), as mlx-lm's Llama3RoPE computes them."""
    from mlx_lm.models.rope_utils import Llama3RoPE

    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    theta = config["rope_theta"]
    rope = Llama3RoPE(head_dim, base=theta, scaling_config=config["rope_scaling"])
    plain = theta ** (np.arange(0, head_dim, 2) / head_dim)
    return (np.array(rope._freqs, dtype=np.float64) / plain).astype(np.float32)


def llama3_rope_scaling(factors: np.ndarray, config: dict, metadata: dict, source: str) -> dict:
    """The rope_scaling config behind a GGUF's `rope_freqs` tensor. llama.cpp keeps only the
    per-dimension factors; Llama 3.1 and 3.2 derive them from a scaling factor (the largest
    one), low/high frequency factors 1 and 4 and the original context length (8192, or the
    file's rope.scaling.original_context_length). UserError when the factors are not that."""
    arch = metadata.get("general.architecture")
    original = metadata.get(f"{arch}.rope.scaling.original_context_length", 8192)
    scaling = {
        "rope_type": "llama3",
        "factor": float(np.max(factors)),
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": int(original),
    }
    expected = llama3_rope_factors({**config, "rope_scaling": scaling})
    if expected.shape != factors.shape or not np.allclose(expected, factors, rtol=1e-4):
        raise UserError(
            f"{source}: its rope frequency factors (rope_freqs) are not Llama 3.1-style "
            "scaling, which is the only kind mlx-dpo maps; use the model's safetensors folder"
        )
    return scaling


def _mlx_name(name: str, source: str) -> str:
    match = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(\w+)", name)
    if match and match[2] in _BLOCK_NAMES and match[3] in _LEAVES:
        return f"model.layers.{match[1]}.{_BLOCK_NAMES[match[2]]}.{match[3]}"
    match = re.fullmatch(r"(\w+)\.(\w+)", name)
    if match and match[1] in _GLOBAL_NAMES and match[2] in _LEAVES:
        return f"{_GLOBAL_NAMES[match[1]]}.{match[2]}"
    raise UserError(f"{source}: tensor {name!r} has no place in the mlx-lm model")


def permute_rows(rows: Any, heads: int, inverse: bool = False) -> Any:
    """llama.cpp's q/k row permutation (convert_hf_to_gguf.py `permute`): within each head,
    the first and second halves of the rotary dimensions are interleaved. `inverse` undoes it.
    Works on numpy and MLX arrays; rows are the first axis (weights, scales, biases, bias)."""
    shape = rows.shape
    per_head = shape[0] // heads
    if inverse:
        split = rows.reshape(heads, per_head // 2, 2, *shape[1:])
    else:
        split = rows.reshape(heads, 2, per_head // 2, *shape[1:])
    return split.swapaxes(1, 2).reshape(shape)


def mlx_weights(tensors: dict[str, mx.array], config: dict, source: str) -> dict[str, mx.array]:
    """GGUF tensors renamed to mlx-lm's names, q/k rows put back in Hugging Face order."""
    permuted = config["model_type"] == "llama"
    heads = {"q_proj": config["num_attention_heads"], "k_proj": config["num_key_value_heads"]}
    weights = {}
    for name, value in tensors.items():
        mlx_name = _mlx_name(name, source)
        module = mlx_name.rsplit(".", 2)[-2]
        if permuted and module in heads:
            value = permute_rows(value, heads[module], inverse=True)
        weights[mlx_name] = value
    return weights


def quantization_of(weights: dict[str, mx.array]) -> dict[str, Any] | None:
    """The quantization config (mlx-lm's format, per-layer where bits differ) of weights read
    from MLX-supported GGUF types, or None when nothing is quantized."""
    layers = {
        name.removesuffix(".scales"): weights[name.removesuffix("scales") + "weight"].shape[-1]
        // value.shape[-1]
        for name, value in weights.items()
        if name.endswith(".scales")
    }
    if not layers:
        return None
    common = Counter(layers.values()).most_common(1)[0][0]
    quantization: dict[str, Any] = {"group_size": GGUF_BLOCK, "bits": common, "mode": "affine"}
    for layer, bits in layers.items():
        if bits != common:
            quantization[layer] = {"group_size": GGUF_BLOCK, "bits": bits, "mode": "affine"}
    return quantization


def build_model(weights: dict[str, mx.array], config: dict, source: str) -> nn.Module:
    """mlx-lm's model class for `config`, quantized where the weights are, weights loaded
    strictly (a missing or extra tensor is an error naming it)."""
    from mlx_lm.utils import _get_classes

    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    quantization = config.get("quantization")
    if quantization:
        quantized = {name.removesuffix(".scales") for name in weights if name.endswith(".scales")}

        def predicate(path: str, module: nn.Module) -> bool | dict:
            if path not in quantized:
                return False
            spec = quantization.get(path, quantization)
            return {key: spec[key] for key in ("group_size", "bits", "mode")}

        nn.quantize(model, class_predicate=predicate)
    if hasattr(model, "sanitize"):
        weights = model.sanitize(weights)
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as err:
        raise UserError(
            f"{source}: the tensors do not fit mlx-lm's {config['model_type']} model: {err}"
        ) from None
    return model


def on_cpu() -> bool:
    return mx.default_device() == mx.cpu


def dequantize_weights(weights: dict[str, mx.array], dtype: mx.Dtype) -> dict[str, mx.array]:
    """Quantized (weight, scales, biases) triples as plain `dtype` weights."""
    out = {}
    for name, value in weights.items():
        if name.endswith((".scales", ".biases")):
            continue
        prefix = name.removesuffix("weight")
        if name.endswith(".weight") and prefix + "scales" in weights:
            # In float32: llama.cpp's value d*q is exact there, float16 arithmetic rounds it.
            scales = weights[prefix + "scales"].astype(mx.float32)
            biases = weights[prefix + "biases"].astype(mx.float32)
            bits = value.shape[-1] // scales.shape[-1]
            value = mx.dequantize(value, scales, biases, group_size=GGUF_BLOCK, bits=bits)
        out[name] = value.astype(dtype)
    return out


def load_gguf(
    path: Path,
    on_note: Callable[[str], None] = print,
    dtype: mx.Dtype | None = None,
    keep_quantized: bool | None = None,
) -> tuple[nn.Module, Any, dict[str, Any]]:
    """(mlx-lm model, tokenizer, config) from a GGUF file. The tokenizer comes from a
    tokenizer folder beside the file when there is one (tokenizer.json), else from the
    GGUF's metadata.

    `dtype` (default: float32 on the CPU backend, whose float16 arithmetic is slow and loses
    precision; float16, GGUF's own float type, on a GPU) is the type of every float tensor.
    `keep_quantized` (default: on a GPU only) keeps Q4_0/Q4_1/Q8_0 tensors as MLX quantized
    weights; on the CPU backend MLX multiplies by quantized weights about 13x slower than by
    float32 ones through BLAS (measured: 576x1536, 128 rows), so they are dequantized there,
    exactly (the values are the same numbers), with a note."""
    from mlx_dpo.gguf_tokenizer import load_gguf_tokenizer

    source = str(path)
    tensors, metadata = read_gguf(path, on_note)
    config = gguf_config(metadata, set(tensors), source)
    factors = tensors.pop("rope_freqs.weight", None)
    if factors is not None:
        factors = np.array(factors.astype(mx.float32))
        config["rope_scaling"] = llama3_rope_scaling(factors, config, metadata, source)
    weights = mlx_weights(tensors, config, source)
    dtype = dtype or (mx.float32 if on_cpu() else mx.float16)
    keep_quantized = not on_cpu() if keep_quantized is None else keep_quantized
    quantization = quantization_of(weights)
    if quantization and not keep_quantized:
        weights = dequantize_weights(weights, dtype)
        on_note(
            f"{path.name}: quantized GGUF weights dequantized to {str(dtype).split('.')[-1]} "
            "(MLX's CPU backend is much faster on full-precision weights; --quantize 4 or 8 "
            "quantizes again at load)"
        )
        quantization = None
    weights = {
        name: value.astype(dtype) if mx.issubdtype(value.dtype, mx.floating) else value
        for name, value in weights.items()
    }
    if quantization:
        config["quantization"] = quantization
    model = build_model(weights, config, source)
    mx.eval(model.parameters())
    beside = path.parent / "tokenizer.json"
    if beside.is_file():
        from mlx_lm.utils import load_tokenizer

        on_note(f"tokenizer: {beside} (beside the GGUF)")
        tokenizer = load_tokenizer(path.parent, eos_token_ids=config.get("eos_token_id"))
    else:
        tokenizer = load_gguf_tokenizer(metadata, source, config.get("eos_token_id"))
    return model, tokenizer, config


# ---------------------------------------------------------------------------------------------
# Writing


def _architecture_metadata(config: dict, arch: str) -> dict[str, Any]:
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    values: dict[str, Any] = {
        "context_length": config.get("max_position_embeddings", 4096),
        "embedding_length": config["hidden_size"],
        "block_count": config["num_hidden_layers"],
        "feed_forward_length": config["intermediate_size"],
        "attention.head_count": heads,
        "attention.head_count_kv": config.get("num_key_value_heads") or heads,
        "attention.key_length": head_dim,
        "attention.value_length": head_dim,
        "rope.dimension_count": head_dim,
        "vocab_size": config["vocab_size"],
    }
    return {f"{arch}.{key}": int(value) for key, value in values.items()}


# Tensor types `write_gguf` can write (the ones the gguf package quantizes in numpy).
WRITE_TYPES = ("f16", "f32", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0")


def gguf_tensors(model: nn.Module, config: dict) -> dict[str, np.ndarray]:
    """The model's weights under llama.cpp's names and layout, as float32 numpy arrays."""
    reverse_block = {v: k for k, v in _BLOCK_NAMES.items()}
    reverse_global = {v: k for k, v in _GLOBAL_NAMES.items()}
    permuted = config["model_type"] in PERMUTED_QK
    heads = {"q_proj": config["num_attention_heads"], "k_proj": config["num_key_value_heads"]}
    out = {}
    for name, value in tree_flatten(model.parameters()):
        if name.endswith((".scales", ".biases")):
            raise UserError("write_gguf needs a dequantized model (its quantization is MLX's)")
        module, leaf = name.rsplit(".", 1)
        match = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", module)
        if match and match[2] in reverse_block:
            gguf_name = f"blk.{match[1]}.{reverse_block[match[2]]}.{leaf}"
        elif module in reverse_global:
            gguf_name = f"{reverse_global[module]}.{leaf}"
        else:
            raise UserError(f"write_gguf: {name} has no GGUF name")
        array = np.array(value.astype(mx.float32))
        short = module.rsplit(".", 1)[-1]
        if permuted and short in heads:
            array = permute_rows(array, heads[short])
        out[gguf_name] = array
    return out


def _encode(array: np.ndarray, kind: str) -> tuple[np.ndarray, Any]:
    """(data, GGML type) of one tensor as llama.cpp's converter stores it: 1-D tensors (norms,
    biases) float32; 2-D weights in `kind`, float16 where the row does not divide into the
    quantization blocks."""
    import gguf

    types = gguf.GGMLQuantizationType
    if array.ndim < 2 or kind == "f32":
        return array.astype(np.float32), types.F32
    if kind == "f16":
        return array.astype(np.float16), types.F16
    target = types[kind.upper()]
    block = gguf.GGML_QUANT_SIZES[target][0]
    if array.shape[-1] % block:
        return array.astype(np.float16), types.F16
    return gguf.quants.quantize(array, target), target


def write_gguf(
    model: nn.Module,
    tokenizer: Any,
    config: dict,
    path: str | Path,
    name: str | None = None,
    tensor_type: str = "f16",
) -> Path:
    """Write a dequantized mlx-lm model (llama, qwen2 or qwen3) as a GGUF that llama.cpp,
    Ollama and LM Studio load, with the tokenizer and chat template in its metadata.
    `tensor_type` is one of WRITE_TYPES (f16 by default: the fine-tune kept to float16
    precision; q8_0/q4_0/... quantize with the gguf package's numpy quantizers). Written to
    `path` directly: callers that must never leave a torn file write to a temporary name and
    rename. Returns `path`."""
    import gguf

    path = Path(path)
    if tensor_type not in WRITE_TYPES:
        raise UserError(f"GGUF tensor type {tensor_type!r}: choose one of {', '.join(WRITE_TYPES)}")
    model_type = config.get("model_type")
    arch = {v: k for k, v in ARCHITECTURES.items()}.get(model_type)
    if arch is None:
        raise UserError(
            f"GGUF export supports {', '.join(sorted(ARCHITECTURES))} models, not {model_type!r}"
        )
    scaling = config.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in ("default", "llama3", "linear"):
        raise UserError(f"GGUF export: rope scaling {scaling} is not supported")
    from mlx_dpo.gguf_tokenizer import tokenizer_metadata

    token_metadata = tokenizer_metadata(tokenizer, "GGUF export", config.get("vocab_size"))
    tensors = gguf_tensors(model, config)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name or path.stem)
    file_type = "MOSTLY_" + tensor_type.upper() if tensor_type != "f32" else "ALL_F32"
    writer.add_file_type(gguf.LlamaFileType[file_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for key, value in _architecture_metadata(config, arch).items():
        writer.add_uint32(key, value)
    writer.add_float32(f"{arch}.rope.freq_base", float(config.get("rope_theta", 10000.0)))
    writer.add_float32(
        f"{arch}.attention.layer_norm_rms_epsilon", float(config.get("rms_norm_eps", 1e-6))
    )
    if kind == "linear":
        writer.add_string(f"{arch}.rope.scaling.type", "linear")
        writer.add_float32(f"{arch}.rope.scaling.factor", float(scaling["factor"]))
    if kind == "llama3":
        # llama.cpp takes Llama 3.1's scaling as per-dimension factors (its converter does so).
        tensors["rope_freqs.weight"] = llama3_rope_factors(config)
        writer.add_uint32(
            f"{arch}.rope.scaling.original_context_length",
            int(scaling.get("original_max_position_embeddings", 8192)),
        )
    _add_tokenizer(writer, token_metadata)
    for tensor_name, array in tensors.items():
        data, kind = _encode(array, tensor_type)
        writer.add_tensor(tensor_name, data, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _add_tokenizer(writer: Any, metadata: dict[str, Any]) -> None:
    writer.add_tokenizer_model(metadata["tokenizer.ggml.model"])
    writer.add_tokenizer_pre(metadata["tokenizer.ggml.pre"])
    writer.add_token_list(metadata["tokenizer.ggml.tokens"])
    writer.add_token_types(metadata["tokenizer.ggml.token_type"])
    writer.add_token_merges(metadata["tokenizer.ggml.merges"])
    writer.add_add_bos_token(metadata["tokenizer.ggml.add_bos_token"])
    for key, add in (
        ("bos_token_id", writer.add_bos_token_id),
        ("eos_token_id", writer.add_eos_token_id),
        ("unknown_token_id", writer.add_unk_token_id),
        ("padding_token_id", writer.add_pad_token_id),
    ):
        if f"tokenizer.ggml.{key}" in metadata:
            add(metadata[f"tokenizer.ggml.{key}"])
    if "tokenizer.chat_template" in metadata:
        writer.add_chat_template(metadata["tokenizer.chat_template"])
