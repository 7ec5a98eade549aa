"""An adapter folder's adapter_config.json (mlx_dpo/adapter_config.py): read once for every
command that takes an adapter, each field this package reads checked for its type and
range, a wrong one named with the file and field."""

from __future__ import annotations

import json

import pytest

from mlx_dpo.adapter_config import adapter_config_problems, read_adapter_config
from mlx_dpo.errors import UserError
from tests.damage import write_adapter

WHOLE = {"base_model": "m", "num_layers": 2, "fine_tune_type": "lora", "beta": 0.1,
         "lora_parameters": {"rank": 8, "scale": 20.0, "dropout": 0.0, "keys": ["q_proj"]}}  # fmt: skip


def test_a_whole_config_reads_back(tmp_path):
    assert adapter_config_problems(WHOLE) == []
    assert read_adapter_config(write_adapter(tmp_path / "a", WHOLE)) == WHOLE


@pytest.mark.parametrize(
    ("change", "expected"),
    [({"num_layers": 0}, "'num_layers' must be a whole number > 0, got 0"),
     ({"num_layers": True}, "'num_layers' must be a whole number > 0, got True"),
     ({"num_layers": 2**40}, "'num_layers' must be a whole number > 0"),
     ({"fine_tune_type": ["lora"]}, "'fine_tune_type' must be a string"),
     ({"model": {"x": 1}}, "'model' must be a model path or id"),
     ({"lora_parameters": {"rank": 8.5, "scale": 1.0}}, "'lora_parameters.rank' must be a whole"),
     ({"lora_parameters": {"rank": 8, "scale": float("nan")}}, "'lora_parameters.scale' must be a finite"),
     ({"lora_parameters": {"rank": 8, "scale": 1.0, "dropout": 1.0}}, "'lora_parameters.dropout' must be in [0, 1)"),
     ({"lora_parameters": {"rank": 8, "scale": 1.0, "keys": []}}, "'lora_parameters.keys' must be a list"),
     ({"lora_parameters": {"rank": 8, "scale": 1.0, "keys": [""]}}, "'lora_parameters.keys' must be a list"),
     ({"init_adapter_provenance": "x"}, "'init_adapter_provenance' must be a mapping"),
     ({"beta": -1}, "'beta' must be > 0"),
     ({"max_length": "long"}, "'max_length' must be"),
     ({"loss": "nope"}, "'loss' must be one of")],
)  # fmt: skip
def test_each_field_of_the_wrong_type_or_range_is_named(change, expected):
    problems = adapter_config_problems({**WHOLE, **change})
    assert len(problems) == 1 and expected in problems[0], problems


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b'{"num_layers": ', "adapter_config.json:1: not valid JSON"),
     (b"[1]", "adapter_config.json: must hold a JSON object"),
     (b"\xff\xfe", "adapter_config.json: not valid JSON"),
     (b'{"n": ' + b"9" * 5000 + b"}", "adapter_config.json: not valid JSON"),
     (b"[" * 100000, "adapter_config.json: not valid JSON")],
    ids=["cut", "a-list", "not-utf8", "5000-digits", "deep"],
)  # fmt: skip
def test_a_file_that_is_not_a_json_object_is_named(tmp_path, content, expected):
    folder = write_adapter(tmp_path / "a", {})
    (folder / "adapter_config.json").write_bytes(content)
    with pytest.raises(UserError) as err:
        read_adapter_config(folder)
    assert expected in str(err.value)


def test_a_folder_that_is_not_an_adapter_is_named(tmp_path):
    with pytest.raises(UserError, match="no such adapter folder"):
        read_adapter_config(tmp_path / "missing")
    (tmp_path / "only-config").mkdir()
    (tmp_path / "only-config" / "adapter_config.json").write_text(json.dumps(WHOLE))
    with pytest.raises(UserError, match="not an adapter folder"):
        read_adapter_config(tmp_path / "only-config")


def test_a_setting_written_as_null_is_its_default(tmp_path):
    """eval read `"beta": null` as float(None): a traceback the fuzz harness found."""
    folder = write_adapter(tmp_path / "a", {**WHOLE, "beta": None, "loss": None})
    config = read_adapter_config(folder)
    assert "beta" not in config and "loss" not in config
