"""The reference precompute is chunked and checkpointed: a stop request or a kill during it
resumes from the last chunk with the same numbers (mlx_dpo.reference)."""

from __future__ import annotations

import numpy as np
import pytest

from mlx_dpo import reference
from mlx_dpo.data import TokenizedPair, TokenizedSplit


def split_of(n: int) -> TokenizedSplit:
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
    split = split_of(40)
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
    split = split_of(20)
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

    from mlx_dpo import trainer
    from mlx_dpo.config import build_config
    from mlx_dpo.events import read_events

    monkeypatch.setattr(reference, "CHECKPOINT_SECONDS", 0.0)
    computed: list[int] = []
    real = trainer.compute_reference

    def counting(session, split):
        compute = real(session, split)

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
    assert any(
        "stopped during the reference log-probs for train (8/24 pairs kept" in x for x in lines
    )
    assert read_events(run_dir)[-1]["status"] == "stopped"
    status = trainer.train(
        config, trainer.RunOptions(run_dir, resume=True, on_line=lines.append, handle_signals=False)
    )
    assert status == "completed"
    assert len(computed) == 8 + 16 + 8  # then the other 16 of train, then all of valid
    events = [e for e in read_events(run_dir) if e["event"] == "reference" and not e["cached"]]
    assert events[-1]["eta"] == 0
