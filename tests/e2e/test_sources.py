"""--data as published sets arrive: Hub ids from an offline cache in the Hub's own layout,
parquet, their shapes, split names, selection and the on-disk cache (mlx_dpo.sources, layout,
hub, token_cache); each public shape trains and evaluates like its explicit records."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from mlx_lm.utils import load

from mlx_dpo import sources
from mlx_dpo.cli import main
from mlx_dpo.config import TrainConfig
from mlx_dpo.data import (
    as_token_ids,
    batch_encoder,
    tokenize_record,
    tokenize_records,
    validate_record,
)
from mlx_dpo.errors import UserError
from mlx_dpo.events import read_events
from mlx_dpo.sources import load_data, resolve_source
from tests import hub_fixtures as hub
from tests.conftest import write_jsonl

# Every test here reads the Hugging Face sets of tests/hub_fixtures.py from a local cache.
pytestmark = pytest.mark.usefixtures("use_hub_cache")


@pytest.fixture(scope="module")
def tokenizer(llama_chatml):
    return load(str(llama_chatml))[1]


def explicit_split(repo_id, tokenizer):
    records = [
        validate_record(f"x:{i}", r, {})[0] for i, r in enumerate(hub.explicit_train(repo_id))
    ]
    return tokenize_records(records, tokenizer, 1024, "train", "explicit")


@pytest.mark.parametrize("repo_id", hub.SETS)
def test_each_public_set_reads_as_its_explicit_records(repo_id, tokenizer):
    config = TrainConfig(data=repo_id, data_split=hub.TRAIN_SPLIT.get(repo_id))
    loaded = load_data(config, tokenizer, ("train",))
    split = loaded.splits["train"]
    assert split.shape == hub.SHAPES[repo_id] == loaded.info["data_shape"]
    expected = explicit_split(repo_id, tokenizer)
    assert np.array_equal(split.lengths, expected.lengths)
    assert np.array_equal(split.tokens, expected.tokens)
    assert split.sources[0].startswith(f"{repo_id}/")


def test_hub_layouts_give_the_sets_own_split_names():
    h4 = resolve_source("HuggingFaceH4/ultrafeedback_binarized")
    assert set(h4.splits) == {
        f"{a}_{b}" for a in ("train", "test") for b in ("prefs", "sft", "gen")
    }
    hh = resolve_source("Anthropic/hh-rlhf")
    assert [f.label for f in hh.splits["train"]] == [
        "Anthropic/hh-rlhf/harmless-base/train.jsonl.gz",
        "Anthropic/hh-rlhf/helpful-base/train.jsonl.gz",
    ]
    assert hh.ignored == ["red-team-attempts/red_team_attempts.jsonl.gz"]
    assert set(resolve_source("Intel/orca_dpo_pairs").splits) == {"train"}
    assert h4.revision == hub.commit_of("HuggingFaceH4/ultrafeedback_binarized")


def test_a_cached_set_downloads_nothing(monkeypatch, tokenizer):
    """Offline, from the cache; the second run reads the tokenized set from mlx-dpo's cache."""
    import huggingface_hub

    assert huggingface_hub.constants.HF_HUB_OFFLINE
    config = TrainConfig(data="argilla/dpo-mix-7k")
    first = load_data(config, tokenizer, ("train",)).splits["train"]

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(sources, "tokenize_records", no_tokenizing)
    second = load_data(config, tokenizer, ("train",)).splits["train"]
    assert np.array_equal(first.tokens, second.tokens) and first.sources == second.sources


def test_local_parquet_file_and_folder(tmp_path, tokenizer):
    files = hub.set_files("argilla/dpo-mix-7k")
    folder = tmp_path / "mix"
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    single = folder / "data" / "train-00000-of-00001.parquet"
    by_file = load_data(TrainConfig(data=str(single)), tokenizer, ("train",)).splits["train"]
    by_folder = load_data(TrainConfig(data=str(folder)), tokenizer, ("train", "test")).splits
    assert np.array_equal(by_file.tokens, by_folder["train"].tokens)
    assert len(by_folder["test"]) == 4


def test_valid_split_by_name_and_carving_said(tokenizer):
    config = TrainConfig(
        data="HuggingFaceH4/ultrafeedback_binarized",
        data_split="train_prefs",
        valid_split="test_prefs",
    )
    loaded = load_data(config, tokenizer)
    assert (len(loaded.splits["train"]), len(loaded.splits["valid"])) == (12, 4)
    assert loaded.info["valid_source"] == "split"
    small = load_data(TrainConfig(data="argilla/dpo-mix-7k"), tokenizer)
    assert "valid" not in small.splits  # 12 pairs: under the automatic carving's minimum
    assert any("no evaluation during the run" in n for n in small.notes)
    carved = load_data(TrainConfig(data="argilla/dpo-mix-7k", valid_fraction=0.25), tokenizer)
    assert (len(carved.splits["train"]), len(carved.splits["valid"])) == (9, 3)
    train_sources = set(carved.splits["train"].sources)
    assert not train_sources & set(carved.splits["valid"].sources)
    assert any("3 pairs" in n and "carved" in n for n in carved.notes)


def test_carving_default_for_large_sets():
    assert sources.carve_count(199, None) == 0
    assert sources.carve_count(1000, None) == 50
    assert sources.carve_count(60_000, None) == sources.AUTO_VALID_MAX_PAIRS
    assert sources.carve_count(1000, 0.0) == 0 and sources.carve_count(10, 0.01) == 1


def test_max_pairs_is_a_seeded_sample(tokenizer):
    def sample(seed):
        config = TrainConfig(data="Intel/orca_dpo_pairs", max_pairs=5, seed=seed)
        return load_data(config, tokenizer, ("train",)).splits["train"].sources

    assert len(sample(0)) == 5 and sample(0) == sample(0) and sample(0) != sample(1)


def test_mixture_with_weights(tmp_path, tokenizer):
    config = TrainConfig(
        data=[
            {"path": "Intel/orca_dpo_pairs", "weight": 0.5},
            {"path": "HuggingFaceH4/ultrafeedback_binarized", "split": "train_prefs", "weight": 2},
        ]
    )
    loaded = load_data(config, tokenizer, ("train",))
    train = loaded.splits["train"]
    assert len(train) == 6 + 24
    assert loaded.info["data_shape"] == "question+system+ultrafeedback-binarized"
    assert sum(s.startswith("Intel/") for s in train.sources) == 6
    with pytest.raises(UserError, match="'weight' must be a number > 0"):
        load_data(TrainConfig(data=[{"path": "Intel/orca_dpo_pairs", "weight": 0}]), tokenizer)


def test_a_missing_split_lists_the_sets_splits(tokenizer):
    with pytest.raises(UserError, match="no split 'train'; its splits: train_prefs"):
        load_data(TrainConfig(data="HuggingFaceH4/ultrafeedback_binarized"), tokenizer)


def test_batched_tokenizing_equals_record_by_record(qwen2_llama3, llama_plain, tokenizer):
    """On every fixture set and template (ChatML, Llama-3, none): the batched path gives
    exactly what apply_chat_template gives record by record."""
    tokenizers = [tokenizer, load(str(qwen2_llama3))[1], load(str(llama_plain))[1]]
    # The templated ones encode the prompt's head (up to its last added token) once.
    assert [batch_encoder(t).segment_end is not None for t in tokenizers] == [True, True, True]
    for repo_id in hub.SETS:
        records = [
            validate_record(f"x:{i}", r, {})[0] for i, r in enumerate(hub.explicit_train(repo_id))
        ]
        for tok in tokenizers:
            split = tokenize_records(records, tok, 1024, "train", "x")
            for pair, record in zip(split.pairs, records, strict=True):
                prompt, chosen, rejected, _ = tokenize_record(record, tok)
                assert pair.prompt_ids.tolist() == prompt
                assert pair.chosen_ids.tolist() == list(chosen)
                assert pair.rejected_ids.tolist() == list(rejected)


NO_SYSTEM_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_templates_without_a_system_role_get_it_folded_or_name_the_record(tokenizer):
    strict = copy.deepcopy(tokenizer._tokenizer)
    strict.chat_template = NO_SYSTEM_TEMPLATE
    rows = [
        {"prompt": "what is red?", "chosen": "a color.", "rejected": "a fruit.", "system": "short"},
        {"prompt": "hi", "chosen": "hello.", "rejected": "go."},
    ]
    records = [validate_record(f"d.jsonl:{i + 1}", r, {})[0] for i, r in enumerate(rows)]
    notes: list[str] = []
    split = tokenize_records(records, strict, 1024, "train", "d.jsonl", notes=notes)
    folded = [{"role": "user", "content": "short\n\nwhat is red?"}]
    expected = as_token_ids(strict.apply_chat_template(folded, add_generation_prompt=True))
    assert split.pairs[0].prompt_ids.tolist() == expected
    assert notes == [
        "train: the chat template has no system role; the system text of 1 pair(s) was folded "
        "into the first user turn"
    ]
    # Two user turns in a row: the template refuses; the record is named, no traceback.
    bad = validate_record(
        "d.jsonl:3",
        {"prompt": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
         "chosen": "x.", "rejected": "y."},
        {},
    )[0]  # fmt: skip
    with pytest.raises(UserError) as caught:
        tokenize_records([*records, bad], strict, 1024, "train", "d.jsonl")
    assert "d.jsonl:3: the chat template refuses this conversation" in str(caught.value)
    assert "roles must alternate" in str(caught.value)


# ---------------------------------------------------------------------------------------------
# The command line


def _train(model, data, run_dir, *extra):
    return main(
        ["train", "--model", str(model), "--data", data, "--adapter-path", str(run_dir),
         "--iters", "2", "--batch-size", "2", "--no-tui", *extra]
    )  # fmt: skip


def _eval_pairs(model, data, split, out, capsys):
    code = main(["eval", "--model", str(model), "--data", data, "--split", split, "--json",
                 "--output", str(out)])  # fmt: skip
    capsys.readouterr()
    assert code == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.parametrize(
    "repo_id",
    [
        "trl-lib/ultrafeedback_binarized",
        pytest.param("HuggingFaceH4/ultrafeedback_binarized", marks=pytest.mark.slow),
        pytest.param("argilla/dpo-mix-7k", marks=pytest.mark.slow),
        pytest.param("Anthropic/hh-rlhf", marks=pytest.mark.slow),
        pytest.param("Intel/orca_dpo_pairs", marks=pytest.mark.slow),
        pytest.param("mlabonne/orpo-dpo-mix-40k", marks=pytest.mark.slow),
    ],
)
def test_each_public_shape_trains_by_id_and_scores_like_explicit_records(
    repo_id, llama_chatml, tmp_path, capsys
):
    split = hub.TRAIN_SPLIT.get(repo_id, "train")
    extra = ["--data-split", split] if split != "train" else []
    assert _train(llama_chatml, repo_id, tmp_path / "run", *extra) == 0
    out = capsys.readouterr().out
    assert f"shape {hub.SHAPES[repo_id]}" in out
    run_start = next(e for e in read_events(tmp_path / "run") if e["event"] == "run_start")
    assert run_start["data_shape"] == hub.SHAPES[repo_id]
    assert run_start["data_sources"][0]["revision"] == hub.commit_of(repo_id)
    explicit = write_jsonl(tmp_path / "explicit.jsonl", hub.explicit_train(repo_id))
    by_id = _eval_pairs(llama_chatml, repo_id, split, tmp_path / "a.jsonl", capsys)
    by_records = _eval_pairs(llama_chatml, str(explicit), "test", tmp_path / "b.jsonl", capsys)
    assert len(by_id) == len(by_records) == 12
    for a, b in zip(by_id, by_records, strict=True):
        assert a["policy_chosen_logp"] == b["policy_chosen_logp"]
        assert a["policy_rejected_logp"] == b["policy_rejected_logp"]
    assert main(["data", "audit", repo_id]) == 0
    assert f"shape: {hub.SHAPES[repo_id]}" in capsys.readouterr().out


def test_data_audit_reads_every_public_set(capsys):
    for repo_id in hub.SETS:
        assert main(["data", "audit", repo_id, "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        shapes = {s["shape"] for s in result["splits"].values()}
        assert shapes == {hub.SHAPES[repo_id]}


def test_eval_evaluates_a_single_file(llama_chatml, tmp_path, capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl", hub.explicit_train("argilla/dpo-mix-7k")[:3])
    assert main(["eval", "--model", str(llama_chatml), "--data", str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pairs"] == 3


def test_an_id_not_in_the_cache_offline_names_id_cache_and_offline(hub_cache, capsys):
    code = main(["data", "audit", "nobody/no-such-set"])
    err = capsys.readouterr().err
    assert code == 2
    assert "nobody/no-such-set" in err and "HF_HUB_OFFLINE" in err
    assert str(hub_cache) in err
    assert "Traceback" not in err


def test_a_parquet_file_that_is_not_parquet_names_the_file(llama_chatml, tmp_path, capsys):
    bad = tmp_path / "train.parquet"
    bad.write_text('{"prompt": "a"}\n')
    assert _train(llama_chatml, str(bad), tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert f"{bad}: not a readable parquet file" in err and "Traceback" not in err


def test_tokenizing_each_split_is_told_and_a_cached_split_is_not(tmp_path, tokenizer):
    write_jsonl(tmp_path / "train.jsonl", [{"prompt": f"q{i}", "chosen": "a", "rejected": "b"} for i in range(5)])  # fmt: skip
    write_jsonl(tmp_path / "valid.jsonl", [{"prompt": "v", "chosen": "a", "rejected": "b"}])
    told: list[tuple] = []
    config = TrainConfig(data=str(tmp_path))
    load_data(config, tokenizer, ("train", "valid"), progress=lambda *a: told.append(a))
    assert told == [
        ("tokenizing", 0, 5, "train pairs"),
        ("tokenizing", 5, 5, "train pairs"),
        ("tokenizing", 0, 1, "valid pairs"),
        ("tokenizing", 1, 1, "valid pairs"),
    ]
    told.clear()
    load_data(config, tokenizer, ("train", "valid"), progress=lambda *a: told.append(a))
    assert told == []  # both from the token cache: nothing is tokenized
