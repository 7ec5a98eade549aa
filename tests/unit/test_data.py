"""Reading, validating and tokenizing preference data exactly as docs/architecture.md says."""

from __future__ import annotations

import pytest
from mlx_lm.utils import load

from mlx_dpo.data import load_splits, read_records, split_files, truncate
from mlx_dpo.errors import UserError
from tests.conftest import write_jsonl


@pytest.fixture(scope="module")
def chatml_tokenizer(llama_chatml):
    return load(str(llama_chatml))[1]


def test_response_is_what_the_template_adds(chatml_tokenizer, tmp_path):
    rows = [
        {"prompt": "what is red?", "chosen": "a color.", "rejected": "a fruit.", "system": "short"},
        {
            "prompt": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "what is red?"},
            ],
            "chosen": [{"role": "assistant", "content": "a color."}],
            "rejected": "a fruit.",
        },
    ]
    write_jsonl(tmp_path / "train.jsonl", rows)
    pairs = load_splits(tmp_path, chatml_tokenizer, 1024)["train"].pairs
    tok = chatml_tokenizer
    system = [{"role": "system", "content": "short"}, {"role": "user", "content": "what is red?"}]
    prompt = tok.apply_chat_template(system, add_generation_prompt=True)
    full = tok.apply_chat_template(system + [{"role": "assistant", "content": "a color."}])
    assert pairs[0].prompt_ids.tolist() == prompt
    assert pairs[0].chosen_ids.tolist() == full[len(prompt) :]
    # The end-of-turn token belongs to the response.
    assert tok.convert_tokens_to_ids("<|im_end|>") in pairs[0].chosen_ids
    multi = rows[1]["prompt"]
    assert pairs[1].prompt_ids.tolist() == tok.apply_chat_template(
        multi, add_generation_prompt=True
    )
    assert tok.decode(pairs[1].rejected_ids).startswith("a fruit.")


def test_field_remapping(chatml_tokenizer, tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"q": "what?", "good": "yes.", "bad": "no."}])
    split = load_splits(
        tmp_path / "d.jsonl",
        chatml_tokenizer,
        1024,
        {"prompt": "q", "chosen": "good", "rejected": "bad"},
    )
    assert len(split["train"]) == 1


def test_truncation_cuts_prompt_left_then_response_right():
    prompt, chosen, rejected = list(range(10)), [100, 101, 102, 103], [200, 201]
    p, c, r, prompt_cut, response_cut = truncate(prompt, chosen, rejected, 8)
    assert p == list(range(6, 10)) and c == chosen and r == rejected
    assert (prompt_cut, response_cut) == (6, 0)
    p, c, r, prompt_cut, response_cut = truncate(prompt, chosen, rejected, 3)
    assert p == [9] and c == [100, 101] and r == [200, 201]
    assert (prompt_cut, response_cut) == (9, 2)


def test_truncation_is_counted(chatml_tokenizer, tmp_path):
    long_prompt = "word " * 200
    write_jsonl(
        tmp_path / "train.jsonl",
        [
            {"prompt": long_prompt, "chosen": "yes.", "rejected": "no."},
            {"prompt": "short?", "chosen": "yes.", "rejected": "no."},
        ],
    )
    split = load_splits(tmp_path, chatml_tokenizer, 64)["train"]
    assert split.truncation["pairs"] == 1 and split.truncation["prompt"] == 1
    assert all(
        len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) <= 64 for p in split.pairs
    )


def test_splits_are_found(tmp_path):
    for name in ("train", "valid", "test"):
        write_jsonl(tmp_path / f"{name}.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}])
    assert set(split_files(tmp_path)) == {"train", "valid", "test"}


BAD_CASES = [
    (
        "broken json",
        b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", \n',
        ":2:",
        "not valid JSON",
    ),
    ("missing field", b'{"prompt": "a", "chosen": "b"}\n', ":1:", "field 'rejected': missing"),
    (
        "non-string field",
        b'{"prompt": "a", "chosen": 3, "rejected": "c"}\n',
        ":1:",
        "field 'chosen'",
    ),
    (
        "empty response",
        b'{"prompt": "a", "chosen": "  ", "rejected": "c"}\n',
        ":1:",
        "field 'chosen': empty",
    ),
    ("identical", b'{"prompt": "a", "chosen": "same", "rejected": "same"}\n', ":1:", "identical"),
    (
        "undecodable",
        b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "\xff\xfe"}\n',
        ":2:",
        "UTF-8",
    ),
    ("empty file", b"", "", "empty"),
    ("not an object", b'["a", "b"]\n', ":1:", "JSON object"),
    (
        "bad role",
        b'{"prompt": [{"role": "robot", "content": "x"}], "chosen": "b", "rejected": "c"}\n',
        ":1:",
        "'role'",
    ),
]


@pytest.mark.parametrize("name,content,where,message", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_records_name_file_line_and_field(tmp_path, name, content, where, message):
    path = tmp_path / "train.jsonl"
    path.write_bytes(content)
    with pytest.raises(UserError) as caught:
        read_records(path)
    text = str(caught.value)
    assert f"{path}{where}" in text
    assert message in text


def test_all_problems_are_reported_together(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "a", "chosen": "x", "rejected": "x"}\nnope\n')
    with pytest.raises(UserError) as caught:
        read_records(path)
    assert len(caught.value.problems) == 4  # two missing fields, identical, broken JSON


def test_tokenizing_tells_its_progress_chunk_by_chunk(chatml_tokenizer, tmp_path, monkeypatch):
    from mlx_dpo import data
    from mlx_dpo.data import tokenize_records
    from tests.conftest import preference_rows

    monkeypatch.setattr(data, "TOKENIZE_CHUNK", 10)
    records = read_records(write_jsonl(tmp_path / "train.jsonl", preference_rows(24)))
    told: list[tuple[int, int]] = []
    split = tokenize_records(
        records, chatml_tokenizer, 1024, "train", "t", progress=lambda *a: told.append(a)
    )
    assert told == [(0, 24), (10, 24), (20, 24), (24, 24)]
    assert len(split) == 24


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        # JSON's \ud800 escape decodes to a lone surrogate, which no UTF-8 encoding holds.
        ('{"prompt": "hi \\ud800", "chosen": "a", "rejected": "b"}', "field 'prompt': text the "
         "tokenizer cannot take: a lone surrogate '\\ud800' at character 3"),
        ('{"prompt": [{"role": "user", "content": "\\udfff"}], "chosen": "a", "rejected": "b"}',
         "field 'prompt'[0]: text the tokenizer cannot take"),
        ('{"prompt": "p", "chosen": "a", "rejected": "b", "system": "\\ud800"}',
         "field 'system': text the tokenizer cannot take"),
        ('{"prompt": "p", "chosen": "a", "rejected": "b", "extra": ' + "9" * 5000 + "}",
         "a number too long to read"),
    ],
    ids=["surrogate-in-a-string", "surrogate-in-a-message", "surrogate-in-system", "5000-digits"],
)  # fmt: skip
def test_text_a_tokenizer_cannot_take_names_its_line(tmp_path, line, expected):
    """A lone surrogate reached the tokenizer and a 5000-digit number json.loads, both ending
    in a traceback: now each is a problem naming file:line."""
    path = tmp_path / "train.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n' + line + "\n")
    with pytest.raises(UserError) as err:
        read_records(path)
    (problem,) = err.value.problems
    assert problem.startswith(f"{path}:2: ") and expected in problem
