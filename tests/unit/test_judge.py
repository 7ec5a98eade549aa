"""The judge: the prompt filled once, the label log-odds against a forward through mlx-lm's
model, and the verdict of the two orders."""

from __future__ import annotations

import mlx_lm
import pytest

from mlx_dpo.errors import UserError
from mlx_dpo.generation import load_generator
from mlx_dpo.judge import (
    JUDGE_PROMPT,
    Judgment,
    LabelScores,
    judge_messages,
    judge_pair,
    label_scores,
    read_judge_prompt,
    request_text,
)
from mlx_dpo.logprobs import find_head_split
from tests.collect_models import full_logps

PROMPT = [{"role": "user", "content": "what color is item 3?"}]


def test_the_prompt_is_filled_once():
    messages = judge_messages(
        "Q: {prompt}\nA: {answer_a}\nB: {answer_b}\n{other}", PROMPT, "x {answer_b}", "y"
    )
    assert messages == [
        {"role": "user", "content": "Q: what color is item 3?\nA: x {answer_b}\nB: y\n{other}"}
    ]
    default = judge_messages(JUDGE_PROMPT, PROMPT, "one", "two")[0]["content"]
    assert "[Answer A]\none\n\n[Answer B]\ntwo" in default
    assert request_text([{"role": "system", "content": "s"}, *PROMPT]) == (
        "system: s\n\nuser: what color is item 3?"
    )


def test_a_judging_prompt_file_needs_every_placeholder(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("{prompt} {answer_a} {answer_b} {braces} stay")
    assert read_judge_prompt(good) == "{prompt} {answer_a} {answer_b} {braces} stay"
    bad = tmp_path / "bad.txt"
    bad.write_text("{prompt} {answer_a}")
    with pytest.raises(UserError, match=rf"{bad}: .*missing {{answer_b}}"):
        read_judge_prompt(bad)
    with pytest.raises(UserError, match="cannot read"):
        read_judge_prompt(tmp_path / "nope.txt")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff{prompt}")
    with pytest.raises(UserError, match="not valid UTF-8"):
        read_judge_prompt(binary)


@pytest.mark.parametrize("fixture", ["llama_chatml", "qwen2_llama3"])
def test_label_log_odds_are_the_models_own(request, fixture):
    path = request.getfixturevalue(fixture)
    judge = load_generator(str(path))
    model, tokenizer = mlx_lm.load(str(path))
    messages = judge_messages(JUDGE_PROMPT, PROMPT, "the item is red.", "it is blue.")
    ids = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True))
    last = full_logps(model, ids)[-1]
    (label_a,) = tokenizer.encode("A", add_special_tokens=False)
    (label_b,) = tokenizer.encode("B", add_special_tokens=False)
    for split in (find_head_split(judge.model), None):
        scores = label_scores(judge.model, judge.tokenizer, messages, split)
        assert scores.logp_a == pytest.approx(last[label_a], abs=1e-4)
        assert scores.logodds == pytest.approx(last[label_a] - last[label_b], abs=1e-4)
    judgment = judge_pair(
        judge.model, judge.tokenizer, JUDGE_PROMPT, PROMPT, "the item is red.", "it is blue.", None
    )
    assert judgment.xy.logodds == pytest.approx(scores.logodds, abs=1e-5)


def test_a_verdict_needs_both_orders_to_agree():
    def judged(xy: float, yx: float) -> Judgment:
        return Judgment(LabelScores(xy, 0.0), LabelScores(yx, 0.0))

    assert judged(2.0, -1.0).winner == "x"
    assert judged(2.0, -1.0).confidence == pytest.approx(1.5)
    assert judged(2.0, -1.0).position_bias == pytest.approx(0.5)
    assert judged(-2.0, 3.0).winner == "y"
    assert judged(-2.0, 3.0).confidence == pytest.approx(2.5)
    assert judged(2.0, 1.0).winner is None  # always the first shown: position bias only
    assert judged(-2.0, -1.0).winner is None
    assert judged(0.0, -1.0).winner is None
    scores = LabelScores(-0.5, -1.5)
    assert scores.label_mass == pytest.approx(0.6065 + 0.2231, abs=1e-4)
    assert set(judged(1, -1).as_dict()) == {
        "winner", "confidence", "position_bias", "logodds_xy", "logodds_yx",
        "label_mass_xy", "label_mass_yx",
    }  # fmt: skip
