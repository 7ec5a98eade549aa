"""A person's verdicts as records: what each verdict writes, the refusals, undo's view of a
record, progress and agreement with the model."""

from __future__ import annotations

import pytest

from mlx_dpo.collect import (
    Shown,
    VerdictRefused,
    next_prompt,
    progress,
    shown_from_record,
    verdict_record,
)
from mlx_dpo.data import read_records
from mlx_dpo.journal import VerdictFiles
from mlx_dpo.prompts import make_prompt

SETTINGS = {
    "model": "m",
    "adapter": None,
    "mode": "samples",
    "labels": {"a": "sample A", "b": "sample B"},
    "sampling": {"temp": 0.8, "top_p": 0.95, "max_tokens": 8},
    "seed": 0,
}


def shown(text: str = "q?", a: str = "good", b: str = "bad", prefers: str = "a") -> Shown:
    prompt = make_prompt("p.txt:1", [{"role": "user", "content": text}])
    return Shown(
        prompt,
        draw=2,
        seeds={"a": 11, "b": 12},
        answers={"a": a, "b": b},
        finish={"a": "stop", "b": "length"},
        tokens={"a": 1, "b": 8},
        preference={"logp_a": -1.0, "logp_b": -2.0, "prefers": prefers, "basis": "logp"},
    )


@pytest.mark.parametrize(
    ("verdict", "chosen", "rejected", "agrees"),
    [("a", "good", "bad", True), ("b", "bad", "good", False)],
)
def test_a_or_b_better_is_a_pair(verdict, chosen, rejected, agrees):
    record, is_pair = verdict_record(shown(), verdict, SETTINGS)
    assert is_pair
    assert (record["prompt"], record["chosen"], record["rejected"]) == ("q?", chosen, rejected)
    meta = record["meta"]
    assert meta["verdict"] == verdict and meta["agrees"] is agrees
    assert meta["seeds"] == {"a": 11, "b": 12} and meta["draw"] == 2
    assert meta["finish"] == {"a": "stop", "b": "length"} and meta["tokens"] == {"a": 1, "b": 8}
    assert meta["sampling"] == SETTINGS["sampling"] and meta["item"] == shown().prompt.key
    assert "answers" not in meta


def test_tie_and_both_bad_keep_both_answers_and_make_no_pair():
    for verdict in ("tie", "both_bad"):
        record, is_pair = verdict_record(shown(), verdict, SETTINGS)
        assert not is_pair and "chosen" not in record
        assert record["meta"]["answers"] == {"a": "good", "b": "bad"}
        assert record["meta"]["agrees"] is None


def test_edit_keeps_the_edited_answer_as_chosen_and_the_other_as_rejected():
    record, is_pair = verdict_record(shown(), "edit", SETTINGS, edited=("b", "bad, fixed"))
    assert is_pair and (record["chosen"], record["rejected"]) == ("bad, fixed", "good")
    assert record["meta"]["edited"] == {"side": "b", "original": "bad"}
    assert record["meta"]["agrees"] is False  # the model preferred A


def test_no_preference_to_agree_with():
    record, _ = verdict_record(shown(prefers="none"), "a", SETTINGS)
    assert record["meta"]["agrees"] is None


@pytest.mark.parametrize(
    ("a", "b", "verdict", "edited", "reason"),
    [
        ("same", "same", "a", None, "the same"),
        ("", "bad", "b", None, "an answer is empty"),
        ("good", "bad", "edit", ("a", "  "), "the edited answer is empty"),
        ("good", "bad", "edit", ("a", "bad"), "the same"),
    ],
)
def test_verdicts_that_would_be_invalid_data_are_refused(a, b, verdict, edited, reason):
    with pytest.raises(VerdictRefused, match=reason):
        verdict_record(shown(a=a, b=b), verdict, SETTINGS, edited)


def test_undo_shows_what_was_on_screen():
    before = shown()
    for verdict, edited in (("a", None), ("b", None), ("tie", None), ("edit", ("a", "better"))):
        record, _ = verdict_record(before, verdict, SETTINGS, edited)
        again = shown_from_record(record, {before.prompt.key: before.prompt})
        assert again.answers == before.answers and again.prompt == before.prompt
        assert again.seeds == before.seeds and again.draw == 2 and again.complete
        assert again.preference == before.preference and again.tokens == before.tokens
    # A prompt no longer in the prompts file comes from the record itself.
    record, _ = verdict_record(before, "a", SETTINGS)
    assert shown_from_record(record, {}).prompt.messages == before.prompt.messages


def test_progress_agreement_and_the_next_prompt(tmp_path):
    items = [shown(f"q{n}?", prefers="a") for n in range(4)]
    out = tmp_path / "pairs.jsonl"
    with VerdictFiles(out) as files:
        for item, verdict in zip(items, ("a", "b", "tie"), strict=False):
            files.add(*verdict_record(item, verdict, SETTINGS))
        result = progress(files, [i.prompt for i in items])
        assert (result.judged, result.total, result.pairs, result.skipped) == (3, 4, 2, 1)
        assert (result.agreed, result.compared, result.agreement) == (1, 2, 0.5)
        assert next_prompt([i.prompt for i in items], files.done_items()) == items[3].prompt
    assert [r.chosen[0]["content"] for r in read_records(out)] == ["good", "bad"]
