"""GGUF in and out on tiny models: the writer lays tensors out as llama.cpp does (checked with
the gguf package's own reader and a permutation written out here index by index), the reader
gives back the same model (logits) and tokenizer, quantized tensors stay quantized where MLX
can keep them and equal llama.cpp's dequantization, and what cannot be read is refused
naming the reason. The real model is in tests/e2e/test_real_model.py."""

from __future__ import annotations

import json

import gguf
import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_map

from mlx_dpo.cli import main
from mlx_dpo.errors import UserError
from mlx_dpo.gguf import find_gguf, load_gguf, write_gguf
from mlx_dpo.model import load_model, load_model_tokenizer, model_fingerprint
from tests.conftest import corpus, preference_rows, write_jsonl
from tests.interop import logits_of, train_run

TEXTS = ["what color is item 3? the item is red and nice.", "ugh it is  teal\nobviously. 42"]
MESSAGES = [{"role": "user", "content": "what color is item 7?"}]


def notes() -> tuple[list[str], callable]:
    seen: list[str] = []
    return seen, seen.append


def float16_rounded(model):
    """The model with its 2-D weights rounded to float16, as an f16 GGUF stores them."""
    model.update(
        tree_map(
            lambda p: p.astype(mx.float16).astype(mx.float32) if p.ndim == 2 else p,
            model.parameters(),
        )
    )
    return model


def exported(model_dir, tmp_path, tensor_type="f16"):
    model, tokenizer, _, config = load_model(str(model_dir))
    path = write_gguf(model, tokenizer, config, tmp_path / "model.gguf", tensor_type=tensor_type)
    return model, tokenizer, config, path


@pytest.mark.parametrize("fixture", ["llama_chatml", "qwen2_llama3"])
def test_round_trip_gives_the_same_model_and_tokenizer(fixture, request, tmp_path):
    model, tokenizer, config, path = exported(request.getfixturevalue(fixture), tmp_path)
    seen, note = notes()
    loaded, loaded_tokenizer, loaded_config = load_gguf(path, note)
    assert loaded_config["model_type"] == config["model_type"]
    assert loaded_config["tie_word_embeddings"] == config["tie_word_embeddings"]
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert loaded_tokenizer.encode(text) == ids
        np.testing.assert_allclose(
            logits_of(loaded, ids), logits_of(float16_rounded(model), ids), atol=1e-4
        )
    assert loaded_tokenizer.apply_chat_template(
        MESSAGES, add_generation_prompt=True
    ) == tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True)
    assert loaded_tokenizer.eos_token_ids == tokenizer.eos_token_ids


def llama_cpp_row_order(rows: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q/k row order, index by index: within each head of d rows, GGUF row 2j+k
    is Hugging Face row k*d/2 + j (the halves of the rotary dimensions interleaved)."""
    d = rows.shape[0] // heads
    out = np.empty_like(rows)
    for h in range(heads):
        for j in range(d // 2):
            for k in range(2):
                out[h * d + 2 * j + k] = rows[h * d + k * (d // 2) + j]
    return out


def test_the_gguf_package_reads_what_llama_cpp_expects(llama_chatml, tmp_path):
    model, tokenizer, config, path = exported(llama_chatml, tmp_path)
    reader = gguf.GGUFReader(str(path))
    fields = {name: field.contents() for name, field in reader.fields.items()}
    assert fields["general.architecture"] == "llama"
    assert fields["llama.block_count"] == config["num_hidden_layers"]
    assert fields["llama.attention.head_count"] == config["num_attention_heads"]
    assert fields["llama.attention.head_count_kv"] == config["num_key_value_heads"]
    assert fields["llama.rope.freq_base"] == pytest.approx(config["rope_theta"])
    assert fields["tokenizer.ggml.model"] == "gpt2"
    assert fields["tokenizer.ggml.pre"] == "gpt2"
    assert fields["tokenizer.chat_template"] == tokenizer.chat_template
    assert fields["tokenizer.ggml.eos_token_id"] == config["eos_token_id"]
    vocab = tokenizer._tokenizer.get_vocab()
    assert [vocab[t] for t in fields["tokenizer.ggml.tokens"]] == list(range(len(vocab)))
    tensors = {t.name: t for t in reader.tensors}
    weights = dict(tree_flatten(model.parameters()))
    layer = "model.layers.1.self_attn"
    for gguf_name, name, heads in (
        ("blk.1.attn_q.weight", f"{layer}.q_proj.weight", config["num_attention_heads"]),
        ("blk.1.attn_k.weight", f"{layer}.k_proj.weight", config["num_key_value_heads"]),
        ("blk.1.attn_v.weight", f"{layer}.v_proj.weight", None),
    ):
        assert tensors[gguf_name].tensor_type == gguf.GGMLQuantizationType.F16
        expected = np.array(weights[name]).astype(np.float16)
        if heads:
            expected = llama_cpp_row_order(expected, heads)
        np.testing.assert_array_equal(np.array(tensors[gguf_name].data), expected)
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert "output.weight" in tensors  # this model has its own LM head


def test_quantized_tensors_stay_quantized_and_equal_llama_cpp_dequantization(
    llama_chatml, tmp_path
):
    model, _, config, path = exported(llama_chatml, tmp_path, tensor_type="q8_0")
    quantized, _, quantized_config = load_gguf(path, notes()[1], keep_quantized=True)
    seen, note = notes()
    plain, _, plain_config = load_gguf(path, note, keep_quantized=False)
    assert quantized_config["quantization"]["bits"] == 8
    assert quantized_config["quantization"]["group_size"] == 32
    assert "quantization" not in plain_config and any("dequantized" in s for s in seen)
    assert type(quantized.model.layers[0].self_attn.v_proj).__name__ == "QuantizedLinear"
    # MLX's reading of Q8_0 blocks equals llama.cpp's own dequantizer (the gguf package).
    reader = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    v = reader["blk.0.attn_v.weight"]
    expected = gguf.quants.dequantize(v.data, v.tensor_type)
    np.testing.assert_allclose(
        np.array(plain.model.layers[0].self_attn.v_proj.weight), expected, atol=1e-6
    )
    ids = [1, 5, 9, 30, 7]
    np.testing.assert_allclose(logits_of(quantized, ids), logits_of(plain, ids), atol=1e-3)
    # ... and it is the model that was written, to 8-bit precision.
    np.testing.assert_allclose(logits_of(plain, ids), logits_of(model, ids), atol=0.05)


def test_types_mlx_cannot_read_are_dequantized_with_a_note(llama_chatml, tmp_path):
    model, _, _, path = exported(llama_chatml, tmp_path, tensor_type="q5_0")
    seen, note = notes()
    loaded, _, config = load_gguf(path, note)
    assert any("Q5_0" in s and "dequantized" in s for s in seen)
    assert "quantization" not in config
    reader = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    v = reader["blk.1.attn_v.weight"]
    np.testing.assert_allclose(
        np.array(loaded.model.layers[1].self_attn.v_proj.weight),
        gguf.quants.dequantize(v.data, v.tensor_type),
        atol=1e-6,
    )
    ids = [3, 4, 5, 6]
    np.testing.assert_allclose(logits_of(loaded, ids), logits_of(model, ids), atol=0.1)


def _minimal_gguf(path, arch: str):
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_uint32(f"{arch}.block_count", 1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_refusals_name_the_reason(tmp_path):
    with pytest.raises(UserError, match="architecture 'gemma2' is not supported"):
        load_model(str(_minimal_gguf(tmp_path / "g.gguf", "gemma2")))
    folder = tmp_path / "two"
    folder.mkdir()
    _minimal_gguf(folder / "a.gguf", "llama")
    _minimal_gguf(folder / "b.gguf", "llama")
    with pytest.raises(UserError, match="several GGUF files"):
        load_model(str(folder))
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf at all")
    with pytest.raises(UserError, match="not a readable GGUF"):
        load_model(str(broken))


def test_cli_says_one_line_for_an_unreadable_gguf(tmp_path, capsys):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF garbage")
    data = write_jsonl(tmp_path / "data" / "test.jsonl", preference_rows(4))
    assert main(["eval", "--model", str(broken), "--data", str(data.parent)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.gguf" in err[0] and "Traceback" not in err[0]


def test_a_folder_holding_a_gguf_and_its_tokenizer(llama_chatml, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    _, tokenizer, _, _ = exported(llama_chatml, folder)
    seen, note = notes()
    model, loaded_tokenizer, path, _ = load_model(str(folder), on_note=note)
    assert path == folder / "model.gguf"
    assert loaded_tokenizer.encode(TEXTS[0]) == tokenizer.encode(TEXTS[0])
    assert load_model_tokenizer(str(folder)).encode(TEXTS[1]) == tokenizer.encode(TEXTS[1])
    first = model_fingerprint(path)
    (folder / "tokenizer.json").write_text((llama_chatml / "tokenizer.json").read_text())
    assert model_fingerprint(path) != first  # a tokenizer beside it is part of the model
    load_model(str(folder), on_note=note)
    assert any("beside the GGUF" in s for s in seen)
    assert find_gguf(llama_chatml) is None


def test_training_on_a_gguf_model(llama_chatml, tmp_path):
    """Every command taking --model takes a GGUF: a short run on one trains and the
    reference (LoRA off) is the GGUF's weights."""
    _, _, _, path = exported(llama_chatml, tmp_path)
    data = tmp_path / "data"
    write_jsonl(data / "train.jsonl", preference_rows(8))
    status, events = train_run(path, data, tmp_path / "run", iters=2)
    assert status == "completed"
    steps = [e for e in events if e["event"] == "step"]
    assert steps[0]["loss"] == pytest.approx(np.log(2), abs=1e-4)
    assert corpus()  # the tiny model's tokenizer was trained on this corpus


def test_metadata_without_the_model_shape_is_refused(tmp_path):
    with pytest.raises(UserError, match="GGUF metadata has no llama.attention.head_count"):
        load_model(str(_minimal_gguf(tmp_path / "bare.gguf", "llama")))


def llama_cpp_rope_factors(theta, head_dim, factor, low, high, original):
    """llama.cpp's converter (convert_hf_to_gguf.py, LlamaModel) for Llama 3.1 rope scaling."""
    out = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * np.pi / (1.0 / theta ** (i / head_dim))
        if wavelen < original / high:
            out.append(1.0)
        elif wavelen > original / low:
            out.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out)


def test_llama3_rope_scaling_goes_through_rope_freqs(llama_chatml, tmp_path):
    """Llama 3.1/3.2 GGUFs carry their rope scaling as llama.cpp's per-dimension rope_freqs
    tensor: written as its converter writes it, read back into the same scaling."""
    from mlx_lm.utils import load_model as mlx_load

    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}  # fmt: skip
    config = json.loads((llama_chatml / "config.json").read_text())
    model, config = mlx_load(llama_chatml, model_config={**config, "rope_scaling": scaling})
    _, tokenizer, _, _ = load_model(str(llama_chatml))
    path = write_gguf(model, tokenizer, config, tmp_path / "llama3.gguf")
    factors = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}["rope_freqs.weight"]
    expected = llama_cpp_rope_factors(10000.0, 16, 8.0, 1.0, 4.0, 64)
    assert expected.max() > 1.0 and len(set(np.round(expected, 3))) > 2  # all three regimes
    np.testing.assert_allclose(np.array(factors.data), expected, rtol=1e-5)
    loaded, _, loaded_config = load_gguf(path, lambda _: None)
    assert loaded_config["rope_scaling"] == scaling
    ids = list(range(3, 60))
    np.testing.assert_allclose(
        logits_of(loaded, ids), logits_of(float16_rounded(model), ids), atol=1e-4
    )
    unscaled, _ = mlx_load(llama_chatml, model_config=config | {"rope_scaling": None})
    assert np.abs(logits_of(unscaled, ids) - logits_of(model, ids)).max() > 1e-3
