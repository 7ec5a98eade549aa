"""Prompts files: text, JSON lines, JSON, a data folder; every problem with file:line; stable
keys and seeds."""

from __future__ import annotations

import json

import pytest

from mlx_dpo.data import read_records
from mlx_dpo.errors import UserError
from mlx_dpo.prompts import (
    derive_seed,
    load_prompts,
    pair_seeds,
    prompt_field,
    prompt_from_record,
    prompt_key,
    unique_prompts,
)
from tests.conftest import preference_rows, write_jsonl


def test_a_text_file_is_one_user_prompt_a_line(tmp_path):
    path = tmp_path / "p.txt"
    path.write_bytes("\ufefffirst?\n\n  second one  \r\nthird\n".encode())
    prompts = load_prompts(path)
    assert [p.messages for p in prompts] == [
        [{"role": "user", "content": "first?"}],
        [{"role": "user", "content": "second one"}],
        [{"role": "user", "content": "third"}],
    ]
    assert [p.source for p in prompts] == [f"{path}:1", f"{path}:3", f"{path}:4"]


def test_json_lines_with_strings_messages_and_system(tmp_path):
    rows = [
        {"prompt": "plain?"},
        {"prompt": "kind?", "system": "be kind"},
        {"prompt": [{"role": "user", "content": "listed?"}], "chosen": "ignored"},
    ]
    prompts = load_prompts(write_jsonl(tmp_path / "p.jsonl", rows))
    assert [p.messages for p in prompts] == [
        [{"role": "user", "content": "plain?"}],
        [{"role": "system", "content": "be kind"}, {"role": "user", "content": "kind?"}],
        [{"role": "user", "content": "listed?"}],
    ]
    as_list = tmp_path / "p.json"
    as_list.write_text(json.dumps(rows))
    assert [p.messages for p in load_prompts(as_list)] == [p.messages for p in prompts]


def test_a_data_folder_gives_the_prompts_of_a_split(preference_data):
    train = read_records(preference_data / "train.jsonl")
    assert [p.messages for p in load_prompts(preference_data)] == [r.prompt for r in train]
    test = read_records(preference_data / "test.jsonl")
    assert [p.messages for p in load_prompts(preference_data, "test")] == [r.prompt for r in test]
    with pytest.raises(UserError, match="no nope split"):
        load_prompts(preference_data, "nope")


def test_every_problem_is_reported_with_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(
        b'{"prompt": "fine"}\n'
        b"not json\n"
        b'{"question": "x"}\n'
        b'{"prompt": ""}\n'
        b'{"prompt": [{"role": "user"}]}\n'
        b'{"prompt": [{"role": "assistant", "content": "only me"}]}\n'
        b'{"prompt": "x", "system": 3}\n'
        b"[1]\n"
        b'{"prompt": "\xff"}\n'
    )
    with pytest.raises(UserError) as caught:
        load_prompts(path)
    problems = caught.value.problems
    assert [p.split(": ")[0] for p in problems] == [f"{path}:{n}" for n in range(2, 10)]
    assert "field 'prompt': missing" in problems[1]
    assert "field 'prompt': empty" in problems[2]
    assert "no user message" in problems[4]
    text = tmp_path / "bad.txt"
    text.write_bytes(b"ok\n\xfe\xff\n")
    with pytest.raises(UserError, match=rf"{text}:2: not valid UTF-8"):
        load_prompts(text)


@pytest.mark.parametrize(
    ("content", "message"),
    [("", "no prompts"), ("\n \n", "no prompts")],
)
def test_an_empty_file_is_refused(tmp_path, content, message):
    path = tmp_path / "p.txt"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        load_prompts(path)


def test_missing_path(tmp_path):
    with pytest.raises(UserError, match="no such prompts file"):
        load_prompts(tmp_path / "nope.txt")


def test_keys_are_stable_and_repeats_appear_once(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a?\nb?\na?\n")
    prompts, repeats = unique_prompts(load_prompts(path))
    assert [p.messages[0]["content"] for p in prompts] == ["a?", "b?"] and repeats == 1
    assert prompts[0].key == prompt_key([{"role": "user", "content": "a?"}])
    assert prompts[0].key != prompt_key([{"role": "system", "content": "a?"}])
    assert len(prompts[0].key) == 16


def test_prompt_field_reads_back_as_the_same_messages(tmp_path):
    cases = [
        [{"role": "user", "content": "q"}],
        [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
        [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a"},
            {"role": "user", "content": "q2"},
        ],
    ]
    rows = [{**prompt_field(m), "chosen": "c", "rejected": "r"} for m in cases]
    records = read_records(write_jsonl(tmp_path / "d.jsonl", rows))
    assert [r.prompt for r in records] == cases
    assert [prompt_from_record(row) for row in rows] == cases
    assert isinstance(rows[0]["prompt"], str) and rows[1]["system"] == "s"


def test_seeds_depend_only_on_seed_key_and_draw():
    assert derive_seed(0, "k", 1) == derive_seed(0, "k", 1)
    assert len({derive_seed(s, k, d) for s in (0, 1) for k in ("k", "j") for d in (0, 1)}) == 8
    assert all(0 <= derive_seed(s, "k") < 2**31 for s in range(50))
    a, b = pair_seeds(0, "k", 0, same=False)
    assert a != b and pair_seeds(0, "k", 0, same=False) == (a, b)
    same = pair_seeds(0, "k", 0, same=True)
    assert same[0] == same[1] and pair_seeds(0, "k", 1, same=True) != same


def test_preference_rows_are_valid_prompts(tmp_path):
    # The fixture data every test uses (string, messages and system prompts) reads as prompts.
    path = write_jsonl(tmp_path / "d.jsonl", preference_rows(6))
    assert len(load_prompts(path)) == 6
