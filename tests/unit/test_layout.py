"""Unit tests of mlx_dpo/layout.py: which files of a dataset repository hold which split."""

from __future__ import annotations

from mlx_dpo.layout import split_layout


def test_split_layout_rules():
    files = ["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet",
             "data/validation-00000-of-00001.parquet", "notes.txt"]  # fmt: skip
    layout, ignored = split_layout(files)
    assert layout == {"train": files[:2], "validation": [files[2]]} and not ignored
    assert split_layout(["en/train-00000-of-00001.parquet", "fr/train-00000-of-00001.parquet"],
                        config="fr")[0] == {"train": ["fr/train-00000-of-00001.parquet"]}  # fmt: skip
    assert split_layout(["my_data.jsonl"])[0] == {"train": ["my_data.jsonl"]}
    assert split_layout(["train.jsonl", "valid.jsonl"])[0] == {
        "train": ["train.jsonl"],
        "valid": ["valid.jsonl"],
    }
