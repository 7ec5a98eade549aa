"""Reference log-probs cached on disk (mlx_dpo/reference.py): keyed by the weights and every
token id, computed in length-sorted batches with each result back at its pair, read back
instead of computed, and never trusted when the file is corrupt or the wrong size."""

from __future__ import annotations

import numpy as np
import pytest

from mlx_dpo import reference
from mlx_dpo.data import TokenizedPair, TokenizedSplit
from mlx_dpo.reference import cache_dir, cache_key, reference_logps

LENGTHS = [(5, 3, 4), (1, 1, 1), (9, 2, 8), (3, 3, 3), (7, 1, 1)]


def split_of(lengths=LENGTHS, shift: int = 0) -> TokenizedSplit:
    pairs = [
        TokenizedPair(i, f"t:{i}", [1 + shift] * p, [2] * c, [3] * r)
        for i, (p, c, r) in enumerate(lengths)
    ]
    return TokenizedSplit("train", "train.jsonl", pairs)


class Computer:
    """A stand-in reference: chosen = -10·index, rejected = -10·index - 1; records calls."""

    def __init__(self):
        self.calls: list[list[int]] = []

    def __call__(self, positions: list[int]) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append(list(positions))
        chosen = np.array([-10.0 * i for i in positions], dtype=np.float32)
        return chosen, chosen - 1


def test_the_cache_lives_where_the_environment_says(tmp_path, monkeypatch):
    monkeypatch.setenv("MLX_DPO_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MLX_DPO_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "mlx-dpo"


def test_the_key_changes_with_the_weights_and_every_token():
    key = cache_key("weights-a", split_of())
    assert key == cache_key("weights-a", split_of()) and len(key) == 32
    assert cache_key("weights-b", split_of()) != key
    assert cache_key("weights-a", split_of(shift=1)) != key
    assert cache_key("weights-a", split_of(LENGTHS[:-1])) != key


def test_computed_in_length_sorted_batches_each_result_at_its_pair():
    compute, seen = Computer(), []
    chosen, rejected = reference_logps(
        "k1", split_of(), compute, 2, lambda d, t, c: seen.append((d, t, c))
    )
    # Longest pair (prompt + longer response): 9, 2, 17, 6, 8 -> order 1, 3, 4, 0, 2.
    assert compute.calls == [[1, 3], [4, 0], [2]]
    np.testing.assert_array_equal(chosen, [0, -10, -20, -30, -40])
    np.testing.assert_array_equal(rejected, [-1, -11, -21, -31, -41])
    assert seen == [(2, 5, False), (4, 5, False), (5, 5, False)]


def test_read_back_from_the_cache_instead_of_computed():
    reference_logps("k2", split_of(), Computer(), 2)
    again, seen = Computer(), []
    chosen, _ = reference_logps("k2", split_of(), again, 2, lambda *a: seen.append(a))
    assert again.calls == [] and seen == [(5, 5, True)]
    np.testing.assert_array_equal(chosen, [0, -10, -20, -30, -40])
    # use_cache=False neither reads nor writes it.
    fresh = Computer()
    reference_logps("k2", split_of(), fresh, 8, use_cache=False)
    assert fresh.calls == [[1, 3, 4, 0, 2]]
    reference_logps("k3", split_of(), Computer(), 8, use_cache=False)
    assert reference.load_cached("k3", 5) is None


@pytest.mark.parametrize("damage", ["corrupt", "wrong size"])
def test_a_bad_cache_file_is_recomputed(damage):
    if damage == "corrupt":
        reference.store("k4", np.zeros(5), np.zeros(5), {})
        reference._path("k4").write_bytes(b"not safetensors")
    else:
        reference.store("k4", np.zeros(3), np.zeros(3), {})  # another split's length
    compute = Computer()
    chosen, _ = reference_logps("k4", split_of(), compute, 8)
    assert compute.calls and chosen[2] == -20
    assert reference.load_cached("k4", 5)[0][2] == -20  # and stored again, whole
