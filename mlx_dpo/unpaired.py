"""Unpaired completions for KTO: read, validate, tokenize.

A record is one rated answer, standard or conversational like a pair's fields:
    {"prompt": "...", "completion": "...", "label": true}       (true: desirable, thumbs-up)
    {"prompt": [messages], "completion": [assistant messages], "label": false, "system": "..."}
A preference pair (prompt, chosen, rejected) in the same files reads as two records: its chosen
answer desirable, its rejected answer undesirable (TRL's unpair_preference_dataset). Field
names are remapped through the config's `fields` (completion, label, and the pair's names).

Validation reports every problem with file, line and field, as mlx_dpo/data.py does for pairs
(its readers and message checks are reused, not copied). Tokenization is data.py's: the
completion is what the chat template adds after the generation prompt, cut to max_length
with the prompt cut from the left first.

KTO's KL estimate needs mismatched rows: `kl_completions` pairs each prompt of a batch with
the completion of the row before it, cyclically, as TRL's KTO collator does.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlx_dpo.data import (
    SPLITS,
    Message,
    PreferenceRecord,
    parse_messages,
    read_raw_records,
    split_files,
    text_problem,
    tokenize_record,
    truncate,
    validate_record,
)
from mlx_dpo.errors import UserError

UNPAIRED_FIELDS = ("prompt", "completion", "label", "system")


@dataclass(frozen=True)
class UnpairedRecord:
    """One validated rated answer, normalised to message lists."""

    source: str  # "file:line"
    prompt: list[Message]
    completion: list[Message]
    desirable: bool


@dataclass
class TokenizedCompletion:
    index: int
    source: str
    prompt_ids: list[int]
    completion_ids: list[int]
    desirable: bool
    prompt_cut: int = 0  # tokens cut from the left of the prompt
    response_cut: int = 0  # tokens cut from the right of the completion
    prefix_mismatch: bool = False  # the template's prompt was not a prefix of the full text


@dataclass
class TokenizedUnpairedSplit:
    name: str
    path: str
    examples: list[TokenizedCompletion]
    truncation: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def desirable(self) -> int:
        return sum(e.desirable for e in self.examples)

    @property
    def undesirable(self) -> int:
        return len(self.examples) - self.desirable

    def fingerprint(self) -> str:
        """Hash of every token id and label: changes with the data, the template, max_length."""
        digest = hashlib.sha256()
        for example in self.examples:
            digest.update(b"\x01" if example.desirable else b"\x00")
            for ids in (example.prompt_ids, example.completion_ids):
                digest.update(len(ids).to_bytes(4, "little"))
                digest.update(b"".join(i.to_bytes(4, "little") for i in ids))
        return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Reading and validating


def _field_names(fields: dict[str, str]) -> dict[str, str]:
    return {name: fields.get(name, name) for name in (*UNPAIRED_FIELDS, "chosen", "rejected")}


def validate_unpaired_record(
    source: str, value: Any, fields: dict[str, str]
) -> tuple[list[UnpairedRecord], list[str]]:
    """One JSON value as rated answers: one for an unpaired record, two for a pair."""
    if not isinstance(value, dict):
        return [], [f"{source}: a record must be a JSON object, got {type(value).__name__}"]
    names = _field_names(fields)
    unpaired = names["completion"] in value or names["label"] in value
    paired = names["chosen"] in value or names["rejected"] in value
    if unpaired and paired:
        return [], [
            f"{source}: has both '{names['completion']}'/'{names['label']}' (one rated answer) "
            f"and '{names['chosen']}'/'{names['rejected']}' (a pair): use one form"
        ]
    if paired:
        pair, problems = validate_record(source, value, fields)
        if pair is None:
            return [], problems
        return [
            UnpairedRecord(source, pair.prompt, pair.chosen, True),
            UnpairedRecord(source, pair.prompt, pair.rejected, False),
        ], []
    if not unpaired:
        return [], [
            f"{source}: a record needs '{names['completion']}' and '{names['label']}' (one "
            f"rated answer) or '{names['chosen']}' and '{names['rejected']}' (a pair)"
        ]
    return _validate_rated(source, value, names)


def _validate_rated(
    source: str, value: dict, names: dict[str, str]
) -> tuple[list[UnpairedRecord], list[str]]:
    problems = []
    parsed: dict[str, list[Message]] = {}
    for key, role in (("prompt", None), ("completion", "assistant")):
        name = names[key]
        if name not in value:
            problems.append(f"{source}: field '{name}': missing")
            continue
        messages, problem = parse_messages(value[name], name, role)
        if problem:
            problems.append(f"{source}: {problem}")
        else:
            parsed[key] = messages
    label = value.get(names["label"])
    if names["label"] not in value:
        problems.append(f"{source}: field '{names['label']}': missing")
    elif not isinstance(label, bool):
        problems.append(
            f"{source}: field '{names['label']}': must be true (desirable) or false "
            f"(undesirable), got {label!r}"
        )
    system = value.get(names["system"])
    if system is not None and not isinstance(system, str):
        problems.append(f"{source}: field '{names['system']}': must be a string")
    elif system is not None and (problem := text_problem(system)):
        problems.append(f"{source}: field '{names['system']}': {problem}")
    if problems:
        return [], problems
    prompt = parsed["prompt"]
    if system and system.strip() and prompt[0]["role"] != "system":
        prompt = [{"role": "system", "content": system}, *prompt]
    return [UnpairedRecord(source, prompt, parsed["completion"], label)], []


def read_unpaired_records(
    path: str | Path, fields: dict[str, str] | None = None
) -> list[UnpairedRecord]:
    """Read and validate one data file. Raises UserError listing every problem."""
    path = Path(path)
    raw, problems = read_raw_records(path)
    records = []
    for source, value in raw:
        rated, record_problems = validate_unpaired_record(source, value, fields or {})
        problems += record_problems
        records += rated
    if not raw and not problems:
        problems.append(f"{path}: empty (no records)")
    if problems:
        raise UserError(f"{path}: {len(problems)} problem(s) in the data", problems)
    return records


# ---------------------------------------------------------------------------------------------
# Tokenizing


def tokenize_completion(
    record: UnpairedRecord, tokenizer: Any
) -> tuple[list[int], list[int], bool]:
    """(prompt_ids, completion_ids, prefix_mismatch) before truncation: data.py's
    tokenization of a prompt and one response (the response given as both of a pair's)."""
    as_pair = PreferenceRecord(record.source, record.prompt, record.completion, record.completion)
    prompt_ids, completion_ids, _, mismatch = tokenize_record(as_pair, tokenizer)
    return prompt_ids, completion_ids, mismatch


def tokenize_unpaired(
    records: list[UnpairedRecord], tokenizer: Any, max_length: int, name: str, path: str
) -> TokenizedUnpairedSplit:
    examples = []
    counts = {"completions": 0, "prompt": 0, "response": 0, "prefix_mismatch": 0}
    problems = []
    for index, record in enumerate(records):
        prompt, completion, mismatch = tokenize_completion(record, tokenizer)
        if not prompt:
            problems.append(f"{record.source}: the prompt tokenizes to nothing")
            continue
        if not completion:
            problems.append(f"{record.source}: the completion tokenizes to nothing")
            continue
        prompt, completion, _, prompt_cut, response_cut = truncate(
            prompt, completion, completion, max_length
        )
        counts["completions"] += bool(prompt_cut or response_cut)
        counts["prompt"] += bool(prompt_cut)
        counts["response"] += bool(response_cut)
        counts["prefix_mismatch"] += mismatch
        examples.append(
            TokenizedCompletion(
                index,
                record.source,
                prompt,
                completion,
                record.desirable,
                prompt_cut,
                response_cut,
                mismatch,
            )
        )
    if problems:
        raise UserError(f"{path}: {len(problems)} problem(s) after tokenizing", problems)
    return TokenizedUnpairedSplit(name, path, examples, counts)


def load_unpaired_splits(
    data: str | Path,
    tokenizer: Any,
    max_length: int,
    fields: dict[str, str] | None = None,
    splits: tuple[str, ...] = SPLITS,
) -> dict[str, TokenizedUnpairedSplit]:
    """Read, validate and tokenize every split found (train/valid/test files of a folder, or
    one file). Problems of all files are reported together."""
    files = split_files(data)
    records: dict[str, list[UnpairedRecord]] = {}
    problems: list[str] = []
    for split, path in files.items():
        if split not in splits:
            continue
        try:
            records[split] = read_unpaired_records(path, fields)
        except UserError as err:
            problems += err.problems or [str(err)]
    if problems:
        raise UserError(f"{data}: {len(problems)} problem(s) in the data", problems)
    return {
        split: tokenize_unpaired(recs, tokenizer, max_length, split, str(files[split]))
        for split, recs in records.items()
    }


# ---------------------------------------------------------------------------------------------
# What KTO needs besides the tokens


def kl_completions(examples: list[TokenizedCompletion]) -> list[list[int]]:
    """The completion each row's prompt is paired with for KTO's KL estimate: the previous
    row's, cyclically (row 0 gets the last row's), as TRL's KTO collator builds them. A batch
    of one has no mismatched completion, which is why the config asks for batch_size >= 2."""
    if len(examples) < 2:
        raise ValueError("KTO's KL estimate needs at least 2 completions in a batch")
    return [examples[i - 1].completion_ids for i in range(len(examples))]


def weight_advice(
    desirable: int, undesirable: int, desirable_weight: float, undesirable_weight: float
) -> str | None:
    """The KTO paper's advice (eq. 8, as TRL warns): λ_D·n_D / (λ_U·n_U) should lie in
    [1, 4/3]. None when it does (or the data is balanced and the weights equal); otherwise
    the ranges of either weight that would put it there."""
    if desirable == 0 or undesirable == 0:
        return None
    ratio = desirable_weight * desirable / (undesirable_weight * undesirable)
    if 1.0 <= ratio <= 4.0 / 3.0:
        return None
    d_low = undesirable_weight * undesirable / desirable
    u_high = desirable_weight * desirable / undesirable
    return (
        f"{desirable} desirable and {undesirable} undesirable completions with "
        f"desirable_weight {desirable_weight:g} and undesirable_weight {undesirable_weight:g} "
        f"weigh them {ratio:.2f} : 1; the KTO paper advises 1 to 4/3. Set EITHER "
        f"desirable_weight in [{d_low:.2f}, {d_low * 4 / 3:.2f}] OR undesirable_weight in "
        f"[{u_high * 3 / 4:.2f}, {u_high:.2f}]."
    )


def length_bias_figures(split: TokenizedUnpairedSplit) -> dict[str, float | int]:
    """The data's length bias in the terms HealthMonitor.length_bias takes: with no pairs,
    the share of (desirable, undesirable) combinations where the desirable completion is
    longer (ties count half), the two mean lengths, and min(n_D, n_U) as the number judged."""
    good = sorted(len(e.completion_ids) for e in split.examples if e.desirable)
    bad = sorted(len(e.completion_ids) for e in split.examples if not e.desirable)
    if not good or not bad:
        return {
            "chosen_longer_share": 0.0,
            "mean_chosen_tokens": sum(good) / len(good) if good else 0.0,
            "mean_rejected_tokens": sum(bad) / len(bad) if bad else 0.0,
            "pairs": 0,
        }
    longer, j, k = 0.0, 0, 0
    for length in good:  # both sorted: count bad shorter than / equal to each good length
        while j < len(bad) and bad[j] < length:
            j += 1
        k = max(k, j)
        while k < len(bad) and bad[k] == length:
            k += 1
        longer += j + 0.5 * (k - j)
    return {
        "chosen_longer_share": longer / (len(good) * len(bad)),
        "mean_chosen_tokens": sum(good) / len(good),
        "mean_rejected_tokens": sum(bad) / len(bad),
        "pairs": min(len(good), len(bad)),
    }
