"""Opening a session (mlx_dpo/session.py): user errors before anything loads, LoRA as
configured, the splits asked for, prefix sharing where asked and supported, the pad id."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from mlx.utils import tree_flatten

from mlx_dpo.config import TrainConfig
from mlx_dpo.errors import UserError
from mlx_dpo.session import open_session, pad_token_id
from tests.conftest import preference_rows, write_jsonl
from tests.training import config_for


def test_no_model_or_no_data_is_a_user_error(preference_data):
    with pytest.raises(UserError, match="no model given: pass --model"):
        open_session(TrainConfig(data=str(preference_data)))
    with pytest.raises(UserError, match="'model': an empty path"):  # refused by the config
        config_for("", preference_data)
    with pytest.raises(UserError, match="no data given: pass --data"):
        open_session(TrainConfig(model="some/model"))


def test_a_run_needs_a_train_split(llama_chatml, tmp_path):
    write_jsonl(tmp_path / "data" / "test.jsonl", preference_rows(4))
    with pytest.raises(UserError, match="no split 'train'"):
        open_session(config_for(llama_chatml, tmp_path / "data"))
    # Evaluating the test split alone is fine.
    session = open_session(config_for(llama_chatml, tmp_path / "data"), splits=("test",))
    assert list(session.splits) == ["test"]


def test_fresh_lora_as_configured(llama_chatml, preference_data):
    config = config_for(llama_chatml, preference_data, lora_rank=4, lora_layers=1)
    session = open_session(config, splits=("train", "valid"))
    assert set(session.splits) == {"train", "valid"}
    assert session.lora_layers == 1 and session.lora_parameters["rank"] == 4
    trainable = [name for name, _ in tree_flatten(session.model.trainable_parameters())]
    # LoRA on the last layer only (mlx-lm counts layers from the end), nothing else trains.
    assert trainable and all(name.startswith("model.layers.1.") for name in trainable)
    assert all(name.endswith(("lora_a", "lora_b")) for name in trainable)
    assert session.weights_fingerprint.endswith("|qNone")
    assert session.frozen_adapter is None and session.init_adapter_config is None


def test_prefix_sharing_where_asked(llama_chatml, preference_data):
    shared = open_session(config_for(llama_chatml, preference_data), splits=("train",))
    plain = open_session(
        config_for(llama_chatml, preference_data, prefix_sharing=False), splits=("train",)
    )
    assert shared.prefix_sharing and not plain.prefix_sharing
    pairs = shared.splits["train"].pairs[:2]
    assert shared.collate(pairs).shared_prompt and not plain.collate(pairs).shared_prompt


def test_pad_token_id_falls_back_to_eos_then_0():
    assert pad_token_id(SimpleNamespace(pad_token_id=3, eos_token_id=2)) == 3
    assert pad_token_id(SimpleNamespace(pad_token_id=None, eos_token_id=2)) == 2
    assert pad_token_id(SimpleNamespace(eos_token_id=None)) == 0
