"""Evaluating a model or adapter on data (mlx_dpo/evaluate.py, the library behind
`mlx-dpo eval`): settings come from the adapter unless given, the defaults are TrainConfig's,
per-pair rows go to a file, and mistakes are user errors naming what is wrong."""

from __future__ import annotations

import json
import math

import pytest

from mlx_dpo import reference
from mlx_dpo.errors import UserError
from mlx_dpo.evaluate import evaluate_command
from tests.training import config_for, run


@pytest.fixture
def adapter(llama_chatml, preference_data, tmp_path):
    """A run directory trained 3 steps with β 0.5 (its adapter_config.json records it)."""
    status, _ = run(config_for(llama_chatml, preference_data, tmp_path / "run", iters=3))
    assert status == "completed"
    return tmp_path / "run"


def test_the_base_model_with_the_default_settings(llama_chatml, preference_data):
    result = evaluate_command(str(llama_chatml), None, str(preference_data))
    # No adapter: the policy is its reference, so every reward is 0 and the loss ln 2.
    assert result["pairs"] == 8
    assert result["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert result["rewards/margins"] == 0 and result["kl"] == 0


def test_the_adapters_settings_unless_given(adapter, preference_data, tmp_path):
    saved = json.loads((adapter / "adapter_config.json").read_text())
    assert saved["beta"] == 0.5 and saved["base_model"]
    result = evaluate_command(None, str(adapter), str(preference_data), split="valid")
    assert result["pairs"] == 8 and result["rewards/margins"] != 0
    # Rewards are β·(log π − log π_ref): another β scales them, log-probs stay.
    doubled = evaluate_command(None, str(adapter), str(preference_data), split="valid", beta=1.0)
    assert doubled["rewards/margins"] == pytest.approx(2 * result["rewards/margins"], rel=1e-5)
    assert doubled["logps/chosen"] == pytest.approx(result["logps/chosen"], rel=1e-6)
    assert doubled["loss"] != pytest.approx(result["loss"])
    output = tmp_path / "pairs.jsonl"
    again = evaluate_command(
        None, str(adapter), str(preference_data), split="valid", output=str(output)
    )
    assert "per_pair" not in again and again == result
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(8))
    margins = [r["reward_chosen"] - r["reward_rejected"] for r in rows]
    assert sum(margins) / 8 == pytest.approx(result["rewards/margins"], rel=1e-4)


def test_mistakes_are_user_errors(adapter, llama_chatml, preference_data, tmp_path):
    data = str(preference_data)
    with pytest.raises(UserError, match="not an adapter folder"):
        evaluate_command(None, str(tmp_path), data)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text('{"beta": ')
    (broken / "adapters.safetensors").write_bytes(b"")  # an adapter folder's two files
    with pytest.raises(UserError, match=r"adapter_config.json:1: not valid JSON"):
        evaluate_command(None, str(broken), data)
    anonymous = tmp_path / "anonymous"
    anonymous.mkdir()
    (anonymous / "adapter_config.json").write_text("{}")
    (anonymous / "adapters.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="no model given"):
        evaluate_command(None, str(anonymous), data)
    with pytest.raises(UserError, match="no dev split"):
        evaluate_command(str(llama_chatml), None, data, split="dev")
    with pytest.raises(UserError, match="--beta must be > 0, got 0"):
        evaluate_command(str(llama_chatml), None, data, beta=0)
    (tmp_path / "only-train").mkdir()
    (tmp_path / "only-train" / "train.jsonl").write_text(
        (preference_data / "train.jsonl").read_text()
    )
    with pytest.raises(UserError, match="no test split"):
        evaluate_command(str(llama_chatml), None, str(tmp_path / "only-train"))


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if the evaluation gets as far as loading the model."""
    from mlx_dpo import evaluate

    def loading(*_args, **_kwargs):
        raise AssertionError("the model was loaded before --output was checked")

    monkeypatch.setattr(evaluate, "open_session", loading)


def test_an_output_that_is_a_folder_is_refused_before_the_work(
    llama_chatml, preference_data, tmp_path, no_work
):
    """It was found only after the whole evaluation."""
    with pytest.raises(UserError, match=f"--output {tmp_path}: is a folder"):
        evaluate_command(str(llama_chatml), None, str(preference_data), output=str(tmp_path))
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="is a file, not a folder"):
        evaluate_command(
            str(llama_chatml), None, str(preference_data), output=str(tmp_path / "file" / "o")
        )


def test_an_output_that_cannot_be_written_is_refused_before_the_work(
    llama_chatml, preference_data, read_only_folder, no_work
):
    output = str(read_only_folder / "sub" / "pairs.jsonl")
    with pytest.raises(UserError, match=f"--output {output}: cannot write in {read_only_folder}"):
        evaluate_command(str(llama_chatml), None, str(preference_data), output=output)


def test_per_pair_rows_are_strict_json(llama_chatml, preference_data, tmp_path, monkeypatch):
    """A non-finite log-prob (a NaN weight, an overflow) is written as null, not NaN."""
    from mlx_dpo import evaluate

    evaluation_metrics = evaluate.evaluation_metrics

    def with_a_nan(*args, **kwargs):
        result = evaluation_metrics(*args, **kwargs)
        result["per_pair"][0]["policy_chosen_logp"] = float("nan")
        result["per_pair"][1]["reward_rejected"] = float("-inf")
        return result

    monkeypatch.setattr(evaluate, "evaluation_metrics", with_a_nan)
    output = tmp_path / "pairs.jsonl"
    evaluate_command(str(llama_chatml), None, str(preference_data), output=str(output))

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    rows = [json.loads(line, parse_constant=refuse) for line in output.read_text().splitlines()]
    assert rows[0]["policy_chosen_logp"] is None and rows[1]["reward_rejected"] is None
    assert isinstance(rows[2]["policy_chosen_logp"], float)


def test_a_run_trained_with_a_fields_mapping_evaluates_with_it(llama_chatml, tmp_path):
    """The mapping was not kept with the run, so its own data could not be evaluated."""
    from tests.conftest import preference_rows, write_jsonl

    def renamed(rows):
        return [{"question": r["prompt"], "good": r["chosen"], "bad": r["rejected"]} for r in rows]

    data = tmp_path / "data"
    write_jsonl(data / "train.jsonl", renamed(preference_rows(12)))
    write_jsonl(data / "test.jsonl", renamed(preference_rows(4, seed=2, start=200)))
    fields = {"prompt": "question", "chosen": "good", "rejected": "bad"}
    status, _ = run(config_for(llama_chatml, data, tmp_path / "run", iters=2, fields=fields))
    assert status == "completed"
    result = evaluate_command(None, str(tmp_path / "run"), str(data))
    assert result["pairs"] == 4 and result["rewards/margins"] != 0


def test_a_live_run_can_be_evaluated(adapter, preference_data):
    """eval reads a run's adapters without its lock: a run being trained can be evaluated."""
    from mlx_dpo.rundir import RunLock

    with RunLock(adapter).acquire():
        result = evaluate_command(None, str(adapter), str(preference_data), split="valid")
    assert result["pairs"] == 8


@pytest.mark.parametrize("loss", ["kto", "orpo"])
def test_kto_and_orpo_adapters_evaluate_and_export(
    llama_chatml, preference_data, thumbs_data, tmp_path, capsys, loss
):
    """`mlx-dpo train --loss kto|orpo`, then `mlx-dpo eval` and `mlx-dpo export` of its run:
    the loss and its options come from the adapter; kto evaluates rated completions, orpo
    has no reference (kl null in JSON)."""
    from mlx_lm.utils import load

    from mlx_dpo.cli import main
    from tests.shared import train_args

    data = thumbs_data if loss == "kto" else preference_data
    run_dir = tmp_path / "run"
    assert main(train_args(llama_chatml, data, run_dir, "--loss", loss, "--beta", "0.3")) == 0
    capsys.readouterr()
    result = evaluate_command(None, str(run_dir), str(data), split="test")
    assert math.isfinite(result["loss"]) and result["loss"] > 0
    if loss == "kto":
        assert result["pairs"] == 12
        assert result["count/desirable"] + result["count/undesirable"] == 12
        assert result["kl"] >= 0
    else:
        assert result["pairs"] == 8 and math.isnan(result["kl"]) and result["nll_loss"] > 0
    assert main(["eval", "--adapter-path", str(run_dir), "--data", str(data), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["loss"] == pytest.approx(result["loss"], rel=1e-6)
    assert (printed["kl"] is None) == (loss == "orpo")
    out = tmp_path / "fused"
    assert main(["export", "--adapter-path", str(run_dir), "--save-path", str(out)]) == 0
    model, _ = load(str(out))
    assert model is not None


# ---------------------------------------------------------------------------------------------
# The reference cache training fills


@pytest.fixture
def reference_passes(monkeypatch):
    """Counts the reference's forward passes (LoRA switched off) wherever they run."""
    from mlx_dpo.trainer import batch_logps

    count = [0]
    reference_mode = batch_logps.reference_mode

    def counting(*args, **kwargs):
        count[0] += 1
        return reference_mode(*args, **kwargs)

    monkeypatch.setattr(batch_logps, "reference_mode", counting)
    return count


def test_an_adapter_reads_the_reference_that_training_cached(
    adapter, preference_data, reference_passes
):
    """The run cached the valid split's reference: evaluating it computes none, and gives
    what a live reference gives."""
    notes = []
    warm = evaluate_command(None, str(adapter), str(preference_data), "valid", on_note=notes.append)
    assert reference_passes[0] == 0
    assert notes == ["reference log-probs of 8 pairs read from the cache"]
    live = evaluate_command(
        None,
        str(adapter),
        str(preference_data),
        "valid",
        reference_mode="live",
        on_note=notes.append,
    )
    assert reference_passes[0] == 1  # the plan's forward batch holds all 8 pairs
    assert warm.keys() == live.keys()
    for name, value in warm.items():
        assert value == pytest.approx(live[name], rel=1e-5, abs=1e-6), name


def test_a_missing_reference_is_computed_once_and_kept(
    adapter, preference_data, reference_passes, monkeypatch, tmp_path
):
    monkeypatch.setenv("MLX_DPO_CACHE", str(tmp_path / "empty-cache"))
    notes = []
    cold = evaluate_command(None, str(adapter), str(preference_data), "test", on_note=notes.append)
    assert (
        reference_passes[0] == 1 and "computed in" in notes[0] and "(kept in the cache)" in notes[0]
    )
    warm = evaluate_command(None, str(adapter), str(preference_data), "test", on_note=notes.append)
    assert reference_passes[0] == 1 and notes[1].endswith("read from the cache")
    assert warm == cold


def test_without_an_adapter_one_pass_fills_the_cache_for_the_adapter(
    adapter, llama_chatml, preference_data, reference_passes, monkeypatch, tmp_path
):
    """Evaluating the base model first (where does it start?) leaves the reference in the
    cache, so evaluating the tuned adapter on that split runs the policy only."""
    monkeypatch.setenv("MLX_DPO_CACHE", str(tmp_path / "cache"))
    notes = []
    base = evaluate_command(str(llama_chatml), None, str(preference_data), on_note=notes.append)
    assert reference_passes[0] == 0 and "logps/preference_accuracy says" in notes[0]
    assert 0 <= base["logps/preference_accuracy"] <= 1 and base["rewards/accuracies"] == 0
    tuned = evaluate_command(None, str(adapter), str(preference_data), on_note=notes.append)
    assert reference_passes[0] == 0 and notes[1].endswith("read from the cache")
    monkeypatch.setenv("MLX_DPO_CACHE", str(tmp_path / "other-cache"))
    live = evaluate_command(None, str(adapter), str(preference_data), reference_mode="live")
    for name, value in tuned.items():
        assert value == pytest.approx(live[name], rel=1e-5, abs=1e-6), name


def test_a_read_only_cache_is_read_and_never_fails_the_evaluation(
    adapter, preference_data, read_only_folder, reference_passes, monkeypatch
):

    notes = []
    monkeypatch.setenv("MLX_DPO_CACHE", str(read_only_folder))
    result = evaluate_command(None, str(adapter), str(preference_data), on_note=notes.append)
    assert result["pairs"] == 8 and reference_passes[0] == 1
    assert "not kept: the cache folder is read-only" in notes[0]
    assert not list(read_only_folder.iterdir())
    # A read-only cache that holds the entry (training filled it): read, nothing written.
    monkeypatch.delenv("MLX_DPO_CACHE")
    evaluate_command(None, str(adapter), str(preference_data), "valid")
    monkeypatch.setattr(reference, "writable_cache_dir", lambda: None)
    passes = reference_passes[0]
    evaluate_command(None, str(adapter), str(preference_data), "valid", on_note=notes.append)
    assert reference_passes[0] == passes and notes[-1].endswith("read from the cache")
