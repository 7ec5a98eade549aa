"""Shapes told apart by their columns and normalised to our records (mlx_dpo.shapes)."""

from __future__ import annotations

import pytest

from mlx_dpo.data import validate_record
from mlx_dpo.errors import UserError
from mlx_dpo.shapes import detect_shape, hh_turns, split_conversations

USER = {"role": "user", "content": "q?"}
A1 = {"role": "assistant", "content": "yes."}
A2 = {"role": "assistant", "content": "no."}


@pytest.mark.parametrize(
    "row,expected",
    [
        ({"prompt": "q?", "chosen": "yes.", "rejected": "no."}, "standard"),
        ({"prompt": [USER], "chosen": [A1], "rejected": [A2]}, "conversational"),
        ({"chosen": [USER, A1], "rejected": [USER, A2]}, "implicit-prompt"),
        (
            {"prompt": "q?", "chosen": [USER, A1], "rejected": [USER, A2], "source": "x"},
            "conversations+prompt",
        ),
        (
            {"prompt": "q?", "prompt_id": "1", "chosen": [USER, A1], "rejected": [USER, A2],
             "messages": [USER, A1], "score_chosen": 8.0, "score_rejected": 2.0},
            "ultrafeedback-binarized",
        ),
        (
            {"chosen": "\n\nHuman: q?\n\nAssistant: yes.", "rejected": "\n\nHuman: q?\n\nAssistant: no."},
            "hh-text",
        ),
        ({"system": "", "question": "q?", "chosen": "yes.", "rejected": "no."}, "question+system"),
    ],
)  # fmt: skip
def test_shapes_normalise_to_the_same_record(row, expected):
    found = detect_shape(list(row), row, {})
    assert found.name == expected
    record, problems = validate_record("f:1", found.normalise(row), found.fields)
    assert not problems
    assert record.prompt == [USER]
    assert record.chosen == [A1] and record.rejected == [A2]


def test_fields_mapping_wins_and_names_missing_columns():
    row = {"q": "x", "good": "a", "bad": "b"}
    shape = detect_shape(list(row), row, {"prompt": "q", "chosen": "good", "rejected": "bad"})
    assert shape.name == "fields"
    with pytest.raises(UserError, match="'nope'"):
        detect_shape(list(row), row, {"prompt": "nope", "chosen": "good", "rejected": "bad"})


def test_unknown_columns_list_them_and_a_mapping_that_would_work():
    row = {"instruction": "x", "output_good": "a", "output_bad": "b"}
    with pytest.raises(UserError) as caught:
        detect_shape(list(row), row, {})
    text = str(caught.value)
    assert "instruction, output_good, output_bad" in text
    assert "fields: {prompt: instruction, chosen: output_good, rejected: output_bad}" in text


def test_ambiguous_columns_are_refused():
    row = {"prompt": "x", "question": "y", "chosen": "a", "rejected": "b"}
    with pytest.raises(UserError, match="more than one shape"):
        detect_shape(list(row), row, {})


def test_implicit_prompt_is_the_common_prefix_as_trl_extracts_it():
    system = {"role": "system", "content": "s"}
    turns = [system, USER, A1, {"role": "user", "content": "and?"}]
    split = split_conversations([*turns, A1], [*turns, A2])
    assert split["prompt"] == turns and split["chosen"] == [A1]
    # Texts: the shared space before the differing word goes with the responses.
    text = split_conversations("Q: color? It is red.", "Q: color? It is blue.")
    assert text == {"prompt": "Q: color? It is", "chosen": " red.", "rejected": " blue."}


def test_hh_text_prompt_is_every_turn_before_the_last_assistant_turn():
    text = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: q?\n\nAssistant: yes."
    assert [m["role"] for m in hh_turns(text)] == ["user", "assistant", "user", "assistant"]
    row = {"chosen": text, "rejected": text.replace("yes.", "no.")}
    shape = detect_shape(list(row), row, {})
    record = shape.normalise(row)
    assert record["prompt"][-1] == {"role": "user", "content": "q?"}
    assert record["chosen"] == [A1]
    diverged = {"chosen": text, "rejected": "\n\nHuman: other\n\nAssistant: no."}
    assert "differ before" in shape.normalise(diverged)
