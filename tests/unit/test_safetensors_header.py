"""A safetensors file's header checked against its size (mlx_dpo/safetensors_header.py): a
file cut short, a header that is not JSON or does not fit, tensors whose bytes do not match
their shape, each named before MLX reads the file; a whole file passes."""

from __future__ import annotations

import json
import struct

import mlx.core as mx
import numpy as np
import pytest

from mlx_dpo.errors import UserError
from mlx_dpo.safetensors_header import check_safetensors, safetensors_problem


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "model.safetensors"
    mx.save_safetensors(str(path), {"a": mx.zeros((4, 3)), "b": mx.ones((5,), dtype=mx.float16)})
    return path


def with_header(path, header: dict, data: bytes) -> None:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def test_a_whole_file_passes(weights):
    assert safetensors_problem(weights) is None
    check_safetensors(weights, "the model's weights")


@pytest.mark.parametrize(
    ("damage", "expected"),
    [(lambda b: b[: len(b) - 10], "its data ends at byte"),
     (lambda b: b[:5], "5 bytes, shorter than a safetensors header"),
     (lambda b: b"\xff" * 8 + b[8:], "its header claims"),
     (lambda b: b[:8] + b"\x00" * 16 + b[24:], "its header is not valid JSON"),
     (lambda b: b"", "0 bytes")],
    ids=["cut-short", "cut-in-the-length", "huge-length", "zeroed-header", "empty"],
)  # fmt: skip
def test_damage_is_named(weights, damage, expected):
    weights.write_bytes(damage(weights.read_bytes()))
    assert expected in safetensors_problem(weights)
    with pytest.raises(UserError) as err:
        check_safetensors(weights, "the adapter's weights")
    assert str(err.value).startswith(f"{weights}: the adapter's weights are damaged or incomplete")


@pytest.mark.parametrize(
    ("entry", "expected"),
    [({"dtype": "F32", "shape": [2], "data_offsets": [0, 12]}, "12 bytes for a F32 tensor"),
     ({"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}, "not in order"),
     ({"dtype": 3, "shape": [2], "data_offsets": [0, 8]}, "is not a name"),
     ({"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}, "not a list of sizes"),
     ({"dtype": "F32", "shape": [2], "data_offsets": [0]}, "are not two positions"),
     ([1, 2], "not described by a mapping")],
)  # fmt: skip
def test_a_header_that_does_not_describe_the_data_is_named(tmp_path, entry, expected):
    path = tmp_path / "w.safetensors"
    with_header(path, {"__metadata__": {"format": "mlx"}, "t": entry}, np.zeros(3).tobytes())
    assert expected in safetensors_problem(path)
    with_header(path, [1], b"")
    assert safetensors_problem(path) == "its header is not a JSON object"
