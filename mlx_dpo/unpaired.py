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

The trainer holds a tokenized split of completions as a `CompletionSplit`: a TokenizedSplit
(numpy arrays, batching, the reference cache and the memory plan work on it unchanged) whose
entries are (prompt, completion, nothing) with a `desirable` label each. A batch of B
completions is collated as B "pairs" (prompt i, completion i, KL completion i) by `kl_pairs`:
its 2B rows are the completions and their KL rows, and prefix sharing computes each prompt
once for both. `load_completion_data` reads a run's splits (local files, as train/valid/test).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlx_dpo.data import (
    SPLITS,
    Message,
    PreferenceRecord,
    SplitBuilder,
    TokenizedPair,
    TokenizedSplit,
    parse_message_fields,
    read_files,
    read_raw_records,
    split_files,
    text_problem,
    tokenize_record,
    truncate,
    validate_record,
    validated_records,
    with_system,
)
from mlx_dpo.errors import UserError
from mlx_dpo.sources import LoadedData, select_splits

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
    parsed, problems = parse_message_fields(
        source, value, names, (("prompt", None), ("completion", "assistant"))
    )
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
    prompt = with_system(parsed["prompt"], system)
    return [UnpairedRecord(source, prompt, parsed["completion"], label)], []


def read_unpaired_records(
    path: str | Path, fields: dict[str, str] | None = None
) -> list[UnpairedRecord]:
    """Read and validate one data file. Raises UserError listing every problem."""
    path = Path(path)
    raw, problems = read_raw_records(path)
    return validated_records(str(path), raw, problems, validate_unpaired_record, fields or {})


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
    files = {split: path for split, path in split_files(data).items() if split in splits}
    records = read_files(data, files, read_unpaired_records, fields)
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
    return _previous([e.completion_ids for e in examples])


def _previous(completions: Sequence[Any]) -> list[Any]:
    """Each row's KL completion: the row before's, cyclically."""
    if len(completions) < 2:
        raise ValueError("KTO's KL estimate needs at least 2 completions in a batch")
    return [completions[i - 1] for i in range(len(completions))]


# ---------------------------------------------------------------------------------------------
# Completions as the trainer holds them


class CompletionSplit(TokenizedSplit):
    """Rated completions as a TokenizedSplit: entry i is (prompt, completion, no tokens) and
    `desirable[i]` its label. Everything that works on a split's arrays (batching, the
    reference cache, subsets for carving validation) works on it; the trainer collates its
    batches with `kl_pairs`."""

    desirable: np.ndarray

    @classmethod
    def of(cls, split: TokenizedSplit, desirable: np.ndarray | Sequence[bool]) -> CompletionSplit:
        """The split's arrays with labels attached (no copy)."""
        out = cls.__new__(cls)
        out.__dict__.update(split.__dict__)
        out.desirable = np.asarray(desirable, dtype=bool)
        if out.desirable.shape != (len(split),):
            raise ValueError("one label per completion")
        return out

    @classmethod
    def from_unpaired(cls, split: TokenizedUnpairedSplit) -> CompletionSplit:
        builder = SplitBuilder()
        for e in split.examples:
            builder.add(
                e.source, e.prompt_ids, e.completion_ids, [], e.prompt_cut, e.response_cut,
                e.prefix_mismatch,
            )  # fmt: skip
        built = builder.build(split.name, split.path, "unpaired")
        return cls.of(built, [e.desirable for e in split.examples])

    def subset(self, positions: np.ndarray | list[int], name: str | None = None) -> CompletionSplit:
        positions = np.asarray(positions, dtype=np.int64)
        return CompletionSplit.of(super().subset(positions, name), self.desirable[positions])

    def fingerprint(self) -> str:
        """TokenizedSplit's token hash and the labels."""
        digest = hashlib.sha256(super().fingerprint().encode())
        digest.update(np.packbits(self.desirable).tobytes())
        return digest.hexdigest()

    @property
    def desirable_count(self) -> int:
        return int(self.desirable.sum())

    @property
    def undesirable_count(self) -> int:
        return len(self) - self.desirable_count


def kl_pairs(pairs: Sequence[TokenizedPair], max_length: int) -> list[TokenizedPair]:
    """A batch of completions (CompletionSplit entries) as the pairs the trainer collates:
    (prompt i, completion i, KL completion i), the KL completion being the row before's
    (`kl_completions`' rule), cut from the right so that prompt i + it fit max_length."""
    shifted = _previous([p.chosen_ids for p in pairs])
    return [
        TokenizedPair(
            p.index,
            p.source,
            p.prompt_ids,
            p.chosen_ids,
            kl[: max(1, max_length - len(p.prompt_ids))],
            p.prompt_cut,
            p.response_cut,
            p.prefix_mismatch,
        )
        for p, kl in zip(pairs, shifted, strict=True)
    ]


def _role_files(data: Any, roles: tuple[str, ...]) -> dict[str, Path]:
    """The file of each role: a single file serves the first role asked for (as for pairs),
    a folder's train/valid/test files their own."""
    if not isinstance(data, (str, Path)):
        raise UserError(
            "kto reads its completions from local files: --data a .jsonl/.json file or a "
            "folder of train/valid/test files (not a list of data sets)"
        )
    path = Path(data).expanduser()
    if not path.exists():
        raise UserError(
            f"{data}: no such data file or folder (kto reads local .jsonl/.json files of "
            "{prompt, completion, label} records or of pairs)"
        )
    files = split_files(path)
    if path.is_file():
        return {roles[0]: files["train"]}
    return {role: files[role] for role in roles if role in files}


def load_completion_data(config: Any, tokenizer: Any, roles: tuple[str, ...]) -> LoadedData:
    """A kto run's splits (CompletionSplit, by role), read and validated together: records
    {prompt, completion, label} or pairs (their chosen answer desirable, rejected not),
    tokenized, then validation carved and --max-pairs applied as for pairs (sources)."""
    files = _role_files(config.data, roles)
    records = read_files(config.data, files, read_unpaired_records, config.fields)
    splits: dict[str, TokenizedSplit] = {
        role: CompletionSplit.from_unpaired(
            tokenize_unpaired(found, tokenizer, config.max_length, role, str(files[role]))
        )
        for role, found in records.items()
    }
    notes: list[str] = []
    valid_source = select_splits(config, splits, roles, notes)
    for role, split in splits.items():
        notes.append(
            f"{role}: {len(split)} completions ({split.desirable_count} desirable, "
            f"{split.undesirable_count} undesirable)"
        )
    train = splits.get("train")
    if train is not None:
        advice = weight_advice(
            train.desirable_count,
            train.undesirable_count,
            config.desirable_weight,
            config.undesirable_weight,
        )
        if advice:
            notes.append(f"warning: {advice}")
    info = {
        "data_shape": "unpaired",
        "data_sources": [
            {
                "path": str(config.data),
                "revision": None,
                "splits": {str(p.name): "unpaired" for p in files.values()},
                "weight": 1.0,
            }
        ],  # fmt: skip
        "valid_source": valid_source,
    }
    return LoadedData(splits, notes, info)


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


def length_bias_figures(
    split: TokenizedUnpairedSplit | CompletionSplit,
) -> dict[str, float | int]:
    """The data's length bias in the terms HealthMonitor.length_bias takes: with no pairs,
    the share of (desirable, undesirable) combinations where the desirable completion is
    longer (ties count half), the two mean lengths, and min(n_D, n_U) as the number judged."""
    if isinstance(split, CompletionSplit):
        lengths = split.lengths[:, 1].tolist()
        labels = split.desirable.tolist()
    else:
        lengths = [len(e.completion_ids) for e in split.examples]
        labels = [e.desirable for e in split.examples]
    good = sorted(n for n, d in zip(lengths, labels, strict=True) if d)
    bad = sorted(n for n, d in zip(lengths, labels, strict=True) if not d)
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
