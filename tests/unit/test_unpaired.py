"""Unpaired (KTO) records: reading, validation with file:line errors, tokenization equal to
the pairs' own, pairs read as two rated answers, and what KTO needs besides the tokens."""

from __future__ import annotations

import pytest
from mlx_lm.utils import load

from mlx_dpo.data import TokenizedPair, TokenizedSplit, load_splits
from mlx_dpo.errors import UserError
from mlx_dpo.unpaired import (
    CompletionSplit,
    TokenizedCompletion,
    TokenizedUnpairedSplit,
    kl_completions,
    kl_pairs,
    length_bias_figures,
    load_completion_data,
    load_unpaired_splits,
    read_unpaired_records,
    weight_advice,
)
from tests.conftest import preference_rows, write_jsonl


@pytest.fixture(scope="module")
def chatml_tokenizer(llama_chatml):
    return load(str(llama_chatml))[1]


@pytest.fixture(scope="module")
def plain_tokenizer(llama_plain):
    return load(str(llama_plain))[1]


RATED = [
    {"prompt": "what is red?", "completion": "a color.", "label": True, "system": "short"},
    {
        "prompt": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "what is red?"},
        ],
        "completion": [{"role": "assistant", "content": "a fruit."}],
        "label": False,
    },
]


@pytest.mark.parametrize("tokenizer_name", ["chatml_tokenizer", "plain_tokenizer"])
def test_completion_tokens_are_the_pairs_response_tokens(request, tmp_path, tokenizer_name):
    """The same prompt and answer tokenize exactly as data.py tokenizes them in a pair."""
    tokenizer = request.getfixturevalue(tokenizer_name)
    write_jsonl(tmp_path / "rated" / "train.jsonl", RATED)
    pairs = [
        {**RATED[0], "chosen": "a color.", "rejected": "a fruit."},
        {"prompt": RATED[1]["prompt"], "chosen": "a fruit.", "rejected": "a color."},
    ]
    for row in pairs:
        row.pop("completion", None)
        row.pop("label", None)
    write_jsonl(tmp_path / "pairs" / "train.jsonl", pairs)
    examples = load_unpaired_splits(tmp_path / "rated", tokenizer, 1024)["train"].examples
    expected = load_splits(tmp_path / "pairs", tokenizer, 1024)["train"].pairs
    for example, pair in zip(examples, expected, strict=True):
        assert list(example.prompt_ids) == list(pair.prompt_ids)
        assert list(example.completion_ids) == list(pair.chosen_ids)
    assert [e.desirable for e in examples] == [True, False]
    if tokenizer_name == "chatml_tokenizer":  # the system message is part of the prompt
        system = [
            {"role": "system", "content": "short"},
            {"role": "user", "content": "what is red?"},
        ]
        assert examples[0].prompt_ids == tokenizer.apply_chat_template(
            system, add_generation_prompt=True
        )


def test_pairs_read_as_a_desirable_and_an_undesirable_completion(chatml_tokenizer, tmp_path):
    rows = preference_rows(6)
    write_jsonl(tmp_path / "train.jsonl", rows)
    pairs = load_splits(tmp_path, chatml_tokenizer, 1024)["train"].pairs
    split = load_unpaired_splits(tmp_path, chatml_tokenizer, 1024)["train"]
    assert (len(split), split.desirable, split.undesirable) == (12, 6, 6)
    for pair, (good, bad) in zip(
        pairs, zip(split.examples[::2], split.examples[1::2], strict=True), strict=True
    ):
        assert good.desirable and not bad.desirable
        assert list(good.prompt_ids) == list(bad.prompt_ids) == list(pair.prompt_ids)
        assert list(good.completion_ids) == list(pair.chosen_ids)
        assert list(bad.completion_ids) == list(pair.rejected_ids)
        assert good.source == bad.source == pair.source


def test_a_file_may_mix_rated_answers_and_pairs(tmp_path):
    path = write_jsonl(
        tmp_path / "train.jsonl",
        [RATED[0], {"prompt": "a?", "chosen": "yes.", "rejected": "no."}, RATED[1]],
    )
    records = read_unpaired_records(path)
    assert [r.desirable for r in records] == [True, True, False, False]
    assert [r.source for r in records] == [f"{path}:{n}" for n in (1, 2, 2, 3)]


def test_field_remapping(chatml_tokenizer, tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"q": "what?", "answer": "yes.", "thumbs_up": False}])
    fields = {"prompt": "q", "completion": "answer", "label": "thumbs_up"}
    split = load_unpaired_splits(tmp_path / "d.jsonl", chatml_tokenizer, 1024, fields)["train"]
    assert len(split) == 1 and not split.examples[0].desirable


BAD_CASES = [
    ("missing label", b'{"prompt": "a", "completion": "b"}\n', ":1:", "field 'label': missing"),
    (
        "label not a boolean",
        b'{"prompt": "a", "completion": "b", "label": 1}\n',
        ":1:",
        "field 'label': must be true (desirable) or false (undesirable), got 1",
    ),
    (
        "label as text",
        b'{"prompt": "a", "completion": "b", "label": "true"}\n',
        ":1:",
        "got 'true'",
    ),
    (
        "missing completion",
        b'{"prompt": "a", "label": true}\n',
        ":1:",
        "field 'completion': missing",
    ),
    (
        "empty completion",
        b'{"prompt": "a", "completion": " ", "label": true}\n',
        ":1:",
        "field 'completion': empty",
    ),
    (
        "completion from the user",
        b'{"prompt": "a", "completion": [{"role": "user", "content": "b"}], "label": true}\n',
        ":1:",
        "responses must be assistant messages",
    ),
    (
        "both forms",
        b'{"prompt": "a", "completion": "b", "label": true, "chosen": "c"}\n',
        ":1:",
        "use one form",
    ),
    ("neither form", b'{"prompt": "a", "answer": "b"}\n', ":1:", "a record needs 'completion'"),
    (
        "broken pair",
        b'{"prompt": "a", "completion": "b", "label": true}\n{"prompt": "a", "chosen": "b"}\n',
        ":2:",
        "field 'rejected': missing",
    ),
    (
        "broken json",
        b'{"prompt": "a", "completion": "b", "label": true}\n{"prompt": \n',
        ":2:",
        "not valid JSON",
    ),
    (
        "system not a string",
        b'{"prompt": "a", "completion": "b", "label": true, "system": 3}\n',
        ":1:",
        "field 'system': must be a string",
    ),
    ("empty file", b"", "", "empty"),
]


@pytest.mark.parametrize("name,content,where,message", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_records_name_file_line_and_field(tmp_path, name, content, where, message):
    path = tmp_path / "train.jsonl"
    path.write_bytes(content)
    with pytest.raises(UserError) as caught:
        read_unpaired_records(path)
    assert f"{path}{where}" in str(caught.value)
    assert message in str(caught.value)


def test_all_problems_of_all_files_are_reported_together(chatml_tokenizer, tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"prompt": "a"}, {"prompt": "a", "completion": "b"}])
    write_jsonl(tmp_path / "valid.jsonl", [{"prompt": "a", "completion": "b", "label": None}])
    with pytest.raises(UserError) as caught:
        load_unpaired_splits(tmp_path, chatml_tokenizer, 1024)
    assert len(caught.value.problems) == 3
    assert any("valid.jsonl:1" in p for p in caught.value.problems)


def test_truncation_is_counted(chatml_tokenizer, tmp_path):
    rows = [
        {"prompt": "word " * 200, "completion": "yes.", "label": True},
        {"prompt": "short?", "completion": "yes " * 200, "label": False},
        {"prompt": "short?", "completion": "no.", "label": False},
    ]
    write_jsonl(tmp_path / "train.jsonl", rows)
    split = load_unpaired_splits(tmp_path, chatml_tokenizer, 64)["train"]
    assert split.truncation["completions"] == 2
    assert split.truncation["prompt"] == 2  # the long answer's prompt is cut to 1 token first
    assert split.truncation["response"] == 1
    assert all(len(e.prompt_ids) + len(e.completion_ids) <= 64 for e in split.examples)


def example(completion: list[int], desirable: bool = True) -> TokenizedCompletion:
    return TokenizedCompletion(0, "", [1, 2], completion, desirable)


def test_kl_completions_shift_each_prompt_to_the_previous_rows_answer():
    batch = [example([10]), example([20, 21]), example([30])]
    assert kl_completions(batch) == [[30], [10], [20, 21]]
    with pytest.raises(ValueError, match="at least 2"):
        kl_completions(batch[:1])


def test_fingerprint_follows_the_labels():
    good = TokenizedUnpairedSplit("train", "p", [example([5], True)])
    bad = TokenizedUnpairedSplit("train", "p", [example([5], False)])
    assert good.fingerprint() != bad.fingerprint()
    assert good.fingerprint() == TokenizedUnpairedSplit("t", "q", [example([5])]).fingerprint()


def test_weight_advice_is_the_kto_papers_range():
    assert weight_advice(100, 100, 1.0, 1.0) is None
    assert weight_advice(120, 100, 1.0, 1.0) is None  # 1.2 : 1 is inside [1, 4/3]
    text = weight_advice(100, 400, 1.0, 1.0)  # 1 : 4
    # TRL's bounds: desirable in [400/100, 1.33·400/100], undesirable in [100/400/1.33, 100/400]
    assert "desirable_weight in [4.00, 5.33]" in text
    assert "undesirable_weight in [0.19, 0.25]" in text
    assert weight_advice(100, 400, 4.5, 1.0) is None
    assert weight_advice(0, 10, 1.0, 1.0) is None


def test_length_bias_figures_compare_every_desirable_with_every_undesirable():
    good, bad = [3, 5, 5, 9], [5, 1, 7]
    split = TokenizedUnpairedSplit(
        "train",
        "p",
        [example([0] * n, True) for n in good] + [example([0] * n, False) for n in bad],
    )
    figures = length_bias_figures(split)
    combos = [(g > b) + 0.5 * (g == b) for g in good for b in bad]
    assert figures["chosen_longer_share"] == pytest.approx(sum(combos) / len(combos))
    assert figures["mean_chosen_tokens"] == pytest.approx(5.5)
    assert figures["mean_rejected_tokens"] == pytest.approx(13 / 3)
    assert figures["pairs"] == 3
    only_good = TokenizedUnpairedSplit("train", "p", [example([0] * 3, True)])
    assert length_bias_figures(only_good)["pairs"] == 0


# ---------------------------------------------------------------------------------------------
# What the trainer holds: CompletionSplit, its batches with KL rows, a run's splits


def test_completion_split_keeps_labels_through_subsets_and_figures():
    good, bad = [3, 5, 5, 9], [5, 1, 7]
    unpaired_split = TokenizedUnpairedSplit(
        "train",
        "p",
        [example([0] * n, True) for n in good] + [example([0] * n, False) for n in bad],
    )
    split = CompletionSplit.from_unpaired(unpaired_split)
    assert len(split) == 7 and split.desirable.tolist() == [True] * 4 + [False] * 3
    assert split.lengths[:, 2].tolist() == [0] * 7  # nothing in the rejected slot
    assert length_bias_figures(split) == length_bias_figures(unpaired_split)
    sub = split.subset([6, 0, 4])
    assert isinstance(sub, CompletionSplit) and sub.desirable.tolist() == [False, True, False]
    assert [len(p.chosen_ids) for p in sub.pairs] == [7, 3, 5]
    flipped = CompletionSplit.of(split, ~split.desirable)
    assert flipped.fingerprint() != split.fingerprint()


def test_kl_pairs_give_each_prompt_the_previous_answer_cut_to_max_length():
    rows = [([1] * 5, [10, 11]), ([2] * 2, [20] * 9), ([3] * 7, [30])]
    split = TokenizedSplit.from_pairs(
        "train", "p", [TokenizedPair(i, f"s{i}", p, c, []) for i, (p, c) in enumerate(rows)]
    )
    pairs = kl_pairs(split.pairs[:], max_length=10)
    assert [list(p.chosen_ids) for p in pairs] == [[10, 11], [20] * 9, [30]]
    # Row 0 gets row 2's answer; row 2 (7 prompt tokens) gets row 1's, cut to 10 - 7 = 3.
    assert [list(p.rejected_ids) for p in pairs] == [[30], [10, 11], [20, 20, 20]]
    assert [list(p.prompt_ids) for p in pairs] == [r[0] for r in rows]


def test_a_runs_completions_by_role(chatml_tokenizer, tmp_path):
    from types import SimpleNamespace

    folder = tmp_path / "thumbs"
    rated = [{"prompt": f"q{i}?", "completion": f"a{i}.", "label": i % 3 == 0} for i in range(9)]
    write_jsonl(folder / "train.jsonl", rated + preference_rows(2))  # pairs read as 2 each
    write_jsonl(folder / "test.jsonl", rated[:4])
    config = SimpleNamespace(
        data=str(folder), fields={}, max_length=256, seed=0, valid_fraction=None,
        max_pairs=None, desirable_weight=1.0, undesirable_weight=1.0,
    )  # fmt: skip
    loaded = load_completion_data(config, chatml_tokenizer, ("train", "valid"))
    train = loaded.splits["train"]
    assert isinstance(train, CompletionSplit) and len(train) == 13
    assert train.desirable_count == 3 + 2 and "valid" not in loaded.splits
    assert any("13 completions (5 desirable, 8 undesirable)" in n for n in loaded.notes)
    assert any("KTO paper advises" in n for n in loaded.notes)  # 5 : 8 is outside [1, 4/3]
    assert loaded.info["data_shape"] == "unpaired"
    # A single file serves the first role asked for (`mlx-dpo eval --split test FILE`).
    single = SimpleNamespace(**{**vars(config), "data": str(folder / "test.jsonl")})
    assert len(load_completion_data(single, chatml_tokenizer, ("test",)).splits["test"]) == 4
    with pytest.raises(UserError, match="local files"):
        load_completion_data(
            SimpleNamespace(**{**vars(config), "data": [{"path": "x"}]}),
            chatml_tokenizer,
            ("train",),
        )
    write_jsonl(folder / "valid.jsonl", [{"prompt": "q", "completion": "a", "label": "yes"}])
    with pytest.raises(UserError) as caught:
        load_completion_data(config, chatml_tokenizer, ("train", "valid"))
    assert any("valid.jsonl:1" in p and "'label'" in p for p in caught.value.problems)
