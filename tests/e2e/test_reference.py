"""Reference log-probs cached on disk (mlx_dpo/reference.py): keyed by the weights and every
token id, computed in length-sorted batches with each result back at its pair, read back
instead of computed, never trusted when the file is corrupt or the wrong size; the precompute
is chunked and checkpointed, so a stop request or a kill during it resumes from the last chunk
with the same numbers."""

from __future__ import annotations

from pathlib import Path

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
    return TokenizedSplit.from_pairs("train", "train.jsonl", pairs)


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
        "k1", split_of(), compute, 2, lambda d, t, c, eta: seen.append((d, t, c))
    )
    # Longest pair (prompt + longer response): 9, 2, 17, 6, 8 -> order 1, 3, 4, 0, 2.
    assert compute.calls == [[1, 3], [4, 0], [2]]
    np.testing.assert_array_equal(chosen, [0, -10, -20, -30, -40])
    np.testing.assert_array_equal(rejected, [-1, -11, -21, -31, -41])
    # The start (nothing done yet), then each batch.
    assert seen == [(0, 5, False), (2, 5, False), (4, 5, False), (5, 5, False)]


def test_read_back_from_the_cache_instead_of_computed():
    reference_logps("k2", split_of(), Computer(), 2)
    again, seen = Computer(), []
    chosen, _ = reference_logps("k2", split_of(), again, 2, lambda *a: seen.append(a))
    assert again.calls == [] and [event[:3] for event in seen] == [(5, 5, True)]
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
        reference.store("k4", {"chosen": np.zeros(5), "rejected": np.zeros(5)}, {})
        reference._path("k4").write_bytes(b"not safetensors")
    else:
        reference.store(
            "k4", {"chosen": np.zeros(3), "rejected": np.zeros(3)}, {}
        )  # another split's length
    compute = Computer()
    chosen, _ = reference_logps("k4", split_of(), compute, 8)
    assert compute.calls and chosen[2] == -20
    assert reference.load_cached("k4", 5)[0][2] == -20  # and stored again, whole


def numbered_split(n: int) -> TokenizedSplit:
    pairs = [
        TokenizedPair(i, f"f:{i}", [1] * (i % 5 + 1), [2] * 3, [3] * (i % 3 + 1)) for i in range(n)
    ]
    return TokenizedSplit.from_pairs("train", "f", pairs)


def compute_fn(calls: list[int]):
    """Log-probs as a plain function of the pair position (what the model would give)."""

    def compute(positions):
        calls.extend(positions)
        p = np.asarray(positions, dtype=np.float32)
        return -p - 0.5, -2 * p - 1.0

    return compute


def test_a_stop_request_saves_and_the_next_start_continues(monkeypatch):
    monkeypatch.setattr(reference, "CHECKPOINT_SECONDS", 0.0)
    split = numbered_split(40)
    calls: list[int] = []
    asked = iter(range(100))
    with pytest.raises(reference.Interrupted) as caught:
        reference.reference_logps(
            "k1", split, compute_fn(calls), 4, should_stop=lambda: next(asked) >= 3
        )
    assert (caught.value.done, caught.value.total) == (12, 40)
    assert len(calls) == 12
    progress = []
    chosen, rejected = reference.reference_logps(
        "k1", split, compute_fn(calls), 4, lambda *a: progress.append(a)
    )
    assert len(calls) == 40 and sorted(calls) == list(range(40))  # nothing computed twice
    assert np.array_equal(chosen, -np.arange(40, dtype=np.float32) - 0.5)
    assert np.array_equal(rejected, -2 * np.arange(40, dtype=np.float32) - 1.0)
    done, total, cached, eta = progress[-1]
    assert (done, total, cached) == (40, 40, False) and eta == 0
    assert not list((reference.cache_dir() / "reference").glob("k1.partial*"))
    # Complete now: read from the cache, nothing computed.
    reference.reference_logps("k1", split, compute_fn(calls), 4)
    assert len(calls) == 40


def test_a_kill_resumes_from_the_last_checkpoint(monkeypatch):
    """A crash mid-way (the process dies: nothing runs after it) keeps the chunks saved."""
    monkeypatch.setattr(reference, "CHECKPOINT_SECONDS", 0.0)
    split = numbered_split(20)
    calls: list[int] = []
    compute = compute_fn(calls)

    def dies_on_the_third_batch(positions):
        if len(calls) >= 8:
            raise SystemExit("killed")
        return compute(positions)

    with pytest.raises(SystemExit):
        reference.reference_logps("k2", split, dies_on_the_third_batch, 4)
    assert len(calls) == 8
    chosen, _ = reference.reference_logps("k2", split, compute, 4)
    assert len(calls) == 20
    assert np.array_equal(chosen, -np.arange(20, dtype=np.float32) - 0.5)


@pytest.mark.slow
def test_ctrl_c_during_the_precompute_stops_the_run_and_the_next_start_continues(
    llama_chatml, preference_data, tmp_path, monkeypatch
):
    import os
    import signal

    from mlx_dpo.config import build_config
    from mlx_dpo.events import read_events
    from mlx_dpo.trainer import run as trainer

    monkeypatch.setattr(reference, "CHECKPOINT_SECONDS", 0.0)
    # A cache of its own: other tests' runs on the same model and data fill the shared one.
    monkeypatch.setenv("MLX_DPO_CACHE", str(tmp_path / "cache"))
    computed: list[int] = []
    real = trainer.compute_reference

    def counting(session, split, columns=reference.PAIR_COLUMNS):
        compute = real(session, split, columns)

        def wrapped(positions):
            computed.extend(positions)
            if len(computed) == 8:  # Ctrl-C arrives while the second batch is computed
                os.kill(os.getpid(), signal.SIGINT)
            return compute(positions)

        return wrapped

    monkeypatch.setattr(trainer, "compute_reference", counting)
    run_dir = tmp_path / "run"
    config = build_config(
        {},
        dict(model=str(llama_chatml), data=str(preference_data), adapter_path=str(run_dir),
             iters=2, eval_every=0, batch_size=4),
    )  # fmt: skip
    lines: list[str] = []
    status = trainer.train(config, trainer.RunOptions(run_dir, on_line=lines.append))
    assert status == "stopped"
    assert len(computed) == 8
    assert any("stopped during the reference log-probs (8/24 pairs kept" in x for x in lines)
    assert read_events(run_dir)[-1]["status"] == "stopped"
    status = trainer.train(
        config, trainer.RunOptions(run_dir, resume=True, on_line=lines.append, handle_signals=False)
    )
    assert status == "completed"
    assert len(computed) == 8 + 16 + 8  # then the other 16 of train, then all of valid
    events = [e for e in read_events(run_dir) if e["event"] == "reference" and not e["cached"]]
    assert events[-1]["eta"] == 0
    # Each session's precompute starts with what it has: none, then the 8 pairs kept.
    train = [e["done"] for e in events if e["split"] == "train"]
    assert train[0] == 0 and 8 in train and train[-1] == 24


def test_named_columns_a_wider_entry_serves_a_narrower_run():
    """LD-DPO's runs ask for tail sums too: an entry without them is recomputed with every
    column; an entry with them serves a run that needs only chosen and rejected."""
    wide = ("chosen", "rejected", "chosen_tail", "rejected_tail")

    def compute(positions):
        chosen = np.array([-10.0 * i for i in positions], dtype=np.float32)
        return chosen, chosen - 1, chosen / 2, chosen / 4

    reference_logps("k5", split_of(), Computer(), 8)
    assert reference.load_cached("k5", 5, wide) is None
    values = reference_logps("k5", split_of(), compute, 8, columns=wide)
    assert [v[2] for v in values] == [-20.0, -21.0, -10.0, -5.0]
    narrow = Computer()
    chosen, rejected = reference_logps("k5", split_of(), narrow, 8)
    assert not narrow.calls and chosen[2] == -20 and rejected[2] == -21
    (completion,) = reference_logps(
        "k6", split_of(), lambda p: (np.array(p, np.float32),), 8, columns=("completion",)
    )
    assert completion.tolist() == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------------------------------------
# Integrity: every entry carries its key and a SHA-256 of key and payload; a mismatch is a
# miss, said, and recomputed. Writes are atomic and durable. A folder that cannot be written
# is no cache.


def damage_flip(path):
    data = bytearray(path.read_bytes())
    data[-37] ^= 0x01  # one bit of one number in the payload
    path.write_bytes(bytes(data))


def damage_zero_block(path):
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = bytes(min(4096, len(data) - middle))  # a power cut's block
    path.write_bytes(bytes(data))


def damage_other_key(path):
    chosen, rejected = compute_fn([])(list(range(1000)))
    reference.store("other", {"chosen": chosen, "rejected": rejected}, {})
    path.write_bytes(reference._path("other").read_bytes())


def damage_header(path):
    path.write_bytes(b'{"key": 1' + path.read_bytes()[9:])


@pytest.mark.parametrize(
    ("damage", "reason"),
    [(damage_flip, "checksum does not match"), (damage_zero_block, "checksum does not match"),
     (damage_other_key, "another key"), (damage_header, "header is damaged")],
    ids=["flipped-bit", "zero-filled-block", "another-keys-file", "damaged-header"],
)  # fmt: skip
def test_a_damaged_entry_is_a_miss_said_and_recomputed(damage, reason):
    key = damage.__name__  # the cache folder is shared by the tests of a session
    split = numbered_split(1000)  # 8000 bytes of payload: a 4096-byte block fits inside
    calls: list[int] = []
    first, _ = reference_logps(key, split, compute_fn(calls), 256)
    damage(reference._path(key))
    warnings: list[str] = []
    chosen, rejected = reference_logps(key, split, compute_fn(calls), 256, warn=warnings.append)
    assert len(calls) == 2000  # computed again: the damaged numbers were never used
    np.testing.assert_array_equal(chosen, first)
    (warning,) = warnings
    assert str(reference._path(key)) in warning and reason in warning and "again" in warning
    # The entry is whole again: the third start reads it, silently.
    reference_logps(key, split, compute_fn(calls), 256, warn=warnings.append)
    assert len(calls) == 2000 and len(warnings) == 1


def test_a_damaged_partial_pass_starts_over(monkeypatch):
    monkeypatch.setattr(reference, "CHECKPOINT_SECONDS", 0.0)
    split, calls = numbered_split(40), []
    asked = iter(range(100))
    with pytest.raises(reference.Interrupted):
        reference_logps("kp", split, compute_fn(calls), 4, should_stop=lambda: next(asked) >= 3)
    (partial,) = (reference.cache_dir() / "reference").glob("kp.partial*")
    damage_flip(partial)
    warnings: list[str] = []
    chosen, _ = reference_logps("kp", split, compute_fn(calls), 4, warn=warnings.append)
    assert len(calls) == 12 + 40 and "starting the pass over" in warnings[0]
    np.testing.assert_array_equal(chosen, -np.arange(40, dtype=np.float32) - 0.5)


def test_an_entry_is_written_atomically_and_durably(monkeypatch):
    """temp file, fsync of it, os.replace, fsync of the folder: in that order."""
    import os
    import stat

    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src, dst):
        calls.append(f"replace {Path(src).parent == Path(dst).parent}")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    reference.store("ka", {"chosen": np.zeros(3), "rejected": np.ones(3)}, {})
    assert calls == ["fsync file", "replace True", "fsync dir"]
    assert not [p for p in reference._path("ka").parent.iterdir() if p.name.startswith(".")]


def test_a_read_only_or_impossible_cache_folder_is_no_cache(
    read_only_folder, tmp_path, monkeypatch
):
    (tmp_path / "a-file").write_text("x")
    for folder in (read_only_folder / "cache", tmp_path / "a-file" / "cache"):
        monkeypatch.setenv("MLX_DPO_CACHE", str(folder))
        assert reference.writable_cache_dir() is None
        problem = reference.cache_problem()
        assert problem.startswith(f"cache folder {folder}: ") and "without a cache" in problem
        calls: list[int] = []
        for _ in range(2):  # computed each time: nothing is kept, nothing raises
            chosen, _ = reference_logps("kr", numbered_split(6), compute_fn(calls), 4)
        assert len(calls) == 12 and chosen[5] == -5.5
        assert reference.store("kr", {"chosen": chosen, "rejected": chosen}, {}) is None
    assert list(read_only_folder.iterdir()) == []
