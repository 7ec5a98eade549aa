"""`mlx-dpo pairs`: preference pairs without a person. The model samples k candidates per
prompt; a local judge model compares every two of them in both orders (mlx_dpo/judge.py);
the comparisons whose two orders agree become pairs.

Files (OUT = --out, see mlx_dpo/journal.py):
    OUT.candidates.jsonl  one line a candidate: item (the prompt's key), index, seed, text,
                          tokens, finish_reason, settings
    OUT.jsonl             the consistent comparisons as pairs (chosen = the winner)
    OUT.skipped.jsonl     the others: verdict "inconsistent" (the two orders disagree),
                          "identical" (the same text twice) or "invalid" (an empty answer)
Each line is written whole and fsynced; a kill at any moment loses at most the candidate or
verdict being written, and running the same command again continues from the files: the
candidates made are reused (candidate j of a prompt is seeded by (--seed, prompt, j), so
a candidate made again is the same), the comparisons judged are skipped. The settings are
recorded in every line; continuing with other settings is refused rather than mixed.

A pair's meta: tool, item ("<prompt key>:<i>:<j>"), verdict, time, settings (model,
adapter, sampling, seed, judge, judge_prompt_sha256), candidates [i, j], seeds [s_i, s_j],
chosen_candidate, confidence (the judge's mean log-odds for the winner), judgment (winner
"x" = candidate i / "y" = candidate j / null, logodds_xy, logodds_yx, position_bias,
label_mass_xy/yx), prompt_source, seq.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlx_dpo.data import validate_record
from mlx_dpo.errors import UserError
from mlx_dpo.formatting import format_duration
from mlx_dpo.generation import Generator, sample_answer
from mlx_dpo.journal import JsonLines, VerdictFiles, sidecar_path
from mlx_dpo.judge import judge_pair
from mlx_dpo.logprobs import HeadSplit
from mlx_dpo.prompts import Prompt, derive_seed, prompt_field
from mlx_dpo.sampling import DEFAULT_CANDIDATES, Sampling

TOOL = "mlx-dpo pairs"


@dataclass
class PairsSettings:
    model: str
    judge: str
    sampling: Sampling
    candidates: int = DEFAULT_CANDIDATES
    seed: int = 0
    adapter: str | None = None
    judge_prompt: str = ""

    def candidate_settings(self) -> dict[str, Any]:
        """What a candidate depends on (besides its prompt and index)."""
        return {
            "model": self.model,
            "adapter": self.adapter,
            "sampling": self.sampling.as_dict(),
            "seed": self.seed,
        }

    def verdict_settings(self) -> dict[str, Any]:
        sha = hashlib.sha256(self.judge_prompt.encode("utf-8")).hexdigest()
        return {**self.candidate_settings(), "judge": self.judge, "judge_prompt_sha256": sha}


@dataclass
class Judge:
    model: Any
    tokenizer: Any
    split: HeadSplit | None
    template: str


@dataclass
class PairsSummary:
    prompts: int = 0
    candidates_made: int = 0
    candidates_reused: int = 0
    comparisons: int = 0  # judged in this run (both orders each)
    consistent: int = 0
    inconsistent: int = 0
    identical: int = 0
    invalid: int = 0
    generating_seconds: float = 0.0
    judging_seconds: float = 0.0
    torn_bytes: int = 0
    lines: list[str] = field(default_factory=list)

    @property
    def candidates_per_second(self) -> float | None:
        if not self.candidates_made or not self.generating_seconds:
            return None
        return self.candidates_made / self.generating_seconds

    @property
    def verdicts_per_second(self) -> float | None:
        """Comparisons judged a second (each is two forwards of the judge)."""
        if not self.comparisons or not self.judging_seconds:
            return None
        return self.comparisons / self.judging_seconds

    @property
    def consistent_share(self) -> float | None:
        judged = self.consistent + self.inconsistent
        return self.consistent / judged if judged else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "prompts": self.prompts,
            "candidates_made": self.candidates_made,
            "candidates_reused": self.candidates_reused,
            "comparisons": self.comparisons,
            "consistent": self.consistent,
            "inconsistent": self.inconsistent,
            "identical": self.identical,
            "invalid": self.invalid,
            "candidates_per_second": self.candidates_per_second,
            "verdicts_per_second": self.verdicts_per_second,
            "consistent_share": self.consistent_share,
            "generating_seconds": self.generating_seconds,
            "judging_seconds": self.judging_seconds,
        }


def candidate_seed(seed: int, key: str, index: int) -> int:
    return derive_seed(seed, key, "candidate", index)


def comparison_item(key: str, i: int, j: int) -> str:
    return f"{key}:{i}:{j}"


def _check_settings(lines: JsonLines, expected: dict[str, Any], what: str, read) -> None:
    for line in lines.lines:
        found = read(line.value)
        if found is not None and found != expected:
            changed = sorted(k for k in expected if found.get(k) != expected[k])
            raise UserError(
                f"{lines.path}:{line.number}: {what} made with other settings "
                f"({', '.join(changed)} differ); continue with the same settings, or write to "
                "another --out"
            )


def _candidate_settings_of(value: Any) -> dict | None:
    return value.get("settings") if isinstance(value, dict) and "item" in value else None


def _verdict_settings_of(value: Any) -> dict | None:
    meta = value.get("meta") if isinstance(value, dict) else None
    if isinstance(meta, dict) and meta.get("tool") == TOOL:
        return meta.get("settings")
    return None


def make_pairs(
    prompts: list[Prompt],
    generator: Generator,
    judge: Judge,
    out: Path,
    settings: PairsSettings,
    say: Callable[[str], None] = print,
) -> PairsSummary:
    """Sample, judge and write (see the module docstring); returns what was done this run.
    Continues the files in `out`'s place if they exist."""
    summary = PairsSummary(prompts=len(prompts))
    with (
        JsonLines(sidecar_path(out, "candidates")) as candidate_file,
        VerdictFiles(out) as verdict_files,
    ):
        summary.torn_bytes = candidate_file.torn_bytes + verdict_files.torn_bytes
        if summary.torn_bytes:
            say(
                f"dropped a torn last line ({summary.torn_bytes} bytes) left by an interrupted write"
            )
        _check_settings(
            candidate_file,
            settings.candidate_settings(),
            "candidates",
            _candidate_settings_of,
        )
        for file in (verdict_files.pairs, verdict_files.skipped):
            _check_settings(file, settings.verdict_settings(), "verdicts", _verdict_settings_of)
        candidates: dict[tuple[str, int], dict] = {
            (line.value["item"], line.value["index"]): line.value
            for line in candidate_file.lines
            if _candidate_settings_of(line.value) is not None
        }
        done = verdict_files.done_items()
        # The ETA counts the prompts that needed work (those continued from the files do not).
        worked, worked_seconds = 0, 0.0
        for number, prompt in enumerate(prompts, start=1):
            tic = time.perf_counter()
            work_before = summary.candidates_made + summary.comparisons + summary.identical
            texts = []
            for index in range(settings.candidates):
                found = candidates.get((prompt.key, index))
                if found is None:
                    found = _make_candidate(prompt, index, generator, settings, summary)
                    candidate_file.append(found)
                    candidates[(prompt.key, index)] = found
                else:
                    summary.candidates_reused += 1
                texts.append(found)
            for i, j in itertools.combinations(range(settings.candidates), 2):
                item = comparison_item(prompt.key, i, j)
                if item in done:
                    continue
                record, is_pair = _compare(prompt, texts[i], texts[j], judge, settings, summary)
                record["meta"]["item"] = item
                verdict_files.add(record, is_pair)
                done.add(item)
            if summary.candidates_made + summary.comparisons + summary.identical > work_before:
                worked += 1
                worked_seconds += time.perf_counter() - tic
            eta = (
                format_duration(worked_seconds / worked * (len(prompts) - number))
                if worked
                else "–"
            )
            line = _progress_line(number, len(prompts), summary, eta)
            summary.lines.append(line)
            say(line)
    return summary


def _make_candidate(
    prompt: Prompt,
    index: int,
    generator: Generator,
    settings: PairsSettings,
    summary: PairsSummary,
) -> dict[str, Any]:
    seed = candidate_seed(settings.seed, prompt.key, index)
    tic = time.perf_counter()
    answer = sample_answer(
        generator.model, generator.tokenizer, prompt.messages, settings.sampling, seed
    )
    summary.generating_seconds += time.perf_counter() - tic
    summary.candidates_made += 1
    return {
        "item": prompt.key,
        "index": index,
        "seed": seed,
        "text": answer.text,
        "tokens": answer.tokens,
        "finish_reason": answer.finish_reason,
        "settings": settings.candidate_settings(),
        "time": time.time(),
    }


def _compare(
    prompt: Prompt,
    x: dict,
    y: dict,
    judge: Judge,
    settings: PairsSettings,
    summary: PairsSummary,
) -> tuple[dict[str, Any], bool]:
    """(record, is_pair) for candidates x and y of a prompt."""
    meta: dict[str, Any] = {
        "tool": TOOL,
        "time": time.time(),
        "settings": settings.verdict_settings(),
        "candidates": [x["index"], y["index"]],
        "seeds": [x["seed"], y["seed"]],
        "prompt_source": prompt.source,
    }
    record: dict[str, Any] = prompt_field(prompt.messages)
    if x["text"].strip() == y["text"].strip():
        summary.identical += 1
        meta.update(verdict="identical", answers=[x["text"], y["text"]])
        record["meta"] = meta
        return record, False
    tic = time.perf_counter()
    judgment = judge_pair(
        judge.model,
        judge.tokenizer,
        judge.template,
        prompt.messages,
        x["text"],
        y["text"],
        judge.split,
    )
    summary.judging_seconds += time.perf_counter() - tic
    summary.comparisons += 1
    meta["judgment"] = judgment.as_dict()
    meta["confidence"] = judgment.confidence
    if judgment.winner is None:
        summary.inconsistent += 1
        meta.update(verdict="inconsistent", answers=[x["text"], y["text"]])
        record["meta"] = meta
        return record, False
    winner, loser = (x, y) if judgment.winner == "x" else (y, x)
    record.update(chosen=winner["text"], rejected=loser["text"])
    _, problems = validate_record("", record, {})
    if problems:
        summary.invalid += 1
        del record["chosen"], record["rejected"]
        meta.update(verdict="invalid", answers=[x["text"], y["text"]], problems=problems)
        record["meta"] = meta
        return record, False
    summary.consistent += 1
    meta.update(verdict="judge", chosen_candidate=winner["index"])
    record["meta"] = meta
    return record, True


def _progress_line(number: int, total: int, summary: PairsSummary, eta: str) -> str:
    rates = []
    if summary.candidates_per_second:
        rates.append(f"{summary.candidates_per_second:.2f} candidates/s")
    if summary.verdicts_per_second:
        rates.append(f"{summary.verdicts_per_second:.2f} verdicts/s")
    share = summary.consistent_share
    consistent = (
        f"{summary.consistent}/{summary.consistent + summary.inconsistent} consistent"
        if share is not None
        else "0 judged"
    )
    return (
        f"prompt {number}/{total} | {consistent} | {', '.join(rates) or 'from the files'} | "
        f"ETA {eta}"
    )
