"""`mlx-dpo pairs`: candidates are the seeded samples, every verdict is checked against the
judge's label log-odds computed independently (a forward through mlx-lm's model), only
consistent verdicts become pairs, and a run continues from its files exactly."""

from __future__ import annotations

from pathlib import Path

import mlx_lm
import pytest

from mlx_dpo.errors import UserError
from mlx_dpo.generation import load_generator
from mlx_dpo.journal import sidecar_path, skipped_path
from mlx_dpo.logprobs import find_head_split
from mlx_dpo.pairs import Judge, PairsSettings, candidate_seed, comparison_item, make_pairs
from mlx_dpo.prompts import load_prompts
from mlx_dpo.sampling import Sampling
from tests.collect_models import (
    TEMPLATE,
    balanced_judge,
    comparable,
    full_logps,
    lines_of,
    mlx_lm_sample,
)

SAMPLING = Sampling(1.0, 1.0, 6)
K = 4


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("what color is item 1?\nwhat color is item 2?\nwhat color is item 3?\n")
    return load_prompts(path)


@pytest.fixture(scope="module")
def judge_path(llama_plain, tmp_path_factory) -> Path:
    return balanced_judge(llama_plain, tmp_path_factory.mktemp("judge") / "judge")


@pytest.fixture(scope="module")
def models(llama_chatml, judge_path):
    generator = load_generator(str(llama_chatml))
    judge = load_generator(str(judge_path))
    judge_model = Judge(judge.model, judge.tokenizer, find_head_split(judge.model), TEMPLATE)
    return generator, judge_model


def settings(llama_chatml, judge_path, **changes) -> PairsSettings:
    values = dict(
        model=str(llama_chatml),
        judge=str(judge_path),
        sampling=SAMPLING,
        candidates=K,
        seed=1,
        judge_prompt=TEMPLATE,
    )
    values.update(changes)
    return PairsSettings(**values)


@pytest.fixture(scope="module")
def full_run(prompts, models, llama_chatml, judge_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    generator, judge = models
    lines = []
    summary = make_pairs(
        prompts, generator, judge, out, settings(llama_chatml, judge_path), lines.append
    )
    return out, summary, lines


def independent_logodds(model, tokenizer, prompt: str, first: str, second: str) -> float:
    text = TEMPLATE.replace("{prompt}", prompt).replace("{answer_a}", first)
    text = text.replace("{answer_b}", second)
    assert not tokenizer.chat_template  # the plain text, as a judge without a template reads
    last = full_logps(model, tokenizer.encode(text))[-1]
    (label_a,) = tokenizer.encode("A", add_special_tokens=False)
    (label_b,) = tokenizer.encode("B", add_special_tokens=False)
    return float(last[label_a] - last[label_b])


def test_candidates_are_the_seeded_samples(full_run, prompts, llama_chatml):
    out, summary, _ = full_run
    candidates = lines_of(sidecar_path(out, "candidates"))
    assert summary.candidates_made == len(candidates) == K * len(prompts)
    model, tokenizer = mlx_lm.load(str(llama_chatml))
    for candidate in candidates:
        prompt = next(p for p in prompts if p.key == candidate["item"])
        assert candidate["seed"] == candidate_seed(1, prompt.key, candidate["index"])
        expected = mlx_lm_sample(model, tokenizer, prompt.messages, SAMPLING, candidate["seed"])
        assert candidate["text"] == expected


def test_verdicts_are_the_judges_log_odds_in_both_orders(full_run, prompts, judge_path):
    out, summary, _ = full_run
    pairs, skipped = lines_of(out), lines_of(skipped_path(out))
    by_item = {r["meta"]["item"]: r for r in pairs + skipped}
    assert len(by_item) == len(pairs) + len(skipped) == len(prompts) * K * (K - 1) // 2
    texts = {(c["item"], c["index"]): c["text"] for c in lines_of(sidecar_path(out, "candidates"))}
    judge_model, judge_tokenizer = mlx_lm.load(str(judge_path))
    kept = dropped = 0
    for prompt in prompts:
        question = prompt.messages[0]["content"]
        for i in range(K):
            for j in range(i + 1, K):
                record = by_item[comparison_item(prompt.key, i, j)]
                x, y = texts[(prompt.key, i)], texts[(prompt.key, j)]
                if x.strip() == y.strip():
                    assert record["meta"]["verdict"] == "identical"
                    continue
                judgment = record["meta"]["judgment"]
                xy = independent_logodds(judge_model, judge_tokenizer, question, x, y)
                yx = independent_logodds(judge_model, judge_tokenizer, question, y, x)
                assert judgment["logodds_xy"] == pytest.approx(xy, abs=1e-3)
                assert judgment["logodds_yx"] == pytest.approx(yx, abs=1e-3)
                if xy > 0 > yx or xy < 0 < yx:
                    kept += 1
                    winner, loser = (x, y) if xy > 0 else (y, x)
                    assert (record["chosen"], record["rejected"]) == (winner, loser)
                    assert record["meta"]["verdict"] == "judge"
                    assert record["meta"]["confidence"] == pytest.approx(abs(xy - yx) / 2, 1e-3)
                    assert record in pairs
                else:
                    dropped += 1
                    assert record["meta"]["verdict"] == "inconsistent" and record in skipped
                    assert record["meta"]["answers"] == [x, y]
    assert kept and dropped  # the tiny judge gives both kinds: both paths are checked
    assert (summary.consistent, summary.inconsistent) == (kept, dropped)
    assert summary.consistent_share == kept / (kept + dropped)


def test_running_again_continues_from_the_files(
    full_run, prompts, models, llama_chatml, judge_path, tmp_path
):
    out, _, lines = full_run
    assert len(lines) == len(prompts) and lines[-1].startswith(f"prompt {len(prompts)}/")
    generator, judge = models
    files = [out, skipped_path(out), sidecar_path(out, "candidates")]
    # Nothing left to do: nothing changes.
    before = [path.read_bytes() for path in files]
    summary = make_pairs(prompts, generator, judge, out, settings(llama_chatml, judge_path), print)
    assert (summary.candidates_made, summary.comparisons) == (0, 0)
    assert summary.candidates_reused == K * len(prompts)
    assert [path.read_bytes() for path in files] == before
    # A run killed part way: its files hold a prefix (and a torn line); continuing gives the
    # same verdicts as the uninterrupted run.
    cut = tmp_path / "pairs.jsonl"
    cut_files = [cut, skipped_path(cut), sidecar_path(cut, "candidates")]
    for source, target, keep in zip(files, cut_files, (2, 3, 7), strict=True):
        kept = source.read_bytes().splitlines(keepends=True)[:keep]
        target.write_bytes(b"".join(kept) + b'{"item": "torn')
    summary = make_pairs(prompts, generator, judge, cut, settings(llama_chatml, judge_path), print)
    assert summary.torn_bytes == 3 * len(b'{"item": "torn')
    assert summary.candidates_made == K * len(prompts) - 7
    for full, resumed in zip(files, cut_files, strict=True):
        assert comparable(resumed) == comparable(full)


def test_other_settings_are_refused_not_mixed(full_run, prompts, models, llama_chatml, judge_path):
    out, _, _ = full_run
    generator, judge = models
    other = settings(llama_chatml, judge_path, sampling=Sampling(0.5, 1.0, 6))
    with pytest.raises(
        UserError,
        match=r"candidates\.jsonl:1: candidates made with other settings \(sampling differ\)",
    ):
        make_pairs(prompts, generator, judge, out, other, print)
    other = settings(llama_chatml, judge_path, judge_prompt=TEMPLATE + " Answer now.")
    with pytest.raises(
        UserError, match=r"verdicts made with other settings \(judge_prompt_sha256 differ\)"
    ):
        make_pairs(prompts, generator, judge, out, other, print)
