"""mlx_dpo/token_cache.py: a tokenized split is cached under a key of its files' contents, the
field mapping, the tokenizer and max_length, and a damaged entry is recomputed."""

from __future__ import annotations

import copy

import pytest
from mlx_lm.utils import load

from mlx_dpo import token_cache
from mlx_dpo.config import TrainConfig
from mlx_dpo.sources import load_data
from tests.conftest import write_jsonl

pytestmark = pytest.mark.usefixtures("use_hub_cache")


@pytest.fixture(scope="module")
def tokenizer(llama_chatml):
    return load(str(llama_chatml))[1]


def test_token_cache_key_follows_data_and_settings(tmp_path, tokenizer):
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}])
    fingerprint = token_cache.tokenizer_fingerprint(tokenizer)
    key = token_cache.split_key([data], {}, fingerprint, 64)
    assert key != token_cache.split_key([data], {}, fingerprint, 65)
    assert key != token_cache.split_key([data], {"prompt": "q"}, fingerprint, 64)
    other = copy.deepcopy(tokenizer._tokenizer)
    other.chat_template = "{{ messages[0]['content'] }}"
    assert token_cache.tokenizer_fingerprint(other) != fingerprint
    write_jsonl(data, [{"prompt": "a", "chosen": "b", "rejected": "d"}])
    assert token_cache.split_key([data], {}, fingerprint, 64) != key


def test_a_torn_cache_entry_is_recomputed(tmp_path, tokenizer):
    config = TrainConfig(data="Intel/orca_dpo_pairs")
    load_data(config, tokenizer, ("train",))
    for entry in (token_cache.cache_dir() / "tokenized").glob("*.npz"):
        entry.write_bytes(entry.read_bytes()[:100])
    assert len(load_data(config, tokenizer, ("train",)).splits["train"]) == 12
