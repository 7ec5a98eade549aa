"""mlx_dpo/gguf_tokenizer.py: a tokenizer as GGUF metadata (the round trips through a GGUF
file: test_gguf.py)."""

from __future__ import annotations

from mlx_dpo.gguf_tokenizer import UNUSED, tokenizer_metadata
from mlx_dpo.model import load_model


def test_token_list_is_padded_to_the_embedding_rows(llama_chatml):
    """llama.cpp wants one token per embedding row; spare rows (Qwen2 has them) get unused
    [PADn] tokens, as its converter writes them."""
    _, tokenizer, _, config = load_model(str(llama_chatml))
    rows = config["vocab_size"] + 6
    metadata = tokenizer_metadata(tokenizer, "test", rows)
    assert len(metadata["tokenizer.ggml.tokens"]) == rows
    assert metadata["tokenizer.ggml.tokens"][-1] == f"[PAD{rows - 1}]"
    assert metadata["tokenizer.ggml.token_type"][-6:] == [UNUSED] * 6
    assert UNUSED not in metadata["tokenizer.ggml.token_type"][:-6]
