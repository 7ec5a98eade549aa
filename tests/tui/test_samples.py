"""Unit tests of tui/samples.py: reference and policy answers side by side, changes marked."""

from __future__ import annotations

from mlx_dpo.tui.run_model import RunModel
from mlx_dpo.tui.samples import Sample, samples_at, word_diff


def test_samples_pair_reference_and_policy_answers():
    model = RunModel()
    model.apply({"event": "samples", "step": 0, "prompts": [
        {"prompt": "Capital of France?", "reference": "Paris, I think."},
        {"prompt": "2+2?", "reference": "5"}]})  # fmt: skip
    assert model.sample_steps() == []
    model.apply({"event": "samples", "step": 10, "seconds": 3.2, "prompts": [
        {"prompt": "Capital of France?", "policy": "Paris."},
        {"prompt": "2+2?", "policy": "4"}]})  # fmt: skip
    assert model.sample_steps() == [10]
    samples = samples_at(model, 10)
    assert samples[1] == Sample("2+2?", "5", "4")
    old, new = word_diff("Paris, I think.", "Paris.")
    assert old == [("Paris, I think.", True)] and new == [("Paris.", True)]
    old, new = word_diff("the cat sat on the mat", "the dog sat on the mat")
    assert [text for text, changed in old if changed] == ["cat "]
    assert [text for text, changed in new if changed] == ["dog "]
    assert "".join(text for text, _ in new) == "the dog sat on the mat"
